"""Dagger (Su et al., "Data Agnostic Filter Gating for Efficient Deep Networks", arXiv 2010.15041).

A small MLP, shared by every Unit, reads per-channel descriptors of the *weights* (norms and moments
of each channel's filters, normalization parameters and consumer slices, optionally quantiles of
the flattened filter, plus the Unit's position in the network) and outputs one gate in (0, 1) per
Unit channel. Gates depend on the weights only, never on the input batch. Hooks multiply every
input that reads a Unit's channels (its conv/linear consumers) by its gates, so a gate of 0 is
exactly the channel removed, and a coupled Unit (a residual stream) has one gate vector.

The soft widths (sum of gates per Unit) go through the CostModel's own polynomial
(``Polynomial.tensor``), so training and the hard budget use one cost. Loss = task loss (optionally
distilled from the dense model) + lam * R(soft cost / target) + polarize * mean g(1 - g), trained
with ``prunekit.train.fit``. Then widths come from the gates, ``fit.fit`` lands them on the budget
(shrinking the Unit whose weakest kept gate is lowest), and each Unit keeps its highest gates.

The paper's body and code are not available: every choice here is an option, documented in
docs/dagger.md (METHODS.md section 4.2 is the reference design).
"""
from __future__ import annotations

import copy
import math
import time
from numbers import Real

import numpy as np
import torch
import torch.nn as nn

from ..budget import BudgetError
from ..cost import CostModel
from ..errors import ConfigError
from ..graph import Unit, UnitGraph
from ..signals import Signals, _reading_points
from . import register_allocator
from .fit import fit, limits

FORMS = ("two_sided", "one_sided", "log")
DESCRIPTORS = ("stats", "quantiles")
SOURCES = ("pretrained", "current")
BN_MODES = ("train", "eval")
START = ("sum", "threshold", "global")
RANKS = ("gates", "criterion")
KINDS = ("filter", "vector", "input")  # producer filters, 1-d per-channel parameters, consumer slices
QUANTILES = (0.1, 0.25, 0.5, 0.75, 0.9)
EPS = 1e-12


# -- descriptors ------------------------------------------------------------------------------------
def _kind(role: str, param: torch.Tensor) -> str:
    if role == "in":
        return "input"
    return "filter" if param.dim() >= 2 else "vector"


