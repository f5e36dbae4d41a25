"""The benchmark of ../shared/BENCHMARKS.md: every prunekit method against Torch-Pruning, side by side.

    python bench/suite.py --profile cpu  # the headline (2-core CPU): shipped ResNet-20 and ResNet-56, one-shot at
                                         # 50/20/10% MACs, one epoch of distillation at 50/20% -> bench/results/cpu_suite.*
    python bench/suite.py                # GPU profile: ResNet-56, 10 fine-tuning epochs, two seeds -> bench/results/suite.*
    python bench/suite.py --quick        # CPU smoke test of the suite itself, minutes -> bench/results/suite_quick.*

Both sides start from the same dense checkpoint, are counted with the same MAC counter
(``prunekit.count``: conv + linear), re-estimate BatchNorm on the same seeded training batches and
are fine-tuned by the same ``prunekit.finetune`` (``prunekit.train.fit``) with the same recipe,
distilling from the dense model. One-shot rows (plan, BatchNorm re-estimation, test accuracy,
latency) come before every fine-tuning row, so a partial run already answers the main question.
Every row is written to the JSON as soon as it finishes and recorded rows are skipped, so the same
command continues an interrupted suite (``--stop-after`` ends it cleanly before a time limit).
"""
from __future__ import annotations

import os

# OpenMP settings change CPU timings a lot: with other jobs on a 2-core machine, spinning (the
# default) made 2-thread forward passes ~100x slower than PASSIVE. Set before torch loads OpenMP.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import copy  # noqa: E402
import hashlib  # noqa: E402
import importlib.metadata  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402
from dataclasses import asdict, dataclass, field, replace  # noqa: E402
from datetime import datetime, timezone  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
import torch_pruning as tp  # noqa: E402
from torch import nn  # noqa: E402
from torch.utils import benchmark  # noqa: E402
from torch.utils.data import Subset  # noqa: E402

import prunekit  # noqa: E402
from prunekit import io  # noqa: E402
from prunekit.data import dataset_info, load_dataset  # noqa: E402
from prunekit.errors import ConfigError, PrunekitError  # noqa: E402
from prunekit.auto import CANDIDATE_OPTIONS, PROXY_STEPS  # noqa: E402
from prunekit.methods import list_methods  # noqa: E402
from prunekit.models import create_model  # noqa: E402
from prunekit.signals import Signals  # noqa: E402
from prunekit.sweep import plot_accuracy_vs_macs  # noqa: E402
from prunekit.train import Recipe, evaluate, fit, recalibrate_bn  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import compress_reestimated  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
TP_VERSION = importlib.metadata.version("torch-pruning")  # tp.__version__ of the 1.6.1 wheel still says 1.6.0
TP_METHODS = {  # name -> (importance, global ranking); stepped until MACs <= target (prune_tp)
    "tp:l1-layer": (lambda: tp.importance.MagnitudeImportance(p=1), False),
    "tp:group-l2-global": (lambda: tp.importance.GroupMagnitudeImportance(p=2), True),
    "tp:group-taylor-global": (lambda: tp.importance.GroupTaylorImportance(), True),
    "tp:lamp-global": (lambda: tp.importance.LAMPImportance(p=2), True),
    "tp:fpgm-layer": (lambda: tp.importance.FPGMImportance(p=2), False),
}
# BENCHMARKS.md: 200 steps of the channel ratio up to 0.9, stop when MACs <= target; the last step is
# refined (prune_tp) until MACs land within TP_TOLERANCE below the target where TP's ranking allows.
TP_MAX_RATIO, TP_STEPS, TP_TOLERANCE, TP_HALVINGS = 0.9, 200, 0.002, 5
# Methods listed by prunekit that the suite does not run, with the reason shown in the table.
SKIP: dict[str, str] = {}
# Searches whose cost is reported on its own, not held to the time-to-plan goal (BENCHMARKS.md).
SEARCHES = ("auto", "acp", "trp", "dagger", "fisher_iterative")  # trp, dagger, fisher_iterative: training time
# Methods that train the weights while they plan: their "one-shot" accuracy includes that training, so
# they are marked in the tables and left out of the one-shot bests and goals.
TRAINS_WEIGHTS = ("trp", "fisher_iterative")
# Options a method runs with in the suite (CPU-sized searches and training steps), recorded in each row.
METHOD_OPTIONS: dict[str, dict] = {
    # ACP's official swarm (10 particles x 8 cycles, 10 fitness batches on 2000 held-out images) takes
    # ~35 min for ResNet-20 on 2 loaded cores: a third of the evaluations, each half the size.
    "acp": dict(CANDIDATE_OPTIONS["acp"]),  # the same swarm method auto tries
    # TRP trains: 100 steps of batch 64 (0.11 of an epoch; a step of batch 128 took ~9 s on 2 loaded cores)
    # instead of the paper's 164 epochs. After so few steps the paper's 0.05 threshold cuts far below the
    # budget (10 steps: 31% MACs for a 50% target), so threshold 0: ranks are set by the budget alone, at
    # the same MACs as the channel-pruning rows
    "trp": {"steps": 100, "batch_size": 64, "threshold": 0.0},
    # Dagger trains its gate generator (weights frozen): 300 steps of batch 128 (0.64 of an epoch);
    # the time is summary["seconds"]["gate_training"]
    "dagger": {"steps": 300, "batch_size": 128},
    # fisher_iterative trains while it masks: one channel step every 2 iterations (the paper: 25) of batch
    # 64, at most 300 steps (0.33 of an epoch), the rest masked at once by the Fisher accumulated so far;
    # the time is summary["seconds"]["fisher_iterative_training"]
    "fisher_iterative": {"interval": 2, "batch_size": 64, "max_steps": 300},
    # efa refuses a budget beyond its redundancy estimate (ResNet-20: 39.6% of MACs removable) unless told
    # to go on; 50% and 20% MACs are both beyond it, so the rows say how it does past its own limit
    "efa": {"exceed": 1},
}
# What a method is told when its model will be fine-tuned (as `prunekit compress --finetune-epochs` tells
# it): auto ranks its 3 best one-shot candidates after 100 steps of distillation at the recipe's peak LR
FINETUNE_OPTIONS: dict[str, dict] = {"auto": {"finetune_steps": PROXY_STEPS, "finetune_lr": 0.05}}
# Layer reconstruction (compress's default, 512 images) on the auto rows only: the single methods'
# rows measure criterion and allocation alone, BatchNorm re-estimated, the treatment Torch-Pruning's
# models get; auto is the tool's full default (its choice plus reconstruction).
RECONSTRUCT = {"auto": 512}
PLAN_SECONDS = 30.0  # BENCHMARKS.md: time to a plan for ResNet-56 on the 2-core CPU (plans are always made there)
ENV_SHOWN = ("OMP_WAIT_POLICY", "OMP_NUM_THREADS", "CUDA_VISIBLE_DEVICES")
PHASES = ("oneshot", "finetune")


@dataclass(frozen=True)
class ModelSpec:
    """One dense model of a profile and where it is fine-tuned."""

    name: str
    checkpoint: str | None = None  # relative to the repository; None: train with dense_recipe (saved for reuse)
    finetune_targets: tuple[float, ...] = (0.5, 0.2)
    seeds: tuple[int, ...] = (0, 1)  # fine-tuning seeds (the plan is the one-shot one, seed 0)
    optional: bool = False  # skipped with a message while the checkpoint is absent


@dataclass(frozen=True)
class Config:
    """What the numbers depend on; a results file is only continued with the same Config (bar the
    models and targets, which only add rows)."""

    models: tuple[ModelSpec, ...] = (ModelSpec("resnet56"),)
    dataset: str = "fmnist"
    targets: tuple[float, ...] = (0.5, 0.2, 0.1)  # fractions of the dense MACs, all measured one-shot
    dense_recipe: dict = field(default_factory=lambda: Recipe().to_dict())
    finetune_recipe: dict = field(default_factory=lambda: Recipe(epochs=10, lr=0.05).to_dict())
    train_images: int | None = None  # None: the whole split
    test_images: int | None = None
    bn_batches: int = 20  # of 128 training images
    cpu_batches: tuple[int, ...] = (1, 64)
    gpu_batches: tuple[int, ...] = (1, 1024)
    latency_seconds: float = 1.0  # blocked_autorange(min_run_time=...)
    threads: int = 2
    tp_steps: int = TP_STEPS  # Torch-Pruning's ratio steps up to TP_MAX_RATIO
    tp_halvings: int = TP_HALVINGS

    def identity(self) -> dict:
        """The settings that must match to add runs to an existing results file (JSON form)."""
        return identity(asdict(self))


