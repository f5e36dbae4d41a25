"""The inference form of a pruned model, what is timed and exported: removed residual branches
folded out of the forward and BatchNorm folded into the conv before it.

A branch taken to width 0 (``prunekit.drop``) leaves its block computing ``relu(x + c)`` with ``c`` a
per-channel constant: an add and a ReLU over the whole residual stream, two passes over memory
that no channel count shrinks (bench/results/fold.md times plans with and without). A run of such blocks, and
the ReLU before them, is one function of the stream ``z`` before that ReLU:
``max(z + C, M)``, with ``C`` the sum of the constants and ``M`` per channel, since
``max(max(z + C, M) + c, 0) = max(z + (C + c), max(M + c, 0))`` (an add without a ReLU after it
leaves ``M + c``). So each run becomes one :class:`StreamShift` (two passes) in a ``torch.fx``
rewrite of the model; the removed layers' stand-ins, left without users, go with dead-code
elimination. Eval mode only: in training a removed branch's BatchNorm normalizes its constant to
its shift, so the pruned model keeps its modules for fine-tuning and is folded when it is timed or
exported. BatchNorm after a conv is folded into it (``torch.nn.utils.fusion``), as onnxruntime and
deployment toolchains do; eager PyTorch runs a separate BatchNorm per conv otherwise, a pass that
costs the most where the convs are narrow. A model ``torch.fx`` cannot trace is returned as it is.
"""
from __future__ import annotations

import operator

import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.utils.fusion import fuse_conv_bn_eval

from .drop import ConstantOutput, EmptyOutput
from .errors import ConfigError

_ADDS = {operator.add, torch.add}  # not in-place ones: readers of the stream would see the shift
_RELUS = {F.relu, torch.relu, torch.relu_}


class StreamShift(nn.Module):
    """``max(x + shift, floor)`` per channel (``floor`` None: ``x + shift``); what a run of removed
    residual blocks computes."""

    def __init__(self, shift: torch.Tensor, floor: torch.Tensor | None):
        super().__init__()
        self.register_buffer("shift", shift)
        self.register_buffer("floor", floor)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x + self.shift
        if self.floor is None:
            return y
        if torch.onnx.is_in_onnx_export():  # ONNX's Clip takes scalar bounds; Max takes a tensor
            return torch.maximum(y, self.floor)
        return y.clamp_min_(self.floor)  # in place: one allocation, as the add + ReLU it replaces

    def extra_repr(self) -> str:
        return f"{self.shift.shape[0]} channels" + ("" if self.floor is None else ", floored")


class _Tracer(fx.Tracer):
    def is_leaf_module(self, m: nn.Module, name: str) -> bool:
        return isinstance(m, (ConstantOutput, EmptyOutput, StreamShift)) or super().is_leaf_module(m, name)


def _module(gm: fx.GraphModule, node: fx.Node) -> nn.Module | None:
    return gm.get_submodule(node.target) if node.op == "call_module" else None


def _is_relu(gm: fx.GraphModule, node: fx.Node) -> bool:
    return (node.op == "call_function" and node.target in _RELUS and len(node.args) == 1 and not node.kwargs
            or node.op == "call_method" and node.target in ("relu", "relu_")
            or isinstance(_module(gm, node), nn.ReLU))


def _through_identity(gm: fx.GraphModule, node):
    while isinstance(node, fx.Node) and isinstance(_module(gm, node), nn.Identity):
        node = node.args[0]
    return node


def _constant(gm: fx.GraphModule, node) -> torch.Tensor | None:
    """The per-channel constant a node holds, if it is a stand-in's output (through Identity modules)."""
    node = _through_identity(gm, node)
    m = _module(gm, node) if isinstance(node, fx.Node) else None
    if not isinstance(m, ConstantOutput):
        return None
    ndim = 2 + len(m.geometry[0]) if m.geometry else 2
    with torch.no_grad():
        value = m.value(m.bias if m.bias is not None else torch.zeros(()), ndim).detach().clone()
    return value.reshape(-1, *([1] * (ndim - 2))) if m.geometry else value.reshape(-1)


