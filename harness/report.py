"""What `mch bench` / `mch analyze` print: the tables of a run's result records, and the same
numbers for machines (`--json`, `--csv`).

Terminal: probe accuracy [95% CI], I_probe and selectivity per (stage, attribute); GMI per
attribute with accessibility at `adapter` and `llm.final`; then each other analysis's
headline metrics (declared in its registry entry, `options: {headline: [...]}`). A value
that is not defined (accessibility where I_probe ≤ 0, a metric an analysis did not
compute) prints as "—". Skipped attributes and skipped samples are listed with their reason.

Light: rich only (through `mch.tables`), no numpy or torch.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable
from typing import Any

from .api import stage_sort_key
from .leaderboard import pick_metric
from .tables import MISSING, Col, Grid, emit, fits

# The `--json` output's own version: bump when a field changes meaning or goes away.
BENCH_JSON_VERSION = 1
CSV_FIELDS = [
    "analysis",
    "metric",
    "stage",
    "attribute",
    "value",
    "ci_low",
    "ci_high",
    "n",
    "model",
    "checkpoint",
    "dataset",
    "protocol",
    "smoke",
    "record",
]
MAX_GENERIC = 12  # metrics shown for an analysis that declares no headline


# --------------------------------------------------------------------------- formatting


def num(v: Any, digits: int = 3) -> str:
    if v is None:
        return MISSING
    v = float(v)
    if abs(v) >= 1000:
        return f"{v:.0f}"
    return f"{v:.{digits}f}"


def with_ci(m: dict | None, digits: int = 3) -> str | None:
    """'0.912 [0.880, 0.940]', '0.912' without a CI, None (→ "—") without a value."""
    if m is None or m.get("value") is None:
        return None
    s = num(m["value"], digits)
    if m.get("ci_low") is not None and m.get("ci_high") is not None:
        s += f" [{num(m['ci_low'], digits)}, {num(m['ci_high'], digits)}]"
    return s


def _find(rec: dict | None, metric: str, attr: str | None, stage: Any = "*") -> dict | None:
    """The metric row of `rec` for attribute `attr` (the leaderboard's rule for which stage)."""
    if rec is None:
        return None
    return pick_metric([m for m in rec["metrics"] if m.get("attribute") == attr], metric, stage)


def skipped_attributes(rec: dict) -> dict[str, str]:
    """Attributes of the run for which `rec` has no metric, with the reason the record gives
    (its summary's `skipped`, else a note about the attribute)."""
    attrs = rec["dataset"].get("attributes") or []
    have = {m.get("attribute") for m in rec["metrics"]}
    if not (have - {None}):  # a model-level analysis: attributes are not its unit
        return {}
    out = {}
    summ = (rec.get("summary") or {}).get("attributes") or {}
    for a in attrs:
        if a in have:
            continue
        why = (summ.get(a) or {}).get("skipped") if isinstance(summ.get(a), dict) else None
        if not why:
            notes = [n for n in rec.get("notes") or [] if n.startswith(f"{a}:") or n.startswith(f"{a} ")]
            why = notes[0][len(a) + 1 :].strip() if notes else None
            if why and why.startswith("skipped (") and why.endswith(")"):  # "attr: skipped (reason)"
                why = why[len("skipped (") : -1]
        out[a] = why or "no metric for this attribute (see the record's notes)"
    return out


# --------------------------------------------------------------------------- tables


def _stages(rec: dict, metric: str) -> list[str]:
    return sorted({m["stage"] for m in rec["metrics"] if m["metric"] == metric and m.get("stage")}, key=stage_sort_key)


def probe_grids(probe: dict, console: Any) -> list[Grid]:
    """One wide grid (attributes side by side) if it fits, else one grid per attribute."""
    skipped = skipped_attributes(probe)
    attrs = [a for a in probe["dataset"].get("attributes") or [] if a not in skipped]
    stages = _stages(probe, "accuracy")
    sel = {a for a in attrs if any(m["metric"] == "selectivity" and m.get("attribute") == a for m in probe["metrics"])}

    def chance(a: str) -> str:
        cu = _find(probe, "chance_uniform", a) or _find(probe, "chance_uniform", a, "adapter")
        cm = _find(probe, "chance_majority", a) or _find(probe, "chance_majority", a, "adapter")
        return f"1/K {num(cu and cu['value'])} · majority {num(cm and cm['value'])}"

    wide = Grid(
        [Col("stage", no_wrap=True)],
        title="probe: accuracy [95% CI], I_probe (bits)" + (", selectivity = acc − control acc" if sel else ""),
    )
    for a in attrs:
        wide.columns += [Col(f"{a}\nacc [95% CI]", "right", True), Col(f"{a}\nI_probe bits", "right", True)]
        if a in sel:
            wide.columns.append(Col(f"{a}\nselectivity", "right", True))
    for st in stages:
        row: list[str | None] = [st]
        for a in attrs:
            row += [with_ci(_find(probe, "accuracy", a, st)), with_ci(_find(probe, "i_probe_bits", a, st), 2)]
            if a in sel:
                row.append(with_ci(_find(probe, "selectivity", a, st)))
        wide.add(row)
    if attrs:
        row = ["chance"]
        for a in attrs:
            row += [chance(a), ""] + ([""] if a in sel else [])
        wide.add(row, style="dim")
    if not attrs:
        return []
    if fits(console, wide):
        return [wide]
    grids = []
    for a in attrs:
        cols = [Col("stage", no_wrap=True), Col("acc [95% CI]", "right", True), Col("I_probe bits", "right", True)]
        if a in sel:
            cols += [Col("selectivity", "right", True), Col("control acc", "right", True)]
        g = Grid(cols, title=f"probe · {a} (chance {chance(a)})")
        for st in stages:
            row = [st, with_ci(_find(probe, "accuracy", a, st)), with_ci(_find(probe, "i_probe_bits", a, st), 2)]
            if a in sel:
                row += [
                    with_ci(_find(probe, "selectivity", a, st)),
                    num((_find(probe, "control_accuracy", a, st) or {}).get("value")),
                ]
            g.add(row)
        grids.append(g)
    return grids


def gmi_grid(gmi: dict) -> Grid | None:
    """Per attribute: GMI [95% CI] at llm.final, the LM rate and the permutation p when the
    record has them, accessibility = GMI / I_probe at adapter and llm.final."""
    skipped = skipped_attributes(gmi)
    attrs = [a for a in gmi["dataset"].get("attributes") or [] if a not in skipped]
    if not attrs:
        return None
    has = {m["metric"] for m in gmi["metrics"]}
    cols: list[tuple[Col, Any]] = [
        (Col("GMI bits [95% CI]", "right", True), lambda a: with_ci(_find(gmi, "gmi_bits", a))),
    ]
    if "gmi_lm_bits" in has:
        cols.append((Col("GMI_lm bits [95% CI]", "right", True), lambda a: with_ci(_find(gmi, "gmi_lm_bits", a))))
    if "gmi_p" in has:
        cols.append((Col("p (perm.)", "right", True), lambda a: num((_find(gmi, "gmi_p", a) or {}).get("value"))))
    for st in ("adapter", "llm.final"):
        cols.append(
            (
                Col(f"accessibility\n@{st}", "right", True),
                lambda a, st=st: with_ci(_find(gmi, "accessibility", a, st), 2),
            )
        )
    if "accessibility_lm" in has:
        cols.append(
            (
                Col("accessibility_lm\n@adapter", "right", True),
                lambda a: with_ci(_find(gmi, "accessibility_lm", a, "adapter"), 2),
            )
        )
    if "text_gmi_bits" in has:
        cols.append((Col("text GMI bits", "right", True), lambda a: with_ci(_find(gmi, "text_gmi_bits", a))))
    g = Grid(
        [Col("attribute", no_wrap=True)] + [c for c, _ in cols],
        title="gmi: information accessible to the decoder (bits), accessibility = GMI / I_probe",
    )
    for a in attrs:
        g.add([a] + [f(a) for _, f in cols])
    return g


def _headline_rows(rec: dict, headline: list[str] | None) -> tuple[list[dict], int]:
    """The metric rows to show (declared `metric` or `metric@stage` entries, in that order;
    without a declaration the first MAX_GENERIC rows) and how many others the record has."""
    metrics = rec["metrics"]
    if headline:
        out = []
        for h in headline:
            name, _, stage = h.partition("@")
            out += [m for m in metrics if m["metric"] == name and (not stage or m.get("stage") == stage)]
    else:
        out = metrics[:MAX_GENERIC]
    return out, len(metrics) - len(out)


def headline_grid(rec: dict, headline: list[str] | None) -> tuple[Grid, int]:
    rows, rest = _headline_rows(rec, headline)
    attrs = any(m.get("attribute") is not None for m in rows)
    stages = any(m.get("stage") is not None for m in rows)
    cols = (
        [Col("metric", no_wrap=True)]
        + ([Col("attribute", no_wrap=True)] if attrs else [])
        + ([Col("stage", no_wrap=True)] if stages else [])
        + [Col("value [95% CI]", "right", True)]
    )
    g = Grid(
        cols,
        title=f"{rec['analysis']['name']}" + ("" if headline else " (no headline declared: first metrics)"),
        key_cols=len(cols) - 1,
    )
    for m in rows:
        g.add(
            [m["metric"]]
            + ([m.get("attribute") or ""] if attrs else [])
            + ([m.get("stage") or ""] if stages else [])
            + [with_ci(m)]
        )
    return g, rest


def show_records(records: list[dict], console: Any, headlines: dict[str, list[str]] | None = None) -> None:
    """Print the tables of one run's records (see the module docstring)."""
    from rich.text import Text

    if not records:
        console.print("no result records")
        return
    headlines = headlines or {}
    base = records[0]
    model, ds = base["model"], base["dataset"]
    console.print(
        Text(
            f"{model['name']} on {ds['name']} ({base['protocol']} protocol, n={ds.get('n')}), "
            f"checkpoint {model.get('checkpoint')}"
            + (f"@{model['revision']}" if model.get("revision") else "")
            + (f" + adapter {model['adapter']}" if model.get("adapter") else ""),
            style="bold",
        )
    )
    if any(r["model"].get("smoke") for r in records):
        console.print(
            Text(
                "smoke run: this checkpoint has random weights (built by mch.plugins.models.tiny); the "
                "numbers test the code path and measure no model",
                style="yellow",
            )
        )
    for rec in records:
        name = rec["analysis"]["name"]
        if name == "probe":
            for g in probe_grids(rec, console):
                emit(console, g)
        elif name == "gmi":
            gmi = gmi_grid(rec)
            if gmi is not None:
                emit(console, gmi)
                console.print(
                    Text(
                        "accessibility: — where it is undefined (I_probe ≤ 0 at that stage) or "
                        "not measured; it can exceed 1 (science.md §2)",
                        style="dim",
                    )
                )
        else:
            g, rest = headline_grid(rec, headlines.get(name))
            if g.rows:
                emit(console, g)
            else:
                console.print(Text(f"{name}: none of its headline metrics is in the record", style="yellow"))
            if rest:
                console.print(Text(f"{name}: {rest} more metrics in its record", style="dim"))
        for a, why in skipped_attributes(rec).items():
            console.print(Text(f"{name}: {a} skipped: {why}", style="yellow"))
    for line in skipped_sample_lines(base["dataset"].get("skipped") or []):
        console.print(Text(line, style="yellow"))


def skipped_sample_lines(skipped: list[dict]) -> list[str]:
    if not skipped:
        return []
    lines = [f"skipped {len(skipped)} sample{'s' if len(skipped) != 1 else ''} (--on-error skip):"]
    lines += [f"  {s.get('sample_id')}: {s.get('reason')}" for s in skipped]
    return lines


# --------------------------------------------------------------------------- machines


def _flat(records: Iterable[tuple[Any, dict]]) -> list[dict]:
    out = []
    for path, rec in records:
        for m in rec["metrics"]:
            out.append(
                {
                    "analysis": rec["analysis"]["name"],
                    "metric": m["metric"],
                    "stage": m.get("stage"),
                    "attribute": m.get("attribute"),
                    "value": m.get("value"),
                    "ci_low": m.get("ci_low"),
                    "ci_high": m.get("ci_high"),
                    "n": m.get("n"),
                    "model": rec["model"]["name"],
                    "checkpoint": rec["model"].get("checkpoint"),
                    "dataset": rec["dataset"]["name"],
                    "protocol": rec["protocol"],
                    "smoke": bool(rec["model"].get("smoke")),
                    "record": None if path is None else str(path),
                }
            )
    return out


def to_json(written: list[tuple[Any, dict]], model_loaded: bool | None = None) -> str:
    """`mch bench --json` (shape documented in README, "Output for machines")."""
    from .results import mch_version

    recs = [
        {
            "path": None if p is None else str(p),
            "analysis": r["analysis"]["name"],
            "model": r["model"],
            "dataset": {k: r["dataset"].get(k) for k in ("name", "split", "n", "attributes", "skipped")},
            "protocol": r["protocol"],
            "created_at": r["created_at"],
            "skipped_attributes": skipped_attributes(r),
            "notes": r.get("notes") or [],
        }
        for p, r in written
    ]
    return json.dumps(
        {
            "format": "mch-bench",
            "version": BENCH_JSON_VERSION,
            "mch_version": mch_version(),
            "model_loaded": model_loaded,
            "records": recs,
            "metrics": _flat(written),
        },
        indent=1,
    )


def to_csv(written: list[tuple[Any, dict]]) -> str:
    """`mch bench --csv`: one line per metric row, columns CSV_FIELDS; empty = null."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=CSV_FIELDS, lineterminator="\n")
    w.writeheader()
    for row in _flat(written):
        w.writerow({k: "" if row[k] is None else row[k] for k in CSV_FIELDS})
    return buf.getvalue()
