"""The static leaderboard site: one self-contained `index.html` (plus `leaderboard.json`).

No server, no CDN, no external file: the table is rendered here (so it reads without
JavaScript), the inline script adds sorting, filters and the per-layer curves (inline SVG)
from a JSON data block. Every string from a record is escaped: `html.escape` for markup,
`\\u003c`-style escapes inside the JSON block, `textContent` in the script. A
Content-Security-Policy allows only this page's own script (by a hash taken when the page is
built), so markup that slipped through could still not run.

The page's template, legend, CSS and JavaScript are files in `mch/site_assets/` (package
data), read with importlib.resources; this module fills them in from the leaderboard rows.
"""

from __future__ import annotations

import base64
import hashlib
import html
import json
import shutil
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

from .api import MchError
from .entries import REPO_ROOT
from .fsio import atomic_write
from .leaderboard import (
    COLUMN_BY_KEY,
    METRIC_COLUMNS,
    TAIL_COLUMNS,
    TEXT_COLUMNS,
    Column,
    format_cell,
    rows_to_json,
    text_value,
    visible_metric_columns,
)
from .results import atomic_write_json, git_hash, mch_version

PAPER = "https://arxiv.org/abs/2602.23136"
SCIENCE_MD = REPO_ROOT / "docs" / "science.md"


@cache
def asset(name: str) -> str:
    """The text of `site_assets/NAME`, exactly as shipped (the script's bytes are what the CSP
    hash covers)."""
    return resources.files("mch.site_assets").joinpath(name).read_text(encoding="utf-8")


def esc(x: Any) -> str:
    return html.escape("" if x is None else str(x), quote=True)


def json_for_script(obj: Any) -> str:
    """JSON safe inside <script type="application/json">: no '<', '>' or '&' can close the
    element or open a comment; ensure_ascii also escapes U+2028/2029."""
    s = json.dumps(obj, ensure_ascii=True, sort_keys=True)
    return s.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


# --------------------------------------------------------------------------- sparkline


def sparkline(curves: list[dict], chance: float | None) -> str:
    """A tiny SVG of probe accuracy per stage (stages equally spaced), chance dashed."""
    pts = [(i, c["accuracy"]) for i, c in enumerate(curves) if c.get("accuracy") is not None]
    if not pts:
        return '<span class="none">—</span>'
    w, h, pad = 96, 26, 3
    n = max(len(curves) - 1, 1)

    def xy(i: int, v: float) -> tuple[float, float]:
        return pad + (w - 2 * pad) * i / n, h - pad - (h - 2 * pad) * max(0.0, min(1.0, v))

    parts = [
        f'<svg class="spark" width="{w}" height="{h}" viewBox="0 0 {w} {h}" role="img" '
        f'aria-label="probe accuracy per stage">'
    ]
    stages = ", ".join(f"{c['stage']} {c['accuracy']:.3f}" for c in curves if c.get("accuracy") is not None)
    parts.append(f"<title>{esc('accuracy: ' + stages)}</title>")
    if chance is not None:
        _, y = xy(0, chance)
        parts.append(f'<line class="spark-chance" x1="{pad}" x2="{w - pad}" y1="{y:.1f}" y2="{y:.1f}"/>')
    coords = " ".join(f"{x:.1f},{y:.1f}" for x, y in (xy(i, v) for i, v in pts))
    parts.append(f'<polyline class="spark-line" points="{coords}"/>')
    for i, v in pts:
        x, y = xy(i, v)
        parts.append(f'<circle class="spark-dot" cx="{x:.1f}" cy="{y:.1f}" r="1.8"/>')
    parts.append("</svg>")
    return "".join(parts)


# --------------------------------------------------------------------------- table


def _sort_attr(col: Column, row: dict) -> str:
    if col.numeric:
        cell = row["values"].get(col.key)
        return "" if cell is None else repr(float(cell["value"]))
    v = row.get(col.key)
    return "" if v in (None, "") else str(v).lower()


def _badge(row: dict, refs: list[str]) -> str:
    kind = row["kind"]
    if row.get("smoke"):
        return (
            '<span class="badge smoke" title="a run on a random-weight checkpoint built for tests: it measures '
            'no model">smoke</span>'
        )
    if kind == "reported":
        links = ",".join(f'<a href="#ref-{refs.index(s) + 1}">{refs.index(s) + 1}</a>' for s in row["sources"])
        return (
            f'<span class="badge reported" title="{esc(" | ".join(row["sources"]))}">reported'
            + (f"<sup>[{links}]</sup>" if links else "")
            + "</span>"
        )
    return '<span class="badge measured" title="result record produced by mch">measured</span>'


