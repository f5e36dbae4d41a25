"""`prunekit` command line: a thin layer over the API. User errors print one line and exit 2."""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from . import io
from .errors import ConfigError, PrunekitError
from .reconstruct import after_pruning

EXIT_USER_ERROR = 2
STALE_BN = ("note: the pruned model keeps the dense model's BatchNorm statistics, which are wrong for it: "
            "re-estimate them (--dataset with --bn-batches >= 1, or prunekit eval --bn-batches 20) or fine-tune before use")


# -- shared pieces -------------------------------------------------------------------------------
def _model_args(p: argparse.ArgumentParser, data: bool = True) -> None:
    p.add_argument("--model", required=True, help="built-in name (prunekit info --list), tv:<name> or timm:<name>")
    p.add_argument("--checkpoint", help="weights: .pt/.pth state dict, .safetensors, or a prunekit output directory")
    if data:
        p.add_argument("--dataset", help="fmnist, cifar10, imagefolder or synthetic")
        p.add_argument("--data-dir", help="directory with the dataset files (default: $PRUNEKIT_DATA or the dataset's own)")
    p.add_argument("--in-channels", type=int, help="input channels (default: the dataset's, else 3)")
    p.add_argument("--num-classes", type=int, help="classes (default: the dataset's, else 10)")
    p.add_argument("--input-size", type=int, help="image side the costs are counted at (default: the dataset's, else 32)")
    p.add_argument("--json", action="store_true", help="print machine-readable JSON on stdout")


def _plan_args(p: argparse.ArgumentParser) -> None:
    """What compress and sweep share: how the plan is made and how it is evaluated."""
    p.add_argument("--method", default="l1", help="a method (prunekit methods) or criterion+allocator")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--ignore", help="comma-separated layer names never to prune")
    p.add_argument("--min-width", type=float, default=0.05, help="smallest kept fraction of any unit")
    p.add_argument("--round-to", type=int, help="keep widths multiples of this (default: 8, the latency tables' "
                   "step, under a speedup/latency_ms budget; else 1)")
    p.add_argument("--calibration-batches", type=int, default=5, help="batches of 128 training images")
    p.add_argument("--option", action="append", help="method option name=value, e.g. beta=500 (repeatable)")
    p.add_argument("--bn-batches", type=int, default=20,
                   help="training batches of 128 to re-estimate the pruned model's BatchNorm statistics (0: off)")
    p.add_argument("--reconstruct", type=int, default=512,
                   help="training images to refit the pruned layers to the dense model's outputs on (0: off)")
    p.add_argument("--eval-images", type=int, help="evaluate on the first N test images (default: all)")


def _finetune_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--finetune-lr", type=float, default=0.05, help="peak learning rate of the fine-tuning")
    p.add_argument("--max-steps", type=int, help="stop each fine-tuning epoch after this many steps (quick runs)")


def _shape(args) -> tuple[int, int, int]:
    info = {}
    if getattr(args, "dataset", None):
        from .data import dataset_info
        info = dataset_info(args.dataset)
    in_ch = args.in_channels or info.get("in_channels", 3)
    classes = args.num_classes or info.get("num_classes", 10)
    size = args.input_size or info.get("image_size", 32)
    for name, v in (("--in-channels", in_ch), ("--num-classes", classes), ("--input-size", size)):
        if v < 1:
            raise ConfigError(f"{name} must be >= 1, got {v}")
    return in_ch, classes, size


def _build(args):
    """(model with the checkpoint's weights, example input)."""
    from .models import create_model
    in_ch, classes, size = _shape(args)
    model = create_model(args.model, in_channels=in_ch, num_classes=classes)
    x = torch.zeros(1, in_ch, size, size)
    if args.checkpoint:
        ckpt = Path(args.checkpoint)
        if ckpt.is_dir():
            model = io.load(ckpt, model, x)
        else:
            io.load_weights(model, ckpt)
    return model.eval(), x


def _data(args, split: str, augment: bool = False):
    from .data import load_dataset
    return load_dataset(args.dataset, root=args.data_dir, split=split, augment=augment)


def _accuracy(model, data, limit: int | None) -> float:
    from .train import evaluate
    if limit and limit < len(data):
        data = torch.utils.data.Subset(data, range(limit))
    return evaluate(model, data, progress=True)


