"""Closed-loop latency budgets: plan, time the pruned model, plan again with the table's target corrected.

The tables time each layer alone, its input hot in cache; inside the model the same layer reads what
the previous one just wrote, and a shared machine's speed drifts between building the tables and the
check. So the first plan's measured speed-up can miss the target by tens of percent. Scaling the
table's target by (target / measured) and planning again (the channel scores are kept: a re-plan is
one allocation and one surgery) lands the measured latency within ``tolerance`` in a few rounds.
"""
from __future__ import annotations

import math

from ..errors import BudgetError
from ..depth import hold
from . import measure_result


def plan_to_measured(prepared, budget, targets: dict, seed: int, model, example_inputs):
    """The plan whose measured latency at the config's batch is closest to the budget's (every round
    recorded in ``summary["latency"]["feedback"]``); a BudgetError when even the smallest model
    measures too slow."""
    config = prepared.latency
    tol, smallest = config.tolerance, prepared.smallest["latency"]
    rounds, results = [], []

    def plan(table_target: float) -> float:
        result = prepared.prune(budget, {**targets, "latency": table_target}, seed, fresh=True)
        if rounds:  # removed residual branches (drop_blocks): searched again at the target the first
            held.set(result)  # timing corrected, then held; later rounds move the widths only
        measured = measure_result(result, model, example_inputs, config)[str(config.batch)]
        goal = budget.latency_goal(measured["dense_ms"])
        error = budget.latency_error(measured)
        depth = result.summary.get("depth", {})
        rounds.append({"table_target_ms": table_target, "goal_ms": goal, "dense_ms": measured["dense_ms"],
                       "dropped": depth.get("chosen"), "count_held": depth.get("held"),
                       "measured_ms": measured["pruned_ms"],
                       "predicted_ms": result.summary["latency"]["predicted"][str(config.batch)]["pruned_ms"],
                       "measured_speedup": measured["speedup"], "error": error})
        results.append(result)
        return error

    target = targets["latency"]
    with hold(prepared) as held:
        for _ in range(config.feedback + 1):
            error = plan(target)
            if abs(error) <= tol or (target <= smallest * (1 + 1e-9) and error > 0):
                break
            target = max(smallest, next_target(rounds))
        slow = all(r["error"] > tol for r in rounds)
        if slow and rounds[-1]["table_target_ms"] > smallest * (1 + 1e-9):  # is the smallest model fast enough?
            slow = plan(smallest) > tol  # (no count of removed branches but the largest reaches it)
    if slow:
        r = rounds[-1]
        raise BudgetError(f"{budget.describe()} at batch {config.batch} is out of reach on this machine now: the "
                          f"smallest prunable model measured {r['measured_speedup']:.2f}x ({r['measured_ms']:.4g} ms"
                          f" against {r['goal_ms']:.4g} ms wanted); lower the target or min_width")
    best = min(range(len(rounds)), key=lambda i: _rank(rounds[i]["error"], tol))
    result = results[best]
    result.summary["latency"]["feedback"] = {"rounds": rounds, "chosen": best, "tolerance": tol}
    return result


def next_target(rounds: list[dict]) -> float:
    """The tables' next target: between the closest too-slow and too-fast rounds once both exist (the
    secant in log space, kept off the ends: timings are noisy and the response is a staircase), else
    the last prediction scaled by target / measured."""
    slow = [r for r in rounds if r["error"] > 0]
    fast = [r for r in rounds if r["error"] < 0]
    if not (slow and fast):
        last = rounds[-1]
        return last["predicted_ms"] / (1 + last["error"])
    hi = min(slow, key=lambda r: r["table_target_ms"])
    lo = max(fast, key=lambda r: r["table_target_ms"])
    a, b = math.log(lo["table_target_ms"]), math.log(hi["table_target_ms"])
    t = -lo["error"] / (hi["error"] - lo["error"])
    return math.exp(a + min(max(t, 0.2), 0.8) * (b - a))


def _rank(error: float, tolerance: float) -> tuple:
    """Within tolerance first, then as fast as asked or faster, then closest."""
    return abs(error) > tolerance, error > tolerance, abs(error)
