"""`mch export`, `mch export-store` and `mch import-reference`: mch's numbers and vectors in and
out of other tools, and `--config` for bench/extract/analyze (`apply_config`).

Light: typer only at import; numpy, h5py, pyarrow, safetensors when a command runs.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer
from rich.console import Console

from .api import MchError
from .cli_options import STORE

console = Console()
err_console = Console(stderr=True)


# command-line parameter -> RunConfig field
FLAG_FIELDS = {
    "model": "model",
    "dataset": "dataset",
    "analysis": "analyses",
    "attribute": "attributes",
    "checkpoint": "checkpoint",
    "revision": "revision",
    "adapter": "adapter",
    "data_path": "data_path",
    "split": "split",
    "limit": "limit",
    "seed": "seed",
    "device": "device",
    "dtype": "dtype",
    "protocol": "protocol",
    "span": "span",
    "stage": "stages",
    "batch_size": "batch_size",
    "out": "out_dir",
    "store": "store",
    "on_error": "on_error",
    "param": "params",
    "trust_remote_code": "trust_remote_code",
    "model_option": "model_options",
    "data_option": "dataset_options",
    "text_checkpoint": "text_checkpoint",
    "text_revision": "text_revision",
    "device_map": "device_map",
    "max_memory": "max_memory",
}


def _given(ctx: Any, name: str) -> bool:
    try:
        src = ctx.get_parameter_source(name)
    except Exception:  # noqa: BLE001 - an unknown parameter of this command
        return False
    return src is not None and getattr(src, "name", "") in ("COMMANDLINE", "ENVIRONMENT", "PROMPT")


def apply_config(ctx: Any, path: Path | None, cfg: Any, skip: tuple[str, ...] = ()) -> Any:
    """`cfg` (built from the flags) with the run config at `path` filling every flag that was
    not given on the command line; dict-valued settings merge key by key, the flag winning."""
    if path is None:
        return cfg
    from .configs import load_config, merge, run_config_fields

    fields = run_config_fields(load_config(path))
    params = ctx.params if ctx is not None else {}
    for flag, field in FLAG_FIELDS.items():
        if field not in fields or field in skip or flag not in params:
            continue
        if _given(ctx, flag):
            if field in ("params", "model_options", "dataset_options") and isinstance(fields[field], dict):
                setattr(cfg, field, merge(fields[field], getattr(cfg, field), nested=(field == "params")))
            continue
        setattr(cfg, field, fields[field])
    return cfg


def mount(app: typer.Typer) -> None:
    app.command("export")(export)
    app.command("export-store")(export_store)
    app.command("import-reference")(import_reference)


# --------------------------------------------------------------------------- export


def export(
    paths: list[Path] = typer.Argument(..., help="results directories or record files"),
    fmt: str = typer.Option("csv", "--format", "-f", help="csv, parquet or jsonl"),
    out: Path = typer.Option(..., "--out", "-o", help="file to write"),
    all_records: bool = typer.Option(
        False,
        "--all",
        help="every record's rows (default: the newest record of each measurement: model, weights, samples, analysis, protocol)",
    ),
):
    """Result records as one table (csv, parquet or jsonl).

    One row per (model, checkpoint, dataset, analysis, protocol, stage, attribute, metric)
    with value, ci_low, ci_high, n (then smoke, created_at, record): what
    `mch.load_results(...).to_frame()` gives."""
    from .fsio import ensure_writable_file
    from .python_api import load_results, write_table

    if fmt not in ("csv", "parquet", "jsonl"):
        raise MchError(f"unknown --format {fmt!r}; use csv, parquet or jsonl")
    ensure_writable_file(out)
    res = load_results(*paths)
    if not len(res):
        raise MchError(f"no valid result records under {', '.join(map(str, paths))}")
    rows = res.rows(latest=not all_records)
    path = write_table(rows, fmt, out)
    err_console.print(
        f"wrote {len(rows)} rows from {len(res)} records to {path}", soft_wrap=True, markup=False, highlight=False
    )


# --------------------------------------------------------------------------- export-store


def export_store(
    key: str = typer.Argument(..., help="store entry key as `mch store list` shows it (a unique prefix will do)"),
    fmt: str = typer.Option(
        "npz",
        "--format",
        "-f",
        help="npz, safetensors or hdf5 (the reference's layout, which `mch import-reference` reads)",
    ),
    out: Path | None = typer.Option(None, "--out", "-o", help="file to write (default KEY.FORMAT)"),
    store: Path | None = STORE,
):
    """One store entry's vectors with their sample ids and labels, for other tools.

    npz: one array per stage (`llm.final`, ...), `sample_ids`, `label:ATTR`, `group:ATTR`,
    `column:NAME`, `text`; safetensors: the stages as tensors, the rest as JSON in the
    metadata (`sample_ids`, `labels`, `groups`, `columns`, `texts`, `key`); hdf5: the
    reference's layout (encoder_output, adapter_output, llm_hidden_N, llm_final, sample_ids,
    label columns speaker_id, emotion, sound_class, transcript ...)."""
    from .fsio import ensure_writable_file
    from .store import load

    if fmt not in ("npz", "safetensors", "hdf5"):
        raise MchError(f"unknown --format {fmt!r}; use npz, safetensors or hdf5")
    vec = load(key, store)
    ext = {"npz": "npz", "safetensors": "safetensors", "hdf5": "h5"}[fmt]
    path = ensure_writable_file(Path(out) if out is not None else Path(f"{vec.hash}.{ext}"))
    {"npz": _npz, "safetensors": _safetensors, "hdf5": _hdf5}[fmt](vec, path)
    err_console.print(
        f"wrote {len(vec)} samples x {len(vec.stages)} stages ({', '.join(vec.stages)}) to {path}",
        soft_wrap=True,
        markup=False,
        highlight=False,
    )


def _npz(vec: Any, path: Path) -> None:
    import numpy as np

    from .fsio import atomic_write

    arrays: dict[str, Any] = {s: np.asarray(vec[s]) for s in vec.stages}
    arrays["sample_ids"] = np.asarray(vec.sample_ids, dtype=str)
    for prefix, table in (("label", vec.labels), ("group", vec.groups), ("column", vec.columns)):
        for name, vals in table.items():
            arrays[f"{prefix}:{name}"] = np.asarray([str(v) for v in vals], dtype=str)
    if vec.texts is not None:
        arrays["text"] = np.asarray(vec.texts, dtype=str)
    atomic_write(path, lambda f: np.savez(f, **arrays))


def _safetensors(vec: Any, path: Path) -> None:
    import numpy as np
    from safetensors.numpy import save

    from .fsio import atomic_write

    meta = {
        "sample_ids": json.dumps(vec.sample_ids),
        "key": json.dumps(vec.key, default=str),
        "labels": json.dumps({a: [str(x) for x in v] for a, v in vec.labels.items()}),
        "groups": json.dumps({a: [str(x) for x in v] for a, v in vec.groups.items()}),
        "columns": json.dumps({a: [str(x) for x in v] for a, v in vec.columns.items()}),
        "texts": json.dumps(vec.texts),
    }
    data = save({s: np.ascontiguousarray(vec[s]) for s in vec.stages}, metadata=meta)
    atomic_write(path, lambda f: f.write(data))


def _hdf5(vec: Any, path: Path) -> None:
    from .reference import write_reference_file
    from .reference_layout import ATTRIBUTE_COLUMNS

    columns = {k: [str(x) for x in v] for k, v in vec.columns.items()}
    if not columns:  # an mch extraction: its attributes under the reference's column names
        for attr, vals in vec.labels.items():
            if attr != "lexical":  # derived from the text, which goes in as `transcript`
                columns[ATTRIBUTE_COLUMNS.get(attr, attr)] = [str(x) for x in vals]
        if vec.texts is not None and any(vec.texts):
            columns["transcript"] = list(vec.texts)  # script 03 reads lexical from here (caption is its fallback)
    attrs = {
        "n_samples": len(vec),
        "model_name": vec.model,
        "dataset_name": str(vec.dataset),
        "mch_store_key": vec.hash,
    }
    write_reference_file(path, {s: vec[s] for s in vec.stages}, vec.sample_ids, columns, attrs)


# --------------------------------------------------------------------------- import-reference


def import_reference(
    modal: Path = typer.Argument(..., help="the reference's script-01 HDF5 file"),
    text: Path | None = typer.Option(
        None, "--text", help="its script-02 text-baseline file (llm_hidden_16, llm_final)"
    ),
    model: str = typer.Option(
        ..., "--model", "-m", help="a name for whose vectors these are (not a registered model's)"
    ),
    dataset: str = typer.Option(..., "--dataset", "-d", help="a name for the samples (not a registered dataset's)"),
    modality: str | None = typer.Option(None, "--modality", help="speech or vision (default: from the label columns)"),
    replace: bool = typer.Option(False, "--replace", help="replace an earlier import of these names from another file"),
    store: Path | None = STORE,
):
    """Bring the reference implementation's HDF5 files into the store.

    Then `mch analyze --model NAME --dataset NAME --analysis probe,modes,per_type,distances
    [--protocol paper]` runs on them: one import serves both protocols and any --stage
    subset; the file's row order and label columns are kept."""
    from .reference import import_reference as do_import

    def log(msg: str) -> None:
        err_console.print(f"mch: {msg}", markup=False, highlight=False, soft_wrap=True)

    rep = do_import(modal, model, dataset, text=text, store=store, modality=modality, replace=replace, log=log)
    say = lambda s: console.print(s, markup=False, highlight=False, soft_wrap=True)  # noqa: E731
    if rep.unchanged:
        say(f"{model} on {dataset}: already imported from these files (store entry {rep.modal_key})")
    else:
        say(f"imported {rep.n} samples as {model} on {dataset}: store entry {rep.modal_key}")
    say(
        f"  stages {', '.join(rep.stages)}"
        + (
            f"; text baseline {', '.join(rep.text_stages)} (entry {rep.text_key})"
            if rep.text_key
            else "; no text baseline (--text)"
        )
    )
    say(f"  attributes {', '.join(rep.attributes) or 'none'}")
    for n in rep.notes:
        say(f"  note: {n}")
    say(
        f"next: mch analyze --model {model} --dataset {dataset} --analysis probe,modes,per_type,distances "
        f"[--protocol paper]"
    )