def identity(config: dict) -> dict:
    return {k: v for k, v in json.loads(json.dumps(config)).items() if k not in ("targets", "models")}


R20 = "checkpoints/fmnist-resnet20/model.safetensors"
PROFILES = {
    "gpu": Config(),
    # BENCHMARKS.md workload 0: one epoch (batch 256, the suite's recipe, peak LR 0.05) on the whole training set
    "cpu": Config(models=(ModelSpec("resnet20", R20, (0.5, 0.2), (0, 1)),
                          ModelSpec("resnet56", "checkpoints/fmnist-resnet56/model.safetensors", (0.2,), (0,),
                                    optional=True)),
                  finetune_recipe=Recipe(epochs=1, lr=0.05).to_dict(), gpu_batches=()),
}
QUICK = Config(models=(ModelSpec("resnet20", R20, (0.5, 0.2), (0,)),),
               finetune_recipe=Recipe(epochs=1, lr=0.05, batch_size=128, max_steps_per_epoch=4).to_dict(),
               train_images=512, test_images=1000, bn_batches=4, latency_seconds=0.2)
RESULT_NAMES = {"gpu": "suite", "cpu": "cpu_suite", "quick": "suite_quick"}


# -- data and the dense models --------------------------------------------------------------------
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


def checkpoint_path(spec: ModelSpec, work: Path) -> Path:
    if spec.checkpoint is None:
        return work / f"dense_{spec.name}.safetensors"
    path = Path(spec.checkpoint)
    return path if path.is_absolute() else ROOT / path


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def dense_model(cfg: Config, spec: ModelSpec, data: dict, work: Path, device: str) -> nn.Module:
    """The checkpoint, or a model trained with the dense recipe (checkpointed per epoch, saved for reuse)."""
    model = create_model(spec.name, in_channels=data["shape"][0], num_classes=data["classes"])
    path = checkpoint_path(spec, work)
    if path.is_file():
        return io.load_weights(model, path).eval()
    if spec.checkpoint:
        raise ConfigError(f"checkpoint {spec.checkpoint} does not exist; pass an existing --checkpoint or none to train one")
    print(f"training the dense {spec.name} ({cfg.dense_recipe['epochs']} epochs); saved to {path} for reuse", flush=True)
    io.ensure_dir(work)
    fit(model, data["train_aug"], Recipe(**cfg.dense_recipe), checkpoint=work / f"dense_{spec.name}_training.pt",
        resume=True, device=device, log=work / f"dense_{spec.name}_log.jsonl")
    io.save_weights(model, path)
    return model.cpu().eval()


# -- pruning: prunekit and Torch-Pruning ----------------------------------------------------------
def prune_prunekit(dense: nn.Module, x: torch.Tensor, method: str, target: float, seed: int, train,
                   bn_batches: int, finetune: bool = False) -> tuple:
    """``prunekit.compress`` to ``target`` of the MACs; BatchNorm re-estimated on the same seeded
    batches as Torch-Pruning's models (by compress itself where it does that)."""
    options = {**METHOD_OPTIONS.get(method, {}), **(FINETUNE_OPTIONS.get(method, {}) if finetune else {})} or None
    reconstruct = RECONSTRUCT.get(method, 0)
    result = compress_reestimated(dense, x, {"flops": target}, method, train, seed, bn_batches, options, reconstruct)
    extra = {"widths": [u["kept"] for u in result.summary["units"]], "batchnorm": result.summary.get("batchnorm"),
             "method_seconds": {k: round(v, 3) for k, v in result.summary.get("seconds", {}).items()
                                if isinstance(v, (int, float))}}
    if options:
        extra["options"] = options
    if reconstruct:
        extra["reconstruct"] = result.summary["reconstruction"]
    if "auto" in result.summary:
        extra["chosen"] = result.summary["auto"]["chosen"]
        extra["leaderboard"] = [{k: v for k, v in row.items() if k in ("candidate", "heldout_accuracy", "finetuned_accuracy",
                                                                  "finetuned_with_refit", "finetuned_without_refit")}
                                for row in result.summary["auto"]["leaderboard"][:5]]
    return result.model, extra


def prune_tp(dense: nn.Module, x: torch.Tensor, method: str, target: float, seed: int, train, *,
             max_ratio: float = TP_MAX_RATIO, steps: int = TP_STEPS, tolerance: float = TP_TOLERANCE,
             halvings: int = TP_HALVINGS) -> tuple:
    """Torch-Pruning's MetaPruner, its channel ratio raised by ``max_ratio / steps`` per step until
    the MACs (counted like prunekit's) are <= the target, with finer steps at the end: a step that
    lands more than ``tolerance`` below the target is undone and retried at half the size; when
    ``halvings`` are spent (the step crosses one channel threshold of every layer at once, as a
    per-layer ratio does), the channels it would remove are removed one at a time (``prune_channels``)
    until the target is reached. So the result is as close below the target as
    Torch-Pruning's ranking allows. A DependencyGraph cannot be deep-copied, so undoing rebuilds the
    pruner on a fresh dense copy and replays Torch-Pruning's pruning history (``tp_restore``; its
    time is returned as ``seconds_restoring``, not counted as planning)."""
    goal = target * prunekit.count(dense, x)[0]
    batches = list(Signals(train, 5, 128, seed).batches()) if "taylor" in method else []

    def advance(model, pruner, ratio: float, trial: int, partial: bool = False) -> int:
        if batches:  # Taylor needs fresh gradients of the current model at every step
            model.zero_grad(set_to_none=True)
            xb, yb = batches[trial % len(batches)]
            F.cross_entropy(model(xb), yb).backward()
        pruner.current_step, pruner.per_step_pruning_ratio = 0, [0.0, ratio]  # the step prunes to ratio
        if not partial:
            pruner.step()
            return prunekit.count(model, x)[0]
        return prune_channels(model, pruner, x, list(pruner.step(interactive=True)), goal, tolerance)

    def restore(saved):
        nonlocal restoring
        t0 = time.perf_counter()
        state = tp_restore(dense, x, method, *saved, max_ratio=max_ratio)
        restoring += time.perf_counter() - t0
        return state

    model, pruner = tp_restore(dense, x, method, max_ratio=max_ratio)
    ratio, last, step, trials, rollbacks, partial, restoring = 0.0, 0.0, max_ratio / steps, 0, 0, False, 0.0
    macs = prunekit.count(model, x)[0]
    while True:
        nxt = min(ratio + step, max_ratio)
        if nxt <= ratio:
            break  # max_ratio reached above the target
        saved = (copy.deepcopy(pruner.pruning_history()), dict(pruner._scope_initial_channels))
        trials, last = trials + 1, nxt
        macs = advance(model, pruner, nxt, trials)
        if macs > goal:
            ratio = nxt
        elif macs >= goal * (1 - tolerance):
            break
        elif rollbacks < halvings:
            model, pruner = restore(saved)
            step, rollbacks = step / 2, rollbacks + 1
        else:
            model, pruner = restore(saved)
            macs, partial = advance(model, pruner, nxt, trials, partial=True), True
            break
    model.zero_grad(set_to_none=True)
    return model, {"tp_ratio": last, "tp_steps": trials, "tp_rollbacks": rollbacks, "tp_partial_step": partial,
                   "tp_reached_target": macs <= goal, "seconds_restoring": restoring}


