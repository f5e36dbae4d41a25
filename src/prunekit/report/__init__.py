"""The self-contained HTML report of a run directory (``prunekit report RUN_DIR``, ``compress --report``).

It reads only what ``prunekit compress`` / ``prunekit sweep`` wrote (summary.json, plan.json,
sweep.json), so a report can be made later, on another machine, without the model or the data.
"""
from __future__ import annotations

import json
from pathlib import Path

from .. import io
from ..errors import ConfigError, OutputError
from .page import render

REPORT, SWEEP = "report.html", "sweep.json"

__all__ = ["REPORT", "build_report", "write_report"]


def _read_json(path: Path) -> dict | None:
    """The JSON object in ``path``, None if there is no such file; a broken file is a one-line error."""
    if not path.is_file():
        return None
    try:
        obj = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise ConfigError(f"{str(path)!r} is not readable JSON ({type(e).__name__}); "
                          "re-run the command that wrote it") from None
    if not isinstance(obj, dict):
        raise ConfigError(f"{str(path)!r} does not hold a JSON object; re-run the command that wrote it")
    return obj


def build_report(run_dir: str | Path) -> str:
    """The report page of ``run_dir`` as one HTML string."""
    d = Path(run_dir)
    if not d.is_dir():
        raise ConfigError(f"run directory {str(d)!r} does not exist; pass the --out of prunekit compress or sweep")
    summary, sweep = _read_json(d / io.SUMMARY), _read_json(d / SWEEP)
    if summary is None and sweep is None:
        raise ConfigError(f"{str(d)!r} has no {io.SUMMARY} or {SWEEP}; pass the --out of prunekit compress or sweep")
    if sweep is not None and not isinstance(sweep.get("points"), list):
        raise ConfigError(f"{str(d / SWEEP)!r} has no list of points; re-run prunekit sweep")
    plan = _read_json(d / io.PLAN) if summary is not None else None
    return render(summary, sweep, plan)


def write_report(run_dir: str | Path, out: str | Path | None = None) -> Path:
    """Write the report of ``run_dir`` atomically to ``out`` (default ``run_dir/report.html``)."""
    dest = Path(out) if out is not None else Path(run_dir) / REPORT
    if dest.is_dir():
        raise OutputError(f"{str(dest)!r} is a directory; give the report a file name such as {REPORT}")
    text = build_report(run_dir)  # every check on the run comes before anything is written
    io.ensure_dir(dest.parent)
    io.write_text(dest, text.encode("ascii", "xmlcharrefreplace").decode())  # readable under any locale
    return dest
