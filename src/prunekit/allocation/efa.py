"""Hierarchical pruning bounded by the effective-filter analysis (arXiv 2206.03596, reconstructed).

Layer level: every Unit may lose at most ``R_l`` channels (``analysis.py``: width minus the
effective rank of its per-sample mask-gradient matrix). The removal counts are ``p_l = a R_l`` with
one shared ``a`` in [0, 1], bisected to the budget, then landed on it by ``fit.fit`` with every
Unit's lower limit at ``c_l - R_l``, so no Unit ever loses more than ``R_l``. Filter level: inside a
Unit the channels with the lowest Fisher importance go (the criterion's scores, ``filters="fisher"``)
or those most aligned with the null space of ``G`` (``filters="nullspace"``: lowest leverage in the
top-``r`` right singular vectors).

A budget that needs more than the estimated redundancy is refused in one line stating the estimate;
with ``exceed=1`` every Unit first loses its ``R_l`` and the rest is taken as one shared fraction of
what each Unit has left above ``min_keep`` (the same bisect-and-land).
"""
from __future__ import annotations

import numpy as np
import torch

from ..analysis import analyze_gradients, check_rank_options
from ..cost import CostModel
from ..errors import BudgetError, ConfigError
from ..graph import UnitGraph
from ..signals import Signals
from . import register_allocator
from .fit import fit, limits, snap

FILTERS = ("fisher", "nullspace")


def _meets(cost: CostModel, targets: dict, w: np.ndarray) -> bool:
    return all(getattr(cost, k)(w) <= t * (1 + 1e-12) for k, t in targets.items())


def _bisect(graph: UnitGraph, cost: CostModel, targets: dict, top: np.ndarray, span: np.ndarray) -> np.ndarray:
    """Widths ``top - a span`` (snapped) for the smallest a in [0, 1] that meets every target."""
    lo, hi = 0.0, 1.0
    for _ in range(50):
        mid = (lo + hi) / 2
        if _meets(cost, targets, snap(graph, top - mid * span)):
            hi = mid
        else:
            lo = mid
    return snap(graph, top - hi * span)


def _flag(value, name: str) -> bool:
    if value in (0, 1, True, False, "0", "1", "true", "false"):
        return value in (1, True, "1", "true")
    raise ConfigError(f"{name} must be 0 or 1, got {value!r}")


def nullspace_scores(G: torch.Tensor, r: int) -> torch.Tensor:
    """Leverage of each channel in the top-r right singular vectors of G (1: fully in the effective
    row space, 0: entirely in the null space)."""
    A = G.double().numpy()
    if r == 0 or not A.size:
        return torch.zeros(G.shape[1], dtype=torch.float64)
    _, _, vt = np.linalg.svd(A, full_matrices=False)
    return torch.from_numpy((vt[:r] ** 2).sum(0))


@register_allocator("efa")
def efa(graph: UnitGraph, cost: CostModel, targets: dict[str, float], scores, signals: Signals, seed: int = 0,
        rank: str = "energy", tol: float = 1e-3, energy: float = 0.99, exceed=0, filters: str = "fisher"
        ) -> np.ndarray:
    """Widths with at most R_l channels removed per Unit (``exceed=1``: beyond, when the budget asks).
    ``rank``/``tol``/``energy``: the effective-rank rule (analysis.py); ``filters``: fisher or nullspace."""
    from ..criteria.fisher import cached_mask_gradients
    check_rank_options(rank, tol, energy)
    exceed = _flag(exceed, "exceed")
    if filters not in FILTERS:
        raise ConfigError(f"filters must be one of {', '.join(map(repr, FILTERS))}, got {filters!r}")
    signals.require("efa", labels=True)
    grads = cached_mask_gradients(graph, signals)
    analysis = analyze_gradients(graph, cost, grads, rank, tol, energy)
    steps, lo, hi = limits(graph)
    R = np.array([a.removable_legal for a in analysis.units], dtype=np.float64)
    floor = hi - R  # the hierarchical bound: no Unit below c_l - R_l
    _record(signals, analysis)
    if _meets(cost, targets, floor):
        start = _bisect(graph, cost, targets, hi, R)
        key = lambda w, c: -(w - floor) / np.maximum(R, 1)  # noqa: E731  shrink where most redundancy is left
        widths = fit(graph, cost, targets, start, shrink_key=key, grow_key=lambda w, c: (w - floor) / np.maximum(R, 1),
                     lo=floor)
    elif not exceed:
        key = next(k for k, t in targets.items() if getattr(cost, k)(floor) > t * (1 + 1e-12))
        frac = analysis.fraction(key)
        asked = 1 - targets[key] / analysis.dense[key]
        name = "flops" if key == "macs" else key
        raise BudgetError(f"the {name} budget removes {100 * asked:.1f}% of {'MACs' if key == 'macs' else key} but "
                          f"the estimated maximum redundancy is {100 * frac:.1f}% (effective-filter analysis, "
                          f"{rank} rank); raise the budget or pass --option exceed=1")
    else:
        start = _bisect(graph, cost, targets, floor, floor - lo)
        left = np.maximum(floor - lo, 1)
        widths = fit(graph, cost, targets, start, shrink_key=lambda w, c: -(w - lo) / left,
                     grow_key=lambda w, c: (w - lo) / left)
    if filters == "nullspace":
        for a, (k, u) in zip(analysis.units, enumerate(graph.units)):
            scores[u.name] = nullspace_scores(grads[k], a.rank)
    signals.record["efa_exceeded"] = bool(np.any(widths < floor))
    return widths


def _record(signals: Signals, analysis) -> None:
    """What the summary and the report show: R_l and rank per Unit, the spectra and the totals."""
    signals.record["removable"] = {u.name: u.removable_legal for u in analysis.units}
    signals.record["effective_rank"] = {u.name: u.rank for u in analysis.units}
    signals.record["efa"] = analysis.to_dict()


__all__ = ["efa", "nullspace_scores"]
