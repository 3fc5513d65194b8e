"""The leaderboard's rows: result records aggregated per model, checkpoint, dataset, attribute.

This module turns result records (`mch.entries.load_records`) into rows of one (kind, model,
checkpoint, dataset, attribute, protocol) each, with the known metrics in columns and every
other metric row kept for the page and `--json`; it filters and sorts them. The columns and
each cell's text are mch.leaderboard_columns' (found here too). Renderers draw the same
rows: `mch.leaderboard_table` in the terminal, `mch.site` as a static page;
`mch.leaderboard_cli` holds the commands. Measured and reported records never merge into one
row, nor do runs of different checkpoints (path or HF id, revision, adapter, and the
checkpoint's fingerprint when the record has one). Smoke runs (random-weight checkpoints,
`model.smoke`) are labelled "smoke".

Light on purpose: no torch, no numpy, no UI (rich and typer are the renderers' and commands').
"""

from __future__ import annotations

import difflib
import hashlib
import json
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from .api import MchError, stage_sort_key

# what moved to mch.entries is still found here, where callers have always looked for it
from .entries import (  # noqa: F401
    Loaded,
    canonical_name,
    check_entry,
    checkpoint_identity,
    load_records,
    measurement_key,
    relpath,
    submit,
)
from .leaderboard_columns import (  # noqa: F401 - the columns and cell text, found here as always
    COLUMN_BY_KEY,
    COLUMNS,
    FALLBACK,
    METRIC_COLUMNS,
    TAIL_COLUMNS,
    TEXT_COLUMNS,
    Column,
    format_cell,
    text_value,
    visible_metric_columns,
)
from .results import SCHEMA_VERSION, recency


def _id_part(group: tuple) -> list:
    """The row group in its id; a run that asked no stages or span (element 6 None) keeps the
    id it had before they joined the group."""
    return list(group[:6] + group[7:]) if group[6] is None else list(group)


def stage_order(stage: str | None) -> tuple[int, int, str]:
    """encoder < adapter < llm.0 < … < llm.{L-1} < llm.final < anything else (by name)."""
    return (*stage_sort_key(stage or ""), str(stage))


# --------------------------------------------------------------------------- aggregation


def pick_metric(metrics: list[dict], metric: str | None, stage: str | None) -> dict | None:
    """The row of `metric` at `stage`; stage "*" takes stage None, else llm.final, else the
    one stage the metric has (the leaderboard's cells and the bench table read it alike)."""
    rows = [m for m in metrics if m["metric"] == metric]
    if not rows:
        return None
    if stage != "*":
        hit = [m for m in rows if m.get("stage") == stage]
        return hit[-1] if hit else None
    for want in (None, "llm.final"):
        hit = [m for m in rows if m.get("stage") == want]
        if hit:
            return hit[-1]
    return rows[-1] if len({m.get("stage") for m in rows}) == 1 else None


def _cell(m: dict | None) -> dict | None:
    if m is None or m.get("value") is None:
        return None
    return {k: m.get(k) for k in ("value", "ci_low", "ci_high", "n")}


def _uniq(xs: Iterable[Any]) -> list[Any]:
    out: list[Any] = []
    for x in xs:
        if x not in (None, "") and x not in out:
            out.append(x)
    return out


