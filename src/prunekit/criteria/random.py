"""Random channel choice: the control every criterion must beat."""
from __future__ import annotations

import zlib

import torch

from ..graph import UnitGraph
from ..signals import Signals
from . import register_criterion


@register_criterion("random")
def random_scores(graph: UnitGraph, signals: Signals, seed: int = 0) -> dict[str, torch.Tensor]:
    out = {}
    for u in graph.units:
        gen = torch.Generator().manual_seed(seed * 1_000_003 + zlib.crc32(u.name.encode()))
        out[u.name] = torch.rand(u.width, generator=gen, dtype=torch.float64)
    return out
