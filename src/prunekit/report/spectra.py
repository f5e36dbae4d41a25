"""The effective-filter analysis in the report: singular-value spectra per Unit (``prunekit analyze
--report``, and every ``efa`` run, whose summary keeps the analysis under ``signals.efa``)."""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from . import charts
from .charts import ACCENT, PRUNED, WIDTH_IN, _literal_text, _prefix_ids


@_literal_text
def spectra(chart_id: str, units: Sequence[dict], columns: int = 4) -> str:
    """One small panel per Unit: log10(s_k / s_1) against k, the effective rank marked. Log values on
    linear axes with three ticks: matplotlib's log locators made a ResNet-20 page take 40 s on a CPU."""
    rows = math.ceil(len(units) / columns)
    fig = Figure(figsize=(WIDTH_IN, 0.3 + 1.35 * rows))
    fig.subplots_adjust(left=0.06, right=0.99, bottom=0.04 / rows * 3, top=1 - 0.12 / rows * 3, hspace=0.75,
                        wspace=0.3)
    axes = fig.subplots(rows, columns, squeeze=False)
    for ax, u in zip(axes.flat, units):
        s = np.log10(np.maximum(np.asarray(u.get("spectrum") or [], dtype=np.float64), 1e-17))
        ax.plot(np.arange(1, len(s) + 1), s, color=PRUNED, linewidth=1.2)
        rank = u.get("rank")
        if isinstance(rank, (int, float)) and 0 < rank <= len(s):
            ax.axvline(rank + 0.5, color=ACCENT, linewidth=1.0, linestyle="--")
        ax.set_title(f"{u.get('name', '?')} (R={u.get('removable_legal', '?')}/{u.get('width', '?')})", fontsize=7)
        ax.xaxis.set_major_locator(MaxNLocator(3, integer=True))
        ax.yaxis.set_major_locator(MaxNLocator(3))
        ax.tick_params(labelsize=6, length=2)
        ax.spines[["top", "right"]].set_visible(False)
    for ax in list(axes.flat)[len(units):]:
        ax.set_visible(False)
    return _svg_loose(fig, chart_id)


def _svg_loose(fig: Figure, chart_id: str) -> str:
    """charts._svg without ``bbox_inches="tight"`` (the margins are set above; tight bounding boxes of
    many panels cost seconds), same reproducible, id-prefixed SVG."""
    import io as _io

    import matplotlib
    buf = _io.StringIO()
    with matplotlib.rc_context({"svg.fonttype": "none", "svg.hashsalt": chart_id}):
        fig.savefig(buf, format="svg", metadata={"Date": None})
    text = buf.getvalue()
    return _prefix_ids(text[text.index("<svg"):], chart_id)


def efa_section(s: dict) -> str:
    """Per-Unit effective ranks, removable channels, the network total and the spectra."""
    from .page import _is_number, _pct, esc, figure, section, table
    a = s.get("efa") or (s.get("signals") or {}).get("efa")
    units = [u for u in (a.get("units") or []) if isinstance(u, dict)] if isinstance(a, dict) else []
    if not units:
        return ""
    red = a.get("max_redundancy") or {}
    settings = a.get("settings") or {}
    rule = (f"energy {settings.get('energy')}" if settings.get("rank") == "energy"
            else f"relative tolerance {settings.get('tol')}")
    total = (f"<p>At most <b>{_pct(100 * red['macs'])}</b> of MACs ({_pct(100 * red.get('params', 0))} of params, "
             f"{_pct(100 * red.get('channels', 0))} of channels) can be removed before losing effective filters "
             f"(per-sample mask gradients of {esc(a.get('samples'))} training images, effective rank by {esc(rule)}).</p>"
             if _is_number(red.get("macs")) else "")
    rows = [[u.get("name", ""), str(u.get("width", "")), str(u.get("rank", "")), str(u.get("removable_legal", "")),
             _pct(100 * u["removable_legal"] / u["width"], 0) if _is_number(u.get("removable_legal")) and u.get("width")
             else "-"] for u in units]
    chart = figure(spectra("spectra", units), "log10 of the singular values s_k / s_1 of each Unit's N x c "
                                                 "mask-gradient matrix against k; dashed: the effective rank")
    return section("efa", "Effective filters (gradient-matrix rank)",
                   total + chart + table(["unit", "width", "effective rank", "removable R", "removable %"], rows))


__all__ = ["efa_section", "spectra", "charts"]
