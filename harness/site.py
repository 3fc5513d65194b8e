"""The static leaderboard site: one self-contained `index.html` (plus `leaderboard.json`).

No server, no CDN, no external file: the table is rendered here (so it reads without
JavaScript), the inline script adds sorting, filters and the per-layer curves (inline SVG)
from a JSON data block. Every string from a record is escaped: `html.escape` for markup,
`\\u003c`-style escapes inside the JSON block, `textContent` in the script. A
Content-Security-Policy allows only this page's own script (by hash), so markup that slipped
through could still not run.
"""

from __future__ import annotations

import base64
import hashlib
import html
import json
import shutil
from pathlib import Path
from typing import Any

from .leaderboard import (COLUMN_BY_KEY, REPO_ROOT, METRIC_COLUMNS, TAIL_COLUMNS, TEXT_COLUMNS, Column, format_cell,
                          rows_to_json, text_value, visible_metric_columns)
from .api import MchError
from .results import atomic_write_json, git_hash, mch_version

PAPER = "https://arxiv.org/abs/2602.23136"
SCIENCE_MD = REPO_ROOT / "docs" / "science.md"


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

    parts = [f'<svg class="spark" width="{w}" height="{h}" viewBox="0 0 {w} {h}" role="img" '
             f'aria-label="probe accuracy per stage">']
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
        return ('<span class="badge smoke" title="a run on a random-weight checkpoint built for tests: it measures '
                'no model">smoke</span>')
    if kind == "reported":
        links = ",".join(f'<a href="#ref-{refs.index(s) + 1}">{refs.index(s) + 1}</a>' for s in row["sources"])
        return (f'<span class="badge reported" title="{esc(" | ".join(row["sources"]))}">reported'
                + (f"<sup>[{links}]</sup>" if links else "") + "</span>")
    return '<span class="badge measured" title="result record produced by mch">measured</span>'