def _options(items: list[str] | None) -> dict:
    """--option beta=500 --option kernel=gaussian -> {"beta": 500.0, "kernel": "gaussian"}; one --option
    may hold several, comma-separated (eps=0.05,particles=4); a comma not followed by name= stays in
    the value (candidates=l1,taylor)."""
    import re
    out = {}
    for item in (part for given in items or [] for part in re.split(r",(?=[A-Za-z_]\w*=)", given)):
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"cannot read --option {item!r}; write --option name=value")
        try:
            out[key] = int(value) if value.lstrip("-").isdigit() else float(value)
        except ValueError:
            out[key] = value
    return out


def _emit(args, obj: dict, text: str) -> None:
    print(json.dumps(obj, indent=1, default=float) if args.json else text)


def _table(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths))) for r in rows)


def _human(x: float) -> str:
    for s, f in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(x) >= f:
            return f"{x / f:.2f}{s}"
    return f"{x:.0f}"


def _log(msg: str) -> None:
    if _main_process():
        print(msg, file=sys.stderr, flush=True)


def _main_process() -> bool:
    """Under torchrun/accelerate launch every process runs the command; one of them reports and writes."""
    import os
    return int(os.environ.get("RANK", "0")) == 0


# -- commands ------------------------------------------------------------------------------------
def cmd_compress(args) -> int:
    from .pipeline import compress
    budget, method, options = _budget_or_ratios(args)  # every check that needs no work comes first
    latency = _latency_options(args, budget)
    finetune = _finetune_recipe(args)
    io.check_writable(args.out)
    if finetune is not None:
        _check_resumable(args)
    model, x = _build(args)
    train = test = None
    if args.dataset:
        train, test = _data(args, "train"), _data(args, "test")
    _log(f"compressing {args.model} to {args.ratios or budget.describe()} with {method} ...")
    t0 = time.perf_counter()
    result = compress(model, x, budget, method=method, data=train, seed=args.seed,
                      ignore=[s for s in (args.ignore or "").split(",") if s], min_width=args.min_width,
                      round_to=args.round_to, calibration_batches=args.calibration_batches,
                      options=options, progress=True, bn_batches=args.bn_batches, reconstruct=args.reconstruct,
                      drop_blocks=args.drop_blocks, **({"latency": latency} if latency is not None else {}))
    plan_seconds = time.perf_counter() - t0
    summary = result.summary
    summary["seconds"]["to_plan"] = plan_seconds
    summary["model"], summary["dataset"] = args.model, args.dataset  # for the report's header
    if test is not None and not args.no_eval:
        _log("evaluating the dense model ...")
        summary["accuracy_dense"] = _accuracy(model, test, args.eval_images)
        _log("evaluating the pruned model ...")
        summary["accuracy_pruned_bn"] = _accuracy(result.model, test, args.eval_images)
    if finetune is not None:
        _finetune(args, finetune, model, result, test)
    if summary["batchnorm"] == "stale":
        _log(STALE_BN)
    if not _main_process():
        return 0
    out = io.save(result, args.out)
    for fmt in filter(None, (args.export or "").split(",")):
        _export(result.model, x, fmt, out)
    report = _write_report(out) if args.report else None
    _emit(args, summary, _compress_text(summary, out) + (f"\nreport: {report}" if report else ""))
    return 0


def _write_report(run_dir: Path, dest: str | None = None) -> Path:
    from .report import write_report
    return write_report(run_dir, dest)


def _budget_or_ratios(args):
    """(budget, method, options). ``--ratios`` fixes every width (CHIP's hand-set lists) with the
    method's criterion, and turns ``--budget`` into an optional ceiling (the dense cost if absent)."""
    from .allocation.ratios import parse_ratios
    from .budget import Budget
    from .methods import is_lowrank, resolve
    if not args.budget and not args.ratios:
        raise ConfigError("compress needs --budget (e.g. flops=0.5) or --ratios (e.g. '[0.]+[0.15]*2+[0.4]*27')")
    budget = Budget.parse(args.budget) if args.budget else Budget(flops=1.0)
    if args.method == "auto":
        return budget, "auto", _auto_options(args)
    if is_lowrank(args.method):  # svd, trp, CHANNEL_METHOD,svd: options checked here, before any work
        from .lowrank.method import check
        if args.ratios:
            raise ConfigError(f"--ratios fixes channel widths; method {args.method!r} decomposes layers: drop --ratios")
        return budget, args.method, check(args.method, _options(args.option))
    recipe, options = resolve(args.method), _options(args.option)
    if args.search_budget is not None:  # a searching allocator's (acp); any other method refuses it by name
        options.setdefault("search_budget", args.search_budget)
    if not args.ratios:
        return budget, args.method, options
    parse_ratios(args.ratios)
    return budget, f"{recipe.criterion}+ratios", {**options, "ratios": args.ratios}


