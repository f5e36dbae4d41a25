"""``compress`` for the low-rank methods: ``svd`` (decompose, ranks to the budget), ``trp`` (TRP
training, then decompose), and ``"<channel method>,svd"`` / ``"<channel method>,trp"`` (prune channels
first, then decompose, under the one budget)."""
from __future__ import annotations

import dataclasses
import time

import torch
from torch.utils.data import DataLoader

from ..budget import TOLERANCE, meets
from ..cost import count
from ..errors import ConfigError
from ..methods import AUTO, LOWRANK
from ..signals import Signals
from .cost import make_factor, positions, widths_of
from .decompose import factorize, layer_scheme, max_rank, replace, scheme_name, spectrum
from .errors import LowRankError
from .ranks import Candidate, allocate, check_energy, check_threshold, energy_rank, threshold_rank
from .targets import default_layers, named_layers

COMMON = {"scheme": "channel", "energy": None, "threshold": None, "rank": None, "layers": None, "stride2": False, "linear": False,
          "channel_share": 0.5}
DEFAULTS = {
    "svd": COMMON,
    # TRP: energy is the truncation used while training; the final decomposition drops singular values
    # below threshold (energy final_energy instead when given; the official code uses 0.85 for ND)
    "trp": {**COMMON, "energy": 0.9, "threshold": 0.05, "final_energy": None, "nuclear": 3e-4, "period": 1,
            "epochs": 1, "steps": None, "lr": 0.01, "batch_size": 128, "weight_decay": 1e-4, "checkpoint": None,
            "resume": False, "device": None},
}


def parse(method: str) -> tuple[str | None, str]:
    """``"svd"`` -> (None, "svd"); ``"l1+global,svd"`` -> ("l1+global", "svd")."""
    parts = [p.strip() for p in method.split(",")]
    if len(parts) > 2 or parts[-1] not in LOWRANK or (len(parts) == 2 and (not parts[0] or parts[0] in LOWRANK
                                                                        or parts[0] == AUTO.name)):
        raise ConfigError(f"cannot read method {method!r}; write svd, trp, or CHANNEL_METHOD,svd / CHANNEL_METHOD,trp "
                          "(e.g. l1+global,svd: prune channels, then decompose)")
    return (parts[0] if len(parts) == 2 else None), parts[-1]


def settings(stage: str, options: dict) -> tuple[dict, dict]:
    """(this stage's settings, the options left for the channel method), every value checked."""
    defaults = DEFAULTS[stage]
    s = {**defaults, **{k: v for k, v in options.items() if k in defaults}}
    rest = {k: v for k, v in options.items() if k not in defaults}
    s["scheme"] = scheme_name(s["scheme"])
    if stage == "svd" and sum(s[k] is not None for k in ("energy", "threshold", "rank")) > 1:
        raise LowRankError("give one of energy, threshold or rank (or none: ranks are chosen to meet the budget)")
    if s["rank"] is not None and (isinstance(s["rank"], bool) or not isinstance(s["rank"], int) or s["rank"] < 1):
        raise LowRankError(f"rank must be a whole number >= 1, got {s['rank']!r}")
    if s["energy"] is not None:
        check_energy(s["energy"])
    if s["threshold"] is not None:
        check_threshold(s["threshold"])
    if s.get("final_energy") is not None:
        check_energy(s["final_energy"], "final_energy")
    share = s["channel_share"]
    if isinstance(share, bool) or not isinstance(share, (int, float)) or not 0 < share < 1:
        raise LowRankError(f"channel_share must be in (0, 1) (the share of the budget's reduction, in log scale, "
                           f"left to channel pruning), got {share!r}")
    for key in ("stride2", "linear", "resume"):
        if key in s and s[key] not in (True, False, 0, 1):
            raise LowRankError(f"{key} must be true or false, got {s[key]!r}")
    if stage == "trp":
        for key in ("epochs", "batch_size") + (("steps",) if s["steps"] is not None else ()):
            if isinstance(s[key], bool) or not isinstance(s[key], int) or s[key] < 1:
                raise LowRankError(f"{key} must be a whole number >= 1, got {s[key]!r}")
    return s, rest


def check(method: str, options: dict) -> dict:
    """Everything about ``method`` and ``options`` that needs no model (the CLI calls it before any work)."""
    from ..methods import resolve
    channel, stage = parse(method)
    _, rest = settings(stage, dict(options))
    if channel is not None:
        resolve(channel)
    elif rest:
        raise ConfigError(f"method {method!r} takes no option {sorted(rest)[0]!r}; it accepts: "
                          f"{', '.join(sorted(DEFAULTS[stage]))}")
    return options


