"""Group Fisher importance (Liu et al., ICML 2021) from per-sample gradients of per-channel masks.

Every Unit gets a mask ``m`` (all ones) on its channels, multiplied into the input of *every* layer
that reads the Unit (its consumers: for a residual stream, each block's first conv, the downsample
and the classifier). Zeroing ``m_i`` is then exactly what removing channel ``i`` does. Because all
copies share one mask, the gradient of a sample's loss with respect to ``m_i`` is the sum of the
per-copy gradients ``sum_{h,w} A[i,h,w] dL/dÃ[i,h,w]`` -- the paper's "sum across the coupled
layers before squaring".

Per-sample gradients come from one backward pass per batch: the mask is given a batch dimension
(``m`` of shape (N, c)), so with the model in eval mode (samples independent) and the loss summed
over the batch, ``dL/dm[n]`` is sample ``n``'s own gradient (tested against a batch-size-1 loop).

Score of channel ``i``: ``s_i = 1/(2N) sum_n g_{n,i}^2`` (the empirical-Fisher estimate of the loss
increase when ``m_i`` goes to 0), divided by what removing the channel saves: ``norm="memory"`` (the
paper's default: the feature-map elements of every producer of the channel, per image), ``"flops"``
(the MACs one channel of the Unit costs at dense widths, from the CostModel) or ``"none"``.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import ConfigError
from ..graph import UnitGraph, eval_mode
from ..signals import Signals
from . import register_criterion

NORMS = ("memory", "flops", "none")


@dataclass
class _Point:
    """One place a Unit's mask multiplies in: positions ``position`` of ``module``'s input (or of its
    output for a Unit nobody reads) take the mask of Unit channels ``channel``."""

    module: nn.Module
    position: torch.Tensor
    channel: torch.Tensor
    last: bool  # the channel dimension is the last one (linear layers)
    output: bool = False


def mask_points(graph: UnitGraph, unit) -> list[_Point]:
    """Every consumer input slice of the Unit; a Unit without consumers is masked at its root output."""
    points = []
    for s in unit.slices:
        if s.role == "in" and s.module in unit.consumers:
            m = graph.model.get_submodule(s.module)
            points.append(_Point(m, s.position.clone(), s.channel.clone(), isinstance(m, nn.Linear)))
    if not points:
        m = graph.model.get_submodule(unit.name)
        idx = torch.arange(unit.width)
        points.append(_Point(m, idx, idx, isinstance(m, nn.Linear), output=True))
    return points


class Masks:
    """Per-channel masks on every Unit, as forward hooks on a model (removed on exit).

    ``keep[k]`` (float, 0 or 1 per channel) is a persistent mask: channels set to 0 are pruned in
    effect (fisher_iterative masks channels while it trains). While autograd is on, every forward
    also multiplies in a fresh all-ones per-sample mask of shape (N, c) per Unit, whose gradient is
    handed to ``on_grad(k, grad)`` during backward: row n is dL/dm for sample n.
    """

    def __init__(self, graph: UnitGraph, on_grad=None, units: list[int] | None = None):
        self.graph, self.on_grad = graph, on_grad
        self.units = list(range(len(graph.units))) if units is None else units
        self.keep = {k: torch.ones(graph.units[k].width, dtype=torch.float64) for k in self.units}
        self._current: dict[int, torch.Tensor] = {}
        self._hooks: list = []

    def __enter__(self) -> "Masks":
        model = self.graph.model
        self._hooks.append(model.register_forward_pre_hook(lambda m, a: self._current.clear()))
        for k in self.units:
            for p in mask_points(self.graph, self.graph.units[k]):
                if p.output:
                    self._hooks.append(p.module.register_forward_hook(
                        lambda m, a, o, k=k, p=p: self._apply(k, p, o)))
                else:
                    self._hooks.append(p.module.register_forward_pre_hook(
                        lambda m, a, k=k, p=p: (self._apply(k, p, a[0]), *a[1:])))
        return self

    def __exit__(self, *exc) -> None:
        for h in self._hooks:
            h.remove()
        self._hooks.clear()
        self._current.clear()

    def _mask(self, k: int, n: int, like: torch.Tensor) -> torch.Tensor:
        """(n, c) mask of Unit k for this forward: keep x (per-sample ones with a gradient hook)."""
        keep = self.keep[k].to(like.device, like.dtype)
        if not torch.is_grad_enabled():
            return keep.expand(n, -1)
        m = self._current.get(k)
        if m is None or m.shape[0] != n:
            m = torch.ones(n, len(keep), dtype=like.dtype, device=like.device, requires_grad=True)
            if self.on_grad is not None:
                m.register_hook(lambda g, k=k: self.on_grad(k, g.detach()))
            self._current[k] = m
        return m * keep

    def _apply(self, k: int, p: _Point, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        dim = x.dim() - 1 if p.last else 1
        mask = self._mask(k, n, x)
        full = torch.ones(n, x.shape[dim], dtype=x.dtype, device=x.device)
        full = full.index_copy(1, p.position.to(x.device), mask[:, p.channel.to(x.device)])
        shape = [n] + [1] * (x.dim() - 1)
        shape[dim] = x.shape[dim]
        return x * full.view(shape)


@contextlib.contextmanager
def frozen_parameters(model: nn.Module):
    """Parameters need no gradient while only mask gradients are wanted (saves the weight gradients)."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    try:
        for p, _ in flags:
            p.requires_grad_(False)
        yield
    finally:
        for p, f in flags:
            p.requires_grad_(f)


