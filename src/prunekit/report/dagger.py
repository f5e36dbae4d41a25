"""The report's Dagger section: the soft cost's path to the target and the gate distribution per Unit.

Drawn from ``summary["signals"]["dagger"]`` alone (what ``allocation/dagger.py`` records), so the
page needs neither model nor data.
"""
from __future__ import annotations

from numbers import Real

from . import charts

NAMES = {"macs": "MACs", "params": "params"}


def _number(x) -> bool:
    return isinstance(x, Real) and not isinstance(x, bool)


@charts._literal_text
def gate_boxes(chart_id: str, dist: dict[str, dict]) -> str:
    """One horizontal box per Unit (min, quartiles, max of its gates), read top to bottom."""
    names = list(dist)
    fig = charts._figure(0.8 + 0.19 * len(names))
    ax = fig.add_subplot()
    y = list(range(len(names)))[::-1]
    stats = [{"label": n, "whislo": d["min"], "q1": d["q1"], "med": d["median"], "q3": d["q3"], "whishi": d["max"],
              "mean": d.get("mean", d["median"]), "fliers": []} for n, d in dist.items()]
    ax.bxp(stats, positions=y, orientation="horizontal", widths=0.6, showmeans=True, patch_artist=True,
           boxprops={"facecolor": charts.DENSE, "edgecolor": charts.PRUNED},
           medianprops={"color": charts.PRUNED}, meanprops={"marker": "o", "markersize": 3,
                                                             "markerfacecolor": charts.ACCENT,
                                                             "markeredgecolor": charts.ACCENT})
    ax.axvline(0.5, color="#999999", linewidth=0.6, linestyle="--")
    charts._ticks(ax, y, names)
    ax.set_xlim(-0.02, 1.02)
    ax.set_xlabel("gate")
    charts._plain(ax)
    return charts._svg(fig, chart_id)


def dagger_section(s: dict) -> str:
    """Empty unless the run is a dagger run."""
    from .page import esc, figure, section, table  # page imports this module
    d = (s.get("signals") or {}).get("dagger")
    if not isinstance(d, dict):
        return ""
    body = ""
    path = [p for p in d.get("path") or [] if isinstance(p, dict) and _number(p.get("step"))]
    keys = [k for k in NAMES if path and all(_number(p.get(k)) for p in path)]
    if keys:
        steps = [p["step"] for p in path]
        series = {f"soft {NAMES[k]} / target": (steps, [p[k] for p in path]) for k in keys}
        series["target"] = (steps, [1.0] * len(steps))
        body += figure(charts.curves("dagger-path", [("soft cost / target", series)], "training step",
                                     integer_x=True),
                       "the CostModel at the soft widths (sum of gates per Unit) over the target, per logged step")
    dist = {n: v for n, v in (d.get("gates") or {}).items()
            if isinstance(v, dict) and all(_number(v.get(q)) for q in ("min", "q1", "median", "q3", "max"))}
    if dist:
        body += figure(gate_boxes("dagger-gates", dist),
                       "gates per Unit: box = quartiles, whiskers = min and max, dot = mean, dashed line = 0.5")
    rows = [[esc(k), f"{v:.4g}" if _number(v) else esc(v)] for k, v in d.items()
            if k in ("steps", "lam", "form", "start", "rank", "seconds", "seconds_per_step")]
    rows += [[f"soft {esc(NAMES.get(k, k))} / target", f"{v:.4f}"] for k, v in (d.get("soft_over_target") or {}).items()
             if _number(v)]
    if rows:
        body += table(["setting", "value"], rows, escape=False)
    return section("dagger", "Learned gates (dagger)", body) if body else ""
