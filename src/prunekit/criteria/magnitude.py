"""Weight magnitude (Li et al. 2017) and next-layer-aware magnitude (CPMC, METHODS.md section 11).

``l1``/``l2`` score a channel by every layer of its group by default (``scope="group"``): the
filters that produce it, the input slices of the layers that read it and its normalization scales,
as the mean of the layers' norms (Torch-Pruning's group reduction). ``scope="filters"`` is Li et
al.'s producer filters alone. Behind a BatchNorm a filter's norm says little (the norm divides the
conv's output by its spread), while the next layers' weights say how much of the channel is read:
on the shipped Fashion-MNIST ResNet-20 at half its MACs, same widths everywhere, the group norm
keeps 78.0% accuracy (BatchNorm re-estimated) against 56.8% for the filters alone
(bench/results/allocators.md).
"""
from __future__ import annotations

import torch
import torch.nn as nn

from ..errors import ConfigError
from ..graph import Slice, Unit, UnitGraph
from ..signals import Signals
from . import register_criterion
from ._slices import consumer_slices, producer_slices, reduce_slices

SCOPES = ("group", "filters")


def norm_slices(graph: UnitGraph, unit: Unit) -> list[Slice]:
    """The scale (weight) of every normalization layer on the Unit's channels."""
    return [s for s in unit.slices if s.param.endswith("weight")
            and isinstance(graph.model.get_submodule(s.module), (nn.modules.batchnorm._NormBase, nn.GroupNorm,
                                                                  nn.LayerNorm))]


def group_layers(graph: UnitGraph, unit: Unit, scope: str) -> list[Slice]:
    if scope not in SCOPES:
        raise ConfigError(f"scope must be one of {', '.join(map(repr, SCOPES))}, got {scope!r}")
    layers = producer_slices(graph, unit)
    if scope == "group":
        layers += consumer_slices(graph, unit) + norm_slices(graph, unit)
    return layers


def _norm(p: float):
    def score(graph: UnitGraph, signals: Signals, seed: int = 0, scope: str = "group") -> dict[str, torch.Tensor]:
        out = {}
        for u in graph.units:
            # a residual stream is written by several convs: a channel's filter is all of them together
            layers = group_layers(graph, u, scope)
            if scope == "filters":
                out[u.name] = reduce_slices(graph, u, layers, lambda n, w: w.abs().pow(p)).pow(1 / p)
            else:
                out[u.name] = torch.stack([reduce_slices(graph, u, [s], lambda n, w: w.abs().pow(p)).pow(1 / p)
                                           for s in layers]).mean(0)
        return out
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
