"""The reference implementation's HDF5 files: what one holds (`read_file`, vectors read on
demand) and writing one in its layout (`write_reference_file`). The layout is mch.reference's
docstring; importing into the store is mch.reference's.

Light: h5py (`mch[hdf5]`) and numpy are imported inside the functions that need them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .api import MchError, stage_sort_key
from .reference_layout import reference_name, stage_of


def _h5py() -> Any:
    from .extras import need

    return need("h5py", "reading and writing the reference's HDF5 files")


def _strings(ds: Any) -> list[str]:
    return [x.decode("utf-8", "replace") if isinstance(x, bytes) else str(x) for x in ds[()]]


@dataclass
class RefFile:
    """What one reference HDF5 file holds (vectors are read when `read_stage` is called)."""

    path: Path
    n: int  # rows the reference's scripts read (n_samples)
    written: int  # rows actually written (n_samples_actual, else n)
    stages: dict[str, str]  # mch stage -> dataset name
    sample_ids: list[str] | None
    columns: dict[str, list[str]]  # label columns (and `text`), cut to n rows
    attrs: dict[str, Any]
    ignored: list[str] = field(default_factory=list)

    def read_stage(self, stage: str) -> Any:
        import numpy as np

        with _h5py().File(self.path, "r") as f:
            return np.asarray(f[self.stages[stage]][: self.n], dtype=np.float32)


def read_file(path: str | Path, what: str) -> RefFile:
    """The layout of a reference HDF5 file; one sentence when it is not one."""
    h5py = _h5py()
    p = Path(path).expanduser()
    if not p.is_file():
        raise MchError(f"{what} {p} does not exist")
    try:
        f = h5py.File(p, "r")
    except OSError as exc:
        raise MchError(f"{what} {p} is not an HDF5 file ({str(exc).splitlines()[0]})") from None
    with f:
        attrs = {k: (v.item() if hasattr(v, "item") else v) for k, v in f.attrs.items()}
        attrs = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in attrs.items()}
        stages: dict[str, str] = {}
        strings: dict[str, Any] = {}
        ignored = []
        for name, ds in f.items():
            if not isinstance(ds, h5py.Dataset):
                ignored.append(f"{name} (a group)")
                continue
            st = stage_of(name)
            if st is not None and ds.ndim == 2 and ds.dtype.kind == "f":
                stages[st] = name
            elif ds.ndim == 1 and (ds.dtype.kind in ("S", "O", "U") or h5py.check_string_dtype(ds.dtype)):
                strings[name] = ds
            else:
                ignored.append(f"{name} (shape {ds.shape}, {ds.dtype})")
        if not stages:
            raise MchError(
                f"{what} {p} holds none of the reference's vector datasets (encoder_output, "
                f"adapter_output, llm_hidden_N, llm_final); it has {', '.join(f) or 'nothing'}"
            )
        rows = {f[name].shape[0] for name in stages.values()}
        if len(rows) != 1:
            raise MchError(
                f"{what} {p}: its vector datasets have different row counts "
                f"({', '.join(f'{n}: {f[n].shape[0]}' for n in stages.values())})"
            )
        n_rows = rows.pop()
        n = int(attrs.get("n_samples", n_rows))  # script 03 cuts every dataset to n_samples
        if n > n_rows:
            raise MchError(f"{what} {p}: attribute n_samples = {n} but the vectors have {n_rows} rows")
        written = min(n, int(attrs.get("n_samples_actual", n)))
        columns = {}
        for name, ds in strings.items():
            if ds.shape[0] < n:
                raise MchError(f"{what} {p}: dataset {name!r} has {ds.shape[0]} rows, the vectors {n}")
            columns[name] = _strings(ds)[:n]
        ids = columns.pop("sample_ids", None)
    return RefFile(
        p, n, written, dict(sorted(stages.items(), key=lambda kv: stage_sort_key(kv[0]))), ids, columns, attrs, ignored
    )


def write_reference_file(
    out: Path, vectors: dict[str, Any], sample_ids: list[str], columns: dict[str, list[str]], attrs: dict[str, Any]
) -> Path:
    """One HDF5 file in the reference's layout (what `read_file` reads back)."""
    import os

    import numpy as np

    h5py = _h5py()
    out = Path(out).expanduser()
    out.parent.mkdir(parents=True, exist_ok=True)
    strdt = h5py.string_dtype(encoding="utf-8")
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    try:
        with h5py.File(tmp, "w") as h:
            for stage, arr in vectors.items():
                h.create_dataset(reference_name(stage), data=np.asarray(arr, dtype=np.float32))
            h.create_dataset("sample_ids", data=np.asarray(sample_ids, dtype=object), dtype=strdt)
            for name, vals in columns.items():
                h.create_dataset(name, data=np.asarray(vals, dtype=object), dtype=strdt)
            for k, v in attrs.items():
                h.attrs[k] = v
        os.replace(tmp, out)  # whole or not at all
    finally:
        if tmp.exists():
            tmp.unlink()
    return out
