"""A Plan: which channels of which Units survive. JSON, so a pruned model is saved as
(plan + weights) and rebuilt on a fresh dense model without unpickling any class."""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from .errors import CheckpointError
from .graph import Unit, UnitGraph, expand_groups

FORMAT = 1


def select(unit: Unit, scores: torch.Tensor, width: int) -> list[int]:
    """The ``width`` highest-scoring channels; grouped Units pick the same offsets in every group."""
    local = scores.double().reshape(unit.groups, -1).sum(0)
    # a stable sort breaks ties by index, so the same scores always give the same plan
    order = torch.sort(-local, stable=True).indices[: width // unit.groups]
    return expand_groups(unit, order.tolist())


@dataclass
class Plan:
    method: str
    budget: str
    input_shape: list[int]
    keep: dict[str, list[int]]
    widths: dict[str, int]
    dense_widths: dict[str, int]
    seed: int = 0
    extras: dict = field(default_factory=dict)
    format: int = FORMAT

    @classmethod
    def from_widths(cls, graph: UnitGraph, widths: np.ndarray, scores: dict[str, torch.Tensor], **kw) -> "Plan":
        keep = {u.name: select(u, scores[u.name], int(w)) for u, w in zip(graph.units, widths)}
        return cls(keep=keep, widths={k: len(v) for k, v in keep.items()},
                   dense_widths={u.name: u.width for u in graph.units}, **kw)

    def apply(self, graph: UnitGraph):
        for name, width in self.dense_widths.items():
            try:
                unit = graph[name]
            except KeyError:
                raise CheckpointError(f"plan unit {name!r} is not in this model; pass the dense model the plan was made for") from None
            if unit.width != width:
                raise CheckpointError(f"plan unit {name!r} has width {width} but the model has {unit.width}; wrong base model")
        return graph.apply({k: v for k, v in self.keep.items() if len(v) < self.dense_widths[k]})

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1)

    @classmethod
    def from_json(cls, text: str) -> "Plan":
        """Parse and validate a plan; a tampered file is refused before anything is allocated."""
        try:
            d = json.loads(text)
        except ValueError as e:
            raise CheckpointError(f"unreadable plan ({e}); re-run prunekit compress to make a new one") from None
        problem = _invalid(d)
        if problem:
            raise CheckpointError(f"invalid plan: {problem}; re-run prunekit compress to make a new one")
        return cls(**d)

    @classmethod
    def read(cls, path: str | Path) -> "Plan":
        return cls.from_json(Path(path).read_text())


_MAX_INPUT_DIMS, _MAX_INPUT_SIDE, _MAX_INPUT_NUMEL = 8, 65536, 1 << 28


def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _invalid(d) -> str | None:
    """What is wrong with a parsed plan.json (None if nothing): schema, types, bounds, widths within
    the dense widths, keep indices unique, in range and as many as the width."""
    if not isinstance(d, dict):
        return "not a JSON object"
    if d.get("format") != FORMAT:
        return f"format {d.get('format')!r} (expected {FORMAT})"
    required = {"method": str, "budget": str, "input_shape": list, "keep": dict, "widths": dict, "dense_widths": dict}
    optional = {"seed": int, "extras": dict, "format": int}
    unknown = sorted(set(d) - set(required) - set(optional))
    if unknown:
        return f"unknown key {unknown[0]!r}"
    for key, kind in {**required, **optional}.items():
        if key not in d:
            if key in required:
                return f"missing key {key!r}"
            continue
        if not isinstance(d[key], kind) or (kind is int and isinstance(d[key], bool)):
            return f"{key!r} must be a {kind.__name__}"
    shape = d["input_shape"]
    if len(shape) > _MAX_INPUT_DIMS or not all(_is_int(s) and 0 < s <= _MAX_INPUT_SIDE for s in shape):
        return f"input_shape must be at most {_MAX_INPUT_DIMS} positive integers up to {_MAX_INPUT_SIDE}"
    if shape and math.prod(shape) > _MAX_INPUT_NUMEL:
        return f"input_shape {shape} is too large"
    dense, widths, keep = d["dense_widths"], d["widths"], d["keep"]
    if set(widths) != set(dense) or set(keep) != set(dense):
        return "keep, widths and dense_widths must name the same units"
    for name, full in dense.items():
        w, k = widths[name], keep[name]
        if not _is_int(full) or full < 1:
            return f"dense width of {name!r} must be a positive integer"
        if not _is_int(w) or not 0 <= w <= full:  # 0: a dropped residual branch (prunekit.drop)
            return f"width of {name!r} must be an integer in [0, {full}]"
        if not isinstance(k, list) or len(k) != w:
            return f"keep of {name!r} must list exactly {w} channels"
        if not all(_is_int(i) and 0 <= i < full for i in k) or len(set(k)) != len(k):
            return f"keep of {name!r} must be distinct channel indices in [0, {full})"
    if "lowrank" in d.get("extras", {}):  # decomposed layers (prunekit.lowrank.plan)
        from .lowrank.plan import invalid
        return invalid(d["extras"]["lowrank"])
    return None
