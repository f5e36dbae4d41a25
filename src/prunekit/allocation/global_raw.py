"""``global`` on raw scores: one threshold over every channel, scores compared as they are.

For criteria whose scores share one unit across Units, such as Group Fisher's estimate of the loss
increase per unit of memory saved (``fisher``): ``global``'s default divides each Unit's scores by
their mean, which would throw exactly that comparison away. Same as ``global`` with
``normalize="none"`` (the default here), so the ``fisher`` preset needs no option.
"""
from __future__ import annotations

import numpy as np

from ..cost import CostModel
from ..graph import UnitGraph
from ..signals import Signals
from . import register_allocator
from .global_threshold import global_threshold


@register_allocator("global_raw")
def global_raw(graph: UnitGraph, cost: CostModel, targets: dict[str, float], scores, signals: Signals,
               seed: int = 0, cost_power: float = 0.0, normalize: str = "none") -> np.ndarray:
    return global_threshold(graph, cost, targets, scores, signals, seed, cost_power=cost_power, normalize=normalize)
