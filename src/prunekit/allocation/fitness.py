"""Held-out fitness of a candidate structure, for allocators that search by measurement (acp).

A candidate is the dense model pruned to some widths, its channels chosen by the method's criterion
(so it inherits the trained weights, never random ones). It is scored on a held-out part of the
*training* data (never the test set) after BatchNorm re-estimation (``mode="bn"``) or after a few
fine-tuning steps (``mode="train"``). The re-estimation and training batches come only from the rest
of the training data, so no candidate is scored on an image it was fitted on.
"""
from __future__ import annotations

import copy

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from ..errors import ConfigError
from ..graph import UnitGraph

MODES = ("bn", "train")


def pruned_copy(graph: UnitGraph, widths: np.ndarray, scores: dict[str, torch.Tensor]) -> nn.Module:
    """A pruned copy of the (still dense) ``graph.model``: each Unit keeps its ``widths`` best-scoring
    channels, exactly the channels the final Plan keeps for the same widths."""
    from ..plan import Plan
    trial = UnitGraph(copy.deepcopy(graph.model), graph.example_inputs, ignore=graph.ignored)
    Plan.from_widths(graph, widths, scores, method="", budget="", input_shape=[]).apply(trial)
    return trial.model


class HeldOut:
    """Fitness = top-1 % on ``held`` after fitting BatchNorm (and, for "train", the weights) on ``rest``.

    The split is ``method auto``'s (``auto.split``: ``holdout_split`` of the training data, the
    held-out part cut to ``images``), so the same seed and fraction give the same held-out images.
    """

    def __init__(self, data: Dataset, mode: str = "bn", holdout: float = 0.1, images: int | None = 2000,
                 seed: int = 0, bn_batches: int = 10, train_steps: int = 100, lr: float = 0.01,
                 batch_size: int = 64):
        from ..auto import split  # auto imports the allocator registry: import it when used
        if mode not in MODES:
            raise ConfigError(f"fitness must be one of {', '.join(map(repr, MODES))}, got {mode!r}")
        self.mode, self.seed = mode, seed
        self.bn_batches, self.train_steps, self.lr, self.batch_size = bn_batches, train_steps, lr, batch_size
        self.rest, self.held = split(data, set(), holdout, images, seed)
        if not len(self.held):
            raise ConfigError("the held-out split is empty; raise holdout or holdout_images")

    def tune(self, model: nn.Module) -> None:
        """Fit the candidate on ``rest`` only: BatchNorm statistics, then (mode "train") SGD steps."""
        from ..train import recalibrate_bn
        recalibrate_bn(model, self.rest, batches=self.bn_batches, batch_size=128, seed=self.seed)
        if self.mode == "train":
            train_steps(model, self.rest, self.train_steps, self.lr, self.batch_size, self.seed)

    def score(self, model: nn.Module) -> float:
        from ..train import evaluate
        return evaluate(model, self.held)

    def __call__(self, model: nn.Module) -> float:
        self.tune(model)
        return self.score(model)


def train_steps(model: nn.Module, data: Dataset, steps: int, lr: float, batch_size: int, seed: int) -> None:
    """``steps`` SGD steps (momentum 0.9, weight decay 1e-4, constant LR: the official fitness
    training, shortened) over seeded batches of ``data``; the model is left in eval mode."""
    from ..train.batches import epoch_batches, steps_per_epoch
    device = next(model.parameters()).device
    for p in model.parameters():
        p.requires_grad_(True)  # a private copy: whatever the caller froze is trained here
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=1e-4)
    model.train()
    done, epoch = 0, 0
    with torch.enable_grad():
        while done < steps:
            n = min(steps - done, steps_per_epoch(data, batch_size, None))
            for x, y in epoch_batches(data, batch_size, seed, epoch, n, device):
                opt.zero_grad(set_to_none=True)
                F.cross_entropy(model(x), y).backward()
                opt.step()
            done, epoch = done + n, epoch + 1
    model.eval()


__all__ = ["HeldOut", "MODES", "pruned_copy", "train_steps"]