def channel_values(unit: Unit, params: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Per kind, a (width, values) float64 matrix: row c holds every value of every parameter slice of
    that kind that moves with Unit channel c (a residual stream's producers side by side)."""
    parts: dict[str, list[torch.Tensor]] = {}
    for s in unit.slices:
        p = params[s.param].detach()
        v = p.movedim(s.dim, 0).index_select(0, s.index.to(p.device)).reshape(len(s.index), -1)
        order = torch.sort(s.channel, stable=True).indices.to(p.device)
        parts.setdefault(_kind(s.role, p), []).append(v[order].reshape(unit.width, -1).double().cpu())
    return {k: torch.cat(v, 1) for k, v in parts.items()}


def _stats(V: torch.Tensor, quantiles: bool) -> torch.Tensor:
    """Scale (log RMS, log mean |v|, log max |v|) and shape (mean/RMS, std/RMS) of each row, plus
    quantiles of |v|/RMS for ``descriptors="quantiles"``."""
    rms = V.pow(2).mean(1).sqrt()
    cols = [torch.log(rms + EPS), torch.log(V.abs().mean(1) + EPS), torch.log(V.abs().amax(1) + EPS),
            V.mean(1) / (rms + EPS), V.std(1, unbiased=False) / (rms + EPS)]
    if quantiles:
        q = torch.tensor(QUANTILES, dtype=V.dtype)
        cols += list(torch.quantile(V.abs() / (rms[:, None] + EPS), q, dim=1))
    return torch.stack(cols, 1)


def _standardize(F: torch.Tensor) -> torch.Tensor:
    """Columns to zero mean and unit variance (a constant column becomes 0)."""
    std = F.std(0, unbiased=False)
    return (F - F.mean(0)) / torch.where(std > 1e-9, std, torch.ones_like(std))


def descriptors(graph: UnitGraph, descriptors: str = "stats") -> torch.Tensor:
    """One row per Unit channel (Units in graph order, channels in order), from the weights alone:
    per kind its statistics, both as they are and relative to the Unit's other channels, a flag per
    kind present, the Unit's relative position and width, and the channel's rank by filter RMS inside
    its Unit; every column standardized over all channels."""
    params = dict(graph.model.named_parameters(remove_duplicate=False))
    n = len(graph.units)
    widest = max(u.width for u in graph.units)
    stat_dim = 5 + (len(QUANTILES) if descriptors == "quantiles" else 0)
    rows = []
    for k, unit in enumerate(graph.units):
        values = channel_values(unit, params)
        cols = []
        for kind in KINDS:
            if kind in values:
                S = _stats(values[kind], descriptors == "quantiles")
                rel = S - S.mean(0)
                if unit.width > 1:
                    sd = S.std(0, unbiased=False)
                    rel = rel / torch.where(sd > 1e-9, sd, torch.ones_like(sd))
                cols += [S, rel, torch.ones(unit.width, 1, dtype=torch.float64)]
            else:
                cols += [torch.zeros(unit.width, 2 * stat_dim + 1, dtype=torch.float64)]
        base = values.get("filter", values.get("vector", next(iter(values.values()))))
        strength = base.pow(2).mean(1)
        rank = torch.empty(unit.width, dtype=torch.float64)
        rank[torch.sort(strength, stable=True).indices] = torch.arange(unit.width, dtype=torch.float64)
        where = torch.tensor([k / max(n - 1, 1), math.log(unit.width) / math.log(max(widest, 2))], dtype=torch.float64)
        cols += [where.expand(unit.width, 2), (rank / max(unit.width - 1, 1))[:, None]]
        rows.append(torch.cat(cols, 1))
    return _standardize(torch.cat(rows, 0))


# -- the gate generator and its hooks ---------------------------------------------------------------
class GateGenerator(nn.Module):
    """A 2-layer MLP shared by every Unit: descriptor row -> logit -> gate = sigmoid(logit / temperature).
    The last layer starts near zero with its bias at ``init_gate``, so training starts near dense."""

    def __init__(self, graph: UnitGraph, hidden: int = 16, temperature: float = 1.0, init_gate: float = 0.9,
                 descriptors_kind: str = "stats", source: str = "pretrained", seed: int = 0):
        super().__init__()
        self.graph, self.kind, self.source, self.temperature = graph, descriptors_kind, source, temperature
        self.widths = [u.width for u in graph.units]
        self.register_buffer("features", descriptors(graph, descriptors_kind).float())
        gen = torch.Generator().manual_seed(seed)
        d = self.features.shape[1]
        self.mlp = nn.Sequential(nn.Linear(d, hidden), nn.ReLU(), nn.Linear(hidden, 1))
        with torch.no_grad():
            bound = 1 / math.sqrt(d)
            self.mlp[0].weight.uniform_(-bound, bound, generator=gen)
            self.mlp[0].bias.uniform_(-bound, bound, generator=gen)
            self.mlp[2].weight.normal_(0.0, 0.01, generator=gen)
            self.mlp[2].bias.fill_(temperature * math.log(init_gate / (1 - init_gate)))
        self.current: list[torch.Tensor] = []

    def forward(self) -> list[torch.Tensor]:
        """Every Unit's gates (a list in graph order); also kept in ``current`` for the hooks."""
        x = self.features
        if self.source == "current":  # descriptors of the weights as they are now (trained with the gates)
            with torch.no_grad():
                x = descriptors(self.graph, self.kind).to(x)
        g = torch.sigmoid(self.mlp(x).squeeze(1) / self.temperature)
        self.current = list(g.split(self.widths))
        return self.current


def _scale_hook(gates: GateGenerator, k: int, width: int, pos: torch.Tensor | None, dim_last: bool):
    """Multiply the channels of Unit ``k`` at positions ``pos`` (each channel's positions in order) of a
    tensor by the Unit's current gates; other positions are left as they are."""
    def scale(t: torch.Tensor) -> torch.Tensor:
        g = gates.current[k].to(t.dtype)
        size = t.shape[-1] if dim_last else t.shape[1]
        if pos is None:
            vec = g
        else:
            vec = torch.ones(size, dtype=t.dtype, device=t.device).index_copy(
                0, pos.to(t.device), g.repeat_interleave(len(pos) // width))
        return t * (vec if dim_last else vec.reshape(1, -1, *[1] * (t.dim() - 2)))
    return scale


def install_gates(graph: UnitGraph, gates: GateGenerator) -> list:
    """Hooks that multiply every reading point of every Unit (the inputs of its conv/linear consumers,
    or the root's output when none reads it) by the Unit's gates. Returns the handles to remove."""
    handles = []
    for k, unit in enumerate(graph.units):
        for module, where, pos in _reading_points(graph, unit):
            scale = _scale_hook(gates, k, unit.width, pos, isinstance(module, nn.Linear))
            if where == "input":
                handles.append(module.register_forward_pre_hook(
                    lambda m, args, scale=scale: (scale(args[0]), *args[1:])))
            else:
                handles.append(module.register_forward_hook(lambda m, args, out, scale=scale: scale(out)))
    return handles


class _AddToLoss(torch.autograd.Function):
    """Identity on the logits; backward also sends gradient 1 to ``extra``. Whatever loss
    ``prunekit.train.fit`` computes from the logits therefore trains as loss + extra (fit takes no
    loss term of its own, and this keeps its recipe, distillation and seeding unchanged)."""

    @staticmethod
    def forward(ctx, logits, extra):
        ctx.extra = (extra.dtype, extra.device)
        return logits.clone()

    @staticmethod
    def backward(ctx, grad):
        dtype, device = ctx.extra
        return grad, torch.ones((), dtype=dtype, device=device)


# -- the cost regularizer ------------------------------------------------------------------------------
def soft_widths(gates: list[torch.Tensor]) -> torch.Tensor:
    """Sum of the gates per Unit (float64): the widths the CostModel's polynomial is evaluated at."""
    return torch.stack([g.double().sum() for g in gates])


def soft_cost(cost: CostModel, gates: list[torch.Tensor], keys=("macs", "params")) -> dict[str, torch.Tensor]:
    """The CostModel's polynomials at the soft widths; at 0/1 gates exactly the hard cost."""
    w = soft_widths(gates)
    return {k: getattr(cost, k).tensor(w) for k in keys}


def regularizer(ratio: torch.Tensor, form: str) -> torch.Tensor:
    """R(soft cost / target): ``two_sided`` (r - 1)^2, ``one_sided`` max(0, r - 1), ``log`` |log r|."""
    if form == "two_sided":
        return (ratio - 1) ** 2
    if form == "one_sided":
        return torch.relu(ratio - 1)
    return torch.log(ratio).abs()


class Gated(nn.Module):
    """The model with its gates: what ``fit`` trains. In training mode every forward adds
    lam * R + polarize * mean g(1 - g) to the loss and logs the soft cost every ``log_every`` steps."""

    def __init__(self, model: nn.Module, gates: GateGenerator, cost: CostModel, targets: dict[str, float],
                 lam: float, form: str, polarize: float, log_every: int, bn: str):
        super().__init__()
        self.model, self.gates = model, gates
        self.cost, self.targets, self.lam, self.form, self.polarize = cost, targets, lam, form, polarize
        self.log_every, self.bn = log_every, bn
        self.step, self.path = 0, []

    def train(self, mode: bool = True):
        super().train(mode)
        if mode and self.bn == "eval":  # the dense running statistics, not batch statistics
            for m in self.model.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.eval()
        return self

    def penalty(self, gates: list[torch.Tensor]) -> tuple[torch.Tensor, dict, torch.Tensor]:
        costs = soft_cost(self.cost, gates, tuple(self.targets))
        ratios = {k: costs[k] / self.targets[k] for k in self.targets}
        reg = sum(regularizer(r, self.form) for r in ratios.values())
        g = torch.cat(gates).double()
        polar = (g * (1 - g)).mean()
        return self.lam * reg + self.polarize * polar, ratios, reg

    def forward(self, x):
        gates = self.gates()
        out = self.model(x)
        if self.training and torch.is_grad_enabled():
            extra, ratios, reg = self.penalty(gates)
            if self.step % self.log_every == 0:
                self.log(ratios, reg, gates)
            self.step += 1
            out = _AddToLoss.apply(out, extra)
        return out

    def log(self, ratios: dict, reg: torch.Tensor, gates: list[torch.Tensor]) -> None:
        g = torch.cat(gates).detach()
        self.path.append({"step": self.step, **{k: float(r.detach()) for k, r in ratios.items()},
                          "regularizer": float(reg.detach()),
                          "gate_mean": float(g.mean()), "gates_above_half": float((g > 0.5).double().mean())})


# -- from gates to widths -------------------------------------------------------------------------------
def sorted_gates(graph: UnitGraph, gates: list[np.ndarray]) -> list[np.ndarray]:
    """Each Unit's gates per channel offset (a grouped Unit's groups averaged, as ``plan.select`` ranks
    them), largest first."""
    return [-np.sort(-g.reshape(u.groups, -1).mean(0)) for u, g in zip(graph.units, gates)]


def marginal_keys(graph: UnitGraph, gates: list[np.ndarray]):
    """fit.fit keys: shrink the Unit whose weakest kept step of channels has the lowest gate, grow the
    one whose strongest dropped step has the highest: one global ranking of channels by gate."""
    ranked = sorted_gates(graph, gates)
    units = graph.units

    def block(k: int, start: int) -> float:
        per = units[k].step // units[k].groups
        lo = start // units[k].groups
        part = ranked[k][max(lo, 0): max(lo, 0) + per]
        return float(part.mean()) if len(part) else np.nan

    def shrink(w, c):
        return np.array([block(k, int(w[k]) - units[k].step) for k in range(len(units))])

    def grow(w, c):
        return np.nan_to_num(np.array([block(k, int(w[k])) for k in range(len(units))]), nan=-np.inf)

    return (lambda w, c: np.nan_to_num(shrink(w, c), nan=np.inf)), grow


def start_widths(graph: UnitGraph, gates: list[np.ndarray], start: str) -> np.ndarray:
    """``sum``: the soft widths; ``threshold``: channels with a gate above 0.5; ``global``: dense (the
    repair then drops the lowest gates network-wide until the budget holds)."""
    if start == "sum":
        w = [g.sum() for g in gates]
    elif start == "threshold":
        w = [(g > 0.5).sum() for g in gates]
    else:
        w = [u.width for u in graph.units]
    return np.array([min(u.width, max(u.min_keep, u.step * math.floor(x / u.step + 0.5)))
                     for u, x in zip(graph.units, w)], dtype=np.float64)


# -- option checks --------------------------------------------------------------------------------------
def _number(name: str, value, low: float, integer: bool = False, strict: bool = False, high: float | None = None,
            high_strict: bool = False):
    ok = isinstance(value, Real) and not isinstance(value, bool) and math.isfinite(value)
    ok = ok and (not integer or float(value).is_integer())
    ok = ok and (value > low if strict else value >= low)
    if high is not None:
        ok = ok and (value < high if high_strict else value <= high)
    if not ok:
        kind = "an integer" if integer else "a number"
        rng = f"{'>' if strict else '>='} {low:g}" if high is None else \
            f"in {'(' if strict else '['}{low:g}, {high:g}{')' if high_strict else ']'}"
        raise ConfigError(f"{name} must be {kind} {rng}, got {value!r}")
    return int(value) if integer else float(value)


def _choice(name: str, value, choices) -> str:
    if value not in choices:
        raise ConfigError(f"{name} must be one of {', '.join(choices)}, got {value!r}")
    return value


def _flag(name: str, value) -> bool:
    """A bool, or the CLI's true/false/1/0."""
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("true", "yes", "1", "1.0"):
        return True
    if text in ("false", "no", "0", "0.0"):
        return False
    raise ConfigError(f"{name} must be true or false, got {value!r}")


def check_reachable(graph: UnitGraph, cost: CostModel, targets: dict[str, float]) -> None:
    """A target below the cost of every Unit at its minimum width is refused before any training."""
    _, lo, _ = limits(graph)
    for key, target in targets.items():
        least = getattr(cost, key)(lo)
        if least > target * (1 + 1e-12):
            raise BudgetError(f"{'flops' if key == 'macs' else key} budget {target:.4g} is below what the minimum "
                              f"widths reach ({least:.4g}); raise the budget or lower min_width")


def _exact_split(n: int, steps: int) -> tuple[int, int]:
    """(epochs, steps per epoch) with exactly ``steps`` steps in all and at most ``n`` (a full pass) per epoch."""
    per = max(d for d in range(1, min(n, steps) + 1) if steps % d == 0)
    return steps // per, per


# -- the allocator ------------------------------------------------------------------------------------
@register_allocator("dagger")
def dagger(graph: UnitGraph, cost: CostModel, targets: dict[str, float], scores, signals: Signals, seed: int = 0,
           steps: int = 300, lam: float = 2.0, form: str = "two_sided", polarize: float = 0.0, lr: float = 0.1,
           batch_size: int = 128, hidden: int = 16, temperature: float = 1.0, init_gate: float = 0.9,
           descriptors: str = "stats", source: str = "pretrained", train_weights=False, weight_lr: float = 0.01,
           weight_decay: float = 0.0, distill: float = 0.0, bn: str = "train", start: str = "sum",
           rank: str = "gates", log_every: int = 10) -> np.ndarray:
    """Train the gate generator for ``steps`` SGD steps (batches of ``batch_size``, gate learning rate
    ``lr``, cosine schedule) on the training data, toward ``targets`` with weight ``lam`` and
    regularizer ``form``, then widths from the gates (``start``) repaired onto the budget.

    ``polarize``: weight of mean g(1 - g). ``hidden``/``temperature``/``init_gate``: the MLP.
    ``descriptors``: "stats" or "quantiles" (adds quantiles of the flattened filters). ``source``:
    descriptors of the "pretrained" weights (fixed) or the "current" ones. ``train_weights``: train
    the weights too (at ``weight_lr``; kept in the pruned model). ``distill``: weight of distillation
    from the dense model (0: plain cross-entropy). ``bn``: BatchNorm in "train" (batch statistics)
    or "eval" mode while gating. ``rank``: keep each Unit's highest "gates", or the "criterion"'s
    scores. ``log_every``: steps between points of the soft cost's path."""
    steps = _number("steps", steps, 1, integer=True)
    lam = _number("lam", lam, 0)
    form = _choice("form", form, FORMS)
    polarize = _number("polarize", polarize, 0)
    lr = _number("lr", lr, 0, strict=True)
    batch_size = _number("batch_size", batch_size, 1, integer=True)
    hidden = _number("hidden", hidden, 1, integer=True)
    temperature = _number("temperature", temperature, 0, strict=True)
    init_gate = _number("init_gate", init_gate, 0, strict=True, high=1, high_strict=True)
    descriptors_kind = _choice("descriptors", descriptors, DESCRIPTORS)
    source = _choice("source", source, SOURCES)
    train_weights = _flag("train_weights", train_weights)
    weight_lr = _number("weight_lr", weight_lr, 0, strict=True)
    weight_decay = _number("weight_decay", weight_decay, 0)
    distill = _number("distill", distill, 0, high=1)
    bn = _choice("bn", bn, BN_MODES)
    start = _choice("start", start, START)
    rank = _choice("rank", rank, RANKS)
    log_every = _number("log_every", log_every, 1, integer=True)
    check_reachable(graph, cost, targets)
    # the regularizer acts on the polynomial targets; any other (a latency table) is met by the repair
    soft_targets = {k: v for k, v in targets.items() if hasattr(getattr(cost, k, None), "tensor")}
    if not soft_targets:
        raise ConfigError(f"dagger's regularizer needs a flops or params target, got only {', '.join(targets)}; "
                          "add one (e.g. flops=0.5)")
    signals.require("dagger", labels=True)
    if signals.dataset is None:
        raise ConfigError("dagger trains its gates on the training data: pass data=... (CLI: --dataset NAME)")

    t0 = time.perf_counter()
    gates, path = train_gates(graph, cost, soft_targets, signals, seed, steps, lam, form, polarize, lr, batch_size,
                              hidden, temperature, init_gate, descriptors_kind, source, train_weights, weight_lr,
                              weight_decay, distill, bn, log_every)
    seconds = time.perf_counter() - t0

    g = [t.detach().double().cpu().numpy() for t in gates.current]
    soft = {k: float(v) for k, v in soft_cost(cost, gates.current, tuple(soft_targets)).items()}
    shrink_key, grow_key = marginal_keys(graph, g)
    widths = fit(graph, cost, targets, start_widths(graph, g, start), shrink_key=shrink_key, grow_key=grow_key)
    if rank == "gates":
        for u, gu in zip(graph.units, g):
            scores[u.name] = torch.from_numpy(gu.copy())
    _record(signals, graph, g, path, soft, soft_targets, steps, lam, form, seconds, start, rank)
    return widths


def train_gates(graph: UnitGraph, cost: CostModel, targets: dict[str, float], signals: Signals, seed: int, steps: int,
                lam: float, form: str, polarize: float, lr: float, batch_size: int, hidden: int, temperature: float,
                init_gate: float, descriptors_kind: str, source: str, train_weights: bool, weight_lr: float,
                weight_decay: float, distill: float, bn: str, log_every: int) -> tuple[GateGenerator, list[dict]]:
    """The training itself; every hook is removed and, unless the weights are trained, the model's
    weights, buffers (BatchNorm statistics) and requires_grad flags are as they were."""
    from ..train import Recipe, fit as train  # the training stack is heavy; load it only when used
    model = graph.model
    device = next(model.parameters()).device
    gates = GateGenerator(graph, hidden, temperature, init_gate, descriptors_kind, source, seed).to(device)
    teacher = copy.deepcopy(model).eval() if distill > 0 else None
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    buffers = {n: b.detach().clone() for n, b in model.named_buffers()}
    was_training = model.training
    # fit has one learning rate; with the weights trained it is weight_lr and the gate generator's
    # gradients are scaled by lr / weight_lr (the same as its own learning rate under SGD)
    scale = lr / weight_lr if train_weights else 1.0
    handles = [p.register_hook(lambda grad: grad * scale) for p in gates.parameters()] if scale != 1.0 else []
    handles += install_gates(graph, gates)
    for p in model.parameters():
        p.requires_grad_(train_weights)
    wrapped = Gated(model, gates, cost, targets, lam, form, polarize, log_every, bn)
    epochs, per_epoch = _exact_split(-(-len(signals.dataset) // batch_size), steps)
    recipe = Recipe(epochs=epochs, lr=weight_lr if train_weights else lr, batch_size=batch_size,
                    weight_decay=weight_decay, schedule="cosine", warmup=0.0, label_smoothing=0.0,
                    kd_weight=distill, seed=seed, max_steps_per_epoch=per_epoch)
    try:
        train(wrapped, signals.dataset, recipe, teacher=teacher, progress=signals.progress, device=device)
        wrapped.eval()
        with torch.no_grad():
            _, final, reg = wrapped.penalty(gates())
        wrapped.log(final, reg, gates.current)
        wrapped.path[-1]["step"] = steps
    finally:
        for h in handles:
            h.remove()
        for n, p in model.named_parameters():
            p.requires_grad_(flags[n])
        if not train_weights:
            with torch.no_grad():
                for n, b in model.named_buffers():
                    b.copy_(buffers[n])
        model.train(was_training)
    gates.current = [g.detach() for g in gates.current]
    return gates, wrapped.path


def _record(signals: Signals, graph: UnitGraph, gates: list[np.ndarray], path: list[dict], soft: dict,
            targets: dict, steps: int, lam: float, form: str, seconds: float, start: str, rank: str) -> None:
    """What the summary and report show: gate distribution per Unit, the soft cost's path, the time."""
    dist = {}
    for u, g in zip(graph.units, gates):
        q = np.quantile(g, [0.0, 0.25, 0.5, 0.75, 1.0])
        dist[u.name] = {"min": float(q[0]), "q1": float(q[1]), "median": float(q[2]), "q3": float(q[3]),
                        "max": float(q[4]), "mean": float(g.mean()), "above_half": int((g > 0.5).sum())}
    signals.record["gate_mean"] = {u.name: float(g.mean()) for u, g in zip(graph.units, gates)}
    signals.record["soft_width"] = {u.name: float(g.sum()) for u, g in zip(graph.units, gates)}
    signals.record["dagger"] = {
        "steps": steps, "lam": lam, "form": form, "start": start, "rank": rank,
        "targets": {k: float(v) for k, v in targets.items()},
        "soft_cost": soft, "soft_over_target": {k: soft[k] / targets[k] for k in targets},
        "path": path, "gates": dist, "seconds": seconds, "seconds_per_step": seconds / steps}
    signals.record["seconds"] = {"gate_training": seconds}
