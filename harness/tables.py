"""Tables for the terminal that stay readable at any width (rich only; no torch, no numpy).

A `Grid` is a table as data. `emit` draws it as an ordinary table when its natural width
fits the console, and otherwise as a stacked layout: one block per row, a heading made of
the row's key cells, then one `label  value` line per cell, wrapped at the console width.
Nothing is cut: no dropped column, no "0…" cell.

When stdout is not a terminal and COLUMNS is not set, the width is unbounded: every table
prints at its natural width, one line per row, so `mch list models | grep NAME` finds the
whole line.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

MISSING = "—"
UNBOUNDED = 100_000  # the width of a pipe: lines are never wrapped


@dataclass
class Col:
    header: str
    justify: Literal["left", "center", "right"] = "left"  # rich's own values
    no_wrap: bool = False  # names a user greps for, numbers
    max_width: int | None = None  # a long free-text column folds within this width


@dataclass
class Grid:
    """`rows[i][j]` is a string or None (undefined or not measured: "—"). The first `key_cols`
    cells of a row name it (the heading of its block when stacked). Stacked, an empty cell is
    left out, and so is a None one when `sparse` (tables whose columns most rows lack)."""

    columns: list[Col]
    rows: list[list[str | None]] = field(default_factory=list)
    title: str = ""
    key_cols: int = 1
    styles: list[str | None] = field(default_factory=list)  # per row, rich style or None
    sparse: bool = False

    def add(self, cells: Sequence[str | None], style: str | None = None) -> None:
        self.rows.append(list(cells))
        self.styles.append(style)


def bounded() -> bool:
    """Whether stdout has a width: a terminal, or COLUMNS set."""
    cols = os.environ.get("COLUMNS", "")
    return sys.stdout.isatty() or cols.isdigit()


def stdout_console() -> Any:
    """The console for stdout; unbounded (see the module docstring) it never wraps a line."""
    from rich.console import Console

    return Console(highlight=False, width=None if bounded() else UNBOUNDED)


def _table(grid: Grid) -> Any:
    from rich import box
    from rich.table import Table
    from rich.text import Text

    t = Table(title=grid.title or None, box=box.SIMPLE_HEAVY, header_style="bold", title_justify="left")
    for c in grid.columns:
        t.add_column(c.header, justify=c.justify, no_wrap=c.no_wrap, overflow="fold", max_width=c.max_width)
    for cells, style in zip(grid.rows, grid.styles or [None] * len(grid.rows), strict=True):
        # Text(...): names from records are shown literally, never parsed as rich markup
        t.add_row(*(Text(MISSING if v is None else str(v)) for v in cells), style=style)
    return t


def natural_width(console: Any, renderable: Any) -> int:
    from rich.measure import Measurement

    return Measurement.get(console, console.options.update_width(10**6), renderable).maximum


def fits(console: Any, grid: Grid) -> bool:
    return console.width >= UNBOUNDED or natural_width(console, _table(grid)) <= console.width


def emit(console: Any, grid: Grid, stacked: bool | None = None) -> None:
    """Draw `grid` on `console`: a table if it fits (or `stacked=False`), else the stacked
    layout. A console of width UNBOUNDED (stdout_console in a pipe) always gets the table."""
    table = _table(grid)
    width = natural_width(console, table)
    if stacked is False or console.width >= UNBOUNDED or (stacked is None and width <= console.width):
        console.print(table)
        return
    emit_stacked(console, grid)


def emit_stacked(console: Any, grid: Grid) -> None:
    from rich.table import Table
    from rich.text import Text

    if grid.title:
        console.print(Text(grid.title, style="bold"))
    k = grid.key_cols
    labels = [" ".join(c.header.split()) for c in grid.columns]
    for cells, style in zip(grid.rows, grid.styles or [None] * len(grid.rows), strict=True):
        head = " · ".join(str(v) for v in cells[:k] if v not in (None, ""))
        console.print(Text(head or MISSING, style="bold" + (f" {style}" if style else "")))
        body = Table.grid(padding=(0, 2))
        body.add_column(style="dim", no_wrap=True)
        body.add_column(overflow="fold")
        n = 0
        for label, v in zip(labels[k:], cells[k:], strict=True):
            if v == "" or (v is None and grid.sparse):
                continue
            body.add_row(Text("  " + label), Text(MISSING if v is None else str(v)))
            n += 1
        if n:
            console.print(body)
    console.print()
