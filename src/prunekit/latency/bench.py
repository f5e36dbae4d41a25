"""``prunekit bench-latency RUN_DIR``: time a saved model with torch.utils.benchmark and, exported to
ONNX, with onnxruntime (same threads, same batches, median of ``blocked_autorange``)."""
from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
from torch.utils import benchmark

from ..errors import ConfigError
from .measure import LatencyConfig, model_ms, ort_session


def parse_batches(text: str) -> tuple[int, ...]:
    try:
        batches = tuple(int(b) for b in text.split(",") if b.strip())
    except ValueError:
        raise ConfigError(f"--batches must be comma-separated integers, got {text!r}") from None
    if not batches or min(batches) < 1:
        raise ConfigError(f"--batches must be integers >= 1, got {text!r}")
    return batches


def onnx_ms(path: Path, shape: tuple[int, ...], batch: int, threads: int, run_time: float) -> float:
    """Median milliseconds of one onnxruntime run (CPU provider, ``threads`` intra-op threads)."""
    session = ort_session(str(path), threads)
    name = session.get_inputs()[0].name
    x = np.random.default_rng(0).standard_normal((batch, *shape), dtype=np.float32)

    def run():
        return session.run(None, {name: x})

    run()
    return benchmark.Timer("run()", globals={"run": run}).blocked_autorange(min_run_time=run_time).median * 1e3


def bench(model: nn.Module, example_inputs: torch.Tensor, batches: tuple[int, ...], threads: int, run_time: float,
          onnx: Path | None = None, dense: nn.Module | None = None) -> dict:
    """Rows per batch: torch ms (and the dense model's, when given, with the speed-up), onnxruntime ms.
    ``onnx``: an exported model to time, or a directory to export this one into first."""
    config = LatencyConfig(threads=threads, model_run_time=run_time, batch=batches[0])
    rows = {}
    onnx_path = None
    if onnx is not None:
        from ..io import export_onnx
        onnx_path = onnx if onnx.is_file() else export_onnx(model, example_inputs, onnx / "model.onnx")
    for b in batches:
        row = {"torch_ms": model_ms(model, example_inputs, b, config)}
        if dense is not None:
            row["dense_torch_ms"] = model_ms(dense, example_inputs, b, config)
            row["speedup"] = row["dense_torch_ms"] / row["torch_ms"]
        if onnx_path is not None:
            row["onnxruntime_ms"] = onnx_ms(onnx_path, tuple(example_inputs.shape[1:]), b, threads, run_time)
        rows[str(b)] = row
    return {"threads": threads, "run_time": run_time, "batches": rows,
            "onnx": str(onnx_path) if onnx_path else None}


def temporary_dir() -> Path:
    return Path(tempfile.mkdtemp(prefix="prunekit-onnx-"))
