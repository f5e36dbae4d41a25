"""Width 0: removing a residual branch's inner channels removes the branch.

On a CPU at batch 1 most of a small CNN's time is per-op overhead that no channel count removes:
ResNet-56 with every Unit at 8 channels still takes 0.63 of the dense time
(bench/results/branch_overhead.md). Taking the inner Unit of
a residual branch (ResNet's conv1 -> conv2) to width 0 removes the branch's convs outright: its
writers compute nothing, and the layers reading it output a constant (their bias, or zeros that the
following BatchNorm turns into its shift), which the residual add carries. PyTorch has no
zero-channel conv (one with zero input channels returns zero output channels), so the layers are
replaced by the stand-ins below, which keep the shapes and the exact function (trainable). Timed
and exported, the model runs in its inference form (prunekit.fold), where the removed blocks'
residual adds and ReLUs are folded away too.

A Unit may go to width 0 (``droppable``) when every module its channels touch is a conv/linear or a
normalization layer, one layer writes it (a depthwise conv rides along: no add sums it with another
path), its readers take all their input from it (no concat), its channels do not reach the model
output, and every reader writes a stream that keeps another path: the branch reads the stream it
writes (``x + f(x)``), or the stream has a writer that no candidate branch feeds (ResNet's projection
shortcut). Everything comes from the Units' slices, so no architecture is named here.
"""
from __future__ import annotations

import torch
import torch.nn as nn

_LAYERS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
_NORMS = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)