def _auto_options(args) -> dict:
    """--method auto: checked before any work; --search-budget and --option candidates=l1,taylor."""
    if args.ratios:
        raise ConfigError("--ratios fixes every width and --method auto chooses them: drop one of the two")
    if not args.dataset:
        raise ConfigError("--method auto scores every candidate on held-out training data: pass --dataset NAME")
    options = _options(args.option)
    if args.search_budget is not None:
        options["search_budget"] = args.search_budget
    from .auto import PROXY_STEPS, options as check
    if getattr(args, "finetune_epochs", 0) > 0:  # the model will be fine-tuned: rank the finalists after a short distillation
        options.setdefault("finetune_steps", PROXY_STEPS)
        options.setdefault("finetune_lr", args.finetune_lr)
    return check(options)


def _finetune_recipe(args):
    """BENCHMARKS.md's fine-tuning recipe (the dense one at peak LR 0.05), checked before any work."""
    from .train import Recipe
    if args.finetune_epochs == 0:
        return None
    if not args.dataset:
        raise ConfigError("fine-tuning needs training data: pass --dataset")
    return Recipe(epochs=args.finetune_epochs, lr=args.finetune_lr, batch_size=256, seed=args.seed,
                  max_steps_per_epoch=args.max_steps)


def _check_resumable(args) -> None:
    """A run directory with a training checkpoint is continued only when asked, never overwritten."""
    from .train import CHECKPOINT
    ckpt = Path(args.out) / CHECKPOINT
    if ckpt.exists() and not args.resume:
        raise ConfigError(f"{args.out} holds an unfinished or finished training run ({CHECKPOINT}); "
                          "pass --resume to continue it or choose another --out")
    if args.resume and not ckpt.exists():
        _log(f"nothing to resume in {args.out}: starting from the first epoch")


def _finetune(args, recipe, dense, result, test) -> None:
    """Distill the dense model into the pruned one, checkpointing every epoch into --out."""
    from .train import CHECKPOINT, finetune
    _log(f"fine-tuning for {recipe.epochs} epochs with distillation from the dense model ...")
    t0 = time.perf_counter()
    out = io.ensure_dir(args.out)
    finetune(result, _data(args, "train", augment=True), teacher=dense, checkpoint=out / CHECKPOINT,
             resume=args.resume, device=args.device, **recipe.to_dict())
    result.summary["seconds"]["finetune"] = time.perf_counter() - t0
    if test is not None and not args.no_eval:
        result.summary["accuracy_finetuned"] = _accuracy(result.model.eval(), test, args.eval_images)
    result.model.eval()


def _compress_text(s: dict, out: Path) -> str:
    rows = [["unit", "width", "kept", "kept %"]]
    rows += [[u["name"], str(u["width"]), str(u["kept"]), f"{100 * u['kept'] / u['width']:.0f}"] for u in s["units"]]
    m, p = s["macs"], s["params"]
    lines = [_table(rows), "",
             _table([["", "dense", "pruned", "kept %", "target"],
                     ["MACs", _human(m["dense"]), _human(m["pruned"]), f"{100 * m['pruned'] / m['dense']:.1f}",
                      _human(m["target"]) if m["target"] else "-"],
                     ["params", _human(p["dense"]), _human(p["pruned"]), f"{100 * p['pruned'] / p['dense']:.1f}",
                      _human(p["target"]) if p["target"] else "-"]])]
    if s.get("budget_note"):
        lines.append(f"budget: {s['budget_note']}")
    if "accuracy_dense" in s:
        lines.append(f"accuracy: dense {s['accuracy_dense']:.2f}%  pruned ({after_pruning(s)}, no fine-tuning) "
                     f"{s['accuracy_pruned_bn']:.2f}%")
    if "accuracy_finetuned" in s:
        lines.append(f"accuracy after {len(s['finetune']['epochs'])} fine-tuning epochs with distillation: "
                     f"{s['accuracy_finetuned']:.2f}%")
    if "latency" in s:
        lines += ["", _latency_text(s["latency"])]
    if s.get("depth"):
        d = s["depth"]
        tried = ", ".join(f"{c['dropped']}: {c['fitness']:.1f}%" if c.get("fitness") is not None else str(c["dropped"])
                          for c in d["candidates"])
        lines.append(f"removed {d['chosen']} residual branches, chosen by {d['selected_by']} (tried {tried})")
    if "auto" in s:
        lines += ["", _leaderboard_text(s["auto"])]
    lines.append(f"method {s['method']['name']} ({s['method']['criterion']} + {s['method']['allocator']}), "
                 f"plan in {s['seconds']['to_plan']:.1f} s; cost model verified against FlopCounterMode")
    lines.append(f"saved to {out}/ (plan.json, model.safetensors, summary.json)")
    return "\n".join(lines)


