"""The straight line: model -> Units -> costs -> scores -> widths -> plan -> surgery -> verified result."""
from __future__ import annotations

import copy
import inspect
import time
from dataclasses import dataclass
from typing import Callable, Mapping

import torch
import torch.nn as nn
from torch.utils.data import DataLoader, Dataset

from .allocation import ALLOCATORS
from .budget import TOLERANCE, Budget, explain_gap, meets
from .cost import CostModel, check_costs, count, dry_run
from .criteria import CRITERIA
from .errors import BudgetError, ConfigError, PrunekitError
from .graph import UnitGraph
from .methods import AUTO, Method, is_lowrank, resolve
from .plan import Plan
from .reconstruct import check_images, reconstruct_result
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


# a latency target up to this factor below the tables' smallest model is left to the closed loop's timing
CLOSED_LOOP_SLACK = 1.5


def default_round_to(round_to: int | None, budget: Budget, latency) -> int:
    if round_to is not None:
        return round_to
    if budget.needs_latency:
        from .latency import LatencyConfig
        return LatencyConfig.of(latency).step or 1
    return 1


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
    round_to: int | None = None,
    calibration_batches: int = 5,
    calibration_batch_size: int = 128,
    options: Mapping[str, object] | None = None,
    progress: bool = False,
    bn_batches: int = 20,
    latency: Mapping | None = None,
    reconstruct: int = 512,
    drop_blocks: bool = False,
) -> Result:
    """Prune a copy of ``model`` to ``budget``; the input model is left untouched.

    ``example_inputs`` fixes the input size the costs are counted at (use batch 1). ``options``
    go to the criterion or allocator that takes them (e.g. ``{"beta": 500}`` for itpruner).
    With ``data``, the pruned model's BatchNorm statistics are re-estimated on ``bn_batches``
    training batches (0: keep the dense model's, which leave a pruned model near chance).
    ``latency``: how latency is measured (``prunekit.latency.LatencyConfig`` options: threads, batch,
    snap, ...); a speedup/latency_ms budget measures with the defaults when it is None.
    ``round_to`` (None): widths in multiples of the latency tables' ``step`` under a latency budget
    (the widths the tables measured rather than interpolated, and the fast ones), else free.
    ``reconstruct`` (training images; 0: off): with ``data``, every layer whose inputs were pruned is
    refit to the dense model's outputs before BatchNorm is re-estimated (``prunekit.reconstruct``).
    ``drop_blocks``: the inner Unit of a residual branch may go to width 0, which removes the branch
    (``prunekit.drop``): the per-op time that no width removes, the most of it at batch 1 on a CPU.
    """
    budget = as_budget(budget)
    round_to = default_round_to(round_to, budget, latency)
    check_bn_batches(bn_batches)
    check_images(reconstruct)
    if drop_blocks and (method == AUTO.name or is_lowrank(method)):
        raise ConfigError(f"drop_blocks works with the channel-pruning methods, not {method!r}; pick one "
                          f"(e.g. l1+global) or leave drop_blocks off")
    if method == AUTO.name:  # plans every candidate, returns the best one's compress (prunekit.auto)
        from .auto import auto, options as auto_options
        return auto(model, example_inputs, budget, data, seed, ignore=ignore, min_width=min_width, round_to=round_to,
                    calibration_batches=calibration_batches, calibration_batch_size=calibration_batch_size,
                    bn_batches=bn_batches, progress=progress, reconstruct=reconstruct, **auto_options(options))
    if is_lowrank(method):  # decompositions, alone or after channel pruning ("l1+global,svd"): prunekit.lowrank
        from .lowrank.method import compress_lowrank
        return compress_lowrank(model, example_inputs, budget, method, data, seed, ignore=ignore, min_width=min_width,
                                round_to=round_to, calibration_batches=calibration_batches,
                                calibration_batch_size=calibration_batch_size, options=options, progress=progress,
                                bn_batches=bn_batches)
    prepared = prepare(model, example_inputs, method, ignore=ignore, min_width=min_width, round_to=round_to,
                       options=options, latency=latency, drop_blocks=drop_blocks)
    targets = prepared.targets(budget)
    prepared.score(data, seed, calibration_batches, calibration_batch_size, progress)
    timed = prepared.latency is not None and prepared.latency.measure  # measured next to the prediction
    if timed and budget.needs_latency and prepared.latency.feedback:
        from .latency.feedback import plan_to_measured
        result = plan_to_measured(prepared, budget, targets, seed, model, example_inputs)
    else:
        result = prepared.prune(budget, targets, seed)
        if timed:
            from .latency import measure_result
            measure_result(result, model, example_inputs, prepared.latency)
    reconstruct_result(result, model, prepared.graph, data, reconstruct, seed)
    reestimate_batchnorm(result, data, bn_batches, seed)
    return result


def check_bn_batches(bn_batches) -> None:
    if isinstance(bn_batches, bool) or not isinstance(bn_batches, int) or bn_batches < 0:
        raise ConfigError(f"bn_batches must be an integer >= 0 (0 turns BatchNorm re-estimation off), got {bn_batches!r}")