def _out_size(geometry: tuple, size: tuple[int, ...]) -> tuple[int, ...]:
    kernel, stride, padding, dilation = geometry
    if padding == "same":
        return tuple(size)
    pad = (0,) * len(size) if padding == "valid" else padding
    return tuple((n + 2 * p - d * (k - 1) - 1) // s + 1 for n, p, d, k, s in zip(size, pad, dilation, kernel, stride))


class EmptyOutput(nn.Module):
    """A conv/linear layer left with no output channels: an empty map of the layer's output size."""

    def __init__(self, layer: nn.Module):
        super().__init__()
        self.conv = isinstance(layer, nn.modules.conv._ConvNd)
        self.geometry = (layer.kernel_size, layer.stride, layer.padding, layer.dilation) if self.conv else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.conv:
            return x.new_empty((x.shape[0], 0, *_out_size(self.geometry, tuple(x.shape[2:]))))
        return x.new_empty((*x.shape[:-1], 0))

    def extra_repr(self) -> str:
        return "dropped: no output channels"


class ConstantOutput(nn.Module):
    """A conv/linear layer left with no input channels: its bias (or zeros) at every output position,
    through the BatchNorm that read its output (``norm``, folded in: normalizing a constant map
    costs as much as any map). Exact in both modes:
    the norm sees two equal values per channel, so its batch mean is the constant and its variance 0,
    as over the whole map; in eval mode the value is kept until a parameter or statistic changes."""

    def __init__(self, layer: nn.Module, norm: nn.Module | None = None):
        super().__init__()
        self.out_channels = layer.weight.shape[0]
        self.geometry = ((layer.kernel_size, layer.stride, layer.padding, layer.dilation)
                         if isinstance(layer, nn.modules.conv._ConvNd) else None)
        self.bias = layer.bias
        self.norm = norm
        self._kept: tuple | None = None

    def value(self, like: torch.Tensor, ndim: int) -> torch.Tensor:
        """The per-channel constant, shaped to broadcast over an output of ``ndim`` dims."""
        base = self.bias if self.bias is not None else like.new_zeros(self.out_channels)
        if self.norm is None:
            return base.view(-1, *([1] * (ndim - 2))) if self.geometry else base
        # kept only when nothing records gradients (no graph to keep alive), per inference mode
        cacheable = not self.training and not torch.is_grad_enabled()
        tensors = (*([] if self.bias is None else [self.bias]), *self.norm.parameters(), *self.norm.buffers())
        key = (torch.is_inference_mode_enabled(), *((id(t), t._version) for t in tensors))
        if cacheable and self._kept is not None and self._kept[0] == key:
            return self._kept[1]
        pair = (2, self.out_channels) if self.geometry is None else (1, self.out_channels, *([1] * (ndim - 3)), 2)
        shape = base.view(-1, *([1] * (len(pair) - 2))).expand(pair) if self.geometry else base.expand(pair)
        out = self.norm(shape.contiguous())
        out = out[0] if self.geometry is None else out[..., :1][0]
        if cacheable:
            self._kept = (key, out)
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.geometry is None:
            shape = (*x.shape[:-1], self.out_channels)
        else:
            shape = (x.shape[0], self.out_channels, *_out_size(self.geometry, tuple(x.shape[2:])))
        if self.bias is None and self.norm is None:
            return x.new_zeros(shape)
        return self.value(x, len(shape)).expand(shape)

    def extra_repr(self) -> str:
        return f"dropped input: constant {self.out_channels} channels"


def _layer_dims(unit, modules) -> tuple[set[str], set[str]]:
    """The conv/linear layers whose output channels (weight dim 0) and input channels (dim 1) are
    the Unit's; a depthwise conv is in both (it goes with the writers)."""
    writes, reads = set(), set()
    for s in unit.slices:
        if isinstance(modules.get(s.module), _LAYERS) and s.param == f"{s.module}.weight":
            (writes if s.dim == 0 else reads).add(s.module)
    return writes, reads - writes


def _depthwise(layer: nn.Module) -> bool:
    return isinstance(layer, nn.modules.conv._ConvNd) and layer.groups > 1 and layer.groups == layer.in_channels


def _covers(unit, layer: nn.Module, name: str) -> bool:
    """Every position of the layer's weight dim the Unit slices (dim 0 of a depthwise conv) is the Unit's."""
    sizes = {s.dim: len(s.index) for s in unit.slices if s.param == f"{name}.weight"}
    return all(n == layer.weight.shape[d] for d, n in sizes.items())


def droppable(graph) -> set[str]:
    """The Units that may go to width 0 (module docstring)."""
    modules = dict(graph.model.named_modules())
    dims = {u.name: _layer_dims(u, modules) for u in graph.units}
    written_by = {layer: name for name, (w, _) in dims.items() for layer in w}
    reads_from = {layer: name for name, (_, r) in dims.items() for layer in r}
    candidates = {}  # unit -> (its one writer, its readers)
    for u in graph.units:
        touched = {s.module for s in u.slices}
        if u.name in graph.protected or touched & graph.protected:
            continue
        if not all(isinstance(modules.get(m), _LAYERS + _NORMS) and not getattr(modules[m], "transposed", False)
                   for m in touched):
            continue
        writers, readers = dims[u.name]
        main = [w for w in writers if not _depthwise(modules[w])]  # a depthwise conv rides along
        if len(main) != 1 or not readers or not all(r in written_by for r in readers):
            continue  # several writers: an add sums it with another path
        if all(_covers(u, modules[m], m) for m in writers | readers):  # no concat
            candidates[u.name] = (main[0], readers)
    reading = {r for _, rs in candidates.values() for r in rs}

    def branch(writer: str, reader: str) -> bool:
        """It reads the stream it writes (x + f(x)), or that stream has a writer no branch feeds."""
        stream = written_by[reader]
        others = {w for w in dims[stream][0] - reading if not _depthwise(modules[w])}
        return reads_from.get(writer) == stream or bool(others)

    return {name for name, (writer, readers) in candidates.items() if all(branch(writer, r) for r in readers)}


def drop(model: nn.Module, unit, example_inputs) -> None:
    """Replace, in ``model``, the layers of ``unit`` (taken to width 0): writers by EmptyOutput,
    readers by ConstantOutput (with the BatchNorm that reads the reader's output folded in, found by
    tensor identity in one forward), the Unit's normalization layers by Identity."""
    from .latency.measure import layer_specs
    modules = dict(model.named_modules())
    writes, reads = _layer_dims(unit, modules)
    norms = {spec.name: spec.norm for spec in layer_specs(model, example_inputs) if spec.name in reads}
    names = {m: n for n, m in modules.items()}
    replace = {}
    for name in sorted({s.module for s in unit.slices}):
        m = modules[name]
        if isinstance(m, _NORMS):
            replace[name] = nn.Identity()
        elif name in writes:
            replace[name] = EmptyOutput(m)
        else:
            norm = norms.get(name)
            if isinstance(norm, nn.modules.batchnorm._BatchNorm):
                replace[names[norm]] = nn.Identity()
            else:
                norm = None
            replace[name] = ConstantOutput(m, norm)
    for name, new in replace.items():
        parent, _, leaf = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, leaf, new)


def stand_in(layer: nn.Module, out_dim: int, in_dim: int, norm: nn.Module | None = None) -> nn.Module:
    """What a layer of these dims runs as once dropped (for the latency tables): an EmptyOutput with no
    outputs, a ConstantOutput (``norm`` folded in when it is a BatchNorm) with no inputs."""
    if out_dim == 0:
        return EmptyOutput(layer)
    return ConstantOutput(layer, norm if isinstance(norm, nn.modules.batchnorm._BatchNorm) else None)


__all__ = ["ConstantOutput", "EmptyOutput", "drop", "droppable", "stand_in"]
