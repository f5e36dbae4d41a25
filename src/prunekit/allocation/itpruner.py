"""ITPruner (Zheng et al.): layer importance from normalized HSIC, widths from the cost polynomials.

A layer whose features are largely predictable from the other layers' (high summed nHSIC) is
redundant, so it is less important: alpha = exp(-beta * s) with s normalized to sum 1.

Three solvers (docs/allocation.md; bench/results/itpruner_streams.md, allocators.md):

* ``"concave"`` (default): maximize sum alpha * U(x) with a strictly concave U (U = 1 - 1/x) under
  every cost polynomial, a convex problem in log x solved to convergence (allocation/concave.py).
  Its optimum is interior and moves with the importances, which the paper's linear objective does
  not do on our costs.
* ``"official"``: the stated problem max sum(alpha * x) with the official script's numerics. alpha
  with the paper's beta is ~1e-9 or less, far below SLSQP's default ftol, so SLSQP stops at its first
  feasible iterate: the dense widths projected onto the budget, tilted by importance. That is how
  the released CIFAR configurations arise (the ResNet-20 one comes out for any importances).
* ``"exact"``: the stated problem solved to convergence. Every conv here joins two different Units
  (no x_i^2 term), so a linear objective under the bilinear cost is bang-bang: each Unit at full or
  minimum width, and a residual stream lands at its minimum (the collapse of issue 4).

``streams="layers"`` (default) uses the paper's per-layer formulation: every tensor a Unit's
consumers read is a layer (a residual stream has one per block output), and a Unit ties its layers
to one width, so it counts once per layer in the objective (and, for "official", in SLSQP's steps:
variables sqrt(n) x).
"""
from __future__ import annotations

import copy

import numpy as np
import torch
from scipy.optimize import minimize

from ..budget import BudgetError
from ..cost import CostModel, Polynomial
from ..errors import ConfigError, DataError, UnsupportedLayerError
from ..graph import UnitGraph
from ..signals import Signals, unit_features
from . import concave, register_allocator
from .fit import fit, limits, snap

# the paper's temperatures, by the model the paper tuned them on
PAPER_BETA = {"resnet20": 246.0, "resnet56": 500.0, "vgg16_bn": 231.0, "resnet50": 2000.0}
# default beta per layer, by solver: the official numerics need the paper's scale (18-54 per layer) to
# tilt at all; the concave solver turns importance ratios into width ratios, so it needs far less
BETA_PER_LAYER = {"concave": 2.0, "official": 20.0, "exact": 20.0}
AUTO_GRID = {"concave": (0.0, 1.0, 2.0, 4.0, 8.0), "official": (0.0, 5.0, 10.0, 20.0, 40.0),
             "exact": (0.0, 5.0, 10.0, 20.0, 40.0)}  # x number of layers
STREAMS = ("layers", "unit", "keep")
SOLVERS = ("concave", "official", "exact")


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


def redundancy(S: torch.Tensor) -> np.ndarray:
    """Each layer's summed nHSIC with the others, normalized to sum 1 (s~ of METHODS.md 1.2)."""
    s = (S.sum(1) - S.diag()).numpy()
    total = s.sum()
    return s / total if total > 0 else np.full_like(s, 1.0 / len(s))


def importance(S: torch.Tensor, beta: float) -> np.ndarray:
    """exp(-beta * s~) up to a constant factor that puts the largest at 1 (the exact solver's optimum
    ignores it; the official solver puts the paper's scale back)."""
    s = redundancy(S)
    return np.exp(-beta * (s - s.min()))


def layer_grams(graph: UnitGraph, signals: Signals, images: int, kernel: str,
                per_layer: bool) -> tuple[list[torch.Tensor], np.ndarray]:
    """Gram matrices of one calibration batch's features, one per layer, and each layer's Unit.

    With ``per_layer`` every distinct tensor a Unit's consumers read is a layer (a residual stream:
    each block output); otherwise a Unit is one layer, read at its first consumer.
    """
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
    grams: list[torch.Tensor] = []
    owner: list[int] = []

    def consume(k: int, feats: torch.Tensor) -> None:
        if not torch.isfinite(feats).all():
            raise DataError(f"activations of unit {graph.units[k].name!r} contain NaN or inf; check the model and its inputs")
        grams.append(gram(feats, kernel))
        owner.append(k)

    unit_features(graph, [batch], consume, all_points=per_layer)
    unread = sorted(set(range(len(graph.units))) - set(owner))
    if unread:
        name = graph.units[unread[0]].name
        raise UnsupportedLayerError(f"itpruner saw no features of unit {name!r} (its consumers never ran); "
                                    f"pass ignore=['{name}']")
    return grams, np.array(owner, dtype=np.int64)


