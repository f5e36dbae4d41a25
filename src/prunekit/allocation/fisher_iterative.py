"""Group Fisher Pruning's iterative mode (Liu et al., ICML 2021, Algorithm 2) as a training allocator.

It trains ``graph.model`` (compress's private dense copy) with ``prunekit.train.fit`` on the training
data, with a per-channel mask on every Unit (``criteria.fisher.Masks``: the mask multiplies every
layer that reads the Unit, so coupled layers share it). Each iteration adds the squared per-sample
mask gradients of its batch to an accumulator; every ``interval`` iterations (the paper's d, 25 for
classification) the width step with the lowest accumulated Fisher divided by what it saves
(``norm``: feature-map memory, the paper's default, or MACs at the current widths, or nothing) is
masked to zero and the accumulators restart. Training stops as soon as the CostModel says the
budget is met. The widths are returned and ``scores`` is overwritten so that the masked channels are
exactly the ones the Plan drops (kept channels above every masked one; among masked ones, the later
removed rank higher, so ``land=1`` -- fit.fit's growth onto the budget -- restores the last removed
first). Details, options and differences from the paper: docs/efa.md.
"""
from __future__ import annotations

import math
import time
from numbers import Real

import numpy as np
import torch
from torch.utils.data import Dataset

from ..cost import CostModel
from ..criteria.fisher import NORMS, Masks, channel_costs
from ..errors import ConfigError
from ..graph import UnitGraph
from ..signals import Signals
from . import register_allocator
from .fit import fit, limits
from .global_threshold import step_values, value_keys


class _Done(Exception):
    """The budget is met (or the step limit reached): training stops here."""


def _positive_int(name: str, value, allow_none: bool = False) -> None:
    if allow_none and value is None:
        return
    if isinstance(value, bool) or not isinstance(value, Real) or not float(value).is_integer() or value < 1:
        raise ConfigError(f"{name} must be an integer >= 1, got {value!r}")


class _Pruner:
    """The iterative state: accumulators, masks, widths and the removal order."""

    def __init__(self, graph: UnitGraph, cost: CostModel, targets: dict, norm: str):
        self.graph, self.cost, self.targets, self.norm = graph, cost, targets, norm
        self.steps, self.lo, self.hi = limits(graph)
        self.widths = self.hi.copy()
        self.per_channel = None if norm == "flops" else channel_costs(graph, norm)
        self.acc = [torch.zeros(u.width, dtype=torch.float64) for u in graph.units]
        self.total = [torch.zeros(u.width, dtype=torch.float64) for u in graph.units]
        self.removed: list[tuple[int, list[int]]] = []  # (unit index, channels), in order
        self.masks = Masks(graph, self.on_grad)

    def on_grad(self, k: int, g: torch.Tensor) -> None:
        sq = (g.double() ** 2).sum(0).cpu()
        self.acc[k] += sq
        self.total[k] += sq

    def met(self) -> bool:
        return all(getattr(self.cost, k)(self.widths) <= t * (1 + 1e-12) for k, t in self.targets.items())

    def step_cost(self) -> np.ndarray:
        if self.per_channel is not None:
            return self.per_channel * self.steps
        return np.maximum(np.abs(self.cost.macs.step_deltas(self.widths, -self.steps)), 1.0)

    def prune_one(self, acc: list[torch.Tensor]) -> bool:
        """Mask the width step with the lowest normalized Fisher; False when no Unit can shrink."""
        best, best_k, best_offsets = math.inf, -1, None
        per = self.step_cost()
        for k, u in enumerate(self.graph.units):
            if self.widths[k] - self.steps[k] < self.lo[k] - 1e-9:
                continue
            alive = self.masks.keep[k].reshape(u.groups, -1)[0] > 0
            offsets = torch.nonzero(alive).flatten()
            value = acc[k].reshape(u.groups, -1).sum(0)[offsets]
            n = int(self.steps[k]) // u.groups
            order = torch.sort(value, stable=True).indices[:n]
            v = float(value[order].sum()) / per[k]
            if v < best:
                best, best_k, best_offsets = v, k, offsets[order]
        if best_k < 0:
            return False
        u = self.graph.units[best_k]
        per_group = u.width // u.groups
        channels = [g * per_group + int(o) for g in range(u.groups) for o in best_offsets]
        self.masks.keep[best_k][channels] = 0.0
        self.widths[best_k] -= self.steps[best_k]
        self.removed.append((best_k, channels))
        for a in self.acc:
            a.zero_()
        return True

    def scores(self) -> dict[str, torch.Tensor]:
        """Kept channels in [2, 3] by total Fisher; masked ones in [0, 1) by removal order."""
        out = {}
        for k, u in enumerate(self.graph.units):
            t = self.total[k]
            out[u.name] = 2.0 + t / t.max().clamp_min(1e-300)
        n = max(len(self.removed), 1)
        for i, (k, channels) in enumerate(self.removed):
            out[self.graph.units[k].name][channels] = i / n
        return out


