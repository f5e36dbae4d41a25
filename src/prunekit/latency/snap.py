"""Hardware-friendly widths: move each Unit to the right end of its latency staircase.

On CPUs and GPUs a layer's latency rises in steps with its channel count (vector widths, tiles):
within a stair extra channels are free, past its end they cost a jump. For each Unit in turn, its
legal widths within ``snap_window`` steps either side are timed (the layers that Unit touches, the
other Units at their current widths; raw measurements, cached with the table's). A width is a
stair end when the next one costs more than ``snap_tolerance`` relatively, or it is the dense
width. The Unit moves up to the nearest stair end at or above its width if every budget still
holds (MACs and params exactly, latency by the table); otherwise down to the nearest stair end
below it (dropping a jump it had just crossed), or it stays.
"""
from __future__ import annotations

import numpy as np

from ..allocation.fit import limits
from ..cost import CostModel
from ..graph import UnitGraph
from .measure import layer_ms


def snap_widths(graph: UnitGraph, cost: CostModel, targets: dict[str, float], widths) -> tuple[np.ndarray, list[dict]]:
    lat = cost.latency
    config = lat.config
    steps, lo, hi = limits(graph)
    w = np.asarray(widths, dtype=np.float64).copy()
    moves = []

    def fits(v) -> bool:
        return all(getattr(cost, k)(v) <= t * (1 + 1e-12) for k, t in targets.items())

    for i, unit in enumerate(graph.units):
        layers = lat.by_unit.get(i)
        if not layers:
            continue
        cands = [w[i] + k * steps[i] for k in range(-config.snap_window, config.snap_window + 1)]
        cands = [c for c in cands if lo[i] - 1e-9 <= c <= hi[i] + 1e-9]

        def stair(c):
            moved = w.copy()
            moved[i] = c
            return sum(layer_ms(t.spec, round(t.dims(moved)[0]), round(t.dims(moved)[1]), lat.batch, config, lat.store)
                       for t in layers)

        ms = [stair(c) for c in cands]
        ends = [j for j in range(len(cands)) if (j + 1 < len(cands) and ms[j + 1] > ms[j] * (1 + config.snap_tolerance))
                or abs(cands[j] - hi[i]) < 1e-9]
        new = w[i]
        up = [j for j in ends if cands[j] >= w[i] - 1e-9]
        trial = w.copy()
        if up:
            trial[i] = cands[up[0]]
        if up and fits(trial):
            new = cands[up[0]]
        else:
            down = [j for j in ends if cands[j] < w[i] - 1e-9]
            if down:
                new = cands[down[-1]]
        if new != w[i]:
            moves.append({"unit": unit.name, "from": int(w[i]), "to": int(new)})
            w[i] = new
    lat.store.save()
    return w, moves
