"""The training state written after every epoch, so a killed run continues where it stopped.

One file holds weights, optimizer and scheduler state, the finished epochs' history and the recipe.
It is written atomically and read with ``weights_only=True``; resuming checks, before anything is
written, that the checkpoint belongs to this model and this recipe.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from ..errors import CheckpointError
from ..io import atomic_path
from .recipe import Recipe

CHECKPOINT = "checkpoint.pt"


def signature(model: nn.Module) -> dict[str, list[int]]:
    return {k: list(v.shape) for k, v in model.state_dict().items()}


def save_state(path: str | Path, model: nn.Module, optimizer, scheduler, recipe: Recipe, history: list[dict]) -> None:
    state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
             "recipe": recipe.to_dict(), "history": history, "epoch": len(history),
             "signature": signature(model), "rng": torch.get_rng_state()}
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def load_state(path: str | Path, model: nn.Module, recipe: Recipe) -> dict:
    """The saved state, after checking it can continue this run; nothing is changed if it cannot."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001  (torch raises many types for a bad file)
        raise CheckpointError(f"cannot read training checkpoint {path} ({type(e).__name__}); "
                              "delete it to start over, or choose another --out") from None
    if not isinstance(state, dict) or not {"model", "optimizer", "scheduler", "recipe", "history"} <= set(state):
        raise CheckpointError(f"{path} is not a prunekit training checkpoint; choose another --out")
    _same_model(path, state.get("signature", {}), signature(model))
    _same_recipe(path, state["recipe"], recipe.to_dict())
    return state


def _same_model(path, saved: dict, ours: dict) -> None:
    if saved == ours:
        return
    diff = next((k for k in sorted(set(saved) | set(ours)) if saved.get(k) != ours.get(k)), "?")
    raise CheckpointError(f"training checkpoint {path} is of another model ({diff}: {saved.get(diff, 'absent')} "
                          f"there, {ours.get(diff, 'absent')} here); resume with the same model or choose another --out")


def _same_recipe(path, saved: dict, ours: dict) -> None:
    diff = [k for k in ours if saved.get(k) != ours[k]]
    if diff:
        k = diff[0]
        raise CheckpointError(f"training checkpoint {path} was written with {k}={saved.get(k)!r}, this run asks "
                              f"{k}={ours[k]!r}; resume with the same settings or choose another --out")
