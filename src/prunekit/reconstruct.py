"""Least-squares reconstruction: refit each pruned layer so its kept outputs match the dense model's.

Removing channels leaves every consumer reading fewer inputs than it was trained on; BatchNorm
re-estimation fixes the scales, not the lost signal. Each conv/linear layer is refit, in execution
order, on the pruned model's own inputs (so earlier errors are corrected downstream) against the
dense layer's outputs at the kept positions: ridge regression on unfolded patches, as ThiNet and
channel pruning (He et al. 2017) reconstruct, one forward pass of each model on a few hundred
training images.
"""
from __future__ import annotations

import copy
import time

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from .errors import ConfigError
from .graph import UnitGraph


def kept_outputs(graph: UnitGraph, keep: dict[str, list[int]]) -> dict[str, torch.Tensor]:
    """Layer name -> the dense output positions it still computes, for every layer producing a Unit."""
    kept: dict[str, torch.Tensor] = {}
    for unit in graph.units:
        survivors = torch.tensor(sorted(keep.get(unit.name, range(unit.width))))
        for s in unit.slices:
            if s.role == "out" and s.dim == 0 and s.param == f"{s.module}.weight":
                kept[s.module] = torch.sort(s.index[torch.isin(s.channel, survivors)]).values
    return kept


def _refittable(module: nn.Module) -> bool:
    if isinstance(module, nn.Linear):
        return True
    return (isinstance(module, nn.Conv2d) and module.groups == 1 and module.padding_mode == "zeros"
            and not isinstance(module.padding, str))


