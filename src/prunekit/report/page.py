"""The report page: one HTML string with inline CSS and inline SVG charts, nothing fetched.

Every string that comes from a run (unit and layer names, method, budget, signal keys) goes through
``esc``; numbers are formatted here. Each section is a small function that returns "" when the run
has nothing for it, so older or partial run directories still give a report.
"""
from __future__ import annotations

import html
import json
import math
from numbers import Real

from .. import __version__
from . import charts
from ..reconstruct import after_pruning
from .dagger import dagger_section

CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",sans-serif;color:#1d2330;margin:0;background:#f6f7f9}
main{max-width:960px;margin:0 auto;padding:24px}
header h1{font-size:22px;margin:0 0 4px} header p{margin:0;color:#5a6475}
section{background:#fff;border:1px solid #e1e4ea;border-radius:6px;padding:16px 20px;margin:16px 0}
h2{font-size:17px;margin:0 0 10px}
table{border-collapse:collapse;margin:6px 0 10px;font-variant-numeric:tabular-nums}
th,td{padding:3px 10px;border-bottom:1px solid #eceef2;text-align:right}
th:first-child,td:first-child{text-align:left} th{font-weight:600;color:#3a4456}
figure{margin:8px 0} figure svg{max-width:100%;height:auto} figcaption{color:#5a6475;font-size:12px}
details summary{cursor:pointer;color:#2f6db5} pre{background:#f3f4f7;padding:8px;overflow:auto;font-size:12px}
.ok{color:#2b7a3d} .bad{color:#b3261e} footer{color:#8a93a3;font-size:12px;text-align:center;margin:16px}
"""


def esc(x) -> str:
    return html.escape(str(x), quote=True)


def _int(x) -> str:
    return f"{int(round(x)):,}" if _is_number(x) else "-"


def _pct(x, digits: int = 1) -> str:
    return f"{x:.{digits}f}%" if _is_number(x) else "-"


def _num(x) -> str:
    if isinstance(x, bool) or not _is_number(x):
        return esc(x)
    return f"{x:,}" if isinstance(x, int) else f"{x:.4g}"


def _is_number(x) -> bool:
    return isinstance(x, Real) and not isinstance(x, bool) and math.isfinite(x)


def table(head: list[str], rows: list[list[str]], escape: bool = True) -> str:
    """A table; cells are escaped unless they are markup this module made (``escape=False``)."""
    cell = esc if escape else str
    out = ["<table><thead><tr>", *(f"<th>{esc(h)}</th>" for h in head), "</tr></thead><tbody>"]
    out += ["<tr>" + "".join(f"<td>{cell(c)}</td>" for c in r) + "</tr>" for r in rows]
    return "".join(out) + "</tbody></table>"


def figure(svg: str, caption: str) -> str:
    return f'<figure>{svg}<figcaption>{esc(caption)}</figcaption></figure>'


def section(anchor: str, title: str, body: str) -> str:
    return f'<section id="{esc(anchor)}"><h2>{esc(title)}</h2>{body}</section>' if body else ""


def details(summary: str, body: str) -> str:
    return f"<details><summary>{esc(summary)}</summary>{body}</details>"


# -- sections ----------------------------------------------------------------------------------------
def header(summary: dict | None, sweep: dict | None, plan: dict | None) -> str:
    s, plan = summary or {}, plan or {}
    method = s.get("method") or {}
    name = method.get("name") or (sweep or {}).get("method") or plan.get("method") or "?"
    parts = [f"method {name}"]
    if method.get("criterion"):
        parts[0] += f" ({method['criterion']} + {method['allocator']})"
    if s.get("budget") or plan.get("budget"):
        parts.append(f"budget {s.get('budget') or plan.get('budget')}")
    if sweep:
        parts.append(f"sweep of {len(sweep.get('points', []))} budgets")
    for key, label in (("dataset", "dataset"), ("input_shape", "input")):
        value = s.get(key) or plan.get(key)
        if value:
            parts.append(f"{label} {tuple(value) if isinstance(value, list) else value}")
    if "seed" in plan:
        parts.append(f"seed {plan['seed']}")
    what = s.get("model") or (f"{name} sweep" if sweep else name)
    return f"<header><h1>prunekit report: {esc(what)}</h1><p>{esc(', '.join(parts))}</p></header>"


def title(summary: dict | None, sweep: dict | None) -> str:
    s = summary or {}
    what = [s.get("model"), (s.get("method") or {}).get("name") or (sweep or {}).get("method"), s.get("budget")]
    return "prunekit report: " + " ".join(str(w) for w in what if w)


def budget_section(s: dict) -> str:
    rows = []
    for key, label in (("macs", "MACs"), ("params", "parameters")):
        c = s.get(key)
        if not isinstance(c, dict) or not c.get("dense"):
            continue
        dense, pruned, target = c.get("dense"), c.get("pruned"), c.get("target")
        margin = (target - pruned) / target * 100 if _is_number(target) and _is_number(pruned) and target else None
        rows.append([label, _int(dense), _int(pruned), _pct(100 * pruned / dense) if _is_number(pruned) else "-",
                     _int(target) if target else "none", _pct(margin, 2) if margin is not None else "-"])
    body = table(["", "dense", "pruned", "kept", "target", "below target by"], rows) if rows else ""
    if "binding" in s and _is_number(s.get("budget_gap")):
        ok = s.get("within_tolerance")
        gap = _pct(100 * s["budget_gap"], 3)
        body += (f'<p>Binding budget: {esc(s["binding"])}, met from below with a gap of {gap} '
                 f'(<span class="{"ok" if ok else "bad"}">{"within" if ok else "outside"} tolerance</span>). '
                 "The predicted MACs and parameters equal the pruned model's measured ones "
                 "(MACs by torch's FlopCounterMode).</p>")
    return section("budget", "Budget", body) + accuracy_section(s)


def accuracy_section(s: dict) -> str:
    dense = s.get("accuracy_dense")
    ft = s.get("finetune") or {}
    how = f"{len(ft.get('epochs') or [])} epochs" + (", distillation" if ft.get("distilled", True) else "")
    rows = []
    for key, label in (("accuracy_dense", "dense"),
                       ("accuracy_pruned_bn", f"pruned, {after_pruning(s)}, no fine-tuning"),
                       ("accuracy_finetuned", f"pruned and fine-tuned ({how})")):
        if _is_number(s.get(key)):
            delta = f"{s[key] - dense:+.2f}" if _is_number(dense) and key != "accuracy_dense" else ""
            rows.append([label, f"{s[key]:.2f}", delta])
    body = table(["model", "top-1 %", "vs dense (points)"], rows) if rows else ""
    return section("accuracy", "Accuracy", body + batchnorm_note(s))


BATCHNORM_NOTES = {
    "re-estimated": ("ok", "BatchNorm statistics of the saved model were re-estimated on {n} training batches after pruning."),
    "fine-tuned": ("ok", "BatchNorm statistics of the saved model come from its fine-tuning."),
    "none": ("ok", "The model has no BatchNorm layers with running statistics."),
    "stale": ("bad", "BatchNorm statistics of the saved model are the dense model's, which are wrong after pruning: "
                     "re-estimate them (prunekit eval --bn-batches 20, or compress with --dataset) or fine-tune "
                     "before use."),
}


def batchnorm_note(s: dict) -> str:
    """Whether the saved model is usable as it is: stale BatchNorm statistics leave it near chance."""
    state = s.get("batchnorm")
    if state not in BATCHNORM_NOTES:
        return ""
    css, text = BATCHNORM_NOTES[state]
    return f'<p class="{css}" id="batchnorm-state">{esc(text.format(n=s.get("bn_batches", 0)))}</p>'


def per_unit_signals(s: dict) -> dict[str, dict[str, float]]:
    """The method's numeric {unit: value} signals (importance, gates, ranks), by signal name."""
    units = {u.get("name") for u in s.get("units") or [] if isinstance(u, dict)}
    out = {}
    for key, value in (s.get("signals") or {}).items():
        if (isinstance(value, dict) and value and set(value) <= units
                and all(_is_number(v) for v in value.values())):
            out[key] = value
    return out


def units_section(s: dict) -> str:
    units = [u for u in s.get("units") or [] if isinstance(u, dict) and "name" in u]
    if not units:
        return ""
    names = [u["name"] for u in units]
    chart = charts.before_after("widths", names, [u["width"] for u in units], [u["kept"] for u in units], "channels")
    signals = per_unit_signals(s)
    head = ["unit", "dense width", "kept", "kept %", *signals]
    rows = [[u["name"], _int(u["width"]), _int(u["kept"]), _pct(100 * u["kept"] / u["width"], 0),
             *(_num(sig.get(u["name"], "")) for sig in signals.values())] for u in units]
    return section("widths", f"Widths per Unit ({len(units)} Units)",
                   figure(chart, "channels of each Unit before (grey) and after pruning (blue)")
                   + details("table of widths", table(head, rows)))


def layers_section(s: dict) -> str:
    layers = [r for r in s.get("layers") or [] if isinstance(r, dict) and "name" in r]
    if not layers:
        return ""
    costly = [r for r in layers if r.get("macs_dense")]
    chart = figure(charts.before_after("layers", [r["name"] for r in costly], [r["macs_dense"] for r in costly],
                                       [r["macs_pruned"] for r in costly], "MACs"),
                   "MACs of each conv/linear layer, dense (grey) and pruned (blue)") if costly else ""
    total = sum(r["macs_dense"] for r in costly) or 1
    rows = [[r["name"], r.get("type", ""), _int(r["macs_dense"]), _int(r["macs_pruned"]),
             _pct(100 * r["macs_dense"] / total), _int(r.get("params_dense")), _int(r.get("params_pruned"))]
            for r in layers]
    other = [r for r in layers if not r.get("macs_dense")]
    note = (f"<p>Layers without MACs (BatchNorm and the like) hold {_int(sum(r['params_dense'] for r in other))} "
            f"parameters dense, {_int(sum(r['params_pruned'] for r in other))} pruned.</p>") if other else ""
    return section("layers", "Cost by layer",
                   chart + note
                   + details("table of every layer",
                             table(["layer", "type", "MACs dense", "MACs pruned", "share of dense MACs",
                                    "params dense", "params pruned"], rows)))


def signals_section(s: dict) -> str:
    signals = s.get("signals") or {}
    per_unit = per_unit_signals(s)
    body = "".join(figure(charts.values(f"signal-{i}", list(v), list(v.values()), name), f"{name} per Unit")
                   for i, (name, v) in enumerate(per_unit.items()))
    scalars = [[esc(k), _num(v)] for k, v in signals.items() if k not in per_unit and isinstance(v, (Real, str))]
    if scalars:
        body += table(["signal", "value"], scalars, escape=False)
    maps = {k: v for k, v in signals.items() if k not in per_unit and isinstance(v, dict) and v
            and all(isinstance(x, (Real, str)) for x in v.values())}
    for k, v in maps.items():
        body += details(f"{k} ({len(v)} values)", table(["key", "value"], [[esc(a), _num(b)] for a, b in v.items()],
                                                         escape=False))
    rest = {k: v for k, v in signals.items() if k not in per_unit and k not in maps and not isinstance(v, (Real, str))}
    if rest:
        body += details("other signals (JSON)", f"<pre>{esc(json.dumps(rest, indent=1, default=str))}</pre>")
    return section("signals", "What the method saw", body)


def finetune_section(s: dict) -> str:
    ft = s.get("finetune") or {}
    epochs = [e for e in ft.get("epochs") or [] if isinstance(e, dict)]
    if not epochs:
        return ""
    xs = [e.get("epoch", i + 1) for i, e in enumerate(epochs)]
    panels = [("loss", _series(xs, epochs, {"loss": "training loss"})),
              ("accuracy %", _series(xs, epochs, {"train_acc": "train", "eval_acc": "test"}))]
    chart = charts.curves("finetune", [p for p in panels if p[1]], "epoch", integer_x=True)
    keys = [k for k in epochs[0] if k != "epoch" and _is_number(epochs[0][k])]
    rows = [[_num(x), *(_num(e.get(k, "")) for k in keys)] for x, e in zip(xs, epochs)]
    recipe = ft.get("recipe") or {}
    return section("finetune", "Fine-tuning", figure(chart, "per epoch") + table(["epoch", *keys], rows, escape=False)
                   + (details("recipe", table(["setting", "value"], [[esc(k), _num(v)] for k, v in recipe.items()],
                                              escape=False)) if recipe else ""))


def _series(xs, rows: list[dict], names: dict[str, str]) -> dict:
    out = {}
    for key, label in names.items():
        pts = [(x, r[key]) for x, r in zip(xs, rows) if _is_number(r.get(key))]
        if pts:
            out[label] = ([p[0] for p in pts], [p[1] for p in pts])
    return out


def sweep_section(sweep: dict) -> str:
    points = sorted((p for p in sweep.get("points") or []
                     if isinstance(p, dict) and _is_number(p.get("macs")) and p.get("macs_dense")),
                    key=lambda p: p["macs"])
    if not points:
        return ""
    xs = [100 * p["macs"] / p["macs_dense"] for p in points]
    series, labels = {}, None
    for key, label in (("accuracy_pruned_bn", "pruned, BatchNorm re-estimated"), ("accuracy_finetuned", "fine-tuned")):
        have = [(x, p) for x, p in zip(xs, points) if _is_number(p.get(key))]
        if have:
            series[label] = ([x for x, _ in have], [p[key] for _, p in have])
            labels = labels or [p.get("budget", "") for _, p in have]  # annotate the first curve's points
    body = (figure(charts.curves("sweep", [("top-1 %", series)], "MACs kept (% of dense)", labels),
                   f"accuracy against MACs, method {sweep.get('method', '?')}") if series
            else "<p>No accuracies in sweep.json: run the sweep with a dataset to draw the curve.</p>")
    rows = [[p.get("budget", ""), _int(p["macs"]), _pct(x), _int(p.get("params")),
             _pct(100 * p["params"] / p["params_dense"]) if p.get("params_dense") else "-",
             f"{p['accuracy_pruned_bn']:.2f}" if _is_number(p.get("accuracy_pruned_bn")) else "-",
             f"{p['accuracy_finetuned']:.2f}" if _is_number(p.get("accuracy_finetuned")) else "-",
             f"{p['seconds_to_plan']:.2f}" if _is_number(p.get("seconds_to_plan")) else "-"]
            for x, p in zip(xs, points)]
    return section("sweep", "Accuracy against MACs (sweep)", body + table(
        ["budget", "MACs", "of dense", "params", "of dense", "acc. pruned %", "acc. fine-tuned %", "plan s"], rows))


def auto_section(s: dict) -> str:
    """method="auto": every candidate tried, by held-out accuracy, the chosen one first."""
    a = s.get("auto") or {}
    rows = [r for r in a.get("leaderboard") or [] if isinstance(r, dict)]
    if not rows:
        return ""
    proxy = any(_is_number(r.get("finetuned_accuracy")) for r in rows)
    body = (f"<p>Method auto planned each candidate, re-estimated its BatchNorm statistics and measured its accuracy "
            f"on {_int(a.get('heldout_images'))} held-out training images (never the test set)"
            + (f"; the {_int(a.get('finalists'))} best were then distilled from the dense model for "
               f"{_int(a.get('finetune_steps'))} steps and ranked by their held-out accuracy after it" if proxy else "")
            + f". It chose <b>{esc(a.get('chosen'))}</b>, whose plan this report shows.</p>")
    pct = lambda v: f"{v:.2f}" if _is_number(v) else "-"  # noqa: E731
    body += table(["candidate", "held-out top-1 %"] + (["after distillation %"] if proxy else []) + ["MACs", "params", "seconds"],
                  [[r.get("candidate", ""), pct(r.get("heldout_accuracy"))]
                   + ([pct(r.get("finetuned_accuracy"))] if proxy else [])
                   + [_int(r.get("macs")), _int(r.get("params")), pct(r.get("seconds"))] for r in rows])
    skipped = [r for r in a.get("skipped") or [] if isinstance(r, dict)]
    if skipped:
        body += details(f"{len(skipped)} candidates not scored",
                        table(["candidate", "why"], [[r.get("candidate", ""), r.get("reason", "")] for r in skipped]))
    return section("auto", "Candidates (method auto)", body)


def search_section(s: dict) -> str:
    """A searching allocator (acp): the best held-out fitness after each cycle of the search."""
    a = (s.get("signals") or {}).get("acp")
    best = [f for f in (a.get("fitness_per_cycle") or []) if _is_number(f)] if isinstance(a, dict) else []
    if not best:
        return ""
    chart = charts.curves("search", [("held-out top-1 %", {"best so far": (list(range(len(best))), best)})],
                          "cycle (0: initial population)", integer_x=True)
    early = "; stopped early by the search budget" if a.get("stopped_early") else ""
    note = (f"<p>{_int(a.get('evaluations'))} candidates scored on {_int(a.get('heldout_images'))} held-out training "
            f"images (fitness {esc(a.get('fitness'))}){early}.</p>")
    return section("search", "Structure search (acp)", figure(chart, "best fitness so far per cycle") + note)


def timing_section(s: dict) -> str:
    seconds = {k: v for k, v in (s.get("seconds") or {}).items() if _is_number(v)}
    return section("timing", "Time", table(["step", "seconds"], [[k, f"{v:.2f}"] for k, v in seconds.items()])
                   if seconds else "")


def render(summary: dict | None, sweep: dict | None, plan: dict | None) -> str:
    """The whole page for a run directory's summary.json, sweep.json and plan.json (any may be None)."""
    s = summary or {}
    from .spectra import efa_section  # it uses this module's helpers
    from .depth_page import depth_section
    from .latency_page import latency_section
    sections = [budget_section(s), latency_section(s), depth_section(s), auto_section(s), units_section(s),
                layers_section(s), search_section(s), dagger_section(s), efa_section(s),
                signals_section(s), finetune_section(s), sweep_section(sweep) if sweep else "", timing_section(s)]
    return ("<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            f"<title>{esc(title(summary, sweep))}</title><link rel=\"icon\" href=\"data:,\"><style>{CSS}</style></head>"
            f"<body><main>{header(summary, sweep, plan)}{''.join(sections)}</main>"
            f"<footer>written by prunekit {esc(__version__)}</footer></body></html>\n")