def _leaderboard_text(a: dict) -> str:
    proxy = any("finetuned_accuracy" in r for r in a["leaderboard"])
    rows = [["candidate", "held-out %"] + (["distilled %"] if proxy else []) + ["MACs", "params", "s"]]
    rows += [[r["candidate"], f"{r['heldout_accuracy']:.2f}"]
             + ([f"{r['finetuned_accuracy']:.2f}" if "finetuned_accuracy" in r else "-"] if proxy else [])
             + [_human(r["macs"]), _human(r["params"]), f"{r['seconds']:.1f}"] for r in a["leaderboard"]]
    note = f"method auto chose {a['chosen']} by accuracy on {a['heldout_images']} held-out training images"
    if proxy:
        note += f" after {a['finetune_steps']} steps of distillation (the {a['finalists']} best one-shot candidates)"
    if a.get("stopped_early"):
        untried = sum("search budget" in r["reason"] for r in a["skipped"])
        note += f" (search budget spent: {untried} candidates not tried)"
    return _table(rows) + "\n" + note


def _export(model, x, fmt: str, out: Path) -> None:
    if fmt == "onnx":
        io.export_onnx(model, x, out / "model.onnx")
    elif fmt == "torchscript":
        io.export_torchscript(model, x, out / "model.torchscript.pt")
    else:
        raise ConfigError(f"unknown export format {fmt!r}; choose onnx or torchscript")


def cmd_sweep(args) -> int:
    """Several budgets in one run: calibration and scores are shared, each point is saved."""
    from .methods import resolve
    from .sweep import SWEEP_JSON, check_budgets, sweep
    budgets = [b.strip() for b in args.budgets.split(",") if b.strip()]
    check_budgets(budgets)  # every budget is read before any work; feasibility once the model is built
    resolve(args.method)
    finetune = _finetune_recipe(args)
    io.check_writable(args.out)
    model, x = _build(args)
    train = test = None
    if args.dataset:
        train = _data(args, "train")
        test = None if args.no_eval else _data(args, "test")
    _log(f"sweeping {args.model} over MACs budgets {', '.join(budgets)} with {args.method} ...")
    result = sweep(model, x, budgets, method=args.method, data=train, seed=args.seed, test_data=test,
                   finetune=finetune, finetune_data=_data(args, "train", augment=True) if finetune else None,
                   bn_batches=args.bn_batches, reconstruct=args.reconstruct, eval_images=args.eval_images,
                   device=args.device, out=args.out,
                   ignore=[s for s in (args.ignore or "").split(",") if s], min_width=args.min_width,
                   round_to=args.round_to or 1, calibration_batches=args.calibration_batches,
                   options=_options(args.option), progress=True)
    obj = result.to_dict()
    rows = [["budget", "MACs", "kept %", "params", "acc BN %", "acc fine-tuned %", "plan s"]]
    for q in obj["points"]:
        rows.append([q["budget"], _human(q["macs"]), f"{100 * q['macs'] / q['macs_dense']:.1f}", _human(q["params"]),
                     "-" if q["accuracy_pruned_bn"] is None else f"{q['accuracy_pruned_bn']:.2f}",
                     "-" if q["accuracy_finetuned"] is None else f"{q['accuracy_finetuned']:.2f}",
                     f"{q['seconds_to_plan']:.1f}"])
    _emit(args, obj, _table(rows) + f"\nsaved to {args.out}/ ({SWEEP_JSON}, one directory per budget, plot)")
    return 0


