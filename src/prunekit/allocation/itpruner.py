"""ITPruner (Zheng et al.): layer importance from normalized HSIC, widths from one SLSQP solve.

A Unit whose features are largely predictable from the other Units' (high summed nHSIC) is
redundant, so it is less important: alpha_i = exp(-beta * s_i) with s normalized to sum 1. The
widths maximize sum(alpha_i x_i) under the cost polynomial, from x = 1 (METHODS.md section 1).
"""
from __future__ import annotations

import copy

import numpy as np
import torch
from scipy.optimize import minimize

from ..budget import BudgetError
from ..cost import CostModel
from ..errors import ConfigError, DataError
from ..graph import UnitGraph
from ..signals import Signals, unit_features
from . import register_allocator
from .fit import fit, limits, snap

# the paper's temperatures, by the model the paper tuned them on
PAPER_BETA = {"resnet20": 246.0, "resnet56": 500.0, "vgg16_bn": 231.0, "resnet50": 2000.0}
BETA_PER_UNIT = 20.0  # default beta = 20 x number of Units: the paper's values are 18-54 per width group
AUTO_GRID = (0.0, 5.0, 10.0, 20.0, 40.0)  # x number of Units


def center(K: torch.Tensor) -> torch.Tensor:
    """H K H with H = I - 11^T/n (the biased HSIC estimator)."""
    K = K - K.mean(0, keepdim=True)
    return K - K.mean(1, keepdim=True)


def gram(X: torch.Tensor, kernel: str = "linear", threshold: float = 1.0) -> torch.Tensor:
    """n x n Gram matrix of the flattened features X (n x d), float64."""
    X = X.reshape(X.shape[0], -1).double()
    if kernel == "linear":
        return X @ X.T
    if kernel == "gaussian":
        sq = torch.cdist(X, X).pow(2)
        median = sq[sq > 0].median() if (sq > 0).any() else torch.tensor(1.0, dtype=sq.dtype)
        return torch.exp(-sq / (2.0 * threshold**2 * median))
    raise ConfigError(f"unknown kernel {kernel!r}; choose linear or gaussian")


def nhsic_matrix(grams: list[torch.Tensor]) -> torch.Tensor:
    """nHSIC between every pair: <K~i, K~j> / (|K~i| |K~j|); 0 where a Unit's features are constant."""
    C = torch.stack([center(K).flatten() for K in grams])
    norms = C.norm(dim=1)
    S = (C @ C.T) / torch.outer(norms, norms).clamp_min(1e-300)
    S[norms == 0] = 0.0
    S[:, norms == 0] = 0.0
    return S


def nhsic(X: torch.Tensor, Y: torch.Tensor, kernel: str = "linear") -> float:
    return float(nhsic_matrix([gram(X, kernel), gram(Y, kernel)])[0, 1])


def importance(S: torch.Tensor, beta: float) -> np.ndarray:
    s = (S.sum(1) - S.diag()).numpy()
    total = s.sum()
    s = s / total if total > 0 else np.full_like(s, 1.0 / len(s))
    # exp(-beta * s) up to a constant factor, which changes no allocation but keeps the largest
    # importance at 1 so SLSQP's tolerances stay meaningful when beta is large
    return np.exp(-beta * (s - s.min()))


def calibration_grams(graph: UnitGraph, signals: Signals, images: int, kernel: str) -> list[torch.Tensor]:
    signals.require("itpruner")
    xs, have = [], 0
    for x, _ in signals.batches():
        xs.append(x[: images - have])
        have += len(xs[-1])
        if have >= images:
            break
    batch = torch.cat(xs)
    if len(batch) < 2:
        raise ConfigError(f"itpruner needs a calibration batch of at least 2 images, got {len(batch)}")
    grams: list[torch.Tensor | None] = [None] * len(graph.units)

    def consume(k: int, feats: torch.Tensor) -> None:
        if not torch.isfinite(feats).all():
            raise DataError(f"activations of unit {graph.units[k].name!r} contain NaN or inf; check the model and its inputs")
        grams[k] = gram(feats, kernel)

    unit_features(graph, [batch], consume)
    return grams  # type: ignore[return-value]


