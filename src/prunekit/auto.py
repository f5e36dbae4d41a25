"""``method="auto"``: choose the criterion and allocator for this model and budget by measurement.

No single method wins everywhere (on the shipped ResNet-20 the best method at 50% MACs is among the
worst at 20%), and planning is cheap next to the accuracy gap between choices. So every candidate
criterion x allocator is planned, its BatchNorm statistics re-estimated and its accuracy measured
on a held-out part of the *training* data (never the test set); the best one's plan is returned.

The cost is one calibration plus a cheap step per candidate: the calibration batches (``Signals``)
are drawn once for all criteria, each criterion scores the channels once (a ``Prepared``, as in a
sweep) and each allocator then only allocates, prunes a fresh copy, re-estimates BatchNorm and
evaluates. The data are split three ways, all from the training set: the calibration batches, the
BatchNorm re-estimation part (``holdout_split``'s rest) and the held-out images (``holdout_split``'s
held-out part minus any calibration image), so no candidate is scored on an image it was fitted on.
"""
from __future__ import annotations

import copy
import dataclasses
import time
from typing import Sequence

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset
from tqdm.auto import tqdm

from .allocation import ALLOCATORS
from .budget import Budget
from .criteria import CRITERIA
from .data import holdout_split
from .errors import BudgetError, ConfigError
from .methods import AUTO, PRESETS, resolve
from .signals import Signals
from .train import evaluate, recalibrate_bn

# Left out unless named in ``candidates``: the random control (a method that wins by chance is not a
# choice), the ratios allocator (it needs a hand-set ratio list) and acp (a search of its own, ~90
# held-out evaluations per candidate) and dagger (hundreds of training steps per candidate). Any other
# candidate that cannot plan (a ConfigError or BudgetError) is listed as skipped with its message; the others go on.
NOT_BY_DEFAULT = ("random", "ratios", "acp", "dagger",
                  "fisher_iterative",  # trains while it prunes, like dagger
                  "global_raw")  # global without per-Unit normalization: for criteria in common units (fisher)
BN_BATCHES = 20  # candidates are always scored after re-estimation, also when the result keeps stale statistics
OPTIONS = ("candidates", "search_budget", "holdout", "holdout_images")  # what options= may hold for auto


def default_candidates() -> list[str]:
    """Every criterion x allocator but the control: the presets first (in their registry order, so a
    short ``search_budget`` tries the known methods first), then the other combinations."""
    presets = {(m.criterion, m.allocator): m.name for m in map(PRESETS.get, PRESETS.names())}
    pairs = [(c, a) for c in CRITERIA.names() for a in ALLOCATORS.names()
             if c not in NOT_BY_DEFAULT and a not in NOT_BY_DEFAULT]
    named = sorted((presets[p] for p in pairs if p in presets), key=PRESETS.names().index)
    return named + [f"{c}+{a}" for c, a in pairs if (c, a) not in presets]


def check_candidates(candidates: str | Sequence[str] | None) -> list[str]:
    """The candidate methods (a list, or a comma-separated string as on the command line), each
    resolved before any work; duplicates (also ``l1`` and ``l1+uniform``) are refused."""
    if candidates is None:
        return default_candidates()
    names = [c.strip() for c in candidates.split(",")] if isinstance(candidates, str) else list(candidates)
    names = [n for n in names if n]
    if not names:
        raise ConfigError("candidates is empty; name at least one method, e.g. candidates=['l1', 'bn_scale']")
    seen: dict[tuple[str, str], str] = {}
    for name in names:
        if not isinstance(name, str) or name == AUTO.name:
            raise ConfigError(f"candidate {name!r} is not a method; use names from `prunekit methods`")
        m = resolve(name)
        if (m.criterion, m.allocator) in seen:
            raise ConfigError(f"candidates {seen[m.criterion, m.allocator]!r} and {name!r} are the same method; "
                              "list it once")
        seen[m.criterion, m.allocator] = name
    return names


