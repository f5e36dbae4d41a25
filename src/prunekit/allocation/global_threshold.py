"""One threshold over all channels of all Units.

Scores are normalized within each Unit (divided by the Unit's mean), so layers of different scale
compare. ``cost_power`` divides them by (cost of one channel of the Unit) ** cost_power. The
default 0 ranks by normalized score alone (the budget enters through the threshold): full cost
normalization (1) spends the budget on the expensive channels of residual streams first. On the
shipped Fashion-MNIST ResNet-20 at half its MACs it left a 1-channel stem and 5.5% accuracy after
BatchNorm re-estimation, against 67.2% for 0 and 56.8% for uniform widths
(bench/results/cpu_quick.md). ``normalize="none"`` ranks raw scores, which compare across Units
only for criteria in common units (Taylor's estimate of the loss change); bench/results/allocators.md
measures it against the default.
"""
from __future__ import annotations

import numpy as np
import torch

from ..cost import CostModel
from ..errors import ConfigError
from ..graph import UnitGraph
from ..signals import Signals
from . import register_allocator
from .fit import fit, limits


NORMALIZE = ("mean", "none")


def step_values(graph: UnitGraph, scores: dict[str, torch.Tensor], normalize: str = "mean") -> list[np.ndarray]:
    """Per Unit: (normalized) score of each width step, best first (what the k-th step adds)."""
    out = []
    for u in graph.units:
        s = scores[u.name].double().reshape(u.groups, -1).sum(0)  # one value per offset in a group
        if normalize == "mean":
            s = s / s.mean().clamp_min(1e-12)
        s = torch.sort(s, descending=True).values.numpy()
        per_step = u.step // u.groups
        out.append(np.add.reduceat(s, np.arange(0, len(s), per_step)))
    return out


def value_keys(graph: UnitGraph, values: list[np.ndarray], cost_power: float = 1.0):
    """Keys for ``fit``: the value of the last kept step (shrink) or the next one (grow) per cost."""
    steps, _, _ = limits(graph)

    def at(w, offset):
        idx = (w / steps).astype(int) + offset
        return np.array([v[min(max(i, 0), len(v) - 1)] if 0 <= i < len(v) else np.inf for v, i in zip(values, idx)])

    shrink = lambda w, c: at(w, -1) / np.maximum(c, 1e-18) ** cost_power  # noqa: E731
    grow = lambda w, c: at(w, 0) / np.maximum(c, 1e-18) ** cost_power  # noqa: E731
    return shrink, grow


@register_allocator("global")
def global_threshold(graph: UnitGraph, cost: CostModel, targets: dict[str, float], scores, signals: Signals,
                     seed: int = 0, cost_power: float = 0.0, normalize: str = "mean") -> np.ndarray:
    if not 0.0 <= float(cost_power) <= 1.0:
        raise ConfigError(f"cost_power must be in [0, 1], got {cost_power}")
    if normalize not in NORMALIZE:
        raise ConfigError(f"normalize must be one of {', '.join(map(repr, NORMALIZE))}, got {normalize!r}")
    values = step_values(graph, scores, normalize)
    steps, lo, hi = limits(graph)
    dense = cost.dense_widths
    unit_cost = sum(np.abs(getattr(cost, k).step_deltas(dense, -steps)) / t for k, t in targets.items())
    # every removable step, with its unit, ranked by value per cost (lowest goes first)
    cand = [(v / max(unit_cost[i], 1e-18) ** cost_power, i) for i, vals in enumerate(values)
            for v in vals[int(lo[i] // steps[i]):]]
    cand.sort()

    def widths_after(k: int) -> np.ndarray:
        w = hi.copy()
        for _, i in cand[:k]:
            w[i] -= steps[i]
        return w

    a, b = 0, len(cand)
    while a < b:  # smallest k whose removal meets every target
        mid = (a + b) // 2
        w = widths_after(mid)
        if all(getattr(cost, key)(w) <= t for key, t in targets.items()):
            b = mid
        else:
            a = mid + 1
    shrink, grow = value_keys(graph, values, cost_power)
    return fit(graph, cost, targets, widths_after(a), shrink_key=shrink, grow_key=grow)
