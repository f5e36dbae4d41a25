"""Allocators and criteria, one-shot: accuracy right after pruning, BatchNorm re-estimated, no fine-tuning.

    python bench/allocators.py --out bench/results/allocators                       # shipped ResNet-20
    python bench/allocators.py --out bench/results/allocators --model resnet56 \\
        --checkpoint /root/runs/r56/model.safetensors                               # adds the ResNet-56 rows

Each plan is made once (seed 0) and measured after BatchNorm re-estimation on 20 x 128 training
images with two calibration seeds (the mean is reported), on the full Fashion-MNIST test set.
Torch-Pruning's pruners come from bench/suite.py (stepped until MACs <= target). Rows are written
to the JSON as they finish and recorded rows are skipped, so the same command continues a run.
Parts: ``main`` (the issue-12 table), ``criteria`` (why l1/taylor trailed), ``beta`` (itpruner's
temperature for the concave solver), ``global`` (normalizations of the global threshold).
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import time
from pathlib import Path

import torch

import prunekit
from prunekit.data import load_dataset
from prunekit.models import create_model
from prunekit.train import evaluate, recalibrate_bn

from common import CKPT, X, machine

import suite  # Torch-Pruning's pruners, stepped as the suite steps them

MAIN = [("itpruner", {}), ("itpruner", {"solver": "official"}), ("chip", {}), ("l1", {}), ("l1+global", {}),
        ("tp:l1-layer", {}), ("tp:group-taylor-global", {})]
CRITERIA = [("l1", {"scope": "filters"}), ("taylor+uniform", {"accumulate": "gradient"}), ("taylor+uniform", {}),
            ("taylor", {"accumulate": "gradient"}), ("taylor", {}), ("bn_scale+uniform", {}), ("chip+uniform", {})]
GLOBAL = [("taylor", {"normalize": "none"}), ("l1+global", {"cost_power": 0.5})]
BETA = (0.0, 1.0, 4.0, 8.0)  # x number of layers; the default (2) is in MAIN
# The main part's prunekit rows again with compress's layer reconstruction (512 training images; the
# other parts measure criteria and allocators alone, as Torch-Pruning's models are treated).
RECONSTRUCT = [(m, o) for m, o in MAIN if not m.startswith("tp:")] + [("l2", {}), ("bn_scale", {}), ("fisher", {})]
PARTS = {"main": MAIN, "criteria": CRITERIA, "global": GLOBAL, "reconstruct": RECONSTRUCT}


def key(model: str, part: str, method: str, options: dict, target: float) -> str:
    return json.dumps([model, part, method, options, target], sort_keys=True)


def measure(dense, train, test, method: str, options: dict, target: float, seeds, reconstruct: int = 0) -> dict:
    t0 = time.perf_counter()
    if method.startswith("tp:"):
        model, extra = suite.prune_tp(dense, X, method, target, 0, train)
        widths = [m.out_channels for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
        signals = {}
    else:
        r = prunekit.compress(dense, X, {"flops": target}, method=method, data=train, options=options,
                              reconstruct=reconstruct)
        model, widths, signals = r.model, [u["kept"] for u in r.summary["units"]], r.summary["signals"]
        extra = {k: signals[k] for k in ("beta", "solver") if k in signals}
    plan_seconds = time.perf_counter() - t0
    accuracies = []
    for seed in seeds:
        m = copy.deepcopy(model)
        recalibrate_bn(m, train, batches=20, seed=seed)
        accuracies.append(evaluate(m, test))
    macs = prunekit.count(model, X)[0] / prunekit.count(dense, X)[0]
    return {"accuracy": sum(accuracies) / len(accuracies), "accuracies": accuracies, "macs": macs, "widths": widths,
            "importance": signals.get("importance"), "plan_seconds": round(plan_seconds, 1), **extra}


def rows(part: str, layers: int) -> list[tuple[str, dict]]:
    if part == "beta":
        return [("itpruner", {"beta": m * layers}) for m in BETA]
    return PARTS[part]


NOTES = """## Reading it