def reestimate_batchnorm(result: Result, data: Dataset | DataLoader | None, batches: int = 20, seed: int = 0) -> str:
    """Pruning changes every BatchNorm layer's input, so the dense running statistics are stale:
    re-estimate them on training batches before the model is saved, exported or evaluated.
    Records ``summary["batchnorm"]``: "re-estimated", "stale" (no data or 0 batches) or "none"."""
    if not any(isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats for m in result.model.modules()):
        state = "none"
    elif data is None or batches == 0:
        state = "stale"
    else:
        from .train import recalibrate_bn  # the training stack is heavy; load it only when used
        recalibrate_bn(result.model, data.dataset if isinstance(data, DataLoader) else data, batches=batches, seed=seed)
        state = "re-estimated"
    result.summary["batchnorm"] = state
    result.summary["bn_batches"] = batches if state == "re-estimated" else 0
    return state


@dataclass
class Prepared:
    """Everything a plan needs that does not depend on the budget: the Units and costs of a copy of
    the model, and (after ``score``) the calibration Signals and channel scores. A sweep computes it
    once and prunes to many budgets; ``compress`` is one ``prune``."""

    model: nn.Module  # the caller's model, never modified
    example_inputs: object
    graph: UnitGraph  # built on a private copy that stays dense until prune() without a graph
    cost: CostModel
    dense: dict
    smallest: dict
    recipe: Method
    criterion: Callable
    allocator: Callable
    options: tuple[dict, dict]  # (criterion options, allocator options)
    graph_options: dict
    seconds: dict
    signals: Signals | None = None
    scores: dict | None = None
    rng_state: torch.Tensor | None = None
    latency: object | None = None  # prunekit.latency.LatencyConfig once latency tables are attached

    def targets(self, budget: Budget) -> dict:
        """Absolute targets of ``budget``; refused before any calibration work if no model meets them."""
        if budget.needs_latency and self.cost.latency is None:
            from .latency import attach
            attach(self)
        targets = budget.targets(self.dense)
        lat = self.latency
        if "latency" in targets and lat is not None and lat.measure and lat.feedback and \
                targets["latency"] * CLOSED_LOOP_SLACK >= self.smallest["latency"]:
            # the tables' prediction is not the timing (per-op overhead inside a model differs): the closed
            # loop times the smallest model before it refuses (prunekit.latency.feedback)
            targets["latency"] = max(targets["latency"], self.smallest["latency"])
        budget.check_feasible(targets, self.smallest, self.dense)
        return targets

    def score(self, data, seed: int, calibration_batches: int, calibration_batch_size: int, progress: bool,
              signals: Signals | None = None) -> None:
        """Draw the calibration batches (or take ``signals`` drawn already: auto shares them between
        criteria) and rank the channels of every Unit, once."""
        t0 = time.perf_counter()
        with torch.random.fork_rng(devices=[]):  # seeded, and the caller's global RNG is left as it was
            torch.manual_seed(seed)
            if signals is None:
                signals = (Signals(data, calibration_batches, calibration_batch_size, seed, progress)
                           if data is not None else Signals())
            self.signals = signals
            self.scores = self.criterion(self.graph, self.signals, seed, **self.options[0])
            self.rng_state = torch.get_rng_state()  # every budget's allocation starts from the same state
        self.seconds["criterion"] = time.perf_counter() - t0

    def prune(self, budget: Budget, targets: dict, seed: int, fresh: bool = False) -> Result:
        """Allocate widths for ``targets`` on the dense graph, apply them and verify. The prepared copy
        itself is pruned (so it is no longer dense) unless ``fresh``: then a new dense copy is."""
        if self.scores is None:
            raise RuntimeError("Prepared.score() must run before prune()")
        t0 = time.perf_counter()
        with torch.random.fork_rng(devices=[]):
            torch.set_rng_state(self.rng_state)
            depth = None
            if self.graph_options.get("drop_blocks") and self.graph.droppable:  # which branches go first
                from .depth import allocate as allocate_depth
                widths, depth = allocate_depth(self, targets, seed)
            else:
                widths = self.allocator(self.graph, self.cost, targets, self.scores, self.signals, seed,
                                        **self.options[1])
        snapped = None
        if self.latency is not None and self.latency.snap:  # hardware-friendly widths (prunekit.latency.snap)
            from .latency import snap_widths
            widths, snapped = snap_widths(self.graph, self.cost, targets, widths, self.scores)
        t_alloc = time.perf_counter()
        shape = list(self.example_inputs.shape) if isinstance(self.example_inputs, torch.Tensor) else []
        plan = Plan.from_widths(self.graph, widths, self.scores, method=self.recipe.name, budget=budget.describe(),
                                input_shape=shape, seed=seed)
        graph = UnitGraph(copy.deepcopy(self.model), self.example_inputs, **self.graph_options) if fresh else self.graph
        t_copy = time.perf_counter()
        plan.apply(graph)
        t_apply = time.perf_counter()
        summary = verify(graph.model, self.example_inputs, self.cost, plan, targets, self.dense)
        summary["method"] = {"name": self.recipe.name, "criterion": self.recipe.criterion,
                             "allocator": self.recipe.allocator}
        summary["budget"] = budget.describe()
        if self.cost.latency is not None:
            from .latency import predicted
            summary["latency"] = {**predicted(self.cost, plan.widths, targets), "snapped": snapped}
        summary["signals"] = self.signals.record
        if depth is not None:
            summary["depth"] = depth
        summary["seconds"] = {**self.seconds, "allocation": t_alloc - t0, "copy": t_copy - t_alloc,
                              "surgery": t_apply - t_copy}
        # phases an allocator timed inside its allocation (dagger: gate_training), shown beside them
        summary["seconds"].update(self.signals.record.get("seconds") or {})
        summary["seconds"]["total"] = self.seconds["graph"] + self.seconds["criterion"] + time.perf_counter() - t0
        return Result(graph.model, plan, summary)


