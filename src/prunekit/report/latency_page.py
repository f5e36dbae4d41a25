"""The report's latency section: predicted (tables) and measured (whole model) latency side by side."""
from __future__ import annotations

from .page import _is_number, esc, section, table


def latency_section(s: dict) -> str:
    lat = s.get("latency")
    if not isinstance(lat, dict):
        return ""
    rows = []
    predicted, measured = lat.get("predicted") or {}, lat.get("measured") or {}
    for b in sorted(set(predicted) | set(measured), key=lambda b: int(b) if str(b).isdigit() else 0):
        p, m = predicted.get(b, {}), measured.get(b, {})
        cell = lambda r, k, f="{:.3f}": f.format(r[k]) if _is_number(r.get(k)) else "-"  # noqa: E731
        rows.append([str(b), cell(p, "dense_ms"), cell(p, "pruned_ms"), cell(p, "speedup", "{:.2f}x"),
                     cell(m, "dense_ms"), cell(m, "pruned_ms"), cell(m, "speedup", "{:.2f}x")])
    if not rows:
        return ""
    body = table(["batch", "predicted dense ms", "predicted pruned ms", "predicted speed-up", "measured dense ms",
                  "measured pruned ms", "measured speed-up"], rows)
    target = lat.get("target_ms")
    note = (f"Latency budget: {target:.3f} ms at batch {esc(lat.get('batch'))}. " if _is_number(target) else "")
    note += (f"{esc(lat.get('threads'))} threads on {esc(lat.get('device'))}, timed in "
             f"{esc(lat.get('runtime', 'torch'))}; predictions are per-layer tables "
             "measured on this machine and interpolated (docs/latency.md), measurements time the whole model.")
    snapped = lat.get("snapped") or []
    if snapped:
        note += f" {len(snapped)} Units were snapped to the end of their latency staircase."
    return section("latency", "Latency", body + f"<p>{note}</p>")
