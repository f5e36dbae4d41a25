"""``method="auto"``: choose the criterion and allocator for this model and budget by measurement.

No single method wins everywhere (on the shipped ResNet-20 the best method at 50% MACs is among the
worst at 20%), and planning is cheap next to the accuracy gap between choices. So every candidate
criterion x allocator is planned, refit (``reconstruct``), its BatchNorm statistics re-estimated and its accuracy measured
on a held-out part of the *training* data (never the test set); the best one's plan is returned.

The cost is one calibration plus a cheap step per candidate: the calibration batches (``Signals``)
are drawn once for all criteria, each criterion scores the channels once (a ``Prepared``, as in a
sweep) and each allocator then only allocates, prunes a fresh copy, re-estimates BatchNorm and
evaluates. The data are split three ways, all from the training set: the calibration batches, the
BatchNorm re-estimation part (``holdout_split``'s rest) and the held-out images (``holdout_split``'s
held-out part minus any calibration image), so no candidate is scored on an image it was fitted on.
The search acp (tried last) selects among its swarm on held-out images of its own; those are left out
of auto's held-out images too, so it is not judged on the images it was chosen on.

One-shot accuracy does not predict the order after fine-tuning (on ResNet-20 at 20% MACs the best
one-shot method was the worst after one epoch of distillation), so for a model that will be
fine-tuned (``finetune_steps``) the best few candidates are distilled briefly and ranked after it.
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
from .reconstruct import reconstruct_result
from .methods import AUTO, PRESETS, resolve
from .signals import Signals
from .train import evaluate, recalibrate_bn

# Left out unless named in ``candidates``: the random control (a method that wins by chance is not a
# choice), the ratios allocator (it needs a hand-set ratio list), dagger (hundreds of training steps per
# candidate) and fisher_iterative (trains while it prunes, like dagger). Any other candidate that cannot
# plan (a ConfigError or BudgetError) is listed as skipped with its message; the others go on.
NOT_BY_DEFAULT = ("random", "ratios", "dagger", "fisher_iterative")
# Allocators tried only in their presets: global_raw compares raw scores across Units, which only a
# criterion in common units makes fair (fisher); acp is a search of its own (a few dozen held-out
# evaluations), tried once, last, with the CPU-sized swarm of CANDIDATE_OPTIONS.
PRESETS_ONLY = ("global_raw", "acp")
CANDIDATE_OPTIONS = {"acp": {"particles": 6, "cycles": 4, "fitness_batches": 5, "holdout_images": 1000}}
PROXY_STEPS = 300  # finetune_steps when the CLI fine-tunes (--finetune-epochs): ~2/3 of an epoch of batch 128 on Fashion-MNIST
BN_BATCHES = 20  # candidates are always scored after re-estimation, also when the result keeps stale statistics
OPTIONS = ("candidates", "candidate_options", "search_budget", "holdout", "holdout_images", "finetune_steps",
           "finalists", "finetune_lr")  # what options= may hold for auto


def default_candidates() -> list[str]:
    """Every criterion x allocator but the control: the presets first (in their registry order, so a
    short ``search_budget`` tries the known methods first), then the other combinations, then the
    searches (``PRESETS_ONLY`` allocators) last."""
    left_out = lambda m: m.criterion in NOT_BY_DEFAULT or m.allocator in NOT_BY_DEFAULT or m.name in NOT_BY_DEFAULT  # noqa: E731
    presets = [m for m in map(PRESETS.get, PRESETS.names()) if not left_out(m)]
    named = {(m.criterion, m.allocator) for m in presets}
    pairs = [f"{c}+{a}" for c in CRITERIA.names() for a in ALLOCATORS.names()
             if c not in NOT_BY_DEFAULT and a not in NOT_BY_DEFAULT + PRESETS_ONLY and (c, a) not in named]
    searches = [m.name for m in presets if m.allocator == "acp"]
    return [m.name for m in presets if m.allocator != "acp"] + pairs + searches


def candidate_options_of(name: str, given: dict | None) -> dict:
    """The options a candidate plans with: ``candidate_options[name]`` when given, else the CPU-sized
    defaults of its allocator (``CANDIDATE_OPTIONS``), else none."""
    if given and name in given:
        return dict(given[name])
    return dict(CANDIDATE_OPTIONS.get(resolve(name).allocator, {}))


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


def _with_allocator(scored, recipe, options: dict):
    """A criterion's scored Prepared with ``recipe``'s allocator: the budget-dependent step only."""
    return dataclasses.replace(scored, recipe=recipe, allocator=ALLOCATORS.get(recipe.allocator),
                               options=({}, options), signals=_fresh_record(scored.signals))


def checked_options(recipes: dict, given: dict | None) -> dict[str, dict]:
    """Each candidate's allocator options (``candidate_options_of``), checked before any work."""
    from .pipeline import split_options
    if given is not None and (not isinstance(given, dict) or set(given) - set(recipes)):
        raise ConfigError("candidate_options must map candidate names to their options, e.g. "
                          "{'acp': {'particles': 4}}; every key must be a candidate")
    out = {}
    for name, recipe in recipes.items():
        opts = candidate_options_of(name, given)
        routed = split_options(opts, CRITERIA.get(recipe.criterion), ALLOCATORS.get(recipe.allocator), name)
        if routed[0]:
            raise ConfigError(f"candidate_options of {name!r} name criterion options ({', '.join(routed[0])}); "
                              "auto scores each criterion once for all candidates: give allocator options only")
        out[name] = opts
    return out


