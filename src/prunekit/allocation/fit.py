"""Shared budget repair: turn approximate widths into legal ones that meet every target.

Allocators produce a good shape; this greedy pass makes it exact: shrink one step at a time until
every target holds, then grow while they still hold, so the binding budget ends up met from below
as closely as the Units' step sizes allow.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from ..cost import CostModel
from ..graph import UnitGraph

# key(widths, cost_per_step) -> preference per Unit: shrink the lowest, grow the highest
Key = Callable[[np.ndarray, np.ndarray], np.ndarray]


def limits(graph: UnitGraph) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    steps = np.array([u.step for u in graph.units], dtype=np.float64)
    lo = np.array([u.min_keep for u in graph.units], dtype=np.float64)
    hi = np.array([u.width for u in graph.units], dtype=np.float64)
    return steps, lo, hi


def snap(graph: UnitGraph, widths: np.ndarray) -> np.ndarray:
    return np.array([u.snap(w) for u, w in zip(graph.units, widths)], dtype=np.float64)


def fit(graph: UnitGraph, cost: CostModel, targets: dict[str, float], widths: np.ndarray,
        shrink_key: Key, grow_key: Key | None = None) -> np.ndarray:
    steps, lo, hi = limits(graph)
    w = snap(graph, widths)
    polys = {k: getattr(cost, k) for k in targets}

    def step_cost(w, sign):
        # cost of one step per Unit, as a fraction of each target, summed over the targets
        return sum(np.abs(p.step_deltas(w, sign * steps)) / targets[k] for k, p in polys.items())

    def over(w):
        return any(p(w) > targets[k] * (1 + 1e-12) for k, p in polys.items())

    while over(w):
        can = w - steps >= lo - 1e-9
        if not can.any():
            break
        key = np.where(can, shrink_key(w, step_cost(w, -1.0)), np.inf)
        w[int(np.argmin(key))] -= steps[int(np.argmin(key))]
    grow_key = grow_key or (lambda w, c: -shrink_key(w, c))
    while True:
        can = w + steps <= hi + 1e-9
        for k, p in polys.items():
            can &= p(w) + p.step_deltas(w, steps) <= targets[k] * (1 + 1e-12)
        if not can.any():
            return w
        key = np.where(can, grow_key(w, step_cost(w, 1.0)), -np.inf)
        i = int(np.argmax(key))
        w[i] += steps[i]