class _Recorded(Dataset):
    """A dataset that remembers which items were read: the calibration batches' indices (and those of
    any batch the loader read past them), so the held-out images can leave them out whatever order
    the loader drew them in."""

    def __init__(self, data: Dataset):
        self.data, self.read = data, set()

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i):
        self.read.add(int(i))
        return self.data[i]


def split(data: Dataset, calibration: set[int], fraction: float, images: int | None,
          seed: int) -> tuple[Subset, Subset]:
    """(BatchNorm re-estimation part, held-out images): ``holdout_split`` of the training data, the
    held-out part without the calibration images and cut to ``images``; deterministic for a seed."""
    rest, held = holdout_split(data, fraction, seed)
    keep = [i for i in held.indices if i not in calibration]
    if images is not None:
        if images < 1:
            raise ConfigError(f"holdout_images must be >= 1, got {images}")
        keep = keep[:images]
    if not keep:
        raise ConfigError(f"the calibration batches read every held-out image of these {len(data)} training items; "
                          "use more data or fewer calibration batches (CLI: --calibration-batches)")
    return rest, Subset(data, keep)


def _fresh_record(signals: Signals) -> Signals:
    """The same batches and cached statistics, with a copy of the record: each candidate's summary
    shows what its own criterion and allocator recorded, as a plain compress would."""
    view = copy.copy(signals)
    view.record = dict(signals.record)
    return view


def _with_allocator(scored, recipe):
    """A criterion's scored Prepared with ``recipe``'s allocator: the budget-dependent step only."""
    return dataclasses.replace(scored, recipe=recipe, allocator=ALLOCATORS.get(recipe.allocator),
                               signals=_fresh_record(scored.signals))