def short_checkpoint(
    checkpoint: str | None, revision: str | None = None, adapter: str | None = None, max_len: int = 36
) -> str:
    """A checkpoint as a table cell: an HF id whole, a local path by its last two parts,
    '@' + revision (a commit hash to 7 characters), '+ adapter NAME' for a LoRA adapter."""
    if not checkpoint:
        return "—"
    s = str(checkpoint)
    if s.startswith(("/", "~", ".")) or s.count("/") > 1 or "\\" in s:
        parts = [x for x in re.split(r"[\\/]+", s) if x]
        if len(parts) > 2:
            s = "…/" + "/".join(parts[-2:])
    if len(s) > max_len:
        s = s[: max_len // 2 - 1] + "…" + s[-(max_len // 2) :]
    if revision:
        s += "@" + (revision[:7] if re.fullmatch(r"[0-9a-f]{40}", revision) else revision)
    if adapter:
        a = str(adapter)
        name = Path(a).name if " " not in a and re.search(r"[\\/]", a) else a
        s += " + adapter " + (name if len(name) <= 24 else name[:23] + "…")
    return s


def aggregate(records: list[Loaded], all_runs: bool = False) -> list[dict]:
    """Rows of one (kind, model, checkpoint, dataset, sample selection, attribute, protocol).

    By default only the latest record (by `created_at`) per (kind, model, checkpoint, dataset,
    sample selection, stages and span asked, attribute, analysis, protocol) counts, and the analyses of one row merge (probe + gmi +
    …). With `all_runs` every record gives its own rows. Metrics of no attribute (ablation,
    swap, …) form a model-level row (attribute None) of their own, never mixed into an
    attribute's."""
    # (row group, attribute) -> [(loaded, metric rows for that attribute)]
    parts: dict[tuple, dict[Any, list[tuple[Loaded, list[dict]]]]] = {}
    latest: dict[tuple, tuple[Loaded, list[dict]]] = {}
    for item in records:
        r = item.record
        by_attr: dict[Any, list[dict]] = {}
        for m in r["metrics"]:
            by_attr.setdefault(m.get("attribute"), []).append({**m, "analysis": r["analysis"]["name"]})
        if not by_attr:
            by_attr[None] = []
        group: tuple[Any, ...] = (r["kind"], *measurement_key(r))
        if all_runs:
            group = group + (relpath(item.path),)
            for attr, ms in by_attr.items():
                parts.setdefault(group, {}).setdefault(attr, []).append((item, ms))
            continue
        for attr, ms in by_attr.items():
            key = group + (attr, r["analysis"]["name"])
            if key not in latest or recency(r, item.path) > recency(latest[key][0].record, latest[key][0].path):
                latest[key] = (item, ms)
    for key, val in latest.items():
        parts.setdefault(key[:-2], {}).setdefault(key[-2], []).append(val)

    rows = []
    for group, attrs in parts.items():
        for attr, pieces in attrs.items():
            rows.append(_make_row(group, attr, pieces, all_runs))
    _label_checkpoints(rows)
    rows.sort(
        key=lambda r: (
            r["kind"] != "measured",
            r["smoke"],
            r["model"],
            r["checkpoint_label"],
            r["dataset"],
            r["attribute"] is None,
            str(r["attribute"]),
            r["protocol"],
            r.get("run") or "",
        )
    )
    return rows


def _label_checkpoints(rows: list[dict]) -> None:
    """`checkpoint_label` of each row: short_checkpoint, plus '#' and 6 hex digits of the
    identity where two checkpoints of one model would otherwise read the same."""
    seen: dict[tuple, set] = {}
    for r in rows:
        r["checkpoint_label"] = short_checkpoint(r["checkpoint"], r["revision"], r["adapter"])
        seen.setdefault((r["model"], r["checkpoint_label"]), set()).add(r["checkpoint_id"])
    for r in rows:
        if len(seen[(r["model"], r["checkpoint_label"])]) > 1:
            r["checkpoint_label"] += " #" + r["checkpoint_id"][:6]


def _make_row(group: tuple, attr: str | None, pieces: list[tuple[Loaded, list[dict]]], all_runs: bool) -> dict:
    recs = [p[0].record for p in pieces]
    metrics = [m for _, ms in pieces for m in ms]
    newest = max(recs, key=lambda r: r["created_at"])
    curve_stages = sorted(
        {m.get("stage") for m in metrics if m["metric"] in ("accuracy", "i_probe_bits") and m.get("stage")},
        key=stage_order,
    )
    curves = []
    for st in curve_stages:
        acc = pick_metric(metrics, "accuracy", st)
        ip = pick_metric(metrics, "i_probe_bits", st)
        curves.append(
            {
                "stage": st,
                "accuracy": acc and acc.get("value"),
                "ci_low": acc and acc.get("ci_low"),
                "ci_high": acc and acc.get("ci_high"),
                "i_probe_bits": ip and ip.get("value"),
            }
        )
    values = {
        c.key: _cell(
            pick_metric(metrics, c.metric, c.stage) or pick_metric(metrics, FALLBACK.get(c.metric, ""), c.stage)
        )
        for c in METRIC_COLUMNS
    }
    ckpt, revision, adapter, fingerprint, smoke = group[4]
    row = {
        "id": hashlib.sha256(json.dumps([_id_part(group), attr], default=str).encode()).hexdigest()[:12],
        "kind": group[0],
        "model": group[1],
        "dataset": group[2],
        "attribute": attr,
        "protocol": group[3],
        "modality": newest["model"].get("modality"),
        "checkpoint": ckpt,
        "revision": revision,
        "adapter": adapter,
        "checkpoint_fingerprint": fingerprint,
        "checkpoint_id": hashlib.sha256(json.dumps(group[4], default=str).encode()).hexdigest()[:12],
        "smoke": smoke,
        "split": ", ".join(_uniq(r["dataset"].get("split") for r in recs)) or None,
        # the samples this attribute's numbers rest on (its labelled ones), not the run's
        "n": max(
            (m["n"] for m in metrics if isinstance(m.get("n"), int)),
            default=max((r["dataset"].get("n", 0) for r in recs), default=None),
        ),
        "analyses": sorted(_uniq(r["analysis"]["name"] for r in recs)),
        "mch_version": ", ".join(_uniq(r.get("mch_version") for r in recs)),
        "git_hash": ", ".join(_uniq(r["provenance"].get("git_hash") for r in recs)) or None,
        "created_at": newest["created_at"],
        "sources": _uniq(r["provenance"].get("source") for r in recs),
        "versions": newest["provenance"].get("versions", {}),
        "notes": _uniq(
            n for r in recs for n in (r.get("notes") or []) + ([r["model"]["note"]] if r["model"].get("note") else [])
        ),
        "files": _uniq(relpath(p[0].path) for p in pieces),
        "values": values,
        "curves": curves,
        "chance": values["chance"] and values["chance"]["value"],  # the Chance column's c
        "metrics": sorted(metrics, key=lambda m: (m["metric"], stage_order(m.get("stage")))),
    }
    row["other"] = other_metrics(row)
    if all_runs:
        row["run"] = newest["created_at"]
    return row


_CURVE_METRICS = {"accuracy", "i_probe_bits"}


def other_metrics(row: dict) -> list[str]:
    """Short 'name[@stage] value' strings for the metrics no column shows: those of no stage
    (e.g. delta_tau), and every metric of a model-level row. Per-stage probe numbers are left
    to the curves and the page's details."""
    have = {m["metric"] for m in row["metrics"]}
    shown = {
        c.metric if c.metric in have else FALLBACK.get(c.metric) for c in METRIC_COLUMNS if row["values"].get(c.key)
    }
    out = []
    for m in row["metrics"]:
        if m.get("value") is None or m["metric"] in shown or m["metric"] in _CURVE_METRICS:
            continue
        if m.get("stage") is not None and row["attribute"] is not None:
            continue
        name = m["metric"] + (f"@{m['stage']}" if m.get("stage") else "")
        out.append(f"{name} {m['value']:.4g}")
    return out


# --------------------------------------------------------------------------- filter and sort


FILTERS = ("modality", "attribute", "dataset", "protocol", "kind")


def filter_rows(rows: list[dict], **wanted: str | None) -> list[dict]:
    """Keep rows whose field equals the wanted value (comma-separated values: any of them).
    A value no row has is a user error naming the values that exist."""
    for field, value in wanted.items():
        if not value:
            continue
        if field not in FILTERS:
            raise MchError(f"cannot filter on {field!r}; filters: {', '.join(FILTERS)}")
        want = {v.strip() for v in value.split(",") if v.strip()}
        present = sorted({str(r[field]) for r in rows if r[field] is not None})
        missing = [v for v in want if v not in present]
        if missing and rows:
            close = difflib.get_close_matches(missing[0], present, n=1, cutoff=0.5)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise MchError(
                f"no leaderboard row has {field} {missing[0]!r} (present: {', '.join(present) or 'none'}){hint}"
            )
        rows = [r for r in rows if str(r[field]) in want]
    return rows


def sort_key_value(row: dict, key: str) -> Any:
    col = COLUMN_BY_KEY[key]
    if col.numeric:
        cell = row["values"].get(key)
        return None if cell is None else cell["value"]
    v = row.get(key)
    return None if v in (None, "") else str(v).lower()


def sort_rows(rows: list[dict], spec: str | None) -> list[dict]:
    """`COLUMN`, `COLUMN:asc` or `COLUMN:desc` (numbers default to descending, text to
    ascending); rows without a value always go last."""
    if not spec:
        return rows
    key, _, direction = spec.partition(":")
    key = key.strip()
    if key not in COLUMN_BY_KEY:
        close = difflib.get_close_matches(key, list(COLUMN_BY_KEY), n=1, cutoff=0.4)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise MchError(f"cannot sort by {key!r}: {hint}columns are {', '.join(COLUMN_BY_KEY)}")
    if direction not in ("", "asc", "desc"):
        raise MchError(f"sort direction {direction!r} must be 'asc' or 'desc' (as in --sort {key}:desc)")
    descending = direction == "desc" or (direction == "" and COLUMN_BY_KEY[key].numeric)
    have = [r for r in rows if sort_key_value(r, key) is not None]
    lack = [r for r in rows if sort_key_value(r, key) is None]
    return sorted(have, key=lambda r: sort_key_value(r, key), reverse=descending) + lack


# --------------------------------------------------------------------------- output


def rows_to_json(rows: list[dict]) -> str:
    return json.dumps(
        {
            "schema_version": SCHEMA_VERSION,
            "columns": [
                {"key": c.key, "label": c.label, "metric": c.metric, "stage": c.stage, "help": c.help} for c in COLUMNS
            ],
            "rows": rows,
        },
        indent=1,
    )
