"""Resource budgets: fractions of the dense model or absolute counts, several at once."""
from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np

from .errors import BudgetError

_SUFFIX = {"": 1.0, "K": 1e3, "M": 1e6, "G": 1e9, "T": 1e12}
_ALIASES = {"flops": "macs", "macs": "macs", "params": "params", "speedup": "latency", "latency_ms": "latency"}
TOLERANCE = 0.01  # the binding budget is met within 1%, never exceeded


def _parse_amount(key: str, value) -> tuple[str, float]:
    """("fraction", 0.5) for 0 < value <= 1, else ("absolute", count)."""
    if isinstance(value, str):
        m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:[eE][-+]?\d+)?)\s*([kKmMgGtT]?)\s*", value)
        if not m:
            raise BudgetError(f"budget {key}={value!r} is not a number; write e.g. {key}=0.5 or {key}=20M")
        number, suffix = float(m.group(1)), m.group(2).upper()
        if suffix:
            return "absolute", number * _SUFFIX[suffix]
        value = number
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not np.isfinite(value):
        raise BudgetError(f"budget {key}={value!r} is not a number; write e.g. {key}=0.5 or {key}=20M")
    if value <= 0:
        raise BudgetError(f"budget {key}={value} must be > 0: a fraction in (0, 1] or an absolute count like 20M")
    if value <= 1:
        return "fraction", float(value)
    if value != int(value):
        raise BudgetError(f"budget {key}={value} is above 1: use a fraction in (0, 1] or an absolute count like 20M")
    return "absolute", float(value)


@dataclass(frozen=True)
class Budget:
    """``Budget(flops=0.5)`` keeps half the MACs; ``Budget(params="200K")`` caps parameters.

    "flops" means conv + linear multiply-accumulates, as in most pruning papers.
    """

    flops: float | str | None = None
    params: float | str | None = None
    latency_ms: float | str | None = None  # milliseconds per forward (prunekit.latency; docs/latency.md)
    speedup: float | str | None = None  # dense latency / pruned latency, measured on this machine
    _parsed: dict = field(init=False, repr=False, compare=False)

    def __post_init__(self):
        parsed = {}
        for key in ("flops", "params"):
            value = getattr(self, key)
            if value is not None:
                parsed[_ALIASES[key]] = _parse_amount(key, value)
        if self.latency_ms is not None and self.speedup is not None:
            raise BudgetError("give either latency_ms=... or speedup=..., not both (they are the same target)")
        if self.latency_ms is not None:
            parsed["latency"] = ("ms", _parse_latency("latency_ms", self.latency_ms))
        if self.speedup is not None:
            parsed["latency"] = ("speedup", _parse_latency("speedup", self.speedup))
        if not parsed:
            raise BudgetError("empty budget: give flops=..., params=..., speedup=... or latency_ms=..., e.g. flops=0.5")
        object.__setattr__(self, "_parsed", parsed)

    @classmethod
    def parse(cls, text: str) -> "Budget":
        """From the CLI form ``flops=0.5,params=200K``."""
        kw = {}
        for part in filter(None, (p.strip() for p in text.split(","))):
            key, sep, value = part.partition("=")
            key = key.strip().lower()
            if not sep or key not in _ALIASES:
                raise BudgetError(f"cannot read budget {part!r}; write flops=0.5, params=200K, speedup=2 or latency_ms=3, "
                                  "comma-separated")
            kw[key if _ALIASES[key] in ("params", "latency") else "flops"] = value.strip()
        return cls(**kw)

    @property
    def needs_latency(self) -> bool:
        return "latency" in self._parsed

    def targets(self, dense: dict[str, float]) -> dict[str, float]:
        """Absolute targets ("macs", "params") given the dense model's costs."""
        out = {}
        for key, (kind, v) in self._parsed.items():
            if key == "latency" and "latency" not in dense:
                raise BudgetError("a latency budget needs a latency model: use prunekit.compress, which measures one")
            out[key] = v * dense[key] if kind == "fraction" else dense[key] / v if kind == "speedup" else v
        return out

    def latency_goal(self, dense_ms: float) -> float:
        """The latency target in ms given the dense model's (measured) latency."""
        kind, v = self._parsed["latency"]
        return dense_ms / v if kind == "speedup" else v

    def latency_error(self, measured: dict) -> float:
        """How far a measured {dense_ms, pruned_ms, speedup} misses the latency target (> 0: too slow).
        A speed-up target is judged on the speed-up, measured pairwise, so steadier than either time."""
        kind, v = self._parsed["latency"]
        return v / measured["speedup"] - 1 if kind == "speedup" else measured["pruned_ms"] / v - 1

    def describe(self) -> str:
        return ",".join(f"{'flops' if k == 'macs' else k}={v if kind == 'fraction' else _human(v)}" if k != "latency"
                        else f"speedup={v:g}" if kind == "speedup" else f"latency_ms={v:g}"
                        for k, (kind, v) in self._parsed.items())

    def check_feasible(self, targets: dict[str, float], smallest: dict[str, float], dense: dict[str, float]) -> None:
        """Refuse, before any work, a budget that not even the smallest legal model meets."""
        for key, target in targets.items():
            if key == "latency" and target < smallest[key]:
                raise BudgetError(_latency_infeasible(self._parsed["latency"], target, smallest, dense))
            if target < smallest[key]:
                raise BudgetError(
                    f"{'flops' if key == 'macs' else key} budget {_human(target)} is below the smallest prunable model "
                    f"({_human(smallest[key])} of {_human(dense[key])}); raise the budget or lower min_width")


