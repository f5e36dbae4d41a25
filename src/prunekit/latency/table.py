"""Latency as a function of the Units' widths: per-layer tables, interpolated, plus a fixed residual.

Each conv/linear layer's weight dims are linear forms in the widths (the same forms the CostModel
expands). Its latency is measured on a grid of ``samples`` values of each dim that varies, from
the dims at every Unit's minimum width to the dense dims, and every multiple of ``step`` between, made monotone (a running maximum along
both dims: the allocators assume that removing channels never costs time; the real staircase is
left to ``snap``, which reads raw measurements), and interpolated bilinearly, so the prediction is
exact at sampled points and monotone between them. The model's latency is the layers' sum plus a
residual: the dense model measured whole minus the layers' sum at dense (pooling, residual adds,
functional activations, Python overhead), a constant. If the layers measured alone add up to more
than the whole model, the layers are scaled down to it instead (residual 0). Residual and scale are
fitted through the dense and the smallest model (``calibrate``), and with removable branches through
a third, the branches kept (``calibrate_branches``: a term per kept branch).

``LatencyCost`` has the Polynomial interface the allocators use (``__call__``, ``grad``,
``step_deltas``), so a "latency" target works with every allocator and with ``fit``'s repair.
"""
from __future__ import annotations

import hashlib
from collections import defaultdict
from dataclasses import dataclass

import numpy as np
import torch

from ..graph import UnitGraph, expand_groups
from .measure import LatencyConfig, LayerSpec, layer_ms, layer_specs, model_ms, pair_ms


def interp2(xs: np.ndarray, ys: np.ndarray, V: np.ndarray, x: float, y: float) -> tuple[float, float, float]:
    """Bilinear interpolation of V on the grid xs x ys at (x, y), linear beyond the ends; a grid of one
    point along a dim is constant along it. Returns (value, d/dx, d/dy)."""
    def locate(g, t):
        if len(g) == 1:
            return 0, 0, 0.0, 0.0
        i = int(np.clip(np.searchsorted(g, t, side="right"), 1, len(g) - 1))
        h = float(g[i] - g[i - 1])
        return i - 1, i, (t - g[i - 1]) / h, 1.0 / h

    i0, i1, tx, hx = locate(xs, x)
    j0, j1, ty, hy = locate(ys, y)
    a, b, c, d = V[i0, j0], V[i0, j1], V[i1, j0], V[i1, j1]
    value = (1 - tx) * ((1 - ty) * a + ty * b) + tx * ((1 - ty) * c + ty * d)
    dx = hx * ((1 - ty) * (c - a) + ty * (d - b))
    dy = hy * ((1 - tx) * (b - a) + tx * (d - c))
    return float(value), float(dx), float(dy)


@dataclass
class LayerTable:
    """One layer: dims = const + sum_k m_k w_k (out, in), the sampled grid and its latencies (ms)."""

    name: str
    spec: LayerSpec
    out_form: tuple[float, dict[int, float]]
    in_form: tuple[float, dict[int, float]]
    xs: np.ndarray  # sampled out dims
    ys: np.ndarray  # sampled in dims
    V: np.ndarray  # ms, monotone along both dims

    @property
    def units(self) -> set[int]:
        return set(self.out_form[1]) | set(self.in_form[1])

    def dims(self, w: np.ndarray) -> tuple[float, float]:
        return tuple(c + sum(m * w[k] for k, m in form.items()) for c, form in (self.out_form, self.in_form))

    def at(self, w: np.ndarray) -> tuple[float, float, float]:
        return interp2(self.xs, self.ys, self.V, *self.dims(w))