def _row_html(row: dict, metric_cols: list[Column], refs: list[str], show_other: bool) -> str:
    """One table row. Every cell carries `data-label`: under the narrow-screen layout each row
    is a card whose cells show their column's name."""
    kind = row["kind"]
    data = {"id": row["id"], "kind": kind, "modality": row.get("modality") or "",
            "attribute": row["attribute"] if row["attribute"] is not None else "__none__",
            "dataset": row["dataset"], "protocol": row["protocol"], "smoke": "1" if row.get("smoke") else "0"}
    attrs = " ".join(f'data-{k}="{esc(v)}"' for k, v in data.items())
    cells = []
    plot = (f'<input type="checkbox" class="plot" aria-label="plot {esc(row["model"])} {esc(row["attribute"])}">'
            if any(c.get("accuracy") is not None or c.get("i_probe_bits") is not None for c in row["curves"]) else "")
    ckpt = text_value(row, "checkpoint")
    cells.append(f'<td class="model" data-label="Model" data-v="{esc(_sort_attr(COLUMN_BY_KEY["model"], row))}">'
                 f'<span class="name">{plot}{esc(row["model"])}</span> {_badge(row, refs)}'
                 f'<span class="ckpt" title="{esc(row.get("checkpoint") or "")}">{esc(ckpt)}</span></td>')
    cells.append(f'<td data-label="Dataset" data-v="{esc(_sort_attr(COLUMN_BY_KEY["dataset"], row))}">'
                 f'{esc(row["dataset"])}<span class="sub">{esc(row["protocol"])}</span></td>')
    cells.append(f'<td data-label="Attribute" data-v="{esc(_sort_attr(COLUMN_BY_KEY["attribute"], row))}">'
                 f'{esc(text_value(row, "attribute"))}</td>')
    cells.append(f'<td class="spark-cell" data-label="Accuracy per stage">{sparkline(row["curves"], row.get("chance"))}</td>')
    for c in metric_cols:
        cell = row["values"].get(c.key)
        if cell is None:
            cells.append(f'<td class="num none" data-label="{esc(c.label)}" data-v="">—</td>')
            continue
        main = format_cell(c, cell, with_ci=False)
        ci = ""
        if cell.get("ci_low") is not None and cell.get("ci_high") is not None:
            ci = f'<span class="ci">{esc(format_cell(c, cell)[len(main):].strip())}</span>'
        cells.append(f'<td class="num" data-label="{esc(c.label)}" data-v="{esc(_sort_attr(c, row))}">'
                     f'<span class="v">{esc(main)}</span>{ci}</td>')
    if show_other:
        other = [esc(o) for o in row["other"][:3]]
        if len(row["other"]) > 3:
            other.append(f'<span class="more">+{len(row["other"]) - 3} more: click the row</span>')
        cells.append(f'<td class="other col-other{"" if other else " none"}" data-label="Other metrics">'
                     f'{"<br>".join(other) or "—"}</td>')
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
    for key, label, help_ in (("model", "Model", "model · kind · checkpoint (@revision)"),
                              ("dataset", "Dataset", "dataset · protocol"), ("attribute", "Attribute", "")):
        head.append(f'<th scope="col" data-key="{key}" data-type="text" aria-sort="none"><button type="button" '
                    f'title="{esc(help_ or "sort by " + label)}">{esc(label)}</button></th>')
    head.append('<th scope="col" class="nosort" title="probe accuracy per stage, encoder → llm.final">Layers</th>')
    for c in metric_cols:
        name, _, at = c.label.partition(" @")
        label = esc(name) + (f'<span class="at">@{esc(at)}</span>' if at else "")
        head.append(f'<th scope="col" class="num" data-key="{c.key}" data-type="num" aria-sort="none"><button '
                    f'type="button" title="{esc(c.help)}">{label}</button></th>')
    show_other = any(r["other"] for r in rows)
    if show_other:
        head.append('<th scope="col" class="nosort col-other" title="metrics without a column of their own">'
                    'Other metrics</th>')
    body = "\n".join(_row_html(r, metric_cols, refs, show_other) for r in rows)
    n_smoke = sum(bool(r.get("smoke")) for r in rows)
    n_meas = sum(r["kind"] == "measured" for r in rows) - n_smoke
    n_files = len({f for r in rows for f in r["files"]})
    newest = max((r["created_at"] for r in rows), default="")
    gh = git_hash()
    meta = (f"{len(rows)} rows ({n_meas} measured, {len(rows) - n_meas - n_smoke} reported"
            + (f", {n_smoke} smoke" if n_smoke else "") + f") from {n_files} records"
            f" · built with mch {mch_version()}" + (f" (git {gh[:12]})" if gh else "")
            + (f" · newest record {newest[:10]}" if newest else ""))
    data = {"rows": rows, "columns": [{"key": c.key, "label": c.label, "metric": c.metric, "stage": c.stage}
                                      for c in TEXT_COLUMNS + METRIC_COLUMNS + TAIL_COLUMNS]}
    filters = "".join(
        f'<label>{label}<select id="f-{field}" data-field="{field}">{_options(rows, field)}</select></label>'
        for field, label in (("modality", "Modality"), ("attribute", "Attribute"), ("dataset", "Dataset"),
                             ("protocol", "Protocol"), ("kind", "Kind")))
    ref_list = "".join(f'<li id="ref-{i}">{esc(s)}</li>' for i, s in enumerate(refs, 1))
    script = SCRIPT
    script_hash = base64.b64encode(hashlib.sha256(script.encode()).digest()).decode()
    csp = (f"default-src 'none'; script-src 'sha256-{script_hash}'; style-src 'unsafe-inline'; "
           "img-src data:; base-uri 'none'; form-action 'none'")
    science = (f'<a href="{esc(science_href)}">science.md</a>' if science_href
               else "docs/science.md of the mch repository")
    return PAGE.format(
        csp=esc(csp), css=CSS, meta=esc(meta), paper=PAPER, filters=filters, head="".join(head), body=body,
        science=science, legend=LEGEND,
        n_rows=len(rows), refs=ref_list or "<li>none</li>", data=json_for_script(data), script=script,
        empty="" if rows else '<p class="empty">No entries yet: run <code>mch bench</code>, then '
                              '<code>mch leaderboard build</code>.</p>')


