"""The representation store: pooled vectors on disk, resumable, read memory-mapped.

Layout of one entry (one store key):

    <root>/<model>/<key-hash>/
        manifest.json          the key, the sample ids, chunk size, stages and widths, state
        chunks/00003.npz       rows of samples [3*C, 4*C): one array per stage + `rows`
        <stage>.npy            after completion: every stage's (N_kept, D) float32 matrix
        rows.npy               which sample indices those N_kept rows are (skipped ones absent)
        cache/<name>-<hash>.npy  arrays analyses derived from the live model (GMI scores, ...)
        lock, cache/*.lock     flock(2) files: one writer per entry (and per cached array)

The key holds what the vectors depend on, fingerprints of the checkpoint's files and of each
sample's media included (mch.fingerprint), so changed weights or inputs get a new entry.

A chunk is written to a temporary file and renamed, so a run killed at any moment leaves
only whole chunks; the next run computes the missing chunks and nothing else. Chunk
boundaries depend only on the sample index, so an interrupted-and-resumed run ends with the
same files as an uninterrupted one. Completed stages are read with `np.load(mmap_mode="r")`.
A process that finds another one writing its entry waits for it and then reuses the entry.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import time
import zipfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from .api import MchError
from .fsio import LockBusy, atomic_write, atomic_write_json, ensure_writable_dir, is_locked, locked
from .results import safe_name

STORE_FORMAT = 1
STORE_FIX = "set MCH_STORE (or pass --store) to a writable directory"
_BROKEN = (OSError, ValueError, EOFError, KeyError, TypeError, zipfile.BadZipFile)


def default_root() -> Path:
    env = os.environ.get("MCH_STORE")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "mch" / "store"


def key_hash(key: dict[str, Any]) -> str:
    return hashlib.sha256(
        json.dumps({"format": STORE_FORMAT, **key}, sort_keys=True, default=str).encode()
    ).hexdigest()[:20]


def _save_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    # numpy's stub lets the **kwds fill savez's allow_pickle: bool; ours are arrays named by stage
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


class Store:
    def __init__(self, root: Path | str | None = None):
        self.root = Path(root).expanduser() if root else default_root()

    def find(self, key: str) -> Path:
        """The entry directory whose key hash is `key` or starts with it (as `mch store list`
        shows the keys); one sentence when there is none or several."""
        dirs = self.entry_dirs()
        hits = [d for d in dirs if key and d.name.startswith(key)]
        if not hits:
            raise MchError(f"the store {self.root} has no entry {key!r}; `mch store list` shows the keys")
        if len(hits) > 1:
            raise MchError(
                f"{key!r} is the start of {len(hits)} store entries "
                f"({', '.join(d.name for d in hits)}); give more of the key"
            )
        return hits[0]

    def open(self, d: Path) -> Entry:
        """The entry in directory `d`, as its manifest describes it."""
        man_path = Path(d) / "manifest.json"
        try:
            man = json.loads(man_path.read_text())
            return Entry(self.root, man["key"], man["sample_ids"], int(man["chunk_size"]))
        except _BROKEN as exc:
            raise MchError(
                f"store entry {Path(d).name} ({d}) cannot be read ({_why(exc)}); `mch store rm "
                f"{Path(d).name}` removes it"
            ) from None

    def entry(self, key: dict[str, Any], sample_ids: Iterable[str], chunk_size: int = 256) -> Entry:
        return Entry(self.root, key, list(sample_ids), chunk_size)

    def entry_dirs(self) -> list[Path]:
        """Every entry directory (<root>/<model>/<key hash>), complete or not."""
        if not self.root.is_dir():
            return []
        return sorted(
            d
            for m in self.root.iterdir()
            if m.is_dir() and not m.name.startswith(".")
            for d in m.iterdir()
            if d.is_dir() and not d.name.startswith(".")
        )

    def complete_like(self, key: dict[str, Any], ignore: Callable[[dict[str, Any]], dict[str, Any]]) -> list[Path]:
        """Complete entries whose key equals `key` once `ignore` has removed what may differ."""
        want = json.dumps(ignore(json.loads(json.dumps(key, default=str))), sort_keys=True)
        model_dir = self.root / safe_name(str(key.get("model", {}).get("name", "model")))
        out = []
        for d in self.entry_dirs():
            if d.parent != model_dir:
                continue
            try:
                man = json.loads((d / "manifest.json").read_text())
                if man.get("complete") and json.dumps(ignore(man["key"]), sort_keys=True) == want:
                    out.append(d)
            except _BROKEN:
                continue
        return out

    def describe(self, d: Path) -> dict[str, Any]:
        """What `mch store list` shows of one entry directory."""
        files = [p for p in d.rglob("*") if p.is_file()]
        info: dict[str, Any] = {
            "key": d.name,
            "dir": str(d),
            "model": d.parent.name,
            "checkpoint": None,
            "checkpoint_fingerprint": None,
            "dataset": None,
            "split": None,
            "view": None,
            "n": None,
            "n_rows": None,
            "stages": [],
            "complete": False,
            "state": "empty",
            "size_bytes": sum(p.stat().st_size for p in files),
            "modified": time.strftime(
                "%Y-%m-%d %H:%M", time.localtime(max((p.stat().st_mtime for p in files), default=d.stat().st_mtime))
            ),
        }
        holder = is_locked(d / "lock")
        man_path = d / "manifest.json"
        if not man_path.exists():
            info["state"] = f"being written (pid {holder})" if holder else "empty"
            return info
        try:
            man = json.loads(man_path.read_text())
            key = man["key"]
            model, data = key.get("model", {}), key.get("dataset", {})
            info.update(
                model=model.get("name", d.parent.name),
                checkpoint=model.get("checkpoint"),
                checkpoint_fingerprint=model.get("checkpoint_fingerprint"),
                dataset=data.get("name"),
                split=data.get("split"),
                view=key.get("view"),
                n=len(man["sample_ids"]),
                complete=bool(man.get("complete")),
                n_rows=man.get("n_rows"),
                stages=man.get("stages", []),
            )
            if key.get("imported"):  # `mch import-reference`: the file the vectors came from
                info["imported_from"] = (man.get("info") or {}).get("imported_from")
            if info["complete"]:
                info["state"] = "complete"
            else:
                n_chunks = -(-info["n"] // int(man["chunk_size"]))
                done = len(list((d / "chunks").glob("*.npz")))
                info["state"] = (
                    f"being written (pid {holder})" if holder else "partial"
                ) + f", {done}/{n_chunks} chunks"
        except _BROKEN as exc:
            info["state"] = f"damaged manifest.json ({_why(exc)})"
        return info

    def remove(self, d: Path) -> None:
        """Delete one entry directory, unless a process is writing it (its lock is held)."""
        with locked(
            d / "lock",
            f"store entry {d.name} ({d})",
            wait=False,
            busy_hint="wait for it to finish or stop it, then remove the entry",
        ):
            shutil.rmtree(d)
        with contextlib.suppress(OSError):
            d.parent.rmdir()  # the model's directory, when this was its last entry


# --------------------------------------------------------------------------- reading from Python


class StoredVectors:
    """One store entry's vectors as numpy, read memory-mapped, with their samples.

    `vectors[stage]` (or `self[stage]`) is the (N, D) float32 matrix of `stage`; row i belongs
    to `sample_ids[i]`; `labels[attribute][i]` is its class ("" when unlabelled) and
    `groups[attribute][i]` its group, when the entry records them (`labels` is {} for an
    entry extracted before mch kept labels: run any analysis on it once to record them).
    `key` describes what the vectors depend on (model, checkpoint, dataset, view, span,
    protocol)."""

    def __init__(self, entry: Entry) -> None:
        reps, rows = entry.read()
        man = entry.manifest()
        self.entry = entry
        self.hash: str = entry.hash
        self.dir: Path = entry.dir
        self.key: dict[str, Any] = entry.key
        self.manifest: dict[str, Any] = man
        self.rows = rows
        self.vectors: dict[str, np.ndarray] = dict(reps)
        self.sample_ids: list[str] = [entry.sample_ids[int(i)] for i in rows]
        info = entry.read_labels() or {}
        take = lambda vals: np.asarray([vals[int(i)] for i in rows], dtype=object)  # noqa: E731
        self.labels: dict[str, np.ndarray] = {a: take(v) for a, v in (info.get("labels") or {}).items()}
        self.groups: dict[str, np.ndarray] = {a: take(v) for a, v in (info.get("groups") or {}).items()}
        self.columns: dict[str, np.ndarray] = {a: take(v) for a, v in (info.get("columns") or {}).items()}
        if not self.labels and self.columns:  # imported: the attributes read straight from their columns
            from .reference_layout import attribute_columns  # (lexical depends on the protocol's rule: not here)

            self.labels = {a: self.columns[c] for a, c in attribute_columns(info["columns"]).items() if a != "lexical"}
        self.texts: list[str] | None = [info["texts"][int(i)] for i in rows] if info.get("texts") else None
        self.skipped: list[dict[str, Any]] = man.get("skipped", [])

    @property
    def stages(self) -> list[str]:
        from .api import stage_sort_key

        return sorted(self.vectors, key=stage_sort_key)

    @property
    def model(self) -> str:
        return str(self.key.get("model", {}).get("name"))

    @property
    def dataset(self) -> str | None:
        return self.key.get("dataset", {}).get("name")

    @property
    def view(self) -> str | None:
        return self.key.get("view")

    def __getitem__(self, stage: str) -> np.ndarray:
        if stage not in self.vectors:
            raise MchError(f"store entry {self.hash} has no stage {stage!r}; it has {', '.join(self.stages)}")
        return self.vectors[stage]

    def __len__(self) -> int:
        return len(self.sample_ids)

    def __repr__(self) -> str:
        dims = ", ".join(f"{s}: {self.vectors[s].shape[1]}" for s in self.stages)
        return (
            f"<StoredVectors {self.hash} {self.model} on {self.dataset} ({self.view} view), {len(self)} samples, "
            f"stages {{{dims}}}, labels {sorted(self.labels) or 'not recorded'}>"
        )


def entries(
    root: Path | str | None = None, model: str | None = None, dataset: str | None = None, complete: bool = True
) -> list[dict[str, Any]]:
    """What the store holds, one dict per entry (what `mch store list --json` prints): key,
    model, dataset, view, n, stages, state ...; `load(info["key"])` opens one."""
    st = Store(root)
    out = [st.describe(d) for d in st.entry_dirs()]
    return [
        i
        for i in out
        if (model is None or i["model"] == model)
        and (dataset is None or i["dataset"] == dataset)
        and (not complete or i["complete"])
    ]


def load(key: str, root: Path | str | None = None) -> StoredVectors:
    """The complete store entry whose key is `key` (or starts with it), memory-mapped."""
    st = Store(root)
    return StoredVectors(st.open(st.find(key)))
