"""Per-channel reductions over a Unit's parameter slices, shared by the weight-based criteria."""
from __future__ import annotations

from typing import Callable, Iterable

import torch

from ..graph import Slice, Unit, UnitGraph


def reduce_slices(
    graph: UnitGraph,
    unit: Unit,
    slices: Iterable[Slice],
    per_entry: Callable[[str, torch.Tensor], torch.Tensor],
    normalize: bool = False,
) -> torch.Tensor:
    """Sum ``per_entry(param name, tensor)`` over every dimension but the sliced one, per channel.

    With ``normalize`` each slice is divided by its mean first, so layers of different size and
    scale weigh the same.
    """
    out = torch.zeros(unit.width, dtype=torch.float64)
    for s in slices:
        p = graph.parameter(s.param).detach()
        v = per_entry(s.param, p).double().cpu()  # scores live on the CPU whatever the model's device
        dims = [d for d in range(v.dim()) if d != s.dim]
        v = v.sum(dim=dims) if dims else v
        per_channel = torch.zeros(unit.width, dtype=torch.float64).index_add_(0, s.channel, v[s.index])
        if normalize:
            per_channel = per_channel / per_channel.mean().clamp_min(1e-12)
        out += per_channel
    return out


def producer_slices(graph: UnitGraph, unit: Unit) -> list[Slice]:
    """The conv/linear weights whose filters make the Unit's channels."""
    return [s for s in unit.slices if s.module in unit.producers and s.param.endswith("weight")]


def consumer_slices(graph: UnitGraph, unit: Unit) -> list[Slice]:
    return [s for s in unit.slices if s.module in unit.consumers and s.param.endswith("weight")]
