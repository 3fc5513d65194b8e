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
import json
import os
import shutil
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np

from .api import MchError
from .fsio import is_locked, locked
from .results import safe_name

# one entry's directory is mch.store_entry's; its names are still found here
from .store_entry import _BROKEN, STORE_FIX, STORE_FORMAT, Entry, _why, key_hash  # noqa: F401


def default_root() -> Path:
    env = os.environ.get("MCH_STORE")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "mch" / "store"


class Store:
    def __init__(self, root: Path | str | None = None):
        self.root = Path(root).expanduser() if root else default_root()
        if self.root.exists() and not self.root.is_dir():  # else list/rm/analyze say "no entries"
            raise MchError(f"the representation store {self.root} is a file, not a directory; {STORE_FIX}")

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

    def __init__(self, entry: Entry, stages: Iterable[str] | None = None) -> None:
        reps, rows = entry.read()
        if stages:  # a stage subset read from an entry that holds more (mch.run_entry)
            reps = {s: reps[s] for s in stages if s in reps}
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
