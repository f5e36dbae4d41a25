"""Exact MACs and parameters of factorized layers, as functions of the channel widths and the ranks.

A factorized layer's cost is linear in its rank r and in its (possibly pruned) input and output
widths c and n, which are linear forms in the Unit widths: so MACs and parameters stay polynomials
in (widths, ranks), a rank being one more width (r c and r n terms; r n c for ``decoupled``). ``CostModel.factorized`` calls
:func:`factorized_cost`: the dense model's polynomial, minus the replaced layers' own terms, plus
these. Positions (how often each factor is applied) are captured once by forward hooks, as the
CostModel does for whole layers, so the result equals FlopCounterMode's count exactly.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn as nn

from ..graph import _forward, eval_mode


@dataclass(frozen=True)
class Factor:
    """One layer replaced by its rank-``rank`` factorization under ``scheme``."""

    layer: str
    scheme: str
    rank: int
    kernel: tuple[int, int]     # (kh, kw); (1, 1) for linear layers
    dense: tuple[int, int]      # (n, c): output and input channels of the layer in the dense model
    bias: bool
    positions: tuple[int, int]  # (times the second factor is applied, times the first is)

    def terms(self, n: float, c: float, rank: float | None = None) -> dict[str, float]:
        """MACs and parameters at output width ``n``, input width ``c`` and ``rank`` (own by default)."""
        r = self.rank if rank is None else rank
        kh, kw = self.kernel
        first, second = {  # weights per rank of the first and second factor
            "svd": (c, n), "channel": (c * kh * kw, n), "spatial": (c * kh, n * kw), "decoupled": (n * c, n * kh * kw),
        }[self.scheme]
        out, mid = self.positions
        return {"macs": r * (first * mid + second * out), "params": r * (first + second) + (n if self.bias else 0)}

    def to_json(self) -> dict:
        return {"scheme": self.scheme, "rank": self.rank}


def positions(model: nn.Module, example_inputs, names) -> dict[str, tuple[int, int]]:
    """(output positions, first-factor positions) of each named conv/linear layer, by its scheme:
    the first factor runs at the output resolution for ``channel``, at (H_out, W_in) for ``spatial``
    (its stride is vertical only), at the input resolution for ``decoupled`` (1x1 before the stride)."""
    names = dict(names)  # name -> scheme
    out, hooks = {}, []
    modules = dict(model.named_modules())
    for name, scheme in names.items():
        def hook(m, i, o, name=name, scheme=scheme):
            x = i[0]
            if isinstance(m, nn.Linear):
                p = o.numel() // m.out_features
                out[name] = (p, p)
                return
            p_out = o.numel() // m.out_channels
            n_batch = x.numel() // (x.shape[-3] * x.shape[-2] * x.shape[-1])
            mid = {"channel": p_out, "spatial": n_batch * o.shape[-2] * x.shape[-1],
                   "decoupled": n_batch * x.shape[-2] * x.shape[-1]}[scheme]
            out[name] = (p_out, mid)
        hooks.append(modules[name].register_forward_hook(hook))
    try:
        with eval_mode(model), torch.no_grad():
            _forward(model, example_inputs)
    finally:
        for h in hooks:
            h.remove()
    return out


def make_factor(name: str, module: nn.Module, scheme: str, rank: int, dense: tuple[int, int],
                where: tuple[int, int]) -> Factor:
    kernel = (1, 1) if isinstance(module, nn.Linear) else tuple(module.kernel_size)
    return Factor(name, scheme, int(rank), kernel, tuple(dense), module.bias is not None, tuple(where))


def widths_of(cost, layer: str, dense: tuple[int, int], widths: dict[str, int] | None) -> tuple[float, float]:
    """(n, c) of ``layer`` at ``widths``: each dimension of its weight is its dense size minus what
    every Unit touching it gives up (a Unit channel covers len(positions)/width of the dimension)."""
    dims = list(map(float, dense))
    if widths:
        for unit in cost.graph.units:
            w = widths.get(unit.name, unit.width)
            if w == unit.width:
                continue
            for s in unit.slices:
                if s.param == f"{layer}.weight" and s.dim in (0, 1):
                    dims[s.dim] -= len(torch.unique(s.index)) / unit.width * (unit.width - w)
    return dims[0], dims[1]


def factorized_cost(cost, factors, widths: dict[str, int] | None = None,
                    ranks: dict[str, int] | None = None) -> dict[str, float]:
    """MACs and parameters of the model at ``widths`` with every Factor's layer replaced (at the
    Factor's rank, or at ``ranks[layer]`` when given)."""
    total = cost.evaluate(widths)
    layers = cost.layer_costs(widths)
    for f in factors:
        own = layers[f.layer]
        new = f.terms(*widths_of(cost, f.layer, f.dense, widths), rank=(ranks or {}).get(f.layer))
        for key in ("macs", "params"):
            total[key] += new[key] - own[key]
    return total


def describe(factors) -> dict[str, dict]:
    return {f.layer: asdict(f) for f in factors}
