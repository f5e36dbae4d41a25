"""Calibration data, gathered once and shared by every criterion and allocator that needs it."""
from __future__ import annotations

import weakref
from typing import Iterator

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from .errors import ConfigError
from .graph import eval_mode


class Signals:
    """A fixed, seeded set of calibration batches and the statistics computed from them.

    Batches are drawn once (so every consumer sees the same images) and statistics are cached,
    so nothing runs the calibration data twice.
    """

    def __init__(self, data: Dataset | DataLoader | None = None, batches: int = 4, batch_size: int = 64, seed: int = 0,
                 progress: bool = False):
        self.seed, self.progress = seed, progress
        self.dataset = data.dataset if isinstance(data, DataLoader) else data
        self.record: dict[str, object] = {}  # what a method wants shown: importance, gates, ranks
        self._batches: list[tuple[torch.Tensor, torch.Tensor | None]] = []
        self._cache: dict[str, object] = {}
        if data is None:
            return
        if batches < 1:
            raise ConfigError(f"calibration batches must be >= 1, got {batches}")
        loader = data if isinstance(data, DataLoader) else DataLoader(
            data, batch_size=batch_size, shuffle=True, generator=torch.Generator().manual_seed(seed))
        for i, batch in enumerate(loader):
            if i >= batches:
                break
            x, y = (batch[0], batch[1]) if isinstance(batch, (list, tuple)) and len(batch) > 1 else (batch, None)
            self._batches.append((x, y))

    @property
    def has_data(self) -> bool:
        return bool(self._batches)

    def batches(self, desc: str | None = None) -> Iterator[tuple[torch.Tensor, torch.Tensor | None]]:
        """The calibration batches; with ``desc`` and ``progress`` on, behind a progress bar."""
        return iter(tqdm(self._batches, desc=desc, leave=False, unit="batch", disable=not (self.progress and desc)))

    def require(self, who: str, labels: bool = False) -> None:
        if not self._batches:
            raise ConfigError(f"{who} needs calibration data: pass data=... (CLI: --dataset NAME)")
        if labels and self._batches[0][1] is None:
            raise ConfigError(f"{who} needs labelled calibration data (pairs of images and labels)")

    def gradients(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """Summed cross-entropy gradients of every parameter over the calibration batches."""
        if "gradients" not in self._cache:
            self.require("a gradient criterion", labels=True)
            device = next(model.parameters()).device
            model.zero_grad(set_to_none=True)
            with eval_mode(model), torch.enable_grad():  # eval: keep BatchNorm statistics intact
                for x, y in self._batches:
                    F.cross_entropy(model(x.to(device)), y.to(device)).backward()
            self._cache["gradients"] = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}
            model.zero_grad(set_to_none=True)
        return self._cache["gradients"]  # type: ignore[return-value]



def _reading_points(graph, unit) -> list[tuple[nn.Module, str, torch.Tensor | None]]:
    """Where a Unit's channels are read: the inputs of its conv/linear consumers, i.e. the
    post-activation maps the next layers see (for a residual stream, after the add and ReLU)."""
    points = []
    for s in unit.slices:
        if s.role == "in" and s.module in unit.consumers:
            order = torch.sort(s.channel, stable=True).indices
            points.append((graph.model.get_submodule(s.module), "input", s.position[order]))
    return points or [(graph.model.get_submodule(unit.name), "output", None)]


def unit_features(graph, batches, consume, all_points: bool = False) -> None:
    """Run ``batches`` once and hand ``consume(unit_index, features)`` each Unit's features as an
    (N, C, positions) float64 tensor, batch by batch, so nothing is kept beyond one batch.

    By default a Unit is read once, at its first consumer; with ``all_points`` at every distinct
    tensor its consumers read (each block output along a residual stream).
    """
    seen: dict[tuple[int, int], weakref.ref] = {}
    hooks = []

    def grab(k: int, t: torch.Tensor, pos, channel_last: bool) -> None:
        key = (k, id(t))
        if key in seen and seen[key]() is t:
            return  # another consumer of the same tensor
        seen[key] = weakref.ref(t)
        n, c = t.shape[0], graph.units[k].width
        t = t.detach().movedim(-1, 1) if channel_last else t.detach()
        if pos is not None:
            t = t.index_select(1, pos.to(t.device))
        consume(k, t.reshape(n, c, -1).double())

    for k, unit in enumerate(graph.units):
        points = _reading_points(graph, unit)
        for module, where, pos in points if all_points else points[:1]:
            last = isinstance(module, nn.Linear)  # a linear layer reads its last dimension
            if where == "input":
                hooks.append(module.register_forward_pre_hook(
                    lambda m, i, k=k, pos=pos, last=last: grab(k, i[0], pos, last)))
            else:
                hooks.append(module.register_forward_hook(
                    lambda m, i, o, k=k, last=last: grab(k, o, None, last)))
    model = graph.model
    device = next(model.parameters()).device
    try:
        with eval_mode(model), torch.no_grad():
            for x in batches:
                seen.clear()
                model(x.to(device))
    finally:
        for h in hooks:
            h.remove()