def prune_channels(model: nn.Module, pruner, x: torch.Tensor, groups: list, goal: float, tolerance: float) -> int:
    """Remove the channels of one Torch-Pruning step one at a time, in its order, until MACs <= goal;
    a channel whose removal would land more than ``tolerance`` below the goal is left for a second
    pass (which takes them in order until the goal is reached). Returns the MACs. The step's groups
    are disjoint, so each channel is pruned on its own; positions shift as lower ones go."""
    sizes = {}  # output positions of every conv/linear (pruning channels does not change them)
    hooks = [m.register_forward_hook(lambda m, i, o: sizes.__setitem__(m, o[0, 0].numel()))
             for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()

    def cost(group) -> int:  # MACs one channel of the group carries (conv/linear only, as prunekit.count)
        total = 0
        for dep, _ in group:
            m = dep.target.module
            if m in sizes:
                out = pruner.DG.is_out_channel_pruning_fn(dep.handler)
                per = m.weight[0].numel() if out else m.weight[:, 0].numel()
                total += per * sizes[m]
        return total

    channels = [(g[0].dep.target.module, g[0].dep.handler, int(i), cost(g)) for g in groups for i in g[0].idxs]
    removed: dict = {}
    macs = prunekit.count(model, x)[0]
    for careful in (True, False):
        for module, handler, index, c in channels:
            if macs <= goal:
                return macs
            if index in removed.get((module, handler), ()) or (careful and macs - c < goal * (1 - tolerance)):
                continue
            shift = sum(j < index for j in removed.get((module, handler), ()))
            pruner.DG.get_pruning_group(module, handler, [index - shift]).prune()
            removed.setdefault((module, handler), set()).add(index)
            macs = prunekit.count(model, x)[0]
    return macs


def tp_restore(dense: nn.Module, x: torch.Tensor, method: str, history=None, scopes=None, *,
               max_ratio: float = TP_MAX_RATIO) -> tuple:
    """A MetaPruner for ``method`` on a fresh copy of ``dense``, with a recorded pruning history
    replayed (the model and pruner are then as they were when the history was taken)."""
    make_importance, global_pruning = TP_METHODS[method]
    model = copy.deepcopy(dense).eval()
    classifier = [m for m in model.modules() if isinstance(m, nn.Linear)][-1:]
    pruner = tp.pruner.MetaPruner(model, x, importance=make_importance(), global_pruning=global_pruning,
                                  pruning_ratio=max_ratio, iterative_steps=1, ignored_layers=classifier)
    if history:
        pruner.DG.load_pruning_history(copy.deepcopy(history))
        pruner._scope_initial_channels = dict(scopes)  # ratios stay fractions of the dense widths
    return model, pruner


def plan(cfg: Config, method: str, target: float, dense: nn.Module, data: dict, seed: int = 0,
         finetune: bool = False) -> tuple:
    """The pruned model with BatchNorm re-estimated, its extras and the seconds that took (both sides
    time pruning plus re-estimation: everything except fine-tuning). ``finetune``: the model will be
    fine-tuned (``FINETUNE_OPTIONS``)."""
    x = torch.zeros(1, *data["shape"])
    t0 = time.perf_counter()
    if method in TP_METHODS:
        model, extra = prune_tp(dense, x, method, target, seed, data["train"], steps=cfg.tp_steps,
                                halvings=cfg.tp_halvings)
        recalibrate_bn(model, data["train"], batches=cfg.bn_batches, seed=seed)
    else:
        model, extra = prune_prunekit(dense, x, method, target, seed, data["train"], cfg.bn_batches, finetune)
    return model, extra, time.perf_counter() - t0 - extra.pop("seconds_restoring", 0.0)


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
    if torch.cuda.is_available() and cfg.gpu_batches:
        try:
            out["gpu"] = {str(b): gpu_latency_ms(model, shape, b, cfg.latency_seconds) for b in cfg.gpu_batches}
        except RuntimeError as e:  # a capture failure must not lose the run's other numbers
            warnings.warn(f"CUDA graph latency failed: {e}")
            out["gpu"] = {"error": str(e).splitlines()[0]}
    return out


def family(method: str) -> str:
    return "torch-pruning" if method in TP_METHODS else "prunekit"


def run_oneshot(cfg: Config, model_name: str, method: str, target: float, dense: nn.Module, dense_macs: int,
                data: dict, device: str) -> dict:
    """Plan (on the CPU), re-estimate BatchNorm, evaluate on the test set, time the forward pass (the
    dense model's latency is measured right before, under the same load)."""
    model, extra, seconds = plan(cfg, method, target, dense, data)
    macs, params = prunekit.count(model, torch.zeros(1, *data["shape"]))
    record = {"model": model_name, "phase": "oneshot", "method": method, "family": family(method), "target": target,
              "seed": 0, "macs": macs, "params": params, "macs_target": target * dense_macs,
              "accuracy_bn": evaluate(model.to(device), data["test"]), "seconds_to_plan": seconds, **extra}
    record["dense_latency_ms"] = latencies(dense, cfg, data["shape"])
    record["latency_ms"] = latencies(model.cpu(), cfg, data["shape"])
    return record


_last_plan: dict = {}  # the fine-tuning phase's latest plan, reused by the next seed


def run_finetune(cfg: Config, model_name: str, method: str, target: float, seed: int, dense: nn.Module,
                 dense_macs: int, data: dict, device: str) -> dict:
    """The one-shot plan made again (seed 0; auto told it will be fine-tuned), fine-tuned with ``seed`` by ``prunekit.finetune``,
    distilling from the dense model, and evaluated on the test set. The seeds of one (model, method,
    target) follow each other, so the plan is made once for all of them."""
    key = (model_name, method, target)
    if _last_plan.get("key") != key:
        _last_plan.update(key=key, plan=plan(cfg, method, target, dense, data, finetune=True))
    model, extra, seconds = _last_plan["plan"]
    model, extra = copy.deepcopy(model), copy.deepcopy(extra)
    macs, params = prunekit.count(model, torch.zeros(1, *data["shape"]))
    recipe = {**cfg.finetune_recipe, "seed": seed}
    epochs, lr = recipe.pop("epochs"), recipe.pop("lr")
    t0 = time.perf_counter()
    prunekit.finetune(model, data["train_aug"], epochs, teacher=copy.deepcopy(dense), lr=lr, device=device,
                      progress=False, **recipe)
    return {"model": model_name, "phase": "finetune", "method": method, "family": family(method), "target": target,
            "seed": seed, "macs": macs, "params": params, "macs_target": target * dense_macs,
            "seconds_to_plan": seconds, "seconds_to_finetune": time.perf_counter() - t0,
            "accuracy_final": evaluate(model.to(device), data["test"]), **extra}


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


def best(agg: dict, target: float, fam: str, exclude: tuple[str, ...] = ()) -> tuple[str, dict] | None:
    rows = [(m, v) for (m, t), v in agg.items() if t == target and v["family"] == fam and m not in exclude]
    return max(rows, key=lambda mv: mv[1]["mean"]) if rows else None


def goal(text: str, met: bool | None, detail: str) -> dict:
    return {"goal": text, "met": met, "detail": detail}


def all_of(parts: list[tuple[bool | None, str]], expected: int) -> tuple[bool | None, str]:
    """Met when every part is met and all ``expected`` parts were judged; not met as soon as one fails."""
    detail = "; ".join(d for _, d in parts) or "not measured"
    if any(m is False for m, _ in parts):
        return False, detail
    judged = [m for m, _ in parts if m is not None]
    return (True if len(judged) == expected and judged else None), detail


def goal_oneshot_50(by_model: dict[str, list[dict]]) -> dict:
    text = "One-shot (BatchNorm re-estimated) at 50% MACs: best prunekit >= best Torch-Pruning + 5 points, on every model"
    parts = []
    for name, runs in by_model.items():
        bn = aggregate(runs, "accuracy_bn")
        pk, ref = best(bn, 0.5, "prunekit", TRAINS_WEIGHTS), best(bn, 0.5, "torch-pruning")
        if pk and ref:
            parts.append((pk[1]["mean"] >= ref[1]["mean"] + 5,
                          f"{name}: {pk[0]} {pk[1]['mean']:.2f} vs {ref[0]} {ref[1]['mean']:.2f}"))
        else:
            parts.append((None, f"{name}: not measured"))
    return goal(text, *all_of(parts, len(by_model)))


def goal_auto_50(by_model: dict[str, list[dict]]) -> dict:
    text = "One-shot at 50% MACs: the default automatic method (auto) ahead of every Torch-Pruning pruner, on every model"
    parts = []
    for name, runs in by_model.items():
        bn = aggregate(runs, "accuracy_bn")
        ref = best(bn, 0.5, "torch-pruning")
        auto = bn.get(("auto", 0.5))
        if auto and ref:
            parts.append((auto["mean"] > ref[1]["mean"], f"{name}: auto {auto['mean']:.2f} vs {ref[0]} {ref[1]['mean']:.2f}"))
        else:
            parts.append((None, f"{name}: " + ("auto not measured" if ref else "not measured")))
    return goal(text, *all_of(parts, len(by_model)))


def goal_accuracy_20(final: dict, what: str = "after fine-tuning") -> dict:
    text = f"20% MACs {what}: best prunekit >= best Torch-Pruning + 0.3 points (mean of two seeds, beyond their spread)"
    pk, ref = best(final, 0.2, "prunekit"), best(final, 0.2, "torch-pruning")
    if not pk or not ref:
        return goal(text, None, "not measured")
    (pm, p), (tm, t) = pk, ref
    detail = f"{pm} {p['mean']:.2f} ± {p['spread']:.2f} vs {tm} {t['mean']:.2f} ± {t['spread']:.2f}"
    if min(p["seeds"], t["seeds"]) < 2:
        return goal(text, None, detail + " (needs two seeds)")
    return goal(text, p["mean"] >= t["mean"] + 0.3 and p["mean"] - p["spread"] > t["mean"] + t["spread"], detail)


def goal_accuracy_50(final: dict, dense_accuracy: float) -> dict:
    text = "50% MACs after fine-tuning: best prunekit >= the dense model"
    pk = best(final, 0.5, "prunekit")
    if not pk:
        return goal(text, None, "not measured")
    detail = f"{pk[0]} {pk[1]['mean']:.2f} ± {pk[1]['spread']:.2f} vs dense {dense_accuracy:.2f}"
    return goal(text, pk[1]["mean"] >= dense_accuracy if pk[1]["seeds"] >= 2 else None,
                detail + ("" if pk[1]["seeds"] >= 2 else " (needs two seeds)"))


def landing(r: dict) -> float:
    """How far below its target a run landed, as a fraction of the target (negative: above it)."""
    return (r["macs_target"] - r["macs"]) / r["macs_target"]


def goal_budget(runs: list[dict]) -> dict:
    text = "Budget: MACs within 1% of the requested budget, never above it (every prunekit run)"
    pk = [r for r in runs if r["family"] == "prunekit"]
    if not pk:
        return goal(text, None, "not measured")
    gaps = [landing(r) for r in pk]
    detail = f"gap below target {100 * min(gaps):.2f}% to {100 * max(gaps):.2f}%"
    ref = [landing(r) for r in runs if r["family"] == "torch-pruning"]
    if ref:
        detail += f" (Torch-Pruning, stepped: {100 * min(ref):.2f}% to {100 * max(ref):.2f}%)"
    return goal(text, all(0 <= g <= 0.01 for g in gaps), detail)


def goal_plan_time(runs: list[dict], model: str | None) -> dict:
    limit = PLAN_SECONDS
    where = f" for {model}" if model else ""
    text = f"Time to a plan{where} <= {limit:.0f} s on the CPU (every prunekit method; searches {', '.join(SEARCHES)} apart)"
    pk = [r for r in runs if r["family"] == "prunekit" and (model is None or r["model"] == model)]
    plain = [r for r in pk if r["method"] not in SEARCHES]
    if not plain:
        return goal(text, None, "not measured")
    worst = max(plain, key=lambda r: r["seconds_to_plan"])
    detail = f"slowest: {worst['method']} {worst['seconds_to_plan']:.1f} s"
    searches = [r for r in pk if r["method"] in SEARCHES]
    if searches:
        s = max(searches, key=lambda r: r["seconds_to_plan"])
        detail += f" ({s['method']}: {s['seconds_to_plan']:.1f} s)"
    return goal(text, worst["seconds_to_plan"] <= limit, detail)


def dense_ms(r: dict, dense: dict, batch: str) -> float:
    """The dense latency measured with the run (same load), else the one measured at the start."""
    return (r.get("dense_latency_ms") or dense["latency_ms"])["cpu"][batch]


def speedup(r: dict, dense: dict, batch: str) -> float:
    return dense_ms(r, dense, batch) / r["latency_ms"]["cpu"][batch]


def speed_ratio(r: dict, dense: dict, batch: str) -> float:
    """CPU latency speed-up at ``batch`` divided by the MACs reduction."""
    return speedup(r, dense, batch) / (dense["macs"] / r["macs"])


def goal_speed(runs: list[dict], denses: dict, batch: str) -> dict:
    text = f"CPU latency speed-up at batch {batch} >= 0.85 x the MACs reduction (every prunekit run)"
    timed = [r for r in runs if r.get("latency_ms")]
    pk = [r for r in timed if r["family"] == "prunekit"]
    if not pk:
        return goal(text, None, "not measured")
    ratios = sorted((speed_ratio(r, denses[r["model"]], batch), r["method"], r["target"], r["model"]) for r in pk)
    worst = ratios[0]
    detail = f"ratio {worst[0]:.2f} ({worst[1]} at {worst[2]:.0%} on {worst[3]}) to {ratios[-1][0]:.2f}"
    ref = [speed_ratio(r, denses[r["model"]], batch) for r in timed if r["family"] == "torch-pruning"]
    if ref:
        detail += f" (Torch-Pruning: {min(ref):.2f} to {max(ref):.2f})"
    return goal(text, worst[0] >= 0.85, detail)


def goals(results: dict) -> list[dict]:
    runs = results["runs"]
    by_model = {m: [r for r in runs if r["model"] == m and r["phase"] == "oneshot"] for m in results["models"]}
    out = [goal_oneshot_50(by_model), goal_auto_50(by_model)]
    for name in results["models"]:
        tuned = [r for r in runs if r["model"] == name and r["phase"] == "finetune"]
        final = aggregate(tuned, "accuracy_final")
        epochs = results["config"]["finetune_recipe"]["epochs"]
        for g in (goal_accuracy_20(final, f"after {_n(epochs, 'epoch')} of distillation"),) + (
                (goal_accuracy_50(final, results["dense"][name]["accuracy"]),) if epochs > 1 else ()):
            out.append({**g, "goal": f"{name}: {g['goal']}"})
    out += [goal_budget(runs), goal_plan_time(runs, "resnet56" if "resnet56" in results["models"] else None),
            goal_speed(runs, results["dense"], str(max(results["config"]["cpu_batches"])))]
    return out


def losses(results: dict) -> list[str]:
    """Where Torch-Pruning's best beats prunekit's best, by how much (one clause per model, target, phase)."""
    out, ahead = [], 0
    for name in results["models"]:
        for phase, key in (("oneshot", "accuracy_bn"), ("finetune", "accuracy_final")):
            agg = aggregate([r for r in results["runs"] if r["model"] == name and r["phase"] == phase], key)
            for target in sorted({t for _, t in agg}, reverse=True):
                pk = best(agg, target, "prunekit", TRAINS_WEIGHTS if phase == "oneshot" else ())
                ref = best(agg, target, "torch-pruning")
                if not pk or not ref:
                    continue
                gap = ref[1]["mean"] - pk[1]["mean"]
                if gap > 0:
                    out.append(f"{name} at {target:.0%} MACs {PHASE_WORDS[phase]} by {gap:.2f} points "
                               f"({pk[0]} {pk[1]['mean']:.2f} vs {ref[0]} {ref[1]['mean']:.2f})")
                else:
                    ahead += 1
    if not out and not ahead:
        return ["Nothing compared yet."]
    if not out:
        return [f"prunekit's best is at or ahead of Torch-Pruning's best in every setting measured ({ahead})."]
    return ["prunekit's best loses to Torch-Pruning's best on " + "; ".join(out) + f"; it is at or ahead in the "
            f"other {ahead} setting{'s' if ahead != 1 else ''} measured."]


PHASE_WORDS = {"oneshot": "one-shot", "finetune": "after fine-tuning"}


def training_seconds(r: dict) -> str:
    """The part of the plan time a method spent training (dagger's gates, trp, fisher_iterative)."""
    spent = [v for k, v in (r.get("method_seconds") or {}).items() if k.endswith("training")]
    return f"{sum(spent):.1f}" if spent else "-"


def shown(method: str) -> str:
    return f"{method} †" if method in TRAINS_WEIGHTS else method


# -- reporting ----------------------------------------------------------------------------------
def cell(values: list[float | None], fmt: str = "{:.2f}") -> str:
    values = [v for v in values if v is not None]
    if not values:
        return "-"
    mean, spread = mean_spread(values)
    return fmt.format(mean) + (f" ± {fmt.format(spread)}" if len(values) > 1 else "")


def bold_best(rows: list[tuple[str, float | None]]) -> set[str]:
    """The best method of each side in ``rows`` of (method, value)."""
    out = set()
    for fam in ("prunekit", "torch-pruning"):
        side = [(m, v) for m, v in rows if v is not None and family(m) == fam]
        if side:
            top = max(v for _, v in side)
            out |= {m for m, v in side if v == top}
    return out


def ordered(results: dict, runs: list[dict]) -> list[str]:
    order = {m: i for i, m in enumerate(results["methods"])}
    return sorted({r["method"] for r in runs}, key=lambda m: (order.get(m, 99), m))


def summary_table(results: dict, name: str) -> list[str]:
    """One row per method: accuracy right after pruning and after fine-tuning at every target, the
    best of each side in bold per column."""
    runs = [r for r in results["runs"] if r["model"] == name]
    columns = [(p, t) for p in PHASES for t in sorted({r["target"] for r in runs if r["phase"] == p}, reverse=True)]
    if not columns:
        return []
    key = {"oneshot": "accuracy_bn", "finetune": "accuracy_final"}
    head = ["method"] + [f"{t:.0%} {PHASE_WORDS[p]}" for p, t in columns] + ["plan s (slowest)"]
    values = {}
    for p, t in columns:
        agg = aggregate([r for r in runs if r["phase"] == p], key[p])
        values[(p, t)] = {m: v["mean"] for (m, tt), v in agg.items() if tt == t}
    bold = {c: bold_best([(m, v) for m, v in values[c].items() if c[0] != "oneshot" or m not in TRAINS_WEIGHTS])
            for c in columns}
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for method in ordered(results, runs):
        row = [shown(method)]
        for c in columns:
            rs = [r for r in runs if r["method"] == method and (r["phase"], r["target"]) == c]
            text = cell([r[key[c[0]]] for r in rs])
            row.append(f"**{text}**" if method in bold[c] else text)
        row.append(f"{max(r['seconds_to_plan'] for r in runs if r['method'] == method):.1f}")
        lines.append("| " + " | ".join(row) + " |")
    return lines


def oneshot_table(results: dict, name: str, target: float) -> list[str]:
    dense, cfg = results["dense"][name], results["config"]
    batches = [str(b) for b in cfg["cpu_batches"]]
    runs = [r for r in results["runs"] if r["model"] == name and r["phase"] == "oneshot" and r["target"] == target]
    gpu = any((r.get("latency_ms") or {}).get("gpu") for r in runs)
    head = (["method", "acc. BN re-est. %", "MACs (M)", "below target %", "params (K)", "plan s", "of which training s"]
            + [f"CPU ms b{b}" for b in batches] + [f"speed-up b{b}" for b in batches]
            + [f"b{batches[-1]} speed-up / MACs reduction", "load (start-end)"])
    if gpu:
        head += [f"GPU ms b{b}" for b in cfg["gpu_batches"]]
    bold = bold_best([(r["method"], r["accuracy_bn"]) for r in runs if r["method"] not in TRAINS_WEIGHTS])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for method in ordered(results, runs):
        r = next(r for r in runs if r["method"] == method)
        acc = f"{r['accuracy_bn']:.2f}"
        note = f" ({r['chosen']}{', refit' if (r.get('reconstruct') or {}).get('layers') else ''})" if r.get("chosen") else ""
        row = [shown(method) + note, f"**{acc}**" if method in bold else acc, f"{r['macs'] / 1e6:.3f}",
               f"{100 * landing(r):.2f}", f"{r['params'] / 1e3:.1f}", f"{r['seconds_to_plan']:.1f}", training_seconds(r)]
        row += [f"{r['latency_ms']['cpu'][b]:.2f}" for b in batches]
        row += [f"{speedup(r, dense, b):.2f}x" for b in batches]
        row += [f"{speed_ratio(r, dense, batches[-1]):.2f}", load_text(r)]
        if gpu:
            row += [cell([(r["latency_ms"]["gpu"] or {}).get(str(b))], "{:.3f}") for b in cfg["gpu_batches"]]
        lines.append("| " + " | ".join(row) + " |")
    return lines


def finetune_table(results: dict, name: str, target: float) -> list[str]:
    runs = [r for r in results["runs"] if r["model"] == name and r["phase"] == "finetune" and r["target"] == target]
    head = ["method", "seeds", "final acc. %", "MACs (M)", "params (K)", "plan s", "fine-tune s"]
    means = aggregate(runs, "accuracy_final")
    bold = bold_best([(m, v["mean"]) for (m, _), v in means.items()])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for method in ordered(results, runs):
        rs = [r for r in runs if r["method"] == method]
        acc = cell([r["accuracy_final"] for r in rs])
        lines.append("| " + " | ".join([
            method, ",".join(str(r["seed"]) for r in sorted(rs, key=lambda r: r["seed"])),
            f"**{acc}**" if method in bold else acc, cell([r["macs"] / 1e6 for r in rs], "{:.3f}"),
            cell([r["params"] / 1e3 for r in rs], "{:.1f}"), cell([r["seconds_to_plan"] for r in rs], "{:.1f}"),
            cell([r["seconds_to_finetune"] for r in rs], "{:.0f}")]) + " |")
    return lines


def load_text(r: dict) -> str:
    la = r.get("load_average")
    return f"{la['start'][0]:.1f}-{la['end'][0]:.1f}" if isinstance(la, dict) else "-"


def wall_seconds(results: dict) -> float:
    return sum(s["seconds"] for s in results.get("sessions", []))


def markdown(results: dict, profile: str) -> str:
    cfg = results["config"]
    ft = cfg["finetune_recipe"]
    title = {"cpu": "the 2-core CPU profile", "gpu": "the GPU profile", "quick": "smoke test"}[profile]
    lines = [f"# Benchmark ({title}): prunekit vs Torch-Pruning {TP_VERSION} on {cfg['dataset']}", ""]
    if profile == "quick":
        lines += ["> **Smoke test, not the benchmark.** `--quick` checks that the suite runs end to end on a CPU: a",
                  f"> resnet20 checkpoint, {cfg['train_images']} training images, fine-tuning of "
                  f"{_n(ft['epochs'], 'epoch')} x {ft['max_steps_per_epoch']} steps, {cfg['test_images']} test images.",
                  "> Its accuracies say nothing about the methods, and its timings depend on what else the machine",
                  "> was running (load average below); the goals are evaluated only to exercise the code.", ""]
    lines += losses(results) + [""]
    loads = [x for r in results["runs"] if isinstance(r.get("load_average"), dict)
             for x in (r["load_average"]["start"][0], r["load_average"]["end"][0])]
    load = f" 1-minute load average at the start and end of the rows: {min(loads):.1f} to {max(loads):.1f}." if loads else ""
    sessions = results.get("sessions", [])
    lines += [f"Rows: {len(results['runs'])} recorded over {_n(len(sessions), 'run')} of the suite, "
              f"{wall_seconds(results) / 3600:.2f} h of wall time in all (the runs' times summed; some ran side by "
              f"side).{load}", ""]
    for phase in PHASES:  # each row records where it ran (a lent GPU may have fine-tuned while the CPU planned)
        machines = sorted({r["machine"] for r in results["runs"] if r["phase"] == phase and "machine" in r})
        if machines:
            lines += [f"Machines of the {dict(oneshot='one-shot', finetune='fine-tuning')[phase]} rows: " + "; ".join(machines), ""]
    lines += ["Commands:", ""]
    lines += [f"- `{c}`" for c in dict.fromkeys(s["command"] for s in sessions)] + [""]
    test_set = "the full test set" if cfg["test_images"] is None else f"{cfg['test_images']} test images"
    lines += [f"Protocol. Both sides: the same dense checkpoint; MACs and params counted by `prunekit.count` "
              f"(FlopCounterMode, conv + linear); BatchNorm re-estimated on {cfg['bn_batches']} x 128 training images "
              f"(the same seeded batches for both sides; prunekit's `compress` does it itself when given data) and "
              f"accuracy measured on {test_set} right after pruning (one-shot, every target); then the same plan is fine-tuned by the same "
              f"`prunekit.finetune` / `prunekit.train.fit` ({_n(ft['epochs'], 'epoch')}, batch {ft['batch_size']}, "
              f"SGD Nesterov, one-cycle peak LR {ft['lr']}, label smoothing {ft['label_smoothing']}, distillation from "
              f"the dense model with weight {ft['kd_weight']} at T={ft['kd_temperature']}); final accuracy is the last "
              f"epoch's, mean ± half the range over seeds. Time to plan is everything but fine-tuning (pruning + "
              f"BatchNorm re-estimation) on the CPU with {_n(cfg['threads'], 'thread')} (the one-shot rows; a row made "
              f"elsewhere, e.g. fine-tuned on a GPU with `--torch-threads`, records its machine and threads, listed "
              f"above; on a GPU the recipe runs in bf16 autocast). Torch-Pruning: `MetaPruner`, "
              f"channel ratio raised by {TP_MAX_RATIO}/{cfg['tp_steps']} per step (up to {TP_MAX_RATIO}) until MACs <= target, "
              f"a step that lands more than {100 * TP_TOLERANCE:.1f}% below the target undone and retried at half "
              f"the size (up to {cfg['tp_halvings']} times), then its channels removed one at a time in Torch-Pruning's "
              f"order until the target is reached (skipping, while others remain, a channel that would land more than "
              f"{100 * TP_TOLERANCE:.1f}% below); time spent undoing is not counted. The classifier is kept "
              f"whole as in prunekit. Latency: "
              f"torch.utils.benchmark median, {_n(cfg['threads'], 'thread')}, OMP_WAIT_POLICY=PASSIVE, the dense model "
              f"measured in the same row just before; speed-up / MACs reduction = (dense ms / pruned ms) / (dense MACs "
              f"/ pruned MACs). Bold: the best of each side per column. Methods run with options (CPU-sized "
              f"searches and training) record them in the JSON rows (`options`, `METHOD_OPTIONS` in bench/suite.py). "
              f"Layer reconstruction (compress's default since it landed: pruned layers refit to the dense outputs on "
              f"512 training images before BatchNorm is re-estimated) runs on the rows of "
              f"{', '.join(sorted(RECONSTRUCT))} only (recorded as `reconstruct` in the JSON rows): the other prunekit rows "
              f"measure criterion and allocation alone, the treatment Torch-Pruning's models get. "
              f"† trains the weights while it plans ({', '.join(TRAINS_WEIGHTS)}), so its one-shot accuracy includes "
              f"that training: it is left out of the one-shot bests, goals and bold.", ""]
    lines += ["## Goals of BENCHMARKS.md", "", "| goal | met | detail |", "|---|---|---|"]
    for g in goals(results):
        mark = {True: "met", False: "**not met**", None: "n/a"}[g["met"]]
        lines.append(f"| {g['goal']} | {mark} | {g['detail']} |")
    lines.append("")
    for name in results["models"]:
        dense = results["dense"].get(name)
        lines += [f"## {name}", ""]
        if dense is None:
            lines += [results.get("absent", {}).get(name, "not measured yet"), ""]
            continue
        lines += [f"Dense: {dense['accuracy']:.2f}% test accuracy, {dense['macs'] / 1e6:.2f} M MACs, "
                  f"{dense['params'] / 1e3:.1f} K params ({dense['source']}).", "", "### Summary (test accuracy %)", ""]
        lines += summary_table(results, name) + [""]
        runs = [r for r in results["runs"] if r["model"] == name]
        for target in sorted({r["target"] for r in runs if r["phase"] == "oneshot"}, reverse=True):
            lines += [f"### One-shot, {target:.0%} of the dense MACs", ""] + oneshot_table(results, name, target) + [""]
        for target in sorted({r["target"] for r in runs if r["phase"] == "finetune"}, reverse=True):
            lines += [f"### Fine-tuned {_n(ft['epochs'], 'epoch')}, {target:.0%} of the dense MACs", ""]
            lines += finetune_table(results, name, target) + [""]
    if profile == "cpu":
        lines += latency_rows(ROOT / "bench" / "results" / "latency.json")
    skipped = [f"- {m}: {why}" for m, why in results.get("skipped", {}).items()]
    failed = [f"- {e['model']} {e['phase']} {e['method']} {e['target']:.0%} seed {e['seed']}: {e['error']}"
              for e in results.get("errors", [])]
    if skipped or failed:
        lines += ["## Not measured", ""] + skipped + failed + [""]
    return "\n".join(lines)


def latency_rows(path: Path) -> list[str]:
    """The latency-budget rows (bench/latency.py keeps them: they are keyed by speed-up, not MACs)."""
    if not path.is_file():
        return []
    lat = json.loads(path.read_text())
    lines = [f"## Latency budgets ({lat['model']}, {lat['threads']} threads; bench/results/latency.md)", "",
             f"`{lat['command']}`: `speedup=S` planned by {lat['speedup_rows'][0]['method'] if lat['speedup_rows'] else '-'}"
             f"{' (residual branches removable)' if lat.get('drop_blocks') else ''} with the closed loop; measured dense / "
             f"pruned in alternating blocks, the pairs' median ratio; accuracy: first {lat.get('eval_images')} test images after BatchNorm re-estimation, "
             f"no fine-tuning (dense {lat.get('dense_accuracy') or 0:.2f}).", "",
             "| batch | target | measured speed-up | within 10% | MACs reduction | branches removed | accuracy | plans |",
             "|---|---|---|---|---|---|---|---|"]
    for r in lat["speedup_rows"]:
        acc = f"{r['accuracy']:.2f}" if r.get("accuracy") is not None else "-"
        lines.append(f"| {r['batch']} | {r['target_speedup']:g}x | {r['measured_speedup']:.2f}x | "
                     f"{'yes' if r['within_10pct'] else 'no'} | {r['macs_reduction']:.2f}x | {r.get('dropped_blocks', 0)} | "
                     f"{acc} | {r.get('plans', 1)} |")
    for u in lat.get("unreachable", []):
        lines.append(f"| {u['batch']} | {u['target_speedup']:g}x | refused: {u['error']} | | | | | |")
    rows = lat.get("rounding_rows", [])
    if rows:
        lines += ["", f"MACs budgets, measured speed-up at batch {lat['batch']} / MACs reduction (prunekit with round_to and "
                  "snap; Torch-Pruning's pruners, `tp:`, at the same budgets in the same run):", "",
                  "| method | round_to | branches removable | " + " | ".join(
                      f"{f:.0%} MACs" for f in sorted({r['flops'] for r in rows}, reverse=True)) + " |",
                  "|---|---|---|" + "---|" * len({r["flops"] for r in rows})]
        flops = sorted({r["flops"] for r in rows}, reverse=True)
        for key in dict.fromkeys((r["method"], r["round_to"], r.get("drop_blocks", False)) for r in rows):
            got = {r["flops"]: r for r in rows if (r["method"], r["round_to"], r.get("drop_blocks", False)) == key}
            cells = [(f"{got[f]['speedup_over_macs_reduction']:.2f}" + (f" ({got[f]['accuracy']:.1f}%)" if got[f].get(
                "accuracy") is not None else "")) if f in got else "-" for f in flops]
            lines.append(f"| {key[0]} | {key[1]} | {'yes' if key[2] else 'no'} | " + " | ".join(cells) + " |")
        lines += ["", "(in brackets: top-1 before fine-tuning, where measured)", ""]
    for r in lat.get("combined_rows", []):
        b = f"flops={r['budget']['flops']:g},speedup={r['budget']['speedup']:g}"
        lines.append(f"- `{b}`: refused: {r['error']}" if "error" in r else
                     f"- `{b}` (both at once): {r['measured_speedup']:.2f}x for {r['macs_reduction']:.2f}x fewer MACs, "
                     f"ratio {r['speedup_over_macs_reduction']:.2f}, {r['dropped_blocks']} branches removed"
                     + (f", top-1 {r['accuracy']:.2f}" if r.get("accuracy") is not None else ""))
    return lines + [""]


def readme_table(results: dict) -> str:
    """The README's headline: the summary table of every model and the sentence on where prunekit loses."""
    lines = losses(results) + [""]
    for name in results["models"]:
        if name in results["dense"]:
            d = results["dense"][name]
            lines += [f"{name} (dense {d['accuracy']:.2f}%, {d['macs'] / 1e6:.2f} M MACs), test accuracy %:", ""]
            lines += summary_table(results, name) + [""]
        else:
            lines += [f"{name}: {results.get('absent', {}).get(name, 'not measured yet')}", ""]
    return "\n".join(lines)


def _n(count: int, word: str) -> str:
    return f"{count} {word}" + ("" if count == 1 else "s")


def plots(results: dict, base: Path, profile: str) -> None:
    """Accuracy against MACs per model: one-shot (BatchNorm re-estimated) and after fine-tuning."""
    for name in results["models"]:
        dense = results["dense"].get(name)
        if dense is None:
            continue
        for phase, key in (("oneshot", "accuracy_bn"), ("finetune", "accuracy_final")):
            agg = aggregate([r for r in results["runs"] if r["model"] == name and r["phase"] == phase], key)
            series, errors = {}, {}
            for method in results["methods"]:
                pts = sorted((v["macs"], v["mean"], v["spread"]) for (m, _), v in agg.items() if m == method)
                if pts:
                    series[method] = [(m, a) for m, a, _ in pts]
                    errors[method] = [s for _, _, s in pts]
            if series:
                title = f"{name} / {results['config']['dataset']}: {PHASE_WORDS[phase]}"
                path = base.with_name(f"{base.name}_{name}_{phase}.png")
                plot_accuracy_vs_macs(series, path, errors=errors, dense=(dense["macs"], dense["accuracy"]),
                                      title=title + (" (smoke test, not the benchmark)" if profile == "quick" else ""),
                                      dashed=list(TP_METHODS))


def machine(device: str, threads: int) -> str:
    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    text = (f"{cpu}, {os.cpu_count()} cores ({_n(threads, 'thread')} used), torch {torch.__version__}, "
            f"torch-pruning {TP_VERSION}, device {device}")
    if torch.cuda.is_available():
        text += f" ({torch.cuda.get_device_name()})"
    return text


# -- the command ----------------------------------------------------------------------------------
def prunekit_methods() -> list[str]:
    """Every method prunekit lists (presets, and ``auto`` or any method that lands later) and l1+global."""
    return list(dict.fromkeys(list_methods()["methods"] + ["l1+global"]))


def all_methods() -> list[str]:
    return prunekit_methods() + list(TP_METHODS)


def items(text: str, parse, option: str) -> tuple:
    try:
        chosen = tuple(parse(t.strip()) for t in text.split(",") if t.strip())
    except ValueError:
        raise ConfigError(f"cannot read {option} {text!r}; give comma-separated numbers") from None
    if not chosen:
        raise ConfigError(f"{option} is empty; give comma-separated values")
    return chosen


def choose(text: str | None, known: list[str], option: str) -> list[str]:
    if not text:
        return list(known)
    chosen = list(items(text, str, option))
    unknown = [m for m in chosen if m not in known]
    if unknown:
        raise ConfigError(f"unknown {option[2:].rstrip('s')} {unknown[0]!r}; choose from {', '.join(known)}")
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


def profile_of(args) -> str:
    if args.quick and args.profile not in (None, "gpu"):
        raise ConfigError("--quick is the smoke test of the GPU profile; leave out --profile or --quick")
    return "quick" if args.quick else (args.profile or "gpu")


def config_from(args) -> Config:
    profile = profile_of(args)
    cfg = QUICK if profile == "quick" else PROFILES[profile]
    if args.checkpoint:
        if len(cfg.models) != 1:
            raise ConfigError(f"--checkpoint applies to a one-model profile; the {profile} profile has "
                              f"{', '.join(m.name for m in cfg.models)} with their own checkpoints")
        cfg = replace(cfg, models=(replace(cfg.models[0], checkpoint=args.checkpoint),))
    if args.targets:
        targets = items(args.targets, float, "--targets")
        if not all(0 < t <= 1 for t in targets):
            raise ConfigError(f"--targets are fractions of the dense MACs in (0, 1], got {args.targets}")
        cfg = replace(cfg, targets=targets, models=tuple(
            replace(m, finetune_targets=tuple(t for t in m.finetune_targets if t in targets)) for m in cfg.models))
    if args.seeds:
        seeds = items(args.seeds, int, "--seeds")
        cfg = replace(cfg, models=tuple(replace(m, seeds=seeds) for m in cfg.models))
    if args.models:
        names = choose(args.models, [m.name for m in cfg.models], "--models")
        cfg = replace(cfg, models=tuple(m for m in cfg.models if m.name in names))
    return replace(cfg, threads=args.threads)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--profile", choices=sorted(PROFILES), help="cpu: the headline on the 2-core CPU; gpu (default): "
                   "ResNet-56, 10 fine-tuning epochs")
    p.add_argument("--quick", action="store_true", help="CPU smoke test of the suite (minutes), not the benchmark")
    p.add_argument("--name", help="results file name (default: cpu_suite, suite, or suite_quick with --quick)")
    p.add_argument("--results", default=str(ROOT / "bench" / "results"), help="directory of the JSON, table and plots")
    p.add_argument("--work", default=str(ROOT / "runs" / "bench"), help="where a trained dense model is kept for reuse")
    p.add_argument("--checkpoint", help="dense weights of a one-model profile (gpu default: train one)")
    p.add_argument("--data-dir", help="dataset directory (default: the dataset's own)")
    p.add_argument("--models", help="comma-separated subset of the profile's models (e.g. resnet20)")
    p.add_argument("--phases", help="comma-separated subset of: " + ", ".join(PHASES))
    p.add_argument("--methods", help="comma-separated subset of: " + ", ".join(all_methods()))
    p.add_argument("--targets", help="comma-separated MACs fractions (default 0.5,0.2,0.1)")
    p.add_argument("--seeds", help="comma-separated fine-tuning seeds (default: the profile's)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                   help="fine-tuning and evaluation device; plans are always made on the CPU")
    p.add_argument("--threads", type=int, default=2, help="CPU threads for CPU latency (and for planning unless --torch-threads)")
    p.add_argument("--torch-threads", type=int, help="threads for planning, evaluation and training (default: the "
                   "profile's threads; CPU latency is always measured at the profile's threads)")
    p.add_argument("--stop-after", type=float, help="start no new row after this many seconds (rerun to continue)")
    p.add_argument("--fresh", action="store_true", help="discard the rows already recorded in the results file")
    p.add_argument("--merge", nargs="+", metavar="JSON",
                   help="add the rows of other results files of the same profile (runs made in parallel) and rewrite "
                        "the table; runs nothing")
    p.add_argument("--replace", action="store_true", help="with --merge: the merged files' rows replace the rows "
                   "recorded for the same model, phase, method, target and seed (a method rerun after a change)")
    p.add_argument("--readme", action="store_true",
                   help="also write the summary into README.md between its cpu-suite markers")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return run(args, argv if argv is not None else sys.argv[1:])
    except PrunekitError as e:
        print(f"suite: error: {e}", file=sys.stderr)
        return 2


def run(args, argv: list[str]) -> int:
    profile = profile_of(args)
    cfg = config_from(args)
    methods = choose(args.methods, all_methods(), "--methods")
    phases = choose(args.phases, list(PHASES), "--phases")
    base = io.ensure_dir(args.results) / (args.name or RESULT_NAMES[profile])
    env = "".join(f"{k}={os.environ[k]} " for k in ENV_SHOWN if k in os.environ)
    command = f"{env}python bench/suite.py " + " ".join(argv)
    if args.merge:
        results = merge(base, [Path(p) for p in args.merge], cfg, profile, replace=args.replace)
        if args.readme:
            write_readme(results, ROOT / "README.md")
        return 0
    results = execute(cfg, methods, phases, base, profile, command, device=args.device, data_dir=args.data_dir,
                      work=Path(args.work) / base.name, fresh=args.fresh, stop_after=args.stop_after,
                      torch_threads=args.torch_threads)
    if args.readme:
        write_readme(results, ROOT / "README.md")
    return 0


def merge(base: Path, others: list[Path], cfg: Config, profile: str, replace: bool = False) -> dict:
    """The rows, sessions and dense records of ``others`` added to ``base``.json (rows it already has are
    kept, or with ``replace`` replaced by the others': a method rerun after a change)."""
    results = load_results(base.with_suffix(".json"), cfg, fresh=False)
    if results is None:
        raise ConfigError(f"{base.with_suffix('.json')} does not exist; run the suite first")
    for path in others:
        other = load_results(path, cfg, fresh=False)
        if other is None:
            raise ConfigError(f"{path} does not exist")
        if replace:
            new = {row_key(r) for r in other["runs"]}
            results["runs"] = [r for r in results["runs"] if row_key(r) not in new]
        done = {row_key(r) for r in results["runs"]}
        results["runs"] += [r for r in other["runs"] if row_key(r) not in done]
        results["sessions"] += [s for s in other["sessions"] if s not in results["sessions"]]
        for key in ("models", "methods"):
            results[key] = list(dict.fromkeys(results[key] + other[key]))
        results["dense"] = {**other["dense"], **results["dense"]}
        results["errors"] += other.get("errors", [])
    done = {row_key(r) for r in results["runs"]}
    results["errors"] = [e for e in results["errors"] if row_key(e) not in done]  # a later run recorded them
    io.write_json(base.with_suffix(".json"), results)
    io.write_text(base.with_suffix(".md"), markdown(results, profile))
    plots(results, base, profile)
    return results


def row_key(r: dict) -> tuple:
    return (r["model"], r["phase"], r["method"], r["target"], r["seed"])


def execute(cfg: Config, methods: list[str], phases: list[str], base: Path, profile: str, command: str, *,
            device: str = "cpu", data_dir: str | None = None, work: Path | None = None, fresh: bool = False,
            stop_after: float | None = None, torch_threads: int | None = None) -> dict:
    """Run every row not yet recorded in ``base``.json, one-shot rows first, saving after each."""
    t_start = time.perf_counter()
    work = work or ROOT / "runs" / "bench" / base.name
    old = load_results(base.with_suffix(".json"), cfg, fresh)
    torch.set_num_threads(torch_threads or cfg.threads)  # latency is measured at cfg.threads regardless
    here = machine(device, torch.get_num_threads())
    session = {"command": command, "machine": here, "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
               "seconds": 0.0, "rows": 0}
    results = {"config": asdict(cfg), "machine": here, "profile": profile,
               "models": list(dict.fromkeys((old or {}).get("models", []) + [m.name for m in cfg.models])),
               "methods": list(dict.fromkeys((old or {}).get("methods", []) + methods)),
               "dense": (old or {}).get("dense", {}), "runs": (old or {}).get("runs", []),
               "errors": (old or {}).get("errors", []), "absent": {},
               "sessions": (old or {}).get("sessions", []) + [session],
               "skipped": {m: SKIP[m] for m in methods if m in SKIP}}
    methods = [m for m in methods if m not in SKIP]
    done = {row_key(r) for r in results["runs"]}
    data = datasets(cfg, data_dir)

    def save() -> None:
        session["seconds"] = time.perf_counter() - t_start
        io.write_json(base.with_suffix(".json"), results)
        io.write_text(base.with_suffix(".md"), markdown(results, profile))

    denses = {}
    for spec in cfg.models:
        path = checkpoint_path(spec, work)
        if spec.optional and not path.is_file():
            results["absent"][spec.name] = (f"skipped: checkpoint {spec.checkpoint} is absent (its rows run once "
                                            "it is there; rerun the same command)")
            print(f"{spec.name}: {results['absent'][spec.name]}", flush=True)
            continue
        denses[spec.name] = dense = dense_model(cfg, spec, data, work, device)
        digest = sha256(checkpoint_path(spec, work))
        recorded = results["dense"].get(spec.name)
        if recorded and recorded.get("sha256") not in (None, digest):
            raise ConfigError(f"{spec.name}'s checkpoint changed since {base.with_suffix('.json')} was made; "
                              "pass --fresh or another --name")
        if not recorded:
            results["dense"][spec.name] = dense_record(dense, cfg, spec, data, device, digest)
            save()

    todo = []
    for phase in ("oneshot", "finetune"):
        if phase not in phases:
            continue
        for spec in cfg.models:
            if spec.name not in denses:
                continue
            targets = cfg.targets if phase == "oneshot" else spec.finetune_targets
            for target in targets:
                for method in methods:
                    for seed in ((0,) if phase == "oneshot" else spec.seeds):
                        if (spec.name, phase, method, target, seed) not in done:
                            todo.append((spec.name, phase, method, target, seed))
    print(f"{len(todo)} rows to do ({len(done)} already recorded in {base.with_suffix('.json')})", flush=True)
    for i, (name, phase, method, target, seed) in enumerate(todo):
        if stop_after is not None and time.perf_counter() - t_start > stop_after:
            print(f"--stop-after reached: {len(todo) - i} rows left; run the same command again to continue", flush=True)
            break
        dense, dense_macs = denses[name], results["dense"][name]["macs"]
        load_start, t0 = os.getloadavg(), time.perf_counter()
        key = (name, phase, method, target, seed)
        try:
            if phase == "oneshot":
                record = run_oneshot(cfg, name, method, target, dense, dense_macs, data, device)
            else:
                record = run_finetune(cfg, name, method, target, seed, dense, dense_macs, data, device)
        except Exception as e:  # noqa: BLE001  one method's failure must not stop a run of hours; retried on rerun
            error = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
            results["errors"] = [x for x in results["errors"] if row_key(x) != key] + [
                dict(zip(("model", "phase", "method", "target", "seed"), key), error=error)]
            print(f"[{i + 1}/{len(todo)}] {name} {phase} {method} {target:.0%} seed {seed}: FAILED {error}", flush=True)
            save()
            continue
        record.update(machine=here, seconds=time.perf_counter() - t0,
                      load_average={"start": list(load_start), "end": list(os.getloadavg())})
        results["runs"].append(record)
        results["errors"] = [x for x in results["errors"] if row_key(x) != key]
        session["rows"] += 1
        save()
        acc = record.get("accuracy_bn", record.get("accuracy_final"))
        print(f"[{i + 1}/{len(todo)}] {name} {phase} {method} {target:.0%} seed {seed}: {acc:.2f}%, MACs "
              f"{record['macs'] / 1e6:.3f} M ({100 * landing(record):.2f}% below target), plan "
              f"{record['seconds_to_plan']:.1f} s, row {record['seconds']:.0f} s", flush=True)
    save()
    plots(results, base, profile)
    print(f"wrote {base.with_suffix('.md')}; {len(results['runs'])} rows, {wall_seconds(results) / 3600:.2f} h in all",
          flush=True)
    return results


def dense_record(dense: nn.Module, cfg: Config, spec: ModelSpec, data: dict, device: str, digest: str) -> dict:
    """Accuracy, costs and latency of the dense model: what every run is compared with (kept on resume)."""
    macs, params = prunekit.count(dense, torch.zeros(1, *data["shape"]))
    return {"accuracy": evaluate(copy.deepcopy(dense).to(device), data["test"]), "macs": macs, "params": params,
            "latency_ms": latencies(dense, cfg, data["shape"]), "sha256": digest,
            "source": spec.checkpoint or "trained by the suite with the dense recipe"}


README_BEGIN, README_END = "<!-- cpu-suite:begin (bench/suite.py --readme) -->", "<!-- cpu-suite:end -->"


def write_readme(results: dict, path: Path) -> None:
    """Replace the text between the README's cpu-suite markers (and nothing else) with the summary."""
    text = path.read_text()
    if README_BEGIN not in text or README_END not in text:
        raise ConfigError(f"{path} has no {README_BEGIN} ... {README_END} block; add the two markers where the table goes")
    head, rest = text.split(README_BEGIN, 1)
    _, tail = rest.split(README_END, 1)
    io.write_text(path, head + README_BEGIN + "\n" + readme_table(results) + "\n" + README_END + tail)


if __name__ == "__main__":
    sys.exit(main())
