"""ACP (Chang et al., Applied Intelligence 2022): channel clustering, then a particle swarm over widths.

1. Clustering: each channel of a Unit is one point, its mean feature map over ``cluster_images``
   training images (the features the Unit's consumers read; a residual stream concatenates the maps
   of every block output along it). DBSCAN with cosine distance groups redundant channels; the
   start width is clusters + noise points. ``eps`` is the compression knob of the paper.
2. PSO over integer widths (in steps of each Unit's step size) around that start, scored by the
   accuracy of the pruned candidate on held-out training data (``fitness.HeldOut``).

Differences from the official code (docs/acp.md): every candidate is repaired onto the budget by
``fit.fit`` (the paper has no cost constraint); fitness is measured on a held-out split of the
training set, not the test set; weights are inherited through the criterion (L1 in the preset), not
at random; and the update's bugs are fixed: velocities are updated for the mutated dimensions (the
code updates the first 8), the new velocity moves the position (the code uses the old one), the
mutated dimensions are distinct and include the last Unit, an upper overshoot clips to the dense
width (not one below it), and positions round instead of truncating.
"""
from __future__ import annotations

import math
import re
import time
from numbers import Real

import numpy as np
import torch
from tqdm.auto import tqdm

from ..budget import BudgetError
from ..cost import CostModel
from ..errors import ConfigError, DataError, UnsupportedLayerError
from ..graph import UnitGraph
from ..signals import Signals, unit_features
from . import register_allocator
from .fit import fit, limits
from .fitness import HeldOut, pruned_copy

CONSTRICTION = 0.729  # the official velocity factor (Clerc's constriction coefficient)
STEP_SCALE = 2.0  # the official ``r``: a position moves by r * velocity


# -- clustering ----------------------------------------------------------------------------------
def mean_feature_maps(graph: UnitGraph, signals: Signals, images: int) -> list[np.ndarray]:
    """Per Unit a (channels, columns) float64 array: each channel's feature map averaged over the
    first ``images`` calibration images; a Unit read at several tensors (a residual stream) has them
    side by side. A read with one position per channel (a linear layer after global pooling) has no
    map to average, and its mean would make every channel alike under cosine distance: there the
    channel's values over the images are its columns."""
    signals.require("acp")
    points: list[list[list[torch.Tensor]]] = [[] for _ in graph.units]  # unit -> point -> per-batch parts
    vector: list[list[bool]] = [[] for _ in graph.units]  # unit -> point -> read with one position
    seen = 0
    for x, _ in signals.batches():
        x = x[: images - seen]
        calls: list[list[torch.Tensor]] = [[] for _ in graph.units]
        unit_features(graph, [x], lambda k, f: calls[k].append(f), all_points=True)
        for k, feats in enumerate(calls):
            if not points[k]:
                points[k], vector[k] = [[] for _ in feats], [f.shape[2] == 1 for f in feats]
            for parts, f, vec in zip(points[k], feats, vector[k]):
                parts.append(f[:, :, 0].T if vec else f.sum(0))  # (C, images) or (C, positions)
        seen += len(x)
        if seen >= images:
            break
    unread = [u.name for u, p in zip(graph.units, points) if not p]
    if unread:
        raise UnsupportedLayerError(f"acp saw no features of unit {unread[0]!r} (its consumers never ran); "
                                    f"pass ignore=['{unread[0]}']")
    out = []
    for u, unit_points, flags in zip(graph.units, points, vector):
        cols = [torch.cat(parts, dim=1) if vec else sum(parts) / seen for parts, vec in zip(unit_points, flags)]
        X = torch.cat(cols, dim=1).numpy()
        if not np.isfinite(X).all():
            raise DataError(f"activations of unit {u.name!r} contain NaN or inf; check the model and its inputs")
        out.append(X)
    return out


def cosine_distances(X: np.ndarray) -> np.ndarray:
    """1 - cosine similarity of the rows; two all-zero rows (dead channels) are at distance 0, so they
    cluster together, and 1 from every other row (scikit-learn's cosine puts them at 1 from everything)."""
    norms = np.linalg.norm(X, axis=1)
    zero = norms <= 1e-12 * max(float(norms.max(initial=0.0)), 1e-300)
    unit = X / np.where(zero, 1.0, norms)[:, None]
    D = np.clip(1.0 - unit @ unit.T, 0.0, 2.0)
    D[np.ix_(zero, zero)] = 0.0
    np.fill_diagonal(D, 0.0)
    return D


def cluster_count(X: np.ndarray, eps: float, min_samples: int = 5) -> int:
    """DBSCAN clusters + noise points of the rows of X: the channels left when each cluster collapses
    to one channel and every outlier is kept."""
    from sklearn.cluster import DBSCAN
    labels = DBSCAN(eps=eps, min_samples=min_samples, metric="precomputed").fit(cosine_distances(X)).labels_
    return len(set(labels.tolist()) - {-1}) + int((labels == -1).sum())


