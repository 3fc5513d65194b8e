"""Leaderboard entries on disk: reading result records, validating one, submitting it.

Result records (measured by mch, or `"kind": "reported"` numbers published elsewhere, entered
with `provenance.source`) are the leaderboard's source of truth. `load_records` reads every
valid one under some directories (with one warning per record-like file that is not valid),
`check_entry` validates one file naming its first offending field, and `submit` copies it into
`leaderboard/entries/` under its canonical name. `mch.leaderboard` turns records into rows.

Light on purpose: no torch, no numpy, no UI.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .api import MchError
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


def relpath(p: Path) -> str:
    """`p` relative to the working directory, else to the repository, else as it is."""
    try:
        return str(p.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        try:
            return str(p.resolve().relative_to(REPO_ROOT))
        except ValueError:
            return str(p)


def checkpoint_identity(rec: dict) -> tuple:
    """What makes two records measure the same weights: checkpoint (path or HF id), revision,
    adapter, the checkpoint's fingerprint when the record has one, and whether it is a smoke
    run. Part of every row's identity: different weights never share a row."""
    m = rec["model"]
    fp = m.get("checkpoint_fingerprint")
    if fp is not None and not isinstance(fp, str):
        fp = json.dumps(fp, sort_keys=True, default=str)
    return (m.get("checkpoint"), m.get("revision"), m.get("adapter"), fp, bool(m.get("smoke")))


def measurement_key(rec: dict) -> tuple:
    """(model, dataset, protocol, weights, samples, stages and span asked): records with the
    same key measure the same thing, so the newest one stands for it (the leaderboard's rows,
    the Python API's table). The samples are part of it: a --limit run or another split is
    another measurement; so are a --stage subset (it must not hide a run of every stage) and
    a --span (other tokens pooled). A run that asked neither has None there."""
    samples = rec["dataset"].get("sample_ids_sha256") or rec["dataset"].get("n")
    run = rec.get("run_config") or {}
    stages, span = run.get("stages"), run.get("span")  # --stage, --span as asked (None: not asked)
    return (
        rec["model"]["name"],
        rec["dataset"]["name"],
        rec["protocol"],
        checkpoint_identity(rec),
        samples,
        (tuple(sorted(stages)) if stages else None, span) if stages or span else None,
    )


# --------------------------------------------------------------------------- submit


def entry_key(rec: dict) -> tuple:
    """Duplicate identity of a leaderboard entry: (kind, model, revision, dataset, protocol,
    analysis, checkpoint identity). `kind` is part of it so a measured run never replaces a
    reported number; the checkpoint so one checkpoint's run never replaces another's."""
    return (
        rec["kind"],
        rec["model"]["name"],
        rec["model"].get("revision"),
        rec["dataset"]["name"],
        rec["protocol"],
        rec["analysis"]["name"],
        checkpoint_identity(rec),
    )


def canonical_name(rec: dict) -> str:
    kind, model, revision, dataset, protocol, analysis, _ = entry_key(rec)
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
    if rec["model"].get("smoke"):
        raise MchError(
            f"{path} is a smoke run on a random-weight checkpoint (model.smoke): it measures no model, "
            f"so it is not a leaderboard entry"
        )
    key = entry_key(rec)
    entries_dir = Path(entries_dir)
    existing, _ = load_records([entries_dir]) if entries_dir.is_dir() else ([], [])
    dupes = [e for e in existing if entry_key(e.record) == key]
    if dupes and not replace:
        raise MchError(
            f"{path} duplicates {relpath(dupes[0].path)} (same kind, model, checkpoint, revision, "
            f"dataset, protocol and analysis); pass --replace to replace it"
        )
    target = entries_dir / canonical_name(rec)
    if target.exists() and not any(d.path.resolve() == target.resolve() for d in dupes):
        # Same canonical name from a different key (names are sanitised): keep both.
        h = hashlib.sha256(json.dumps(key, default=str).encode()).hexdigest()[:8]
        target = target.with_name(f"{target.stem}-{h}.json")
    atomic_write_json(target, rec)
    if not load_records([target])[0]:  # what `mch leaderboard` reads, or submit must not say "added"
        target.unlink()
        raise MchError(f"{path}: the entry written as {target.name} would not be read back; not added")
    for d in dupes:
        if d.path.resolve() != target.resolve():
            d.path.unlink()
    return target, (dupes[0].path if dupes else None)
