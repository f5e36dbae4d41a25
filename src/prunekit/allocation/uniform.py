"""The same kept fraction for every Unit, solved so the model meets the budget."""
from __future__ import annotations

import numpy as np

from ..cost import CostModel
from ..graph import UnitGraph
from ..signals import Signals
from . import register_allocator
from .fit import fit, snap


@register_allocator("uniform")
def uniform(graph: UnitGraph, cost: CostModel, targets: dict[str, float], scores, signals: Signals,
            seed: int = 0) -> np.ndarray:
    dense = cost.dense_widths

    def fits(r: float) -> bool:
        w = snap(graph, r * dense)
        return all(getattr(cost, k)(w) <= t for k, t in targets.items())

    lo, hi = 0.0, 1.0
    for _ in range(40):  # bisection on the shared fraction
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid)
    # then even out rounding: take steps from the widest fraction, give them to the narrowest
    return fit(graph, cost, targets, snap(graph, lo * dense), shrink_key=lambda w, c: -(w / dense))