def cluster_widths(graph: UnitGraph, signals: Signals, eps: float, images: int = 200,
                   min_samples: int = 5) -> np.ndarray:
    """The clustering start: per Unit clusters + noise, rounded up to a legal width."""
    counts = [cluster_count(X, eps, min_samples) for X in mean_feature_maps(graph, signals, images)]
    return np.array([min(u.width, max(u.min_keep, math.ceil(n / u.step) * u.step))
                     for u, n in zip(graph.units, counts)], dtype=np.float64)


# -- search --------------------------------------------------------------------------------------
def inertia(cycle: int, cycles: int) -> float:
    """The paper's schedule ``0.5 (8 - cycle) / 20 + 0.4`` (0.6 down to 0.425 over 8 cycles), for any
    number of cycles: 0.4 + 0.2 (cycles - cycle) / cycles."""
    return 0.4 + 0.2 * (cycles - cycle) / max(cycles, 1)


def parse_search_budget(value) -> tuple[float | None, int | None]:
    """(seconds, evaluations): a number or "90s" is seconds, "40evals" a number of fitness evaluations."""
    if value is None:
        return None, None
    if isinstance(value, Real) and not isinstance(value, bool):
        if value > 0:
            return float(value), None
    elif isinstance(value, str):
        m = re.fullmatch(r"\s*(\d+(?:\.\d*)?)\s*(s|sec|seconds|e|evals|evaluations)\s*", value.lower())
        if m and float(m.group(1)) > 0:
            if m.group(2).startswith("s"):
                return float(m.group(1)), None
            if float(m.group(1)).is_integer():
                return None, int(float(m.group(1)))
    raise ConfigError(f"search_budget must be seconds > 0 (e.g. 600 or '600s') or a number of fitness evaluations "
                      f"(e.g. '40evals'), got {value!r}")


class _Stop(Exception):
    """The search budget is spent."""


def _positive(name: str, value, integer: bool = True, zero: bool = False) -> None:
    ok = isinstance(value, Real) and not isinstance(value, bool) and (not integer or float(value).is_integer())
    if not ok or not (value >= 0 if zero else value > 0):
        kind = "an integer" if integer else "a number"
        raise ConfigError(f"{name} must be {kind} {'>= 0' if zero else '> 0'}, got {value!r}")


