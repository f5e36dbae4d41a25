"""Units: the prunable widths of a model, found by Torch-Pruning's DependencyGraph.

A Unit is one width that must shrink as a whole: a conv's outputs together with its BatchNorm and
every consumer's inputs, or a whole residual stream. Torch-Pruning does the dependency tracing and
the slicing; this module names the groups, records which parameter dimensions each one touches (so
the cost model and the criteria need no per-architecture code) and applies keep-sets.
"""
from __future__ import annotations

import contextlib

import math
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Sequence

import torch
import torch.nn as nn
import torch_pruning as tp
from torch_pruning import ops

from .errors import ConfigError, UnsupportedLayerError

_NORM_TYPES = (ops.OPTYPE.BN, ops.OPTYPE.LN, ops.OPTYPE.GN, ops.OPTYPE.IN, ops.OPTYPE.PRELU)
_PARAMLESS_TYPES = (
    ops.OPTYPE.CONCAT, ops.OPTYPE.SPLIT, ops.OPTYPE.ELEMENTWISE, ops.OPTYPE.RESHAPE,
    ops.OPTYPE.UNBIND, ops.OPTYPE.EXPAND, ops.OPTYPE.SLICE, ops.OPTYPE.OUTPUT,
)


@dataclass
class Slice:
    """Positions along one parameter dimension that belong to a Unit.

    ``index[k]`` is a position in dimension ``dim`` of parameter ``param``; ``channel[k]`` is the
    Unit channel it moves with; ``position[k]`` is where that channel sits in the layer's own
    input or output (they differ from ``index`` only for grouped convs). ``role`` is "out" for the
    layers that produce the Unit's channels and "in" for the layers that consume them (norm layers
    count as "out").
    """

    param: str
    dim: int
    index: torch.Tensor
    channel: torch.Tensor
    role: str
    module: str
    position: torch.Tensor


@dataclass
class Unit:
    name: str
    width: int
    groups: int = 1  # grouped convs: keep-sets repeat the same offsets in every channel group
    min_keep: int = 1
    round_to: int = 1
    producers: list[str] = field(default_factory=list)
    consumers: list[str] = field(default_factory=list)
    slices: list[Slice] = field(default_factory=list)

    @property
    def step(self) -> int:
        """Widths move in steps that keep every channel group equal and honour round_to."""
        return math.lcm(self.groups, self.round_to)

    def snap(self, width: float) -> int:
        """The nearest legal width not above ``width`` (and not below min_keep)."""
        w = int(math.floor(width / self.step + 1e-9)) * self.step
        return int(min(self.width, max(self.min_keep, w)))


def _unit_dims(module: Any, node_type, is_out: bool, unwrapped: Mapping[int, int]) -> dict[str, int]:
    """Which parameter dimensions a Torch-Pruning handler on ``module`` slices."""
    if node_type == ops.OPTYPE.PARAMETER:
        return {"": unwrapped[id(module)]}
    if node_type == ops.OPTYPE.DEPTHWISE_CONV:
        return {"weight": 0, "bias": 0}
    if node_type == ops.OPTYPE.CONV:
        transposed = bool(getattr(module, "transposed", False))
        if is_out:
            return {"weight": 1 if transposed else 0, "bias": 0}
        return {"weight": 0 if transposed else 1}
    if node_type == ops.OPTYPE.LINEAR:
        return {"weight": 0, "bias": 0} if is_out else {"weight": 1}
    if node_type in _NORM_TYPES:
        return {n: 0 for n, p in module.named_parameters(recurse=False) if p.dim() >= 1}
    return {}


def _output_layers(model: nn.Module, example_inputs, layers: Sequence[nn.Module]) -> set[nn.Module]:
    """The conv/linear layers whose outputs reach the model output without another such layer.

    Their output channels are the model's output (logits, boxes): they are never pruned.
    """
    grad_fns: dict[Any, nn.Module] = {}
    hooks = [m.register_forward_hook(lambda m, i, o: grad_fns.__setitem__(o.grad_fn, m)) for m in layers]
    try:
        with torch.enable_grad():
            out = _forward(model, example_inputs)
    finally:
        for h in hooks:
            h.remove()
    found, seen = set(), set()
    stack = [t.grad_fn for t in _flatten(out) if isinstance(t, torch.Tensor) and t.grad_fn is not None]
    while stack:
        fn = stack.pop()
        if fn is None or fn in seen:
            continue
        seen.add(fn)
        if fn in grad_fns:
            found.add(grad_fns[fn])
            continue
        stack.extend(f for f, _ in fn.next_functions)
    return found


