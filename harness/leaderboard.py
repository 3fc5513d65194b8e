"""The leaderboard of per-model accessibility: aggregation, the terminal table, submissions.

Result records (measured by mch, or `"kind": "reported"` numbers published elsewhere, entered
with `provenance.source`) are the source of truth; this module turns them into rows of one
(kind, model, dataset, attribute, protocol) each, with the known metrics in columns and every
other metric row kept for the page and `--json`. `mch.site` renders the same rows as a static
page. Measured and reported records never merge into one row.

Light on purpose: no torch, no numpy; rich is imported only to draw.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Optional

import typer

from .api import MchError, PROTOCOLS
from .results import SCHEMA_VERSION, atomic_write_json, safe_name, schema_errors

REPO_ROOT = Path(__file__).resolve().parent.parent
STAGE_RE = re.compile(r"^(encoder|adapter|llm\.final|llm\.(0|[1-9][0-9]*))$")


def default_entries_dir() -> Path:
    """`leaderboard/entries/` of the source tree (editable install), else of the cwd."""
    for base in (REPO_ROOT, Path.cwd()):
        d = base / "leaderboard" / "entries"
        if d.is_dir():
            return d
    return Path.cwd() / "leaderboard" / "entries"


def default_results_dirs() -> list[Path]:
    return [Path(os.environ.get("MCH_RESULTS") or "results")]


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
    Column("dataset", "Dataset"),
    Column("attribute", "Attribute"),
    Column("protocol", "Protocol"),
]
METRIC_COLUMNS = [
    Column("acc_adapter", "Acc @adapter", "accuracy", "adapter", help="probe accuracy at the adapter output, 95% CI"),
    Column("acc_final", "Acc @final", "accuracy", "llm.final", help="probe accuracy at llm.final, 95% CI"),
    Column("chance", "Chance", "chance_retention", "*",
           help="the chance level c of Retained % (mch's default protocol: the majority rate; paper: 1/K)"),
    Column("retained_pct", "Retained %", "retained_pct", "*", "{:.0f}",
           help="100·(acc_final − c)/(acc_adapter − c)"),
    Column("i_probe_adapter", "I_probe @adapter", "i_probe_bits", "adapter", "{:.2f}",
           help="information present at the adapter, bits"),
    Column("i_probe_final", "I_probe @final", "i_probe_bits", "llm.final", "{:.2f}",
           help="information present at llm.final, bits"),
    Column("gmi", "GMI", "gmi_bits", "*", "{:.2f}", help="information accessible to the decoder, bits, 95% CI"),
    Column("gmi_lm", "GMI (LM rate)", "gmi_lm_bits", "*", "{:.2f}",
           help="GMI with per-class offsets: the decoder's answer bias not counted as inaccessible, bits, 95% CI"),
    Column("gmi_p", "GMI p", "gmi_p", "*", "{:.3f}",
           help="label-permutation p-value of GMI (group structure kept): is anything accessible?"),
    Column("access_adapter", "Access. @adapter", "accessibility", "adapter", "{:.2f}",
           help="GMI / I_probe(adapter), 95% CI from shared group resamples"),
    Column("access_final", "Access. @final", "accessibility", "llm.final", "{:.2f}",
           help="GMI / I_probe(llm.final), 95% CI from shared group resamples"),
    Column("access_lm_adapter", "Access. LM @adapter", "accessibility_lm", "adapter", "{:.2f}",
           help="gmi_lm / I_probe(adapter), 95% CI"),
    Column("access_lm_final", "Access. LM @final", "accessibility_lm", "llm.final", "{:.2f}",
           help="gmi_lm / I_probe(llm.final), 95% CI"),
    Column("ablation_ms", "Ablation Δ% MS", "ablation_pct_change_ms_all", "*", "{:+.2f}",
           help="% change of decoder loss when all modality-specific modes are removed"),
    Column("lora_dacc", "LoRA Δacc", "lora_delta_accuracy", "*", "{:+.3f}",
           help="change of probe accuracy after the attribute LoRA"),
    Column("lora_dgmi", "LoRA ΔGMI", "lora_delta_gmi_bits", "*", "{:+.2f}",
           help="change of GMI (bits) after the attribute LoRA"),
]
# a column's stand-in metric for records without its own: the paper's reported entries carry
# only 1/K, which is also the c of their retention numbers
FALLBACK = {"chance_retention": "chance_uniform"}
TAIL_COLUMNS = [Column("revision", "Revision"), Column("mch_version", "mch")]
COLUMNS = TEXT_COLUMNS + METRIC_COLUMNS + TAIL_COLUMNS
COLUMN_BY_KEY = {c.key: c for c in COLUMNS}


def stage_order(stage: str | None) -> tuple[int, int, str]:
    """encoder < adapter < llm.0 < … < llm.{L-1} < llm.final < anything else."""
    if stage == "encoder":
        return (0, 0, "")
    if stage == "adapter":
        return (1, 0, "")
    if stage == "llm.final":
        return (3, 0, "")
    if stage and stage.startswith("llm.") and stage[4:].isdigit():
        return (2, int(stage[4:]), "")
    return (4, 0, str(stage))


# --------------------------------------------------------------------------- loading


@dataclass
class Loaded:
    path: Path
    record: dict


def _is_record_like(obj: Any) -> bool:
    return isinstance(obj, dict) and "schema_version" in obj and "metrics" in obj


def load_records(dirs: Iterable[Path]) -> tuple[list[Loaded], list[str]]:
    """Valid records under files/directories, and one warning per record-like file that is
    not valid (JSON files that are not records at all are ignored)."""
    out: list[Loaded] = []
    warnings: list[str] = []
    seen: set[Path] = set()
    for d in dirs:
        d = Path(d)
        files = sorted(d.rglob("*.json")) if d.is_dir() else ([d] if d.is_file() else [])
        for f in files:
            rf = f.resolve()
            if rf in seen or f.name.startswith("."):
                continue
            seen.add(rf)
            try:
                rec = json.loads(f.read_text())
            except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
                warnings.append(f"{f}: not readable JSON ({exc})")
                continue
            if not _is_record_like(rec):
                continue
            errs = _entry_errors(rec)
            if errs:
                warnings.append(f"{f}: skipped, {errs[0]}")
                continue
            out.append(Loaded(f, rec))
    return out, warnings


def _entry_errors(rec: Any) -> list[str]:
    """Schema errors first, then the checks the schema cannot express."""
    if isinstance(rec, dict) and rec.get("schema_version") != SCHEMA_VERSION:
        return [f"schema_version: {rec.get('schema_version')!r} is not the supported version {SCHEMA_VERSION}"]
    errs = schema_errors(rec)
    if errs:
        return errs
    if rec["kind"] == "reported" and not str(rec["provenance"].get("source", "")).strip():
        errs.append("provenance/source: a reported entry must name where its numbers come from")
    for i, m in enumerate(rec["metrics"]):
        st = m.get("stage")
        if st is not None and not STAGE_RE.match(st):
            errs.append(f"metrics/{i}/stage: {st!r} is not a stage (encoder, adapter, llm.N, llm.final)")
    return errs


# --------------------------------------------------------------------------- aggregation


def _pick(metrics: list[dict], metric: str, stage: str | None) -> dict | None:
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


def _relpath(p: Path) -> str:
    try:
        return str(p.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        try:
            return str(p.resolve().relative_to(REPO_ROOT))
        except ValueError:
            return str(p)


def _recency(item: Loaded) -> tuple[str, str]:
    return (item.record["created_at"], item.path.name)


def aggregate(records: list[Loaded], all_runs: bool = False) -> list[dict]:
    """Rows of one (kind, model, dataset, attribute, protocol).

    By default only the latest record (by `created_at`) per (kind, model, dataset, attribute,
    analysis, protocol) counts, and the analyses of one row merge (probe + gmi + …). With
    `all_runs` every record gives its own rows. Metrics of no attribute (ablation, swap, …)
    form a model-level row (attribute None) of their own, never mixed into an attribute's."""
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
        group = (r["kind"], r["model"]["name"], r["dataset"]["name"], r["protocol"])
        if all_runs:
            group = group + (_relpath(item.path),)
            for attr, ms in by_attr.items():
                parts.setdefault(group, {}).setdefault(attr, []).append((item, ms))
            continue
        for attr, ms in by_attr.items():
            key = group + (attr, r["analysis"]["name"])
            if key not in latest or _recency(item) > _recency(latest[key][0]):
                latest[key] = (item, ms)
    for key, val in latest.items():
        parts.setdefault(key[:4], {}).setdefault(key[4], []).append(val)

    rows = []
    for group, attrs in parts.items():
        for attr, pieces in attrs.items():
            rows.append(_make_row(group, attr, pieces, all_runs))
    rows.sort(key=lambda r: (r["kind"] != "measured", r["model"], r["dataset"], r["attribute"] is None, str(r["attribute"]),
                             r["protocol"], r.get("run") or ""))
    return rows


