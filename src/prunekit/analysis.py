"""Effective-filter analysis: how many channels each Unit can lose before the loss notices.

A reconstruction of Zhou et al., "Neural Network Compression via Effective Filter Analysis and
Hierarchical Pruning" (arXiv 2206.03596; no public code; docs/efa.md lists every choice):

* Per Unit, the N x c matrix ``G`` of per-sample gradients of the loss with respect to a per-channel
  mask (``criteria.fisher.mask_gradients``: the mask multiplies every layer that reads the Unit, so
  coupled layers share it). The empirical Fisher / Gauss-Newton Hessian of the masks is ``G^T G / N``,
  so its rank is the rank of ``G``.
* Singular values ``s_1 >= ... >= s_c`` of ``G`` (scipy's SVD, float64). The effective rank ``r`` is
  the fewest singular values holding ``energy`` of ``sum s_k^2`` (``rank="energy"``, the default,
  ``energy=0.99``: the directions left carry 1% of the trace of the Fisher) or ``#{s_k > tol * s_1}``
  (``rank="relative"``, ``tol=1e-3`` as METHODS.md suggests; on the shipped ResNet-20 it finds no
  deficit at all: a trained network has no exact singularities). A zero matrix has rank 0.
* ``R = c - r`` channels are removable (directions of the mask the loss does not see to second
  order); as a width step, ``R`` is rounded down to the Unit's step and capped so ``min_keep`` stays.
* The network's maximum redundancy: channels ``sum R / sum c``, and MACs and parameters removed at
  widths ``c - R`` through the CostModel.

Zero channels give zero columns; channels that are exact copies (same filter and same outgoing
weights) give equal columns; a channel whose map is a linear combination of others read through
the same outgoing weights gives a dependent column: each is a rank deficit of its own size
(tests/test_efa.py). ``G`` needs at least as many samples as the widest Unit has channels, else its
rank is capped by N and the estimate is meaningless: that is refused.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np
import scipy.linalg
import torch

from .cost import CostModel
from .errors import ConfigError
from .graph import UnitGraph

RANKS = ("relative", "energy")


def check_rank_options(rank: str, tol: float, energy: float) -> None:
    if rank not in RANKS:
        raise ConfigError(f"rank must be one of {', '.join(map(repr, RANKS))}, got {rank!r}")
    if not (isinstance(tol, (int, float)) and not isinstance(tol, bool) and 0 < tol < 1):
        raise ConfigError(f"tol must be a number in (0, 1) (relative singular-value threshold), got {tol!r}")
    if not (isinstance(energy, (int, float)) and not isinstance(energy, bool) and 0 < energy <= 1):
        raise ConfigError(f"energy must be a number in (0, 1] (share of sum s^2 kept), got {energy!r}")


def singular_values(G: torch.Tensor | np.ndarray) -> np.ndarray:
    """Singular values of G, largest first (LAPACK gesdd through scipy, float64)."""
    A = np.asarray(G.detach().cpu().numpy() if isinstance(G, torch.Tensor) else G, dtype=np.float64)
    if not np.isfinite(A).all():
        raise ConfigError("mask gradients contain NaN or inf; check the model and its inputs")
    return scipy.linalg.svdvals(A) if A.size else np.zeros(0)


def effective_rank(s: np.ndarray, rank: str = "energy", tol: float = 1e-3, energy: float = 0.99) -> int:
    """Effective rank of singular values ``s`` (largest first) by relative threshold or energy."""
    check_rank_options(rank, tol, energy)
    s = np.asarray(s, dtype=np.float64)
    if not s.size or s[0] <= 0:
        return 0
    if rank == "relative":
        return int((s > tol * s[0]).sum())
    e = np.cumsum(s ** 2)
    return int(min(np.searchsorted(e, energy * e[-1] * (1 - 1e-12)) + 1, len(s)))


@dataclass
class UnitAnalysis:
    name: str
    width: int
    rank: int  # effective rank of the mask-gradient matrix
    removable: int  # R = width - rank
    removable_legal: int  # R rounded down to the Unit's step, min_keep kept
    spectrum: list[float] = field(default_factory=list)  # s_k / s_1


@dataclass
class Analysis:
    units: list[UnitAnalysis]
    samples: int
    settings: dict
    dense: dict  # macs, params
    reduced: dict  # macs, params at widths c - R (legal)

    @property
    def removable(self) -> dict[str, int]:
        return {u.name: u.removable_legal for u in self.units}

    def fraction(self, key: str) -> float:
        """Share of the dense ``key`` (macs, params, channels) removed at widths c - R."""
        if key == "channels":
            return sum(u.removable_legal for u in self.units) / max(sum(u.width for u in self.units), 1)
        return 1.0 - self.reduced[key] / self.dense[key]

    def to_dict(self) -> dict:
        return {"samples": self.samples, "settings": self.settings, "dense": self.dense, "reduced": self.reduced,
                "max_redundancy": {k: self.fraction(k) for k in ("macs", "params", "channels")},
                "units": [asdict(u) for u in self.units]}

    def total_line(self) -> str:
        return (f"at most {100 * self.fraction('macs'):.1f}% of MACs ({100 * self.fraction('params'):.1f}% of params, "
                f"{sum(u.removable_legal for u in self.units)} of {sum(u.width for u in self.units)} channels) "
                f"can be removed before losing effective filters")


def legal_removable(unit, R: int) -> int:
    """R as a legal width change: the kept width ``c - R`` rounded up to the Unit's step (so never more
    than R goes, except what ``round_to`` itself forces) and at least min_keep."""
    kept = math.ceil((unit.width - min(R, unit.width)) / unit.step - 1e-9) * unit.step
    kept = min(max(kept, unit.min_keep), unit.snap(unit.width))
    return unit.width - kept


def analyze_gradients(graph: UnitGraph, cost: CostModel, grads: dict[int, torch.Tensor], rank: str = "energy",
                      tol: float = 1e-3, energy: float = 0.99) -> Analysis:
    """The analysis from mask-gradient matrices (``criteria.fisher.mask_gradients``)."""
    check_rank_options(rank, tol, energy)
    n = min(int(G.shape[0]) for G in grads.values())
    widest = max(graph.units, key=lambda u: u.width)
    if n < widest.width:
        raise ConfigError(f"effective-filter analysis needs at least as many samples as the widest unit has channels "
                          f"({widest.name!r}: {widest.width}), got {n}; use more calibration samples")
    units = []
    for k, u in enumerate(graph.units):
        s = singular_values(grads[k])
        r = effective_rank(s, rank, tol, energy)
        spectrum = (s / s[0]).tolist() if s.size and s[0] > 0 else [0.0] * len(s)
        units.append(UnitAnalysis(u.name, u.width, r, u.width - r, legal_removable(u, u.width - r), spectrum))
    widths = np.array([u.width - a.removable_legal for u, a in zip(graph.units, units)], dtype=np.float64)
    dense = {"macs": float(cost.macs(cost.dense_widths)), "params": float(cost.params(cost.dense_widths))}
    reduced = {"macs": float(cost.macs(widths)), "params": float(cost.params(widths))}
    settings = {"rank": rank, "tol": tol, "energy": energy, "matrix": "per-sample mask gradients (N x c)"}
    return Analysis(units, n, settings, dense, reduced)


def calibration_batches(data, samples: int, batch_size: int, seed: int) -> list:
    """``samples`` seeded training images with labels, in batches (the same draw for the same seed)."""
    from .signals import Signals
    if not isinstance(samples, int) or isinstance(samples, bool) or samples < 1:
        raise ConfigError(f"samples must be an integer >= 1, got {samples!r}")
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        raise ConfigError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    sig = Signals(data, math.ceil(samples / batch_size), batch_size, seed)
    sig.require("prunekit analyze", labels=True)
    out, seen = [], 0
    for x, y in sig.batches():
        x, y = x[: samples - seen], y[: samples - seen]
        out.append((x, y))
        seen += len(x)
    return out


def analyze(model, example_inputs, data, samples: int = 1024, batch_size: int = 128, seed: int = 0,
            rank: str = "energy", tol: float = 1e-3, energy: float = 0.99, ignore=(), min_width: float = 0.05,
            round_to: int = 1) -> Analysis:
    """Effective-filter analysis of ``model`` (left untouched) on ``samples`` training images."""
    import copy
    from .cost import check_costs
    from .criteria.fisher import mask_gradients
    check_rank_options(rank, tol, energy)
    graph = UnitGraph(copy.deepcopy(model), example_inputs, ignore=ignore, min_width=min_width, round_to=round_to)
    if not len(graph):
        raise ConfigError("this model has no prunable layers (all are protected or ignored)")
    cost = CostModel(graph)
    check_costs(cost, graph.model, example_inputs)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        batches = calibration_batches(data, samples, batch_size, seed)
        grads = mask_gradients(graph, batches)
    return analyze_gradients(graph, cost, grads, rank, tol, energy)


__all__ = ["Analysis", "RANKS", "UnitAnalysis", "analyze", "analyze_gradients", "effective_rank", "singular_values"]
