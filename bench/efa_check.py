"""Check the effective-filter estimate against reality (issue 16): one-shot accuracy of ``efa`` at the
estimated maximum redundancy and at 1.5x that (``exceed=1``), BatchNorm re-estimated, full test set;
``fisher`` (one-shot Group Fisher, global) and ``l1`` (uniform) at the same budgets for reference.

    python bench/efa_check.py                        # shipped ResNet-20 on Fashion-MNIST
    python bench/efa_check.py --model resnet56 --checkpoint checkpoints/fmnist-resnet56/model.safetensors \
        --out bench/results/efa_check_resnet56.md
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

from prunekit import compress, io  # noqa: E402
from prunekit.data import dataset_info, load_dataset  # noqa: E402
from prunekit.models import create_model  # noqa: E402
from prunekit.train import evaluate  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="resnet20")
    p.add_argument("--checkpoint", default=str(ROOT / "checkpoints/fmnist-resnet20/model.safetensors"))
    p.add_argument("--dataset", default="fmnist")
    p.add_argument("--samples", type=int, default=1024, help="calibration images (batches of 128), as prunekit analyze")
    p.add_argument("--energy", type=float, default=0.99)
    p.add_argument("--factor", type=float, default=1.5, help="the second budget removes this times the estimate")
    p.add_argument("--references", default="fisher,l1", help="other methods at the same budgets ('' for none)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=str(ROOT / "bench/results/efa_check.md"))
    args = p.parse_args(argv)
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))

    t_start = time.perf_counter()
    info = dataset_info(args.dataset)
    model = create_model(args.model, in_channels=info["in_channels"], num_classes=info["num_classes"]).eval()
    io.load_weights(model, args.checkpoint)
    x = torch.zeros(1, info["in_channels"], info["image_size"], info["image_size"])
    train, test = load_dataset(args.dataset, split="train"), load_dataset(args.dataset, split="test")
    common = dict(data=train, seed=args.seed, calibration_batches=max(1, args.samples // 128), calibration_batch_size=128)
    dense_acc = evaluate(model, test)

    # the estimate: efa at a budget it always meets records the analysis (same calibration draw as below)
    probe = compress(model, x, {"flops": 1.0}, method="efa", options={"energy": args.energy}, bn_batches=0, **common)
    est = probe.summary["signals"]["efa"]["max_redundancy"]
    removable = probe.summary["signals"]["removable"]
    rows = []
    for label, removed in (("estimate", est["macs"]), (f"{args.factor}x estimate", args.factor * est["macs"])):
        budget = {"flops": max(1.0 - removed, 0.01) * (1 + 1e-9)}
        runs = [("efa", {"energy": args.energy, **({"exceed": 1} if removed > est["macs"] else {})})]
        runs += [(m, {}) for m in filter(None, args.references.split(","))]
        for method, options in runs:
            t0 = time.perf_counter()
            r = compress(model, x, budget, method=method, options=options, **common)
            acc = evaluate(r.model, test)
            over = sum(max(0, (u["width"] - u["kept"]) - removable[u["name"]]) for u in r.summary["units"])
            rows.append({"budget": label, "macs_removed": 1 - r.summary["macs"]["pruned"] / r.summary["macs"]["dense"],
                         "method": method, "options": options, "accuracy": acc,
                         "channels_beyond_R": over, "seconds": time.perf_counter() - t0})
            print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    total = time.perf_counter() - t_start

    cmd = "python bench/efa_check.py " + " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))
    lines = [f"# efa check: {args.model} on {args.dataset}", "", f"Command: `{cmd.strip()}`", "",
             f"Dense test accuracy {dense_acc:.2f}%. Effective-filter analysis (per-sample mask gradients of "
             f"{probe.summary['signals']['efa']['samples']} training images, energy {args.energy}): at most "
             f"**{100 * est['macs']:.1f}% of MACs** ({100 * est['params']:.1f}% of params, "
             f"{100 * est['channels']:.1f}% of channels) removable.", "",
             "One-shot (no fine-tuning), BatchNorm re-estimated on 20 training batches, full test set. "
             "`beyond R`: channels removed past the estimate, summed over Units.", "",
             "| budget | MACs removed | method | top-1 % | beyond R | seconds |", "|---|---:|---|---:|---:|---:|"]
    lines += [f"| {r['budget']} | {100 * r['macs_removed']:.1f}% | {r['method']}"
              f"{' (exceed=1)' if r['options'].get('exceed') else ''} | {r['accuracy']:.2f} | {r['channels_beyond_R']} "
              f"| {r['seconds']:.0f} |" for r in rows]
    lines += ["", f"Total {total:.0f} s on the CPU ({os.environ.get('OMP_NUM_THREADS', '?')} thread(s))."]
    Path(args.out).write_text("\n".join(lines) + "\n")
    Path(args.out).with_suffix(".json").write_text(json.dumps(
        {"command": cmd.strip(), "dense_accuracy": dense_acc, "estimate": est, "removable": removable, "rows": rows,
         "seconds": total}, indent=1))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
