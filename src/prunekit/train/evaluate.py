"""Accuracy and BatchNorm re-estimation: the two measurements every pruning result needs."""
from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from ..data import make_loader
from ..data.base import batches_in_order


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


@torch.inference_mode()
def evaluate(model: nn.Module, data: Dataset, batch_size: int = 500, progress: bool = False) -> float:
    """Top-1 accuracy in percent; the model's train/eval mode is restored afterwards."""
    was_training, device = model.training, _device(model)
    model.eval()
    correct = total = 0
    batches = batches_in_order(data, batch_size, device)
    for x, y in tqdm(batches, total=-(-len(data) // batch_size), desc="evaluating", leave=False, unit="batch",
                     disable=not progress):
        correct += (model(x).argmax(1) == y).sum().item()
        total += len(y)
    model.train(was_training)
    return 100.0 * correct / max(total, 1)


@torch.no_grad()
def recalibrate_bn(model: nn.Module, data: Dataset, batches: int = 20, batch_size: int = 128, seed: int = 0) -> None:
    """Re-estimate BatchNorm running statistics as a plain average over ``batches`` training batches.

    A pruned model's statistics are stale (its inputs changed); re-estimating them separates what the
    pruning removed from what fine-tuning would recover. Weights are untouched.
    """
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    if not norms or batches < 1:
        return
    was_training, device = model.training, _device(model)
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average
    model.train()
    for i, (x, _) in enumerate(make_loader(data, batch_size, shuffle=True, seed=seed)):
        if i == batches:
            break
        model(x.to(device))
    for m, momentum in zip(norms, momenta):
        m.momentum = momentum
    model.train(was_training)