def compress_lowrank(model, example_inputs, budget, method: str, data=None, seed: int = 0, *, ignore=(),
                     min_width: float = 0.05, round_to: int = 1, calibration_batches: int = 5,
                     calibration_batch_size: int = 128, options=None, progress: bool = False, bn_batches: int = 20):
    from ..pipeline import prepare, reestimate_batchnorm  # here: pipeline imports this module
    channel, stage = parse(method)
    check(method, dict(options or {}))
    s, rest = settings(stage, dict(options or {}))
    if stage == "trp" and data is None:
        raise ConfigError("method trp trains the model: pass data (the training set)")
    layers = (named_layers(model, s["layers"], s["scheme"]) if s["layers"] is not None else
              default_layers(model, s["scheme"], stride2=bool(s["stride2"]), linear=bool(s["linear"]), ignore=ignore))
    if not layers:
        raise LowRankError("no layer to decompose (every conv is 1x1, strided, grouped or the first); "
                           "name some with layers=... or pass stride2=true")
    if s["rank"] is not None:
        for name in layers:
            m = model.get_submodule(name)
            most = max_rank(m, layer_scheme(m, s["scheme"]))
            if s["rank"] > most:
                raise LowRankError(f"rank {s['rank']} is larger than layer {name!r} allows ({most} for its "
                                   f"{layer_scheme(m, s['scheme'])} factorization)")
    t0 = time.perf_counter()
    prepared = prepare(model, example_inputs, channel or "l1", ignore=ignore, min_width=min_width, round_to=round_to,
                       options=rest if channel else None)
    targets = budget.targets(prepared.dense)
    if set(targets) - {"macs", "params"}:
        raise ConfigError(f"method {method!r} takes flops/params budgets only, not {sorted(set(targets) - {'macs', 'params'})[0]}")
    if channel is not None:
        targets = prepared.targets(budget)
        share = s["channel_share"]
        channel_targets = {k: prepared.dense[k] * (v / prepared.dense[k]) ** share for k, v in targets.items()}
        prepared.score(data, seed, calibration_batches, calibration_batch_size, progress)
        result = prepared.prune(budget, channel_targets, seed)
        result.summary["lowrank_channel_targets"] = channel_targets
    else:  # every width kept: the plan records the decomposition only
        dense = prepared.cost.dense_widths.copy()
        keep_all = dataclasses.replace(prepared, allocator=lambda *a, **k: dense, options=({}, {}), signals=Signals(),
                                       scores={u.name: torch.zeros(u.width) for u in prepared.graph.units},
                                       rng_state=torch.get_rng_state(), seconds={**prepared.seconds, "criterion": 0.0})
        result = keep_all.prune(budget, dict(prepared.dense), seed)
    result.plan.method = method
    seconds = result.summary["seconds"]
    if stage == "trp":
        seconds["trp_training"], result.summary["trp"] = train_trp(result.model, layers, data, s, seed, progress)
    t1 = time.perf_counter()
    factors = decompose(prepared, result, layers, targets, s, stage, example_inputs)
    seconds["decomposition"] = time.perf_counter() - t1
    verify(prepared, result, factors, targets, example_inputs, method, channel, stage, s)
    seconds["total"] = time.perf_counter() - t0
    reestimate_batchnorm(result, data, bn_batches, seed)
    return result


def train_trp(model, layers, data, s: dict, seed: int, progress: bool) -> tuple[float, dict]:
    """TRP on ``prunekit.train.fit`` (cosine LR, no warm-up or label smoothing: the paper fine-tunes
    a trained model with plain cross-entropy)."""
    from ..train import Recipe, fit
    from .trp import TRPHook
    hook = TRPHook({n: model.get_submodule(n) for n in layers}, s["scheme"], s["energy"], s["nuclear"], s["period"])
    recipe = Recipe(epochs=s["epochs"], lr=s["lr"], batch_size=s["batch_size"], weight_decay=s["weight_decay"],
                    max_steps_per_epoch=s["steps"], seed=seed, schedule="cosine", warmup=0.0, label_smoothing=0.0)
    home = next(model.parameters()).device
    t0 = time.perf_counter()
    history = fit(model, data.dataset if isinstance(data, DataLoader) else data, recipe, checkpoint=s["checkpoint"],
                  resume=bool(s["resume"]), device=s["device"] or home, progress=progress, step_hook=hook)
    seconds = time.perf_counter() - t0
    model.to(home).eval()
    return seconds, {"recipe": recipe.to_dict(), "steps": hook.steps, "trp_steps": hook.trp_steps,
                     "seconds_per_step": seconds / max(hook.steps, 1), "svd_seconds": hook.seconds,
                     "energy": s["energy"], "nuclear": s["nuclear"], "period": s["period"],
                     "last_ranks": dict(hook.ranks), "epochs": history}


