"""MACs and parameters as a quadratic polynomial in the Units' widths.

Every parameter dimension is a linear form in the widths (a constant part plus each touching Unit's
width times a multiplier: 1 for a plain conv, 1/groups for a grouped conv's input, H*W for a
flatten into a linear layer). A tensor's size is the product of its dimensions, and a conv's or
linear layer's MACs are its weight's size times the output positions it is applied at, captured
by hooks in one forward pass. So one mechanism covers plain, grouped, depthwise, concatenated and
flattened layers, and the same polynomial is what every allocator optimizes.
"""
from __future__ import annotations

import copy
from collections import defaultdict
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn
from torch.utils.flop_counter import FlopCounterMode

from .errors import UnsupportedLayerError
from .graph import UnitGraph, _forward, _ignore_advice, eval_mode, expand_groups


@dataclass
class Polynomial:
    """c + a.w + w.Q.w over the Units' widths (Q symmetric)."""

    c: float
    a: np.ndarray
    Q: np.ndarray

    def __call__(self, w) -> float:
        w = np.asarray(w, dtype=np.float64)
        return float(self.c + self.a @ w + w @ self.Q @ w)

    def grad(self, w) -> np.ndarray:
        w = np.asarray(w, dtype=np.float64)
        return self.a + 2.0 * (self.Q @ w)

    def tensor(self, w: torch.Tensor) -> torch.Tensor:
        """The same polynomial on a tensor of (soft) widths, differentiable by autograd, so a method
        that trains toward a budget (dagger) uses the very polynomial the hard budget is checked with."""
        a = torch.as_tensor(self.a, dtype=w.dtype, device=w.device)
        Q = torch.as_tensor(self.Q, dtype=w.dtype, device=w.device)
        return self.c + a @ w + w @ Q @ w

    def step_deltas(self, w, step) -> np.ndarray:
        """Cost change of adding ``step[i]`` channels to Unit i alone, for every i at once."""
        w = np.asarray(w, dtype=np.float64)
        s = np.asarray(step, dtype=np.float64)
        return s * (self.a + 2.0 * (self.Q @ w)) + s * s * np.diag(self.Q)


def _positions(model: nn.Module, example_inputs) -> dict[str, int]:
    """How many times each conv/linear weight is applied (batch x output pixels or tokens)."""
    out: dict[str, int] = {}
    hooks = []
    for name, m in model.named_modules():
        if isinstance(m, nn.modules.conv._ConvNd):
            def hook(m, i, o, name=name):
                t = i[0] if m.transposed else o
                ch = m.in_channels if m.transposed else m.out_channels
                out[name] = out.get(name, 0) + t.numel() // ch
        elif isinstance(m, nn.Linear):
            def hook(m, i, o, name=name):
                out[name] = out.get(name, 0) + o.numel() // m.out_features
        else:
            continue
        hooks.append(m.register_forward_hook(hook))
    try:
        with torch.no_grad():
            _forward(model, example_inputs)
    finally:
        for h in hooks:
            h.remove()
    return out


