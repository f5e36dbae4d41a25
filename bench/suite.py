"""The benchmark of ../shared/BENCHMARKS.md: every prunekit method against Torch-Pruning, side by side.

    python bench/suite.py            # the workload (GPU machine): ResNet-56 / Fashion-MNIST, 50/20/10% MACs,
                                     # 10 fine-tuning epochs, two seeds -> bench/results/suite.{json,md,png}
    python bench/suite.py --quick    # CPU smoke test of the suite itself, minutes -> bench/results/suite_quick.*

Both sides start from the same dense checkpoint, are counted with the same MAC counter
(``prunekit.count``: conv + linear), re-estimate BatchNorm the same way and are fine-tuned by the
same ``prunekit.train.fit`` with the same recipe (distillation from the dense model for both).
Every run is written to the JSON as soon as it finishes and recorded runs are skipped, so the
same command continues an interrupted suite (``--stop-after`` ends it cleanly before a time limit).
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import sys
import time
import warnings
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch
import torch.nn.functional as F
import torch_pruning as tp
from torch import nn
from torch.utils import benchmark
from torch.utils.data import Subset

import prunekit
from prunekit import io
from prunekit.data import dataset_info, load_dataset
from prunekit.errors import ConfigError, PrunekitError
from prunekit.methods import PRESETS
from prunekit.models import create_model
from prunekit.signals import Signals
from prunekit.sweep import plot_accuracy_vs_macs
from prunekit.train import Recipe, evaluate, fit, recalibrate_bn

ROOT = Path(__file__).resolve().parent.parent
TP_METHODS = {  # name -> (importance, global ranking); TP's own pruner steps until MACs <= target
    "tp:l1-layer": (lambda: tp.importance.MagnitudeImportance(p=1), False),
    "tp:group-l2-global": (lambda: tp.importance.GroupMagnitudeImportance(p=2), True),
    "tp:group-taylor-global": (lambda: tp.importance.GroupTaylorImportance(), True),
}
TP_STEPS, TP_FINAL_RATIO = 200, 0.9  # BENCHMARKS.md: 200 steps, stop when MACs <= target
PLAN_SECONDS = 30.0  # BENCHMARKS.md: time to a plan for ResNet-56 on the 2-core CPU (plans are always made there)
# OpenMP settings change CPU timings a lot: with other jobs on a 2-core machine, spinning (the
# default) made 2-thread forward passes ~100x slower than OMP_WAIT_POLICY=PASSIVE; shown when set
ENV_SHOWN = ("OMP_WAIT_POLICY", "OMP_NUM_THREADS", "CUDA_VISIBLE_DEVICES")


@dataclass(frozen=True)
class Config:
    """What the numbers depend on; a results file is only continued with the same Config."""

    model: str = "resnet56"
    dataset: str = "fmnist"
    checkpoint: str | None = None  # None: train with dense_recipe (saved under --work for reuse)
    targets: tuple[float, ...] = (0.5, 0.2, 0.1)  # fractions of the dense MACs
    finetune_targets: tuple[float, ...] = (0.5, 0.2)  # the others are measured after BatchNorm re-estimation only
    seeds: tuple[int, ...] = (0, 1)
    dense_recipe: dict = field(default_factory=lambda: Recipe().to_dict())
    finetune_recipe: dict = field(default_factory=lambda: Recipe(epochs=10, lr=0.05).to_dict())
    train_images: int | None = None  # None: the whole split
    test_images: int | None = None
    bn_batches: int = 20  # of 128 training images
    cpu_batches: tuple[int, ...] = (1, 64)
    gpu_batches: tuple[int, ...] = (1, 1024)
    latency_seconds: float = 1.0  # blocked_autorange(min_run_time=...)
    threads: int = 2

    def identity(self) -> dict:
        """The settings that must match to add runs to an existing results file (JSON form)."""
        return identity(asdict(self))


def identity(config: dict) -> dict:
    return {k: v for k, v in json.loads(json.dumps(config)).items() if k not in ("targets", "seeds")}


QUICK = Config(model="resnet20", checkpoint="checkpoints/fmnist-resnet20/model.safetensors", seeds=(0,),
               finetune_recipe=Recipe(epochs=1, lr=0.05, batch_size=128, max_steps_per_epoch=4).to_dict(),
               train_images=512, test_images=1000, bn_batches=4, latency_seconds=0.2)


# -- data and the dense model ---------------------------------------------------------------------
def subset(data, n: int | None, seed: int = 0):
    """A fixed random ``n`` items (all when None), the same for every run."""
    if n is None or n >= len(data):
        return data
    return Subset(data, torch.randperm(len(data), generator=torch.Generator().manual_seed(seed))[:n].tolist())


def datasets(cfg: Config, root: str | None) -> dict:
    info = dataset_info(cfg.dataset)
    load = lambda split, augment=False: load_dataset(cfg.dataset, root=root, split=split, augment=augment)  # noqa: E731
    return {"train": subset(load("train"), cfg.train_images), "train_aug": subset(load("train", True), cfg.train_images),
            "test": subset(load("test"), cfg.test_images), "shape": (info["in_channels"], info["image_size"],
                                                                      info["image_size"]), "classes": info["num_classes"]}


def dense_model(cfg: Config, data: dict, work: Path, device: str) -> nn.Module:
    """The checkpoint, or a model trained with the dense recipe (checkpointed per epoch, saved for reuse)."""
    model = create_model(cfg.model, in_channels=data["shape"][0], num_classes=data["classes"])
    path = Path(cfg.checkpoint) if cfg.checkpoint else work / "dense.safetensors"
    if path.is_file():
        return io.load_weights(model, path).eval()
    if cfg.checkpoint:
        raise ConfigError(f"checkpoint {cfg.checkpoint} does not exist; pass an existing --checkpoint or none to train one")
    print(f"training the dense {cfg.model} ({cfg.dense_recipe['epochs']} epochs); saved to {path} for reuse", flush=True)
    io.ensure_dir(work)
    fit(model, data["train_aug"], Recipe(**cfg.dense_recipe), checkpoint=work / "dense_training.pt", resume=True,
        device=device, log=work / "dense_log.jsonl")
    io.save_weights(model, path)
    return model.cpu().eval()


# -- pruning: prunekit and Torch-Pruning ----------------------------------------------------------
def prune_prunekit(dense: nn.Module, x: torch.Tensor, method: str, target: float, seed: int, train) -> tuple:
    result = prunekit.compress(dense, x, {"flops": target}, method=method, data=train, seed=seed)
    return result.model, {"widths": [u["kept"] for u in result.summary["units"]]}


def prune_tp(dense: nn.Module, x: torch.Tensor, method: str, target: float, seed: int, train) -> tuple:
    """Torch-Pruning's MetaPruner, stepped until the MACs (counted like prunekit's) reach the target."""
    make_importance, global_pruning = TP_METHODS[method]
    model = copy.deepcopy(dense).eval()
    classifier = [m for m in model.modules() if isinstance(m, nn.Linear)][-1:]
    pruner = tp.pruner.MetaPruner(model, x, importance=make_importance(), global_pruning=global_pruning,
                                  pruning_ratio=TP_FINAL_RATIO, iterative_steps=TP_STEPS, ignored_layers=classifier)
    goal = target * prunekit.count(dense, x)[0]
    batches = list(Signals(train, 5, 128, seed).batches()) if method.startswith("tp:group-taylor") else []
    for step in range(1, TP_STEPS + 1):
        if batches:  # Taylor needs fresh gradients of the current model at every step
            model.zero_grad(set_to_none=True)
            xb, yb = batches[step % len(batches)]
            F.cross_entropy(model(xb), yb).backward()
        pruner.step()
        reached = prunekit.count(model, x)[0] <= goal
        if reached:
            break
    model.zero_grad(set_to_none=True)
    return model, {"tp_steps": step, "tp_reached_target": reached}


# -- measurements ---------------------------------------------------------------------------------
def cpu_latency_ms(model: nn.Module, shape, batch: int, threads: int, seconds: float) -> float:
    """Median latency of one forward pass (torch.utils.benchmark, ``threads`` threads)."""
    model = copy.deepcopy(model).cpu().eval()
    x = torch.randn(batch, *shape)

    @torch.inference_mode()
    def forward():
        return model(x)

    forward()
    timer = benchmark.Timer("forward()", globals={"forward": forward}, num_threads=threads)
    return timer.blocked_autorange(min_run_time=seconds).median * 1e3


def gpu_latency_ms(model: nn.Module, shape, batch: int, seconds: float) -> float:
    """Median latency of one replay of a CUDA graph of the forward pass (launch overhead removed)."""
    model = copy.deepcopy(model).cuda().eval()
    x = torch.randn(batch, *shape, device="cuda")
    with torch.no_grad():
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(3):
                model(x)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            model(x)

    def replay():
        graph.replay()
        torch.cuda.synchronize()

    replay()
    return benchmark.Timer("replay()", globals={"replay": replay}).blocked_autorange(min_run_time=seconds).median * 1e3


def latencies(model: nn.Module, cfg: Config, shape) -> dict:
    out = {"cpu": {str(b): cpu_latency_ms(model, shape, b, cfg.threads, cfg.latency_seconds) for b in cfg.cpu_batches},
           "gpu": None}
    if torch.cuda.is_available():
        try:
            out["gpu"] = {str(b): gpu_latency_ms(model, shape, b, cfg.latency_seconds) for b in cfg.gpu_batches}
        except RuntimeError as e:  # a capture failure must not lose the run's other numbers
            warnings.warn(f"CUDA graph latency failed: {e}")
            out["gpu"] = {"error": str(e).splitlines()[0]}
    return out


def run_one(cfg: Config, method: str, target: float, seed: int, dense: nn.Module, dense_macs: int, data: dict,
            device: str) -> dict:
    """Plan (on the CPU), re-estimate BatchNorm, evaluate, fine-tune, evaluate, time the forward pass."""
    x = torch.zeros(1, *data["shape"])
    prune = prune_tp if method in TP_METHODS else prune_prunekit
    t0 = time.perf_counter()
    model, extra = prune(dense, x, method, target, seed, data["train"])
    seconds_to_plan = time.perf_counter() - t0
    macs, params = prunekit.count(model, x)
    model.to(device)
    recalibrate_bn(model, data["train"], batches=cfg.bn_batches, seed=seed)
    record = {"method": method, "family": "torch-pruning" if method in TP_METHODS else "prunekit", "target": target,
              "seed": seed, "macs": macs, "params": params, "macs_target": target * dense_macs,
              "accuracy_bn": evaluate(model, data["test"]), "accuracy_final": None,
              "seconds_to_plan": seconds_to_plan, "seconds_to_finetune": None, **extra}
    if target in cfg.finetune_targets:
        t0 = time.perf_counter()
        teacher = copy.deepcopy(dense).to(device).eval()
        fit(model, data["train_aug"], Recipe(**{**cfg.finetune_recipe, "seed": seed}), teacher=teacher, device=device)
        record["seconds_to_finetune"] = time.perf_counter() - t0
        record["accuracy_final"] = evaluate(model, data["test"])
    record["latency_ms"] = latencies(model.cpu(), cfg, data["shape"])
    return record


# -- aggregation and the goals of BENCHMARKS.md -------------------------------------------------
def mean_spread(values: list[float]) -> tuple[float, float]:
    """Mean and half the range over seeds (0 for one seed)."""
    return statistics.fmean(values), (max(values) - min(values)) / 2


def aggregate(runs: list[dict], key: str) -> dict[tuple[str, float], dict]:
    """(method, target) -> mean/spread of ``key`` over seeds, plus the seeds and mean MACs."""
    groups: dict[tuple[str, float], list[dict]] = {}
    for r in runs:
        if r.get(key) is not None:
            groups.setdefault((r["method"], r["target"]), []).append(r)
    out = {}
    for k, rs in groups.items():
        mean, spread = mean_spread([r[key] for r in rs])
        out[k] = {"mean": mean, "spread": spread, "seeds": len(rs), "macs": statistics.fmean(r["macs"] for r in rs),
                  "family": rs[0]["family"]}
    return out


def best(agg: dict, target: float, family: str, exclude: tuple[str, ...] = ()) -> tuple[str, dict] | None:
    rows = [(m, v) for (m, t), v in agg.items() if t == target and v["family"] == family and m not in exclude]
    return max(rows, key=lambda mv: mv[1]["mean"]) if rows else None


def goal(text: str, met: bool | None, detail: str) -> dict:
    return {"goal": text, "met": met, "detail": detail}


def goal_accuracy_20(final: dict) -> dict:
    text = "20% MACs: best prunekit >= best Torch-Pruning + 0.3 points (mean of two seeds, beyond their spread)"
    pk, ref = best(final, 0.2, "prunekit"), best(final, 0.2, "torch-pruning")
    if not pk or not ref:
        return goal(text, None, "not measured")
    (pm, p), (tm, t) = pk, ref
    detail = f"{pm} {p['mean']:.2f} ± {p['spread']:.2f} vs {tm} {t['mean']:.2f} ± {t['spread']:.2f}"
    if min(p["seeds"], t["seeds"]) < 2:
        return goal(text, None, detail + " (needs two seeds)")
    return goal(text, p["mean"] >= t["mean"] + 0.3 and p["mean"] - p["spread"] > t["mean"] + t["spread"], detail)


def goal_accuracy_50(final: dict, dense_accuracy: float) -> dict:
    text = "50% MACs: best prunekit >= the dense model"
    pk = best(final, 0.5, "prunekit")
    if not pk:
        return goal(text, None, "not measured")
    detail = f"{pk[0]} {pk[1]['mean']:.2f} ± {pk[1]['spread']:.2f} vs dense {dense_accuracy:.2f}"
    return goal(text, pk[1]["mean"] >= dense_accuracy if pk[1]["seeds"] >= 2 else None,
                detail + ("" if pk[1]["seeds"] >= 2 else " (needs two seeds)"))


def goal_no_finetuning_10(bn: dict) -> dict:
    """'Clearly ahead' is read as: by at least 1 point and beyond both spreads."""
    text = "10% MACs, BatchNorm re-estimated, no fine-tuning: best prunekit clearly ahead of Torch-Pruning and random"
    pk = best(bn, 0.1, "prunekit", exclude=("random",))
    others = [o for o in (best(bn, 0.1, "torch-pruning"), ("random", bn.get(("random", 0.1)))) if o and o[1]]
    if not pk or len(others) < 2:
        return goal(text, None, "not measured")
    rival = max(others, key=lambda mv: mv[1]["mean"])
    p, r = pk[1], rival[1]
    detail = f"{pk[0]} {p['mean']:.2f} ± {p['spread']:.2f} vs {rival[0]} {r['mean']:.2f} ± {r['spread']:.2f}"
    if min(p["seeds"], r["seeds"]) < 2:
        return goal(text, None, detail + " (needs two seeds)")
    return goal(text, p["mean"] - r["mean"] >= 1.0 and p["mean"] - p["spread"] > r["mean"] + r["spread"], detail)


def goal_budget(runs: list[dict]) -> dict:
    text = "Budget: MACs within 1% of the requested budget, never above it (every prunekit run)"
    pk = [r for r in runs if r["family"] == "prunekit"]
    if not pk:
        return goal(text, None, "not measured")
    gaps = [(r["macs_target"] - r["macs"]) / r["macs_target"] for r in pk]
    return goal(text, all(0 <= g <= 0.01 for g in gaps), f"gap below target {100 * min(gaps):.2f}% to {100 * max(gaps):.2f}%")


def goal_plan_time(runs: list[dict]) -> dict:
    limit = PLAN_SECONDS
    text = f"Time to a plan <= {limit:.0f} s on the CPU (every prunekit method)"
    pk = [r for r in runs if r["family"] == "prunekit"]
    if not pk:
        return goal(text, None, "not measured")
    worst = max(pk, key=lambda r: r["seconds_to_plan"])
    return goal(text, worst["seconds_to_plan"] <= limit, f"slowest: {worst['method']} {worst['seconds_to_plan']:.1f} s")


def speed_ratio(r: dict, dense: dict, batch: str) -> float:
    """CPU latency speed-up at ``batch`` divided by the MACs reduction."""
    speedup = dense["latency_ms"]["cpu"][batch] / r["latency_ms"]["cpu"][batch]
    return speedup / (dense["macs"] / r["macs"])


def goal_speed(runs: list[dict], dense: dict, batch: str) -> dict:
    text = f"CPU latency speed-up at batch {batch} >= 0.85 x the MACs reduction (every prunekit run)"
    pk = [r for r in runs if r["family"] == "prunekit"]
    if not pk:
        return goal(text, None, "not measured")
    ratios = sorted((speed_ratio(r, dense, batch), r["method"], r["target"]) for r in pk)
    worst = ratios[0]
    return goal(text, worst[0] >= 0.85, f"ratio {ratios[0][0]:.2f} ({worst[1]} at {worst[2]:.0%}) to {ratios[-1][0]:.2f}")


def goals(results: dict) -> list[dict]:
    runs, dense = results["runs"], results["dense"]
    final, bn = aggregate(runs, "accuracy_final"), aggregate(runs, "accuracy_bn")
    batch = str(max(results["config"]["cpu_batches"]))
    return [goal_accuracy_20(final), goal_accuracy_50(final, dense["accuracy"]), goal_no_finetuning_10(bn),
            goal_budget(runs), goal_plan_time(runs), goal_speed(runs, dense, batch)]


# -- reporting ----------------------------------------------------------------------------------
def cell(values: list[float | None], fmt: str = "{:.2f}") -> str:
    values = [v for v in values if v is not None]
    if not values:
        return "-"
    mean, spread = mean_spread(values)
    return fmt.format(mean) + (f" ± {fmt.format(spread)}" if len(values) > 1 else "")


def table(results: dict, target: float) -> list[str]:
    dense, cfg = results["dense"], results["config"]
    b_small, b_large = (str(b) for b in cfg["cpu_batches"])
    gpu = any(r["latency_ms"].get("gpu") for r in results["runs"])
    head = ["method", "seeds", "acc. BN re-est. %", "final acc. %", "MACs (M)", "params (K)", "plan s", "fine-tune s",
            f"CPU speed-up b{b_small}", f"CPU speed-up b{b_large}", f"b{b_large} speed-up / MACs reduction"]
    if gpu:
        head += [f"GPU ms b{b}" for b in cfg["gpu_batches"]]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    order = {m: i for i, m in enumerate(results["methods"])}
    rows = sorted({r["method"] for r in results["runs"] if r["target"] == target}, key=lambda m: order.get(m, 99))
    for method in rows:
        rs = [r for r in results["runs"] if r["method"] == method and r["target"] == target]
        cpu = lambda b: cell([dense["latency_ms"]["cpu"][b] / r["latency_ms"]["cpu"][b] for r in rs], "{:.2f}x")  # noqa: E731
        row = [method, str(len(rs)), cell([r["accuracy_bn"] for r in rs]), cell([r["accuracy_final"] for r in rs]),
               cell([r["macs"] / 1e6 for r in rs]), cell([r["params"] / 1e3 for r in rs], "{:.1f}"),
               cell([r["seconds_to_plan"] for r in rs], "{:.1f}"), cell([r["seconds_to_finetune"] for r in rs], "{:.1f}"),
               cpu(b_small), cpu(b_large), cell([speed_ratio(r, dense, b_large) for r in rs])]
        if gpu:
            row += [cell([(r["latency_ms"]["gpu"] or {}).get(str(b)) for r in rs], "{:.3f}") for b in cfg["gpu_batches"]]
        lines.append("| " + " | ".join(row) + " |")
    return lines


def summary_table(results: dict) -> list[str]:
    """One row per method: accuracy after BatchNorm re-estimation and after fine-tuning at every target."""
    targets = sorted({r["target"] for r in results["runs"]}, reverse=True)
    tuned = results["config"]["finetune_targets"]
    head = ["method"]
    for t in targets:
        head += [f"{t:.0%} BN re-est."] + ([f"{t:.0%} fine-tuned"] if t in tuned else [])
    lines = ["| " + " | ".join(head + ["plan s (slowest)"]) + " |", "|" + "---|" * (len(head) + 1)]
    order = {m: i for i, m in enumerate(results["methods"])}
    for method in sorted({r["method"] for r in results["runs"]}, key=lambda m: order.get(m, 99)):
        row = [method]
        for t in targets:
            rs = [r for r in results["runs"] if r["method"] == method and r["target"] == t]
            row += [cell([r["accuracy_bn"] for r in rs])] + ([cell([r["accuracy_final"] for r in rs])] if t in tuned else [])
        plan = max(r["seconds_to_plan"] for r in results["runs"] if r["method"] == method)
        lines.append("| " + " | ".join(row + [f"{plan:.1f}"]) + " |")
    return lines


def markdown(results: dict, quick: bool) -> str:
    cfg, dense = results["config"], results["dense"]
    ft = cfg["finetune_recipe"]
    lines = [f"# Benchmark: prunekit vs Torch-Pruning {tp.__version__}, {cfg['model']} on {cfg['dataset']}", ""]
    if quick:
        lines += ["> **Smoke test, not the benchmark.** `--quick` checks that the suite runs end to end on a CPU: a",
                  f"> {cfg['model']} checkpoint, {cfg['train_images']} training images, fine-tuning of "
                  f"{_n(ft['epochs'], 'epoch')} x {ft['max_steps_per_epoch']} steps, {_n(len(cfg['seeds']), 'seed')},",
                  f"> {cfg['test_images']} test images. Its accuracies say nothing about the methods, and its timings",
                  "> depend on what else the machine was running (load average below); the goals are evaluated only",
                  "> to exercise the code. The real table comes from `python bench/suite.py` on a GPU machine.", ""]
    machines = sorted({r.get("machine", results["machine"]) for r in results["runs"]} | {results["machine"]})
    loads = [r["load_average"] for r in results["runs"] if "load_average" in r]
    load = f" (1-minute load average during the runs: {min(loads):.1f} to {max(loads):.1f})" if loads else ""
    lines += [f"Command: `{results['command']}`", "", "Machine: " + "; ".join(machines) + load, "",
              f"Dense model: {dense['accuracy']:.2f}% test accuracy, {dense['macs'] / 1e6:.2f} M MACs, "
              f"{dense['params'] / 1e3:.1f} K params ({dense['source']}).", "",
              f"Both sides: the same dense checkpoint; MACs counted by `prunekit.count` (conv + linear); BatchNorm "
              f"re-estimated on {cfg['bn_batches']} x 128 training images; fine-tuned at {_pct(cfg['finetune_targets'])} "
              f"MACs by the same `prunekit.train.fit` ({_n(ft['epochs'], 'epoch')}, batch {ft['batch_size']}, SGD Nesterov, "
              f"one-cycle peak LR {ft['lr']}, label smoothing {ft['label_smoothing']}, distillation from the dense model "
              f"with weight {ft['kd_weight']} at T={ft['kd_temperature']}). Final accuracy is the last epoch's. "
              f"Plans are made on the CPU with {_n(cfg['threads'], 'thread')}. Torch-Pruning: `MetaPruner` with "
              f"pruning_ratio {TP_FINAL_RATIO} over {TP_STEPS} steps, stopped at the first step with MACs <= target. "
              f"Values are mean ± half the range over seeds; speed-ups are against the dense model's latency "
              f"(CPU: torch.utils.benchmark, {_n(cfg['threads'], 'thread')}).", ""]
    lines += ["## Summary (test accuracy %, mean ± half the range over seeds)", ""] + summary_table(results) + [""]
    for target in sorted({r["target"] for r in results["runs"]}, reverse=True):
        tuned = "fine-tuned" if target in cfg["finetune_targets"] else "no fine-tuning"
        lines += [f"## {target:.0%} of the dense MACs ({tuned})", ""] + table(results, target) + [""]
    lines += ["## Goals of BENCHMARKS.md", "", "| goal | met | detail |", "|---|---|---|"]
    for g in goals(results):
        mark = {True: "met", False: "**not met**", None: "n/a"}[g["met"]]
        lines.append(f"| {g['goal']} | {mark} | {g['detail']} |")
    return "\n".join(lines) + "\n"


def _n(count: int, word: str) -> str:
    return f"{count} {word}" + ("" if count == 1 else "s")


def _pct(targets) -> str:
    return " and ".join(f"{t:.0%}" for t in targets)


def plots(results: dict, base: Path, quick: bool) -> None:
    """Final accuracy (fine-tuned targets) and accuracy right after pruning, against MACs."""
    dense = results["dense"]
    for key, suffix, title in (("accuracy_final", "", "after fine-tuning"),
                               ("accuracy_bn", "_bn", "BatchNorm re-estimated, no fine-tuning")):
        agg = aggregate(results["runs"], key)
        series, errors = {}, {}
        for method in results["methods"]:
            pts = sorted((v["macs"], v["mean"], v["spread"]) for (m, _), v in agg.items() if m == method)
            if pts:
                series[method] = [(m, a) for m, a, _ in pts]
                errors[method] = [s for _, _, s in pts]
        if series:
            title = f"{results['config']['model']} / {results['config']['dataset']}: {title}"
            plot_accuracy_vs_macs(series, base.with_name(base.name + suffix + ".png"), errors=errors,
                                  title=title + (" (smoke test, not the benchmark)" if quick else ""),
                                  dense=(dense["macs"], dense["accuracy"]), dashed=list(TP_METHODS))


def machine(device: str, threads: int) -> str:
    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    text = (f"{cpu}, {os.cpu_count()} cores ({_n(threads, 'thread')} used), torch {torch.__version__}, "
            f"torch-pruning {tp.__version__}, device {device}")
    if torch.cuda.is_available():
        text += f" ({torch.cuda.get_device_name()})"
    return text


# -- the command ----------------------------------------------------------------------------------
def all_methods() -> list[str]:
    return PRESETS.names() + ["l1+global"] + list(TP_METHODS)


def items(text: str, parse, option: str) -> tuple:
    try:
        chosen = tuple(parse(t.strip()) for t in text.split(",") if t.strip())
    except ValueError:
        raise ConfigError(f"cannot read {option} {text!r}; give comma-separated numbers") from None
    if not chosen:
        raise ConfigError(f"{option} is empty; give comma-separated values")
    return chosen


def choose_methods(text: str | None) -> list[str]:
    known = all_methods()
    if not text:
        return known
    chosen = list(items(text, str, "--methods"))
    unknown = [m for m in chosen if m not in known]
    if unknown:
        raise ConfigError(f"unknown method {unknown[0]!r}; choose from {', '.join(known)}")
    return chosen


def load_results(path: Path, cfg: Config, fresh: bool) -> dict | None:
    """The results recorded under the same Config; a different Config is refused, not mixed in."""
    if fresh or not path.is_file():
        return None
    old = json.loads(path.read_text())
    ours, theirs = cfg.identity(), identity(old["config"])
    if theirs != ours:
        diff = sorted(k for k in ours.keys() | theirs.keys() if theirs.get(k) != ours.get(k))
        raise ConfigError(f"{path} was made with other settings ({', '.join(diff)}); pass --fresh or another --name")
    return old


def config_from(args) -> Config:
    cfg = QUICK if args.quick else Config()
    if args.checkpoint:
        cfg = replace(cfg, checkpoint=args.checkpoint)
    if args.targets:
        targets = items(args.targets, float, "--targets")
        if not all(0 < t <= 1 for t in targets):
            raise ConfigError(f"--targets are fractions of the dense MACs in (0, 1], got {args.targets}")
        cfg = replace(cfg, targets=targets)
    if args.seeds:
        cfg = replace(cfg, seeds=items(args.seeds, int, "--seeds"))
    return replace(cfg, threads=args.threads)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="CPU smoke test of the suite (minutes), not the benchmark")
    p.add_argument("--name", help="results file name (default: suite, or suite_quick with --quick)")
    p.add_argument("--results", default=str(ROOT / "bench" / "results"), help="directory of the JSON, table and plots")
    p.add_argument("--work", default=str(ROOT / "runs" / "bench"), help="where a trained dense model is kept for reuse")
    p.add_argument("--checkpoint", help="dense weights to start from (default: train one with the BENCHMARKS.md recipe)")
    p.add_argument("--data-dir", help="dataset directory (default: the dataset's own)")
    p.add_argument("--methods", help="comma-separated subset of: " + ", ".join(all_methods()))
    p.add_argument("--targets", help="comma-separated MACs fractions (default 0.5,0.2,0.1)")
    p.add_argument("--seeds", help="comma-separated seeds (default 0,1; --quick 0)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                   help="fine-tuning and evaluation device; plans are always made on the CPU")
    p.add_argument("--threads", type=int, default=2, help="CPU threads for planning and CPU latency")
    p.add_argument("--stop-after", type=float, help="start no new run after this many seconds (rerun to continue)")
    p.add_argument("--fresh", action="store_true", help="discard the runs already recorded in the results file")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return run(args, argv if argv is not None else sys.argv[1:])
    except PrunekitError as e:
        print(f"suite: error: {e}", file=sys.stderr)
        return 2


def run(args, argv: list[str]) -> int:
    t_start = time.perf_counter()
    cfg = config_from(args)
    methods = choose_methods(args.methods)
    name = args.name or ("suite_quick" if args.quick else "suite")
    base = io.ensure_dir(args.results) / name
    old = load_results(base.with_suffix(".json"), cfg, args.fresh)
    torch.set_num_threads(cfg.threads)
    data = datasets(cfg, args.data_dir)
    dense = dense_model(cfg, data, Path(args.work) / name, args.device)
    here = machine(args.device, cfg.threads)
    env = "".join(f"{k}={os.environ[k]} " for k in ENV_SHOWN if k in os.environ)
    results = {"config": asdict(cfg), "command": f"{env}python bench/suite.py " + " ".join(argv), "machine": here,
               "methods": list(dict.fromkeys((old or {}).get("methods", []) + methods)),
               "dense": old["dense"] if old else dense_record(dense, cfg, data, args),
               "runs": old["runs"] if old else []}
    done = {(r["method"], r["target"], r["seed"]) for r in results["runs"]}
    todo = [(m, t, s) for t in cfg.targets for m in methods for s in cfg.seeds if (m, t, s) not in done]
    print(f"{len(todo)} runs to do ({len(done)} already recorded in {base.with_suffix('.json')})", flush=True)
    for i, (method, target, seed) in enumerate(todo):
        if args.stop_after and time.perf_counter() - t_start > args.stop_after:
            print(f"--stop-after reached: {len(todo) - i} runs left; run the same command again to continue")
            break
        record = run_one(cfg, method, target, seed, dense, results["dense"]["macs"], data, args.device)
        results["runs"].append({**record, "machine": here, "load_average": os.getloadavg()[0]})
        save(results, base, args.quick)
        final = record["accuracy_final"]
        print(f"[{i + 1}/{len(todo)}] {method} {target:.0%} seed {seed}: BN {record['accuracy_bn']:.2f}%, final "
              f"{'-' if final is None else f'{final:.2f}%'}, MACs {record['macs'] / 1e6:.2f} M, "
              f"plan {record['seconds_to_plan']:.1f} s", flush=True)
    save(results, base, args.quick)
    plots(results, base, args.quick)
    print(markdown(results, args.quick))
    return 0


def dense_record(dense: nn.Module, cfg: Config, data: dict, args) -> dict:
    """Accuracy, costs and latency of the dense model: what every run is compared with (kept on resume)."""
    macs, params = prunekit.count(dense, torch.zeros(1, *data["shape"]))
    return {"accuracy": evaluate(copy.deepcopy(dense).to(args.device), data["test"]), "macs": macs, "params": params,
            "latency_ms": latencies(dense, cfg, data["shape"]),
            "source": cfg.checkpoint or f"trained by the suite with the dense recipe, kept in {args.work}"}


def save(results: dict, base: Path, quick: bool) -> None:
    io.write_json(base.with_suffix(".json"), results)
    io.write_text(base.with_suffix(".md"), markdown(results, quick))


if __name__ == "__main__":
    sys.exit(main())
