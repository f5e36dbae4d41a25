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
from accelerate import Accelerator
from accelerate.state import AcceleratorState, PartialState
from tqdm.auto import tqdm

from ..errors import ConfigError
from ..io import write_text
from .batches import epoch_batches, steps_per_epoch
from .checkpoint import load_state, save_state
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
        teacher: nn.Module | None = None, log: str | Path | None = None, progress: bool = True,
        checkpoint: str | Path | None = None, resume: bool = False, device: str | torch.device | None = None,
        step_hook=None) -> list[dict]:
    """Train ``model`` in place; returns one dict per epoch (loss, train/eval accuracy, seconds, images/s).

    The same seed, data and recipe give the same weights. ``checkpoint`` is rewritten after every
    epoch; with ``resume`` a run continues from it. ``log`` receives the history as JSON lines.
    Launched by ``torchrun`` or ``accelerate launch``, every process trains its slice of each batch
    (Accelerate wraps the model in DDP); only the main process evaluates and writes.
    ``step_hook`` (optional) is called with the global step number as ``before_forward(step)`` and,
    after the gradients are in, ``before_step(step)`` (TRP's truncation and nuclear-norm subgradient).
    """
    accelerator = _accelerator(device, model)
    device = accelerator.device
    state = load_state(checkpoint, model, recipe) if resume and checkpoint and Path(checkpoint).is_file() else None
    if teacher is not None:
        _check_teacher(model, teacher.eval(), data)
        teacher.to(device, memory_format=_memory_format(recipe, device))
    model.to(device, memory_format=_memory_format(recipe, device))
    steps = steps_per_epoch(data, recipe.batch_size, recipe.max_steps_per_epoch)
    optimizer = make_optimizer(model, recipe)
    scheduler = make_scheduler(optimizer, recipe, recipe.epochs * steps)
    history = _restore(state, model, optimizer, scheduler) if state else []
    if log is not None:
        _write_log(log, history)
    trained, optimizer = accelerator.prepare(model, optimizer)
    for epoch in range(len(history), recipe.epochs):
        batches = epoch_batches(data, recipe.batch_size, recipe.seed, epoch, steps, device,
                                accelerator.process_index, accelerator.num_processes, recipe.num_workers)
        row = _epoch(trained, batches, steps, optimizer, scheduler, recipe, teacher, accelerator,
                     desc=f"epoch {epoch + 1}/{recipe.epochs}", progress=progress, step_hook=step_hook,
                     first_step=epoch * steps)
        row["epoch"] = epoch + 1
        if eval_data is not None and accelerator.is_main_process:
            row["eval_acc"] = evaluate(model, eval_data)
        history.append(row)
        if accelerator.is_main_process:
            if log is not None:
                _write_log(log, history)
            if checkpoint is not None:
                save_state(checkpoint, model, optimizer, scheduler, recipe, history)
        accelerator.wait_for_everyone()
    return history


def _accelerator(device, model: nn.Module) -> Accelerator:
    """Accelerate finds the processes ``torchrun``/``accelerate launch`` started and picks this one's device."""
    wanted = torch.device(device) if device is not None else (
        torch.device("cuda") if torch.cuda.is_available() else next(model.parameters()).device)
    state = PartialState._shared_state
    if state.get("num_processes", 1) == 1 and "device" in state and torch.device(state["device"]).type != wanted.type:
        # Accelerate keeps one device per process; a single process may fine-tune on the GPU and then
        # train a method's gates on the CPU (or the reverse), so start its state afresh for the new device
        AcceleratorState._reset_state(reset_partial_state=True)
    return Accelerator(cpu=wanted.type == "cpu")


def _memory_format(recipe: Recipe, device: torch.device) -> torch.memory_format:
    return torch.channels_last if recipe.channels_last and device.type == "cuda" else torch.preserve_format


def _restore(state: dict, model, optimizer, scheduler) -> list[dict]:
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    torch.set_rng_state(state["rng"])
    return list(state["history"])


def _write_log(path: str | Path, history: list[dict]) -> None:
    """The whole history each time, atomically: a resumed run's log has every epoch exactly once."""
    write_text(path, "".join(json.dumps(row) + "\n" for row in history))


def _epoch(model, batches, steps, optimizer, scheduler, recipe, teacher, accelerator, desc, progress,
           step_hook=None, first_step: int = 0) -> dict:
    model.train()
    device = accelerator.device
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=recipe.bf16 and device.type == "cuda")
    totals = torch.zeros(3, dtype=torch.float64, device=device)  # loss sum, correct, seen: synced once per epoch
    t0 = time.perf_counter()
    bar = tqdm(total=steps, desc=desc, disable=not (progress and accelerator.is_main_process), leave=False, unit="step")
    for step, (x, y) in enumerate(batches):
        x = x.contiguous(memory_format=_memory_format(recipe, device))
        if step_hook is not None:
            step_hook.before_forward(first_step + step)
        with autocast:
            logits = model(x)
            if teacher is not None:
                with torch.no_grad():
                    soft = teacher(x)
                loss = distillation_loss(logits.float(), soft.float(), y, recipe)
            else:
                loss = F.cross_entropy(logits.float(), y, label_smoothing=recipe.label_smoothing)
        optimizer.zero_grad(set_to_none=True)
        accelerator.backward(loss)
        if step_hook is not None:
            step_hook.before_step(first_step + step)
        optimizer.step()
        scheduler.step()
        totals += torch.stack([loss.detach().double() * len(y), (logits.argmax(1) == y).sum().double(),
                               torch.tensor(len(y), dtype=torch.float64, device=device)])
        bar.update()
        if step % 25 == 0 or step == steps - 1:
            _check_finite(totals, desc, step)
            bar.set_postfix(loss=f"{totals[0] / totals[2]:.3f}", acc=f"{100 * totals[1] / totals[2]:.1f}",
                            img_s=f"{accelerator.num_processes * totals[2].item() / (time.perf_counter() - t0):.0f}")
    bar.close()
    loss_sum, correct, seen = accelerator.reduce(totals, reduction="sum").tolist()
    seconds = time.perf_counter() - t0
    return {"loss": loss_sum / max(seen, 1), "train_acc": 100 * correct / max(seen, 1), "seconds": seconds,
            "images_per_s": seen / max(seconds, 1e-9), "lr": scheduler.get_last_lr()[0]}


def _check_finite(totals: torch.Tensor, desc: str, step: int) -> None:
    if not torch.isfinite(totals[0]):
        raise ConfigError(f"training diverged (loss is not finite) at {desc}, step {step}; lower the learning rate")
