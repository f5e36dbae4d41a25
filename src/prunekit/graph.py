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
from torch.overrides import TorchFunctionMode
from torch.utils import _pytree as pytree
from torch_pruning import ops
from torch_pruning.pruner.function import BasePruningFunc

from .drop import drop as drop_unit
from .drop import droppable
from .errors import ConfigError, PrunekitError, UnsupportedLayerError

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


def _output_layers(model: nn.Module, example_inputs, layers: Sequence[nn.Module]) -> tuple[set[nn.Module], list]:
    """The conv/linear layers whose outputs reach the model output without another such layer, and
    the shapes of the model's outputs.

    Their output channels are the model's output (logits, boxes): they are never pruned. Call under
    :func:`traceable`, or a frozen model hides them.
    """
    grad_fns: dict[Any, nn.Module] = {}
    hooks = [m.register_forward_hook(lambda m, i, o: grad_fns.__setitem__(o.grad_fn, m)) for m in layers]
    try:
        with torch.enable_grad():
            out = _flatten(_forward(model, example_inputs))
    finally:
        for h in hooks:
            h.remove()
    found, seen = set(), set()
    stack = [t.grad_fn for t in out if isinstance(t, torch.Tensor) and t.grad_fn is not None]
    while stack:
        fn = stack.pop()
        if fn is None or fn in seen:
            continue
        seen.add(fn)
        if fn in grad_fns:
            found.add(grad_fns[fn])
            continue
        stack.extend(f for f, _ in fn.next_functions)
    return found, [tuple(t.shape) for t in out]


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


@contextlib.contextmanager
def training_mode(model: nn.Module):
    """Training mode that leaves no trace: buffers (BatchNorm statistics) are restored afterwards and
    the global RNG (dropout) is forked."""
    was_training = model.training
    saved = [(b, b.detach().clone()) for b in model.buffers()]
    try:
        with torch.random.fork_rng(devices=[]):
            yield model.train()
    finally:
        with torch.no_grad():
            for b, v in saved:
                b.copy_(v)
        model.train(was_training)


def _doubled(example_inputs):
    """The example batch twice: BatchNorm refuses a batch of one in training mode."""
    return pytree.tree_map(lambda t: torch.cat([t, t]) if isinstance(t, torch.Tensor) and t.dim() else t, example_inputs)


def _reached(model: nn.Module, example_inputs, training: bool) -> tuple[set[str], list | None]:
    """The names of the modules a forward in eval or training mode runs, and its output shapes (or,
    if it fails, the error's first line)."""
    hit: set[str] = set()
    hooks = [m.register_forward_pre_hook(lambda m, i, n=n: hit.add(n)) for n, m in model.named_modules()]
    try:
        with (training_mode(model) if training else eval_mode(model)), torch.no_grad():
            out = _flatten(_forward(model, example_inputs))
        return hit, [tuple(t.shape) for t in out]
    except Exception as e:
        return hit, f"{type(e).__name__}: {_first_line(e)}"
    finally:
        for h in hooks:
            h.remove()


def _outermost(names: Iterable[str]) -> list[str]:
    names = set(names)
    return sorted(n for n in names if not any(n.startswith(o + ".") for o in names if o != n))


def _forward(model: nn.Module, example_inputs):
    if isinstance(example_inputs, Mapping):
        return model(**example_inputs)
    if isinstance(example_inputs, (list, tuple)):
        return model(*example_inputs)
    return model(example_inputs)