class LatencyCost:
    """Predicted milliseconds of one forward at ``batch``: residual + scale * sum of the layer tables
    + ``branch_ms`` for each removable branch kept (``branches``: their Units)."""

    def __init__(self, layers: list[LayerTable], n_units: int, residual: float, scale: float, batch: int,
                 dense_ms: float, config: LatencyConfig, device: str, branches: tuple[int, ...] = (),
                 branch_ms: float = 0.0):
        self.layers, self.n, self.residual, self.scale = layers, n_units, residual, scale
        self.batch, self.dense_ms, self.config, self.device = batch, dense_ms, config, device
        self.branches, self.branch_ms = list(branches), branch_ms  # what each kept removable branch adds
        self.by_unit: dict[int, list[LayerTable]] = defaultdict(list)
        for layer in layers:
            for k in layer.units:
                self.by_unit[k].append(layer)

    def kept(self, w: np.ndarray) -> int:
        return int(np.count_nonzero(w[self.branches] > 0)) if self.branches else 0

    def __call__(self, w) -> float:
        w = np.asarray(w, dtype=np.float64)
        return (self.residual + self.scale * sum(layer.at(w)[0] for layer in self.layers)
                + self.branch_ms * self.kept(w))

    def grad(self, w) -> np.ndarray:
        w = np.asarray(w, dtype=np.float64)
        g = np.zeros(self.n)
        for layer in self.layers:
            _, dx, dy = layer.at(w)
            for (_, form), d in ((layer.out_form, dx), (layer.in_form, dy)):
                for k, m in form.items():
                    g[k] += self.scale * d * m
        return g

    def step_deltas(self, w, step) -> np.ndarray:
        """Latency change of adding ``step[i]`` channels to Unit i alone, for every i."""
        w = np.asarray(w, dtype=np.float64)
        s = np.asarray(step, dtype=np.float64)
        out = np.zeros(self.n)
        for k, layers in self.by_unit.items():
            moved = w.copy()
            moved[k] += s[k]
            out[k] = self.scale * sum(layer.at(moved)[0] - layer.at(w)[0] for layer in layers)
        for k in self.branches:  # a branch removed or brought back
            out[k] += self.branch_ms * (float(w[k] + s[k] > 0) - float(w[k] > 0))
        return out

    def fixed_ms(self) -> float:
        """What no width changes: the residual and every layer no Unit touches (at least 0: the
        three-point fit's residual can be negative)."""
        w = np.zeros(self.n)
        return max(0.0, self.residual + self.scale * sum(layer.at(w)[0] for layer in self.layers if not layer.units))

    def describe(self) -> dict:
        return {"batch": self.batch, "threads": self.config.threads, "device": self.device,
                "dense_measured_ms": self.dense_ms, "residual_ms": self.residual, "scale": self.scale,
                "branch_ms": self.branch_ms, "removable_branches": len(self.branches),
                "layers": len(self.layers), "samples": self.config.samples}


def forms(graph: UnitGraph) -> dict[tuple[str, int], dict[int, float]]:
    """(param, dim) -> {unit index: positions per channel}, as the CostModel builds them."""
    out: dict[tuple[str, int], dict[int, float]] = defaultdict(dict)
    for k, unit in enumerate(graph.units):
        for s in unit.slices:
            out[(s.param, s.dim)][k] = len(torch.unique(s.index)) / unit.width
    return out


def _form(f: dict[int, float], size: int, dense: np.ndarray) -> tuple[float, dict[int, float]]:
    return float(size - sum(m * dense[k] for k, m in f.items())), dict(f)


def _samples(lo: float, hi: float, n: int, quantum: int, step: int | None = None, max_points: int = 12) -> np.ndarray:
    """The dims ``lo``, ``hi`` and every multiple of ``step`` between (the stair edges of blocked
    kernels: widths rounded to ``step`` are then measured points, not interpolated), or ``n`` evenly
    spaced dims without a step; all multiples of ``quantum``. ``lo`` 0 (a droppable Unit's minimum) is
    a sample of its own, the rest start at the first step."""
    zero = lo == 0
    if zero:
        lo = float(np.lcm(step, quantum) if step else quantum)
    if step:
        step = int(np.lcm(step, quantum))
        while (hi - lo) / step > max_points:
            step *= 2
        pts = np.concatenate([[lo], np.arange(np.ceil(lo / step) * step, hi + 1, step)])
    else:
        pts = np.round(np.linspace(lo, hi, n) / quantum) * quantum
    pts = np.clip(np.unique(pts), max(quantum, np.ceil(lo / quantum) * quantum), hi)
    return np.unique(np.concatenate([pts, [hi], [0] if zero else []])).astype(np.float64)


