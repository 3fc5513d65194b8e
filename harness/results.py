"""Result records: provenance, JSON Schema validation, atomic writes, reading back.

One record per (model, dataset, analysis) run. It is validated against
`schemas/result.schema.json` *before* it is written, and written atomically (temp file +
rename), so a results directory never holds a half-written or invalid record.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import itertools
import json
import math
import platform
import re
import subprocess
from collections.abc import Iterable
from functools import cache
from importlib import metadata
from pathlib import Path
from typing import Any

from .api import MchError
from .fsio import atomic_write_json  # the one atomic writer (leaderboard, site import it here)

SCHEMA_DIR = Path(__file__).parent / "schemas"
SCHEMA_VERSION = 1


@cache
def load_schema(name: str) -> dict:
    return json.loads((SCHEMA_DIR / f"{name}.schema.json").read_text())


def schema_errors(record: Any, schema: str = "result") -> list[str]:
    """All schema violations, each as 'path: message', first one first."""
    import jsonschema

    validator = jsonschema.Draft202012Validator(load_schema(schema))
    errs = sorted(validator.iter_errors(record), key=lambda e: list(e.absolute_path))
    return [f"{'/'.join(str(p) for p in e.absolute_path) or '(top level)'}: {e.message}" for e in errs]


def validate(record: Any, schema: str = "result", what: str = "result record") -> None:
    errs = schema_errors(record, schema)
    if errs:
        raise MchError(f"{what} is not valid: {errs[0]}")


def mch_version() -> str:
    try:
        return metadata.version("mch")
    except metadata.PackageNotFoundError:  # running from a source tree
        return "0+unknown"


@cache
def git_hash() -> str | None:
    root = Path(__file__).resolve().parent.parent
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=5)
        if out.returncode == 0:
            dirty = subprocess.run(
                ["git", "status", "--porcelain", "--untracked-files=no"],
                cwd=root,
                capture_output=True,
                text=True,
                timeout=5,
            ).stdout.strip()
            return out.stdout.strip() + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        pass
    return None


def versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {"python": platform.python_version()}
    for pkg in ("torch", "transformers", "peft", "numpy", "scikit-learn", "POT"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = None
    return out


def config_hash(config: dict) -> str:
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:16]


def sample_ids_hash(ids: Iterable[str]) -> str:
    h = hashlib.sha256()
    for i in ids:
        h.update(str(i).encode())
        h.update(b"\0")
    return h.hexdigest()


def _clean(x: Any) -> Any:
    """JSON-safe numbers: numpy scalars to Python, NaN/inf to None."""
    if isinstance(x, dict):
        return {str(k): _clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_clean(v) for v in x]
    if hasattr(x, "item") and callable(x.item) and getattr(x, "shape", None) == ():
        x = x.item()
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if hasattr(x, "tolist"):
        return _clean(x.tolist())
    return x


def now_iso() -> str:
    return _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat()


def build_record(**fields: Any) -> dict:
    rec = {
        "schema_version": SCHEMA_VERSION,
        "kind": "measured",
        "mch_version": mch_version(),
        "created_at": now_iso(),
        "provenance": {"git_hash": git_hash(), "versions": versions()},
    }
    rec.update(fields)
    return _clean(rec)


def safe_name(s: str) -> str:
    """A file-name part: letters, digits, '-', '_' and '.' kept, anything else '_'; never
    empty and never starting with '.' (a dotfile, which readers of a directory skip)."""
    out = "".join(c if c.isalnum() or c in "-_." else "_" for c in str(s))
    stripped = out.lstrip(".")
    return "_" * (len(out) - len(stripped)) + stripped or "_"


def write_record(record: dict, out_dir: Path) -> Path:
    validate(record)
    stamp = record["created_at"].replace(":", "").replace("-", "")[:15]
    name = "__".join(
        safe_name(x)
        for x in (
            record["model"]["name"],
            record["dataset"]["name"],
            record["analysis"]["name"],
            record["protocol"],
            stamp,
        )
    )
    for k in itertools.count():  # records of one second: name, name-1, ...; never over another's
        path = Path(out_dir) / (f"{name}.json" if k == 0 else f"{name}-{k}.json")
        if path.exists():
            continue
        try:
            atomic_write_json(path, record, replace=False)
        except FileExistsError:  # another process took this name between the check and the link
            continue
        return path
    raise AssertionError("unreachable")


def recency(record: dict, path: Path | str) -> tuple[str, int, str]:
    """The order of records by age: `created_at` (whole seconds), then the writing order within
    a second (name.json before name-1.json, name-2.json, ...: the names' own sort says the
    opposite), then the name."""
    stem = Path(path).stem
    m = re.fullmatch(r".*__\d{8}T\d{6}-(\d+)", stem)
    return (record.get("created_at") or "", int(m.group(1)) if m else 0, Path(path).name)


def read_records(paths: Iterable[Path]) -> list[tuple[Path, dict]]:
    """Every valid record under the given files/directories; invalid ones are skipped with
    their reason collected in the second list."""
    out = []
    for p in paths:
        p = Path(p)
        files = sorted(p.rglob("*.json")) if p.is_dir() else ([p] if p.exists() else [])
        for f in files:
            try:
                rec = json.loads(f.read_text())
            except (OSError, json.JSONDecodeError):
                continue
            if isinstance(rec, dict) and rec.get("schema_version") == SCHEMA_VERSION and not schema_errors(rec):
                out.append((f, rec))
    return out
