"""Importance-weighted concave utility of the kept fractions under the cost polynomials.

    maximize  sum_u v_u U(x_u),  U(x) = (x^(1-eta) - 1) / (1 - eta)  (eta = 1: log x)
    subject to  p_k(W x) <= t_k for every budget k,  lo/W <= x <= 1

(derivation: docs/allocation.md). In y = log x every cost polynomial c + a.w + w.Q.w with
non-negative coefficients is a posynomial, so log p_k(W exp y) is convex, and v_u U(exp y_u) is
concave for eta >= 1: one optimum, which SLSQP finds from any start. eta = 1 (log) is degenerate on
our costs: a bilinear term w_i w_j only sees y_i + y_j, so trading a stream's width against its
blocks' inner widths costs nothing and the linear log objective runs to a bound again. eta > 1
(default 2: U = 1 - 1/x) is strictly concave in y, so the optimum is interior: v_u x_u^(1-eta) =
lambda * x_u dp/dx_u, each Unit's marginal utility balances its share of the cost's elasticity,
and it moves with v (raising v_u never lowers x_u: for any fixed feasible set, v.U(y) >= v.U(y')
and v'.U(y') >= v'.U(y) add up to (v'_u - v_u)(U(y'_u) - U(y_u)) >= 0).

The continuous widths are then rounded onto legal widths by the same utility: round down, then
greedily shrink (while over a target) or grow (while a step fits) the Unit whose step changes
v_u log w_u most per unit of cost. Ties (symmetric Units of equal importance) move together or not
at all, so equal problems get equal widths.
"""
from __future__ import annotations

import numpy as np
from scipy.optimize import minimize

from ..cost import CostModel, Polynomial
from ..errors import BudgetError
from ..graph import UnitGraph
from .fit import limits

TOL = 1e-12  # SLSQP's ftol on the normalized objective: converged far below one channel
SNAP_SLACK = 1e-4  # channels: a continuous width this close below a legal one rounds up to it
TIE = 1e-9  # relative: keys this close are one tie group (symmetric Units)
ETA = 2.0  # the utility's curvature: U = 1 - 1/x (eta = 1, log, is degenerate on bilinear costs)


def utility(x: np.ndarray, eta: float = ETA) -> np.ndarray:
    """U(x) = (x^(1-eta) - 1) / (1 - eta): increasing, concave, U(1) = 0; log x at eta = 1."""
    x = np.asarray(x, dtype=np.float64)
    return np.log(x) if eta == 1 else (x ** (1 - eta) - 1) / (1 - eta)


def solve(polys: dict[str, Polynomial], targets: dict[str, float], value: np.ndarray, W: np.ndarray,
          lo: np.ndarray, tol: float = TOL, eta: float = ETA, maxiter: int = 2000) -> np.ndarray:
    """Continuous widths maximizing value . U(w / W) under every polynomial, by SLSQP in
    y = log(w / W) with analytic gradients (objective and constraints), started from the dense model."""
    v = np.asarray(value, dtype=np.float64)
    v = v / v.sum() if v.sum() > 0 else np.full_like(W, 1.0 / len(W))
    k = eta - 1.0  # U(exp y) = (exp(-k y) - 1) / -k, dU/dy = exp(-k y)
    cons = []
    for key, t in targets.items():
        p = polys[key]
        cons.append({"type": "ineq", "fun": lambda y, p=p, t=t: np.log(t) - np.log(p(W * np.exp(y))),
                     "jac": lambda y, p=p: -(W * np.exp(y) * p.grad(W * np.exp(y))) / p(W * np.exp(y))})
    lower = np.log(np.maximum(lo, 1e-12) / W)

    def run(start):
        res = minimize(lambda y: -v @ utility(np.exp(y), eta), start, jac=lambda y: -v * np.exp(-k * y),
                       method="SLSQP", bounds=list(zip(lower, np.zeros_like(W))), constraints=cons,
                       options={"ftol": tol, "maxiter": maxiter})
        w = W * np.exp(np.clip(res.x, lower, 0.0))
        return res, w, max((polys[k](w) - t) / t for k, t in targets.items())

    res, w, worst = run(np.zeros_like(W))
    if worst > 1e-6:  # a target near the smallest model: SLSQP's line search can stall on the way from dense
        res, w, worst = min((res, w, worst), run(lower.copy()), key=lambda r: r[2])
    if worst > 1e-6:
        raise BudgetError(f"the concave allocation could not reach the budget (still {100 * worst:.2g}% above it: "
                          f"{res.message}); raise the budget or lower min_width")
    return w


def round_widths(polys: dict[str, Polynomial], targets: dict[str, float], widths: np.ndarray, value: np.ndarray,
                 steps: np.ndarray, low: np.ndarray, hi: np.ndarray, eta: float = ETA) -> np.ndarray:
    """Legal widths (multiples of ``steps`` in [low, hi]) from continuous ones, meeting every target,
    by the objective's own greedy steps."""
    value = np.asarray(value, dtype=np.float64)
    w = np.clip(np.floor(widths / steps + SNAP_SLACK / steps) * steps, low, hi)

    def fits(w) -> bool:
        return all(p(w) <= targets[k] * (1 + 1e-12) for k, p in polys.items())

    def per_cost(w, sign) -> np.ndarray:
        # utility changed by one step of each Unit, per fraction of the budgets the step moves
        du = value * np.abs(utility(np.maximum(w + sign * steps, 1e-12) / hi, eta) - utility(w / hi, eta))
        dc = sum(np.abs(p.step_deltas(w, sign * steps)) / targets[k] for k, p in polys.items())
        return du / np.maximum(dc, 1e-18)

    while not fits(w):  # rounding up by SNAP_SLACK (or a second budget) may overshoot: shrink
        can = w - steps >= low - 1e-9
        if not can.any():
            break  # infeasible: the pipeline's checks have refused such budgets before
        key = np.where(can, per_cost(w, -1.0), np.inf)
        w = w - steps * (can & (key <= key.min() + TIE * abs(key.min())))
    frozen = np.zeros(len(w), dtype=bool)
    while True:
        can = (w + steps <= hi + 1e-9) & ~frozen
        for k, p in polys.items():
            can &= p(w) + p.step_deltas(w, steps) <= targets[k] * (1 + 1e-12)
        if not can.any():
            return w
        key = np.where(can, per_cost(w, 1.0), -np.inf)
        group = can & (key >= key.max() - TIE * abs(key.max()))
        trial = w + steps * group
        if fits(trial):
            w = trial
        else:  # the budget cannot serve a tie evenly: leave the tie even
            frozen |= group


def allocate(graph: UnitGraph, cost: CostModel, targets: dict[str, float], value: np.ndarray,
             lo: np.ndarray | None = None, tol: float = TOL, eta: float = ETA) -> np.ndarray:
    """Widths for a model: solve, then round onto legal widths under every target."""
    steps, low, hi = limits(graph)
    low = low if lo is None else np.maximum(low, lo)
    polys = {k: getattr(cost, k) for k in targets}
    x = solve(polys, targets, value, cost.dense_widths, low, tol, eta)
    return round_widths(polys, targets, x, value, steps, low, hi, eta)
