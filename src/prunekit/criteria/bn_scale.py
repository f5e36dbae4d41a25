"""BatchNorm scale |gamma| (Network Slimming): a channel the normalization shrinks carries little."""
from __future__ import annotations

import torch
import torch.nn as nn

from ..graph import UnitGraph
from ..signals import Signals
from . import register_criterion
from ._slices import reduce_slices
from .magnitude import _norm

_l1 = _norm(1.0)


@register_criterion("bn_scale")
def bn_scale(graph: UnitGraph, signals: Signals, seed: int = 0) -> dict[str, torch.Tensor]:
    """Units without a BatchNorm (rare in CNNs) fall back to the L1 norm of their filters."""
    out, fallback = {}, None
    for u in graph.units:
        bn = [s for s in u.slices if s.param.endswith("weight")
              and isinstance(graph.model.get_submodule(s.module), nn.modules.batchnorm._BatchNorm)]
        if bn:
            out[u.name] = reduce_slices(graph, u, bn, lambda n, w: w.abs())
        else:
            fallback = fallback or _l1(graph, signals, seed, scope="filters")
            out[u.name] = fallback[u.name]
    return out