class CostModel:
    """``macs`` and ``params`` polynomials for a UnitGraph, exact for conv + linear MACs."""

    latency = None  # a prunekit.latency.LatencyCost once attached (a "latency" target then works everywhere)

    def __init__(self, graph: UnitGraph):
        self.graph = graph
        self.units = [u.name for u in graph.units]
        self.dense_widths = np.array([u.width for u in graph.units], dtype=np.float64)
        model = graph.model
        with eval_mode(model):
            positions = _positions(model, graph.example_inputs)
        # (param name, dim) -> {unit index: positions per channel}
        forms: dict[tuple[str, int], dict[int, float]] = defaultdict(dict)
        for k, unit in enumerate(graph.units):
            for s in unit.slices:
                forms[(s.param, s.dim)][k] = len(torch.unique(s.index)) / unit.width
        weights = {f"{name}.weight": p for name, p in positions.items()}
        params = self._terms(model, forms, None, self.dense_widths)
        macs = self._terms(model, forms, weights, self.dense_widths)
        self.params = _assemble(params.values(), len(self.units))
        self.macs = _assemble(macs.values(), len(self.units))
        # per-layer terms are kept because the graph's model is pruned in place after planning
        self._layers = {"macs": _by_layer(macs), "params": _by_layer(params)}
        # MACs outside conv/linear layers (e.g. a matmul between activations) are a constant when an
        # ignored module runs them, since every width reaching it is kept; elsewhere they are not
        # covered, and prepare() refuses the model naming them
        self.uncovered: dict[str, dict[str, int]] = {}
        for layer, ops in uncovered_macs(model, graph.example_inputs).items():
            if layer in graph.ignored:
                self.macs.c += sum(ops.values())
                self._layers["macs"].setdefault(layer, defaultdict(float))[()] += sum(ops.values())
                self._layers["params"].setdefault(layer, {})
            else:
                self.uncovered[layer] = ops
        self._types = {name: type(m).__name__ for name, m in model.named_modules()}

    @staticmethod
    def _terms(model, forms, multipliers: dict[str, int] | None, widths: np.ndarray) -> dict[str, dict[tuple, float]]:
        """Per parameter, its size (params) or weight size x positions (MACs when given) as monomials
        in the Unit widths: {(): c, (i,): a_i, (i, j): q_ij}."""
        out = {}
        seen = set()
        for name, p in model.named_parameters():
            if id(p) in seen:
                continue
            seen.add(id(p))
            if multipliers is not None:
                if name not in multipliers:
                    continue
                scale = float(multipliers[name])
            else:
                scale = 1.0
            # product over dims of (const_d + sum_u m_du w_u), expanded to degree <= 2
            terms: dict[tuple[int, ...], float] = {(): scale}
            for d, size in enumerate(p.shape):
                form = forms.get((name, d), {})
                const = size - sum(m * widths[k] for k, m in form.items())
                new: dict[tuple[int, ...], float] = defaultdict(float)
                for mono, coef in terms.items():
                    if const:
                        new[mono] += coef * const
                    for k, m in form.items():
                        new[tuple(sorted(mono + (k,)))] += coef * m
                terms = new
            if any(len(mono) > 2 and coef for mono, coef in terms.items()):
                raise UnsupportedLayerError(f"parameter {name!r} depends on more than two prunable widths; ignore its layer")
            out[name] = {mono: coef for mono, coef in terms.items() if len(mono) <= 2}
        return out

    # -- conveniences ------------------------------------------------------------------------------
    def vector(self, widths: dict[str, int]) -> np.ndarray:
        return np.array([widths.get(u, w) for u, w in zip(self.units, self.dense_widths)], dtype=np.float64)

    def evaluate(self, widths: dict[str, int] | None = None) -> dict[str, float]:
        w = self.dense_widths if widths is None else self.vector(widths)
        out = {"macs": self.macs(w), "params": self.params(w)}
        if self.latency is not None:
            out["latency"] = self.latency(w)
        return out

    def layer_costs(self, widths: dict[str, int] | None = None) -> dict[str, dict]:
        """MACs and parameters of every layer that owns parameters (a conv, linear, BatchNorm...), at
        ``widths`` (dense when None); they sum to :meth:`evaluate`. For the report's cost breakdown."""
        w = self.dense_widths if widths is None else self.vector(widths)
        out = {}
        for layer, terms in self._layers["params"].items():
            macs = self._layers["macs"].get(layer, {})
            out[layer] = {"type": self._types.get(layer, "Parameter"),
                          "macs": _value(macs, w), "params": _value(terms, w)}
        return out

    def factorized(self, factors, widths: dict[str, int] | None = None, ranks: dict[str, int] | None = None) -> dict:
        """MACs and parameters at ``widths`` with the layers of ``factors`` (prunekit.lowrank Factors)
        replaced by their low-rank factorizations (at ``ranks`` when given): a rank is one more width,
        and the factorized terms live in ``prunekit.lowrank.cost``."""
        from .lowrank.cost import factorized_cost
        return factorized_cost(self, factors, widths, ranks)


def _assemble(per_param, n: int) -> Polynomial:
    """One polynomial c + a.w + w.Q.w from many monomial dicts."""
    c, a, Q = 0.0, np.zeros(n), np.zeros((n, n))
    for terms in per_param:
        for mono, coef in terms.items():
            if len(mono) == 0:
                c += coef
            elif len(mono) == 1:
                a[mono[0]] += coef
            else:
                i, j = mono
                Q[i, j] += coef / 2.0
                Q[j, i] += coef / 2.0
    return Polynomial(c, a, Q)


def _by_layer(per_param: dict[str, dict[tuple, float]]) -> dict[str, dict[tuple, float]]:
    """Monomials summed over each module's parameters (``layer1.0.conv1.weight`` -> ``layer1.0.conv1``)."""
    out: dict[str, dict[tuple, float]] = {}
    for name, terms in per_param.items():
        layer = out.setdefault(name.rpartition(".")[0] or name, defaultdict(float))
        for mono, coef in terms.items():
            layer[mono] += coef
    return out


