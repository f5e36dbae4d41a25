"""What the inference form (prunekit.fold) is worth: each plan timed as its modules are and folded.

    python bench/fold.py        # shipped ResNet-56 -> bench/results/fold.{md,json}

Plans at 50% and 20% of the MACs: l1+global with widths only (round_to 8), l1+global with residual
branches removable (drop_blocks; the count of removed branches chosen on held-out Fashion-MNIST
images, as compress does with data), and Torch-Pruning's group-l2-global stepped to the same MACs
(bench/suite.py). Each model and the dense
one are timed in alternating blocks (as prunekit.latency.pair_ms), once as they are and once in
their inference form; a cell is the speed-up over the dense model in the same form, and how much
faster the folded form of the plan itself runs.
"""
from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # spinning OpenMP threads distort timings on shared cores

import argparse  # noqa: E402
import copy  # noqa: E402
import json  # noqa: E402
import shlex  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

import prunekit  # noqa: E402
from prunekit.latency.measure import PAIRS_PER_REPEAT, time_callable  # noqa: E402
from prunekit.models import create_model  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))


def pairs(models: list, batch: int, shape, threads: int, seconds: float, repeats: int) -> np.ndarray:
    """Median over rounds of each model's block time relative to the first model's (alternating order)."""
    x = torch.randn(batch, *shape)

    def call(m):
        def run():
            with torch.inference_mode():
                return m(x)
        return run

    runs = [call(m) for m in models]
    rows = []
    for i in range(repeats * PAIRS_PER_REPEAT):
        order = range(len(runs)) if i % 2 == 0 else reversed(range(len(runs)))
        t = {k: time_callable(runs[k], threads, seconds / PAIRS_PER_REPEAT) for k in order}
        rows.append([t[k] for k in range(len(runs))])
    rows = np.array(rows)
    return np.median(rows[:, :1] / rows, axis=0), np.median(rows, axis=0)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="resnet56")
    p.add_argument("--checkpoint", default="checkpoints/fmnist-resnet56/model.safetensors")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batches", default="64,1")
    p.add_argument("--seconds", type=float, default=1.0, help="per model per repeat")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--out", default="bench/results/fold")
    args = p.parse_args(argv)
    torch.manual_seed(0)
    model = create_model(args.model, in_channels=1)
    prunekit.io.load_weights(model, ROOT / args.checkpoint)
    model.eval()
    x = torch.zeros(1, 1, 28, 28)
    dense_macs = prunekit.count(model, x)[0]
    from prunekit.data import load_dataset
    data = load_dataset("fmnist", split="train")
    plans = {}
    for f in (0.5, 0.2):
        for label, kw in (("l1+global, widths only", {}), ("l1+global, drop_blocks", {"drop_blocks": True})):
            r = prunekit.compress(model, x, {"flops": f}, method="l1+global", seed=0, bn_batches=0, reconstruct=0,
                                  round_to=8, data=data, calibration_batches=2, **kw)
            plans[f"{label}, {f:.0%} MACs"] = r.model.eval()
        from suite import prune_tp
        plans[f"tp:group-l2-global, {f:.0%} MACs"] = prune_tp(copy.deepcopy(model), x, "tp:group-l2-global", f, 0, None)[0].eval()
    t0 = time.perf_counter()
    out = {"command": "python bench/fold.py " + shlex.join(argv if argv is not None else sys.argv[1:]),
           "threads": args.threads, "torch": torch.__version__, "load_start": [round(v, 2) for v in os.getloadavg()],
           "rows": []}
    for batch in (int(b) for b in args.batches.split(",")):
        for name, plan in plans.items():
            removed = sum(isinstance(m, prunekit.drop.ConstantOutput) for m in plan.modules())
            models = [model, plan, prunekit.inference_form(model), prunekit.inference_form(plan)]
            speed, ms = pairs(models, batch, x.shape[1:], args.threads, args.seconds, args.repeats)
            macs = dense_macs / prunekit.count(plan, x)[0]
            row = {"batch": batch, "plan": name, "removed_branches": removed, "macs_reduction": macs,
                   "dense_ms": ms[0], "plan_ms": ms[1], "dense_folded_ms": ms[2], "plan_folded_ms": ms[3],
                   "speedup": speed[1], "speedup_folded": speed[3] / speed[2],
                   "plan_folded_over_plan": ms[1] / ms[3], "dense_folded_over_dense": ms[0] / ms[2]}
            out["rows"].append(row)
            print(f"b{batch} {name}: {macs:.2f}x MACs, speed-up {row['speedup']:.2f}x as is, "
                  f"{row['speedup_folded']:.2f}x folded (plan folded {row['plan_folded_over_plan']:.2f}x faster)",
                  flush=True)
    out["seconds"] = time.perf_counter() - t0
    out["load_end"] = [round(v, 2) for v in os.getloadavg()]
    write(out, ROOT / args.out)
    return 0


def write(out: dict, stem: Path) -> None:
    stem.with_suffix(".json").write_text(json.dumps(out, indent=1))
    lines = ["# The inference form: removed branches and BatchNorm folded (prunekit.fold)", "",
             f"Command: `{out['command']}`", "",
             f"{out['threads']} threads, torch {out['torch']}; load average at start {out['load_start'][0]}, at end "
             f"{out['load_end'][0]}. Every model of a row and the dense one timed in alternating blocks (medians of "
             "the per-round ratios). Speed-up over the dense model in the same form; in brackets, / MACs reduction.",
             "", "| batch | plan | branches removed | MACs reduction | speed-up as is | speed-up folded | plan: folded vs as is | dense: folded vs as is |",
             "|---|---|---|---|---|---|---|---|"]
    for r in out["rows"]:
        m = r["macs_reduction"]
        lines.append(f"| {r['batch']} | {r['plan']} | {r['removed_branches']} | {m:.2f}x | {r['speedup']:.2f}x "
                     f"({r['speedup'] / m:.2f}) | {r['speedup_folded']:.2f}x ({r['speedup_folded'] / m:.2f}) | "
                     f"{r['plan_folded_over_plan']:.2f}x | {r['dense_folded_over_dense']:.2f}x |")
    stem.with_suffix(".md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    raise SystemExit(main())
