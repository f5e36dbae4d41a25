"""Latency budgets on the 2-core CPU (issue 17): does a speedup budget deliver the measured speed-up?

    python bench/latency.py                        # shipped ResNet-56 -> bench/results/latency.{md,json}
    python bench/latency.py --checkpoint checkpoints/fmnist-resnet20/model.safetensors --model resnet20 --quick

1. ``speedup`` budgets (2, 4) at batch 64 and at batch 1: predicted and measured speed-up vs target.
2. At equal MACs: the latency-aware plan against a MACs-only plan of the same method at exactly the
   latency plan's MACs (measured back to back, ratio of latencies).
3. MACs budgets with hardware-friendly widths (round_to 8/16 + snap): measured speed-up at batch 64
   divided by the MACs reduction.
4. The latency predictor's error on random width settings (pruned copies timed whole).

Every latency is the median of ``torch.utils.benchmark``'s ``blocked_autorange`` at ``--threads``.
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
from prunekit.latency import LatencyConfig, model_ms, random_widths  # noqa: E402
from prunekit.models import create_model  # noqa: E402
from prunekit.pipeline import prepare  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="resnet56")
    p.add_argument("--checkpoint", default="checkpoints/fmnist-resnet56/model.safetensors")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batch", type=int, default=64, help="the large batch (batch 1 is always measured)")
    p.add_argument("--speedups", default="2,4")
    p.add_argument("--method", default="l1+itpruner", help="method for the speedup budgets (latency-aware via its costs)")
    p.add_argument("--macs-methods", default="l1,l1+itpruner")
    p.add_argument("--flops", default="0.5,0.2", help="MACs budgets of the hardware-friendly rows")
    p.add_argument("--round-to", default="8,16")
    p.add_argument("--samples", type=int, default=4, help="sampled widths per channel dim of each layer table")
    p.add_argument("--layer-seconds", type=float, default=0.05, help="timing window of one table point")
    p.add_argument("--seconds", type=float, default=1.0, help="timing window of one whole-model measurement")
    p.add_argument("--random-settings", type=int, default=20)
    p.add_argument("--drop-blocks", action="store_true",
                   help="speedup rows and their equal-MACs plans may take residual branches to width 0 (prunekit.drop)")
    p.add_argument("--eval-images", type=int, default=2000,
                   help="test images the speed-up plans are evaluated on after BatchNorm re-estimation (0: none)")
    p.add_argument("--calibration-batches", type=int, default=5)
    p.add_argument("--quick", action="store_true", help="tiny settings: a smoke test of this script")
    p.add_argument("--out", default=str(ROOT / "bench/results/latency"))
    return p


def main(argv=None) -> int:
    args = args_parser().parse_args(argv)
    if args.quick:
        args.speedups, args.flops, args.round_to, args.batch = "1.5", "0.5", "8", 8
        args.samples, args.layer_seconds, args.seconds, args.random_settings = 2, 0.01, 0.05, 3
        args.macs_methods, args.method, args.calibration_batches = "l1", "l1", 1
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
            "model_run_time": args.seconds}
    timing = LatencyConfig(**base)
    t_start = time.perf_counter()
    out = {"command": "python bench/latency.py " + shlex.join(argv if argv is not None else sys.argv[1:]),
           "model": args.model, "checkpoint": args.checkpoint, "threads": args.threads, "batch": args.batch,
           "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"), "torch": torch.__version__,
           "load_start": [round(v, 2) for v in os.getloadavg()],
           "dense_accuracy": evaluate(model, test) if args.eval_images else None,
           "drop_blocks": args.drop_blocks, "eval_images": args.eval_images, "speedup_rows": [], "unreachable": [], "equal_macs_rows": [], "rounding_refused": [], "rounding_rows": [], "predictor": {}}

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
                   "seconds": lat.summary["seconds"]["bench_wall"], "dropped_blocks": dropped(lat)}
            if args.eval_images:
                row["accuracy"] = accuracy(lat, data, test)
            row["within_10pct"] = abs(row["measured_speedup"] / s - 1) <= 0.10
            out["speedup_rows"].append(row)
            print(f"batch {batch} speedup={s:g}: predicted {row['predicted_speedup']:.2f}x, measured "
                  f"{row['measured_speedup']:.2f}x (MACs {row['macs_reduction']:.2f}x)", flush=True)
            flat = run({"flops": float(macs)}, args.method, batch, lat={"measure": False}, round_to=8,
                       drop_blocks=args.drop_blocks)
            flat_macs = flat.summary["macs"]["pruned"]
            a = [model_ms(lat.model, x, batch, timing) for _ in range(2)]  # interleaved, same load
            b = [model_ms(flat.model, x, batch, timing) for _ in range(2)]
            a.append(model_ms(lat.model, x, batch, timing))
            b.append(model_ms(flat.model, x, batch, timing))
            eq = {"batch": batch, "target_speedup": s, "latency_aware_macs": macs, "macs_only_macs": flat_macs,
                  "latency_aware_dropped": dropped(lat), "macs_only_dropped": dropped(flat),
                  "latency_aware_ms": float(np.median(a)), "macs_only_ms": float(np.median(b))}
            eq["macs_only_over_latency_aware"] = eq["macs_only_ms"] / eq["latency_aware_ms"]
            out["equal_macs_rows"].append(eq)
            print(f"  equal MACs: latency-aware {eq['latency_aware_ms']:.3f} ms, MACs-only {eq['macs_only_ms']:.3f} ms "
                  f"({eq['macs_only_over_latency_aware']:.3f}x)", flush=True)

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
            out["rounding_rows"].append(row)
            print(f"{method} round_to={r_to} flops={f:g} + snap: {row['measured_speedup']:.2f}x measured at batch "
                  f"{args.batch} for {row['macs_reduction']:.2f}x fewer MACs "
                  f"({row['speedup_over_macs_reduction']:.2f})", flush=True)

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


def dropped(result) -> int:
    """Residual branches the plan removed (width 0, prunekit.drop)."""
    return sum(1 for w in result.plan.widths.values() if w == 0)


def accuracy(result, data, test) -> float:
    """Top-1 on the test subset after BatchNorm re-estimation on 20 training batches (a copy)."""
    from prunekit.pipeline import reestimate_batchnorm
    from prunekit.train.evaluate import evaluate
    copy_ = copy.copy(result)
    copy_.model, copy_.summary = copy.deepcopy(result.model), dict(result.summary)
    reestimate_batchnorm(copy_, data, 20, 0)
    return evaluate(copy_.model, test)


def write(out: dict, stem: Path) -> None:
    stem.parent.mkdir(parents=True, exist_ok=True)
    prunekit.io.write_json(stem.with_suffix(".json"), out)
    lines = ["# Latency budgets (issue 17)", "", f"Command: `{out['command']}`", "",
             f"{out['model']} ({out['checkpoint']}), {out['threads']} threads, OMP_WAIT_POLICY={out['omp_wait_policy']}, "
             f"torch {out['torch']}; whole run {out['seconds'] / 60:.1f} min.", "",
             f"Load average at start {out['load_start']}, at end {out.get('load_end')}.", "",
             "## Speed-up budgets", "",
             f"Method {out['speedup_rows'][0]['method'] if out['speedup_rows'] else '-'}"
             f"{', residual branches may be dropped (drop_blocks)' if out.get('drop_blocks') else ''}. "
             "`plans`: plans made by the closed loop (prunekit.latency.feedback); `first plan`: the measured speed-up "
             "of the tables' plan alone; `table`: what the tables predict for the returned plan; `dropped`: residual "
             "branches removed; `accuracy`: top-1 on the first "
             f"{out.get('eval_images')} Fashion-MNIST test images after BatchNorm re-estimation, no fine-tuning "
             f"(dense: {out.get('dense_accuracy') or 0:.2f}); `equal MACs`: a MACs-only plan of the same method at the latency plan's MACs, its latency "
             "over the latency-aware plan's (timed interleaved; > 1: the latency-aware plan is faster), branches each dropped.", "",
             "| batch | target | plans | first plan | table | measured | within 10% | MACs reduction | dropped | accuracy | "
             "equal MACs: MACs-only ms / latency-aware ms (dropped) |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r, e in zip(out["speedup_rows"], out["equal_macs_rows"]):
        first = f"{r['first_plan_measured_speedup']:.2f}x" if r.get("first_plan_measured_speedup") else "-"
        acc = f"{r['accuracy']:.2f}" if r.get("accuracy") is not None else "-"
        lines.append(f"| {r['batch']} | {r['target_speedup']:g}x | {r.get('plans', 1)} | {first} | "
                     f"{r['predicted_speedup']:.2f}x | {r['measured_speedup']:.2f}x"
                     f" | {'yes' if r['within_10pct'] else 'no'} | {r['macs_reduction']:.2f}x | {r.get('dropped_blocks', 0)} | "
                     f"{acc} | {e['macs_only_over_latency_aware']:.3f} ({e.get('latency_aware_dropped', 0)} vs "
                     f"{e.get('macs_only_dropped', 0)}) |")
    for u in out.get("unreachable", []):
        lines.append(f"| {u['batch']} | {u['target_speedup']:g}x | refused: {u['error']} | | | | | | | | |")
    lines += ["", "## MACs budgets with hardware-friendly widths (round_to + snap)", "",
              f"| method | round_to | flops | branches removed | MACs reduction | measured speed-up (batch {out['batch']}) | ratio | "
              "batch 1 |", "|---|---|---|---|---|---|---|---|"]
    for r in out["rounding_rows"]:
        removed = r.get("dropped_blocks", 0) if r.get("drop_blocks") else "- (not allowed)"
        lines.append(f"| {r['method']} | {r['round_to']} | {r['flops']:g} | {removed} | {r['macs_reduction']:.2f}x | "
                     f"{r['measured_speedup']:.2f}x | {r['speedup_over_macs_reduction']:.2f} | "
                     f"{r['measured_speedup_batch1']:.2f}x |")
    for u in out.get("rounding_refused", []):
        lines.append(f"| {u['method']} | {u['round_to']} | {u['flops']:g} | {'allowed' if u.get('drop_blocks') else '-'} | "
                     f"refused: {u['error']} | | | |")
    lines += ["", "## Latency predictor on random width settings", "", "| batch | settings | mean abs error | max abs error "
              "| mean error |", "|---|---|---|---|---|"]
    for b, p in out["predictor"].items():
        lines.append(f"| {b} | {p['settings']} | {p['mean_abs_error']:.1%} | {p['max_abs_error']:.1%} | "
                     f"{p['mean_error']:+.1%} |")
    prunekit.io.write_text(stem.with_suffix(".md"), "\n".join(lines) + "\n")


if __name__ == "__main__":
    sys.exit(main())
