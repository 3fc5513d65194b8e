"""The leaderboard in the terminal: `mch leaderboard` draws the rows of `mch.leaderboard`
with `mch.tables` (a table when it fits the width, else one block per row)."""

from __future__ import annotations

from typing import Any

from .leaderboard import COLUMN_BY_KEY, format_cell, text_value, visible_metric_columns

# the terminal's columns: the row's identity first (the heading of a stacked block), the
# revision is inside the checkpoint cell
TERMINAL_KEYS = ["model", "checkpoint", "dataset", "n", "attribute", "protocol", "kind"]


def render_table(rows: list[dict], console: Any, sources: list[str] | None = None) -> None:
    """The leaderboard in the terminal: a table when it fits the width, else one block per
    row (mch.tables); every value either way."""
    from rich.text import Text

    from .tables import Col, Grid, emit

    cols = visible_metric_columns(rows)
    show_other = any(r["other"] for r in rows)
    grid = Grid(
        [
            Col(
                COLUMN_BY_KEY[k].label,
                no_wrap=k in ("model", "kind", "protocol"),
                max_width=40 if k == "checkpoint" else None,
            )
            for k in TERMINAL_KEYS
        ]
        + [Col(c.label, "right", True) for c in cols]
        + ([Col("Other", max_width=40)] if show_other else [])
        + [Col("mch")],
        title="mch leaderboard: information present (probes) vs accessible to the decoder (GMI)",
        key_cols=len(TERMINAL_KEYS),
        sparse=True,
    )
    refs: list[str] = []
    for r in rows:
        cells: list[str | None] = [text_value(r, k) for k in TERMINAL_KEYS]
        if r["kind"] == "reported" and r["sources"]:
            refs.extend(s for s in r["sources"] if s not in refs)
            cells[-1] = f"reported[{','.join(str(refs.index(s) + 1) for s in r['sources'])}]"
        cells += [None if r["values"].get(c.key) is None else format_cell(c, r["values"].get(c.key)) for c in cols]
        if show_other:
            cells.append("; ".join(r["other"][:4]) + (f"; … (+{len(r['other']) - 4})" if len(r["other"]) > 4 else ""))
        cells.append(text_value(r, "mch_version"))
        grid.add(cells, style="italic" if r["kind"] == "reported" else ("yellow" if r.get("smoke") else None))
    emit(console, grid)
    for i, s in enumerate(refs, 1):
        console.print(Text(f"[{i}] {s}", style="dim"))
    if any(r["kind"] == "reported" for r in rows):
        console.print(
            Text(
                "reported = numbers published by the paper, entered with their source; "
                "measured = result records produced by mch.",
                style="dim",
            )
        )
    if any(r.get("smoke") for r in rows):
        console.print(
            Text(
                "smoke = a run on a random-weight checkpoint (built by mch.plugins.models.tiny): it tests "
                "the code path and measures no model.",
                style="dim",
            )
        )