def _row_html(row: dict, metric_cols: list[Column], refs: list[str], show_other: bool) -> str:
    """One table row. Every cell carries `data-label`: under the narrow-screen layout each row
    is a card whose cells show their column's name."""
    kind = row["kind"]
    data = {
        "id": row["id"],
        "kind": kind,
        "modality": row.get("modality") or "",
        "attribute": row["attribute"] if row["attribute"] is not None else "__none__",
        "dataset": row["dataset"],
        "protocol": row["protocol"],
        "smoke": "1" if row.get("smoke") else "0",
    }
    attrs = " ".join(f'data-{k}="{esc(v)}"' for k, v in data.items())
    cells = []
    plot = (
        f'<input type="checkbox" class="plot" aria-label="plot {esc(row["model"])} {esc(row["attribute"])}">'
        if any(c.get("accuracy") is not None or c.get("i_probe_bits") is not None for c in row["curves"])
        else ""
    )
    ckpt = text_value(row, "checkpoint")
    cells.append(
        f'<td class="model" data-label="Model" data-v="{esc(_sort_attr(COLUMN_BY_KEY["model"], row))}">'
        f'<span class="name">{plot}{esc(row["model"])}</span> {_badge(row, refs)}'
        f'<span class="ckpt" title="{esc(row.get("checkpoint") or "")}">{esc(ckpt)}</span></td>'
    )
    cells.append(
        f'<td data-label="Dataset" data-v="{esc(_sort_attr(COLUMN_BY_KEY["dataset"], row))}">'
        f'{esc(row["dataset"])}<span class="sub">{esc(row["protocol"])}</span></td>'
    )
    cells.append(
        f'<td data-label="Attribute" data-v="{esc(_sort_attr(COLUMN_BY_KEY["attribute"], row))}">'
        f"{esc(text_value(row, 'attribute'))}</td>"
    )
    cells.append(
        f'<td class="spark-cell" data-label="Accuracy per stage">{sparkline(row["curves"], row.get("chance"))}</td>'
    )
    for c in metric_cols:
        cell = row["values"].get(c.key)
        if cell is None:
            cells.append(f'<td class="num none" data-label="{esc(c.label)}" data-v="">—</td>')
            continue
        main = format_cell(c, cell, with_ci=False)
        ci = ""
        if cell.get("ci_low") is not None and cell.get("ci_high") is not None:
            ci = f'<span class="ci">{esc(format_cell(c, cell)[len(main) :].strip())}</span>'
        cells.append(
            f'<td class="num" data-label="{esc(c.label)}" data-v="{esc(_sort_attr(c, row))}">'
            f'<span class="v">{esc(main)}</span>{ci}</td>'
        )
    if show_other:
        other = [esc(o) for o in row["other"][:3]]
        if len(row["other"]) > 3:
            other.append(f'<span class="more">+{len(row["other"]) - 3} more: click the row</span>')
        cells.append(
            f'<td class="other col-other{"" if other else " none"}" data-label="Other metrics">'
            f"{'<br>'.join(other) or '—'}</td>"
        )
    cls = esc(kind) + (" smoke" if row.get("smoke") else "")
    return f'<tr class="{cls}" {attrs} tabindex="0">' + "".join(cells) + "</tr>"


def _options(rows: list[dict], field: str) -> str:
    vals = sorted({r.get(field) for r in rows}, key=lambda v: (v is None, str(v)))
    out = ['<option value="">all</option>']
    for v in vals:
        if v is None:
            if field == "attribute":
                out.append('<option value="__none__">(model-level)</option>')
            continue
        out.append(f'<option value="{esc(v)}">{esc(v)}</option>')
    return "".join(out)


