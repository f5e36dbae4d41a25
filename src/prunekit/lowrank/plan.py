"""Low-rank layers in a Plan: ``plan.extras["lowrank"] = {"layers": {name: {"scheme", "rank"}}}``.
Validated with the rest of plan.json, and re-created on a fresh model after the channel plan is
applied, before the weights are loaded (``prunekit.load``)."""
from __future__ import annotations

import torch.nn as nn

from ..errors import CheckpointError
from .decompose import SCHEMES, max_rank, replace, skeleton, why_not


def invalid(extra) -> str | None:
    """What is wrong with ``extras["lowrank"]`` (None if nothing)."""
    if not isinstance(extra, dict) or set(extra) != {"layers"} or not isinstance(extra["layers"], dict):
        return 'extras.lowrank must be {"layers": {name: {"scheme": ..., "rank": ...}}}'
    for name, spec in extra["layers"].items():
        if not isinstance(spec, dict) or set(spec) != {"scheme", "rank"} or spec["scheme"] not in SCHEMES:
            return f"low-rank layer {name!r} needs a scheme in {', '.join(SCHEMES)} and a rank"
        r = spec["rank"]
        if isinstance(r, bool) or not isinstance(r, int) or not 1 <= r <= 1 << 20:
            return f"rank of low-rank layer {name!r} must be a positive integer"
    return None


def restructure(model: nn.Module, extra: dict) -> nn.Module:
    """Replace every low-rank layer of ``model`` (already channel-pruned) by its factorization's
    layers, uninitialized: the saved weights are loaded next."""
    modules = dict(model.named_modules())
    for name, spec in extra["layers"].items():
        m, scheme, rank = modules.get(name), spec["scheme"], spec["rank"]
        if m is None or (scheme == "svd") != isinstance(m, nn.Linear) or why_not(m, scheme):
            raise CheckpointError(f"low-rank layer {name!r} ({scheme}) does not fit this model; "
                                  "pass the dense model the plan was made for")
        if rank > max_rank(m, scheme):
            raise CheckpointError(f"low-rank layer {name!r} has rank {rank}, above the {max_rank(m, scheme)} "
                                  "its layer allows; wrong base model or a tampered plan")
        replace(model, name, nn.Sequential(*skeleton(m, scheme, rank)))
    return model