@register_allocator("acp")
def acp(graph: UnitGraph, cost: CostModel, targets: dict[str, float], scores, signals: Signals, seed: int = 0,
        eps: float = 0.1, particles: int = 10, cycles: int = 8, mutations: int = 8, max_velocity: float = 2.0,
        c1: float = 2.0, c2: float = 2.0, fitness: str = "bn", search_budget=None, holdout: float = 0.1,
        holdout_images: int = 2000, fitness_batches: int = 10, train_steps: int = 100, train_lr: float = 0.01,
        train_batch_size: int = 64, cluster_images: int = 200, min_samples: int = 5) -> np.ndarray:
    """Widths of the best candidate found. ``eps``: DBSCAN radius (cosine distance; larger: fewer
    channels at the start). ``particles``, ``cycles``, ``mutations`` (dimensions moved per particle
    and cycle), ``max_velocity`` (steps), ``c1``/``c2``: the swarm, official defaults. ``fitness``:
    "bn" (BatchNorm re-estimation on ``fitness_batches`` batches of 128) or "train" (then
    ``train_steps`` SGD steps at ``train_lr``), scored on ``holdout_images`` images of a ``holdout``
    fraction of the training data. ``search_budget``: seconds, or "Nevals", after which the best so
    far is returned."""
    if not isinstance(eps, Real) or isinstance(eps, bool) or not eps > 0:
        raise ConfigError(f"eps must be a number > 0 (DBSCAN's cosine radius, e.g. 0.1), got {eps!r}")
    for name, value in (("particles", particles), ("mutations", mutations), ("fitness_batches", fitness_batches),
                        ("train_steps", train_steps), ("train_batch_size", train_batch_size),
                        ("cluster_images", cluster_images), ("min_samples", min_samples)):
        _positive(name, value)
    _positive("cycles", cycles, zero=True)
    for name, value in (("max_velocity", max_velocity), ("train_lr", train_lr)):
        _positive(name, value, integer=False)
    for name, value in (("c1", c1), ("c2", c2)):
        _positive(name, value, integer=False, zero=True)
    seconds, max_evals = parse_search_budget(search_budget)
    steps, lo, hi = limits(graph)
    for key, target in targets.items():
        least = getattr(cost, key)(lo)
        if least > target * (1 + 1e-12):
            raise BudgetError(f"{'flops' if key == 'macs' else key} budget {target:.4g} is below the smallest prunable "
                              f"model ({least:.4g}); raise the budget or lower min_width")
    if signals.dataset is None:
        raise ConfigError("acp scores candidates on held-out training data: pass data=... (CLI: --dataset NAME)")
    judge = HeldOut(signals.dataset, fitness, holdout, holdout_images, seed, int(fitness_batches), int(train_steps),
                    float(train_lr), int(train_batch_size))

    t0 = time.perf_counter()
    start = cluster_widths(graph, signals, float(eps), int(cluster_images), int(min_samples))
    t_cluster = time.perf_counter() - t0
    rng = np.random.default_rng(seed)
    lo_s, hi_s = lo / steps, hi / steps  # positions and velocities are in width steps
    cache: dict[tuple[int, ...], float] = {}
    history: list[dict] = []  # every evaluated candidate: cycle, fitness, macs
    hits = 0

    def repair(pos: np.ndarray) -> np.ndarray:
        """The candidate scaled onto the budget, keeping its shape: shrink the Unit furthest above its
        candidate width, grow the one furthest below (``fit.fit``)."""
        want = np.clip(np.rint(pos), lo_s, hi_s) * steps
        key = lambda w, c: -(w / want)  # noqa: E731
        return fit(graph, cost, targets, want, shrink_key=key, grow_key=key) / steps

    def score(pos: np.ndarray, cycle: int) -> float:
        nonlocal hits
        widths = tuple(int(v) for v in np.rint(pos * steps))
        if widths in cache:
            hits += 1
            return cache[widths]
        spent = time.perf_counter() - t0
        if history and ((seconds is not None and spent >= seconds)
                        or (max_evals is not None and len(history) >= max_evals)):
            raise _Stop  # the best so far is returned; at least the clustering start is always scored
        w = np.array(widths, dtype=np.float64)
        accuracy = judge(pruned_copy(graph, w, scores))
        cache[widths] = accuracy
        history.append({"cycle": cycle, "fitness": accuracy, "macs": float(cost.macs(w)),
                        "params": float(cost.params(w))})
        return accuracy

    D = len(graph.units)
    x = np.zeros((particles, D))
    v = rng.uniform(-max_velocity, max_velocity, (particles, D))
    fx = np.full(particles, -np.inf)
    best_x, best_f = repair(start / steps), -np.inf
    per_cycle: list[dict] = []
    stopped = False
    bar = tqdm(total=cycles + 1, desc="acp", unit="cycle", leave=False, disable=not signals.progress)
    try:
        # population: particle i at start + i * s, s in {-1, 0, 1} per Unit (particle 0 is the start)
        for i in range(particles):
            x[i] = repair(start / steps + i * rng.integers(-1, 2, D))
            fx[i] = score(x[i], 0)
            if fx[i] > best_f:
                best_x, best_f = x[i].copy(), fx[i]
        p_x, p_f = x.copy(), fx.copy()
        per_cycle.append(_cycle_row(0, best_f, best_x * steps, cost))
        _show(bar, best_f, best_x * steps, cost)
        for cycle in range(cycles):
            w = inertia(cycle, cycles)
            for i in range(particles):
                dims = rng.choice(D, size=min(mutations, D), replace=False)
                r = rng.uniform()  # one draw for both terms, as the official code
                pull = c1 * r * (p_x[i, dims] - x[i, dims]) + c2 * r * (best_x[dims] - x[i, dims])
                v[i, dims] = np.clip(CONSTRICTION * (w * v[i, dims] + pull), -max_velocity, max_velocity)
                moved = x[i].copy()
                moved[dims] = np.clip(np.rint(x[i, dims] + STEP_SCALE * v[i, dims]), lo_s[dims], hi_s[dims])
                x[i] = repair(moved)
                fx[i] = score(x[i], cycle + 1)
                if fx[i] > p_f[i]:
                    p_x[i], p_f[i] = x[i].copy(), fx[i]
                if fx[i] > best_f:
                    best_x, best_f = x[i].copy(), fx[i]
            per_cycle.append(_cycle_row(cycle + 1, best_f, best_x * steps, cost))
            _show(bar, best_f, best_x * steps, cost)
    except _Stop:
        stopped = True
        if history and (not per_cycle or per_cycle[-1]["best_fitness"] != best_f):
            per_cycle.append(_cycle_row(len(per_cycle), best_f, best_x * steps, cost))
    finally:
        bar.close()

    widths = best_x * steps
    signals.record["cluster_widths"] = {u.name: int(n) for u, n in zip(graph.units, start)}
    signals.record["acp"] = {
        "eps": float(eps), "fitness": fitness, "particles": int(particles), "cycles": int(cycles),
        "best_fitness": float(best_f), "fitness_per_cycle": [r["best_fitness"] for r in per_cycle],
        "best_macs_per_cycle": [r["best_macs"] for r in per_cycle], "evaluations": len(history),
        "cache_hits": hits, "stopped_early": stopped, "search_budget": search_budget,
        "heldout_images": len(judge.held), "fit_images": len(judge.rest),
        "seconds": {"clustering": t_cluster, "search": time.perf_counter() - t0 - t_cluster},
        "candidates": history}
    return widths


def _cycle_row(cycle: int, best: float, widths: np.ndarray, cost: CostModel) -> dict:
    return {"cycle": cycle, "best_fitness": float(best), "best_macs": float(cost.macs(widths))}


def _show(bar, best: float, widths: np.ndarray, cost: CostModel) -> None:
    bar.set_postfix_str(f"best {best:.2f}%, {cost.macs(widths) / 1e6:.2f}M MACs")
    bar.update(1)