def cmd_eval(args) -> int:
    from .pipeline import check_bn_batches
    if not args.dataset:
        raise ConfigError("eval needs --dataset")
    check_bn_batches(args.bn_batches)
    model, _ = _build(args)
    state = _saved_batchnorm(args.checkpoint)
    if args.bn_batches:
        from .train import recalibrate_bn
        _log(f"re-estimating BatchNorm statistics on {args.bn_batches} training batches ...")
        recalibrate_bn(model, _data(args, "train"), batches=args.bn_batches, seed=args.seed)
        state = "re-estimated"
    elif state == "stale":
        _log("warning: this run's BatchNorm statistics were never re-estimated after pruning (accuracy will be near "
             "chance); pass --bn-batches 20")
    acc = _accuracy(model, _data(args, "test"), args.eval_images)
    _emit(args, {"model": args.model, "dataset": args.dataset, "accuracy": acc, "batchnorm": state},
          f"test accuracy: {acc:.2f}%")
    return 0


def _saved_batchnorm(checkpoint: str | None) -> str | None:
    """The BatchNorm state a compress run recorded ("stale", "re-estimated", ...), if any."""
    summary = Path(checkpoint or "") / io.SUMMARY
    if not checkpoint or not summary.is_file():
        return None
    try:
        return json.loads(summary.read_text()).get("batchnorm")
    except (ValueError, AttributeError):
        return None


def cmd_info(args) -> int:
    from .cost import CostModel
    from .graph import UnitGraph
    model, x = _build(args)
    graph = UnitGraph(model, x)
    cost = CostModel(graph)
    dense = cost.evaluate()
    units = [{"name": u.name, "width": u.width, "groups": u.groups, "producers": u.producers,
              "consumers": u.consumers} for u in graph.units]
    obj = {"model": args.model, "input_shape": list(x.shape), "macs": dense["macs"], "params": dense["params"],
           "units": units, "protected": sorted(graph.protected)}
    rows = [["unit", "width", "layers"]] + [[u["name"], str(u["width"]), str(len(u["producers"]) + len(u["consumers"]))]
                                            for u in units]
    text = (f"{args.model} at input {tuple(x.shape)}: {_human(dense['macs'])} MACs, {_human(dense['params'])} params, "
            f"{len(units)} prunable units (protected: {', '.join(sorted(graph.protected))})\n" + _table(rows))
    _emit(args, obj, text)
    return 0


def cmd_analyze(args) -> int:
    """Effective-filter analysis (prunekit.analysis): how far each Unit can shrink before the loss notices."""
    from .analysis import analyze
    if not args.dataset:
        raise ConfigError("prunekit analyze needs labelled training data: pass --dataset NAME")
    if args.report:
        if Path(args.report).is_dir():
            raise ConfigError(f"--report {args.report!r} is a directory; give a file name such as analysis.html")
        io.check_writable(str(Path(args.report).absolute().parent))
    model, x = _build(args)
    _log(f"analyzing {args.model} on {args.samples} training images ...")
    result = analyze(model, x, _data(args, "train"), samples=args.samples, batch_size=args.batch_size, seed=args.seed,
                     rank=args.rank, tol=args.tol, energy=args.energy,
                     ignore=[s for s in (args.ignore or "").split(",") if s], min_width=args.min_width,
                     round_to=args.round_to)
    obj = {"model": args.model, "checkpoint": args.checkpoint, "dataset": args.dataset, **result.to_dict(),
           "total": result.total_line()}
    rows = [["unit", "width", "eff. rank", "R", "removable %", "s_min/s_1"]] + [
        [u.name, str(u.width), str(u.rank), str(u.removable_legal), f"{100 * u.removable_legal / u.width:.0f}",
         f"{u.spectrum[-1]:.2g}" if u.spectrum else "-"] for u in result.units]
    rule = f"energy {args.energy}" if args.rank == "energy" else f"relative tol {args.tol}"
    text = (f"{args.model}: per-sample mask gradients of {result.samples} training images, effective rank by {rule}\n"
            + _table(rows) + "\n" + result.total_line())
    if args.report:
        from .report.page import render
        summary = {"model": args.model, "dataset": args.dataset, "efa": obj}
        io.ensure_dir(Path(args.report).absolute().parent)
        io.write_text(Path(args.report), render(summary, None, None).encode("ascii", "xmlcharrefreplace").decode())
        text += f"\nreport: {args.report}"
    _emit(args, obj, text)
    return 0


def cmd_methods(args) -> int:
    from .methods import AUTO, LOWRANK, PRESETS, list_methods
    obj = list_methods()
    lines = ["methods (criterion + allocator):"]
    lines += [f"  {m.name:12s} {m.criterion} + {m.allocator}: {m.description}"
              for m in map(PRESETS.get, (n for n in obj["methods"] if n in PRESETS))]
    lines += [f"  {AUTO.name:12s} {AUTO.description}"]
    lines += [f"  {m.name:12s} {m.description}" for m in LOWRANK.values()]
    lines += ["", "criteria: " + ", ".join(obj["criteria"]), "allocators: " + ", ".join(obj["allocators"]),
              "", "combine any criterion with any allocator: --method taylor+uniform"]
    _emit(args, obj, "\n".join(lines))
    return 0


