"""Speed-up of MACs-budget plans in three deployment modes (issue 17): does folding BatchNorm into
the convs (TorchScript freeze + optimize_for_inference, onnxruntime) raise the speed-up / MACs ratio?

    OMP_WAIT_POLICY=PASSIVE python bench/deploy_modes.py   # -> bench/results/deploy_modes.{json,md}

Shipped ResNet-56, `l1` plans at 50% and 20% MACs with round_to 8 and 16; each model timed eager
(inference_mode), traced + frozen + optimize_for_inference, and exported to ONNX and run by
onnxruntime's CPU provider; torch.utils.benchmark median, 2 threads, batches 64 and 1. Each plan's
speed-up is against the dense model in the same mode, measured in the same run.
"""
from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import copy  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import warnings  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402
from safetensors.torch import load_file  # noqa: E402
from torch.utils import benchmark  # noqa: E402

import prunekit  # noqa: E402
from prunekit.errors import BudgetError  # noqa: E402
from prunekit.io import export_onnx  # noqa: E402
from prunekit.latency.bench import onnx_ms  # noqa: E402
from prunekit.models import create_model  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
MODES = ("eager", "torchscript_ofi", "onnxruntime")
READING = """
## Reading it (first run, 2026-12-01, idle 2-core machine)

Folding BatchNorm into the convs does not raise the speed-up / MACs ratio at batch 64: the folded
runtimes make the dense model 2-2.6x faster than eager, more than the pruned ones, so the ratio
falls (20% MACs: 0.73 eager, 0.43 folded). At batch 1 onnxruntime is the deployment that matters
(the dense model runs in 1.6 ms against 12.4 ms eager, whose per-op overhead hides most of the
pruning) and there the plans keep 0.67-0.90 of their MACs reduction. Eager batch-64 ratios move
between runs on this machine (this run 1.20 / 0.73 for round_to 8 at 50% / 20%;
bench/results/latency.md measured 0.80 / 0.63 for the same plans), so single ratios are not
a verdict; the latency budget's closed loop measures instead of trusting them.
"""


def timed(fn, threads: int, run_time: float) -> float:
    fn()
    return benchmark.Timer("fn()", globals={"fn": fn}, num_threads=threads).blocked_autorange(
        min_run_time=run_time).median * 1e3


def modes(model: torch.nn.Module, batch: int, threads: int, run_time: float) -> dict[str, float]:
    """Milliseconds per forward in each mode."""
    x = torch.randn(batch, 1, 28, 28)
    eager = copy.deepcopy(model).eval()
    with torch.inference_mode():
        out = {"eager": timed(lambda: eager(x), threads, run_time)}
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        script = torch.jit.optimize_for_inference(torch.jit.freeze(torch.jit.trace(copy.deepcopy(model).eval(), x)))
        out["torchscript_ofi"] = timed(lambda: script(x), threads, run_time)
    path = export_onnx(copy.deepcopy(model).eval(), x[:1], Path(tempfile.mkdtemp()) / "model.onnx")
    out["onnxruntime"] = onnx_ms(path, (1, 28, 28), batch, threads, run_time)
    return out


def markdown(res: dict) -> str:
    lines = ["# Deployment modes: speed-up of MACs-budget plans (issue 17)", "",
             f"Command: `{res['command']}`", "",
             f"resnet56 ({res['checkpoint']}), {res['threads']} threads, torch {torch.__version__}; load average at "
             f"start {res['load'][0]:.2f}, at end {res['load_end'][0]:.2f}. Cell: speed-up over the dense model in the "
             "same mode (speed-up / MACs reduction).", ""]
    for batch in res["batches"]:
        dense = res["dense"][str(batch)]
        lines += [f"## batch {batch}", "", "dense ms: " + ", ".join(f"{m} {dense[m]:.2f}" for m in MODES), "",
                  "| plan | MACs reduction | " + " | ".join(MODES) + " |", "|---|---|" + "---|" * len(MODES)]
        for name, row in res["plans"].items():
            cells = [f"{dense[m] / row[str(batch)][m]:.2f}x ({dense[m] / row[str(batch)][m] / row['reduction']:.2f})"
                     for m in MODES]
            lines.append(f"| {name} | {row['reduction']:.2f}x | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines + res["notes"]) + "\n" + READING


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", default="checkpoints/fmnist-resnet56/model.safetensors")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seconds", type=float, default=1.0, help="timing window per measurement")
    p.add_argument("--out", default=str(ROOT / "bench/results/deploy_modes"))
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    dense = create_model("resnet56", num_classes=10, in_channels=1)
    dense.load_state_dict(load_file(args.checkpoint))
    dense.eval()
    x = torch.randn(1, 1, 28, 28)
    res = {"command": "python " + " ".join(sys.argv), "checkpoint": args.checkpoint, "threads": args.threads,
           "load": os.getloadavg(), "batches": [64, 1], "dense": {}, "plans": {}, "notes": []}
    plans = {}
    for flops in (0.5, 0.2):
        for r in (8, 16):
            try:
                plans[f"l1 {flops:.0%} MACs, round_to {r}"] = prunekit.compress(
                    dense, x, flops, method="l1", round_to=r, bn_batches=0).model
            except BudgetError as e:
                res["notes"].append(f"- l1 {flops:.0%} MACs, round_to {r}: refused: {e}")
    dense_macs = prunekit.count(dense, x)[0]
    for name, model in plans.items():
        res["plans"][name] = {"reduction": dense_macs / prunekit.count(model, x)[0]}
    for batch in res["batches"]:
        res["dense"][str(batch)] = modes(dense, batch, args.threads, args.seconds)
        for name, model in plans.items():
            res["plans"][name][str(batch)] = modes(model, batch, args.threads, args.seconds)
            print(batch, name, res["plans"][name][str(batch)], flush=True)
    res["load_end"] = os.getloadavg()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(res, indent=1))
    out.with_suffix(".md").write_text(markdown(res))


if __name__ == "__main__":
    main()
