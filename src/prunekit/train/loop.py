"""The training loop: seeded, with one-cycle/cosine LR, label smoothing and optional distillation."""
from __future__ import annotations

import json
import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from ..data import make_loader
from ..errors import ConfigError
from .evaluate import evaluate
from .recipe import Recipe


def make_optimizer(model: nn.Module, recipe: Recipe) -> torch.optim.Optimizer:
    """SGD; BatchNorm and bias parameters (1-d) get no weight decay unless the recipe asks for it."""
    decay, plain = [], []
    for p in model.parameters():
        if p.requires_grad:
            (plain if p.ndim <= 1 and not recipe.decay_norm_and_bias else decay).append(p)
    groups = [{"params": decay, "weight_decay": recipe.weight_decay}, {"params": plain, "weight_decay": 0.0}]
    return torch.optim.SGD([g for g in groups if g["params"]], lr=recipe.lr, momentum=recipe.momentum,
                           nesterov=recipe.nesterov and recipe.momentum > 0)


def make_scheduler(optimizer: torch.optim.Optimizer, recipe: Recipe, total_steps: int):
    """Per-step LR: one-cycle (linear warm-up, cosine down) or cosine with linear warm-up."""
    if recipe.schedule == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=recipe.lr, total_steps=total_steps, pct_start=max(recipe.warmup, 1e-6),
            anneal_strategy="cos", cycle_momentum=False)
    warm = round(recipe.warmup * total_steps)

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        return 0.5 * (1 + math.cos(math.pi * (step - warm) / max(total_steps - warm, 1)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def distillation_loss(logits: torch.Tensor, teacher_logits: torch.Tensor, target: torch.Tensor,
                      recipe: Recipe) -> torch.Tensor:
    """(1 - w) * CE(label-smoothed) + w * T^2 * KL(teacher_T || student_T) (Hinton et al. 2015)."""
    ce = F.cross_entropy(logits, target, label_smoothing=recipe.label_smoothing)
    t = recipe.kd_temperature
    kl = F.kl_div(F.log_softmax(logits / t, 1), F.log_softmax(teacher_logits / t, 1), reduction="batchmean",
                  log_target=True)
    return (1 - recipe.kd_weight) * ce + recipe.kd_weight * t * t * kl


def _check_teacher(model: nn.Module, teacher: nn.Module, data: Dataset) -> None:
    x = data[0][0].unsqueeze(0)
    with torch.no_grad():
        was = model.training
        model.eval()
        ours = model(x.to(next(model.parameters()).device)).shape[-1]
        model.train(was)
        theirs = teacher(x.to(next(teacher.parameters()).device)).shape[-1]
    if ours != theirs:
        raise ConfigError(f"the teacher predicts {theirs} classes but the model predicts {ours}; "
                          "distill from the dense model of the same task")


def fit(model: nn.Module, data: Dataset, recipe: Recipe, eval_data: Dataset | None = None,
        teacher: nn.Module | None = None, log: str | Path | None = None, progress: bool = True) -> list[dict]:
    """Train ``model`` in place; returns one dict per epoch (loss, train/eval accuracy, seconds, images/s).

    The same seed, data and recipe give the same weights. ``log`` receives the history as JSON lines.
    """
    if teacher is not None:
        _check_teacher(model, teacher.eval(), data)
    torch.manual_seed(recipe.seed)
    device = next(model.parameters()).device
    loader = make_loader(data, recipe.batch_size, shuffle=True, seed=recipe.seed, num_workers=recipe.num_workers)
    steps = min(len(loader), recipe.max_steps_per_epoch or len(loader))
    optimizer = make_optimizer(model, recipe)
    scheduler = make_scheduler(optimizer, recipe, recipe.epochs * steps)
    history = []
    for epoch in range(recipe.epochs):
        row = _epoch(model, loader, steps, optimizer, scheduler, recipe, teacher, device,
                     desc=f"epoch {epoch + 1}/{recipe.epochs}", progress=progress)
        row["epoch"] = epoch + 1
        if eval_data is not None:
            row["eval_acc"] = evaluate(model, eval_data)
        history.append(row)
        if log is not None:
            with open(log, "a") as f:
                f.write(json.dumps(row) + "\n")
    return history


def _epoch(model, loader, steps, optimizer, scheduler, recipe, teacher, device, desc, progress) -> dict:
    model.train()
    loss_sum = correct = seen = 0
    t0 = time.perf_counter()
    bar = tqdm(total=steps, desc=desc, disable=not progress, leave=False, unit="step")
    for step, (x, y) in enumerate(loader):
        if step == steps:
            break
        x, y = x.to(device), y.to(device)
        logits = model(x)
        if teacher is not None:
            with torch.no_grad():
                soft = teacher(x)
            loss = distillation_loss(logits, soft, y, recipe)
        else:
            loss = F.cross_entropy(logits, y, label_smoothing=recipe.label_smoothing)
        if not torch.isfinite(loss):
            raise ConfigError(f"training diverged (loss {loss.item()}) at {desc}, step {step}; lower the learning rate")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        loss_sum += loss.item() * len(y)
        correct += (logits.argmax(1) == y).sum().item()
        seen += len(y)
        bar.update()
        bar.set_postfix(loss=f"{loss_sum / seen:.3f}", acc=f"{100 * correct / seen:.1f}")
    bar.close()
    seconds = time.perf_counter() - t0
    return {"loss": loss_sum / max(seen, 1), "train_acc": 100 * correct / max(seen, 1), "seconds": seconds,
            "images_per_s": seen / max(seconds, 1e-9), "lr": scheduler.get_last_lr()[0]}