def _flatten(out) -> list:
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, Mapping):
        out = list(out.values())
    if isinstance(out, (list, tuple)):
        return [t for o in out for t in _flatten(o)]
    return []


@contextlib.contextmanager
def eval_mode(model: nn.Module):
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


def _forward(model: nn.Module, example_inputs):
    if isinstance(example_inputs, Mapping):
        return model(**example_inputs)
    if isinstance(example_inputs, (list, tuple)):
        return model(*example_inputs)
    return model(example_inputs)


class UnitGraph:
    """The prunable Units of ``model`` and the means to shrink them in place."""

    def __init__(
        self,
        model: nn.Module,
        example_inputs,
        ignore: Iterable[str] = (),
        min_width: float = 0.0,
        round_to: int = 1,
    ):
        self.model = model
        self.example_inputs = example_inputs
        self.module_names = {m: n for n, m in model.named_modules()}
        self.ignored = self._resolve_ignored(ignore)
        with eval_mode(model):  # tracing must not touch BatchNorm statistics (nor fail on batch-1 BatchNorm1d)
            try:
                self.dg = tp.DependencyGraph().build_dependency(model, example_inputs=example_inputs, verbose=False)
            except Exception as e:  # Torch-Pruning's tracer fails on unsupported ops
                raise UnsupportedLayerError(f"Torch-Pruning cannot trace this model ({type(e).__name__}: {e}); "
                                            "pass the offending layers with ignore=[...]") from e
            layers = [m for m in model.modules() if isinstance(m, (ops.TORCH_CONV, ops.TORCH_LINEAR))]
            self.protected = {self.module_names[m] for m in _output_layers(model, example_inputs, layers)}
        self._unwrapped = {id(p.parameters): p.pruning_dim for p in self.dg.unwrapped_parameters}
        self._param_names = {id(p): n for n, p in model.named_parameters(remove_duplicate=False)}
        self.units: list[Unit] = []
        self._roots: dict[str, nn.Module] = {}
        skip = [m for m in model.modules() if self.module_names.get(m) in self.ignored | self.protected]
        for group in self.dg.get_all_groups(ignored_layers=skip, root_module_types=(ops.TORCH_CONV, ops.TORCH_LINEAR)):
            unit = self._make_unit(group)
            if unit is not None:
                unit.round_to = max(1, int(round_to))
                unit.min_keep = unit.snap(max(unit.step, math.ceil(min_width * unit.width)))
                unit.min_keep = max(unit.min_keep, unit.step)
                self.units.append(unit)
                self._roots[unit.name] = group[0].dep.target.module

    def _resolve_ignored(self, ignore: Iterable[str]) -> set[str]:
        names = set(ignore)
        known = set(self.module_names.values())
        missing = sorted(names - known)
        if missing:
            raise ConfigError(f"cannot ignore unknown layer(s) {missing}; use names from `prunekit info`")
        # ignoring a container ignores every layer inside it
        return {n for n in known if any(n == i or n.startswith(i + ".") for i in names)}

    def _make_unit(self, group) -> Unit | None:
        root = group[0].dep.target.module
        name = self.module_names[root]
        width = len(group[0].idxs)
        unit = Unit(name=name, width=width)
        seen: set[tuple[str, int]] = set()
        for item in group:
            dep, idxs, root_idxs = item.dep, item.idxs, item.root_idxs
            node = dep.target
            is_out = self.dg.is_out_channel_pruning_fn(dep.handler)
            if node.type in _PARAMLESS_TYPES:
                continue
            mod_name = self._param_names.get(id(node.module)) if node.type == ops.OPTYPE.PARAMETER else self.module_names.get(node.module)
            dims = _unit_dims(node.module, node.type, is_out, self._unwrapped)
            if node.type == ops.OPTYPE.CUSTOMIZED or (not dims and any(True for _ in _own_params(node.module))):
                raise UnsupportedLayerError(
                    f"layer {mod_name!r} ({type(node.module).__name__}) has parameters Torch-Pruning cannot slice; "
                    f"pass ignore=['{mod_name}'] (CLI: --ignore {mod_name})")
            role = "out" if is_out or node.type in _NORM_TYPES else "in"
            if node.type in (ops.OPTYPE.CONV, ops.OPTYPE.LINEAR, ops.OPTYPE.DEPTHWISE_CONV):
                (unit.producers if is_out or node.type == ops.OPTYPE.DEPTHWISE_CONV else unit.consumers).append(mod_name)
                g = getattr(node.module, "groups", 1)
                if node.type == ops.OPTYPE.CONV and g > 1:
                    unit.groups = math.lcm(unit.groups, g)
            for pname, dim in dims.items():
                full = mod_name if node.type == ops.OPTYPE.PARAMETER else f"{mod_name}.{pname}"
                param = node.module if node.type == ops.OPTYPE.PARAMETER else getattr(node.module, pname, None)
                if param is None or (full, dim) in seen:
                    continue
                seen.add((full, dim))
                position = torch.as_tensor(idxs, dtype=torch.long)
                index = position
                if node.type == ops.OPTYPE.CONV and not is_out and node.module.groups > 1:
                    index = index % param.shape[dim]  # a grouped conv's weight holds one group's inputs
                elif int(index.max()) >= param.shape[dim] or len(torch.unique(index)) < len(index):
                    raise UnsupportedLayerError(
                        f"Torch-Pruning maps the channels of {name!r} onto {full!r} inconsistently (an operation it "
                        f"cannot trace lies between them); pass ignore=['{name}'] (CLI: --ignore {name})")
                unit.slices.append(Slice(full, dim, index, torch.as_tensor(root_idxs, dtype=torch.long), role, mod_name,
                                         position))
        unit.producers = sorted(set(unit.producers))
        unit.consumers = sorted(set(unit.consumers))
        if width % unit.groups:
            return None  # channel groups that do not tile the width cannot be pruned consistently
        return unit

    # -- queries ---------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.units)

    def __iter__(self):
        return iter(self.units)

    def __getitem__(self, name: str) -> Unit:
        for u in self.units:
            if u.name == name:
                return u
        raise KeyError(name)

    def widths(self) -> dict[str, int]:
        return {u.name: u.width for u in self.units}

    def parameter(self, name: str) -> torch.Tensor:
        return self.model.get_parameter(name)

    # -- surgery -----------------------------------------------------------------------------------
    def apply(self, keep: Mapping[str, Sequence[int] | torch.Tensor]) -> nn.Module:
        """Physically remove every channel not in ``keep`` (unit name -> kept channel indices)."""
        unknown = sorted(set(keep) - {u.name for u in self.units})
        if unknown:
            raise ConfigError(f"plan names unknown unit(s) {unknown[:3]}; was it made for another model?")
        for unit in self.units:
            if unit.name not in keep:
                continue
            kept = sorted({int(i) for i in keep[unit.name]})
            _check_keep(unit, kept)
            drop = sorted(set(range(unit.width)) - set(kept))
            if not drop:
                continue
            root = self._roots[unit.name]
            pruner = self.dg.get_pruner_of_module(root)
            group = self.dg.get_pruning_group(root, pruner.prune_out_channels, drop)
            group.prune()
        self.check_runs()
        return self.model

    def check_runs(self) -> None:
        """Run the model once and name the layer that fails, so a bad slice is caught at once."""
        stack: list[str] = []
        hooks = [m.register_forward_pre_hook(lambda m, i, n=n: stack.append(n)) for n, m in self.model.named_modules() if n]
        try:
            with eval_mode(self.model), torch.no_grad():
                _forward(self.model, self.example_inputs)
        except RuntimeError as e:
            where = stack[-1] if stack else "?"
            raise UnsupportedLayerError(
                f"after pruning, layer {where!r} fails ({str(e).splitlines()[0]}); Torch-Pruning cannot handle it: "
                f"pass ignore=['{where}']") from e
        finally:
            for h in hooks:
                h.remove()


def _own_params(module) -> Iterable[torch.Tensor]:
    if isinstance(module, nn.Module):
        return module.parameters(recurse=False)
    return []


def _check_keep(unit: Unit, kept: list[int]) -> None:
    if not kept or kept[0] < 0 or kept[-1] >= unit.width:
        raise ConfigError(f"unit {unit.name!r}: keep indices must be within [0, {unit.width}) and not empty")
    if unit.groups > 1:
        size = unit.width // unit.groups
        local = [i for i in kept if i < size]
        if len(kept) != len(local) * unit.groups or any(
            i + g * size not in set(kept) for g in range(unit.groups) for i in local
        ):
            raise ConfigError(f"unit {unit.name!r} feeds a grouped conv: keep the same offsets in each of its {unit.groups} groups")


def expand_groups(unit: Unit, local: Sequence[int]) -> list[int]:
    """Repeat offsets chosen within one channel group across all of a Unit's groups."""
    size = unit.width // unit.groups
    return sorted(int(i) + g * size for g in range(unit.groups) for i in local)