def _sample(module: nn.Module, out: torch.Tensor, rows: int, generator: torch.Generator) -> torch.Tensor:
    """Up to ``rows`` random output positions: flat row indices (linear) or (image, y, x) triples (conv)."""
    if isinstance(module, nn.Linear):
        n = out.numel() // out.shape[-1]
        return torch.randperm(n, generator=generator)[:rows]
    n, _, h, w = out.shape
    flat = torch.randperm(n * h * w, generator=generator)[:rows]
    return torch.stack([flat // (h * w), flat // w % h, flat % w], 1)


def _patches(module: nn.Module, x: torch.Tensor, pick: torch.Tensor) -> torch.Tensor:
    """The input rows of the sampled outputs: output row = rows @ weight.view(out, -1).T (+ bias).
    Gathered directly (not a full unfold): a few thousand patches of a large activation."""
    if isinstance(module, nn.Linear):
        return x.reshape(-1, x.shape[-1])[pick.to(x.device)]
    (ph, pw), (sh, sw), (dh, dw), (kh, kw) = module.padding, module.stride, module.dilation, module.kernel_size
    xp = F.pad(x, (pw, pw, ph, ph))
    pick = pick.to(x.device)
    rows = pick[:, 1:2] * sh + torch.arange(kh, device=x.device) * dh  # (R, kh)
    cols = pick[:, 2:3] * sw + torch.arange(kw, device=x.device) * dw  # (R, kw)
    patches = xp[pick[:, 0, None, None], :, rows[:, :, None], cols[:, None, :]]  # (R, kh, kw, C)
    return patches.permute(0, 3, 1, 2).reshape(len(pick), -1)


def _outputs(module: nn.Module, y: torch.Tensor, pick: torch.Tensor) -> torch.Tensor:
    if isinstance(module, nn.Linear):
        return y.reshape(-1, y.shape[-1])[pick.to(y.device)]
    pick = pick.to(y.device)
    return y[pick[:, 0], :, pick[:, 1], pick[:, 2]]


def _solve(a: torch.Tensor, y: torch.Tensor, ridge: float) -> torch.Tensor:
    """Ridge regression (products in float32, the solve in float64), relative to the inputs' scale."""
    gram, rhs = (a.T @ a).double(), (a.T @ y).double()
    gram += torch.eye(gram.shape[0], dtype=gram.dtype, device=gram.device) * ridge * gram.diagonal().mean().clamp_min(1e-12)
    return torch.linalg.solve(gram, rhs).T


@torch.no_grad()
def reconstruct(pruned: nn.Module, dense: nn.Module, kept: dict[str, torch.Tensor], images: torch.Tensor,
                ridge: float = 1e-3, max_rows: int = 16384, seed: int = 0) -> list[str]:
    """Refit, in place, every layer of ``pruned`` whose kept outputs differ from the dense model's on
    ``images`` (at most ``max_rows`` sampled output positions per layer, and at least as many as the
    layer has weights per output); returns the layers refit.
    Both models run in eval mode: the dense BatchNorm statistics fit the reconstructed outputs."""
    dense_modules = dict(dense.named_modules())
    names = [n for n, m in pruned.named_modules() if _refittable(m) and n in dense_modules]
    generator = torch.Generator().manual_seed(seed)
    targets: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}  # name -> (sampled rows, dense outputs there)
    calls: dict[str, int] = {}

    def record(module, inputs, out, name):
        calls[name] = calls.get(name, 0) + 1
        pick = _sample(module, out, max_rows, generator)
        y = _outputs(module, out, pick)
        targets[name] = (pick, y[:, kept[name].to(y.device)] if name in kept else y)

    refit: list[str] = []

    def refit_layer(module, inputs, name):
        pick, y = targets[name]
        a = _patches(module, inputs[0], pick)
        if module.bias is not None:
            a = torch.cat([a, torch.ones(a.shape[0], 1, dtype=a.dtype, device=a.device)], 1)
        w = torch.cat([module.weight.flatten(1), module.bias[:, None]], 1) if module.bias is not None else module.weight.flatten(1)
        if a.shape[0] < a.shape[1] or torch.allclose(a @ w.T, y, rtol=1e-4, atol=1e-5):
            return  # too few rows to determine the weights, or already the dense outputs (nothing upstream changed)
        w = _solve(a, y, ridge).to(module.weight.dtype)
        module.weight.copy_(w[:, : module.weight[0].numel()].reshape(module.weight.shape))
        if module.bias is not None:
            module.bias.copy_(w[:, -1])
        refit.append(name)

    was = dense.training, pruned.training
    dense.eval(), pruned.eval()
    hooks = [dense_modules[n].register_forward_hook(lambda m, i, o, n=n: record(m, i, o, n)) for n in names]
    try:
        dense(images)
        for h in hooks:
            h.remove()
        for name in [n for n, c in calls.items() if c > 1]:  # a layer run twice has no one input to fit
            targets.pop(name, None)
        modules = dict(pruned.named_modules())
        hooks = [modules[n].register_forward_pre_hook(lambda m, i, n=n: refit_layer(m, i, n)) for n in targets]
        pruned(images)
    finally:
        for h in hooks:
            h.remove()
        dense.train(was[0]), pruned.train(was[1])
    return refit


def check_images(images) -> None:
    if isinstance(images, bool) or not isinstance(images, int) or images < 0:
        raise ConfigError(f"reconstruct must be a number of training images >= 0 (0 turns it off), got {images!r}")


def sample_images(data: Dataset, images: int, seed: int) -> torch.Tensor:
    """``images`` training inputs, a seeded draw (the same for a seed, whatever ran before)."""
    pick = torch.randperm(len(data), generator=torch.Generator().manual_seed(seed))[:images]
    return torch.stack([data[int(i)][0] for i in pick])


def reconstruct_result(result, dense: nn.Module, graph: UnitGraph, data: Dataset | DataLoader | None,
                       images: int, seed: int = 0) -> None:
    """Refit ``result.model`` on ``images`` training inputs; records ``summary["reconstruction"]`` (the
    images and layers refit; 0 images when off or without data, as BatchNorm is then left stale)."""
    if not images or data is None:
        result.summary["reconstruction"] = {"images": 0, "layers": 0, "seconds": 0.0}
        return
    t0 = time.perf_counter()
    device = next(result.model.parameters()).device
    x = sample_images(data.dataset if isinstance(data, DataLoader) else data, images, seed).to(device)
    teacher = dense if next(dense.parameters()).device == device else copy.deepcopy(dense).to(device)
    layers = reconstruct(result.model, teacher, kept_outputs(graph, result.plan.keep), x, seed=seed)
    result.summary["reconstruction"] = {"images": len(x), "layers": len(layers), "seconds": time.perf_counter() - t0}


def after_pruning(summary: dict) -> str:
    """What was done to the pruned model before it was evaluated, for the CLI and the report."""
    refit = summary.get("reconstruction") or {}
    done = [f"{refit['layers']} layers refit on {refit['images']} images"] if refit.get("images") else []
    return ", ".join(done + [f"BatchNorm {'re-estimated' if summary.get('bn_batches') else 'not re-estimated'}"])
