"""Hardware-friendly widths: every Unit on the right end of a latency stair, the budget spent where it is fastest.

On CPUs and GPUs a layer's latency rises in steps with its channel count (vector widths, tiles):
within a stair extra channels are free, past its end they cost a jump. A Unit's legal widths within
``snap_window`` steps either side are timed (the layers that Unit touches, the other Units at their
current widths; raw measurements, cached with the table's). A width is a stair end when the next one
costs more than ``snap_tolerance`` relatively, or it is the dense width.

Two passes. Down: each Unit moves to the nearest stair end at or below its width (dropping the jump
it had crossed). Refill: while some Unit's next stair end up fits every budget (MACs and params
exactly, latency by the table), the move that buys the most per added millisecond is taken: the most
channel importance (the criterion's scores, normalized per Unit as the global allocator ranks them)
or, without scores, the most budget. The budget freed going down is so spent on the layers where
channels are cheapest in time, whatever the Units' order. Depth is the depth plan's choice
(prunekit.depth): a removed residual branch stays removed, a kept one at or above its minimum.
Measured: bench/results/latency.md (MACs budgets with hardware-friendly widths).
"""
from __future__ import annotations

import numpy as np

from ..allocation.fit import limits
from ..cost import CostModel
from ..graph import UnitGraph
from .measure import layer_ms


def snap_widths(graph: UnitGraph, cost: CostModel, targets: dict[str, float], widths,
                scores=None) -> tuple[np.ndarray, list[dict]]:
    stairs = _Stairs(graph, cost)
    w = np.asarray(widths, dtype=np.float64).copy()
    start = w.copy()

    def fits(v) -> bool:
        return all(getattr(cost, k)(v) <= t * (1 + 1e-12) for k, t in targets.items())

    for i in stairs.movable(w):
        _, _, ends = stairs.at(w, i)
        down = [c for c in ends if c <= w[i] + 1e-9]
        if down:
            w[i] = down[-1]
    w = _refill(stairs, w, fits, _value(graph, cost, targets, scores))
    cost.latency.store.save()
    moves = [{"unit": graph.units[i].name, "from": int(start[i]), "to": int(w[i])}
             for i in range(len(w)) if w[i] != start[i]]
    return w, moves


def _value(graph: UnitGraph, cost: CostModel, targets: dict[str, float], scores):
    """What a plan is worth to the refill: its kept importance, or without scores its budget usage."""
    if scores is None:
        return lambda v: max(getattr(cost, k)(v) / t for k, t in targets.items())
    from ..allocation.global_threshold import step_values
    per_step = step_values(graph, scores)
    steps, _, _ = limits(graph)
    return lambda v: sum(s[:int(round(x / st))].sum() for s, x, st in zip(per_step, v, steps))


def _refill(stairs: _Stairs, w: np.ndarray, fits, value) -> np.ndarray:
    """Take, while one fits, the move to a Unit's next stair end up with the most value per added ms."""
    while True:
        best, best_gain = None, -np.inf
        for i in stairs.movable(w):
            cands, ms, ends = stairs.at(w, i)
            up = [c for c in ends if c > w[i] + 1e-9]
            if not up:
                continue
            trial = _moved(w, i, up[0])
            if not fits(trial):
                continue
            added_ms = ms[cands.index(up[0])] - ms[cands.index(w[i])]
            gain = (value(trial) - value(w)) / max(added_ms, 1e-9)
            if gain > best_gain:
                best, best_gain = trial, gain
        if best is None:
            return w
        w = best


def _moved(w: np.ndarray, i: int, width: float) -> np.ndarray:
    w = w.copy()
    w[i] = width
    return w


class _Stairs:
    """The measured staircase of one Unit around its width, the other Units where they are now."""

    def __init__(self, graph: UnitGraph, cost: CostModel):
        self.lat = cost.latency
        self.steps, self.lo, self.hi = limits(graph)
        self.units = [i for i in range(len(graph.units)) if self.lat.by_unit.get(i)]
        # a removable branch keeps the depth plan's choice: kept ones stay at branch_min or above
        for i, unit in enumerate(graph.units):
            self.lo[i] = max(self.lo[i], graph.branch_min.get(unit.name, 0))

    def movable(self, w: np.ndarray) -> list[int]:
        return [i for i in self.units if w[i] > 0]  # a removed branch stays removed

    def at(self, w: np.ndarray, i: int) -> tuple[list[float], list[float], list[float]]:
        """Candidate widths, their ms, and the stair ends among them (the dense width is always one)."""
        config = self.lat.config
        cands = [w[i] + k * self.steps[i] for k in range(-config.snap_window, config.snap_window + 1)]
        cands = [c for c in cands if self.lo[i] - 1e-9 <= c <= self.hi[i] + 1e-9]
        ms = [self._ms(_moved(w, i, c), i) for c in cands]
        ends = [c for j, c in enumerate(cands) if (j + 1 < len(cands) and ms[j + 1] > ms[j] * (1 + config.snap_tolerance))
                or abs(c - self.hi[i]) < 1e-9]
        return cands, ms, ends

    def _ms(self, w: np.ndarray, i: int) -> float:
        lat = self.lat
        return sum(layer_ms(t.spec, round(t.dims(w)[0]), round(t.dims(w)[1]), lat.batch, lat.config, lat.store)
                   for t in lat.by_unit[i])