def auto(model: nn.Module, example_inputs, budget: Budget, data: Dataset | None, seed: int = 0, *,
         candidates: str | Sequence[str] | None = None, search_budget: float | None = None,
         holdout: float = 0.1, holdout_images: int | None = 5000, bn_batches: int = 20,
         ignore=(), min_width: float = 0.05, round_to: int = 1, calibration_batches: int = 5,
         calibration_batch_size: int = 128, progress: bool = False):
    """The Result of the candidate with the best held-out accuracy (after BatchNorm re-estimation),
    exactly as a plain ``compress`` with that method and seed makes it; ``summary["auto"]`` holds
    the leaderboard. ``search_budget`` (seconds) stops the search with the best so far (at least one
    candidate is always scored). ``bn_batches`` as in compress (0: the returned model keeps stale
    statistics; candidates are still scored after re-estimation). Pass the training set without
    augmentation."""
    from .pipeline import prepare, reestimate_batchnorm  # pipeline dispatches method="auto" here
    t_start = time.perf_counter()
    if data is None:
        raise ConfigError("method 'auto' scores every candidate on held-out training data: pass data=... "
                          "(CLI: --dataset NAME)")
    if isinstance(data, DataLoader):
        raise ConfigError("method 'auto' splits a held-out part from the data: pass the Dataset, not a DataLoader")
    if search_budget is not None and not search_budget > 0:
        raise ConfigError(f"search_budget must be a number of seconds > 0, got {search_budget}")
    names = check_candidates(candidates)
    recipes = {n: resolve(n) for n in names}
    base = prepare(model, example_inputs, names[0], ignore=ignore, min_width=min_width, round_to=round_to)
    targets = base.targets(budget)  # an infeasible budget is refused before any calibration

    t0 = time.perf_counter()
    recorded = _Recorded(data)
    torch.manual_seed(seed)  # as Prepared.score does: the same images when the dataset augments
    shared = Signals(recorded, calibration_batches, calibration_batch_size, seed, progress)
    shared.dataset = data
    bn_part, held = split(data, recorded.read, holdout, holdout_images, seed)
    seconds = {"graph": base.seconds["graph"], "calibration": time.perf_counter() - t0, "criteria": {}}

    scored: dict[str, object] = {}  # criterion -> its scored Prepared (or the ConfigError it raised)
    board, skipped, best, stopped = [], [], None, False  # best: (accuracy, index in board, recipe)
    bar = tqdm(recipes.items(), desc="auto", unit="candidate", disable=not progress)
    for name, recipe in bar:
        stopped = stopped or (best is not None and search_budget is not None
                               and time.perf_counter() - t_start > search_budget)
        if stopped:
            skipped.append({"candidate": name, "reason": f"search budget of {search_budget:g} s spent"})
            continue
        bar.set_postfix_str(f"{name}; best {board[best[1]]['candidate']} {best[0]:.2f}%" if best else name)
        t1 = time.perf_counter()
        if recipe.criterion not in scored:
            p = dataclasses.replace(base, recipe=recipe, criterion=CRITERIA.get(recipe.criterion), options=({}, {}),
                                    seconds=dict(base.seconds))
            try:
                p.score(data, seed, calibration_batches, calibration_batch_size, progress,
                        signals=_fresh_record(shared))
                seconds["criteria"][recipe.criterion] = p.seconds["criterion"]
                scored[recipe.criterion] = p
            except (ConfigError, BudgetError) as e:
                scored[recipe.criterion] = e
        p = scored[recipe.criterion]
        if isinstance(p, Exception):
            skipped.append({"candidate": name, "reason": str(p)})
            continue
        q = _with_allocator(p, recipe)
        t2 = time.perf_counter()
        try:
            result = q.prune(budget, targets, seed, fresh=True)
        except (ConfigError, BudgetError) as e:
            skipped.append({"candidate": name, "reason": str(e)})
            continue
        recalibrate_bn(result.model, bn_part, batches=bn_batches or BN_BATCHES, seed=seed)
        accuracy = evaluate(result.model, held)
        board.append({"candidate": name, "heldout_accuracy": accuracy, "macs": result.summary["macs"]["pruned"],
                      "params": result.summary["params"]["pruned"], "seconds": time.perf_counter() - t2,
                      "criterion_seconds": t2 - t1})
        if best is None or accuracy > best[0]:  # ties: the earlier candidate
            best = (accuracy, len(board) - 1, recipe)
        del result
    bar.close()
    if best is None:
        raise ConfigError("method 'auto' could plan no candidate: " + "; ".join(
            f"{s['candidate']}: {s['reason']}" for s in skipped[:3]))

    recipe = best[2]  # pruned once more from its criterion's scores: what a plain compress of it makes
    result = _with_allocator(scored[recipe.criterion], recipe).prune(budget, targets, seed, fresh=True)
    reestimate_batchnorm(result, data, bn_batches, seed)
    chosen = board[best[1]]["candidate"]
    order = sorted(range(len(board)), key=lambda i: (-board[i]["heldout_accuracy"], i))
    seconds["search"] = time.perf_counter() - t_start
    result.summary["auto"] = {
        "chosen": chosen, "leaderboard": [board[i] for i in order], "skipped": skipped,
        "heldout_images": len(held), "bn_images": len(bn_part), "bn_batches": bn_batches or BN_BATCHES,
        "calibration_images": sum(len(x) for x, _ in shared.batches()), "search_budget": search_budget,
        "stopped_early": stopped, "seconds": seconds}
    result.summary["seconds"]["search"] = seconds["search"]
    result.summary["seconds"]["total"] = time.perf_counter() - t_start
    return result


def options(options: dict | None) -> dict:
    """The ``options=`` of ``compress(method="auto")``: only the search's own settings."""
    options = dict(options or {})
    unknown = sorted(set(options) - set(OPTIONS))
    if unknown:
        raise ConfigError(f"method 'auto' takes no option {unknown[0]!r}; it accepts: {', '.join(OPTIONS)}")
    return options