def solve(polys: dict[str, Polynomial], targets: dict[str, float], weight: np.ndarray, W: np.ndarray,
          lo: np.ndarray, layers: np.ndarray, official: bool = True) -> np.ndarray:
    """SLSQP from x = 1 on kept fractions x: max weight.x s.t. every cost polynomial <= its target.

    The variables are y = sqrt(layers) * x, so a Unit tied across n layers moves in SLSQP's steps
    as n layers would in the per-layer problem. ``official``: the official script's numerics
    (absolute constraint, default tolerances); otherwise a scaled constraint solved to convergence.
    """
    r = np.sqrt(layers)
    cons = []
    for key, t in targets.items():
        p, scale = polys[key], (1.0 if official else t)
        cons.append({"type": "ineq", "fun": lambda y, p=p, t=t, c=scale: (t - p(y / r * W)) / c,
                     "jac": lambda y, p=p, c=scale: -(p.grad(y / r * W) * W / r) / c})
    options = {} if official else {"maxiter": 500, "ftol": 1e-10}
    res = minimize(lambda y: -(weight / r) @ y, r.copy(), jac=lambda y: -weight / r, method="SLSQP",
                   bounds=list(zip(r * lo / W, r)), constraints=cons, options=options)
    x = np.clip(res.x / r, lo / W, 1.0)
    worst = max((polys[k](x * W) - t) / t for k, t in targets.items())
    if worst > 0.05:
        raise BudgetError(f"SLSQP could not reach the budget (still {100 * worst:.1f}% above it: {res.message}); "
                          "raise the budget or lower min_width")
    return x * W


def widths_for(graph: UnitGraph, cost: CostModel, targets: dict[str, float], S: torch.Tensor, owner: np.ndarray,
               beta: float, streams: str = "layers", solver: str = "concave", tol: float = concave.TOL,
               eta: float = concave.ETA) -> np.ndarray:
    """Widths from the layers' nHSIC: the solver for the shape, then rounding onto the budget."""
    steps, lo, _ = limits(graph)
    W = cost.dense_widths
    layers = np.bincount(owner, minlength=len(W)).astype(np.float64)
    weight = np.bincount(owner, weights=importance(S, beta), minlength=len(W))  # tied layers add up
    if streams == "keep":
        lo = np.where(layers > 1, W, lo)
        _check_keep_feasible(cost, targets, lo)
    polys = {k: getattr(cost, k) for k in targets}
    if solver == "concave":
        return concave.allocate(graph, cost, targets, weight, lo, tol, eta)
    # the official script uses alpha = exp(-beta * s~) unscaled: tiny for the paper's beta
    scale = float(np.exp(-beta * redundancy(S).min())) if solver == "official" else 1.0
    x = solve(polys, targets, weight * scale, W, lo, layers, solver == "official")
    value = weight * steps / W  # what one width step of each Unit is worth

    def key(w, c):
        return value / np.maximum(c, 1e-18)

    return fit(graph, cost, targets, np.maximum(snap(graph, np.round(x)), lo), key, key, lo=lo)


def _check_keep_feasible(cost: CostModel, targets: dict[str, float], lo: np.ndarray) -> None:
    for key, t in targets.items():
        least = getattr(cost, key)(lo)
        if least > t * (1 + 1e-12):
            raise BudgetError(f"with streams='keep' the smallest model still has {least / t:.2f}x the "
                              f"{'flops' if key == 'macs' else key} budget; raise the budget or use streams='layers'")


