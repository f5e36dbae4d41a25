"""Latency budgets on the 2-core CPU (issue 17): does a speedup budget deliver the measured speed-up?

    python bench/latency.py                        # shipped ResNet-56 -> bench/results/latency.{md,json}
    python bench/latency.py --checkpoint checkpoints/fmnist-resnet20/model.safetensors --model resnet20 --quick

1. ``speedup`` budgets (2, 4) at batch 64 and at batch 1: predicted and measured speed-up vs target.
2. At equal MACs: the latency-aware plan against a MACs-only plan of the same method at exactly the
   latency plan's MACs (timed in pairs, prunekit.latency.pair_ms), and (with --drop-blocks) one with widths only.
3. MACs budgets with hardware-friendly widths (round_to 8/16 + snap): measured speed-up at batch 64
   divided by the MACs reduction, next to Torch-Pruning's pruners at the same budgets (--tp-methods).
4. The latency predictor's error on random width settings (pruned copies timed whole).

Every latency is the median of ``torch.utils.benchmark``'s ``blocked_autorange`` at ``--threads``; speed-ups and
ratios are medians over pairs of short alternating blocks (``prunekit.latency.pair_ms``).
"""
from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # spinning OpenMP threads distort timings on shared cores

import argparse  # noqa: E402
import copy  # noqa: E402
import shlex  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

import prunekit  # noqa: E402
from prunekit.graph import UnitGraph  # noqa: E402
from prunekit.latency import LatencyConfig, model_ms, pair_ms, random_widths  # noqa: E402
from prunekit.models import create_model  # noqa: E402
from prunekit.pipeline import prepare  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="resnet56")
    p.add_argument("--checkpoint", default="checkpoints/fmnist-resnet56/model.safetensors")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--runtime", default="torch", choices=("torch", "onnxruntime"),
                   help="what every table and whole-model timing runs in (LatencyConfig.runtime)")
    p.add_argument("--batch", type=int, default=64, help="the large batch (batch 1 is always measured)")
    p.add_argument("--speedups", default="2,4")
    p.add_argument("--method", default="l1+itpruner", help="method for the speedup budgets (latency-aware via its costs)")
    p.add_argument("--macs-methods", default="l1,l1+itpruner")
    p.add_argument("--flops", default="0.5,0.2", help="MACs budgets of the hardware-friendly rows")
    p.add_argument("--round-to", default="8,16")
    p.add_argument("--tp-methods", default="tp:group-l2-global,tp:l1-layer",
                   help="Torch-Pruning pruners at the same MACs budgets, timed in the same run (bench/suite.py's TP_METHODS)")
    p.add_argument("--samples", type=int, default=4, help="sampled widths per channel dim of each layer table")
    p.add_argument("--layer-seconds", type=float, default=0.05, help="timing window of one table point")
    p.add_argument("--seconds", type=float, default=1.0, help="timing window of one whole-model measurement")
    p.add_argument("--random-settings", type=int, default=20)
    p.add_argument("--drop-blocks", action="store_true",
                   help="speedup rows and their equal-MACs plans may take residual branches to width 0 (prunekit.drop)")
    p.add_argument("--eval-images", type=int, default=2000,
                   help="test images the speed-up plans are evaluated on after BatchNorm re-estimation (0: none)")
    p.add_argument("--calibration-batches", type=int, default=5)
    p.add_argument("--rounds", type=int, default=3,
                   help="the MACs-budget rows (prunekit's and Torch-Pruning's) are re-timed against the dense model in "
                        "this many interleaved rounds at the end, so all see the same machine; their median is reported")
    p.add_argument("--quick", action="store_true", help="tiny settings: a smoke test of this script")
    p.add_argument("--out", default=str(ROOT / "bench/results/latency"))
    return p


