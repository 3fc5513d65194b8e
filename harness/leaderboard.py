"""The leaderboard's rows: result records aggregated per model, checkpoint, dataset, attribute.

This module turns result records (`mch.entries.load_records`) into rows of one (kind, model,
checkpoint, dataset, attribute, protocol) each, with the known metrics in columns and every
other metric row kept for the page and `--json`; it filters and sorts them and writes each
cell as text. Renderers draw the same rows: `mch.leaderboard_table` in the terminal,
`mch.site` as a static page; `mch.leaderboard_cli` holds the commands. Measured and reported
records never merge into one row, nor do runs of different checkpoints (path or HF id,
revision, adapter, and the checkpoint's fingerprint when the record has one). Smoke runs
(random-weight checkpoints, `model.smoke`) are labelled "smoke".

Light on purpose: no torch, no numpy, no UI (rich and typer are the renderers' and commands').
"""

from __future__ import annotations

import difflib
import hashlib
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
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
    relpath,
    submit,
)
from .results import SCHEMA_VERSION

# --------------------------------------------------------------------------- columns


@dataclass(frozen=True)
class Column:
    """A leaderboard column: a text field of the row, or one metric at one stage.

    `stage` "*" takes the metric's attribute-level row (stage null) if there is one, else its
    `llm.final` row, else its only row."""

    key: str
    label: str
    metric: str | None = None
    stage: str | None = None
    fmt: str = "{:.3f}"
    help: str = ""

    @property
    def numeric(self) -> bool:
        return self.metric is not None


TEXT_COLUMNS = [
    Column("kind", "Kind", help="measured by mch, or reported in the paper"),
    Column("model", "Model"),
    Column(
        "checkpoint",
        "Checkpoint",
        help="the weights measured: local path (last two parts) or HF id, @revision; "
        "#hash tells apart checkpoints that would read the same",
    ),
    Column("dataset", "Dataset"),
    Column("n", "N", help="samples measured (rows of different selections are never merged)"),
    Column("attribute", "Attribute"),
    Column("protocol", "Protocol"),
]
METRIC_COLUMNS = [
    Column("acc_adapter", "Acc @adapter", "accuracy", "adapter", help="probe accuracy at the adapter output, 95% CI"),
    Column("acc_final", "Acc @final", "accuracy", "llm.final", help="probe accuracy at llm.final, 95% CI"),
    Column(
        "chance",
        "Chance",
        "chance_retention",
        "*",
        help="the chance level c of Retained % (mch's default protocol: the majority rate; paper: 1/K)",
    ),
    Column("retained_pct", "Retained %", "retained_pct", "*", "{:.0f}", help="100·(acc_final − c)/(acc_adapter − c)"),
    Column(
        "i_probe_adapter",
        "I_probe @adapter",
        "i_probe_bits",
        "adapter",
        "{:.2f}",
        help="information present at the adapter, bits",
    ),
    Column(
        "i_probe_final",
        "I_probe @final",
        "i_probe_bits",
        "llm.final",
        "{:.2f}",
        help="information present at llm.final, bits",
    ),
    Column("gmi", "GMI", "gmi_bits", "*", "{:.2f}", help="information accessible to the decoder, bits, 95% CI"),
    Column(
        "gmi_lm",
        "GMI (LM rate)",
        "gmi_lm_bits",
        "*",
        "{:.2f}",
        help="GMI with per-class offsets: the decoder's answer bias not counted as inaccessible, bits, 95% CI",
    ),
    Column(
        "gmi_p",
        "GMI p",
        "gmi_p",
        "*",
        "{:.3f}",
        help="label-permutation p-value of GMI (group structure kept): is anything accessible?",
    ),
    Column(
        "access_adapter",
        "Access. @adapter",
        "accessibility",
        "adapter",
        "{:.2f}",
        help="GMI / I_probe(adapter), 95% CI from shared group resamples",
    ),
    Column(
        "access_final",
        "Access. @final",
        "accessibility",
        "llm.final",
        "{:.2f}",
        help="GMI / I_probe(llm.final), 95% CI from shared group resamples",
    ),
    Column(
        "access_lm_adapter",
        "Access. LM @adapter",
        "accessibility_lm",
        "adapter",
        "{:.2f}",
        help="gmi_lm / I_probe(adapter), 95% CI",
    ),
    Column(
        "access_lm_final",
        "Access. LM @final",
        "accessibility_lm",
        "llm.final",
        "{:.2f}",
        help="gmi_lm / I_probe(llm.final), 95% CI",
    ),
    Column(
        "ablation_ms",
        "Ablation Δ% MS",
        "ablation_pct_change_ms_all",
        "*",
        "{:+.2f}",
        help="% change of decoder loss when all modality-specific modes are removed",
    ),
    Column(
        "lora_dacc",
        "LoRA Δacc",
        "lora_delta_accuracy",
        "*",
        "{:+.3f}",
        help="change of probe accuracy after the attribute LoRA",
    ),
    Column(
        "lora_dgmi",
        "LoRA ΔGMI",
        "lora_delta_gmi_bits",
        "*",
        "{:+.2f}",
        help="change of GMI (bits) after the attribute LoRA",
    ),
]
# a column's stand-in metric for records without its own: the paper's reported entries carry
# only 1/K, which is also the c of their retention numbers
FALLBACK: dict[str | None, str] = {"chance_retention": "chance_uniform"}  # keyed by Column.metric
TAIL_COLUMNS = [Column("revision", "Revision"), Column("mch_version", "mch")]
COLUMNS = TEXT_COLUMNS + METRIC_COLUMNS + TAIL_COLUMNS
COLUMN_BY_KEY = {c.key: c for c in COLUMNS}


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


