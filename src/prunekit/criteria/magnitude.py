"""Weight magnitude (Li et al. 2017) and next-layer-aware magnitude (CPMC, METHODS.md section 11)."""
from __future__ import annotations

import torch

from ..graph import UnitGraph
from ..signals import Signals
from . import register_criterion
from ._slices import consumer_slices, producer_slices, reduce_slices


def _norm(p: float):
    def score(graph: UnitGraph, signals: Signals, seed: int = 0) -> dict[str, torch.Tensor]:
        # a residual stream is written by several convs: a channel's filter is all of them together
        return {u.name: reduce_slices(graph, u, producer_slices(graph, u), lambda n, w: w.abs().pow(p)).pow(1 / p)
                for u in graph.units}
    return score


register_criterion("l1")(_norm(1.0))
register_criterion("l2")(_norm(2.0))


@register_criterion("next_layer")
def next_layer(graph: UnitGraph, signals: Signals, seed: int = 0) -> dict[str, torch.Tensor]:
    """Removing a channel deletes its filter and the next layer's input slice: weigh both.

    Each layer's mean |w| per channel is divided by that layer's mean, so producers and consumers
    of different size count alike.
    """
    out = {}
    for u in graph.units:
        def mean_abs(n, w):
            return w.abs() / max(1, w.numel() // w.shape[0])
        prod = reduce_slices(graph, u, producer_slices(graph, u), mean_abs, normalize=True)
        cons_slices = consumer_slices(graph, u)
        cons = reduce_slices(graph, u, cons_slices, mean_abs, normalize=True)
        out[u.name] = prod / max(1, len(producer_slices(graph, u))) + cons / max(1, len(cons_slices))
    return out