def searched_images(data: Dataset, recipes: dict, options: dict[str, dict], seed: int) -> set[int]:
    """The training images a search candidate (acp) selects its widths on (``fitness.HeldOut``'s
    split): auto scores every candidate without them, so a searched candidate is not judged on the
    images it was chosen on."""
    out: set[int] = set()
    for name, recipe in recipes.items():
        if recipe.allocator == "acp":
            o = options[name]
            out |= set(holdout_split(data, o.get("holdout", 0.1), seed)[1].indices[:o.get("holdout_images", 2000)])
    return out


def distilled_accuracy(result, teacher: nn.Module, rest: Dataset, held: Dataset, steps: int, lr: float,
                       bn_batches: int, seed: int, refit=lambda result: None) -> float:
    """Held-out accuracy of a copy of the candidate after ``steps`` steps of distillation from the
    dense model on ``rest``: one-shot accuracy does not predict the order after fine-tuning (on
    ResNet-20 at 20% MACs the best one-shot candidate was the worst after one epoch)."""
    from .train import Recipe, fit
    result = copy.deepcopy(result)
    refit(result)
    student = result.model
    recalibrate_bn(student, rest, batches=bn_batches, seed=seed)
    fit(student, rest, Recipe(epochs=1, lr=lr, batch_size=128, max_steps_per_epoch=steps, seed=seed),
        teacher=teacher, progress=False)
    return evaluate(student.eval(), held)


def _proxy(result, teacher, rest, held, steps, lr, bn_batches, seed, reconstruct, refit) -> dict:
    """A finalist's distillation-proxy scores, with its refit and (when there is one) without: the refit's
    one-shot head start need not last through fine-tuning (on ResNet-20 at 50% MACs the same plan
    ended 0.2 points lower after one epoch with it than without), so the proxy decides."""
    refit_score = distilled_accuracy(result, teacher, rest, held, steps, lr, bn_batches, seed, refit=refit)
    if not reconstruct:
        return {"finetuned_accuracy": refit_score}
    plain_score = distilled_accuracy(result, teacher, rest, held, steps, lr, bn_batches, seed)
    return {"finetuned_accuracy": max(refit_score, plain_score), "refit": refit_score >= plain_score,
            "finetuned_with_refit": refit_score, "finetuned_without_refit": plain_score}