def _recency(item: Loaded) -> tuple[str, str]:
    return (item.record["created_at"], item.path.name)


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
    sample selection, attribute, analysis, protocol) counts, and the analyses of one row merge (probe + gmi +
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
        group: tuple[Any, ...] = (
            r["kind"],
            r["model"]["name"],
            r["dataset"]["name"],
            r["protocol"],
            checkpoint_identity(r),
            # the samples measured: a --limit run is another measurement, never merged into
            # (or replacing) a row of the full selection
            r["dataset"].get("sample_ids_sha256") or r["dataset"].get("n"),
        )
        if all_runs:
            group = group + (relpath(item.path),)
            for attr, ms in by_attr.items():
                parts.setdefault(group, {}).setdefault(attr, []).append((item, ms))
            continue
        for attr, ms in by_attr.items():
            key = group + (attr, r["analysis"]["name"])
            if key not in latest or _recency(item) > _recency(latest[key][0]):
                latest[key] = (item, ms)
    for key, val in latest.items():
        parts.setdefault(key[:6], {}).setdefault(key[6], []).append(val)

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
        "id": hashlib.sha256(json.dumps([group, attr], default=str).encode()).hexdigest()[:12],
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
        "n": max((r["dataset"].get("n", 0) for r in recs), default=None),
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


# --------------------------------------------------------------------------- formatting


def format_cell(col: Column, cell: dict | None, with_ci: bool = True) -> str:
    if cell is None or cell.get("value") is None:
        return "—"
    s = col.fmt.format(cell["value"])
    lo, hi = cell.get("ci_low"), cell.get("ci_high")
    if with_ci and lo is not None and hi is not None:
        f = col.fmt.replace("+", "")
        s += f" [{f.format(lo)}, {f.format(hi)}]"
    return s


def text_value(row: dict, key: str) -> str:
    if key == "attribute" and row.get("kind") and row.get(key) is None:
        return "(model-level)"
    if key == "checkpoint" and row.get("checkpoint_label"):
        return row["checkpoint_label"]
    if key == "kind" and row.get("smoke"):
        return "smoke"  # a random-weight checkpoint: never a model's measurement
    if key == "mch_version" and row.get("kind") == "reported":
        return "—"  # entered by hand, not produced by mch
    v = row.get(key)
    return "—" if v in (None, "") else str(v)


def visible_metric_columns(rows: list[dict]) -> list[Column]:
    """Metric columns that have a value in at least one row (keeps the table narrow)."""
    return [c for c in METRIC_COLUMNS if any(r["values"].get(c.key) for r in rows)]


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
