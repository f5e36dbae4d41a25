"""Saving, loading and exporting pruned models. Every write is atomic (temp file + rename)."""
from __future__ import annotations

import json
import os
import tempfile
import warnings
from contextlib import contextmanager
from pathlib import Path

import torch
import torch.nn as nn
from safetensors.torch import load_file, save_file

from .errors import CheckpointError, ConfigError, OutputError
from .fold import inference_form
from .graph import UnitGraph
from .plan import Plan

PLAN, WEIGHTS, SUMMARY = "plan.json", "model.safetensors", "summary.json"


def check_writable(path: str | Path) -> Path:
    """Fail with one line, before any work, if ``path`` cannot become a directory we write in."""
    p = Path(path).absolute()
    if p.exists() and not p.is_dir():
        raise OutputError(f"output {str(path)!r} is a file, not a directory; choose another --out")
    parent = p
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise OutputError(f"cannot write to {str(path)!r} ({str(parent)!r} is not writable); choose another --out")
    return p


def ensure_dir(path: str | Path) -> Path:
    p = check_writable(path)
    try:
        p.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OutputError(f"cannot create {str(path)!r} ({e.strerror or e}); choose another --out") from None
    return p


@contextmanager
def atomic_path(dest: str | Path):
    """Yield a temporary path next to ``dest``; it replaces ``dest`` only if the block succeeds."""
    dest = Path(dest)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".tmp")
    os.close(fd)
    try:
        yield Path(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600 files; give the usual permissions
        os.replace(tmp, dest)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_text(dest: str | Path, text: str) -> None:
    with atomic_path(dest) as tmp:
        tmp.write_text(text)


def write_json(dest: str | Path, obj) -> None:
    write_text(dest, json.dumps(obj, indent=1, default=float))


def save_weights(model: nn.Module, path: str | Path) -> Path:
    # safetensors refuses shared storage: store each tensor contiguously on its own
    state = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
    with atomic_path(path) as tmp:
        save_file(state, str(tmp))
    return Path(path)


def save(result, directory: str | Path) -> Path:
    """Write plan.json, model.safetensors and summary.json; the plan goes last so a directory
    with a plan always has matching weights."""
    d = ensure_dir(directory)
    save_weights(result.model, d / WEIGHTS)
    write_json(d / SUMMARY, result.summary)
    write_text(d / PLAN, result.plan.to_json())
    return d


def load(directory: str | Path, model: nn.Module, example_inputs=None) -> nn.Module:
    """Rebuild a saved pruned model from a fresh dense ``model`` of the same architecture."""
    d = Path(directory)
    if not (d / PLAN).is_file() or not (d / WEIGHTS).is_file():
        raise CheckpointError(f"{str(d)!r} has no {PLAN} and {WEIGHTS}; pass a directory written by prunekit compress")
    plan = Plan.read(d / PLAN)
    if example_inputs is None:
        if not plan.input_shape:
            raise ConfigError("this plan was made with non-tensor inputs: pass example_inputs to load()")
        example_inputs = torch.zeros(plan.input_shape)
    plan.apply(UnitGraph(model, example_inputs))
    if plan.extras.get("lowrank"):  # decomposed layers are re-created before their weights are loaded
        from .lowrank.plan import restructure
        restructure(model, plan.extras["lowrank"])
    load_weights(model, d / WEIGHTS)
    return model


def read_state(path: str | Path) -> dict[str, torch.Tensor]:
    """A state dict from .safetensors or a torch file (loaded with weights_only=True)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {str(path)!r} does not exist")
    try:
        if path.suffix == ".safetensors":
            return load_file(str(path))
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch and safetensors raise many types for a bad file
        raise CheckpointError(f"checkpoint {str(path)!r} is corrupt or not a PyTorch/safetensors file "
                              f"({type(e).__name__}); re-export it") from None
    if isinstance(state, dict) and isinstance(state.get("model"), dict):
        state = state["model"]  # prunekit training checkpoints wrap the weights
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"checkpoint {str(path)!r} holds no state dict of tensors")
    return state


def load_weights(model: nn.Module, path: str | Path) -> nn.Module:
    """Load a state dict, with one line naming the first mismatch if it belongs to another model."""
    state = read_state(path)
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    wrong = [k for k in own if k in state and own[k].shape != state[k].shape]
    if missing or unexpected or wrong:
        if wrong:
            k = wrong[0]
            why = f"{k} has shape {tuple(state[k].shape)} but the model expects {tuple(own[k].shape)}"
        else:
            why = f"missing {missing[:2]}" if missing else f"unexpected {unexpected[:2]}"
        raise CheckpointError(f"checkpoint {str(path)!r} does not fit this model ({why}); use the matching --model")
    model.load_state_dict(state)
    return model


def export_onnx(model: nn.Module, example_inputs, path: str | Path) -> Path:
    """``model`` in eval mode and its inference form (prunekit.fold), as it was timed."""
    model = inference_form(model.eval())
    with atomic_path(path) as tmp:
        torch.onnx.export(model, (example_inputs,), str(tmp), dynamo=False,
                          input_names=["input"], output_names=["output"],
                          dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}})
    return Path(path)


def export_torchscript(model: nn.Module, example_inputs, path: str | Path) -> Path:
    model = inference_form(model.eval())
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # TorchScript is deprecated but still what many runtimes load
        traced = torch.jit.trace(model, example_inputs)
    with atomic_path(path) as tmp:
        traced.save(str(tmp))
    return Path(path)