@register_allocator("fisher_iterative")
def fisher_iterative(graph: UnitGraph, cost: CostModel, targets: dict[str, float], scores, signals: Signals,
                     seed: int = 0, interval: int = 25, lr: float = 0.01, batch_size: int = 64,
                     max_steps: int | None = None, norm: str = "memory", land=1, device: str | None = None
                     ) -> np.ndarray:
    """Train with masks, masking the least important step every ``interval`` iterations until the
    budget is met. ``lr``/``batch_size``: SGD (Nesterov, weight decay 5e-4, label smoothing 0.1,
    cosine over the longest run the budget can need). ``max_steps``: stop training there and mask the
    rest at once by the Fisher accumulated so far. ``norm``: memory, flops or none. ``land``: 1 grows
    the last masked steps back while the budget allows (fit.fit), 0 keeps exactly the masked model.
    ``device``: where to train (default: the model's device)."""
    from ..train import Recipe, fit as train_fit
    from ..train.batches import steps_per_epoch
    _positive_int("interval", interval)
    _positive_int("batch_size", batch_size)
    _positive_int("max_steps", max_steps, allow_none=True)
    if isinstance(lr, bool) or not isinstance(lr, Real) or not lr > 0:
        raise ConfigError(f"lr must be a number > 0, got {lr!r}")
    if norm not in NORMS:
        raise ConfigError(f"norm must be one of {', '.join(map(repr, NORMS))}, got {norm!r}")
    if land not in (0, 1, True, False):
        raise ConfigError(f"land must be 0 or 1, got {land!r}")
    data: Dataset | None = signals.dataset
    if data is None:
        raise ConfigError("fisher_iterative trains while it prunes: pass data=... (CLI: --dataset NAME)")
    interval, batch_size = int(interval), int(batch_size)
    pruner = _Pruner(graph, cost, targets, norm)
    events_bound = int(sum((pruner.hi - pruner.lo) // pruner.steps))
    horizon = interval * (events_bound + 1)
    limit = min(horizon, int(max_steps)) if max_steps is not None else horizon
    per_epoch = steps_per_epoch(data, batch_size, None)
    recipe = Recipe(epochs=max(1, math.ceil(horizon / per_epoch)), lr=float(lr), batch_size=batch_size,
                    schedule="cosine", warmup=0.0, seed=seed, bf16=False, channels_last=False)
    model = graph.model
    home = next(model.parameters()).device
    flags = [(p, p.requires_grad) for p in model.parameters()]
    was_training = model.training
    done = {"steps": 0}

    def before_forward(m, args):
        if not (m.training and torch.is_grad_enabled()):
            return
        completed = done["steps"]
        if completed and completed % interval == 0 and not pruner.met():
            pruner.prune_one(pruner.acc)
        if pruner.met() or completed >= limit:
            raise _Done
        done["steps"] = completed + 1

    t0 = time.perf_counter()
    hook = None
    try:
        for p, _ in flags:
            p.requires_grad_(True)  # a private copy: whatever the caller froze is trained here
        with pruner.masks:
            hook = model.register_forward_pre_hook(before_forward)
            if not pruner.met():
                try:
                    train_fit(model, data, recipe, progress=signals.progress, device=device or home)
                except _Done:
                    pass
    finally:
        if hook is not None:
            hook.remove()
        for p, f in flags:
            p.requires_grad_(f)
        model.to(home)
        model.train(was_training)
    trained = time.perf_counter() - t0
    during = len(pruner.removed)
    while not pruner.met():  # the step limit came first (or training ran out): the rest at once
        if not pruner.prune_one([a + t for a, t in zip(pruner.acc, pruner.total)]):
            break
    new = pruner.scores()
    scores.update(new)
    widths = pruner.widths.copy()
    if land in (1, True):
        shrink, grow = value_keys(graph, step_values(graph, new, "none"), 0.0)
        widths = fit(graph, cost, targets, widths, shrink_key=shrink, grow_key=grow)
    removed = {u.name: 0 for u in graph.units}
    for k, channels in pruner.removed:
        removed[graph.units[k].name] += len(channels)
    signals.record["masked_channels"] = removed
    signals.record["fisher_iterative"] = {
        "interval": interval, "norm": norm, "lr": float(lr), "batch_size": batch_size, "steps": done["steps"],
        "max_steps": max_steps, "removals_while_training": during, "removals_at_once": len(pruner.removed) - during,
        "restored_by_landing": int((widths - pruner.widths).sum()),
        "seconds_training": trained}
    signals.record.setdefault("seconds", {})["fisher_iterative_training"] = trained
    return widths


__all__ = ["fisher_iterative"]
