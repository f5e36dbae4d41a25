"""On-disk store of latency measurements, one JSON file per (device, threads, torch version).

Entries are single measurements keyed by what determines them (the layer's construction, input
shape, batch, the two channel dims and the timing window), so tables of different models share
the layers they have in common and the staircases of ``snap`` reuse the table's points. The
directory is ``$PRUNEKIT_CACHE/latency`` (default ``~/.cache/prunekit/latency``).
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path

import torch

from ..io import write_json


def cache_dir() -> Path:
    root = os.environ.get("PRUNEKIT_CACHE") or Path.home() / ".cache" / "prunekit"
    return Path(root) / "latency"


def device_name(device: str) -> str:
    """A stable name for the hardware: the CPU model (``/proc/cpuinfo``) or the CUDA device's name."""
    if device.startswith("cuda"):
        return torch.cuda.get_device_name(torch.device(device))
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    except OSError:
        pass
    import platform
    return platform.processor() or platform.machine() or "cpu"


FORM = "folded"  # what runs is prunekit.fold's inference form; timings of other forms are not reused


def runtime_version(runtime: str) -> str:
    if runtime == "onnxruntime":
        import onnxruntime
        return f"torch{torch.__version__}-onnxruntime{onnxruntime.__version__}-{FORM}"
    return f"torch{torch.__version__}-{FORM}"


class Store:
    """Measurements of one device at one thread count with one runtime version (torch, and onnxruntime
    when it runs the model); ``save`` is atomic."""

    def __init__(self, device: str, threads: int, enabled: bool = True, runtime: str = "torch"):
        self.device = device_name(device)
        slug = re.sub(r"[^A-Za-z0-9.]+", "-", f"{self.device}-{device.split(':')[0]}").strip("-")
        self.version = runtime_version(runtime)
        self.path = cache_dir() / f"{slug}-threads{threads}-{self.version.replace('+', '_')}.json"
        self.enabled = enabled
        self.entries: dict[str, float] = {}
        self.dirty = False
        if enabled and self.path.is_file():
            try:
                entries = json.loads(self.path.read_text()).get("entries", {})
                self.entries = {k: float(v) for k, v in entries.items()}
            except (ValueError, AttributeError, TypeError):
                self.entries = {}  # a damaged cache is re-measured, never trusted

    def get(self, key: str) -> float | None:
        return self.entries.get(key)

    def put(self, key: str, ms: float) -> None:
        self.entries[key] = float(ms)
        self.dirty = True

    def save(self) -> None:
        if not (self.enabled and self.dirty):
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:  # another process may have added entries meanwhile: keep both
            on_disk = json.loads(self.path.read_text()).get("entries", {}) if self.path.is_file() else {}
        except (ValueError, AttributeError):
            on_disk = {}
        write_json(self.path, {"device": self.device,
                               "runtime": self.version, "entries": {**on_disk, **self.entries}})
        self.dirty = False