def cmd_train(args) -> int:
    from .train import Recipe, fit
    if not args.dataset:
        raise ConfigError("train needs --dataset")
    from .train import CHECKPOINT
    recipe = Recipe(epochs=args.epochs, lr=args.lr, batch_size=args.batch_size, seed=args.seed,
                    max_steps_per_epoch=args.max_steps)
    io.check_writable(args.out)
    _check_resumable(args)
    model, _ = _build(args)
    train, test = _data(args, "train", augment=True), _data(args, "test")
    out = io.ensure_dir(args.out)
    history = fit(model.train(), train, recipe, eval_data=test, log=out / "log.jsonl", checkpoint=out / CHECKPOINT,
                  resume=args.resume, device=args.device)
    if not _main_process():
        return 0
    io.save_weights(model, out / "model.safetensors")
    io.write_json(out / "history.json", {"recipe": recipe.to_dict(), "model": args.model, "dataset": args.dataset,
                                         "epochs": history})
    _emit(args, {"history": history, "checkpoint": str(out / "model.safetensors")},
          f"test accuracy {history[-1].get('eval_acc', float('nan')):.2f}%; weights in {out / 'model.safetensors'}")
    return 0


def cmd_export(args) -> int:
    model, x = _build(args)
    out = io.check_writable(args.out)
    io.ensure_dir(out)
    _export(model, x, args.format, out)
    _emit(args, {"out": str(out), "format": args.format}, f"exported {args.format} to {out}")
    return 0


def _latency_options(args, budget) -> dict | None:
    """Latency settings for compress: measured only for a speedup/latency_ms budget, --snap or --threads."""
    if not (budget.needs_latency or args.snap or args.threads is not None):
        return None
    from .latency import LatencyConfig
    options = {"batch": args.latency_batch, "samples": args.latency_samples, "step": args.latency_step or None,
               "snap": args.snap, "runtime": args.latency_runtime}
    if args.threads is not None:
        options["threads"] = args.threads
    LatencyConfig.of(options)  # checked before any work
    return options


def _latency_text(lat: dict) -> str:
    rows = [["latency (ms)", "batch", "dense", "pruned", "speed-up", "source"]]
    for source in ("predicted", "measured"):
        for b, r in lat.get(source, {}).items():
            rows.append(["", b, f"{r['dense_ms']:.3f}", f"{r['pruned_ms']:.3f}", f"{r['speedup']:.2f}x", source])
    target = f"target {lat['target_ms']:.3f} ms at batch {lat['batch']}, " if lat.get("target_ms") else ""
    note = f"{target}{lat['threads']} threads on {lat['device']}, runtime {lat.get('runtime', 'torch')}"
    if lat.get("snapped"):
        note += f"; snapped {len(lat['snapped'])} Units to latency stair ends"
    return _table(rows) + "\n" + note


def cmd_bench_latency(args) -> int:
    """Time a saved run (and optionally its dense model and ONNX export) at the given batches."""
    from .latency.bench import bench, parse_batches, temporary_dir
    from .models import create_model
    batches = parse_batches(args.batches)
    if args.threads < 1 or args.seconds <= 0:
        raise ConfigError("--threads must be >= 1 and --seconds > 0")
    run = Path(args.run_dir)
    if not (run / io.PLAN).is_file():
        raise ConfigError(f"{str(run)!r} has no {io.PLAN}; pass a directory written by prunekit compress")
    summary = json.loads((run / io.SUMMARY).read_text()) if (run / io.SUMMARY).is_file() else {}
    name = args.model or summary.get("model")
    if not name:
        raise ConfigError("the run records no model name: pass --model")
    from .plan import Plan
    shape = Plan.read(run / io.PLAN).input_shape
    if len(shape) < 2:
        raise ConfigError("the run's plan records no input shape")
    classes = args.num_classes
    if classes is None and summary.get("dataset"):
        from .data import dataset_info
        classes = dataset_info(summary["dataset"]).get("num_classes")
    x = torch.zeros(*shape)
    dense = create_model(name, in_channels=args.in_channels or shape[1], num_classes=classes or 10).eval()
    model = io.load(run, create_model(name, in_channels=args.in_channels or shape[1], num_classes=classes or 10), x)
    if args.dense:
        if not args.checkpoint:
            raise ConfigError("--dense needs the dense weights: pass --checkpoint")
        io.load_weights(dense, args.checkpoint)
    onnx = (run / "model.onnx" if (run / "model.onnx").is_file() else temporary_dir()) if args.onnx else None
    obj = bench(model.eval(), x, batches, args.threads, args.seconds, onnx, dense if args.dense else None)
    rows = [["batch", "torch ms", *(["dense ms", "speed-up"] if args.dense else []),
             *(["onnxruntime ms"] if args.onnx else [])]]
    for b, r in obj["batches"].items():
        rows.append([b, f"{r['torch_ms']:.3f}", *([f"{r['dense_torch_ms']:.3f}", f"{r['speedup']:.2f}x"] if args.dense else []),
                     *([f"{r['onnxruntime_ms']:.3f}"] if args.onnx else [])])
    _emit(args, obj, _table(rows) + f"\n{args.threads} threads, median of blocked_autorange({args.seconds:g} s)")
    return 0