def _auto_beta(graph, cost, targets, S, owner, scores, signals, seed, streams, solver, tol, eta) -> tuple[float, dict]:
    """Pick beta by held-out accuracy after BatchNorm re-estimation (no fine-tuning)."""
    from ..data import holdout_split
    from ..plan import Plan
    from ..train import evaluate, recalibrate_bn
    if signals.dataset is None:
        raise ConfigError("beta='auto' needs training data: pass data=... (CLI: --dataset)")
    fit_part, held = holdout_split(signals.dataset, fraction=0.1, seed=seed)
    held = torch.utils.data.Subset(held, range(min(len(held), 2000)))
    results = {}
    for mult in AUTO_GRID[solver]:
        beta = mult * len(owner)
        w = widths_for(graph, cost, targets, S, owner, beta, streams, solver, tol, eta)
        trial = copy.deepcopy(graph.model)
        trial_graph = UnitGraph(trial, graph.example_inputs, ignore=graph.ignored)
        Plan.from_widths(graph, w, scores, method="itpruner", budget="", input_shape=[]).apply(trial_graph)
        recalibrate_bn(trial, fit_part, batches=10, batch_size=128)
        results[beta] = evaluate(trial, held)
    best = max(results, key=lambda b: (results[b], -b))
    return best, {str(b): a for b, a in results.items()}


def _choice(name: str, value: str, allowed: tuple[str, ...]) -> str:
    if value not in allowed:
        raise ConfigError(f"{name} must be one of {', '.join(map(repr, allowed))}, got {value!r}")
    return value


@register_allocator("itpruner")
def itpruner(graph: UnitGraph, cost: CostModel, targets: dict[str, float], scores, signals: Signals, seed: int = 0,
             beta: float | str | None = None, kernel: str = "linear", images: int = 100, streams: str = "layers",
             solver: str = "concave", tol: float = concave.TOL, eta: float = concave.ETA) -> np.ndarray:
    """ITPruner widths.

    streams: "layers" (one layer per tensor a Unit's consumers read, tied to the Unit's width),
    "unit" (one layer per Unit: the official ResNet-50 code's one entry per stage stream, cut several
    times harder than the layers beside it), or "keep" (as "layers", but Units read at several
    tensors, i.e. residual streams, keep their full width and the budget goes to the rest).
    solver: "concave" (importance-weighted concave utility, solved to convergence: the widths follow
    the importances), "official" (the official script's numerics: a projection of the dense model
    onto the budget, tilted by importance) or "exact" (the stated linear problem solved to
    convergence: bang-bang). tol: the concave solver's tolerance; eta: its utility's curvature.
    beta: a number, a model name from PAPER_BETA, or "auto" (held-out accuracy over AUTO_GRID);
    default BETA_PER_LAYER[solver] x number of layers.
    """
    streams, solver = _choice("streams", streams, STREAMS), _choice("solver", solver, SOLVERS)
    if not 0.0 < float(tol) < 1e-2:
        raise ConfigError(f"tol must be a small positive number (the solver's tolerance, e.g. 1e-10), got {tol}")
    if not 1.0 <= float(eta) <= 10.0:
        raise ConfigError(f"eta must be in [1, 10] (the utility's curvature: 1 = log, 2 = 1 - 1/x), got {eta}")
    grams, owner = layer_grams(graph, signals, int(images), kernel, per_layer=streams != "unit")
    S = nhsic_matrix(grams)
    if beta is None:
        beta = BETA_PER_LAYER[solver] * len(owner)
    beta = PAPER_BETA.get(beta, beta)  # e.g. beta="resnet56" uses the paper's 500
    if beta == "auto":
        beta, tried = _auto_beta(graph, cost, targets, S, owner, scores, signals, seed, streams, solver, float(tol),
                                 float(eta))
        signals.record["beta_grid_accuracy"] = tried
    try:
        beta = float(beta)
    except ValueError:
        raise ConfigError(f"beta must be a number >= 0, 'auto' or one of {sorted(PAPER_BETA)}, got {beta!r}") from None
    if beta < 0 or not np.isfinite(beta):
        raise ConfigError(f"beta must be a number >= 0, 'auto' or one of {sorted(PAPER_BETA)}, got {beta}")
    layers = np.bincount(owner, minlength=len(graph.units))
    mean = np.bincount(owner, weights=importance(S, beta), minlength=len(graph.units)) / layers
    signals.record.update(beta=beta, streams=streams, solver=solver,
                          importance={u.name: float(a) for u, a in zip(graph.units, mean)},
                          layers={u.name: int(n) for u, n in zip(graph.units, layers)})
    widths = widths_for(graph, cost, targets, S, owner, beta, streams, solver, float(tol), float(eta))
    signals.record["widths"] = {u.name: int(w) for u, w in zip(graph.units, widths)}
    return widths
