"""Prune one model to several budgets in one run: the accuracy-vs-MACs curve of a method.

The calibration batches and channel scores do not depend on the budget, so they are computed once
(``pipeline.Prepared``); each budget then only allocates widths, prunes a fresh dense copy and
verifies it. Each point is the plan a separate ``compress()`` with the same seed would make.
"""
from __future__ import annotations

import copy
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

import torch
from torch import nn
from torch.utils.data import Dataset, Subset

from . import io
from .budget import Budget
from .errors import ConfigError
from .pipeline import Result, as_budget, check_bn_batches, prepare, reestimate_batchnorm
from .reconstruct import check_images, reconstruct_result
from .train import Recipe, evaluate, fit

SWEEP_JSON, SWEEP_PLOT = "sweep.json", "accuracy_vs_macs.png"


@dataclass
class Point:
    budget: str  # the label the budget was given with; also the point's directory name
    result: Result
    seconds_to_plan: float
    accuracy_pruned_bn: float | None = None
    accuracy_finetuned: float | None = None

    def to_dict(self) -> dict:
        s = self.result.summary
        return {"budget": self.budget, "macs": s["macs"]["pruned"], "macs_dense": s["macs"]["dense"],
                "params": s["params"]["pruned"], "params_dense": s["params"]["dense"],
                "accuracy_pruned_bn": self.accuracy_pruned_bn, "accuracy_finetuned": self.accuracy_finetuned,
                "seconds_to_plan": self.seconds_to_plan}


@dataclass
class Sweep:
    method: str
    points: list[Point] = field(default_factory=list)
    accuracy_dense: float | None = None  # shown on the plot; not part of sweep.json

    def to_dict(self) -> dict:
        """The sweep.json schema (the HTML report reads it)."""
        return {"method": self.method, "points": [p.to_dict() for p in self.points]}


def budget_label(budget) -> str:
    """A short, stable name for a budget: ``0.5`` stays "0.5", a Budget becomes "flops=0.5"."""
    if isinstance(budget, Budget):
        return budget.describe()
    if isinstance(budget, Mapping):
        return Budget(**budget).describe()
    return str(budget).strip()


def _as_budget(budget) -> Budget:
    """A bare number or count ("0.5", "20M") is a MACs budget, as on the command line."""
    if isinstance(budget, str) and "=" not in budget:
        return Budget(flops=budget.strip())
    return as_budget(budget)


def check_budgets(budgets: Sequence) -> list[tuple[str, Budget]]:
    """(label, Budget) for every budget; a malformed or repeated one is refused before any work."""
    if isinstance(budgets, (str, bytes)) or not budgets:
        raise ConfigError("give a sweep a list of budgets, e.g. [0.7, 0.5, 0.3, 0.2]")
    parsed = [(budget_label(b), _as_budget(b)) for b in budgets]
    labels = [label for label, _ in parsed]
    repeated = sorted({label for label in labels if labels.count(label) > 1})
    if repeated:
        raise ConfigError(f"budget {repeated[0]} is given twice; list each budget once")
    for label, _ in parsed:
        if not label or "/" in label or label.startswith("."):
            raise ConfigError(f"budget {label!r} cannot name a directory; write budgets like 0.5 or 20M")
    return parsed


def sweep(
    model: nn.Module,
    example_inputs,
    budgets: Sequence,
    method: str = "l1",
    data: Dataset | None = None,
    seed: int = 0,
    *,
    test_data: Dataset | None = None,
    finetune: Recipe | None = None,
    finetune_data: Dataset | None = None,
    bn_batches: int = 20,
    reconstruct: int = 512,
    eval_images: int | None = None,
    device: str | torch.device | None = None,
    out: str | Path | None = None,
    ignore: Sequence[str] = (),
    min_width: float = 0.05,
    round_to: int = 1,
    calibration_batches: int = 5,
    calibration_batch_size: int = 128,
    options: Mapping[str, object] | None = None,
    progress: bool = False,
) -> Sweep:
    """Prune copies of ``model`` to every budget in ``budgets`` (a number is a fraction of the MACs).

    ``data`` is the training set: calibration, and BatchNorm re-estimation before each point is
    evaluated on ``test_data``. ``finetune`` (a ``prunekit.train.Recipe``) fine-tunes each point on
    ``finetune_data`` (default ``data``) with distillation from the dense model. With ``out`` each
    point is saved to ``out/<budget>/`` as soon as it is done, and ``out/sweep.json`` plus the
    accuracy-vs-MACs plot are rewritten after every point.
    """
    parsed = check_budgets(budgets)
    check_bn_batches(bn_batches)
    check_images(reconstruct)
    if (test_data is not None or finetune is not None) and data is None:
        raise ConfigError("evaluating or fine-tuning sweep points needs training data: pass data=... (CLI: --dataset)")
    if out is not None:
        io.check_writable(out)
    prepared = prepare(model, example_inputs, method, ignore=ignore, min_width=min_width, round_to=round_to,
                       options=options)
    targets = [prepared.targets(b) for _, b in parsed]  # every budget is checked before calibration
    prepared.score(data, seed, calibration_batches, calibration_batch_size, progress)
    shared = prepared.seconds["graph"] + prepared.seconds["criterion"]
    result = Sweep(prepared.recipe.name)
    teacher = copy.deepcopy(model).eval() if finetune is not None else None
    if teacher is not None and device is not None:
        teacher.to(device)
    if test_data is not None:
        test_data = _first(test_data, eval_images)
        result.accuracy_dense = _evaluate(copy.deepcopy(model), test_data, device)
    for (label, budget), target in zip(parsed, targets):
        t0 = time.perf_counter()
        pruned = prepared.prune(budget, target, seed, fresh=True)
        reconstruct_result(pruned, model, prepared.graph, data, reconstruct, seed)  # the same steps compress takes
        reestimate_batchnorm(pruned, data, bn_batches, seed)
        point = Point(label, pruned, shared + time.perf_counter() - t0)
        pruned.summary["seconds"]["to_plan"] = point.seconds_to_plan
        if result.accuracy_dense is not None:
            pruned.summary["accuracy_dense"] = result.accuracy_dense
        _measure(point, data, test_data, finetune, finetune_data, teacher, device, progress)
        result.points.append(point)
        if out is not None:
            write(result, out, last_only=True)
    return result


