"""What the CPU bench scripts share: the shipped model, the machine line, one pruning measurement, output."""
from __future__ import annotations

import inspect
import json
import platform
import time
from pathlib import Path

import torch

import prunekit
from prunekit.models import create_model
from prunekit.train import evaluate, recalibrate_bn

CKPT = Path(__file__).resolve().parents[1] / "checkpoints/fmnist-resnet20/model.safetensors"
X = torch.zeros(1, 1, 28, 28)


def shipped_resnet20() -> torch.nn.Module:
    model = create_model("resnet20", in_channels=1)
    prunekit.io.load_weights(model, CKPT)
    return model.eval()


def machine() -> str:
    return f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}"


def compress_reestimated(dense, x, budget, method: str, data, seed: int = 0, bn_batches: int = 20,
                         options: dict | None = None, reconstruct: int = 0):
    """``prunekit.compress`` with BatchNorm re-estimated on ``bn_batches`` x 128 training images (seeded
    by ``seed``, as ``recalibrate_bn`` does for Torch-Pruning's models): by compress itself where it
    takes ``bn_batches`` (it then records ``summary["batchnorm"]``), else here, so the bench scripts
    work on either side of that change. ``reconstruct``: compress's layer reconstruction (images; the
    bench scripts measure without it unless asked)."""
    if "reconstruct" in inspect.signature(prunekit.compress).parameters:
        result = prunekit.compress(dense, x, budget, method=method, data=data, seed=seed, options=options,
                                   bn_batches=bn_batches, reconstruct=reconstruct)
        if result.summary.get("batchnorm") not in ("re-estimated", "none"):
            raise RuntimeError(f"compress left BatchNorm {result.summary.get('batchnorm')!r} with data given")
        return result
    if "bn_batches" in inspect.signature(prunekit.compress).parameters:
        result = prunekit.compress(dense, x, budget, method=method, data=data, seed=seed, options=options,
                                   bn_batches=bn_batches)
        if result.summary.get("batchnorm") not in ("re-estimated", "none"):
            raise RuntimeError(f"compress left BatchNorm {result.summary.get('batchnorm')!r} with data given")
        return result
    result = prunekit.compress(dense, x, budget, method=method, data=data, seed=seed, options=options)
    recalibrate_bn(result.model, data, batches=bn_batches, seed=seed)
    result.summary["batchnorm"] = "re-estimated by the bench script"
    return result


def after_pruning(dense, train, test, budget: float, method: str, options: dict) -> dict:
    """Accuracy right after pruning to ``budget`` of the MACs, BatchNorm re-estimated on 20 x 128 images."""
    t0 = time.perf_counter()
    r = compress_reestimated(dense, X, {"flops": budget}, method, train, options=options)
    s = r.summary
    row = {"method": method, "options": options, "flops": budget, "accuracy": evaluate(r.model, test),
           "macs": s["macs"]["pruned"] / s["macs"]["dense"], "params": s["params"]["pruned"],
           "widths": {u["name"]: u["kept"] for u in s["units"]},
           "allocation_seconds": round(s["seconds"]["allocation"], 2), "wall_seconds": round(time.perf_counter() - t0, 1)}
    if "beta" in s["signals"]:
        row["beta"] = s["signals"]["beta"]
    print(f"{budget} {method} {options}: {row['accuracy']:.2f}%", flush=True)
    return row


def write(out: str | Path, res: dict, markdown) -> None:
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(res, indent=1))
    out.with_suffix(".md").write_text(markdown(res))
    print(markdown(res))
