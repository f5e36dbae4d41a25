"""Timing: one conv/linear layer (with the BatchNorm and activation that follow it in the model) at
given channel dims, and whole models, on the CPU at a thread count or on a GPU through CUDA graphs.

Every timing goes through :func:`time_callable`, so the cache can be tested by counting its calls.
"""
from __future__ import annotations

import copy
import io
import warnings
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
import torch.nn as nn
from torch.utils import benchmark

from ..drop import stand_in
from ..errors import ConfigError
from ..fold import inference_form
from ..graph import _forward, eval_mode

RUNTIMES = ("torch", "onnxruntime")
ACTIVATIONS = (nn.ReLU, nn.ReLU6, nn.SiLU, nn.GELU, nn.Hardswish, nn.Hardsigmoid, nn.LeakyReLU, nn.Sigmoid,
               nn.Tanh, nn.Mish, nn.ELU, nn.PReLU)


@dataclass(frozen=True)
class LatencyConfig:
    """How latency is measured and used.

    ``batch``: the batch size the latency budget refers to (the table is measured there; batch 1 is
    also predicted and measured for the report). ``step``: each channel dim of each layer is
    measured at its minimum, its dense size and every multiple of ``step`` between (CPU and GPU kernels
    block channels in 8s and 16s, so latency moves in stairs that an even grid misses; the step
    doubles until a dim has at most ``max_points``), and interpolated bilinearly; with ``step=None``,
    at ``samples`` evenly spaced sizes instead. ``min_run_time``: seconds of
    ``blocked_autorange`` per measurement. ``snap``: move each Unit to the right end of its latency
    staircase (``snap_window`` steps either side, a stair ends where the next step costs more than
    ``snap_tolerance``). ``measure``: time the dense and pruned models after pruning (``repeats`` x 5
    short alternating blocks of each: ``pair_ms``). ``feedback``:
    under a latency budget, plan again up to this many times with the table's target scaled by
    target / measured until the measured latency at ``batch`` is within ``tolerance`` of the target
    (layers timed alone are not layers inside a model, and a shared machine drifts; latency.feedback).
    ``runtime``: what runs the model in deployment, and so what is timed: ``"torch"`` (eager PyTorch)
    or ``"onnxruntime"`` (every layer and model exported to ONNX and run by onnxruntime's CPU provider
    with ``threads`` intra-op threads: BatchNorm folded, conv+activation fused, no Python per op; at
    batch 1 it ran the dense ResNet-56 in 1.56 ms against eager PyTorch's 9.8 ms).
    """

    device: str = "cpu"
    runtime: str = "torch"
    threads: int | None = None  # None: torch.get_num_threads()
    batch: int = 1
    samples: int = 4
    step: int | None = 8
    max_points: int = 12
    min_run_time: float = 0.05
    model_run_time: float = 0.5
    snap: bool = False
    snap_window: int = 2
    snap_tolerance: float = 0.02
    measure: bool = True
    feedback: int = 3
    repeats: int = 3
    tolerance: float = 0.03
    cache: bool = True
    report_batches: tuple[int, ...] = field(default=())

    def __post_init__(self):
        def positive_int(name, v, least=1):
            if isinstance(v, bool) or not isinstance(v, int) or v < least:
                raise ConfigError(f"latency option {name} must be an integer >= {least}, got {v!r}")
        if self.threads is None:
            object.__setattr__(self, "threads", torch.get_num_threads())
        positive_int("threads", self.threads)
        positive_int("batch", self.batch)
        positive_int("samples", self.samples, 2)
        positive_int("max_points", self.max_points, 2)
        if self.step is not None:
            positive_int("step", self.step)
        positive_int("snap_window", self.snap_window)
        positive_int("feedback", self.feedback, 0)
        positive_int("repeats", self.repeats)
        for name in ("min_run_time", "model_run_time", "snap_tolerance", "tolerance"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0:
                raise ConfigError(f"latency option {name} must be a number > 0, got {v!r}")
        if self.device != "cpu" and not self.device.startswith("cuda"):
            raise ConfigError(f"latency device must be cpu or cuda, got {self.device!r}")
        if self.runtime not in RUNTIMES:
            raise ConfigError(f"latency runtime must be one of {', '.join(RUNTIMES)}, got {self.runtime!r}")
        if self.runtime == "onnxruntime":
            if self.device != "cpu":
                raise ConfigError("latency runtime onnxruntime times on the CPU: drop the cuda device")
            onnxruntime()
        if self.device.startswith("cuda") and not torch.cuda.is_available():
            raise ConfigError("latency device cuda was asked for but no CUDA device is available")
        batches = tuple(dict.fromkeys((1, self.batch, *self.report_batches)))
        for b in batches:
            positive_int("report batch", b)
        object.__setattr__(self, "report_batches", batches)

    @classmethod
    def of(cls, value) -> "LatencyConfig":
        if isinstance(value, LatencyConfig):
            return value
        if value is None:
            return cls()
        if not isinstance(value, dict):
            raise ConfigError(f"latency must be a dict of options or a LatencyConfig, got {type(value).__name__}")
        unknown = sorted(set(value) - set(cls.__dataclass_fields__))
        if unknown:
            raise ConfigError(f"unknown latency option {unknown[0]!r}; accepted: {', '.join(cls.__dataclass_fields__)}")
        return cls(**value)


# -- timing -------------------------------------------------------------------------------------------
def time_callable(fn: Callable[[], object], threads: int, min_run_time: float, device: str = "cpu") -> float:
    """Median milliseconds of ``fn()`` (torch.utils.benchmark); on CUDA ``fn`` is captured in a CUDA
    graph first, so launch overhead is not timed."""
    if device.startswith("cuda"):
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(3):
                fn()
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            fn()

        def run():
            graph.replay()
            torch.cuda.synchronize()
    else:
        run = fn
    run()  # warm-up: one-off allocations and kernel selection
    timer = benchmark.Timer("run()", globals={"run": run}, num_threads=threads)
    return timer.blocked_autorange(min_run_time=min_run_time).median * 1e3


def onnxruntime():
    try:
        import onnxruntime as ort
    except ImportError:
        raise ConfigError("timing with onnxruntime needs it installed: pip install onnxruntime") from None
    return ort


def ort_session(model_bytes: bytes | str, threads: int):
    """An onnxruntime CPU session with ``threads`` intra-op threads (one inter-op: one model at a time)."""
    ort = onnxruntime()
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    return ort.InferenceSession(model_bytes, options, providers=["CPUExecutionProvider"])


def runner(module: nn.Module, x: torch.Tensor, config: LatencyConfig) -> Callable[[], object]:
    """One inference call of ``module`` on ``x`` in the config's runtime (exported to ONNX in memory for
    onnxruntime), in its inference form (prunekit.fold: what export writes) unless it is training."""
    module = module if module.training else inference_form(module)
    if config.runtime == "onnxruntime":
        buffer = io.BytesIO()
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            torch.onnx.export(module, (x,), buffer, dynamo=False, input_names=["input"])
        session = ort_session(buffer.getvalue(), config.threads)
        # a removed branch's stand-in ignores its input, and the export then has none to feed
        feed = {i.name: x.detach().cpu().numpy() for i in session.get_inputs()}
        return lambda: session.run(None, feed)

    def forward():
        with torch.inference_mode():
            return module(x)

    return forward


def model_ms(model: nn.Module, example_inputs: torch.Tensor, batch: int, config: LatencyConfig,
             run_time: float | None = None) -> float:
    """Median milliseconds of one inference forward of ``model`` at ``batch`` (a copy on the config's
    device, in its runtime)."""
    model = copy.deepcopy(model).to(config.device).eval()
    x = torch.randn(batch, *example_inputs.shape[1:], device=config.device)
    return time_callable(runner(model, x, config), config.threads, run_time or config.model_run_time, config.device)


PAIRS_PER_REPEAT = 5  # blocks of each model per repeat; a block lasts model_run_time / PAIRS_PER_REPEAT


def pair_ms(model_a: nn.Module, model_b: nn.Module, example_inputs: torch.Tensor, batch: int,
            config: LatencyConfig) -> tuple[float, float, float]:
    """Two models timed in short alternating blocks (a b, then b a: a steady drift cancels), for
    ``config.repeats`` x ``model_run_time`` seconds each. Returns the medians of a's and b's block times
    and of the ratio a / b within each pair. A shared machine's speed moves within seconds; two models
    timed a block apart see the same machine, so their ratio is steadier than either time, and a slow
    moment that hits one block moves one pair's ratio, not the median."""
    runs = []
    for model in (model_a, model_b):
        model = copy.deepcopy(model).to(config.device).eval()
        x = torch.randn(batch, *example_inputs.shape[1:], device=config.device)
        runs.append(runner(model, x, config))
    block = config.model_run_time / PAIRS_PER_REPEAT
    a, b = [], []
    for i in range(config.repeats * PAIRS_PER_REPEAT):
        order = (0, 1) if i % 2 == 0 else (1, 0)
        t = {k: time_callable(runs[k], config.threads, block, config.device) for k in order}
        a.append(t[0])
        b.append(t[1])
    a, b = np.array(a), np.array(b)
    return float(np.median(a)), float(np.median(b)), float(np.median(a / b))


# -- layers ---------------------------------------------------------------------------------------------
@dataclass
class LayerSpec:
    """A conv/linear layer as it runs in the model: its modules (conv, then BatchNorm and activation
    when the model applies them right after) and its input's per-sample shape."""

    name: str
    module: nn.Module
    norm: nn.Module | None
    act: nn.Module | None
    input_shape: tuple[int, ...]  # one sample, channel dim included
    key: str = ""

    def __post_init__(self):
        m = self.module
        parts = [type(m).__name__, str(tuple(m.weight.shape[2:])), str(m.bias is not None)]
        if isinstance(m, nn.modules.conv._ConvNd):
            parts += [str(m.stride), str(m.padding), str(m.dilation), str(m.padding_mode), self.group_mode(),
                      str(m.groups if self.group_mode() == "grouped" else ""), str(m.out_channels // m.groups)]
        parts += [type(self.norm).__name__ if self.norm is not None else "-",
                  repr(self.act) if self.act is not None else "-", str(self.input_shape[1:] if self.conv else
                                                                         self.input_shape[:-1])]
        self.key = "|".join(parts)

    @property
    def conv(self) -> bool:
        return isinstance(self.module, nn.modules.conv._ConvNd)

    def group_mode(self) -> str:
        m = self.module
        if not self.conv or m.groups == 1:
            return "plain"
        return "depthwise" if m.groups == m.in_channels else "grouped"

    def quantum(self) -> int:
        """Output dims move in multiples of this (channel groups of a grouped or depthwise conv)."""
        m = self.module
        mode = self.group_mode()
        return m.out_channels // m.groups if mode == "depthwise" else m.groups if mode == "grouped" else 1

    def build(self, out_dim: int, in_dim: int, batch: int, device: str) -> tuple[nn.Module, torch.Tensor]:
        """A standalone copy with weight dims (out_dim, in_dim) and a random input for it."""
        m = self.module
        if self.conv:
            mode = self.group_mode()
            if mode == "depthwise":
                groups = max(1, out_dim // (m.out_channels // m.groups))
                in_ch = groups
            else:
                groups = m.groups
                in_ch = in_dim * groups
            with warnings.catch_warnings():  # zero-channel layers only give the stand-ins their shapes
                warnings.simplefilter("ignore")
                layer = type(m)(in_ch, out_dim, m.kernel_size, m.stride, m.padding, m.dilation, max(groups, 1),
                                m.bias is not None, m.padding_mode)
            x = torch.randn(batch, in_ch, *self.input_shape[1:], device=device)
        else:
            layer = nn.Linear(in_dim, out_dim, bias=m.bias is not None)
            x = torch.randn(batch, *self.input_shape[:-1], in_dim, device=device)
        norm = None
        if self.norm is not None:
            norm = type(self.norm)(out_dim, eps=self.norm.eps, affine=self.norm.affine,
                                   track_running_stats=self.norm.track_running_stats)
        if 0 in (out_dim, in_dim):  # a dropped residual branch (prunekit.drop): what runs instead
            layer = stand_in(layer, out_dim, in_dim, norm)
            norm = None if out_dim == 0 or isinstance(norm, nn.modules.batchnorm._BatchNorm) else norm
        mods = [layer]
        if norm is not None:
            mods.append(norm)
        if self.act is not None:
            mods.append(copy.deepcopy(self.act))
        return nn.Sequential(*mods).to(device).eval(), x


def layer_specs(model: nn.Module, example_inputs) -> list[LayerSpec]:
    """Every conv/linear layer with the BatchNorm that reads its output and the activation module that
    reads that (found by tensor identity in one eval forward), in execution order. Functional
    activations and transposed convs are not part of any layer: they fall into the residual."""
    calls: list[tuple[str, nn.Module, object, object]] = []
    keep = []  # holds every tensor so ids stay unique during the pass
    hooks = []
    for name, m in model.named_modules():
        if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear, nn.modules.batchnorm._BatchNorm, *ACTIVATIONS)):
            def hook(m, i, o, name=name):
                if i and isinstance(i[0], torch.Tensor) and isinstance(o, torch.Tensor):
                    keep.extend((i[0], o))
                    calls.append((name, m, id(i[0]), id(o), tuple(i[0].shape[1:])))
            hooks.append(m.register_forward_hook(hook))
    try:
        with eval_mode(model), torch.no_grad():
            _forward(model, example_inputs)
    finally:
        for h in hooks:
            h.remove()
    by_input: dict[int, tuple] = {}
    for c in calls:
        by_input.setdefault(c[2], c)
    specs, seen = [], set()
    for name, m, _, out, shape in calls:
        if not isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)) or name in seen:
            continue
        seen.add(name)
        norm = act = None
        nxt = by_input.get(out)
        if nxt is not None and isinstance(nxt[1], nn.modules.batchnorm._BatchNorm):
            norm, out = nxt[1], nxt[3]
            nxt = by_input.get(out)
        if nxt is not None and isinstance(nxt[1], ACTIVATIONS):
            act = nxt[1]
        specs.append(LayerSpec(name, m, norm, act, shape))
    return specs


