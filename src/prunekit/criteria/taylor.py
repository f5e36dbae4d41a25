"""First-order Taylor importance |w * dL/dw| summed over every parameter a channel owns."""
from __future__ import annotations

import torch

from ..graph import UnitGraph
from ..signals import Signals
from . import register_criterion
from ._slices import reduce_slices


@register_criterion("taylor")
def taylor(graph: UnitGraph, signals: Signals, seed: int = 0) -> dict[str, torch.Tensor]:
    grads = signals.gradients(graph.model)
    out = {}
    for u in graph.units:
        slices = [s for s in u.slices if s.param in grads]
        out[u.name] = reduce_slices(graph, u, slices, lambda n, w: (w * grads[n]).abs())
    return out