def mask_gradients(graph: UnitGraph, batches, units: list[int] | None = None) -> dict[int, torch.Tensor]:
    """Per Unit index an (N, c) float64 matrix: row n is dL_n/dm for sample n of ``batches``
    (pairs of images and labels; cross-entropy, model in eval mode)."""
    model = graph.model
    device = next(model.parameters()).device
    rows: dict[int, list[torch.Tensor]] = {}
    masks = Masks(graph, lambda k, g: rows.setdefault(k, []).append(g.double().cpu()), units)
    with eval_mode(model), frozen_parameters(model), masks, torch.enable_grad():
        for x, y in batches:
            loss = F.cross_entropy(model(x.to(device)), y.to(device), reduction="sum")
            loss.backward()
    out = {}
    for k in masks.units:
        if k not in rows:
            raise ConfigError(f"unit {graph.units[k].name!r} got no mask gradient (its consumers never ran); "
                              f"pass ignore=['{graph.units[k].name}']")
        out[k] = torch.cat(rows[k])
    return out


def cached_mask_gradients(graph: UnitGraph, signals: Signals) -> dict[int, torch.Tensor]:
    """The calibration batches' mask-gradient matrices, computed once per Signals (efa's criterion
    and allocator both need them)."""
    key = ("mask_gradients", id(graph.model))
    if key not in signals._cache:
        signals.require("fisher", labels=True)
        signals._cache[key] = mask_gradients(graph, signals.batches("mask gradients"))
    return signals._cache[key]  # type: ignore[return-value]


def channel_costs(graph: UnitGraph, norm: str, cost=None) -> np.ndarray:
    """Per Unit what removing one channel saves: feature-map elements of its producers per image
    ("memory"), MACs at dense widths ("flops"), or 1 ("none")."""
    if norm not in NORMS:
        raise ConfigError(f"norm must be one of {', '.join(map(repr, NORMS))}, got {norm!r}")
    if norm == "none":
        return np.ones(len(graph.units))
    if norm == "flops":
        from ..cost import CostModel
        cost = cost or CostModel(graph)
        return np.maximum(np.abs(cost.macs.step_deltas(cost.dense_widths, -np.ones(len(graph.units)))), 1.0)
    from ..cost import _positions
    with eval_mode(graph.model):
        positions = _positions(graph.model, graph.example_inputs)
    batch = _batch_size(graph.example_inputs)
    out = []
    for u in graph.units:
        elems = sum(positions.get(p, 0) for p in u.producers) / batch
        out.append(max(elems, 1.0))
    return np.array(out, dtype=np.float64)


def _batch_size(example_inputs) -> int:
    t = example_inputs if isinstance(example_inputs, torch.Tensor) else next(
        (v for v in (example_inputs.values() if isinstance(example_inputs, dict) else example_inputs)
         if isinstance(v, torch.Tensor)), None)
    return int(t.shape[0]) if t is not None and t.dim() else 1


def fisher_from_gradients(G: torch.Tensor) -> torch.Tensor:
    """1/(2N) sum_n g_n^2 per channel."""
    return (G.double() ** 2).sum(0) / (2 * max(G.shape[0], 1))


@register_criterion("fisher")
def fisher(graph: UnitGraph, signals: Signals, seed: int = 0, norm: str = "memory") -> dict[str, torch.Tensor]:
    """Group Fisher importance per channel, normalized by ``norm`` (memory, flops or none)."""
    per = channel_costs(graph, norm)
    grads = cached_mask_gradients(graph, signals)
    return {u.name: fisher_from_gradients(grads[k]) / per[k] for k, u in enumerate(graph.units)}


__all__ = ["Masks", "NORMS", "channel_costs", "fisher", "fisher_from_gradients", "mask_gradients", "mask_points"]