def build(graph: UnitGraph, config: LatencyConfig, batch: int, store) -> LatencyCost:
    """Measure (or read from ``store``) every layer's table and the dense model at ``batch``. The graph's
    model must still be dense."""
    model, x = graph.model, graph.example_inputs
    dense = np.array([u.width for u in graph.units], dtype=np.float64)
    lo = np.array([u.min_keep for u in graph.units], dtype=np.float64)
    f = forms(graph)
    layers = []
    for spec in layer_specs(model, x):
        shape = spec.module.weight.shape
        out_form = _form(f.get((f"{spec.name}.weight", 0), {}), shape[0], dense)
        in_form = _form(f.get((f"{spec.name}.weight", 1), {}), shape[1], dense)
        table = LayerTable(spec.name, spec, out_form, in_form, np.zeros(0), np.zeros(0), np.zeros((0, 0)))
        (out_lo, in_lo), (out_hi, in_hi) = table.dims(lo), table.dims(dense)
        grid = (config.samples, config.step, config.max_points)
        table.xs = _samples(out_lo, out_hi, grid[0], spec.quantum(), *grid[1:]) if out_form[1] else np.array([out_hi])
        table.ys = _samples(in_lo, in_hi, grid[0], 1, *grid[1:]) if in_form[1] else np.array([in_hi])
        V = np.array([[layer_ms(spec, a, b, batch, config, store) for b in table.ys] for a in table.xs])
        table.V = np.maximum.accumulate(np.maximum.accumulate(V, axis=0), axis=1)
        layers.append(table)
    signature = hashlib.sha256("\n".join(f"{t.name}:{t.spec.key}:{tuple(t.spec.module.weight.shape)}"
                                         for t in layers).encode()).hexdigest()[:16]
    key = (f"model|{type(model).__name__}|{tuple(x.shape[1:])}|{signature}|b{batch}|t{config.model_run_time:g}"
           f"|paired {config.repeats}")
    parts, parts_lo = (sum(t.at(w)[0] for t in layers) for w in (dense, lo))
    whole, small = whole_ms(graph, lo, key, _key_of(key, lo) if parts_lo < parts else None, batch, config, store)
    residual, scale = calibrate(whole, parts, small, parts_lo)
    branches = [i for i, u in enumerate(graph.units) if u.name in graph.branch_min and u.min_keep == 0]
    branch_ms = 0.0
    if branches and small is not None:  # the branches kept at their minimum: what a kept branch adds
        kept = lo.copy()
        kept[branches] = [graph.branch_min[graph.units[i].name] for i in branches]
        parts_kept = sum(t.at(kept)[0] for t in layers)
        if parts_kept < parts:
            _, mid = whole_ms(graph, kept, key, _key_of(key, kept), batch, config, store)
            residual, scale, branch_ms = calibrate_branches(whole, parts, mid, parts_kept, small, parts_lo, len(branches),
                                                            (residual, scale))
    store.save()
    return LatencyCost(layers, len(dense), residual, scale, batch, whole, config, store.device, branches, branch_ms)


def _key_of(key: str, widths: np.ndarray) -> str:
    return f"{key}|ratio to|{hashlib.sha256(str(widths.astype(int).tolist()).encode()).hexdigest()[:16]}"


def calibrate_branches(whole: float, parts: float, mid: float, parts_mid: float, small: float, parts_small: float,
                       n: int, fallback: tuple[float, float]) -> tuple[float, float, float]:
    """(residual, scale, per kept branch) through three measured models: dense, every Unit at its minimum
    with the removable branches kept (``mid``) and removed (``small``). A removed branch takes its
    block's stream work with it (the add and activation, folded away by prunekit.fold), which no layer
    table holds and which is not proportional to the layers' time; a kept one pays it whatever its
    width. The residual may come out negative: the removed branches' stand-ins have tables of their own
    but are folded away with their blocks. Falls back to the two-point fit when the scale or the
    branches' term would be negative."""
    scale = (whole - mid) / (parts - parts_mid)
    residual = small - scale * parts_small
    branch = (mid - residual - scale * parts_mid) / n
    if scale > 0 and branch >= 0:
        return residual, scale, branch
    return (*fallback, 0.0)


def calibrate(whole: float, parts: float, small: float | None, parts_small: float) -> tuple[float, float]:
    """(residual, scale) with residual + scale * layers = the measured model at dense and, when the
    smallest model is measured too, there: layers timed alone are not layers in a model, and what
    the model adds (module calls, adds, activations) is not constant either (it shrinks as residual
    branches are removed; bench/results/branch_overhead.md).
    Falls back to the dense residual (or, when the layers alone add up to more than the model, a
    scale) if the two points give a negative slope or residual."""
    if small is not None and parts > parts_small:
        scale = (whole - small) / (parts - parts_small)
        residual = whole - scale * parts
        if scale > 0 and residual >= 0:
            return residual, scale
    if whole >= parts:
        return whole - parts, 1.0
    return 0.0, whole / parts


def whole_ms(graph: UnitGraph, widths: np.ndarray, key: str, key_small: str | None, batch: int,
             config: LatencyConfig, store) -> tuple[float, float | None]:
    """The dense model and (with ``key_small``) the model with every Unit at ``widths``, timed whole,
    cached under the keys. A smaller model is timed against the dense one in alternating blocks
    (``pair_ms``: one of them timed at a slower moment would tilt the fit, and with it how many
    branches the first plan removes) and kept as the pairs' ratio, so every smaller model scales
    with the one dense time kept."""
    whole = store.get(key)
    if key_small is None:
        if whole is None:
            whole = model_ms(graph.model, graph.example_inputs, batch, config)
            store.put(key, whole)
        return whole, None
    ratio = store.get(key_small)
    if ratio is None:
        import copy
        lo = UnitGraph(copy.deepcopy(graph.model), graph.example_inputs, ignore=graph.ignored)
        lo.apply({u.name: expand_groups(u, range(int(w) // u.groups)) for u, w in zip(graph.units, widths)
                  if w < u.width})
        dense_ms, _, ratio = pair_ms(graph.model, lo.model, graph.example_inputs, batch, config)
        store.put(key_small, ratio)
        if whole is None:
            whole = dense_ms
            store.put(key, whole)
    return whole, whole / ratio