Widths are listed in Unit order; on ResNet-20: the stage-3, stage-2 and stage-1 (stem) residual
streams, then the nine blocks' inner (conv1) widths. Every prunekit method here uses the criteria as
fixed in issue 12: `l1` scores a channel by every layer of its group (producer filters, consumer input
slices, BatchNorm scales; `scope="filters"` is the old producer-only score) and `taylor` sums |w g| per
calibration batch (`accumulate="gradient"` is the old summed-gradient score). The `criteria` part
compares old and new on the same widths (uniform) and with the global threshold.

Why `l1` trailed Torch-Pruning's L1 (issue table: 56.71 vs 66.23 at 50%): it scored channels by their
producer filters only. Behind a BatchNorm a filter's scale does not change what the model computes,
so its norm ranks channels almost arbitrarily; the consumers' input weights say how much of the
channel the next layers read. Same uniform widths, one calibration seed, measured while developing
(/tmp script, same protocol): producers only 56.82, producers + BatchNorm 63.36, producers +
consumers 77.16, all three (the new default, as Torch-Pruning reduces a group) 77.98, consumers only
81.00, BatchNorm |gamma| only 69.76; Torch-Pruning's own L1 pruner 65.95.

Why `taylor` trailed `l1+global`: it summed the gradients over the calibration batches before taking
|w g|; at a trained minimum the summed gradient is mostly cancellation. Uniform widths: 60.90 (old)
vs 77.06 (per batch). With the global threshold (per-Unit mean normalization) Taylor stays poor
(old 50.47, per batch 35.29): the normalization, not the criterion, is what fails there.

Which default: no allocation wins every measure (table above). The concave itpruner default is ahead
of both uniform and global `l1` only on ResNet-20 (50% one-shot, 20% with the refit) and behind uniform
`l1` after one epoch on both models, so the bar "itpruner beats `l1` and `l1+global` at 50% on both
models and after one epoch at 20%" is not met. Uniform `l1`, which wins most measures (both models at
50% with the refit, ResNet-56 after one epoch and at 20% one-shot), stays compress's default method;
itpruner keeps the concave solver as its own default because it is the allocation the importance
steers (`solver="official"` is often a little ahead at 50% but is the dense widths projected onto the
budget and collapses at ResNet-56 20%: 60.55 with the refit vs 87.20). `method="auto"` measures the
choice per model and budget instead of fixing one.

