"""Depth before width: which residual branches ``drop_blocks`` removes, then the method's widths.

Left to itself, an allocator reaches a branch's width 0 only by ranking its last channels below
everything else, which says nothing about the branch as a whole; under a batch-1 latency budget,
where narrower layers barely get faster, it then narrows every Unit to the floor before it drops
a branch. So the branches are chosen first:

1. Rank the droppable Units by how much removing each branch alone changes the model's outputs:
   KL(dense softmax || softmax with the branch removed) on the calibration images (on seeded
   Gaussian inputs without data). Removing a branch is zeroing its readers' outputs (exactly what
   ``prunekit.drop`` computes), done with a forward hook, so ranking costs one forward per branch.
2. For each count k of the least important branches (``depth_candidates`` counts, evenly spaced
   from the least that makes the budget reachable to all of them), the method's allocator plans the
   other widths with those k pinned at 0: the cost polynomials see them as 0 whatever width the
   allocator gives them (:class:`Pinned`), and they are set to 0 after. The other branches keep at
   least their minimum width, as without ``drop_blocks``.
3. The count whose plan scores best on held-out training images after BatchNorm re-estimation
   (``allocation.fitness.HeldOut``, the split of ``method="auto"``) wins, after one refinement: the
   counts halfway to the best one's neighbours are planned and scored too. Without data, the least
   count that makes the budget reachable.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from .drop import _layer_dims
from .graph import _flatten, _forward
from .errors import BudgetError

CANDIDATES = 6  # counts of removed branches planned and scored


class Pinned:
    """A cost polynomial with some Units' widths held at 0 (a removed branch costs what it costs)."""

    def __init__(self, poly, index: list[int]):
        self.poly, self.index = poly, list(index)

    def _zeroed(self, w) -> np.ndarray:
        w = np.array(w, dtype=np.float64, copy=True)
        w[self.index] = 0
        return w

    def __call__(self, w) -> float:
        return self.poly(self._zeroed(w))

    def grad(self, w) -> np.ndarray:
        g = np.array(self.poly.grad(self._zeroed(w)), dtype=np.float64)
        g[self.index] = 0
        return g

    def step_deltas(self, w, step) -> np.ndarray:
        d = np.array(self.poly.step_deltas(self._zeroed(w), step), dtype=np.float64)
        d[self.index] = 0
        return d

    def tensor(self, w: torch.Tensor) -> torch.Tensor:
        mask = torch.ones_like(w)
        mask[self.index] = 0
        return self.poly.tensor(w * mask)

    def __getattr__(self, name):
        return getattr(self.poly, name)


def pinned(cost, index: list[int]):
    """A shallow copy of the CostModel whose macs, params (and latency) hold ``index`` at 0."""
    import copy
    view = copy.copy(cost)
    for key in ("macs", "params", "latency"):
        if getattr(cost, key, None) is not None:
            setattr(view, key, Pinned(getattr(cost, key), index))
    return view


@torch.no_grad()
def branch_importance(graph, signals, seed: int = 0) -> dict[str, float]:
    """How much removing each droppable Unit's branch alone changes the model's outputs (``_change``)."""
    model = graph.model
    modules = dict(model.named_modules())
    if signals is not None and signals.dataset is not None:
        xs = [x for x, _ in signals.batches()][:2]
    else:
        g = torch.Generator().manual_seed(seed)
        xs = [torch.randn((32, *graph.example_inputs.shape[1:]), generator=g)]
    was = model.training
    model.eval()
    try:
        dense = [_flatten(_forward(model, x)) for x in xs]
        out = {}
        for unit in (u for u in graph.units if u.name in graph.droppable):
            hooks = [modules[r].register_forward_hook(_removed) for r in _layer_dims(unit, modules)[1]]
            try:
                out[unit.name] = float(np.mean([_change(d, _flatten(_forward(model, x))) for x, d in zip(xs, dense)]))
            finally:
                for h in hooks:
                    h.remove()
    finally:
        model.train(was)
    return out


def _change(dense: list, removed: list) -> float:
    """KL(dense softmax || removed softmax) for logits (one 2-D output), else the squared change of
    every output relative to its squared size."""
    if len(dense) == 1 and dense[0].dim() == 2:
        return F.kl_div(F.log_softmax(removed[0], 1), F.log_softmax(dense[0], 1), log_target=True,
                        reduction="batchmean").item()
    return sum(((a - b).pow(2).sum() / a.pow(2).sum().clamp_min(1e-12)).item() for a, b in zip(dense, removed))


def _removed(module, inputs, output):
    """A reader of a removed branch: its bias (or 0) everywhere, as prunekit.drop computes."""
    if module.bias is None:
        return torch.zeros_like(output)
    return module.bias.view(-1, *([1] * (output.dim() - 2))).expand_as(output).clone()