@contextlib.contextmanager
def traceable(model: nn.Module):
    """Autograd on for tracing whatever the caller's ``requires_grad`` flags and grad mode: Torch-Pruning
    and the output-layer walk follow grad_fns, which a frozen model or ``torch.no_grad()`` would hide
    (the classifier then looked prunable)."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    try:
        for p, _ in flags:
            p.requires_grad_(True)
        with torch.enable_grad():
            yield model
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


_PRODUCTS = {"matmul", "__matmul__", "__rmatmul__", "bmm", "mm", "einsum", "baddbmm", "addbmm"}
_SHUFFLES = {"pixel_shuffle", "pixel_unshuffle", "channel_shuffle", "native_channel_shuffle"}
_RESHAPES = {"view", "reshape", "unflatten"}
_SLICES = {"__getitem__", "narrow"}


class _ChannelOps(TorchFunctionMode):
    """Records, by the grad_fn of their result, the ops Torch-Pruning takes for element-wise but that
    mix or regroup channels: a product of two activations (attention, non-local blocks), a reshape
    that splits the channel dimension of an NCHW map (channel shuffle), pixel/channel shuffles. A
    Unit whose channels pass through one is refused with the op and its module named. Partial
    channel slices of an NCHW map (ReXNet's ``x[:, :C] + shortcut``, GhostNet's ``[:, :out_chs]``)
    go to ``slices``: Torch-Pruning maps them wrongly or never finishes grouping around them, so a
    model that keeps one in its traced graph is refused before grouping."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.stack, self.found, self.slices = [""], {}, {}
        self.hooks = []
        for n, m in model.named_modules():
            if n:
                self.hooks.append(m.register_forward_pre_hook(lambda m, i, n=n: self.stack.append(n)))
                self.hooks.append(m.register_forward_hook(lambda m, i, o: self.stack.pop() and None, always_call=True))

    def close(self) -> None:
        for h in self.hooks:
            h.remove()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        name = getattr(func, "__name__", "")
        if name in _SLICES and isinstance(out, torch.Tensor) and out.grad_fn is not None and args:
            src = args[0]
            if (isinstance(src, torch.Tensor) and src.dim() == 4 and out.dim() == 4
                    and out.shape[0] == src.shape[0] and out.shape[1] < src.shape[1]):
                self.slices.setdefault(out.grad_fn, (self.stack[-1], f"takes {out.shape[1]} of the {src.shape[1]} "
                                                                     "channels of a map (a partial channel slice)"))
        elif name in _PRODUCTS or name in _SHUFFLES or name in _RESHAPES:
            first = out[0] if isinstance(out, (tuple, list)) and out else out
            if isinstance(first, torch.Tensor) and first.grad_fn is not None:
                why = _mixes_channels(name, args, first)
                if why:
                    self.found.setdefault(first.grad_fn, (self.stack[-1], f"{name} {why}"))
        return out


def _mixes_channels(name: str, args, out: torch.Tensor) -> str | None:
    tensors = [a for a in args if isinstance(a, torch.Tensor)]
    if name == "einsum" and len(args) > 1 and isinstance(args[1], (list, tuple)):
        tensors = [a for a in args[1] if isinstance(a, torch.Tensor)]
    if name in _PRODUCTS:
        if sum(not isinstance(t, nn.Parameter) for t in tensors) >= 2:
            return "(a product of two activations, as in attention or non-local blocks)"
        return None
    if name in _SHUFFLES:
        return "(moves channels)"
    src = tensors[0] if tensors else None
    if (src is not None and src.dim() == 4 and out.dim() > 4 and out.shape[0] == src.shape[0]
            and out.shape[1] != src.shape[1]):
        return f"(splits the channel dimension {tuple(src.shape)} -> {tuple(out.shape)}, as a channel shuffle does)"
    return None


class _Barrier(BasePruningFunc):
    """Torch-Pruning handler for an ignored module traced as one opaque op: in- and out-channels are
    separate functions, so no dependency passes through it, and every group that reaches it is kept whole."""

    def prune_out_channels(self, layer, idxs):
        raise UnsupportedLayerError(f"internal: ignored module {type(layer).__name__} must not be pruned")

    def prune_in_channels(self, layer, idxs):
        raise UnsupportedLayerError(f"internal: ignored module {type(layer).__name__} must not be pruned")

    def get_out_channels(self, layer):
        return None

    def get_in_channels(self, layer):
        return None


class _Opaque(torch.autograd.Function):
    """One autograd node from a module's tensor inputs to its tensor outputs: the tracer sees neither
    its inner layers nor its inner ops."""

    @staticmethod
    def forward(ctx, run, *tensors):
        return tuple(t.clone() if any(t is u for u in tensors) else t for t in run())

    @staticmethod
    def backward(ctx, *grads):  # pragma: no cover - tracing never runs backward
        return (None,) * len(ctx.needs_input_grad)


_OPAQUE_CLASSES: dict[type, type] = {}


def _opaque_class(cls: type) -> type:
    """A subclass of ``cls`` whose forward is one :class:`_Opaque` op; registered with Torch-Pruning as
    a barrier layer while tracing, so an ignored module really is left out of the graph."""
    if cls not in _OPAQUE_CLASSES:
        def forward(self, *args, **kwargs):
            inputs = [t for t in pytree.tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)]
            box = {}

            def run():
                with torch.no_grad():
                    box["flat"], box["spec"] = pytree.tree_flatten(cls.forward(self, *args, **kwargs))
                return tuple(t for t in box["flat"] if isinstance(t, torch.Tensor))
            outs = _Opaque.apply(run, *inputs)
            outs = iter((outs,) if isinstance(outs, torch.Tensor) else outs)
            return pytree.tree_unflatten([next(outs) if isinstance(t, torch.Tensor) else t for t in box["flat"]],
                                         box["spec"])
        _OPAQUE_CLASSES[cls] = type(f"Ignored{cls.__name__}", (cls,), {"forward": forward})
    return _OPAQUE_CLASSES[cls]