def layer_ms(spec: LayerSpec, out_dim: int, in_dim: int, batch: int, config: LatencyConfig, store) -> float:
    """Milliseconds of ``spec`` at weight dims (out_dim, in_dim), from the store or measured (and stored)."""
    key = f"{spec.key}|b{batch}|t{config.min_run_time:g}|{int(out_dim)}x{int(in_dim)}"
    ms = store.get(key)
    if ms is None:
        layer, x = spec.build(int(out_dim), int(in_dim), batch, config.device)
        ms = time_callable(runner(layer, x, config), config.threads, config.min_run_time, config.device)
        if config.runtime == "onnxruntime":  # inside a model a node costs no session call
            ms = max(ms - call_ms(x, config, store), 1e-4)
        store.put(key, ms)
    return ms


def call_ms(x: torch.Tensor, config: LatencyConfig, store) -> float:
    """Milliseconds of one onnxruntime session call on an input like ``x`` that computes nothing (an
    Identity graph): feeding the input and fetching an output of its size. A layer timed alone pays
    it once; inside a model 57 such layers pay it once in all, which at batch 1 is as much as the
    convs themselves."""
    key = f"onnxruntime-call|{tuple(x.shape)}|t{config.min_run_time:g}"
    ms = store.get(key)
    if ms is None:
        ms = time_callable(runner(nn.Identity(), x, config), config.threads, config.min_run_time, config.device)
        store.put(key, ms)
    return ms
