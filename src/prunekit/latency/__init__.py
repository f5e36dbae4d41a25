"""Latency as a budget: measured per-layer tables on this machine, a ``latency`` cost for every
allocator, hardware-friendly width snapping and predicted-vs-measured reports (docs/latency.md)."""
from __future__ import annotations

import numpy as np

from .cache import Store, cache_dir
from .measure import LatencyConfig, LayerSpec, layer_specs, model_ms, pair_ms, time_callable
from .snap import snap_widths
from .table import LatencyCost, build, interp2

__all__ = ["LatencyConfig", "LatencyCost", "LayerSpec", "Store", "attach", "build", "cache_dir", "interp2",
           "layer_specs", "measure_result", "model_ms", "pair_ms", "predicted", "snap_widths", "time_callable"]


def attach(prepared, config=None) -> LatencyConfig:
    """Measure (or read from the cache) the latency tables of ``prepared``'s still-dense graph at the
    config's batches, and make the budget batch's table the CostModel's ``latency`` cost."""
    config = LatencyConfig.of(config)
    store = Store(config.device, config.threads, config.cache, config.runtime)
    costs = {b: build(prepared.graph, config, b, store) for b in config.report_batches}
    for c in costs.values():
        c.store = store
    cost = prepared.cost
    cost.latency = costs[config.batch]
    cost.latency_by_batch = costs
    prepared.latency = config
    lo = cost.vector({u.name: u.min_keep for u in prepared.graph.units})
    prepared.dense["latency"] = cost.latency(cost.dense_widths)
    prepared.smallest["latency"] = cost.latency(lo)
    prepared.smallest["latency_fixed"] = cost.latency.fixed_ms()
    return config


def predicted(cost, widths: dict[str, int], targets: dict) -> dict:
    """The summary's ``latency`` entry: target and predicted ms, dense and pruned, at each batch."""
    lat = cost.latency
    w = cost.vector(widths)
    rows = {}
    for b, c in cost.latency_by_batch.items():
        dense, pruned = c(cost.dense_widths), c(w)
        rows[str(b)] = {"dense_ms": dense, "pruned_ms": pruned, "speedup": dense / pruned}
    return {"batch": lat.batch, "threads": lat.config.threads, "device": lat.device, "runtime": lat.config.runtime,
            "target_ms": targets.get("latency"), "predicted": rows, "snap": lat.config.snap,
            "tables": {str(b): c.describe() for b, c in cost.latency_by_batch.items()}}


def measure_result(result, dense_model, example_inputs, config: LatencyConfig) -> dict:
    """Time the dense and the pruned model now, in alternating blocks (``pair_ms``), at each batch;
    ``speedup`` is the median of the pairs' ratios. The entry sits next to the prediction in
    ``summary["latency"]["measured"]``."""
    rows = {}
    for b in config.report_batches:
        dense, pruned, ratio = pair_ms(dense_model, result.model, example_inputs, b, config)
        rows[str(b)] = {"dense_ms": dense, "pruned_ms": pruned, "speedup": ratio}
    entry = result.summary.setdefault("latency", {})
    entry["measured"] = rows
    pred = entry.get("predicted", {})
    entry["prediction_error"] = {b: pred[b]["pruned_ms"] / rows[b]["pruned_ms"] - 1 for b in rows if b in pred}
    return rows


def random_widths(graph, rng: np.random.Generator) -> dict[str, int]:
    """A random legal width per Unit (for the predictor's error on random settings)."""
    return {u.name: int(u.snap(rng.uniform(u.min_keep, u.width))) for u in graph.units}
