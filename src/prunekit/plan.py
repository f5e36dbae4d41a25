"""A Plan: which channels of which Units survive. JSON, so a pruned model is saved as
(plan + weights) and rebuilt on a fresh dense model without unpickling any class."""
from __future__ import annotations

import json
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
        try:
            d = json.loads(text)
            if d.get("format") != FORMAT:
                raise ValueError(f"format {d.get('format')}")
            return cls(**d)
        except (ValueError, TypeError) as e:
            raise CheckpointError(f"unreadable plan ({e}); re-run prunekit compress to make a new one") from None

    @classmethod
    def read(cls, path: str | Path) -> "Plan":
        return cls.from_json(Path(path).read_text())
