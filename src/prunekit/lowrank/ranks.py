"""Ranks: by energy, by singular-value threshold, or the cheapest-to-lose ranks removed until the
whole model meets its budget (METHODS.md section 5; the budget rule is prunekit's)."""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..budget import meets
from ..errors import BudgetError
from .cost import Factor
from .decompose import Spectrum
from .errors import LowRankError


def check_energy(energy, name: str = "energy") -> float:
    if isinstance(energy, bool) or not isinstance(energy, (int, float)) or not 0.0 < energy <= 1.0:
        raise LowRankError(f"{name} must be in (0, 1] (the share of the squared singular values kept), got {energy!r}")
    return float(energy)


def check_threshold(threshold, name: str = "threshold") -> float:
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not threshold >= 0 \
            or not math.isfinite(threshold):
        raise LowRankError(f"{name} must be a finite number >= 0 (singular values below it are dropped), "
                           f"got {threshold!r}")
    return float(threshold)


def energy_rank(spec: Spectrum, energy: float) -> int:
    return rank_for_energy(spec.s, energy)


def rank_for_energy(s: torch.Tensor, energy: float) -> int:
    """Smallest r whose leading singular values ``s`` keep ``energy`` of sum(s^2); energy 1 keeps
    every non-zero one (so the reconstruction is exact). One row per filter (``decoupled``): the
    largest such r over filters, as the official code takes one r for all filters."""
    s2 = (s.double() ** 2).reshape(-1, s.shape[-1])
    if energy >= 1.0:
        r = (s2 > 0).sum(1)
    else:
        share = torch.cumsum(s2, 1) / s2.sum(1, keepdim=True).clamp_min(torch.finfo(torch.float64).tiny)
        r = (share < energy).sum(1) + 1
    return int(r.clamp(1, s2.shape[1]).max())


def threshold_rank(spec: Spectrum, threshold: float) -> int:
    """The number of singular values >= ``threshold`` (at least 1); the largest over filters for ``decoupled``."""
    s = spec.s if spec.s.ndim == 2 else spec.s[None]
    return int((s >= threshold).sum(1).clamp(1, s.shape[1]).max())


@dataclass
class Candidate:
    """A layer that may be factorized: its Factor at the highest rank considered and what it costs dense."""

    factor: Factor
    widths: tuple[float, float]   # (n, c) at the channel widths it is decomposed at
    dense_cost: dict[str, float]  # the layer as it is
    energy: torch.Tensor          # share of sum(s^2) per rank index, descending
    cap: int                      # highest rank allowed (a rank rule's, or the exact rank)

    def cost(self, rank: int) -> dict[str, float]:
        return self.factor.terms(*self.widths, rank=rank)

    def top(self) -> int:
        """The highest rank <= cap that is cheaper than the layer itself (fewer MACs, no more
        parameters); 0 when none is, and the layer stays as it is."""
        per, base = self.cost(1), self.cost(0)
        bounds = [self.cap]
        for key in ("macs", "params"):
            step, room = per[key] - base[key], self.dense_cost[key] - base[key]
            if step > 0:
                bounds.append(math.ceil(room / step) - 1 if key == "macs" else math.floor(room / step))
        return max(0, min(bounds))


def allocate(candidates: list[Candidate], base: dict[str, float], targets: dict[str, float],
             start: dict[str, int] | None = None) -> dict[str, int]:
    """Ranks for ``candidates`` ({layer: rank}; absent: stays dense) so that the model, which costs
    ``base`` unfactorized, meets ``targets``. From ``start`` (a rank rule's ranks, capped; dense when
    None), ranks are lowered one at a time, each time where the least energy is lost per unit of the
    still-unmet budgets saved: the greedy solution of the separable problem, since each layer's
    energy per rank decreases with the rank and its cost is linear in it."""
    tops = {c.factor.layer: c.top() for c in candidates}
    ranks = {}
    for c in candidates:
        r = (start or {}).get(c.factor.layer)
        if r is not None and 1 <= min(r, tops[c.factor.layer]):
            ranks[c.factor.layer] = min(r, tops[c.factor.layer])
    total = dict(base)
    for c in candidates:
        if c.factor.layer in ranks:
            _move(total, c.dense_cost, c.cost(ranks[c.factor.layer]))
    by_name = {c.factor.layer: c for c in candidates}
    while not meets(total, targets):
        unmet = [k for k in targets if total[k] > targets[k]]
        best, best_ratio = None, math.inf
        for name, c in by_name.items():
            r = ranks.get(name)
            if r is None:
                new = tops[name]
                if new < 1:
                    continue
                was, now, loss = c.dense_cost, c.cost(new), float(c.energy[new:].sum())
            elif r > 1:
                new, was, now, loss = r - 1, c.cost(r), c.cost(r - 1), float(c.energy[r - 1])
            else:
                continue
            saving = sum((was[k] - now[k]) / targets[k] for k in unmet)
            if saving > 0 and loss / saving < best_ratio:
                best, best_ratio = (name, new, was, now), loss / saving
        if best is None:
            raise BudgetError(f"decomposition alone cannot meet the budget (every layer at rank 1 still costs "
                              f"{total['macs']:.0f} MACs / {total['params']:.0f} params); prune channels first, "
                              f"e.g. method='l1+global,svd', or decompose more layers")
        name, new, was, now = best
        ranks[name] = new
        _move(total, was, now)
    return ranks


def _move(total: dict, was: dict, now: dict) -> None:
    for k in total:
        total[k] += now[k] - was[k]