class UnitGraph:
    """The prunable Units of ``model`` and the means to shrink them in place."""

    def __init__(
        self,
        model: nn.Module,
        example_inputs,
        ignore: Iterable[str] = (),
        min_width: float = 0.0,
        round_to: int = 1,
        drop_blocks: bool = False,
    ):
        self.model = model
        self.example_inputs = example_inputs
        self.module_names = {m: n for n, m in model.named_modules()}
        self.ignored = self._resolve_ignored(ignore)
        self.opaque = self._opaque_modules(ignore)
        # tracing must not touch BatchNorm statistics (nor fail on batch-1 BatchNorm1d), and must see
        # every grad_fn whatever the caller's requires_grad flags and grad mode
        layers = [m for m in model.modules() if isinstance(m, (ops.TORCH_CONV, ops.TORCH_LINEAR))]
        with traceable(model):
            with eval_mode(model):
                outputs, self.output_shapes = _output_layers(model, example_inputs, layers)
            # layers that only a training-mode forward runs (GoogLeNet's and Inception's auxiliary heads):
            # then the model is traced in training mode, so their inputs are pruned with the rest
            self.train_only, self.train_shapes = self._train_only(model, example_inputs)
            trace_inputs = _doubled(example_inputs) if self.train_only else example_inputs
            with (training_mode(model) if self.train_only else eval_mode(model)):
                if self.train_only:
                    outputs |= _output_layers(model, trace_inputs, layers)[0]
                self.protected = {self.module_names[m] for m in outputs}
                groups = self._trace(model, trace_inputs)
        self._unwrapped = {id(p.parameters): p.pruning_dim for p in self.dg.unwrapped_parameters}
        self._param_names = {id(p): n for n, p in model.named_parameters(remove_duplicate=False)}
        self.units: list[Unit] = []
        self.kept_whole: dict[str, str] = {}  # groups that are not Units (kept at full width), and why
        self._roots: dict[str, nn.Module] = {}
        for group in groups:
            unit = self._make_unit(group)
            if unit is None and self._tied:
                unit, group = self._reroot(group)
            if unit is not None and unit.name not in self._roots:
                unit.round_to = max(1, int(round_to))
                unit.min_keep = unit.snap(max(unit.step, math.ceil(min_width * unit.width)))
                unit.min_keep = max(unit.min_keep, unit.step)
                self.units.append(unit)
                self._roots[unit.name] = group[0].dep.target.module
        # Units whose width 0 removes a residual branch (drop.py); they may go there only when asked
        self.droppable = droppable(self)
        self.branch_min = {}  # their minimum widths while kept (prunekit.depth plans with them)
        for unit in self.units:
            if drop_blocks and unit.name in self.droppable:
                self.branch_min[unit.name], unit.min_keep = unit.min_keep, 0

    def _trace(self, model: nn.Module, example_inputs) -> list:
        """Torch-Pruning's DependencyGraph and its groups. Ignored modules it has no pruner for are
        traced as one opaque op each (a barrier: every width that reaches one is kept whole); ops that
        mix channels are recorded so a Unit passing through one is refused with the op named."""
        self.dg = tp.DependencyGraph()
        swapped = [(m, type(m)) for m in self.opaque]
        for m, cls in swapped:
            self.dg.register_customized_layer(_opaque_class(cls), _Barrier())
            m.__class__ = _opaque_class(cls)
        mixers = _ChannelOps(model)
        try:
            with mixers:
                training = model.training  # Torch-Pruning switches to eval mode: trace in the mode asked for
                self.dg.build_dependency(model, example_inputs=example_inputs, verbose=False,
                                         forward_fn=lambda m, x: _forward(m.train(training), x))
            traced = {node.grad_fn for node in self.dg.module2node.values()}
            sliced = [v for fn, v in mixers.slices.items() if fn in traced]
            if sliced:
                where = list(dict.fromkeys(w for w, _ in sliced))  # in the order the forward runs them
                raise UnsupportedLayerError(
                    f"{_module_label(where[0])} {sliced[0][1]}, which Torch-Pruning cannot follow"
                    f"{f' (nor can it in {len(where) - 1} more module(s))' if len(where) > 1 else ''}; "
                    f"{_ignore_advice(*where)}")
            skip = [m for m in model.modules() if self.module_names.get(m) in self.ignored | self.protected]
            return list(self.dg.get_all_groups(ignored_layers=skip, root_module_types=(ops.TORCH_CONV, ops.TORCH_LINEAR)))
        except PrunekitError:
            raise
        except Exception as e:  # Torch-Pruning's tracer fails on ops it cannot follow
            if mixers.found:
                where, what = next(iter(mixers.found.values()))
                more = f" (and {len(mixers.found) - 1} more such op(s))" if len(mixers.found) > 1 else ""
                every = list(dict.fromkeys(w for w, _ in mixers.found.values()))  # in the order the forward runs them
                raise UnsupportedLayerError(f"Torch-Pruning cannot trace this model: {_module_label(where)} runs {what}"
                                            f"{more}; {_ignore_advice(*every)}") from e
            raise UnsupportedLayerError(f"Torch-Pruning cannot trace this model ({type(e).__name__}: "
                                        f"{_first_line(e)}); pass the module that runs the op it cannot follow with "
                                        "ignore=[...]: an ignored module is traced as one opaque op") from e
        finally:
            mixers.close()
            self._mixers = mixers.found
            for m, cls in swapped:
                m.__class__ = cls

    def _train_only(self, model: nn.Module, example_inputs) -> tuple[list[str], list | None]:
        """The outermost modules with parameters that a training-mode forward runs and an eval-mode one
        does not, and the training-mode output shapes (None when that forward fails: nothing is then
        checked in training mode)."""
        eval_hits, _ = _reached(model, example_inputs, training=False)
        train_hits, shapes = _reached(model, _doubled(example_inputs), training=True)
        named = dict(model.named_modules())
        with_params = {n for n, m in named.items() if any(True for _ in m.parameters())}
        if isinstance(shapes, str):
            missed = [n for n in _outermost(set(named) - eval_hits) if n in with_params]
            if missed:
                raise UnsupportedLayerError(
                    f"{_module_label(missed[0])} never runs in eval mode and a training-mode forward at this input "
                    f"size fails ({shapes}), so its inputs cannot be traced; build the model without it "
                    "(e.g. aux_logits=False) or pass a larger example input")
            return [], None
        return [n for n in _outermost(train_hits - eval_hits - {""}) if n in with_params], shapes

    def _reroot(self, group) -> tuple[Unit | None, Any]:
        """The same group rooted at another of its producers. Torch-Pruning roots a group at the first
        layer it meets; when that layer's channels are tied in pairs (GhostNet: a depthwise copy of the
        primary conv's channels is concatenated to them, and a layer reading the concat is the root),
        rooting at the primary or depthwise conv gives one Unit channel per independent channel."""
        first = self.module_names[group[0].dep.target.module]
        skip = self.ignored | self.protected | {first}
        candidates = {}
        for item in group:
            m = item.dep.target.module
            if (isinstance(m, (ops.TORCH_CONV, ops.TORCH_LINEAR)) and self.module_names.get(m) not in skip
                    and self.dg.is_out_channel_pruning_fn(item.dep.handler)):
                candidates[m] = len(item.idxs)
        for m in sorted(candidates, key=candidates.get):  # the narrowest is the likeliest independent set
            pruner = self.dg.get_pruner_of_module(m)
            other = self.dg.get_pruning_group(m, pruner.prune_out_channels, list(range(pruner.get_out_channels(m))))
            unit = self._make_unit(other)
            if unit is not None:
                self.kept_whole.pop(first, None)
                return unit, other
        return None, group

    def _opaque_modules(self, ignore: Iterable[str]) -> set[nn.Module]:
        """The outermost ignored modules that Torch-Pruning has no pruner for (blocks, custom layers)."""
        given = set(ignore) - {""}
        out = set()
        for name, m in self.model.named_modules():
            if name not in given or any(name.startswith(o + ".") for o in given):
                continue
            if ops.module2type(m) == ops.OPTYPE.ELEMENTWISE or isinstance(m, (nn.Sequential, nn.ModuleList)):
                out.add(m)
        return out

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
        self._tied = False
        seen: set[tuple[str, int]] = set()
        for item in group:
            dep, idxs, root_idxs = item.dep, item.idxs, item.root_idxs
            node = dep.target
            is_out = self.dg.is_out_channel_pruning_fn(dep.handler)
            if node.type == ops.OPTYPE.CUSTOMIZED and node.module in self.opaque:
                return None  # its channels reach an ignored module: kept whole
            if node.grad_fn in self._mixers:
                where, what = self._mixers[node.grad_fn]
                raise UnsupportedLayerError(f"the channels of {name!r} pass through {what}, which Torch-Pruning cannot "
                                            f"follow; {_ignore_advice(where or name)}")
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
            if node.type == ops.OPTYPE.GN:
                # Torch-Pruning keeps num_groups: the width must stay a multiple of it, and keeping the
                # same offsets in every group (as for grouped convs) keeps each group's channels together
                unit.groups = math.lcm(unit.groups, node.module.num_groups)
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
            self.kept_whole[name] = f"its width {width} is not a multiple of its {unit.groups} channel groups"
            return None  # channel groups that do not tile the width cannot be pruned consistently
        for s in unit.slices:
            counts = torch.bincount(s.channel, minlength=width)
            if int(counts.min()) != int(counts.max()):
                # a channel tied to another one (GhostNet's cat of a depthwise copy of the same channels,
                # seen from a layer that reads both) or cut away by a slice: Torch-Pruning's group removes
                # more (or fewer) positions than the Unit's slices say, so its cost and surgery would be wrong
                self.kept_whole[name] = (f"its channels do not map one-to-one onto {s.param!r} (some are tied to "
                                         "others or sliced away)")
                self._tied = True
                return None
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
        dropped = []
        for unit in self.units:
            if unit.name not in keep:
                continue
            kept = sorted({int(i) for i in keep[unit.name]})
            if not kept and unit.name in self.droppable:
                dropped.append(unit)  # after every other Unit: the stand-ins keep the pruned shapes
                continue
            _check_keep(unit, kept)
            drop = sorted(set(range(unit.width)) - set(kept))
            if not drop:
                continue
            root = self._roots[unit.name]
            try:
                pruner = self.dg.get_pruner_of_module(root)
                self.dg.get_pruning_group(root, pruner.prune_out_channels, drop).prune()
            except Exception as e:  # Torch-Pruning's surgery fails on layouts it cannot slice
                raise UnsupportedLayerError(
                    f"Torch-Pruning failed to prune unit {unit.name!r} ({type(e).__name__}: {_first_line(e)}); "
                    f"pass ignore=['{unit.name}'] (CLI: --ignore {unit.name})") from e
        for unit in dropped:
            drop_unit(self.model, unit, self.example_inputs)
        self.check_runs()
        return self.model

    def check_runs(self) -> None:
        """Run the model once and name the layer that fails, so a bad slice is caught at once; every
        output must keep the dense model's shape (a pruned classifier would not). A dense model that
        runs in training mode must still do so pruned (fine-tuning needs it)."""
        self._check_run(eval_mode(self.model), self.example_inputs, self.output_shapes, "")
        if self.train_shapes is not None:
            self._check_run(training_mode(self.model), _doubled(self.example_inputs), self.train_shapes,
                            "training-mode ")

    def _check_run(self, mode, inputs, want: list, label: str) -> None:
        stack: list[str] = []
        hooks = [m.register_forward_pre_hook(lambda m, i, n=n: stack.append(n)) for n, m in self.model.named_modules() if n]
        try:
            with mode, torch.no_grad():
                shapes = [tuple(t.shape) for t in _flatten(_forward(self.model, inputs))]
        except Exception as e:
            where = stack[-1] if stack else "?"
            raise UnsupportedLayerError(
                f"after pruning, layer {where!r} fails in a {label or 'eval-mode '}forward ({_first_line(e)}); "
                f"Torch-Pruning cannot handle it: pass ignore=['{where}']") from e
        finally:
            for h in hooks:
                h.remove()
        if shapes != want:
            raise UnsupportedLayerError(f"after pruning, the model's {label}outputs have shapes {shapes} instead of "
                                        f"{want}; pass the output layers with ignore=[...]")


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [""])[0][:200]


def _ignore_advice(*modules: str) -> str:
    if not modules or "" in modules:
        return "the model's own forward runs it: move it into a submodule and pass that with ignore=[...]"
    names = ", ".join(f"'{m}'" for m in modules)
    return (f"pass ignore=[{names}] (CLI: --ignore {','.join(modules)}) to keep "
            f"{'that module' if len(modules) == 1 else 'those modules'} whole")


def _module_label(module: str) -> str:
    return f"module {module!r}" if module else "the model's own forward"


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