def prepare(model: nn.Module, example_inputs, method: str = "l1", *, ignore=(), min_width: float = 0.05,
            round_to: int = 1, options: Mapping[str, object] | None = None, latency=None,
            drop_blocks: bool = False) -> Prepared:
    """Resolve the method and build the UnitGraph and CostModel of a copy of ``model``; then, before
    any data is read, check that the cost model measures the dense model exactly and that a trial
    surgery with random keep-sets works, so an unsupported model is refused in seconds."""
    if not 0.0 <= min_width < 1.0:
        raise ConfigError(f"min_width must be in [0, 1), got {min_width}")
    recipe = resolve(method)
    criterion, allocator = CRITERIA.get(recipe.criterion), ALLOCATORS.get(recipe.allocator)
    split = split_options(options or {}, criterion, allocator, recipe.name)
    t0 = time.perf_counter()
    graph_options = {"ignore": ignore, "min_width": min_width, "round_to": round_to, "drop_blocks": bool(drop_blocks)}
    graph = UnitGraph(copy.deepcopy(model), example_inputs, **graph_options)
    if not len(graph):
        raise ConfigError("this model has no prunable layers (all are protected or ignored)")
    cost = CostModel(graph)
    check_costs(cost, graph.model, example_inputs)
    dry_run(model, example_inputs, cost, **graph_options)
    dense = cost.evaluate()
    smallest = cost.evaluate({u.name: u.min_keep for u in graph.units})
    prepared = Prepared(model, example_inputs, graph, cost, dense, smallest, recipe, criterion, allocator, split,
                        graph_options, {"graph": time.perf_counter() - t0})
    if latency is not None:  # measured (or read from the cache) while the graph is dense
        from .latency import attach
        t1 = time.perf_counter()
        attach(prepared, latency)
        prepared.seconds["latency_tables"] = time.perf_counter() - t1
    return prepared


def verify(model: nn.Module, example_inputs, cost: CostModel, plan: Plan, targets: dict, dense: dict) -> dict:
    """Measured MACs and parameters must equal the prediction, and the budget must hold."""
    predicted = cost.evaluate(plan.widths)
    macs, params = count(model, example_inputs)
    if round(predicted["macs"]) != macs or round(predicted["params"]) != params:
        raise VerificationError(
            f"cost model predicted {predicted['macs']:.0f} MACs / {predicted['params']:.0f} params but the pruned model "
            f"has {macs} / {params}; please report this model")
    measured = {"macs": macs, "params": params}
    if "latency" in targets:  # predicted by the tables: a timing is never exact (measured ones: summary["latency"])
        measured["latency"] = cost.latency(cost.vector(plan.widths))
    if not meets(measured, targets):
        raise VerificationError(f"pruned model {measured} is above the budget {targets}; please report this model")
    binding = min(targets, key=lambda k: (targets[k] - measured[k]) / targets[k])
    gap = (targets[binding] - measured[binding]) / targets[binding]
    return {
        "macs": {"dense": int(round(dense["macs"])), "pruned": macs, "target": targets.get("macs")},
        "params": {"dense": int(round(dense["params"])), "pruned": params, "target": targets.get("params")},
        "binding": binding,
        "budget_gap": (targets[binding] - measured[binding]) / targets[binding],
        "within_tolerance": gap <= TOLERANCE,
        # why the binding budget is missed by more than the tolerance (None when it is met)
        "budget_note": explain_gap(cost, plan.widths, targets, binding, gap) if gap > TOLERANCE else None,
        "units": [{"name": n, "width": plan.dense_widths[n], "kept": plan.widths[n]} for n in plan.dense_widths],
        "layers": layer_breakdown(cost, plan.widths),
    }


def layer_breakdown(cost: CostModel, widths: dict[str, int]) -> list[dict]:
    """Per-layer MACs and parameters, dense and pruned (they sum to the totals): the run directory
    keeps no dense model, so the report's cost breakdown is recorded here."""
    dense, pruned = cost.layer_costs(), cost.layer_costs(widths)
    return [{"name": name, "type": d["type"], "macs_dense": round(d["macs"]), "macs_pruned": round(pruned[name]["macs"]),
             "params_dense": round(d["params"]), "params_pruned": round(pruned[name]["params"])}
            for name, d in dense.items()]