The `reconstruct` part repeats the prunekit rows with compress's layer reconstruction (every layer
whose inputs were pruned refit by least squares to the dense outputs on 512 training images, then
BatchNorm re-estimated): it moves every method by 10-70 points at these targets and shrinks the
spread between allocations to a few points, so at 20% MACs one-shot accuracy becomes a usable
signal (near chance without it). Torch-Pruning's rows are not refit (prunekit's refit needs its
plan's keep-sets); its numbers are the main part's.
"""


def goals(runs: list[dict], part: str = "main") -> list[str]:
    """The issue's bars, read off the main table (a bar with a row missing is not judged); with
    ``part="reconstruct"`` the prunekit rows are the reconstructed ones, Torch-Pruning's the main part's."""
    main = {(r["method"], json.dumps(r["options"]), r["target"]): r["accuracy"] for r in runs
            if r["part"] == part or (r["part"] == "main" and r["method"].startswith("tp:"))}
    lines = []
    for t in sorted({k[2] for k in main}, reverse=True):
        new = main.get(("itpruner", "{}", t))
        for other in ("l1", "l1+global"):
            ref = main.get((other, "{}", t))
            if new is not None and ref is not None:
                lines.append(f"- {t:.0%}: itpruner (concave default) {new:.2f} vs {other} {ref:.2f}: "
                             f"{'ahead' if new > ref else 'NOT ahead'}")
        ours = {k[0] + (f" {k[1]}" if k[1] != "{}" else ""): a for k, a in main.items() if k[2] == t and not k[0].startswith("tp:")}
        theirs = {k[0]: a for k, a in main.items() if k[2] == t and k[0].startswith("tp:")}
        if ours and len(theirs) == 2:
            bo, bt = max(ours, key=ours.get), max(theirs, key=theirs.get)
            lines.append(f"- {t:.0%}: best prunekit {bo} {ours[bo]:.2f} vs best Torch-Pruning {bt} {theirs[bt]:.2f}: "
                         f"{'ahead' if ours[bo] > theirs[bt] else 'NOT ahead'}")
    return lines


CONTENDERS = ("itpruner", "l1", "l1+global")
SUITE = Path(__file__).resolve().parent / "results" / "cpu_suite.json"


def verdict(res: dict, suite: Path = SUITE) -> list[str]:
    """Which allocation won each measure: the itpruner default against uniform and global l1, one-shot
    (this file's parts) and after one epoch of distillation (the CPU suite's rows, not refit)."""
    cells: dict[tuple, dict[str, float]] = {}
    for r in res["runs"].values():
        if r["method"] in CONTENDERS and r["options"] == {} and r["part"] in ("main", "reconstruct"):
            label = "one-shot" + (", refit" if r["part"] == "reconstruct" else "")
            cells.setdefault((r["model"], r["target"], label), {})[r["method"]] = r["accuracy"]
    tuned: dict[tuple, list[float]] = {}
    for r in (json.loads(suite.read_text())["runs"] if suite.exists() else []):
        if r["phase"] == "finetune" and r["method"] in CONTENDERS and "accuracy_final" in r:
            tuned.setdefault((r["model"], r["target"], r["method"]), []).append(r["accuracy_final"])
    for (model, target, method), accs in tuned.items():
        label = f"one epoch ({len(accs)} seed{'s' if len(accs) > 1 else ''})"
        cells.setdefault((model, target, label), {})[method] = sum(accs) / len(accs)
    rows = [(k, v) for k, v in sorted(cells.items(), key=lambda kv: (kv[0][0], -kv[0][1], kv[0][2].replace("one-shot", "0")))
            if len(v) == len(CONTENDERS)]
    wins = {m: sum(max(v, key=v.get) == m for _, v in rows) for m in CONTENDERS}
    return (["## Which default won", "",
             "The itpruner default against uniform `l1` (compress's default method) and `l1+global`, on every "
             "measure recorded here and in `bench/results/cpu_suite.json` (one epoch of distillation, plans "
             "not refit). Wins: " + ", ".join(f"{m} {n}" for m, n in wins.items()) + ".", "",
             "| model | MACs | measure | " + " | ".join(CONTENDERS) + " | best |", "|---|---|---|" + "---|" * len(CONTENDERS) + "---|"]
            + [f"| {m} | {t:.0%} | {label} | " + " | ".join(f"{v[c]:.2f}" for c in CONTENDERS) + f" | {max(v, key=v.get)} |"
               for (m, t, label), v in rows] + [""])


def markdown(res: dict) -> str:
    out = [f"# Allocators and criteria, one-shot ({res['machine']})", "",
           "Commands: " + "; ".join(f"`{c}`" for c in res["commands"]), "",
           f"Shared 2-core machine, load average (1/5/15 min) when each command started: {'; '.join(res['load'])}. Accuracy (%) right after pruning, BatchNorm re-estimated on "
           "20 x 128 training images, mean of two calibration seeds, full Fashion-MNIST test set; no fine-tuning. "
           "Plans are made once (seed 0). TP = Torch-Pruning, stepped until MACs <= target.", ""]
    for model in sorted({r["model"] for r in res["runs"].values()}):
        runs = [r for r in res["runs"].values() if r["model"] == model]
        out += [f"## {model} (dense {res['dense'].get(model, float('nan')):.2f}%)", ""] + goals(runs) + [""]
        if any(r["part"] == "reconstruct" for r in runs):
            out += ["With layer reconstruction (prunekit rows of the `reconstruct` part; Torch-Pruning's as above):", ""]
            out += goals(runs, "reconstruct") + [""]
        for part in ("main", "reconstruct", "criteria", "global", "beta"):
            sel = [r for r in runs if r["part"] == part]
            if not sel:
                continue
            targets = sorted({r["target"] for r in sel}, reverse=True)
            out += [f"### {part}", "", "| method | options | " + " | ".join(f"{t:.0%} MACs" for t in targets) +
                    " | widths (first target) |", "|---|---|" + "---|" * len(targets) + "---|"]
            seen = []
            for r in sel:
                if (r["method"], json.dumps(r["options"])) not in seen:
                    seen.append((r["method"], json.dumps(r["options"])))
            for method, opts in seen:
                cells, widths = [], ""
                for t in targets:
                    hit = [r for r in sel if r["method"] == method and json.dumps(r["options"]) == opts and r["target"] == t]
                    cells.append(f"{hit[0]['accuracy']:.2f} ({', '.join(f'{a:.2f}' for a in hit[0]['accuracies'])})"
                                 if hit else "")
                    if hit and not widths:
                        widths = str(hit[0]["widths"])
                out.append(f"| {method} | {opts if opts != '{}' else ''} | " + " | ".join(cells) + f" | {widths} |")
            out.append("")
    return "\n".join(out + verdict(res) + [NOTES])


def save(res: dict, out: Path) -> None:
    """Merge into the file as it is now (another part may be running beside this one), atomically."""
    path = out.with_suffix(".json")
    if path.exists():
        disk = json.loads(path.read_text())
        res["runs"] = {**disk["runs"], **res["runs"]}
        res["dense"] = {**disk["dense"], **res["dense"]}
        res["commands"] = list(dict.fromkeys(disk.get("commands", []) + res["commands"]))
        res["load"] = list(dict.fromkeys(disk.get("load", []) + res["load"]))
    path.parent.mkdir(parents=True, exist_ok=True)
    for target, text in ((path, json.dumps(res, indent=1)), (out.with_suffix(".md"), markdown(res))):
        tmp = target.with_suffix(target.suffix + ".tmp")
        tmp.write_text(text)
        os.replace(tmp, target)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="bench/results/allocators")
    p.add_argument("--model", default="resnet20")
    p.add_argument("--checkpoint", default=str(CKPT))
    p.add_argument("--targets", default="0.5,0.2")
    p.add_argument("--parts", default="main,criteria,beta,global")
    p.add_argument("--seeds", default="0,1", help="BatchNorm calibration seeds")
    args = p.parse_args()
    torch.set_num_threads(2)
    targets = [float(t) for t in args.targets.split(",")]
    seeds = [int(s) for s in args.seeds.split(",")]
    out = Path(args.out)
    path = out.with_suffix(".json")
    res = json.loads(path.read_text()) if path.exists() else {"runs": {}, "dense": {}}
    command = "python " + " ".join(sys.argv)
    res["commands"] = [c for c in res.get("commands", []) if c != command] + [command]
    res.setdefault("load", []).append(" ".join(f"{x:.1f}" for x in os.getloadavg()))
    res["machine"] = machine()
    train, test = load_dataset("fmnist", split="train"), load_dataset("fmnist", split="test")
    dense = create_model(args.model, in_channels=1, num_classes=10)
    prunekit.io.load_weights(dense, args.checkpoint)
    dense.eval()
    if args.model not in res["dense"]:
        res["dense"][args.model] = evaluate(dense, test)
    layers = None
    for part in args.parts.split(","):
        for target in targets if part in ("main", "reconstruct") else targets[:1]:
            if layers is None and part == "beta":
                layers = sum(prunekit.compress(dense, X, target, method="itpruner", data=train, reconstruct=0)
                             .summary["signals"]["layers"].values())
            for method, options in rows(part, layers or 0):
                k = key(args.model, part, method, options, target)
                if k in res["runs"]:
                    continue
                r = measure(dense, train, test, method, options, target, seeds, 512 if part == "reconstruct" else 0)
                res["runs"][k] = {"model": args.model, "part": part, "method": method, "options": options,
                                  "target": target, **r}
                print(f"{args.model} {part} {target} {method} {options}: {r['accuracy']:.2f}", flush=True)
                save(res, out)


if __name__ == "__main__":
    main()
