"""Charts as inline SVG strings drawn with matplotlib, so the report needs no script, font or network.

``Figure`` is used without pyplot: no GUI backend is chosen and the user's backend is left alone.
Text stays text (``svg.fonttype=none``: small, selectable, searchable), names are never parsed as
mathtext, the date is left out and clip-path ids are salted with the chart's id so the same run
gives the same file, and every id matplotlib writes (``figure_1``, ``axes_1``...) is prefixed with
the chart's id so that several charts on one page never share one.
"""
from __future__ import annotations

import functools
import io
import re
from typing import Sequence

import matplotlib
from matplotlib.figure import Figure
from matplotlib.ticker import EngFormatter, MaxNLocator

DENSE, PRUNED, ACCENT = "#c9d3e0", "#2f6db5", "#d0632c"
WIDTH_IN = 7.5


def _svg(fig: Figure, chart_id: str) -> str:
    buf = io.StringIO()
    with matplotlib.rc_context({"svg.fonttype": "none", "svg.hashsalt": chart_id}):
        fig.savefig(buf, format="svg", bbox_inches="tight", metadata={"Date": None})
    text = buf.getvalue()
    return _prefix_ids(text[text.index("<svg"):], chart_id)  # no XML prolog or DOCTYPE inside HTML


def _prefix_ids(svg: str, prefix: str) -> str:
    """``id="x"``, ``url(#x)`` and ``href="#x"`` become ``<prefix>-x``, inside tags only (text is escaped,
    so no ``<`` or ``>`` of a label can open or close one)."""
    def tag(m: re.Match) -> str:
        t = re.sub(r'(\sid=")', rf"\g<1>{prefix}-", m.group(0))
        return re.sub(r'(url\(#|href="#)', rf"\g<1>{prefix}-", t)
    return re.sub(r"<[^<>]+>", tag, svg)


def _figure(height: float) -> Figure:
    return Figure(figsize=(WIDTH_IN, height), layout="constrained")


def _literal_text(chart):
    """Draw ``chart`` with every label taken literally: a unit named ``a$b$`` is not mathtext."""
    @functools.wraps(chart)
    def wrapper(*args, **kwargs):
        with matplotlib.rc_context({"text.parse_math": False}):
            return chart(*args, **kwargs)
    return wrapper


def _plain(ax) -> None:
    ax.spines[["top", "right"]].set_visible(False)
    ax.grid(axis="x", color="#e5e5e5", linewidth=0.6)
    ax.set_axisbelow(True)


@_literal_text
def before_after(chart_id: str, labels: Sequence[str], before: Sequence[float], after: Sequence[float],
                 xlabel: str, before_label: str = "dense", after_label: str = "pruned") -> str:
    """One horizontal bar per label: the dense value in light grey with the pruned value on top of it,
    so what was removed is the visible grey part. Labels read top to bottom in the given order."""
    fig = _figure(0.8 + 0.19 * len(labels))
    ax = fig.add_subplot()
    y = range(len(labels))[::-1]
    ax.barh(y, before, color=DENSE, height=0.8, label=before_label)
    ax.barh(y, after, color=PRUNED, height=0.5, label=after_label)
    _ticks(ax, y, labels)
    ax.set_xlabel(xlabel)
    ax.xaxis.set_major_formatter(EngFormatter(sep=""))  # 1.5M MACs, not 1.5 x 1e6
    ax.legend(loc="lower left", bbox_to_anchor=(0, 1), ncols=2, frameon=False, fontsize=8)  # above, off the bars
    _plain(ax)
    return _svg(fig, chart_id)


@_literal_text
def values(chart_id: str, labels: Sequence[str], vals: Sequence[float], xlabel: str) -> str:
    """One horizontal bar per label (a method's per-Unit signal: importance, gates, ranks)."""
    fig = _figure(0.8 + 0.19 * len(labels))
    ax = fig.add_subplot()
    y = range(len(labels))[::-1]
    ax.barh(y, vals, color=ACCENT, height=0.6)
    _ticks(ax, y, labels)
    ax.set_xlabel(xlabel)
    _plain(ax)
    return _svg(fig, chart_id)


def _ticks(ax, y, labels) -> None:
    ax.set_yticks(list(y), [str(s) for s in labels], fontsize=7)
    ax.set_ylim(-0.7, len(labels) - 0.3)


@_literal_text
def curves(chart_id: str, panels: Sequence[tuple[str, dict[str, tuple[Sequence[float], Sequence[float]]]]],
           xlabel: str, labels: Sequence[str] | None = None, integer_x: bool = False) -> str:
    """Side-by-side line panels, each ``(y label, {series name: (xs, ys)})``. ``labels`` annotate
    the points of the first series of every panel (a sweep's budgets); ``integer_x`` for epochs."""
    fig = _figure(3.0)
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    colors = [PRUNED, ACCENT, "#4a9a5b", "#7a5ab5"]
    for ax, (ylabel, series) in zip(axes, panels):
        for k, (name, (xs, ys)) in enumerate(series.items()):
            ax.plot(xs, ys, marker="o", markersize=4, color=colors[k % len(colors)], label=name)
            if labels and k == 0:
                for x, y_, text in zip(xs, ys, labels):
                    ax.annotate(str(text), (x, y_), textcoords="offset points", xytext=(4, 4), fontsize=7)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        if integer_x:
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(color="#e5e5e5", linewidth=0.6)
        ax.spines[["top", "right"]].set_visible(False)
        ax.legend(frameon=False, fontsize=8)
    return _svg(fig, chart_id)