def main(argv=None) -> int:
    args = args_parser().parse_args(argv)
    if args.quick:
        args.speedups, args.flops, args.round_to, args.batch = "1.5", "0.5", "8", 8
        args.samples, args.layer_seconds, args.seconds, args.random_settings = 2, 0.01, 0.05, 3
        args.macs_methods, args.method, args.calibration_batches, args.tp_methods = "l1", "l1", 1, "tp:l1-layer"
        args.rounds = 1
    torch.manual_seed(0)
    model = create_model(args.model, in_channels=1)
    prunekit.io.load_weights(model, ROOT / args.checkpoint if not Path(args.checkpoint).is_absolute() else args.checkpoint)
    model.eval()
    x = torch.zeros(1, 1, 28, 28)
    data = test = None
    if args.eval_images or any("itpruner" in m or "taylor" in m for m in [args.method, *args.macs_methods.split(",")]):
        from prunekit.data import load_dataset
        data = load_dataset("fmnist", split="train")
        test = torch.utils.data.Subset(load_dataset("fmnist", split="test"), range(args.eval_images or 1))
    from prunekit.train.evaluate import evaluate
    base = {"threads": args.threads, "samples": args.samples, "min_run_time": args.layer_seconds,
            "model_run_time": args.seconds, "runtime": args.runtime}
    timing = LatencyConfig(**base)
    t_start = time.perf_counter()
    out = {"command": "python bench/latency.py " + shlex.join(argv if argv is not None else sys.argv[1:]),
           "model": args.model, "checkpoint": args.checkpoint, "threads": args.threads, "batch": args.batch,
           "runtime": args.runtime,
           "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"), "torch": torch.__version__,
           "load_start": [round(v, 2) for v in os.getloadavg()],
           "dense_accuracy": evaluate(model, test) if args.eval_images else None,
           "drop_blocks": args.drop_blocks, "eval_images": args.eval_images, "rounds": args.rounds, "speedup_rows": [], "unreachable": [], "equal_macs_rows": [], "rounding_refused": [], "rounding_rows": [], "combined_rows": [], "predictor": {}}

    def run(budget, method, batch, **kw):
        t0 = time.perf_counter()
        r = prunekit.compress(model, x, budget, method=method, data=data, seed=0, bn_batches=0, reconstruct=0,
                              calibration_batches=args.calibration_batches, latency={**base, "batch": batch, **kw.pop("lat", {})},
                              **kw)
        r.summary["seconds"]["bench_wall"] = time.perf_counter() - t0
        return r

    for batch in (args.batch, 1):
        for s in (float(v) for v in args.speedups.split(",")):
            try:
                lat = run(f"speedup={s:g}", args.method, batch, drop_blocks=args.drop_blocks)
            except prunekit.BudgetError as e:  # the fixed parts alone are too slow at this batch: say so, go on
                out["unreachable"].append({"batch": batch, "target_speedup": s, "error": str(e)})
                print(f"batch {batch} speedup={s:g}: refused: {e}", flush=True)
                continue
            L = lat.summary["latency"]
            rounds = L.get("feedback", {}).get("rounds", [])
            macs = lat.summary["macs"]["pruned"]
            row = {"batch": batch, "target_speedup": s, "method": args.method,
                   "predicted_speedup": L["predicted"][str(batch)]["speedup"],
                   "measured_speedup": L["measured"][str(batch)]["speedup"],
                   "measured_speedup_other_batch": {b: v["speedup"] for b, v in L["measured"].items() if b != str(batch)},
                   "macs_reduction": lat.summary["macs"]["dense"] / macs,
                   "plans": len(rounds), "first_plan_measured_speedup": rounds[0]["measured_speedup"] if rounds else None,
                   "rounds": [{k: r.get(k) for k in ("table_target_ms", "dense_ms", "measured_ms", "measured_speedup",
                                                      "error")}
                              for r in rounds],
                   "seconds": lat.summary["seconds"]["bench_wall"], "dropped_blocks": dropped(lat)}
            if args.eval_images:
                row["accuracy"] = accuracy(lat, data, test)
            row["within_10pct"] = abs(row["measured_speedup"] / s - 1) <= 0.10
            out["speedup_rows"].append(row)
            print(f"batch {batch} speedup={s:g}: predicted {row['predicted_speedup']:.2f}x, measured "
                  f"{row['measured_speedup']:.2f}x (MACs {row['macs_reduction']:.2f}x; rounds "
                  f"{[round(v['measured_speedup'], 2) for v in row['rounds']]})", flush=True)
            flat = run({"flops": float(macs)}, args.method, batch, lat={"measure": False}, round_to=8,
                       drop_blocks=args.drop_blocks)
            plans = {"latency_aware": lat, "macs_only": flat}
            eq = {"batch": batch, "target_speedup": s}
            if args.drop_blocks:  # and what a MACs budget gives by default: widths only, every branch kept
                try:
                    plans["macs_only_widths"] = run({"flops": float(macs)}, args.method, batch, lat={"measure": False},
                                                    round_to=8)
                except prunekit.BudgetError as e:  # fewer MACs than every branch at its minimum width
                    eq["macs_only_widths_refused"] = str(e)
            for k, r in plans.items():
                eq.update({f"{k}_macs": r.summary["macs"]["pruned"], f"{k}_dropped": dropped(r)})
                if k == "latency_aware":
                    continue
                if args.eval_images:
                    eq[f"{k}_accuracy"] = accuracy(r, data, test)
                # timed against the latency-aware plan in alternating blocks: the ratio is the pairs' median
                eq[f"{k}_ms"], eq["latency_aware_ms"], eq[f"{k}_over_latency_aware"] = pair_ms(
                    r.model, lat.model, x, batch, timing)
            out["equal_macs_rows"].append(eq)
            print("  equal MACs: " + ", ".join(f"{k} {eq[f'{k}_ms']:.3f} ms" for k in plans), flush=True)

    retime = []  # (row, model) of every MACs-budget row, re-timed together at the end
    configs = [(m, r_to, False) for m in args.macs_methods.split(",") for r_to in (int(v) for v in args.round_to.split(","))]
    if args.drop_blocks:  # the speedup rows' method, residual branches removable, widths in 8s
        configs.append((args.method, 8, True))
    for method, r_to, drop in configs:
        for f in (float(v) for v in args.flops.split(",")):
            try:
                res = run({"flops": f}, method, args.batch, round_to=r_to, lat={"snap": True}, drop_blocks=drop)
            except prunekit.BudgetError as e:  # e.g. round_to=16 keeps 16-wide Units whole: 20% is below the floor
                out["rounding_refused"].append({"method": method, "round_to": r_to, "flops": f, "drop_blocks": drop,
                                                "error": str(e)})
                print(f"{method} round_to={r_to} flops={f:g}: refused: {e}", flush=True)
                continue
            L, m = res.summary["latency"], res.summary["macs"]
            row = {"method": method, "round_to": r_to, "snap": True, "flops": f, "drop_blocks": drop,
                   "dropped_blocks": dropped(res),
                   "macs_reduction": m["dense"] / m["pruned"],
                   "measured_speedup": L["measured"][str(args.batch)]["speedup"],
                   "measured_speedup_batch1": L["measured"]["1"]["speedup"],
                   "snapped_units": len(L.get("snapped") or [])}
            row["speedup_over_macs_reduction"] = row["measured_speedup"] / row["macs_reduction"]
            row["accuracy"] = accuracy(res, data, test) if args.eval_images else None
            out["rounding_rows"].append(row)
            retime.append((row, res.model))
            print(f"{method} round_to={r_to} flops={f:g} + snap: {row['measured_speedup']:.2f}x measured at batch "
                  f"{args.batch} for {row['macs_reduction']:.2f}x fewer MACs "
                  f"({row['speedup_over_macs_reduction']:.2f})", flush=True)

    if args.drop_blocks:  # a MACs budget with the speed-up it should bring: flops=f and speedup=0.85/f
        for f in (float(v) for v in args.flops.split(",")):
            budget = {"flops": f, "speedup": round(0.85 / f, 3)}
            try:
                res = run(budget, args.method, args.batch, round_to=8, drop_blocks=True)
            except prunekit.BudgetError as e:
                out["combined_rows"].append({"budget": budget, "error": str(e)})
                continue
            L, m = res.summary["latency"], res.summary["macs"]
            row = {"budget": budget, "method": args.method, "dropped_blocks": dropped(res),
                   "macs_reduction": m["dense"] / m["pruned"], "measured_speedup": L["measured"][str(args.batch)]["speedup"],
                   "rounds": [r["measured_speedup"] for r in L.get("feedback", {}).get("rounds", [])],
                   "accuracy": accuracy(res, data, test) if args.eval_images else None}
            row["speedup_over_macs_reduction"] = row["measured_speedup"] / row["macs_reduction"]
            out["combined_rows"].append(row)
            print(f"flops={f:g} + speedup={budget['speedup']:g}: {row['measured_speedup']:.2f}x for "
                  f"{row['macs_reduction']:.2f}x fewer MACs ({row['speedup_over_macs_reduction']:.2f})", flush=True)

    for method in filter(None, args.tp_methods.split(",")):
        for f in (float(v) for v in args.flops.split(",")):
            row, pruned = tp_row(model, x, method, f, data, args.batch, timing, test if args.eval_images else None)
            out["rounding_rows"].append(row)
            retime.append((row, pruned))
            r = out["rounding_rows"][-1]
            print(f"{method} flops={f:g}: {r['measured_speedup']:.2f}x measured at batch {args.batch} for "
                  f"{r['macs_reduction']:.2f}x fewer MACs ({r['speedup_over_macs_reduction']:.2f})", flush=True)

    retime_rows(retime, model, x, args.batch, timing, args.rounds)

    prep = prepare(model, x, "l1", latency={**base, "batch": args.batch}, drop_blocks=args.drop_blocks)
    rng = np.random.default_rng(0)
    errors = {str(b): [] for b in prep.cost.latency_by_batch}
    for _ in range(args.random_settings):
        widths = random_widths(prep.graph, rng)
        for name in prep.graph.droppable if args.drop_blocks else ():  # half the branches removed, at random
            widths[name] = 0 if rng.random() < 0.5 else max(widths[name], prep.graph.branch_min[name])
        graph = UnitGraph(copy.deepcopy(model), x)
        graph.apply({u.name: list(range(widths[u.name])) for u in graph.units if widths[u.name] < u.width})
        for b, cost in prep.cost.latency_by_batch.items():
            pred = cost(prep.cost.vector(widths))
            meas = model_ms(graph.model, x, b, timing)
            errors[str(b)].append({"predicted_ms": pred, "measured_ms": meas, "error": pred / meas - 1})
    for b, rows in errors.items():
        e = np.array([r["error"] for r in rows])
        out["predictor"][b] = {"settings": len(rows), "mean_abs_error": float(np.abs(e).mean()),
                               "max_abs_error": float(np.abs(e).max()), "mean_error": float(e.mean()), "rows": rows}
        print(f"predictor at batch {b}: mean |error| {np.abs(e).mean():.1%}, max {np.abs(e).max():.1%}", flush=True)
    out["seconds"] = time.perf_counter() - t_start
    out["load_end"] = [round(v, 2) for v in os.getloadavg()]
    write(out, Path(args.out))
    return 0


