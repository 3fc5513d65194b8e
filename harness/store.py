"""The representation store: pooled vectors on disk, resumable, read memory-mapped.

Layout of one entry (one store key):

    <root>/<model>/<key-hash>/
        manifest.json          the key, the sample ids, chunk size, stages and widths, state
        chunks/00003.npz       rows of samples [3*C, 4*C): one array per stage + `rows`
        <stage>.npy            after completion: every stage's (N_kept, D) float32 matrix
        rows.npy               which sample indices those N_kept rows are (skipped ones absent)
        cache/<hash>.npy       arrays analyses derived from the live model (GMI scores, ...)

A chunk is written to a temporary file and renamed, so a run killed at any moment leaves
only whole chunks; the next run computes the missing chunks and nothing else. Chunk
boundaries depend only on the sample index, so an interrupted-and-resumed run ends with the
same files as an uninterrupted one. Completed stages are read with `np.load(mmap_mode="r")`.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np

from .api import MchError
from .results import atomic_write_json, safe_name

STORE_FORMAT = 1


def default_root() -> Path:
    env = os.environ.get("MCH_STORE")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "mch" / "store"


def key_hash(key: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps({"format": STORE_FORMAT, **key}, sort_keys=True, default=str)
                          .encode()).hexdigest()[:20]


def _atomic_save_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".npz")
    os.close(fd)
    try:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _atomic_save_npy(path: Path, array: np.ndarray) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".npy")
    os.close(fd)
    try:
        with open(tmp, "wb") as f:
            np.save(f, array)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


class Entry:
    """One store key's directory."""

    def __init__(self, root: Path, key: dict[str, Any], sample_ids: list[str], chunk_size: int):
        self.key = key
        self.hash = key_hash(key)
        self.dir = Path(root) / safe_name(str(key.get("model", {}).get("name", "model"))) / self.hash
        self.sample_ids = list(sample_ids)
        self.manifest_path = self.dir / "manifest.json"
        if self.manifest_path.exists():
            man = self.manifest()
            if man["sample_ids"] != self.sample_ids:
                raise MchError(f"store entry {self.dir} holds other samples than this run (corrupt store?); "
                               f"delete that directory to re-extract")
            self.chunk_size = int(man["chunk_size"])
        else:
            self.chunk_size = int(chunk_size)
            self.dir.mkdir(parents=True, exist_ok=True)
            atomic_write_json(self.manifest_path, {"format": STORE_FORMAT, "key": key, "key_hash": self.hash,
                                                   "chunk_size": self.chunk_size, "sample_ids": self.sample_ids,
                                                   "complete": False})

    # -- state
    def manifest(self) -> dict[str, Any]:
        return json.loads(self.manifest_path.read_text())

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
    def write_chunk(self, i: int, rows: list[int], stages: dict[str, np.ndarray],
                    skipped: list[dict[str, Any]]) -> None:
        arrays = {f"stage:{k}": np.ascontiguousarray(v, dtype=np.float32) for k, v in stages.items()}
        arrays["rows"] = np.asarray(rows, dtype=np.int64)
        arrays["skipped"] = np.frombuffer(json.dumps(skipped).encode(), dtype=np.uint8)
        _atomic_save_npz(self.chunk_path(i), arrays)

    def finalize(self, info: dict[str, Any]) -> None:
        """Join the chunks into one memory-mappable matrix per stage and mark the entry complete."""
        if self.missing_chunks():
            raise MchError(f"store entry {self.dir}: cannot finalize, chunks {self.missing_chunks()} are missing")
        parts: dict[str, list[np.ndarray]] = {}
        rows: list[np.ndarray] = []
        skipped: list[dict[str, Any]] = []
        for i in range(self.n_chunks):
            with np.load(self.chunk_path(i)) as z:
                rows.append(z["rows"])
                skipped += json.loads(bytes(z["skipped"]).decode() or "[]")
                for name in z.files:
                    if name.startswith("stage:"):
                        parts.setdefault(name[6:], []).append(z[name])
        if not parts or sum(len(r) for r in rows) == 0:
            raise MchError("every sample was skipped: nothing was extracted")
        for stage, arrs in parts.items():
            _atomic_save_npy(self.dir / f"{safe_name(stage)}.npy", np.concatenate(arrs))
        _atomic_save_npy(self.dir / "rows.npy", np.concatenate(rows))
        man = self.manifest()
        man.update(complete=True, stages=list(parts), dims={k: int(v[0].shape[1]) for k, v in parts.items()},
                   n_rows=int(sum(len(r) for r in rows)), skipped=skipped, info=info)
        atomic_write_json(self.manifest_path, man)
        shutil.rmtree(self.dir / "chunks", ignore_errors=True)

    # -- reading
    def read(self) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """({stage: (N_kept, D) read-only memmap}, row indices into this entry's sample list)."""
        man = self.manifest()
        if not man.get("complete"):
            raise MchError(f"store entry {self.dir} is not complete; run `mch extract` (or `mch bench`) first")
        reps = {s: np.load(self.dir / f"{safe_name(s)}.npy", mmap_mode="r") for s in man["stages"]}
        return reps, np.load(self.dir / "rows.npy")

    # -- arrays derived from the live model
    def cached(self, name: str, key: dict[str, Any], compute: Callable[[], np.ndarray]) -> np.ndarray:
        h = key_hash({"name": name, **key})
        path = self.dir / "cache" / f"{safe_name(name)}-{h}.npy"
        if path.exists():
            return np.load(path)
        arr = np.asarray(compute())
        path.parent.mkdir(parents=True, exist_ok=True)
        _atomic_save_npy(path, arr)
        atomic_write_json(path.with_suffix(".json"), {"name": name, "key": key})
        return arr


class Store:
    def __init__(self, root: Path | str | None = None):
        self.root = Path(root) if root else default_root()

    def entry(self, key: dict[str, Any], sample_ids: Iterable[str], chunk_size: int = 256) -> Entry:
        return Entry(self.root, key, list(sample_ids), chunk_size)
