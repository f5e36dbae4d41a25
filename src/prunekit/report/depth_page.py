"""The report's branch-removal section (``drop_blocks``): which residual branches went and why."""
from __future__ import annotations

from .page import _is_number, esc, section, table


def depth_section(s: dict) -> str:
    depth = s.get("depth")
    if not isinstance(depth, dict) or not depth.get("candidates"):
        return ""
    rows = [[str(c.get("dropped")), f"{c['fitness']:.2f}" if _is_number(c.get("fitness")) else "-",
             "chosen" if c.get("dropped") == depth.get("chosen") else ""] for c in depth["candidates"]]
    body = table(["branches removed", "held-out top-1 % (BatchNorm re-estimated)", ""], rows)
    chosen = next((c for c in depth["candidates"] if c.get("dropped") == depth.get("chosen")), {})
    removed = ", ".join(esc(b) for b in chosen.get("branches", [])) or "none"
    note = (f"Residual branches ranked by how much removing each alone changes the outputs; the count was "
            f"chosen by {esc(depth.get('selected_by', '?'))}. Removed: {removed}.")
    return section("depth", "Removed residual branches", body + f"<p>{note}</p>")
