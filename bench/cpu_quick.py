"""CPU measurements that need no GPU: planning speed, and accuracy right after pruning.

Accuracy is measured with BatchNorm re-estimated and no fine-tuning, for every method and allocator
setting on the shipped Fashion-MNIST ResNet-20. CHIP's speed has its own script, bench/chip_speed.py.

    python bench/cpu_quick.py --out bench/results/cpu_quick   # ~5 minutes on 2 cores
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

import torch

import prunekit
from prunekit.data import load_dataset
from prunekit.models import create_model
from prunekit.train import evaluate

from common import X, after_pruning, machine, shipped_resnet20, write



def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def cli_compress_seconds(tmp: Path) -> float:
    """The whole `prunekit compress` command for ResNet-56 (process start included), no evaluation."""
    cmd = [sys.executable, "-m", "prunekit", "compress", "--model", "resnet56", "--dataset", "fmnist",
           "--budget", "flops=0.5", "--out", str(tmp / "r56"), "--no-eval", "--json"]
    _, seconds = timed(lambda: subprocess.run(cmd, check=True, capture_output=True))
    return seconds


def resnet56_planning(train) -> dict:
    torch.manual_seed(0)
    model = create_model("resnet56", in_channels=1).eval()
    out = {}
    for method in ("l1", "l1+global", "itpruner"):
        prunekit.compress(model, X, 0.5, method=method, data=train)  # warm-up
        s = prunekit.compress(model, X, 0.5, method=method, data=train).summary
        out[method] = {k: round(v, 3) for k, v in s["seconds"].items()}
    return out


def accuracy_after_pruning(train, test) -> list[dict]:
    dense = shipped_resnet20()
    rows = [{"method": "dense", "flops": 1.0, "accuracy": evaluate(dense, test)}]
    settings = [("l1", {}), ("l1+global", {"cost_power": 0.0}), ("l1+global", {"cost_power": 0.5}),
                ("l1+global", {"cost_power": 1.0}), ("next_layer+global", {}), ("bn_scale", {}), ("taylor", {}),
                ("itpruner", {}), ("itpruner", {"beta": "resnet20"}), ("chip", {}), ("random", {})]
    return rows + [after_pruning(dense, train, test, budget, method, options)
                   for budget in (0.5, 0.2) for method, options in settings]


def markdown(res: dict) -> str:
    lines = [f"# CPU quick benchmark ({res['machine']})", "", f"Command: `{res['command']}`", "",
             "| measurement | seconds |", "|---|---|",
             f"| `prunekit compress` ResNet-56 / Fashion-MNIST, flops=0.5, whole command, no evaluation | "
             f"{res['cli_compress_seconds']:.1f} |"]
    for m, s in res["resnet56_planning"].items():
        lines.append(f"| ResNet-56 `compress(method={m!r})`: total (allocation) | {s['total']:.2f} ({s['allocation']:.2f}) |")
    lines += ["", "Accuracy right after pruning (BatchNorm re-estimated on 20 x 128 training images, no fine-tuning), "
              "shipped ResNet-20, Fashion-MNIST test set:", "", "| method | options | MACs kept | accuracy % | widths |",
              "|---|---|---|---|---|"]
    for r in res["accuracy_after_pruning"]:
        lines.append(f"| {r['method']} | {r.get('options', '')} | {r['flops']} | {r['accuracy']:.2f} | "
                     f"{list(r['widths'].values()) if 'widths' in r else ''} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="bench/results/cpu_quick")
    args = p.parse_args()
    torch.set_num_threads(2)
    train, test = load_dataset("fmnist", split="train"), load_dataset("fmnist", split="test")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    res = {"machine": machine(),
           "command": "python bench/cpu_quick.py --out " + args.out}
    res["cli_compress_seconds"] = cli_compress_seconds(out.parent)
    res["resnet56_planning"] = resnet56_planning(train)
    res["accuracy_after_pruning"] = accuracy_after_pruning(train, test)
    write(out, res, markdown)


if __name__ == "__main__":
    main()