def tp_row(model, x, method: str, flops: float, data, batch: int, timing: LatencyConfig, test=None) -> tuple:
    """A Torch-Pruning pruner stepped to the MACs budget (bench/suite.py's prune_tp), timed against the
    dense model as compress times its plans (pair_ms); top-1 on ``test`` as prunekit's rows."""
    from suite import prune_tp
    pruned, _ = prune_tp(copy.deepcopy(model), x, method, flops, 0, data)
    pruned.eval()
    row = {"method": method, "round_to": "-", "snap": False, "flops": flops, "drop_blocks": False, "dropped_blocks": 0,
           "macs_reduction": prunekit.count(model, x)[0] / prunekit.count(pruned, x)[0]}
    for b, key in ((batch, "measured_speedup"), (1, "measured_speedup_batch1")):
        row[key] = pair_ms(model, pruned, x, b, timing)[2]
    row["speedup_over_macs_reduction"] = row["measured_speedup"] / row["macs_reduction"]
    row["accuracy"] = accuracy(prunekit.Result(pruned, None, {}), data, test) if test is not None else None
    return row, pruned


def retime_rows(plans: list, model, x, batch: int, timing: LatencyConfig, rounds: int) -> None:
    """Every MACs-budget plan against the dense model (pair_ms), one plan after another, ``rounds``
    times over: a machine whose speed drifts over minutes (neighbours' memory traffic slows the dense
    model more than a small one) then moves every row alike, not whichever was timed in a busy minute.
    The row's speed-up becomes the rounds' median; the first timing is kept as ``first_speedup``."""
    for row, _ in plans:
        row["first_speedup"], row["speedup_rounds"], row["dense_ms_rounds"] = row["measured_speedup"], [], []
    for k in range(rounds):
        for row, pruned in plans:
            dense_ms, _, ratio = pair_ms(model, pruned, x, batch, timing)
            row["speedup_rounds"].append(ratio)
            row["dense_ms_rounds"].append(dense_ms)
        print(f"re-timing round {k + 1}/{rounds}: " + ", ".join(
            f"{r['method']}@{r['flops']:g} {r['speedup_rounds'][-1] / r['macs_reduction']:.2f}" for r, _ in plans), flush=True)
    for row, _ in plans:
        row["measured_speedup"] = float(np.median(row["speedup_rounds"]))
        row["speedup_over_macs_reduction"] = row["measured_speedup"] / row["macs_reduction"]