def _check(finetune_steps, finalists, finetune_lr) -> None:
    for name, value in (("finetune_steps", finetune_steps), ("finalists", finalists)):
        if isinstance(value, bool) or not isinstance(value, int) or value < (0 if name == "finetune_steps" else 1):
            raise ConfigError(f"{name} must be an integer >= {0 if name == 'finetune_steps' else 1}, got {value!r}")
    if isinstance(finetune_lr, bool) or not isinstance(finetune_lr, (int, float)) or not finetune_lr > 0:
        raise ConfigError(f"finetune_lr must be a number > 0, got {finetune_lr!r}")


def auto(model: nn.Module, example_inputs, budget: Budget, data: Dataset | None, seed: int = 0, *,
         candidates: str | Sequence[str] | None = None, candidate_options: dict | None = None,
         search_budget: float | None = None, holdout: float = 0.1, holdout_images: int | None = 5000,
         finetune_steps: int = 0, finalists: int = 3, finetune_lr: float = 0.05, bn_batches: int = 20,
         ignore=(), min_width: float = 0.05, round_to: int = 1, calibration_batches: int = 5,
         calibration_batch_size: int = 128, progress: bool = False, reconstruct: int = 512):
    """The Result of the candidate with the best held-out accuracy (after its refit and BatchNorm re-estimation),
    exactly as a plain ``compress`` with that method, seed and ``summary["auto"]["options"]`` makes
    it; ``summary["auto"]`` holds the leaderboard. ``search_budget`` (seconds) stops the search with
    the best so far (at least one candidate is always scored). ``finetune_steps`` > 0 (for a model
    that will be fine-tuned): the ``finalists`` best one-shot candidates are each distilled for that
    many steps of batch 128 (peak LR ``finetune_lr``), with and without the refit, and ranked by their
    best held-out accuracy after it; the winner is refit only if that scored higher
    (``summary["auto"]["reconstruct"]`` is the image count a plain compress needs to reproduce it).
    ``candidate_options``: {candidate: options} (default: ``CANDIDATE_OPTIONS`` by allocator).
    ``bn_batches`` as in compress (0: the returned model keeps stale statistics; candidates are still
    scored after re-estimation). ``reconstruct`` as in compress: every candidate is scored after it
    (refit on images of the BatchNorm part). Pass the training set without augmentation."""
    from .pipeline import prepare, reestimate_batchnorm  # pipeline dispatches method="auto" here
    t_start = time.perf_counter()
    if data is None:
        raise ConfigError("method 'auto' scores every candidate on held-out training data: pass data=... "
                          "(CLI: --dataset NAME)")
    if isinstance(data, DataLoader):
        raise ConfigError("method 'auto' splits a held-out part from the data: pass the Dataset, not a DataLoader")
    if search_budget is not None and not search_budget > 0:
        raise ConfigError(f"search_budget must be a number of seconds > 0, got {search_budget}")
    _check(finetune_steps, finalists, finetune_lr)
    names = check_candidates(candidates)
    recipes = {n: resolve(n) for n in names}
    allocator_options = checked_options(recipes, candidate_options)
    base = prepare(model, example_inputs, names[0], ignore=ignore, min_width=min_width, round_to=round_to)
    targets = base.targets(budget)  # an infeasible budget is refused before any calibration

    t0 = time.perf_counter()
    recorded = _Recorded(data)
    torch.manual_seed(seed)  # as Prepared.score does: the same images when the dataset augments
    shared = Signals(recorded, calibration_batches, calibration_batch_size, seed, progress)
    shared.dataset = data
    unseen = recorded.read | searched_images(data, recipes, allocator_options, seed)
    bn_part, held = split(data, unseen, holdout, holdout_images, seed)
    seconds = {"graph": base.seconds["graph"], "calibration": time.perf_counter() - t0, "criteria": {}}

    scored: dict[str, object] = {}  # criterion -> its scored Prepared (or the ConfigError it raised)
    board, skipped, kept, stopped = [], [], {}, False  # kept: board index -> the candidate's Result before BN
    keep = max(finalists, 1) if finetune_steps else 1
    bar = tqdm(recipes.items(), desc="auto", unit="candidate", disable=not progress)
    for name, recipe in bar:
        stopped = stopped or (bool(board) and search_budget is not None
                               and time.perf_counter() - t_start > search_budget)
        if stopped:
            skipped.append({"candidate": name, "reason": f"search budget of {search_budget:g} s spent"})
            continue
        leader = _order(board)[0] if board else None
        bar.set_postfix_str(f"{name}; best {board[leader]['candidate']} {board[leader]['heldout_accuracy']:.2f}%"
                            if board else name)
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
        opts = allocator_options[name]
        t2 = time.perf_counter()
        try:
            result = _with_allocator(p, recipe, opts).prune(budget, targets, seed, fresh=True)
        except (ConfigError, BudgetError) as e:
            skipped.append({"candidate": name, "reason": str(e)})
            continue
        pristine = copy.deepcopy(result)  # what a plain compress has before its reconstruction and re-estimation
        reconstruct_result(result, model, p.graph, bn_part, reconstruct, seed)
        recalibrate_bn(result.model, bn_part, batches=bn_batches or BN_BATCHES, seed=seed)
        board.append({"candidate": name, "heldout_accuracy": evaluate(result.model, held),
                      "macs": result.summary["macs"]["pruned"], "params": result.summary["params"]["pruned"],
                      "seconds": time.perf_counter() - t2, "criterion_seconds": t2 - t1, **({"options": opts} if opts else {})})
        kept[len(board) - 1] = pristine
        kept = {i: kept[i] for i in _order(board)[:keep] if i in kept}  # ties: the earlier candidate
        del result
    bar.close()
    if not board:
        raise ConfigError("method 'auto' could plan no candidate: " + "; ".join(
            f"{s['candidate']}: {s['reason']}" for s in skipped[:3]))

    if finetune_steps:
        t3 = time.perf_counter()
        teacher = copy.deepcopy(model).eval()
        for i in _order(board)[:finalists]:
            board[i].update(_proxy(kept[i], teacher, bn_part, held, finetune_steps, finetune_lr,
                                   bn_batches or BN_BATCHES, seed, reconstruct,
                                   lambda r: reconstruct_result(r, model, base.graph, bn_part, reconstruct, seed)))
        seconds["finetune_proxy"] = time.perf_counter() - t3
    order = _order(board)
    chosen = board[order[0]]
    result = kept[order[0]]
    reconstruct = reconstruct if chosen.get("refit", True) else 0
    reconstruct_result(result, model, base.graph, data, reconstruct, seed)
    reestimate_batchnorm(result, data, bn_batches, seed)
    seconds["search"] = time.perf_counter() - t_start
    result.summary["auto"] = {
        "chosen": chosen["candidate"], "options": chosen.get("options", {}), "leaderboard": [board[i] for i in order],
        "skipped": skipped, "heldout_images": len(held), "bn_images": len(bn_part),
        "bn_batches": bn_batches or BN_BATCHES, "calibration_images": sum(len(x) for x, _ in shared.batches()),
        "excluded_searched_images": len(unseen - recorded.read), "search_budget": search_budget,
        "stopped_early": stopped, "finetune_steps": finetune_steps,
        "finalists": min(finalists, len(board)) if finetune_steps else 0, "reconstruct": reconstruct,
        "seconds": seconds}
    result.summary["seconds"]["search"] = seconds["search"]
    result.summary["seconds"]["total"] = time.perf_counter() - t_start
    return result


def _order(board: list[dict]) -> list[int]:
    """Leaderboard order: candidates scored after the distillation proxy first (by that accuracy), then
    by one-shot held-out accuracy; ties keep the earlier candidate."""
    return sorted(range(len(board)), key=lambda i: (-board[i].get("finetuned_accuracy", -1.0),
                                                    -board[i]["heldout_accuracy"], i))


def options(options: dict | None) -> dict:
    """The ``options=`` of ``compress(method="auto")``: only the search's own settings."""
    options = dict(options or {})
    unknown = sorted(set(options) - set(OPTIONS))
    if unknown:
        raise ConfigError(f"method 'auto' takes no option {unknown[0]!r}; it accepts: {', '.join(OPTIONS)}")
    return options