def inference_form(model: nn.Module) -> nn.Module:
    """``model`` (in eval mode) as it runs in deployment (module docstring): a ``torch.fx.GraphModule``
    sharing the untouched layers with ``model``, which is left as it is; ``model`` itself when there
    is nothing to fold or it cannot be traced."""
    if model.training:
        raise ConfigError("inference_form folds eval-mode statistics: call model.eval() first")
    if not any(isinstance(m, (ConstantOutput, nn.modules.batchnorm._BatchNorm)) for m in model.modules()):
        return model
    try:
        gm = fx.GraphModule(model, _Tracer().trace(model), type(model).__name__)
    except Exception:  # noqa: BLE001  (data-dependent control flow and the like: it runs unfolded)
        return model
    if not _fold_removed_branches(gm) + _fold_batchnorm(gm):
        return model
    gm.graph.eliminate_dead_code()
    gm.delete_all_unused_submodules()
    gm.recompile()
    return gm.eval()


def _fold_batchnorm(gm: fx.GraphModule) -> int:
    """Each eval BatchNorm that alone reads a conv's output, folded into a copy of the conv."""
    folded = 0
    calls = [n.target for n in gm.graph.nodes if n.op == "call_module"]
    for node in list(gm.graph.nodes):
        norm, src = _module(gm, node), node.args[0] if node.args else None
        if not (isinstance(norm, nn.modules.batchnorm._BatchNorm) and norm.running_mean is not None
                and isinstance(src, fx.Node) and len(src.users) == 1):
            continue
        conv = _module(gm, src)
        if not isinstance(conv, nn.modules.conv._ConvNd) or conv.transposed or calls.count(src.target) > 1:
            continue  # a conv called twice keeps its weights for the other call
        parent, _, leaf = src.target.rpartition(".")  # gm's own containers: ``model`` keeps its conv
        setattr(gm.get_submodule(parent) if parent else gm, leaf, fuse_conv_bn_eval(conv, norm))
        node.replace_all_uses_with(src)
        folded += 1
    return folded


def _fold_removed_branches(gm: fx.GraphModule) -> int:
    """Each run of removed residual blocks as one StreamShift; how many runs."""
    chains: dict[fx.Node, tuple[fx.Node, torch.Tensor, torch.Tensor | None]] = {}  # run's end -> (start, C, M)
    continued: set[fx.Node] = set()
    for node in list(gm.graph.nodes):
        step = _removed_block(gm, node)
        if step is None:
            continue
        stream, c, out = step
        if stream in chains:  # a run goes on (an earlier block's output read elsewhere stays computed)
            base, C, M = chains[stream]
            continued.add(stream)
        else:
            base, C, M = _run_start(gm, stream)
        C, M = C + c, None if M is None else M + c
        if out is not node:  # a ReLU after the add
            M = torch.zeros_like(C) if M is None else M.clamp_min(0)
        chains[out] = (base, C, M)
    ends = [o for o in chains if o not in continued]
    for i, out in enumerate(ends):
        base, C, M = chains[out]
        gm.add_submodule(f"stream_shift_{i}", StreamShift(C, M))
        with gm.graph.inserting_after(out):
            new = gm.graph.call_module(f"stream_shift_{i}", (base,))
        out.replace_all_uses_with(new)
    return len(ends)


def _removed_block(gm: fx.GraphModule, node: fx.Node):
    """(stream, constant, output node) when ``node`` adds a stand-in's constant to a stream; the output
    is the ReLU that follows when it is the add's only user."""
    if not (node.op == "call_function" and node.target in _ADDS or node.op == "call_method" and node.target == "add"):
        return None
    if len(node.args) != 2 or node.kwargs:
        return None
    for i in (0, 1):
        c, stream = _constant(gm, node.args[i]), _through_identity(gm, node.args[1 - i])
        if c is not None and isinstance(stream, fx.Node) and _constant(gm, stream) is None:
            users = list(node.users)
            out = users[0] if len(users) == 1 and _is_relu(gm, users[0]) else node
            return stream, c, out
    return None


def _run_start(gm: fx.GraphModule, stream: fx.Node):
    """(start, C, M) of a new run: from the input of the ReLU that made ``stream`` (C = M = 0), else from
    ``stream``. Exact even where others read that ReLU (it stays for them) or it ran in place."""
    z = stream.args[0] if _is_relu(gm, stream) and stream.args else None
    if isinstance(z, fx.Node):
        return z, torch.zeros(()), torch.zeros(())
    return stream, torch.zeros(()), None


__all__ = ["StreamShift", "inference_form"]