def dropped(result) -> int:
    """Residual branches the plan removed (width 0, prunekit.drop)."""
    return sum(1 for w in result.plan.widths.values() if w == 0)


def dense_range(out: dict) -> str:
    ms = [v for r in out["rounding_rows"] for v in r.get("dense_ms_rounds", [])]
    return f"{min(ms):.0f}-{max(ms):.0f}" if ms else "-"


def accuracy(result, data, test) -> float:
    """Top-1 on the test subset after BatchNorm re-estimation on 20 training batches (a copy)."""
    from prunekit.pipeline import reestimate_batchnorm
    from prunekit.train.evaluate import evaluate
    copy_ = copy.copy(result)
    copy_.model, copy_.summary = copy.deepcopy(result.model), dict(result.summary)
    reestimate_batchnorm(copy_, data, 20, 0)
    return evaluate(copy_.model, test)


def equal_macs_lines(out: dict) -> list[str]:
    """Each latency plan against MACs-budget plans of the same method at its MACs: with the same freedom
    to remove branches, and (with --drop-blocks) widths only, what a MACs budget gives by default."""
    rows = out["equal_macs_rows"]
    kinds = [("macs_only", "MACs budget, same freedom"), ("macs_only_widths", "MACs budget, widths only")]
    kinds = [(k, name) for k, name in kinds if any(f"{k}_ms" in r for r in rows)]
    lines = ["", "## At equal MACs", "", "Each speed-up plan's MACs as a MACs budget for the same method (round_to 8), "
             "each timed against the latency-aware plan at the row's batch in alternating blocks (`prunekit.latency.pair_ms`; ms: that plan's block median). `ratio`: the pairs' median of its latency over the "
             "latency-aware plan's (> 1: the latency-aware plan is faster); `dropped`: residual branches removed; "
             "accuracy as above.", "",
             "| batch | target | latency-aware plan (dropped, accuracy) | " + " | ".join(
                 f"{name}: ms (dropped, accuracy) | ratio" for _, name in kinds) + " |",
             "|---|---|---|" + "---|---|" * len(kinds)]
    acc = {(r["batch"], r["target_speedup"]): r.get("accuracy") for r in out["speedup_rows"]}

    def cell(ms, d, a):
        detail = f"{d}, {a:.2f}" if a is not None else f"{d}"
        return f"{ms:.3f} ({detail})" if ms is not None else f"({detail})"

    for r in rows:  # the latency-aware plan's ms differ between its pairs (timed at different moments): not shown
        cells = [cell(None, r["latency_aware_dropped"], acc.get((r["batch"], r["target_speedup"])))]
        for k, _ in kinds:
            if f"{k}_ms" not in r:
                cells += ["refused: " + r.get(f"{k}_refused", "-").split(";")[0], "-"]
                continue
            cells += [cell(r[f"{k}_ms"], r[f"{k}_dropped"], r.get(f"{k}_accuracy")), f"{r[f'{k}_over_latency_aware']:.3f}"]
        lines.append(f"| {r['batch']} | {r['target_speedup']:g}x | " + " | ".join(cells) + " |")
    return lines