def render(rows: list[dict], science_href: str | None = None) -> str:
    """The page. `science_href`: where the footer's science.md links (build_site copies the
    repository's docs/science.md beside the page); None: named without a link."""
    metric_cols = visible_metric_columns(rows)
    refs: list[str] = []
    for r in rows:
        if r["kind"] == "reported":
            refs.extend(s for s in r["sources"] if s not in refs)
    head = []
    for key, label, help_ in (
        ("model", "Model", "model · kind · checkpoint (@revision)"),
        ("dataset", "Dataset", "dataset · protocol"),
        ("attribute", "Attribute", ""),
    ):
        head.append(
            f'<th scope="col" data-key="{key}" data-type="text" aria-sort="none"><button type="button" '
            f'title="{esc(help_ or "sort by " + label)}">{esc(label)}</button></th>'
        )
    head.append('<th scope="col" class="nosort" title="probe accuracy per stage, encoder → llm.final">Layers</th>')
    for c in metric_cols:
        name, _, at = c.label.partition(" @")
        label = esc(name) + (f'<span class="at">@{esc(at)}</span>' if at else "")
        head.append(
            f'<th scope="col" class="num" data-key="{c.key}" data-type="num" aria-sort="none"><button '
            f'type="button" title="{esc(c.help)}">{label}</button></th>'
        )
    show_other = any(r["other"] for r in rows)
    if show_other:
        head.append(
            '<th scope="col" class="nosort col-other" title="metrics without a column of their own">Other metrics</th>'
        )
    body = "\n".join(_row_html(r, metric_cols, refs, show_other) for r in rows)
    n_smoke = sum(bool(r.get("smoke")) for r in rows)
    n_meas = sum(r["kind"] == "measured" for r in rows) - n_smoke
    n_files = len({f for r in rows for f in r["files"]})
    newest = max((r["created_at"] for r in rows), default="")
    gh = git_hash()
    meta = (
        f"{len(rows)} rows ({n_meas} measured, {len(rows) - n_meas - n_smoke} reported"
        + (f", {n_smoke} smoke" if n_smoke else "")
        + f") from {n_files} records"
        f" · built with mch {mch_version()}"
        + (f" (git {gh[:12]})" if gh else "")
        + (f" · newest record {newest[:10]}" if newest else "")
    )
    data = {
        "rows": rows,
        "columns": [
            {"key": c.key, "label": c.label, "metric": c.metric, "stage": c.stage}
            for c in TEXT_COLUMNS + METRIC_COLUMNS + TAIL_COLUMNS
        ],
    }
    filters = "".join(
        f'<label>{label}<select id="f-{field}" data-field="{field}">{_options(rows, field)}</select></label>'
        for field, label in (
            ("modality", "Modality"),
            ("attribute", "Attribute"),
            ("dataset", "Dataset"),
            ("protocol", "Protocol"),
            ("kind", "Kind"),
        )
    )
    ref_list = "".join(f'<li id="ref-{i}">{esc(s)}</li>' for i, s in enumerate(refs, 1))
    script = asset("page.js")
    script_hash = base64.b64encode(hashlib.sha256(script.encode()).digest()).decode()
    csp = (
        f"default-src 'none'; script-src 'sha256-{script_hash}'; style-src 'unsafe-inline'; "
        "img-src data:; base-uri 'none'; form-action 'none'"
    )
    science = (
        f'<a href="{esc(science_href)}">science.md</a>' if science_href else "docs/science.md of the mch repository"
    )
    return asset("page.html").format(
        csp=esc(csp),
        css=asset("page.css"),
        meta=esc(meta),
        paper=PAPER,
        filters=filters,
        head="".join(head),
        body=body,
        science=science,
        legend=asset("legend.html"),
        n_rows=len(rows),
        refs=ref_list or "<li>none</li>",
        data=json_for_script(data),
        script=script,
        empty=""
        if rows
        else '<p class="empty">No entries yet: run <code>mch bench</code>, then '
        "<code>mch leaderboard build</code>.</p>",
    )


def build_site(rows: list[dict], out: Path) -> Path:
    """Write index.html and leaderboard.json into the directory `out` (made if missing); a
    path that is a file, lies under a file or cannot be written is one MchError."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise MchError(f"--out {out} is a file; pass a directory (index.html and leaderboard.json are written there)")
    page = out / "index.html"
    try:
        out.mkdir(parents=True, exist_ok=True)
        science = None
        if SCIENCE_MD.is_file():  # the definitions travel with the page, so its link works offline and served
            shutil.copyfile(SCIENCE_MD, out / "science.md")
            science = "science.md"
        text = render(rows, science)
        atomic_write(page, lambda f: f.write(text.encode("utf-8")))
        atomic_write_json(out / "leaderboard.json", json.loads(rows_to_json(rows)))
    except OSError as exc:
        why = exc.strerror or str(exc)
        raise MchError(
            f"cannot write the leaderboard site to --out {out} ({why}{': ' + str(exc.filename) if exc.filename else ''}); "
            f"pass a writable directory"
        ) from None
    return page