def allocate(prepared, targets: dict, seed: int) -> tuple[np.ndarray, dict]:
    """Widths with the best-scoring count of removed branches (module docstring), and the search's
    record for ``summary["depth"]``. The ranking and the scores are kept on ``prepared`` (the closed
    latency loop plans again with the same ones)."""
    names = [u.name for u in prepared.graph.units]
    state = prepared.__dict__.setdefault("depth_state", {"fitness": {}})
    if "importance" not in state:
        state["importance"] = branch_importance(prepared.graph, prepared.signals, seed)
    importance = state["importance"]
    order = sorted(importance, key=lambda n: (importance[n], n))
    counts = _counts(prepared, targets, order, state.get("count"))
    judge = _judge(prepared, state["fitness"], seed)
    rows, best = [], None

    def plan(k: int) -> None:
        nonlocal best
        w = _widths_without(prepared, targets, [names.index(n) for n in order[:k]], seed)
        if w is None:
            return
        rows.append({"dropped": k, "branches": order[:k], "fitness": judge(w) if judge else None})
        if best is None or (judge and rows[-1]["fitness"] > rows[best[0]]["fitness"]):
            best = (len(rows) - 1, w)

    for k in counts:
        plan(k)
        if judge is None and best is not None:
            break  # without data: the least count that reaches the budget
    if judge is not None and best is not None and len(counts) > 1:
        for k in _between(counts, rows[best[0]]["dropped"]):  # the coarse grid's best, refined once
            plan(k)
    if best is None:
        raise BudgetError("no count of removed residual branches lets the allocator meet the budget; raise the budget")
    info = {"importance": importance, "candidates": rows, "chosen": rows[best[0]]["dropped"],
            "held": state.get("count") is not None and counts == [state["count"]],
            "selected_by": "held-out accuracy after BatchNorm re-estimation" if judge else "least count reaching the budget"}
    return best[1], info


def _between(counts: list[int], best: int) -> list[int]:
    """The counts halfway from ``best`` to its neighbours on the coarse grid (not tried yet): six
    counts over 27 branches are 5 apart, and at one budget the best count can sit between two (a
    speed-up plan that keeps every other width whole overshoots its target)."""
    i = counts.index(best)
    near = [counts[j] for j in (i - 1, i + 1) if 0 <= j < len(counts)]
    return sorted({(best + n) // 2 if n < best else (best + n + 1) // 2 for n in near} - set(counts))


def _counts(prepared, targets: dict, order: list[str], held: int | None) -> list[int]:
    """``CANDIDATES`` counts from the least that makes the budget reachable (the other Units at their
    usual minimum) to all; only ``held`` when it still reaches it."""
    graph, cost = prepared.graph, prepared.cost
    names = [u.name for u in graph.units]
    keep_min = np.array([graph.branch_min.get(u.name, u.min_keep) for u in graph.units], dtype=np.float64)

    def reachable(k: int) -> bool:
        w = keep_min.copy()
        w[[names.index(n) for n in order[:k]]] = 0
        return all(getattr(cost, key)(w) <= t for key, t in targets.items())

    if held is not None and reachable(held):  # the closed loop re-plans the widths only (``hold``)
        return [held]
    least = next((k for k in range(len(order) + 1) if reachable(k)), len(order))
    return sorted({int(round(v)) for v in np.linspace(least, len(order), min(CANDIDATES, len(order) - least + 1))})


def _widths_without(prepared, targets: dict, index: list[int], seed: int) -> np.ndarray | None:
    """The method's allocation with the Units at ``index`` removed (pinned at 0) and no other branch
    removed; None when the allocator cannot meet the budget so."""
    graph = prepared.graph
    floors = {u.name: u.min_keep for u in graph.units}
    for u in graph.units:
        u.min_keep = int(graph.branch_min.get(u.name, u.min_keep))
    try:
        w = prepared.allocator(graph, pinned(prepared.cost, index), targets, prepared.scores, prepared.signals, seed,
                               **prepared.options[1])
    except BudgetError:
        return None
    finally:
        for u in graph.units:
            u.min_keep = floors[u.name]
    w = np.asarray(w, dtype=np.float64).copy()
    w[index] = 0
    return w


class hold:
    """Within the block, ``prepared``'s plans keep the count of removed branches of the plan ``set``
    is given.

    The closed latency loop re-plans with the tables' target corrected by the measured miss; a new
    count each round would jump between structures the tables mispredict differently. It searches the
    count twice, on the tables' target and on the target the first timing corrected (the count that
    is best at one latency need not be at one 12% lower: ResNet-56, speedup=2 at batch 64, kept 11
    branches at 58% before fine-tuning where a MACs budget at the same MACs kept 16 at 80%;
    bench/results/latency_hold_first.md), and holds the second: after it only the widths move."""

    def __init__(self, prepared):
        self.state = prepared.__dict__.setdefault("depth_state", {"fitness": {}})

    def set(self, result) -> None:
        """Hold ``result``'s count unless one is held already (a later one, searched because the held
        count no longer reached the target, is not held: a count so large that even full widths are
        too fast would trap it)."""
        if "depth" in result.summary:
            self.state.setdefault("count", result.summary["depth"]["chosen"])

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.state.pop("count", None)


def _judge(prepared, cache: dict, seed: int):
    """Held-out top-1 of a width vector after BatchNorm re-estimation (cached per structure), or None
    without data."""
    signals = prepared.signals
    if signals is None or signals.dataset is None:
        return None
    from .allocation.fitness import HeldOut, pruned_copy
    held = HeldOut(signals.dataset, "bn", seed=seed)

    def judge(w: np.ndarray) -> float:
        key = tuple(int(v) for v in w)
        if key not in cache:
            cache[key] = held(pruned_copy(prepared.graph, w, prepared.scores))
        return cache[key]

    return judge


__all__ = ["CANDIDATES", "Pinned", "allocate", "branch_importance", "hold", "pinned"]
