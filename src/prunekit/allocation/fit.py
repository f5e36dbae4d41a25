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
        shrink_key: Key, grow_key: Key | None = None, max_swaps: int = 50, lo: np.ndarray | None = None) -> np.ndarray:
    """Shrink until every target holds, grow while they still do, then trade steps to close the gap.

    Greedy growth stalls when the gap left is smaller than any single step (a residual stream's
    channel touches many layers); a swap grows one Unit and shrinks others to make room, and is kept
    when it brings the binding budget closer. ``lo`` raises Units' lower limits (lo = width keeps a
    Unit whole).
    """
    r = _Repair(graph, cost, targets, shrink_key, grow_key or (lambda w, c: -shrink_key(w, c)))
    if lo is not None:
        r.lo = np.maximum(r.lo, lo)
    w = r.grow(r.shrink(snap(graph, widths)))
    for _ in range(max_swaps):
        if r.over(w) or r.usage(w) >= 1 - SWAP_TOLERANCE:
            break
        trials = [r.grow(r.shrink(_plus(w, i, r.steps), frozen=i)) for i in np.flatnonzero(w + r.steps <= r.hi + 1e-9)]
        trials = [t for t in trials if not r.over(t) and r.usage(t) > r.usage(w) + 1e-12]
        if not trials:
            break
        w = max(trials, key=r.usage)
    return w


SWAP_TOLERANCE = 1e-3  # stop trading once the binding budget is used to within 0.1%


def _plus(w: np.ndarray, i: int, steps: np.ndarray) -> np.ndarray:
    w = w.copy()
    w[i] += steps[i]
    return w


class _Repair:
    def __init__(self, graph, cost, targets, shrink_key: Key, grow_key: Key):
        self.steps, self.lo, self.hi = limits(graph)
        self.polys = {k: getattr(cost, k) for k in targets}
        self.targets, self.shrink_key, self.grow_key = targets, shrink_key, grow_key

    def step_cost(self, w, sign):
        # cost of one step per Unit, as a fraction of each target, summed over the targets
        return sum(np.abs(p.step_deltas(w, sign * self.steps)) / self.targets[k] for k, p in self.polys.items())

    def over(self, w) -> bool:
        return any(p(w) > self.targets[k] * (1 + 1e-12) for k, p in self.polys.items())

    def usage(self, w) -> float:
        """How much of the binding budget is used (1 = exactly on it)."""
        return max(p(w) / self.targets[k] for k, p in self.polys.items())

    def shrink(self, w, frozen: int | None = None) -> np.ndarray:
        w = w.copy()
        while self.over(w):
            can = w - self.steps >= self.lo - 1e-9
            if frozen is not None:
                can[frozen] = False
            if not can.any():
                break
            i = int(np.argmin(np.where(can, self.shrink_key(w, self.step_cost(w, -1.0)), np.inf)))
            w[i] -= self.steps[i]
        return w

    def grow(self, w) -> np.ndarray:
        w = w.copy()
        while True:
            can = w + self.steps <= self.hi + 1e-9
            for k, p in self.polys.items():
                can &= p(w) + p.step_deltas(w, self.steps) <= self.targets[k] * (1 + 1e-12)
            if not can.any():
                return w
            i = int(np.argmax(np.where(can, self.grow_key(w, self.step_cost(w, 1.0)), -np.inf)))
            w[i] += self.steps[i]