def decompose(prepared, result, layers: list[str], targets: dict, s: dict, stage: str, example_inputs) -> list:
    """Choose every layer's rank (its rule's, lowered until the budget holds) and replace the layers."""
    model, widths, cost = result.model, result.plan.widths, prepared.cost
    modules = {n: model.get_submodule(n) for n in layers}
    schemes = {n: layer_scheme(m, s["scheme"]) for n, m in modules.items()}
    where = positions(model, example_inputs, schemes)
    layer_costs = cost.layer_costs(widths)
    candidates, start, specs = [], {}, {}
    for name, m in modules.items():
        dense_layer = prepared.model.get_submodule(name)
        shape = (dense_layer.weight.shape[0], dense_layer.weight.shape[1])
        specs[name] = spec = spectrum(m, schemes[name])
        rule = rule_rank(spec, s, stage)
        cap = max_rank(m, schemes[name]) if rule is None else rule
        if rule is not None:
            start[name] = rule
        factor = make_factor(name, m, schemes[name], cap, shape, where[name])
        n_c = widths_of(cost, name, shape, widths)
        candidates.append(Candidate(factor, n_c, layer_costs[name], spec.energy(), cap))
    ranks = allocate(candidates, cost.evaluate(widths), targets, start if start else None)
    factors = []
    for c in candidates:
        name = c.factor.layer
        if name in ranks:
            replace(model, name, factorize(modules[name], schemes[name], ranks[name], specs[name]))
            factors.append(dataclasses.replace(c.factor, rank=ranks[name]))
    result.summary["lowrank"] = {
        "scheme": s["scheme"], "rule": rule_text(s, stage), "candidates": layers,
        "layers": {c.factor.layer: {"scheme": c.factor.scheme, "rank": ranks.get(c.factor.layer),
                                    "max_rank": max_rank(modules[c.factor.layer], c.factor.scheme),
                                    "energy_kept": float(c.energy[:ranks[c.factor.layer]].sum())
                                    if c.factor.layer in ranks else 1.0} for c in candidates}}
    result.plan.extras["lowrank"] = {"layers": {f.layer: f.to_json() for f in factors}}
    result.summary["signals"]["ranks"] = {f.layer: f.rank for f in factors}
    return factors


def rule_rank(spec, s: dict, stage: str) -> int | None:
    if s["rank"] is not None:  # checked against the dense layers; a pruned layer may allow less: its full rank
        return min(s["rank"], spec.s.shape[-1])
    if stage == "trp":
        final = s["final_energy"] if s["final_energy"] is not None else (0.85 if s["scheme"] == "decoupled" else None)
        return energy_rank(spec, final) if final is not None else threshold_rank(spec, s["threshold"])
    if s["energy"] is not None:
        return energy_rank(spec, s["energy"])
    if s["threshold"] is not None:
        return threshold_rank(spec, s["threshold"])
    return None


def rule_text(s: dict, stage: str) -> str:
    if s["rank"] is not None:
        return f"rank {s['rank']}, then the budget"
    if stage == "trp":
        if s["final_energy"] is not None or s["scheme"] == "decoupled":
            return f"energy {s['final_energy'] if s['final_energy'] is not None else 0.85}, then the budget"
        return f"singular values >= {s['threshold']}, then the budget"
    if s["energy"] is not None:
        return f"energy {s['energy']}, then the budget"
    if s["threshold"] is not None:
        return f"singular values >= {s['threshold']}, then the budget"
    return "the budget (least energy lost per MAC saved)"


def verify(prepared, result, factors, targets, example_inputs, method, channel, stage, s) -> None:
    """The factorized model must cost exactly what ``CostModel.factorized`` predicts and meet the budget."""
    from ..pipeline import VerificationError
    widths = result.plan.widths
    predicted = prepared.cost.factorized(factors, widths)
    macs, params = count(result.model, example_inputs)
    if round(predicted["macs"]) != macs or round(predicted["params"]) != params:
        raise VerificationError(f"cost model predicted {predicted['macs']:.0f} MACs / {predicted['params']:.0f} params "
                                f"for the decomposed model but it has {macs} / {params}; please report this model")
    measured = {"macs": macs, "params": params}
    if not meets(measured, targets):
        raise VerificationError(f"decomposed model {measured} is above the budget {targets}; please report this model")
    summary = result.summary
    for key, value in measured.items():
        summary[key] = {**summary[key], "pruned": value, "target": targets.get(key)}
    binding = min(targets, key=lambda k: (targets[k] - measured[k]) / targets[k])
    gap = (targets[binding] - measured[binding]) / targets[binding]
    ruled = stage == "trp" or any(s[k] is not None for k in ("energy", "threshold", "rank"))
    note = (f"the rank rule ({rule_text(s, stage).split(',')[0]}) leaves the model {100 * gap:.1f}% below the budget "
            "(ranks are only lowered to meet it)" if ruled else
            f"{100 * gap:.1f}% below the budget: ranks move one rank of one layer at a time")
    summary.update(binding=binding, budget_gap=gap, within_tolerance=gap <= TOLERANCE,
                   budget_note=None if gap <= TOLERANCE else note)
    factor_of = {f.layer: f for f in factors}
    for row in summary["layers"]:
        f = factor_of.get(row["name"])
        if f is not None:
            new = f.terms(*widths_of(prepared.cost, f.layer, f.dense, widths))
            row.update(type=f"{row['type']} -> {f.scheme} rank {f.rank}", macs_pruned=round(new["macs"]),
                       params_pruned=round(new["params"]))
    summary["method"] = {"name": method, "criterion": prepared.recipe.criterion if channel else "singular values",
                         "allocator": (f"{prepared.recipe.allocator}, then " if channel else "")
                         + ("TRP training + ranks" if stage == "trp" else "ranks to the budget")}
    summary["cost_model"] = "factorized: CostModel.factorized == FlopCounterMode"