def fmt_acc(v) -> str:
    return "-" if v is None else f"{v:.2f}"


def write(out: dict, stem: Path) -> None:
    stem.parent.mkdir(parents=True, exist_ok=True)
    prunekit.io.write_json(stem.with_suffix(".json"), out)
    lines = ["# Latency budgets (issue 17)", "", f"Command: `{out['command']}`", "",
             f"{out['model']} ({out['checkpoint']}), {out['threads']} threads, runtime {out.get('runtime', 'torch')}, "
             f"OMP_WAIT_POLICY={out['omp_wait_policy']}, "
             f"torch {out['torch']}; whole run {out['seconds'] / 60:.1f} min.", "",
             f"Load average at start {out['load_start']}, at end {out.get('load_end')}.", "",
             "## Speed-up budgets", "",
             f"Method {out['speedup_rows'][0]['method'] if out['speedup_rows'] else '-'}"
             f"{', residual branches may be dropped (drop_blocks)' if out.get('drop_blocks') else ''}. "
             "`plans`: plans made by the closed loop (prunekit.latency.feedback); `rounds`: the measured speed-up of "
             "each plan, the first the tables' plan alone; `table`: what the tables predict for the returned plan; "
             "`dropped`: residual "
             "branches removed; `accuracy`: top-1 on the first "
             f"{out.get('eval_images')} Fashion-MNIST test images after BatchNorm re-estimation, no fine-tuning "
             f"(dense: {out.get('dense_accuracy') or 0:.2f}).", "",
             "| batch | target | plans | rounds | table | measured | within 10% | MACs reduction | dropped | accuracy |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in out["speedup_rows"]:
        acc = f"{r['accuracy']:.2f}" if r.get("accuracy") is not None else "-"
        per_round = ", ".join(f"{v['measured_speedup']:.2f}x" for v in r.get("rounds", [])) or "-"
        lines.append(f"| {r['batch']} | {r['target_speedup']:g}x | {r.get('plans', 1)} | {per_round} | "
                     f"{r['predicted_speedup']:.2f}x | {r['measured_speedup']:.2f}x"
                     f" | {'yes' if r['within_10pct'] else 'no'} | {r['macs_reduction']:.2f}x | {r.get('dropped_blocks', 0)} | "
                     f"{acc} |")
    for u in out.get("unreachable", []):
        lines.append(f"| {u['batch']} | {u['target_speedup']:g}x | refused: {u['error']} | | | | | | | | |")
    lines += equal_macs_lines(out)
    lines += ["", "## MACs budgets with hardware-friendly widths (round_to + snap)", "",
              "Torch-Pruning's rows (`tp:`): its pruner stepped to the same MACs budget (bench/suite.py's prune_tp, "
              "no rounding). Every row is timed as compress times its plans (against the dense model in alternating "
              "blocks, the pairs' median ratio), and then all rows again, one after another, in "
              f"{out.get('rounds', 1)} interleaved rounds at the end of the run: `measured speed-up` is the rounds' "
              "median, `rounds` their range; ratio = measured speed-up / MACs reduction. The dense model took "
              f"{dense_range(out)} ms per batch across the rounds (the machine's state: neighbours' load slows "
              "the dense model more than a small one, which raises every ratio).", "",
              f"| method | round_to | flops | branches removed | MACs reduction | measured speed-up (batch {out['batch']}) | "
              "rounds | ratio | batch 1 | top-1 before fine-tuning |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in out["rounding_rows"]:
        removed = r.get("dropped_blocks", 0) if r.get("drop_blocks") else "-" if r["method"].startswith("tp:") \
            else "- (not allowed)"
        rounds = r.get("speedup_rounds") or [r["measured_speedup"]]
        lines.append(f"| {r['method']} | {r['round_to']} | {r['flops']:g} | {removed} | {r['macs_reduction']:.2f}x | "
                     f"{r['measured_speedup']:.2f}x | {min(rounds):.2f}-{max(rounds):.2f}x | "
                     f"{r['speedup_over_macs_reduction']:.2f} | {r['measured_speedup_batch1']:.2f}x | "
                     f"{fmt_acc(r.get('accuracy'))} |")
    for u in out.get("rounding_refused", []):
        lines.append(f"| {u['method']} | {u['round_to']} | {u['flops']:g} | {'allowed' if u.get('drop_blocks') else '-'} | "
                     f"refused: {u['error']} | | | | | |")
    if out.get("combined_rows"):
        lines += ["", "## A MACs budget with the speed-up it should bring (flops=f, speedup=0.85/f)", "",
                  "Both budgets at once (branches removable, round_to 8, closed loop on the speed-up); ratio = measured "
                  "speed-up / MACs reduction.", "",
                  f"| budget | branches removed | MACs reduction | measured speed-up (batch {out['batch']}) | rounds | ratio | "
                  "top-1 before fine-tuning |", "|---|---|---|---|---|---|---|"]
        for r in out["combined_rows"]:
            b = f"flops={r['budget']['flops']:g}, speedup={r['budget']['speedup']:g}"
            if "error" in r:
                lines.append(f"| {b} | refused: {r['error']} | | | | | |")
                continue
            lines.append(f"| {b} | {r['dropped_blocks']} | {r['macs_reduction']:.2f}x | {r['measured_speedup']:.2f}x | "
                         f"{', '.join(f'{v:.2f}x' for v in r['rounds']) or '-'} | {r['speedup_over_macs_reduction']:.2f} | "
                         f"{fmt_acc(r.get('accuracy'))} |")
    lines += ["", "## Latency predictor on random width settings", "", "| batch | settings | mean abs error | max abs error "
              "| mean error |", "|---|---|---|---|---|"]
    for b, p in out["predictor"].items():
        lines.append(f"| {b} | {p['settings']} | {p['mean_abs_error']:.1%} | {p['max_abs_error']:.1%} | "
                     f"{p['mean_error']:+.1%} |")
    prunekit.io.write_text(stem.with_suffix(".md"), "\n".join(lines) + "\n")


if __name__ == "__main__":
    sys.exit(main())