def _value(terms: dict[tuple, float], w: np.ndarray) -> float:
    return float(sum(coef * np.prod(w[list(mono)]) for mono, coef in terms.items()))



def count(model: nn.Module, example_inputs) -> tuple[int, int]:
    """(conv + linear MACs measured by torch's FlopCounterMode, parameter count)."""
    with eval_mode(model), torch.no_grad(), FlopCounterMode(display=False) as fc:
        _forward(model, example_inputs)
    params = sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())
    return fc.get_total_flops() // 2, params


def own_macs(model: nn.Module, example_inputs) -> dict[str, dict[str, int]]:
    """MACs FlopCounterMode measures per module, counting only the module's own code (not its
    children's): {module: {op: MACs}}."""
    with eval_mode(model), torch.no_grad(), FlopCounterMode(display=False) as fc:
        _forward(model, example_inputs)
    counts = fc.get_flop_counts()
    root = type(model).__name__

    def key(name: str) -> str:
        return f"{root}.{name}" if name else root

    out = {}
    for name, m in model.named_modules():
        if key(name) not in counts:
            continue
        own = {str(op): c for op, c in counts[key(name)].items()}
        for child, _ in m.named_children():
            for op, c in counts.get(key(f"{name}.{child}" if name else child), {}).items():
                own[str(op)] = own.get(str(op), 0) - c
        own = {op: c // 2 for op, c in own.items() if c > 0}
        if own:
            out[name] = own
    return out


def uncovered_macs(model: nn.Module, example_inputs) -> dict[str, dict[str, int]]:
    """MACs outside conv/linear layers, per module whose own code runs them: products of activations
    (attention, non-local blocks) and functional convs. The cost model covers conv/linear layers only."""
    kinds = {n for n, m in model.named_modules() if isinstance(m, (nn.modules.conv._ConvNd, nn.Linear))}
    return {n: ops for n, ops in own_macs(model, example_inputs).items() if n not in kinds}


def check_costs(cost: CostModel, model: nn.Module, example_inputs, widths: dict[str, int] | None = None) -> None:
    """Predicted MACs and parameters at ``widths`` (dense when None) must equal what ``model``
    measures; else one line naming the module (and op) the cost model does not cover."""
    predicted = cost.evaluate(widths)
    macs, params = count(model, example_inputs)
    if round(predicted["macs"]) == macs and round(predicted["params"]) == params:
        return
    if widths is None and cost.uncovered:
        name, ops = next(iter(cost.uncovered.items()))
        op, n = max(ops.items(), key=lambda kv: kv[1])
        raise UnsupportedLayerError(f"{f'module {name!r}' if name else 'the model'} runs {op} ({n} MACs) outside any "
                                    f"conv/linear layer, which the cost model cannot count; {_ignore_advice(name)}")
    layers = cost.layer_costs(widths)
    measured = own_macs(model, example_inputs)
    own_params = {n: sum(p.numel() for p in m.parameters(recurse=False)) for n, m in model.named_modules()}
    for name, c in layers.items():
        got = sum(measured.get(name, {}).values()), own_params.get(name, 0)
        if (round(c["macs"]), round(c["params"])) != got:
            raise UnsupportedLayerError(
                f"the cost model predicts {c['macs']:.0f} MACs / {c['params']:.0f} params for layer {name!r} but it has "
                f"{got[0]} / {got[1]}{' after a trial pruning' if widths else ''}; {_ignore_advice(name)}")
    raise UnsupportedLayerError(f"the cost model predicts {predicted['macs']:.0f} MACs / {predicted['params']:.0f} params "
                                f"but the model has {macs} / {params}; pass the layers it misses with ignore=[...]")


def dry_run(model: nn.Module, example_inputs, cost: CostModel, seed: int = 0, **graph_options) -> None:
    """Prune a copy of ``model`` with a random keep-set per Unit (a local generator: the caller's RNG is
    untouched) and check it runs, keeps its output shapes and costs what ``cost`` predicts: a surgery
    failure surfaces in seconds, with the module named, before any data is read."""
    graph = UnitGraph(copy.deepcopy(model), example_inputs, **graph_options)
    gen = torch.Generator().manual_seed(seed)
    keep = {}
    for u in graph.units:
        size = u.width // u.groups
        low = u.min_keep // u.groups  # 0 only for a droppable Unit under drop_blocks: then a branch may go
        k = int(torch.randint(low, max(low, size - 1) + 1, (1,), generator=gen))
        keep[u.name] = expand_groups(u, torch.randperm(size, generator=gen)[:k].tolist())
    graph.apply(keep)
    check_costs(cost, graph.model, example_inputs, {n: len(v) for n, v in keep.items()})