def solve(graph: UnitGraph, cost: CostModel, targets: dict[str, float], alpha: np.ndarray) -> np.ndarray:
    """SLSQP on kept fractions x: max alpha.x s.t. every cost polynomial <= its target."""
    W = cost.dense_widths
    _, lo, _ = limits(graph)
    cons = []
    for key, t in targets.items():
        p = getattr(cost, key)
        cons.append({"type": "ineq", "fun": lambda x, p=p, t=t: (t - p(x * W)) / t,
                     "jac": lambda x, p=p, t=t: -(p.grad(x * W) * W) / t})
    res = minimize(lambda x: -alpha @ x, np.ones(len(W)), jac=lambda x: -alpha, method="SLSQP",
                   bounds=list(zip(lo / W, np.ones(len(W)))), constraints=cons, options={"maxiter": 500, "ftol": 1e-10})
    x = res.x
    worst = max((getattr(cost, k)(x * W) - t) / t for k, t in targets.items())
    if worst > 0.05:
        raise BudgetError(f"SLSQP could not reach the budget (still {100 * worst:.1f}% above it: {res.message}); "
                          "raise the budget or lower min_width")
    return x * W


def widths_for(graph, cost, targets, alpha) -> np.ndarray:
    steps, _, _ = limits(graph)
    W = cost.dense_widths
    value = alpha * steps / W  # what one width step of each Unit is worth

    def key(w, c):
        return value / np.maximum(c, 1e-18)

    return fit(graph, cost, targets, snap(graph, np.round(solve(graph, cost, targets, alpha))), key, key)


def _auto_beta(graph, cost, targets, S, scores, signals, seed) -> tuple[float, dict]:
    """Pick beta by held-out accuracy after BatchNorm re-estimation (no fine-tuning)."""
    from ..data import holdout_split
    from ..plan import Plan
    from ..train import evaluate, recalibrate_bn
    if signals.dataset is None:
        raise ConfigError("beta='auto' needs training data: pass data=... (CLI: --dataset)")
    fit_part, held = holdout_split(signals.dataset, fraction=0.1, seed=seed)
    held = torch.utils.data.Subset(held, range(min(len(held), 2000)))
    results = {}
    for mult in AUTO_GRID:
        beta = mult * len(graph.units)
        w = widths_for(graph, cost, targets, importance(S, beta))
        trial = copy.deepcopy(graph.model)
        trial_graph = UnitGraph(trial, graph.example_inputs, ignore=graph.ignored)
        Plan.from_widths(graph, w, scores, method="itpruner", budget="", input_shape=[]).apply(trial_graph)
        recalibrate_bn(trial, fit_part, batches=10, batch_size=128)
        results[beta] = evaluate(trial, held)
    best = max(results, key=lambda b: (results[b], -b))
    return best, {str(b): a for b, a in results.items()}


@register_allocator("itpruner")
def itpruner(graph: UnitGraph, cost: CostModel, targets: dict[str, float], scores, signals: Signals, seed: int = 0,
             beta: float | str | None = None, kernel: str = "linear", images: int = 100) -> np.ndarray:
    S = nhsic_matrix(calibration_grams(graph, signals, int(images), kernel))
    if beta is None:
        beta = BETA_PER_UNIT * len(graph.units)
    beta = PAPER_BETA.get(beta, beta)  # e.g. beta="resnet56" uses the paper's 500
    if beta == "auto":
        beta, tried = _auto_beta(graph, cost, targets, S, scores, signals, seed)
        signals.record["beta_grid_accuracy"] = tried
    try:
        beta = float(beta)
    except ValueError:
        raise ConfigError(f"beta must be a number >= 0, 'auto' or one of {sorted(PAPER_BETA)}, got {beta!r}") from None
    if beta < 0 or not np.isfinite(beta):
        raise ConfigError(f"beta must be a number >= 0, 'auto' or one of {sorted(PAPER_BETA)}, got {beta}")
    alpha = importance(S, beta)
    signals.record["beta"] = beta
    signals.record["importance"] = {u.name: float(a) for u, a in zip(graph.units, alpha)}
    return widths_for(graph, cost, targets, alpha)
