"""One store entry (one store key's directory): created and locked while a run fills it, chunk
by chunk, finalized into memory-mappable matrices, read back; the labels beside the vectors
and the arrays analyses derive from the live model. The layout is mch.store's docstring.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import shutil
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from .api import MchError
from .fsio import LockBusy, atomic_write, atomic_write_json, ensure_writable_dir, locked
from .results import safe_name

STORE_FORMAT = 1
STORE_FIX = "set MCH_STORE (or pass --store) to a writable directory"
_BROKEN = (OSError, ValueError, EOFError, KeyError, TypeError, zipfile.BadZipFile)


def key_hash(key: dict[str, Any]) -> str:
    return hashlib.sha256(
        json.dumps({"format": STORE_FORMAT, **key}, sort_keys=True, default=str).encode()
    ).hexdigest()[:20]


def _save_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    # numpy's type annotations let the **kwds fill savez's allow_pickle: bool; ours are arrays named by stage
    atomic_write(path, lambda f: np.savez(f, **arrays))  # type: ignore[arg-type]


def _save_npy(path: Path, array: np.ndarray) -> None:
    atomic_write(path, lambda f: np.save(f, array))


def _why(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


class Entry:
    """One store key's directory. Creating the object writes nothing; `writing()` creates the
    directory and holds the entry's lock while a run fills it."""

    def __init__(self, root: Path, key: dict[str, Any], sample_ids: list[str], chunk_size: int):
        self.root = Path(root)
        self.key = key
        self.hash = key_hash(key)
        self.dir = self.root / safe_name(str(key.get("model", {}).get("name", "model"))) / self.hash
        self.sample_ids = list(sample_ids)
        self.manifest_path = self.dir / "manifest.json"
        self.lock_path = self.dir / "lock"
        self.log: Callable[[str], None] = lambda s: None  # where "waiting for pid N" goes
        self.reused_for: str | None = None  # the key hash of a stage subset read from this entry (mch.run_entry)
        self.chunk_size = int(chunk_size)
        if self.manifest_path.exists():
            self._adopt(self.manifest())

    def _adopt(self, man: dict[str, Any]) -> None:
        if man["sample_ids"] != self.sample_ids:
            raise self.broken("it holds other samples than this run")
        self.chunk_size = int(man["chunk_size"])

    def broken(self, what: str) -> MchError:
        """One sentence for a damaged entry: which one, what is wrong, and the fix."""
        return MchError(
            f"store entry {self.hash} ({self.dir}) is damaged: {what}; `mch store rm {self.hash}` "
            f"removes it and the next run extracts it again"
        )

    # -- state
    def manifest(self) -> dict[str, Any]:
        try:
            man = json.loads(self.manifest_path.read_text())
            if not isinstance(man, dict) or not isinstance(man["sample_ids"], list):
                raise ValueError("not an mch manifest")
            int(man["chunk_size"])
        except _BROKEN as exc:
            raise self.broken(f"its manifest.json cannot be read ({_why(exc)})") from None
        return man

    @property
    def complete(self) -> bool:
        return self.manifest_path.exists() and bool(self.manifest().get("complete"))

    @property
    def n_chunks(self) -> int:
        return -(-len(self.sample_ids) // self.chunk_size)

    def chunk_path(self, i: int) -> Path:
        return self.dir / "chunks" / f"{i:05d}.npz"

    def chunk_range(self, i: int) -> range:
        return range(i * self.chunk_size, min((i + 1) * self.chunk_size, len(self.sample_ids)))

    def missing_chunks(self) -> list[int]:
        return [i for i in range(self.n_chunks) if not self.chunk_path(i).exists()]

    # -- writing
    @contextlib.contextmanager
    def writing(self) -> Iterator[Entry]:
        """Create the entry (checking first that the store is writable) and hold its lock for
        the block: a second process on the same key waits here (or, with MCH_STORE_WAIT=0,
        stops at once), then finds the entry complete. Inside, the manifest exists."""
        ensure_writable_dir(self.root, "representation store", STORE_FIX)
        ensure_writable_dir(self.dir, "representation store entry directory", STORE_FIX)
        with locked(self.lock_path, f"store entry {self.hash} ({self.dir})", self.log):
            if self.manifest_path.exists():  # perhaps written by the process we waited for
                self._adopt(self.manifest())
            else:
                atomic_write_json(
                    self.manifest_path,
                    {
                        "format": STORE_FORMAT,
                        "key": self.key,
                        "key_hash": self.hash,
                        "chunk_size": self.chunk_size,
                        "sample_ids": self.sample_ids,
                        "complete": False,
                    },
                )
            yield self

    def write_chunk(
        self, i: int, rows: list[int], stages: dict[str, np.ndarray], skipped: list[dict[str, Any]]
    ) -> None:
        arrays = {f"stage:{k}": np.ascontiguousarray(v, dtype=np.float32) for k, v in stages.items()}
        arrays["rows"] = np.asarray(rows, dtype=np.int64)
        arrays["skipped"] = np.frombuffer(json.dumps(skipped).encode(), dtype=np.uint8)
        _save_npz(self.chunk_path(i), arrays)

    def finalize(self, info: dict[str, Any]) -> None:
        """Join the chunks into one memory-mappable matrix per stage and mark the entry complete."""
        if self.missing_chunks():
            raise MchError(f"store entry {self.dir}: cannot finalize, chunks {self.missing_chunks()} are missing")
        parts: dict[str, list[np.ndarray]] = {}
        rows: list[np.ndarray] = []
        skipped: list[dict[str, Any]] = []
        for i in range(self.n_chunks):
            try:
                with np.load(self.chunk_path(i)) as z:
                    rows.append(z["rows"])
                    skipped += json.loads(bytes(z["skipped"]).decode() or "[]")
                    for name in z.files:
                        if name.startswith("stage:"):
                            parts.setdefault(name[6:], []).append(z[name])
            except _BROKEN as exc:
                raise self.broken(f"chunk {self.chunk_path(i).name} cannot be read ({_why(exc)})") from None
        if not parts or sum(len(r) for r in rows) == 0:
            raise MchError("every sample was skipped: nothing was extracted")
        for stage, arrs in parts.items():
            _save_npy(self.dir / f"{safe_name(stage)}.npy", np.concatenate(arrs))
        _save_npy(self.dir / "rows.npy", np.concatenate(rows))
        man = self.manifest()
        man.update(
            complete=True,
            stages=list(parts),
            dims={k: int(v[0].shape[1]) for k, v in parts.items()},
            n_rows=int(sum(len(r) for r in rows)),
            skipped=skipped,
            info=info,
        )
        atomic_write_json(self.manifest_path, man)
        shutil.rmtree(self.dir / "chunks", ignore_errors=True)

    # -- reading
    def read(self) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """({stage: (N_kept, D) read-only memmap}, row indices into this entry's sample list)."""
        man = self.manifest()
        if not man.get("complete"):
            raise MchError(f"store entry {self.dir} is not complete; run `mch extract` (or `mch bench`) first")
        reps = {}
        for name in [*man["stages"], "rows"]:
            f = self.dir / f"{safe_name(name)}.npy"
            try:
                arr = np.load(f, mmap_mode="r")
            except _BROKEN as exc:
                raise self.broken(f"{f.name} is truncated or unreadable ({_why(exc)})") from None
            if arr.ndim < 1 or arr.shape[0] != man.get("n_rows", arr.shape[0]):
                raise self.broken(
                    f"{f.name} has {arr.shape[0] if arr.ndim else 0} rows, its manifest says {man.get('n_rows')}"
                )
            reps[name] = arr
        rows = np.asarray(reps.pop("rows"))
        return reps, rows

    # -- the samples' labels (written by the runner, or by `mch import-reference`)
    @property
    def labels_path(self) -> Path:
        return self.dir / "labels.json"

    def write_labels(self, info: dict[str, Any]) -> None:
        """Record what the samples of this entry are labelled with: `info` holds
        {"labels": {attribute: [class per sample]}, "groups": {...}, "texts": [...]}, each list
        in the order of the entry's sample ids. Attributes already recorded are kept (a run
        on a subset of the attributes adds to them, never removes)."""
        old = self.read_labels() or {}
        merged: dict[str, Any] = {"sample_ids": self.sample_ids}
        for part in ("labels", "groups", "columns"):
            both = {**(old.get(part) or {}), **(info.get(part) or {})}
            if both:
                merged[part] = both
        for part in ("texts", "protocol", "source"):
            if info.get(part) is not None or old.get(part) is not None:
                merged[part] = info.get(part) if info.get(part) is not None else old.get(part)
        for part in ("labels", "groups", "columns"):
            for name, vals in (merged.get(part) or {}).items():
                if len(vals) != len(self.sample_ids):
                    raise MchError(
                        f"store entry {self.hash}: {part} {name!r} has {len(vals)} values for "
                        f"{len(self.sample_ids)} samples"
                    )
        atomic_write_json(self.labels_path, merged)

    def read_labels(self) -> dict[str, Any] | None:
        """What `write_labels` recorded, or None (an entry extracted before labels were kept)."""
        try:
            data = json.loads(self.labels_path.read_text())
        except (OSError, ValueError):
            return None
        if not isinstance(data, dict) or data.get("sample_ids") != self.sample_ids:
            return None
        return data

    # -- arrays derived from the live model
    def cached(self, name: str, key: dict[str, Any], compute: Callable[[], np.ndarray]) -> np.ndarray:
        """The array stored under (name, key), or `compute()` stored and returned. Two processes
        asking for the same array compute it once (the second waits for the first). A damaged
        cache file is computed again; a read-only store still returns the array, uncached."""
        h = key_hash({"name": name, **key})
        path = self.dir / "cache" / f"{safe_name(name)}-{h}.npy"
        arr = _load_or_none(path)
        if arr is not None:
            return arr
        stack = contextlib.ExitStack()
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            stack.enter_context(locked(path.with_suffix(".lock"), f"{name} in store entry {self.hash}", self.log))
        except LockBusy:
            raise
        except (OSError, MchError):
            self.log(f"the store is not writable here: {name} is computed but not cached")
            return np.asarray(compute())
        with stack:
            arr = _load_or_none(path)  # written by the process we waited for?
            if arr is None:
                arr = np.asarray(compute())
                _save_npy(path, arr)
                atomic_write_json(path.with_suffix(".json"), {"name": name, "key": key})
        return arr


def _load_or_none(path: Path) -> np.ndarray | None:
    if not path.exists():
        return None
    try:
        return np.load(path)
    except _BROKEN:
        return None