def _parse_latency(key: str, value) -> float:
    """A speed-up (a factor >= 1) or a latency in milliseconds (> 0, "3" or "3ms")."""
    if isinstance(value, str):
        m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:[eE][-+]?\d+)?)\s*(ms|x)?\s*", value, flags=re.IGNORECASE)
        if not m:
            raise BudgetError(f"budget {key}={value!r} is not a number; write e.g. speedup=2 or latency_ms=3")
        value = float(m.group(1))
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not np.isfinite(value):
        raise BudgetError(f"budget {key}={value!r} is not a number; write e.g. speedup=2 or latency_ms=3")
    if key == "speedup" and value < 1:
        raise BudgetError(f"budget speedup={value:g} must be >= 1 (the pruned model as fast as the dense one or faster)")
    if value <= 0:
        raise BudgetError(f"budget {key}={value:g} must be > 0 milliseconds")
    return float(value)


def _latency_infeasible(parsed: tuple[str, float], target: float, smallest: dict, dense: dict) -> str:
    kind, v = parsed
    asked = f"speedup={v:g} needs {target:.4g} ms" if kind == "speedup" else f"latency_ms={v:g}"
    fixed = smallest.get("latency_fixed")
    most = dense["latency"] / smallest["latency"]
    return (f"{asked} but the smallest prunable model takes {smallest['latency']:.4g} ms of {dense['latency']:.4g} ms "
            f"dense{f' ({fixed:.4g} ms in parts no width changes)' if fixed is not None else ''}, "
            f"so at most speedup={most:.3g} is reachable; lower the target or min_width")


def meets(costs: dict[str, float], targets: dict[str, float]) -> bool:
    return all(costs[k] <= t + 1e-6 for k, t in targets.items())


def _human(x: float) -> str:
    for s, f in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(x) >= f:
            return f"{x / f:.4g}{s}"
    return f"{x:.4g}"


def explain_gap(cost, widths: dict[str, int], targets: dict[str, float], binding: str, gap: float) -> str:
    """One line saying why the binding budget is missed by ``gap`` (more than TOLERANCE): which
    setting makes every next width step overshoot (round_to, channel groups), or that the allocator
    stopped early."""
    units = cost.graph.units
    w = cost.vector(widths)
    key = "flops" if binding == "macs" else binding
    head = f"{key} is {gap:.1%} below its target (tolerance {TOLERANCE:.0%})"
    growable = []
    for i, u in enumerate(units):
        if w[i] + u.step > u.width:
            continue
        grown = w.copy()
        grown[i] += u.step
        if meets({k: getattr(cost, k)(grown) for k in targets}, targets):
            return f"{head}: the allocator stopped although {u.name!r} could still grow by {u.step}"
        growable.append(u)
    if not growable:
        return f"{head}: every Unit is at full width; the rest is fixed (protected or ignored layers)"
    round_to = max(u.round_to for u in growable)
    if round_to > 1:
        return f"{head}: one more step of round_to={round_to} channels in any Unit would exceed it; lower round_to"
    grouped = max(growable, key=lambda u: u.step)
    if grouped.step > 1 and all(u.step > 1 for u in growable):
        return (f"{head}: Units move in whole channel groups (grouped convs, GroupNorm: {grouped.name!r} in steps of "
                f"{grouped.step}) and one more step would exceed it")
    return f"{head}: one more channel in any Unit would exceed it (the smallest steps are too coarse for this budget)"