def _first(data: Dataset, n: int | None) -> Dataset:
    return Subset(data, range(n)) if n and n < len(data) else data


def _evaluate(model: nn.Module, data: Dataset, device) -> float:
    if device is not None:
        model.to(device)
    return evaluate(model, data)


def _measure(point: Point, data, test_data, recipe, finetune_data, teacher, device, progress: bool) -> None:
    """Accuracy with BatchNorm re-estimated (by ``reestimate_batchnorm``), then (optionally) after
    distillation from the dense model."""
    model, summary = point.result.model, point.result.summary
    if device is not None:
        model.to(device)
    if test_data is not None:
        point.accuracy_pruned_bn = summary["accuracy_pruned_bn"] = _evaluate(model, test_data, device)
    if recipe is not None:
        t0 = time.perf_counter()
        history = fit(model, finetune_data if finetune_data is not None else data, recipe, teacher=teacher,
                      progress=progress, device=device)
        summary["seconds"]["finetune"] = time.perf_counter() - t0
        summary["finetune"] = {"recipe": recipe.to_dict(), "epochs": history}
        summary["batchnorm"] = "fine-tuned"
        if test_data is not None:
            point.accuracy_finetuned = summary["accuracy_finetuned"] = _evaluate(model, test_data, device)
    model.eval()


def write(result: Sweep, out: str | Path, last_only: bool = False) -> Path:
    """out/<budget>/ per point (prunekit.io.save), out/sweep.json, and the plot when matplotlib is there."""
    d = io.ensure_dir(out)
    for point in result.points[-1:] if last_only else result.points:
        model = point.result.model
        device = next(model.parameters()).device
        io.save(Result(model.cpu(), point.result.plan, point.result.summary), d / point.budget)
        model.to(device)
    io.write_json(d / SWEEP_JSON, result.to_dict())
    curve = [(p.to_dict()["macs"], p.accuracy_finetuned if p.accuracy_finetuned is not None else p.accuracy_pruned_bn)
             for p in result.points]
    curve = [(m, a) for m, a in curve if a is not None]
    if curve:
        label = result.method + (" (fine-tuned)" if result.points[-1].accuracy_finetuned is not None
                                 else " (BatchNorm re-estimated)")
        dense = None
        if result.accuracy_dense is not None:
            dense = (result.points[0].to_dict()["macs_dense"], result.accuracy_dense)
        plot_accuracy_vs_macs({label: curve}, d / SWEEP_PLOT, title=f"prunekit sweep: {result.method}", dense=dense)
    return d


def plot_accuracy_vs_macs(series: Mapping[str, Sequence[tuple[float, float]]], path: str | Path, title: str = "",
                          dense: tuple[float, float] | None = None,
                          errors: Mapping[str, Sequence[float]] | None = None,
                          dashed: Sequence[str] = ()) -> Path | None:
    """One line per series of (MACs, accuracy %), written atomically as PNG; ``errors`` are error bars,
    series named in ``dashed`` (e.g. a reference library) are drawn dashed. Without matplotlib: a
    warning and no plot, since the numbers are in the JSON anyway."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        warnings.warn("matplotlib is not installed: no accuracy-vs-MACs plot (pip install matplotlib)", stacklevel=2)
        return None
    fig, ax = plt.subplots(figsize=(7, 4.5))
    colors = plt.get_cmap("tab10" if len(series) <= 10 else "tab20").colors
    for i, (name, points) in enumerate(series.items()):
        order = sorted(range(len(points)), key=lambda k: points[k])
        xs, ys = [points[k][0] / 1e6 for k in order], [points[k][1] for k in order]
        yerr = [errors[name][k] for k in order] if errors and name in errors else None
        ax.errorbar(xs, ys, yerr=yerr, marker="o", capsize=3, label=name, color=colors[i % len(colors)],
                    linestyle="--" if name in dashed else "-")
    if dense is not None:
        ax.axhline(dense[1], color="gray", linestyle="--", linewidth=1)
        ax.plot([dense[0] / 1e6], [dense[1]], marker="*", color="black", markersize=10, linestyle="none",
                label=f"dense ({dense[1]:.2f}%)")
    ax.set_xlabel("MACs (millions, conv + linear)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    with io.atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)
    return Path(path)