def build_site(rows: list[dict], out: Path) -> Path:
    """Write index.html and leaderboard.json into the directory `out` (made if missing); a
    path that is a file, lies under a file or cannot be written is one MchError."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise MchError(f"--out {out} is a file; pass a directory (index.html and leaderboard.json are written there)")
    page = out / "index.html"
    try:
        out.mkdir(parents=True, exist_ok=True)
        tmp = page.with_name(".index.html.tmp")
        science = None
        if SCIENCE_MD.is_file():  # the definitions travel with the page, so its link works offline and served
            shutil.copyfile(SCIENCE_MD, out / "science.md")
            science = "science.md"
        tmp.write_text(render(rows, science), encoding="utf-8")
        tmp.replace(page)
        atomic_write_json(out / "leaderboard.json", json.loads(rows_to_json(rows)))
    except OSError as exc:
        why = exc.strerror or str(exc)
        raise MchError(f"cannot write the leaderboard site to --out {out} ({why}{': ' + str(exc.filename) if exc.filename else ''}); "
                       f"pass a writable directory") from None
    return page


# --------------------------------------------------------------------------- assets

# What the unusual values mean (the definitions are science.md's).
LEGEND = """<details class="howto" id="howto" open><summary>How to read the numbers</summary><dl>
<dt>Acc, Chance</dt><dd>held-out linear-probe accuracy at the adapter output and at llm.final; Chance is the c of
Retained % (mch's default protocol: the majority-class rate; the paper's entries: 1/K).</dd>
<dt>Retained %</dt><dd>100·(Acc@final − c)/(Acc@adapter − c). Negative when one of the two accuracies is below
chance; very large, or of either sign, when Acc@adapter is close to c, where the ratio is unstable: read the two
accuracies and their CIs then.</dd>
<dt>I<sub>probe</sub> (bits)</dt><dd>information present: a held-out estimate (the probe's cross-entropy below
the label prior's), so it can come out slightly negative where the probe finds nothing at this sample size.
"−0.00 [−0.00, −0.00]" is a small negative value rounded: read it as 0, no information found.</dd>
<dt>GMI (bits)</dt><dd>information accessible through the decoder's own scoring rule; ≥ 0 by definition.</dd>
<dt>Access.</dt><dd>GMI / I<sub>probe</sub> at that stage; — where I<sub>probe</sub> ≤ 0 (undefined). Both are lower
bounds taken in different contexts, so it can exceed 1.</dd>
<dt>Δ columns</dt><dd>Ablation: % change of the decoder loss when the modality-specific directions are removed;
LoRA: change after the attribute LoRA (signed).</dd>
<dt><span class="badge smoke">smoke</span></dt><dd>a run on a random-weight checkpoint built for tests; shown only
when the page is built with <code>--smoke</code>, never a model's measurement.</dd>
</dl></details>"""

PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta http-equiv="Content-Security-Policy" content="{csp}">
<link rel="icon" href="data:,">
<title>mch leaderboard · modality collapse</title>
<style>{css}</style>
</head>
<body>
<header>
<h1>mch leaderboard <span class="sub">modality collapse, measured</span></h1>
<p class="lede">How much non-text information multimodal LLMs keep <em>accessible</em> to their text decoder,
layer by layer. <strong>Present</strong>: linear-probe accuracy and I<sub>probe</sub> (bits) at each stage.
<strong>Accessible</strong>: GMI (bits) through the decoder's own next-token scoring rule.
<strong>Accessibility</strong> = GMI / I<sub>probe</sub>. After
<a href="{paper}">Billa, <cite>Modality Collapse as Mismatched Decoding</cite> (arXiv 2602.23136)</a>.</p>
<p class="meta" id="build-meta">{meta}</p>
</header>
<main>
<section class="legend" aria-label="legend">
<span><span class="badge measured">measured</span> a result record produced by mch, with its provenance</span>
<span><span class="badge reported">reported</span> a number published by the paper, entered with its source; not re-measured</span>
<span>cells: value <span class="ci">[95% CI]</span>; — not measured or undefined · click a header to sort, a row for
all its metrics</span>
</section>
{legend}
<section class="filters" aria-label="filters">{filters}
<span class="count" id="count" aria-live="polite">{n_rows} of {n_rows} rows</span></section>
{empty}
<div class="table-wrap"><table id="lb">
<thead><tr>{head}</tr></thead>
<tbody>
{body}
</tbody>
</table></div>
<section id="curves" aria-label="per-layer curves">
<h2>Per-layer curves</h2>
<p class="hint">Tick the box in a row to add it to the plots. Stages are placed by depth: encoder, adapter,
the LLM's blocks as a fraction of its depth, then llm.final. Reported entries (dashed) have only the stages the
paper states.</p>
<div class="charts">
<figure><svg id="chart-acc" viewBox="0 0 560 300" role="img" aria-label="probe accuracy per stage"></svg>
<figcaption>Probe accuracy per stage (band: 95% CI; dotted: chance 1/K)</figcaption></figure>
<figure><svg id="chart-ip" viewBox="0 0 560 300" role="img" aria-label="I_probe per stage"></svg>
<figcaption>I<sub>probe</sub> per stage (bits): information present</figcaption></figure>
</div>
<ul id="series" class="series"></ul>
</section>
<section id="detail" aria-label="entry details" hidden>
<h2 id="detail-title"></h2>
<div class="detail-grid"><dl id="detail-meta"></dl>
<div><h3>All metrics</h3><table id="detail-metrics" class="small"><thead><tr><th>metric</th><th>stage</th>
<th>value</th><th>95% CI</th><th>n</th><th>analysis</th></tr></thead><tbody></tbody></table></div></div>
<ul id="detail-notes" class="notes"></ul>
</section>
<section class="refs"><h2>Sources of reported entries</h2><ol>{refs}</ol></section>
</main>
<footer>Built by <code>mch leaderboard build</code>. Add your model: <code>mch bench --model M</code>, then
<code>mch leaderboard submit results/RESULT.json</code>. Definitions: {science}.</footer>
<script type="application/json" id="lb-data">{data}</script>
<script>{script}</script>
</body>
</html>
"""

CSS = """
:root{--bg:#fbfbfa;--fg:#1d232b;--muted:#5f6b7a;--line:#dfe3e8;--head:#f1f3f6;--meas:#0b6e4f;--rep:#8a4b08;
--rep-bg:#fff8ee;--sel:#e9f1ff;--accent:#2455c3;--smoke:#7a6a00;--smoke-bg:#fffbe0}
@media (prefers-color-scheme:dark){:root{--bg:#14171c;--fg:#e5e9ef;--muted:#9aa5b4;--line:#2c333d;--head:#1c2129;
--meas:#4cc79b;--rep:#f0a24a;--rep-bg:#221b12;--sel:#1b2a44;--accent:#7aa7ff;--smoke:#e0c848;--smoke-bg:#25220f}}
*{box-sizing:border-box}
body{margin:0;background:var(--bg);color:var(--fg);font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,
"Helvetica Neue",Arial,sans-serif}
header,main,footer{max-width:1800px;margin:0 auto;padding:0 16px}
header{padding-top:22px}
h1{font-size:24px;margin:0 0 6px}h1 .sub{font-weight:400;color:var(--muted);font-size:16px;margin-left:8px}
h2{font-size:17px;margin:26px 0 6px}h3{font-size:14px;margin:0 0 6px}
a{color:var(--accent)}
.lede{max-width:980px;margin:4px 0}.meta{color:var(--muted);font-size:12px;margin:4px 0 12px}
.legend{display:flex;flex-wrap:wrap;gap:8px 22px;font-size:12.5px;color:var(--muted);margin:6px 0 6px}
.howto{font-size:12.5px;color:var(--muted);margin:0 0 10px;max-width:1200px}
.howto summary{cursor:pointer;font-weight:600}
.howto dl{grid-template-columns:max-content 1fr;margin-top:6px}
.howto dt{font-weight:600;color:var(--fg)}
.badge{display:inline-block;font-size:11px;font-weight:600;font-style:normal;letter-spacing:.02em;padding:1px 7px;
border-radius:9px;white-space:nowrap;vertical-align:1px}
.badge.measured{background:var(--meas);color:#fff}
.badge.reported{border:1.5px dashed var(--rep);color:var(--rep);background:var(--rep-bg)}
.badge.smoke{border:1.5px solid var(--smoke);color:var(--smoke);background:var(--smoke-bg)}
.badge sup a{color:inherit;text-decoration:none;margin-left:2px}
.filters{display:flex;flex-wrap:wrap;gap:10px 16px;align-items:end;padding:10px 12px;background:var(--head);
border:1px solid var(--line);border-radius:8px}
.filters label{display:flex;flex-direction:column;font-size:11.5px;color:var(--muted);gap:2px}
.filters select{font:inherit;font-size:13px;padding:3px 6px;border:1px solid var(--line);border-radius:5px;
background:var(--bg);color:var(--fg);min-width:110px;max-width:100%}
.count{margin-left:auto;color:var(--muted);font-size:12.5px}
.table-wrap{overflow-x:auto;margin-top:10px;border:1px solid var(--line);border-radius:8px}
table{border-collapse:collapse;width:100%}
#lb{font-size:13px}
#lb th{background:var(--head);font-size:12px;text-align:left;border-bottom:1px solid var(--line);
padding:0;vertical-align:bottom}
#lb th.num{text-align:right}
#lb th .at{display:block;font-weight:400;color:var(--muted)}
#lb th button{all:unset;cursor:pointer;display:block;padding:6px 6px;width:100%;box-sizing:border-box;line-height:1.25}
#lb th.nosort{padding:6px 6px;color:var(--muted);font-weight:600}
#lb th button:focus-visible{outline:2px solid var(--accent)}
#lb th[aria-sort=ascending] button::after{content:" ▲";font-size:9px}
#lb th[aria-sort=descending] button::after{content:" ▼";font-size:9px}
#lb td{padding:5px 6px;border-bottom:1px solid var(--line);vertical-align:middle}
#lb td.num{text-align:right;font-variant-numeric:tabular-nums}
#lb td.num .v{white-space:nowrap}
#lb td.model{min-width:9em;max-width:17em;overflow-wrap:anywhere}
#lb td.model .name{font-weight:600}
#lb td .ckpt{display:block;font-size:11px;color:var(--muted);font-style:normal}
#lb td .sub{display:block;font-size:11px;color:var(--muted)}
#lb td .ci{display:block;font-size:10.5px;color:var(--muted)}
#lb td.none{color:var(--muted)}
#lb td.other{font-size:11.5px;color:var(--muted)}
#lb td.other .more{font-style:italic}
#lb tr.reported td{background:var(--rep-bg);font-style:italic}
#lb tr.reported td:first-child{box-shadow:inset 3px 0 0 var(--rep)}
#lb tr.measured td:first-child{box-shadow:inset 3px 0 0 var(--meas)}
#lb tr.smoke td{background:var(--smoke-bg)}
#lb tr.smoke td:first-child{box-shadow:inset 3px 0 0 var(--smoke)}
#lb tbody tr{cursor:pointer}#lb tbody tr:hover td{background:var(--sel)}
#lb tbody tr.selected td{background:var(--sel)}
#lb tbody tr[hidden]{display:none}
#lb input.plot{margin:0 6px 0 0;vertical-align:middle}
.spark .spark-line{fill:none;stroke:var(--accent);stroke-width:1.6}.spark .spark-dot{fill:var(--accent)}
.spark .spark-chance{stroke:var(--muted);stroke-dasharray:2 2;stroke-width:1}
.charts{display:grid;grid-template-columns:repeat(auto-fit,minmax(min(420px,100%),1fr));gap:16px}
figure{margin:0;border:1px solid var(--line);border-radius:8px;padding:8px;background:var(--bg);min-width:0}
figure svg{display:block;width:100%;height:auto}
figcaption{font-size:12px;color:var(--muted);margin-top:4px}
svg .axis{stroke:var(--muted);stroke-width:1}svg .grid{stroke:var(--line);stroke-width:1}
svg text{fill:var(--muted);font-size:11px;font-family:inherit}
.series{list-style:none;padding:0;display:flex;flex-wrap:wrap;gap:6px 18px;font-size:12.5px}
.series .sw{display:inline-block;width:22px;height:0;border-top:3px solid;margin-right:6px;vertical-align:middle}
.series .sw.dash{border-top-style:dashed}
.hint{color:var(--muted);font-size:12.5px;margin:2px 0 8px}
.detail-grid{display:grid;grid-template-columns:minmax(280px,1fr) 2fr;gap:20px}
.detail-grid>div{min-width:0;overflow-x:auto}
dl{display:grid;grid-template-columns:max-content 1fr;gap:3px 12px;margin:0;font-size:12.5px}
dt{color:var(--muted)}dd{margin:0;word-break:break-word}
#detail-metrics td,#detail-metrics th{padding:3px 8px;border-bottom:1px solid var(--line);font-size:12px;text-align:left}
.notes{font-size:12.5px;color:var(--muted)}
.refs ol{font-size:12.5px;color:var(--muted);overflow-wrap:anywhere}
.empty{padding:16px;border:1px dashed var(--line);border-radius:8px}
footer{color:var(--muted);font-size:12px;padding:20px;border-top:1px solid var(--line);margin-top:26px}
/* "Other metrics" only where there is room; a row's details list every metric */
@media (max-width:1599px){.col-other{display:none}}
@media (max-width:800px){.detail-grid{grid-template-columns:1fr}.howto dl{grid-template-columns:1fr}}
/* phones: every row a card, each cell under its column's name; charts one per line */
@media (max-width:700px){
header,main,footer{padding:0 10px}
h1 .sub{display:block;margin:2px 0 0}
.count{margin-left:0}
.table-wrap{overflow:visible;border:none}
#lb,#lb tbody{display:block}
#lb thead{display:none}
#lb tbody tr{display:grid;grid-template-columns:repeat(auto-fill,minmax(140px,1fr));gap:4px 14px;
border:1px solid var(--line);border-radius:8px;margin:0 0 10px;padding:8px 10px;background:var(--bg)}
#lb tbody tr.reported{background:var(--rep-bg);border-left:3px solid var(--rep)}
#lb tbody tr.measured{border-left:3px solid var(--meas)}
#lb tbody tr.smoke{background:var(--smoke-bg);border-left:3px solid var(--smoke)}
#lb td{display:block;border:none;padding:1px 0;background:transparent!important;box-shadow:none!important;
min-width:0;overflow-wrap:anywhere}
#lb td.model,#lb td.spark-cell{grid-column:1/-1}
#lb td.model{max-width:none}
#lb td[data-label]::before{content:attr(data-label);display:block;font-size:10.5px;color:var(--muted);
font-style:normal;font-weight:400}
#lb td.model::before{display:none}
#lb td.num{text-align:left}
#lb td.none{display:none}
#lb td .ci{display:inline;margin-left:5px}
.detail-grid{gap:10px}
}
"""

SCRIPT = r"""
(function () {
  "use strict";
  var DATA = JSON.parse(document.getElementById("lb-data").textContent);
  var byId = {};
  DATA.rows.forEach(function (r) { byId[r.id] = r; });
  var table = document.getElementById("lb");
  var tbody = table.tBodies[0];
  var NS = "http://www.w3.org/2000/svg";
  var COLORS = ["#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#7a5195", "#444444"];

  // ---- sorting: rows without a value always go last
  function cellValue(tr, idx, type) {
    var v = tr.cells[idx].getAttribute("data-v");
    if (v === null || v === "") return null;
    return type === "num" ? parseFloat(v) : v;
  }
  Array.prototype.forEach.call(table.tHead.rows[0].cells, function (th, idx) {
    var btn = th.querySelector("button");
    if (!btn) return;
    btn.addEventListener("click", function () {
      var type = th.getAttribute("data-type");
      var cur = th.getAttribute("aria-sort");
      var dir = cur === "none" ? (type === "num" ? "descending" : "ascending")
                               : (cur === "ascending" ? "descending" : "ascending");
      Array.prototype.forEach.call(table.tHead.rows[0].cells, function (o) {
        if (o.hasAttribute("aria-sort")) o.setAttribute("aria-sort", "none");
      });
      th.setAttribute("aria-sort", dir);
      var rows = Array.prototype.slice.call(tbody.rows);
      var sign = dir === "ascending" ? 1 : -1;
      rows.sort(function (a, b) {
        var x = cellValue(a, idx, type), y = cellValue(b, idx, type);
        if (x === null && y === null) return 0;
        if (x === null) return 1;
        if (y === null) return -1;
        return (x < y ? -1 : x > y ? 1 : 0) * sign;
      });
      rows.forEach(function (r) { tbody.appendChild(r); });
    });
  });

  // ---- filters
  var selects = document.querySelectorAll(".filters select");
  function applyFilters() {
    var shown = 0;
    Array.prototype.forEach.call(tbody.rows, function (tr) {
      var ok = true;
      Array.prototype.forEach.call(selects, function (s) {
        if (s.value !== "" && tr.getAttribute("data-" + s.getAttribute("data-field")) !== s.value) ok = false;
      });
      tr.hidden = !ok;
      if (ok) shown += 1;
    });
    document.getElementById("count").textContent = shown + " of " + tbody.rows.length + " rows";
    drawCharts();
  }
  Array.prototype.forEach.call(selects, function (s) { s.addEventListener("change", applyFilters); });

  // ---- per-layer curves (inline SVG)
  function depth(stage, nLayers) {
    if (stage === "encoder") return 0;
    if (stage === "adapter") return 1;
    if (stage === "llm.final") return 6;
    var m = /^llm\.(\d+)$/.exec(stage);
    if (m) return 1 + 4 * (parseInt(m[1], 10) + 1) / Math.max(nLayers, 1);
    return null;
  }
  function nLayers(curves) {
    var n = 0;
    curves.forEach(function (c) {
      var m = /^llm\.(\d+)$/.exec(c.stage);
      if (m) n = Math.max(n, parseInt(m[1], 10) + 1);
    });
    return n;
  }
  function el(tag, attrs, parent, text) {
    var e = document.createElementNS(NS, tag);
    Object.keys(attrs).forEach(function (k) { e.setAttribute(k, attrs[k]); });
    if (text !== undefined) e.textContent = text;
    if (parent) parent.appendChild(e);
    return e;
  }
  function label(r) {
    return r.model + (r.checkpoint_label ? " (" + r.checkpoint_label + ")" : "") + " · " + r.dataset + " · " + (r.attribute === null ? "(model-level)" : r.attribute) +
      " · " + r.protocol + (r.kind === "reported" ? " (reported)" : "");
  }
  function plotted() {
    var out = [];
    Array.prototype.forEach.call(tbody.rows, function (tr) {
      var box = tr.querySelector("input.plot");
      if (box && box.checked && !tr.hidden) out.push(byId[tr.getAttribute("data-id")]);
    });
    return out;
  }
  // a round tick step (1, 2, 2.5 or 5 times a power of ten) giving about n intervals up to max
  function niceStep(max, n) {
    var raw = max / n, p = Math.pow(10, Math.floor(Math.log(raw) / Math.LN10)), f = raw / p;
    return (f <= 1 ? 1 : f <= 2 ? 2 : f <= 2.5 ? 2.5 : f <= 5 ? 5 : 10) * p;
  }
  function decimals(step) {
    var d = 0;
    while (Math.abs(Math.round(step * Math.pow(10, d)) - step * Math.pow(10, d)) > 1e-9 && d < 6) d += 1;
    return d;
  }
  function drawChart(svg, series, field, yMax, chance, step, yMin) {
    while (svg.firstChild) svg.removeChild(svg.firstChild);
    yMin = yMin || 0;
    var W = 560, H = 300, L = 52, R = 14, T = 14, B = 40;
    var x = function (d) { return L + (W - L - R) * d / 6; };
    var y = function (v) { return T + (H - T - B) * (1 - (v - yMin) / (yMax - yMin)); };
    var nTicks = Math.round((yMax - yMin) / step), dec = decimals(step);
    for (var k = 0; k <= nTicks; k++) {
      var v = yMin + step * k;
      el("line", {x1: L, x2: W - R, y1: y(v), y2: y(v), "class": v === 0 && yMin < 0 ? "axis" : "grid"}, svg);
      el("text", {x: L - 6, y: y(v) + 4, "text-anchor": "end", "class": "tick"}, svg, v.toFixed(dec));
    }
    var base = y(yMin);
    el("line", {x1: L, x2: W - R, y1: base, y2: base, "class": "axis"}, svg);
    el("line", {x1: L, x2: L, y1: T, y2: base, "class": "axis"}, svg);
    [[0, "encoder"], [1, "adapter"], [2, "25%"], [3, "50%"], [4, "75%"], [5, "100%"], [6, "final"]].forEach(function (t) {
      el("line", {x1: x(t[0]), x2: x(t[0]), y1: base, y2: base + 4, "class": "axis"}, svg);
      el("text", {x: x(t[0]), y: base + 16, "text-anchor": "middle"}, svg, t[1]);
    });
    el("text", {x: x(3.5), y: H - 4, "text-anchor": "middle"}, svg, "stage (LLM blocks by fraction of depth)");
    el("text", {x: 12, y: T + (H - T - B) / 2, "text-anchor": "middle",
                transform: "rotate(-90 12 " + (T + (H - T - B) / 2) + ")"}, svg,
       field === "accuracy" ? "probe accuracy" : "I_probe (bits)");
    if (!series.length) {
      el("text", {x: x(3), y: y(yMax / 2), "text-anchor": "middle"}, svg, "tick a row to plot its per-layer curve");
      return;
    }
    series.forEach(function (s) {
      var r = s.row, color = s.color, n = nLayers(r.curves);
      var pts = r.curves.filter(function (c) { return c[field] !== null && c[field] !== undefined && depth(c.stage, n) !== null; });
      if (field === "accuracy") {
        var band = pts.filter(function (c) { return c.ci_low !== null && c.ci_high !== null; });
        if (band.length > 1) {
          var up = band.map(function (c) { return x(depth(c.stage, n)) + "," + y(c.ci_high); });
          var lo = band.slice().reverse().map(function (c) { return x(depth(c.stage, n)) + "," + y(c.ci_low); });
          el("polygon", {points: up.concat(lo).join(" "), fill: color, "fill-opacity": 0.13, stroke: "none"}, svg);
        }
        if (r.chance !== null && r.chance !== undefined && chance) {
          el("line", {x1: L, x2: W - R, y1: y(r.chance), y2: y(r.chance), stroke: color, "stroke-width": 1,
                      "stroke-dasharray": "1 3"}, svg);
        }
      }
      var line = el("polyline", {points: pts.map(function (c) { return x(depth(c.stage, n)) + "," + y(c[field]); }).join(" "),
                                 fill: "none", stroke: color, "stroke-width": 2, "data-row": r.id,
                                 "stroke-dasharray": r.kind === "reported" ? "6 4" : "none"}, svg);
      el("title", {}, line, label(r));
      pts.forEach(function (c) {
        var dot = el("circle", {cx: x(depth(c.stage, n)), cy: y(c[field]), r: 3.2,
                                fill: color, stroke: color, "stroke-width": 1.6}, svg);
        if (r.kind === "reported") dot.style.fill = "var(--bg)";  // hollow marker: reported
        el("title", {}, dot, label(r) + "\n" + c.stage + ": " + c[field].toFixed(3));
      });
    });
  }
  function drawCharts() {
    var rows = plotted();
    var series = rows.map(function (r, i) { return {row: r, color: COLORS[i % COLORS.length]}; });
    var ipMax = 0, ipMin = 0;  // I_probe is an estimate: it can dip below 0
    rows.forEach(function (r) { r.curves.forEach(function (c) {
      if (c.i_probe_bits !== null && c.i_probe_bits !== undefined) {
        ipMax = Math.max(ipMax, c.i_probe_bits); ipMin = Math.min(ipMin, c.i_probe_bits);
      } }); });
    drawChart(document.getElementById("chart-acc"), series.filter(function (s) {
      return s.row.curves.some(function (c) { return c.accuracy !== null; }); }), "accuracy", 1, true, 0.2);
    var ipStep = niceStep(Math.max(ipMax - ipMin, 0.2) * 1.05, 4);
    drawChart(document.getElementById("chart-ip"), series.filter(function (s) {
      return s.row.curves.some(function (c) { return c.i_probe_bits !== null; }); }),
      "i_probe_bits", Math.max(1, Math.ceil(ipMax * 1.05 / ipStep)) * ipStep, false, ipStep,
      Math.floor(ipMin / ipStep) * ipStep);
    var ul = document.getElementById("series");
    while (ul.firstChild) ul.removeChild(ul.firstChild);
    series.forEach(function (s) {
      var li = document.createElement("li");
      var sw = document.createElement("span");
      sw.className = "sw" + (s.row.kind === "reported" ? " dash" : "");
      sw.style.borderTopColor = s.color;
      li.appendChild(sw);
      li.appendChild(document.createTextNode(label(s.row)));
      ul.appendChild(li);
    });
  }

  // ---- row details
  function fmt(v, d) { return v === null || v === undefined ? "—" : Number(v).toFixed(d === undefined ? 3 : d); }
  function showDetail(r) {
    var sec = document.getElementById("detail");
    sec.hidden = false;
    document.getElementById("detail-title").textContent = label(r);
    var dl = document.getElementById("detail-meta");
    while (dl.firstChild) dl.removeChild(dl.firstChild);
    var vers = Object.keys(r.versions || {}).filter(function (k) { return r.versions[k]; })
      .map(function (k) { return k + " " + r.versions[k]; }).join(", ");
    [["kind", r.smoke ? "smoke run (random-weight checkpoint: measures no model)" : r.kind],
     ["source", (r.sources || []).join(" | ")], ["checkpoint", r.checkpoint], ["revision", r.revision],
     ["checkpoint fingerprint", r.checkpoint_fingerprint],
     ["adapter", r.adapter], ["modality", r.modality], ["dataset", r.dataset + (r.split ? " / " + r.split : "")],
     ["samples", r.n], ["protocol", r.protocol], ["analyses", (r.analyses || []).join(", ")],
     ["mch version", r.mch_version], ["git", r.git_hash], ["created", r.created_at], ["versions", vers],
     ["files", (r.files || []).join(", ")]].forEach(function (kv) {
      if (kv[1] === null || kv[1] === undefined || kv[1] === "") return;
      var dt = document.createElement("dt"); dt.textContent = kv[0]; dl.appendChild(dt);
      var dd = document.createElement("dd"); dd.textContent = String(kv[1]); dl.appendChild(dd);
    });
    var tb = document.getElementById("detail-metrics").tBodies[0];
    while (tb.firstChild) tb.removeChild(tb.firstChild);
    r.metrics.forEach(function (m) {
      var tr = document.createElement("tr");
      [m.metric, m.stage === null ? "—" : m.stage, fmt(m.value, 4),
       m.ci_low === null || m.ci_low === undefined ? "—" : "[" + fmt(m.ci_low, 4) + ", " + fmt(m.ci_high, 4) + "]",
       m.n === null || m.n === undefined ? "—" : String(m.n), m.analysis].forEach(function (v) {
        var td = document.createElement("td"); td.textContent = v; tr.appendChild(td);
      });
      tb.appendChild(tr);
    });
    var notes = document.getElementById("detail-notes");
    while (notes.firstChild) notes.removeChild(notes.firstChild);
    (r.notes || []).forEach(function (n) { var li = document.createElement("li"); li.textContent = n; notes.appendChild(li); });
  }
  function select(tr) {
    Array.prototype.forEach.call(tbody.rows, function (o) { o.classList.remove("selected"); });
    tr.classList.add("selected");
    showDetail(byId[tr.getAttribute("data-id")]);
  }
  Array.prototype.forEach.call(tbody.rows, function (tr) {
    var box = tr.querySelector("input.plot");
    if (box) box.addEventListener("change", drawCharts);
    tr.addEventListener("click", function (ev) {
      if (ev.target === box || (ev.target.closest && ev.target.closest("a"))) return;
      if (box && !box.checked) { box.checked = true; drawCharts(); }
      select(tr);
    });
    tr.addEventListener("keydown", function (ev) { if (ev.key === "Enter") tr.click(); });
  });

  // On load, plot the measured and the reported row with the most stages, side by side.
  ["measured", "reported"].forEach(function (kind) {
    var best = null, most = 0;
    Array.prototype.forEach.call(tbody.rows, function (t) {
      var n = byId[t.getAttribute("data-id")].curves.length;
      if (t.getAttribute("data-kind") === kind && t.querySelector("input.plot") && n > most) { best = t; most = n; }
    });
    if (best) best.querySelector("input.plot").checked = true;
  });
  drawCharts();
})();
"""