def _make_row(group: tuple, attr: str | None, pieces: list[tuple[Loaded, list[dict]]], all_runs: bool) -> dict:
    recs = [p[0].record for p in pieces]
    metrics = [m for _, ms in pieces for m in ms]
    newest = max(recs, key=lambda r: r["created_at"])
    curve_stages = sorted({m.get("stage") for m in metrics
                           if m["metric"] in ("accuracy", "i_probe_bits") and m.get("stage")}, key=stage_order)
    curves = []
    for st in curve_stages:
        acc = _pick(metrics, "accuracy", st)
        ip = _pick(metrics, "i_probe_bits", st)
        curves.append({"stage": st,
                       "accuracy": acc and acc.get("value"), "ci_low": acc and acc.get("ci_low"),
                       "ci_high": acc and acc.get("ci_high"), "i_probe_bits": ip and ip.get("value")})
    values = {c.key: _cell(_pick(metrics, c.metric, c.stage) or _pick(metrics, FALLBACK.get(c.metric, ""), c.stage))
              for c in METRIC_COLUMNS}
    row = {
        "id": hashlib.sha256(json.dumps([group, attr], default=str).encode()).hexdigest()[:12],
        "kind": group[0], "model": group[1], "dataset": group[2], "attribute": attr, "protocol": group[3],
        "modality": newest["model"].get("modality"),
        "checkpoint": ", ".join(_uniq(r["model"].get("checkpoint") for r in recs)),
        "revision": ", ".join(_uniq(r["model"].get("revision") for r in recs)) or None,
        "adapter": ", ".join(_uniq(r["model"].get("adapter") for r in recs)) or None,
        "split": ", ".join(_uniq(r["dataset"].get("split") for r in recs)) or None,
        "n": max((r["dataset"].get("n", 0) for r in recs), default=None),
        "analyses": sorted(_uniq(r["analysis"]["name"] for r in recs)),
        "mch_version": ", ".join(_uniq(r.get("mch_version") for r in recs)),
        "git_hash": ", ".join(_uniq(r["provenance"].get("git_hash") for r in recs)) or None,
        "created_at": newest["created_at"],
        "sources": _uniq(r["provenance"].get("source") for r in recs),
        "versions": newest["provenance"].get("versions", {}),
        "notes": _uniq(n for r in recs for n in (r.get("notes") or []) + ([r["model"]["note"]] if r["model"].get("note") else [])),
        "files": _uniq(_relpath(p[0].path) for p in pieces),
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
    shown = {c.metric if c.metric in have else FALLBACK.get(c.metric) for c in METRIC_COLUMNS
             if row["values"].get(c.key)}
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
            raise MchError(f"no leaderboard row has {field} {missing[0]!r} (present: {', '.join(present) or 'none'}){hint}")
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
    if key == "mch_version" and row.get("kind") == "reported":
        return "—"  # entered by hand, not produced by mch
    v = row.get(key)
    return "—" if v in (None, "") else str(v)


def visible_metric_columns(rows: list[dict]) -> list[Column]:
    """Metric columns that have a value in at least one row (keeps the table narrow)."""
    return [c for c in METRIC_COLUMNS if any(r["values"].get(c.key) for r in rows)]


def render_table(rows: list[dict], console: Any, sources: list[str] | None = None) -> None:
    from rich import box
    from rich.table import Table
    from rich.text import Text

    cols = visible_metric_columns(rows)
    table = Table(title="mch leaderboard: information present (probes) vs accessible to the decoder (GMI)",
                  box=box.SIMPLE_HEAVY, show_lines=False, header_style="bold")
    for c in TEXT_COLUMNS:
        table.add_column(c.label, no_wrap=c.key in ("kind", "protocol"))
    for c in cols:
        table.add_column(c.label, justify="right")
    show_other = any(r["other"] for r in rows)
    if show_other:
        table.add_column("Other", overflow="fold", max_width=40)
    for c in TAIL_COLUMNS:
        table.add_column(c.label, overflow="fold")
    refs: list[str] = []
    for r in rows:
        kind = r["kind"]
        if kind == "reported" and r["sources"]:
            refs.extend(s for s in r["sources"] if s not in refs)
            kind = f"reported[{','.join(str(refs.index(s) + 1) for s in r['sources'])}]"
        # Text(...) so that names are shown literally, never parsed as rich markup.
        cells = [Text(kind)] + [Text(text_value(r, c.key)) for c in TEXT_COLUMNS[1:]]
        cells += [Text(format_cell(c, r["values"].get(c.key))) for c in cols]
        if show_other:
            cells.append(Text("; ".join(r["other"][:4]) + (f"; … (+{len(r['other']) - 4})" if len(r["other"]) > 4 else "")))
        cells += [Text(text_value(r, c.key)) for c in TAIL_COLUMNS]
        table.add_row(*cells, style="italic" if r["kind"] == "reported" else None)
    console.print(table)
    for i, s in enumerate(refs, 1):
        console.print(Text(f"[{i}] {s}", style="dim"))
    if any(r["kind"] == "reported" for r in rows):
        console.print(Text("reported = numbers published by the paper, entered with their source; "
                           "measured = result records produced by mch.", style="dim"))


def rows_to_json(rows: list[dict]) -> str:
    return json.dumps({"schema_version": SCHEMA_VERSION, "columns": [
        {"key": c.key, "label": c.label, "metric": c.metric, "stage": c.stage, "help": c.help} for c in COLUMNS],
        "rows": rows}, indent=1)


# --------------------------------------------------------------------------- submit


def entry_key(rec: dict) -> tuple:
    """Duplicate identity of a leaderboard entry: (kind, model, revision, dataset, protocol,
    analysis). `kind` is part of it so a measured run never replaces a reported number."""
    return (rec["kind"], rec["model"]["name"], rec["model"].get("revision"), rec["dataset"]["name"],
            rec["protocol"], rec["analysis"]["name"])


def canonical_name(rec: dict) -> str:
    kind, model, revision, dataset, protocol, analysis = entry_key(rec)
    parts = [model, revision or "norev", dataset, analysis, protocol] + (["reported"] if kind == "reported" else [])
    return "__".join(safe_name(p) for p in parts) + ".json"


def check_entry(path: Path) -> dict:
    """Read and validate one result file; a problem is an MchError naming the first
    offending field."""
    try:
        text = Path(path).read_text()
    except FileNotFoundError:
        raise MchError(f"{path} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise MchError(f"cannot read {path}: {exc}") from None
    try:
        rec = json.loads(text)
    except json.JSONDecodeError as exc:
        raise MchError(f"{path} is not valid JSON: line {exc.lineno}, column {exc.colno}: {exc.msg}") from None
    if not isinstance(rec, dict):
        raise MchError(f"{path} is not a result record: expected a JSON object, found {type(rec).__name__}")
    errs = _entry_errors(rec)
    if errs:
        raise MchError(f"{path} is not a valid result record: {errs[0]}")
    return rec


def submit(path: Path, entries_dir: Path, replace: bool = False) -> tuple[Path, Path | None]:
    """Validate `path` and copy it to `entries_dir` under its canonical name. Returns the new
    path and the entry it replaced (or None)."""
    rec = check_entry(path)
    key = entry_key(rec)
    entries_dir = Path(entries_dir)
    existing, _ = load_records([entries_dir]) if entries_dir.is_dir() else ([], [])
    dupes = [e for e in existing if entry_key(e.record) == key]
    if dupes and not replace:
        raise MchError(f"{path} duplicates {_relpath(dupes[0].path)} (same kind, model, revision, dataset, "
                       f"protocol and analysis); pass --replace to replace it")
    target = entries_dir / canonical_name(rec)
    if target.exists() and not any(d.path.resolve() == target.resolve() for d in dupes):
        # Same canonical name from a different key (names are sanitised): keep both.
        h = hashlib.sha256(json.dumps(key, default=str).encode()).hexdigest()[:8]
        target = target.with_name(f"{target.stem}-{h}.json")
    atomic_write_json(target, rec)
    for d in dupes:
        if d.path.resolve() != target.resolve():
            d.path.unlink()
    return target, (dupes[0].path if dupes else None)


# --------------------------------------------------------------------------- CLI


def _fail(exc: MchError) -> None:
    typer.echo(f"error: {exc}", err=True)
    raise typer.Exit(2)  # a user error: the CLI-wide code


def collect(results: list[Path] | None, entries: Path | None, no_entries: bool, all_runs: bool) -> list[dict]:
    dirs = list(results) if results else default_results_dirs()
    for d in results or []:
        if not Path(d).exists():
            raise MchError(f"results directory {d} does not exist")
    if not no_entries:
        if entries is not None and not Path(entries).is_dir():
            raise MchError(f"entries directory {entries} does not exist")
        dirs.append(entries or default_entries_dir())
    loaded, warnings = load_records(dirs)
    for w in warnings:
        typer.echo(f"warning: {w}", err=True)
    return aggregate(loaded, all_runs=all_runs)


app = typer.Typer(name="leaderboard", add_completion=False, no_args_is_help=False,
                  help="The per-model accessibility leaderboard: terminal table, static site, submissions.")

_RESULTS_HELP = "results directory (repeatable; default ./results or $MCH_RESULTS)"


@app.callback(invoke_without_command=True)
def table(
    ctx: typer.Context,
    results: Optional[list[Path]] = typer.Option(None, "--results", help=_RESULTS_HELP),
    entries: Optional[Path] = typer.Option(None, "--entries", help="committed entries (default leaderboard/entries/)"),
    no_entries: bool = typer.Option(False, "--no-entries", help="leave out the committed entries"),
    attribute: Optional[str] = typer.Option(None, "--attribute", help="only this attribute (comma-separated: any of them)"),
    modality: Optional[str] = typer.Option(None, "--modality", help="speech or vision"),
    dataset: Optional[str] = typer.Option(None, "--dataset"),
    protocol: Optional[str] = typer.Option(None, "--protocol", help="default or paper"),
    kind: Optional[str] = typer.Option(None, "--kind", help="measured or reported"),
    sort: Optional[str] = typer.Option(None, "--sort", help="column key, optionally :asc or :desc (e.g. acc_final:desc); keys: "
                                       + ", ".join(COLUMN_BY_KEY)),
    all_runs: bool = typer.Option(False, "--all-runs", help="every run, not only the latest per model/dataset/attribute/analysis/protocol"),
    as_json: bool = typer.Option(False, "--json", help="print the rows as JSON instead of a table"),
) -> None:
    """Print the leaderboard table from the results directory and leaderboard/entries/."""
    if ctx.invoked_subcommand is not None:
        return
    try:
        if protocol and any(p.strip() not in PROTOCOLS for p in protocol.split(",")):
            raise MchError(f"--protocol must be one of {', '.join(PROTOCOLS)}, not {protocol!r}")
        rows = collect(results, entries, no_entries, all_runs)
        rows = filter_rows(rows, attribute=attribute, modality=modality, dataset=dataset, protocol=protocol, kind=kind)
        rows = sort_rows(rows, sort)
    except MchError as exc:
        _fail(exc)
    if as_json:
        typer.echo(rows_to_json(rows))
        return
    if not rows:
        typer.echo("no leaderboard entries found; run `mch bench` (results go to ./results) or pass --results DIR")
        return
    from rich.console import Console

    render_table(rows, Console(width=max(Console().width, 200) if not sys.stdout.isatty() else None))


@app.command()
def build(
    out: Path = typer.Option(..., "--out", help="output directory; index.html is written there"),
    results: Optional[list[Path]] = typer.Option(None, "--results", help=_RESULTS_HELP),
    entries: Optional[Path] = typer.Option(None, "--entries", help="committed entries (default leaderboard/entries/)"),
    no_entries: bool = typer.Option(False, "--no-entries", help="leave out the committed entries"),
    all_runs: bool = typer.Option(False, "--all-runs", help="every run, not only the latest"),
) -> None:
    """Build the static leaderboard site: one offline index.html (data, JS and CSS inline)."""
    from .site import build_site

    try:
        rows = collect(results, entries, no_entries, all_runs)
        path = build_site(rows, Path(out))
    except MchError as exc:
        _fail(exc)
    n_m = sum(r["kind"] == "measured" for r in rows)
    typer.echo(f"wrote {path} ({len(rows)} rows: {n_m} measured, {len(rows) - n_m} reported)")


@app.command("submit")
def submit_cmd(
    result: Path = typer.Argument(..., help="a result record (JSON) written by mch, or a reported entry"),
    entries: Optional[Path] = typer.Option(None, "--entries", help="where entries live (default leaderboard/entries/)"),
    replace: bool = typer.Option(False, "--replace", help="replace an existing entry with the same identity"),
) -> None:
    """Validate a result record and copy it into leaderboard/entries/ under its canonical name."""
    try:
        target, replaced = submit(result, entries or default_entries_dir(), replace=replace)
    except MchError as exc:
        _fail(exc)
    typer.echo(f"added {_relpath(target)}" + (f" (replaced {_relpath(replaced)})" if replaced else ""))
