"""The straight line: model -> Units -> costs -> scores -> widths -> plan -> surgery -> verified result."""
from __future__ import annotations

import copy
import inspect
import time
from dataclasses import dataclass
from typing import Mapping

import numpy as np
import torch
import torch.nn as nn
from torch.utils.data import DataLoader, Dataset

from .allocation import ALLOCATORS
from .budget import TOLERANCE, Budget, meets
from .cost import CostModel, count
from .criteria import CRITERIA
from .errors import BudgetError, ConfigError, PrunekitError
from .graph import UnitGraph
from .methods import resolve
from .plan import Plan
from .signals import Signals


class VerificationError(PrunekitError):
    """The pruned model disagrees with the cost model: a bug, never a silent wrong answer."""


@dataclass
class Result:
    model: nn.Module
    plan: Plan
    summary: dict


def as_budget(budget) -> Budget:
    if isinstance(budget, Budget):
        return budget
    if isinstance(budget, str):
        return Budget.parse(budget)
    if isinstance(budget, Mapping):
        return Budget(**budget)
    if isinstance(budget, (int, float)) and not isinstance(budget, bool):
        return Budget(flops=budget)
    raise BudgetError(f"cannot read budget {budget!r}; use Budget(flops=0.5) or 'flops=0.5'")


def split_options(options: Mapping[str, object], criterion, allocator, method: str) -> tuple[dict, dict]:
    """Route each option to the criterion or allocator whose signature names it."""
    takes = [set(inspect.signature(f).parameters) - {"graph", "cost", "targets", "scores", "signals", "seed"}
             for f in (criterion, allocator)]
    unknown = sorted(set(options) - takes[0] - takes[1])
    if unknown:
        accepted = sorted(takes[0] | takes[1]) or ["none"]
        raise ConfigError(f"method {method!r} takes no option {unknown[0]!r}; it accepts: {', '.join(accepted)}")
    return ({k: v for k, v in options.items() if k in takes[0]},
            {k: v for k, v in options.items() if k in takes[1] and k not in takes[0]})


def compress(
    model: nn.Module,
    example_inputs,
    budget: Budget | str | float | Mapping,
    method: str = "l1",
    data: Dataset | DataLoader | None = None,
    seed: int = 0,
    *,
    ignore: tuple[str, ...] | list[str] = (),
    min_width: float = 0.05,
    round_to: int = 1,
    calibration_batches: int = 5,
    calibration_batch_size: int = 128,
    options: Mapping[str, object] | None = None,
    progress: bool = False,
) -> Result:
    """Prune a copy of ``model`` to ``budget``; the input model is left untouched.

    ``example_inputs`` fixes the input size the costs are counted at (use batch 1). ``options``
    go to the criterion or allocator that takes them (e.g. ``{"beta": 500}`` for itpruner).
    """
    if not 0.0 <= min_width < 1.0:
        raise ConfigError(f"min_width must be in [0, 1), got {min_width}")
    budget = as_budget(budget)
    recipe = resolve(method)
    criterion, allocator = CRITERIA.get(recipe.criterion), ALLOCATORS.get(recipe.allocator)
    crit_opts, alloc_opts = split_options(options or {}, criterion, allocator, recipe.name)
    t0 = time.perf_counter()
    pruned = copy.deepcopy(model)
    graph = UnitGraph(pruned, example_inputs, ignore=ignore, min_width=min_width, round_to=round_to)
    if not len(graph):
        raise ConfigError("this model has no prunable layers (all are protected or ignored)")
    cost = CostModel(graph)
    dense = cost.evaluate()
    targets = budget.targets(dense)
    smallest = cost.evaluate({u.name: u.min_keep for u in graph.units})
    budget.check_feasible(targets, smallest, dense)
    t_graph = time.perf_counter()

    torch.manual_seed(seed)
    signals = Signals(data, calibration_batches, calibration_batch_size, seed, progress) if data is not None else Signals()
    scores = criterion(graph, signals, seed, **crit_opts)
    t_score = time.perf_counter()
    widths = allocator(graph, cost, targets, scores, signals, seed, **alloc_opts)
    t_alloc = time.perf_counter()

    shape = list(example_inputs.shape) if isinstance(example_inputs, torch.Tensor) else []
    plan = Plan.from_widths(graph, widths, scores, method=recipe.name, budget=budget.describe(),
                            input_shape=shape, seed=seed)
    plan.apply(graph)
    t_apply = time.perf_counter()
    summary = verify(pruned, example_inputs, cost, plan, targets, dense)
    summary["method"] = {"name": recipe.name, "criterion": recipe.criterion, "allocator": recipe.allocator}
    summary["budget"] = budget.describe()
    summary["signals"] = signals.record
    summary["seconds"] = {"graph": t_graph - t0, "criterion": t_score - t_graph, "allocation": t_alloc - t_score,
                          "surgery": t_apply - t_alloc, "total": time.perf_counter() - t0}
    return Result(pruned, plan, summary)


def verify(model: nn.Module, example_inputs, cost: CostModel, plan: Plan, targets: dict, dense: dict) -> dict:
    """Measured MACs and parameters must equal the prediction, and the budget must hold."""
    predicted = cost.evaluate(plan.widths)
    macs, params = count(model, example_inputs)
    if round(predicted["macs"]) != macs or round(predicted["params"]) != params:
        raise VerificationError(
            f"cost model predicted {predicted['macs']:.0f} MACs / {predicted['params']:.0f} params but the pruned model "
            f"has {macs} / {params}; please report this model")
    measured = {"macs": macs, "params": params}
    if not meets(measured, targets):
        raise VerificationError(f"pruned model {measured} is above the budget {targets}; please report this model")
    binding = min(targets, key=lambda k: (targets[k] - measured[k]) / targets[k])
    return {
        "macs": {"dense": int(round(dense["macs"])), "pruned": macs, "target": targets.get("macs")},
        "params": {"dense": int(round(dense["params"])), "pruned": params, "target": targets.get("params")},
        "binding": binding,
        "budget_gap": (targets[binding] - measured[binding]) / targets[binding],
        "within_tolerance": (targets[binding] - measured[binding]) / targets[binding] <= TOLERANCE,
        "units": [{"name": n, "width": plan.dense_widths[n], "kept": plan.widths[n]} for n in plan.dense_widths],
    }