def cmd_report(args) -> int:
    path = _write_report(Path(args.run_dir), args.out)
    _emit(args, {"report": str(path)}, f"report written to {path}")
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="prunekit", description="Compress a CNN to a FLOPs/params budget.")
    sub = p.add_subparsers(dest="command", required=True)

    c = sub.add_parser("compress", help="prune a model to a budget and save the result")
    _model_args(c)
    c.add_argument("--budget", help="flops=0.5, params=200K, or both comma-separated (with --ratios: optional ceiling)")
    c.add_argument("--ratios", help="fixed per-layer ratios in the CHIP paper's format, e.g. '[0.]+[0.15]*2+[0.4]*27' "
                                    "(resnet20/56/110, vgg16_bn); uses the --method's criterion")
    c.add_argument("--out", required=True, help="output directory")
    _plan_args(c)
    c.add_argument("--search-budget", type=float, help="--method auto or acp: stop the search after this many seconds "
                                                        "with the best candidate so far")
    c.add_argument("--no-eval", action="store_true", help="skip the accuracy before/after")
    c.add_argument("--export", help="also export: onnx, torchscript (comma-separated)")
    c.add_argument("--report", action="store_true", help="also write a self-contained HTML report to --out/report.html")
    c.add_argument("--finetune-epochs", type=int, default=0, help="fine-tune with distillation from the dense model")
    _finetune_args(c)
    c.add_argument("--resume", action="store_true", help="continue the fine-tuning checkpointed in --out")
    c.add_argument("--device", help="fine-tuning device, e.g. cpu or cuda (default: cuda when available)")
    c.add_argument("--threads", type=int, help="CPU threads latency is measured with (speedup/latency_ms budgets, "
                                               "--snap; default: torch's)")
    c.add_argument("--latency-batch", type=int, default=1, help="batch size a speedup/latency_ms budget refers to "
                                                                "(batch 1 is reported too)")
    c.add_argument("--latency-step", type=int, default=8,
                   help="time each layer at every multiple of this many channels (0: --latency-samples sizes)")
    c.add_argument("--latency-samples", type=int, default=4,
                   help="evenly spaced sizes per channel dim of each layer table when --latency-step is 0")
    c.add_argument("--latency-runtime", choices=["torch", "onnxruntime"], default="torch",
                   help="what the latency budget times: eager PyTorch, or the model exported to ONNX and run by "
                        "onnxruntime (CPU) as it would be deployed")
    c.add_argument("--snap", action="store_true", help="snap each Unit to the end of its measured latency staircase")
    c.add_argument("--drop-blocks", action="store_true",
                   help="let a residual branch's inner width go to 0, removing the branch (its per-op time too)")
    c.set_defaults(func=cmd_compress)

    w = sub.add_parser("sweep", help="prune to several MACs budgets in one run (shared calibration)")
    _model_args(w)
    w.add_argument("--budgets", required=True, help="comma-separated MACs budgets: fractions (0.7,0.5) or counts (20M)")
    w.add_argument("--out", required=True, help="output directory: sweep.json, a plot, one directory per budget")
    _plan_args(w)
    w.add_argument("--no-eval", action="store_true", help="skip the accuracy of each point")
    w.add_argument("--finetune-epochs", type=int, default=0, help="fine-tune each point with distillation")
    _finetune_args(w)
    w.add_argument("--device", help="evaluation and fine-tuning device, e.g. cpu or cuda (planning runs on the CPU)")
    w.set_defaults(func=cmd_sweep)

    e = sub.add_parser("eval", help="test accuracy of a dense or pruned model")
    _model_args(e)
    e.add_argument("--eval-images", type=int)
    e.add_argument("--bn-batches", type=int, default=0,
                   help="re-estimate BatchNorm statistics on this many training batches of 128 first (default 0: off)")
    e.add_argument("--seed", type=int, default=0, help="which training batches --bn-batches draws")
    e.set_defaults(func=cmd_eval)

    i = sub.add_parser("info", help="prunable units, widths, MACs and params of a model")
    _model_args(i)
    i.set_defaults(func=cmd_info)

    a = sub.add_parser("analyze", help="effective-filter analysis: how many channels each unit can lose (needs data)")
    _model_args(a)
    a.add_argument("--samples", type=int, default=1024, help="training images whose per-sample gradients are used")
    a.add_argument("--batch-size", type=int, default=128)
    a.add_argument("--seed", type=int, default=0, help="which training images are drawn")
    a.add_argument("--rank", choices=["energy", "relative"], default="energy",
                   help="effective rank: fewest singular values holding --energy of sum s^2, or #{s > tol s_1}")
    a.add_argument("--energy", type=float, default=0.99)
    a.add_argument("--tol", type=float, default=1e-3)
    a.add_argument("--ignore", help="comma-separated layer names never to prune")
    a.add_argument("--min-width", type=float, default=0.05, help="smallest kept fraction of any unit")
    a.add_argument("--round-to", type=int, default=1, help="keep widths multiples of this")
    a.add_argument("--report", help="also write an HTML page with the singular-value spectra to this file")
    a.set_defaults(func=cmd_analyze)

    m = sub.add_parser("methods", help="list methods, criteria and allocators")
    m.add_argument("--json", action="store_true")
    m.set_defaults(func=cmd_methods)

    t = sub.add_parser("train", help="train a dense model (SGD, one-cycle, label smoothing)")
    _model_args(t)
    t.add_argument("--out", required=True)
    t.add_argument("--epochs", type=int, default=20)
    t.add_argument("--lr", type=float, default=0.2)
    t.add_argument("--batch-size", type=int, default=256)
    t.add_argument("--max-steps", type=int, help="stop each epoch after this many steps (quick runs)")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--resume", action="store_true", help="continue the run checkpointed in --out")
    t.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    t.set_defaults(func=cmd_train)

    x = sub.add_parser("export", help="export a model to ONNX or TorchScript")
    _model_args(x, data=False)
    x.add_argument("--format", choices=["onnx", "torchscript"], required=True)
    x.add_argument("--out", required=True)
    x.set_defaults(func=cmd_export)

    b = sub.add_parser("bench-latency", help="time a saved run in its inference form with torch.utils.benchmark and (--onnx) onnxruntime")
    b.add_argument("run_dir", metavar="MODEL_DIR", help="an --out directory of prunekit compress")
    b.add_argument("--model", help="built-in name (default: the one recorded in the run's summary.json)")
    b.add_argument("--in-channels", type=int)
    b.add_argument("--num-classes", type=int)
    b.add_argument("--threads", type=int, default=1)
    b.add_argument("--batches", default="1,64", help="comma-separated batch sizes")
    b.add_argument("--seconds", type=float, default=1.0, help="blocked_autorange(min_run_time=...) per measurement")
    b.add_argument("--dense", action="store_true", help="also time the dense model (--checkpoint) and the speed-up")
    b.add_argument("--checkpoint", help="the dense weights, for --dense")
    b.add_argument("--onnx", action="store_true", help="also time the model exported to ONNX with onnxruntime "
                                                       "(MODEL_DIR/model.onnx if present, else exported to a temp dir)")
    b.add_argument("--json", action="store_true")
    b.set_defaults(func=cmd_bench_latency)

    r = sub.add_parser("report", help="write the self-contained HTML report of a compress or sweep output directory")
    r.add_argument("run_dir", metavar="RUN_DIR", help="an --out directory of prunekit compress or prunekit sweep")
    r.add_argument("--out", help="the HTML file to write (default: RUN_DIR/report.html)")
    r.add_argument("--json", action="store_true", help="print machine-readable JSON on stdout")
    r.set_defaults(func=cmd_report)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return args.func(args)
    except PrunekitError as e:
        print(f"prunekit: error: {e}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("prunekit: interrupted; nothing was written", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
