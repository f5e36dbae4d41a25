"""Dense training benchmark: BENCHMARKS.md's recipe through `prunekit train`, timed as a whole command.

    python bench/train_dense.py --model resnet56 --out bench/results/train_resnet56_h100   # on the GPU machine
    python bench/train_dense.py --model resnet20 --epochs 1 --max-steps 20 --out /tmp/smoke  # CPU smoke run

Goal (issue 3): ResNet-56 on Fashion-MNIST >= 94.0% in <= 150 s on one H100 (reference: 94.1% in 144 s).
"""
from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch


def device_name() -> str:
    return torch.cuda.get_device_name() if torch.cuda.is_available() else f"CPU ({platform.processor() or 'unknown'})"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="resnet56")
    p.add_argument("--dataset", default="fmnist")
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--max-steps", type=int)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, help="results prefix: writes OUT.json, OUT.md and the run in OUT_run/")
    args = p.parse_args()
    run_dir = Path(f"{args.out}_run")
    cmd = [sys.executable, "-m", "prunekit", "train", "--model", args.model, "--dataset", args.dataset,
           "--epochs", str(args.epochs), "--lr", "0.2", "--batch-size", "256", "--seed", str(args.seed),
           "--out", str(run_dir), "--json"]
    if args.max_steps:
        cmd += ["--max-steps", str(args.max_steps)]
    t0 = time.perf_counter()
    done = subprocess.run(cmd, check=True, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    history = json.loads(done.stdout)["history"]
    res = {"command": " ".join(["prunekit", *cmd[3:]]), "device": device_name(), "torch": torch.__version__,
           "wall_seconds": wall, "train_seconds": sum(h["seconds"] for h in history),
           "final_test_accuracy": history[-1].get("eval_acc"), "images_per_s": history[-1]["images_per_s"],
           "epochs": history}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(f"{args.out}.json").write_text(json.dumps(res, indent=1))
    Path(f"{args.out}.md").write_text(
        f"# Dense training: {args.model} on {args.dataset}\n\n`{res['command']}` on {res['device']} (torch {res['torch']})\n\n"
        f"| final test accuracy | whole command | training epochs only | images/s (last epoch) |\n|---|---|---|---|\n"
        f"| {res['final_test_accuracy']:.2f}% | {wall:.0f} s | {res['train_seconds']:.0f} s | {res['images_per_s']:.0f} |\n")
    print(Path(f"{args.out}.md").read_text())


if __name__ == "__main__":
    main()
