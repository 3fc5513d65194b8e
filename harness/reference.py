"""The reference implementation's HDF5 files in and out (`mch import-reference`,
`mch export-store --format hdf5`).

The paper's code (jb1999/modality_collapse_paper, scripts 01 and 02) writes one HDF5 file
per (model, dataset): float32 datasets `encoder_output`, `adapter_output`, `llm_hidden_N`,
`llm_final` of shape (N, d), `sample_ids`, string label columns (`transcript`, `speaker_id`,
`emotion`, `sound_class`, `caption`, `object_category`, ...) and attributes `n_samples`
(and `n_samples_actual` when extraction stopped early); its text baseline file holds
`llm_hidden_16`, `llm_final`, `sample_ids` and `text` for the rows with a non-empty text.

An import writes the vectors into the representation store under mch's stage names
(encoder, adapter, llm.N, llm.final), keyed by the files' content (not their paths), with
the file's row order and raw label columns kept (`labels.json` beside the vectors). The
entry is found again by its (model, dataset) names: `with_imports` adds the pair to the
registry a run resolves names in (mch.plugins.models.imported, mch.plugins.attributes
.imported), so `mch analyze --model NAME --dataset NAME` runs every store-only analysis on
it under either protocol, on any subset of its stages (`--stage`). Rows the reference never
wrote (index >= `n_samples_actual`: all-zero vectors, empty labels) are left out: every
reference script excludes them anyway (no label; all-zero rows dropped).

Light: h5py (`mch[hdf5]`) and numpy are imported inside the functions that need them (the
files themselves are read and written by mch.reference_hdf5).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .api import MchError
from .fingerprint import file_sha256

# reading and writing the files is mch.reference_hdf5's; those names are still found here
from .reference_hdf5 import RefFile, read_file, write_reference_file  # noqa: F401
from .reference_layout import LAYOUT, TEXT_COLUMNS, VISION_COLUMNS, attribute_columns

# --------------------------------------------------------------------------- finding imports


def imported_entries(root: Path, model: str) -> list[tuple[Path, dict[str, Any]]]:
    """[(entry dir, manifest)] of the complete modal entries imported under model name `model`."""
    from .results import safe_name

    d = Path(root) / safe_name(model)
    out: list[tuple[Path, dict[str, Any]]] = []
    if not d.is_dir():
        return out
    for e in sorted(d.iterdir()):
        try:
            man = json.loads((e / "manifest.json").read_text())
        except (OSError, ValueError):
            continue
        key = man.get("key", {}) if isinstance(man, dict) else {}
        if (
            key.get("imported") == LAYOUT
            and key.get("view") == "modal"
            and man.get("complete")
            and key.get("model", {}).get("name") == model
        ):
            out.append((e, man))
    return out


def find_import(root: Path, model: str, dataset: str | None) -> tuple[Path, dict[str, Any]] | None:
    """The modal entry imported as (model, dataset); with dataset None, the model's only one.
    None when `model` was never imported; one sentence when the dataset is ambiguous or
    unknown."""
    found = imported_entries(root, model)
    if not found:
        return None
    names = sorted({m["key"]["dataset"]["name"] for _, m in found})
    if dataset is None:
        if len(names) > 1:
            raise MchError(f"model {model!r} was imported with datasets {', '.join(names)}; pass --dataset")
        dataset = names[0]
    hits = [(d, m) for d, m in found if m["key"]["dataset"]["name"] == dataset]
    if not hits:
        raise MchError(
            f"model {model!r} was imported with dataset{'s' if len(names) > 1 else ''} "
            f"{', '.join(names)}, not {dataset!r} (mch import-reference ... --model {model} "
            f"--dataset {dataset} brings that one in)"
        )
    return max(hits, key=lambda dm: dm[1].get("imported", {}).get("imported_at", ""))


def with_imports(reg: Any, cfg: Any) -> Any:
    """`reg` with the imported (model, dataset) pair `cfg` names added, when `cfg.model` is not
    a registered model and the store (`cfg.store`) holds an import under that name; `reg`
    itself otherwise. Registered names always win (an import may not take one)."""
    import copy

    from .api import DatasetSpec, ModelSpec
    from .store import Store

    if cfg.model in reg.models or cfg.model in reg.aliases:
        return reg
    root = Store(cfg.store).root
    hit = find_import(root, cfg.model, cfg.dataset)
    if hit is None:
        return reg
    entry_dir, man = hit
    imp = man["imported"]
    dataset = man["key"]["dataset"]["name"]
    if dataset in reg.datasets:  # an import made before that dataset was registered
        raise MchError(
            f"dataset name {dataset!r} of the imported {cfg.model!r} is now a registered dataset; "
            f"import the file again under another --dataset name"
        )
    for a in cfg.analyses or []:
        spec = reg.get("analysis", a)
        if spec.needs_model:
            store_only = ", ".join(n for n, s in reg.analyses.items() if not s.needs_model)
            raise MchError(
                f"analysis {a!r} needs the live model, but {cfg.model!r} is vectors imported from "
                f"{imp['source']}: there is no model to run; analyses that read the store only: "
                f"{store_only}"
            )
    out = copy.copy(reg)
    out.models = {
        **reg.models,
        cfg.model: ModelSpec(
            name=cfg.model,
            entry="mch.plugins.models.imported:ImportedModel",
            modality=imp["modality"],
            checkpoint=f"imported:{Path(imp['source']).name}",
            description=f"vectors imported from {imp['source']}",
            options={"default_dataset": dataset, "entry": str(entry_dir)},
            source="import-reference",
        ),
    }
    out.datasets = {
        **reg.datasets,
        dataset: DatasetSpec(
            name=dataset,
            entry="mch.plugins.attributes.imported:ImportedDataset",
            modality=imp["modality"],
            attributes=tuple(imp.get("attributes", ())),
            description=f"labels imported from {imp['source']}",
            options={"entry": str(entry_dir)},
            source="import-reference",
        ),
    }
    return out


# --------------------------------------------------------------------------- importing


def infer_modality(columns: dict[str, list[str]]) -> str:
    if any(c in columns for c in VISION_COLUMNS):
        return "vision"
    return "speech"


def _key(model: str, dataset: str, view: str, sha: str, ids_sha: str) -> dict[str, Any]:
    return {
        "imported": LAYOUT,
        "model": {"name": model, "checkpoint": "imported", "checkpoint_fingerprint": f"sha256:{sha}"},
        "dataset": {"name": dataset, "sample_ids_sha256": ids_sha},
        "view": view,
    }


@dataclass
class ImportReport:
    model: str
    dataset: str
    modal_key: str
    text_key: str | None
    n: int
    stages: list[str]
    text_stages: list[str]
    attributes: list[str]
    notes: list[str]
    unchanged: bool = False


def import_reference(
    modal: str | Path,
    model: str,
    dataset: str,
    text: str | Path | None = None,
    store: Path | None = None,
    modality: str | None = None,
    replace: bool = False,
    log: Callable[[str], None] = lambda s: None,
) -> ImportReport:
    """Bring a reference HDF5 file (and its text-baseline file) into the store under the names
    `model` and `dataset`; see the module docstring."""
    from .fsio import atomic_write_json
    from .manager import get_registry
    from .results import now_iso, sample_ids_hash
    from .store import Store

    reg = get_registry()
    if model in reg.models or model in reg.aliases:
        raise MchError(
            f"model name {model!r} is a registered plugin; name the imported vectors otherwise "
            f"(e.g. --model {model}-ref): mch must not mistake them for a run of {model!r}"
        )
    if dataset in reg.datasets:
        raise MchError(
            f"dataset name {dataset!r} is a registered dataset; name the imported labels otherwise "
            f"(e.g. --dataset {dataset}-ref)"
        )
    for what, name in (("model", model), ("dataset", dataset)):
        if not name or not name.strip() or name != name.strip():
            raise MchError(f"--{what} must be a non-empty name without surrounding spaces, not {name!r}")
    if modality not in (None, "speech", "vision"):
        raise MchError(f"--modality must be speech or vision, not {modality!r}")
    ref = read_file(modal, "modal file")
    notes = [f"ignored dataset {x}" for x in ref.ignored]
    if ref.sample_ids is None:
        raise MchError(f"modal file {ref.path} has no sample_ids dataset (the reference's script 01 writes one)")
    keep = list(range(ref.written))
    if ref.written < ref.n:
        notes.append(
            f"rows {ref.written}..{ref.n - 1} were never written (n_samples_actual = {ref.written}): "
            f"left out, as every reference script leaves them out (no label, all-zero vectors)"
        )
    ids = [ref.sample_ids[i] for i in keep]
    dup = sorted({i for i in ids if ids.count(i) > 1}) if len(set(ids)) != len(ids) else []
    if dup:
        raise MchError(
            f"modal file {ref.path} has duplicate sample ids (e.g. {dup[0]!r}); mch needs one row per sample"
        )
    if any(not i for i in ids):
        raise MchError(f"modal file {ref.path} has an empty sample id in a written row")
    columns = {k: [v[i] for i in keep] for k, v in ref.columns.items() if k != "text"}
    modality = modality or infer_modality(columns)
    sha = file_sha256(ref.path)
    ids_sha = sample_ids_hash(ids)
    st = Store(store)
    mkey = _key(model, dataset, "modal", sha, ids_sha)
    entry = st.entry(mkey, ids, chunk_size=max(len(ids), 1))
    old = [(d, m) for d, m in imported_entries(st.root, model) if m["key"]["dataset"]["name"] == dataset]
    stale = [(d, m) for d, m in old if d != entry.dir]
    if stale and not replace:
        raise MchError(
            f"{model!r} on {dataset!r} was already imported from another file "
            f"({stale[0][1]['imported']['source']}); pass --replace to replace it, or choose other names"
        )

    # the text baseline: rows paired with the modal ones by sample id (else by position)
    tref = tkey = None
    trows: list[int] = []
    tsha = None
    if text is not None:
        tref = read_file(text, "text file")
        notes += [f"text file: ignored dataset {x}" for x in tref.ignored]
        pos = {sid: k for k, sid in enumerate(ids)}
        if tref.sample_ids is not None:
            tids = tref.sample_ids[: tref.written]
            unknown = [t for t in tids if t and t not in pos]
            if unknown:
                raise MchError(
                    f"text file {tref.path} has sample ids the modal file does not have (e.g. "
                    f"{unknown[0]!r}); pass the text file made from this modal file"
                )
            pairs = [(j, pos[t]) for j, t in enumerate(tids) if t]
        elif tref.written == len(ids):
            pairs = [(j, j) for j in range(len(ids))]
            notes.append("text file has no sample_ids: rows paired with the modal file's by position")
        else:
            raise MchError(
                f"text file {tref.path} has no sample_ids and {tref.written} rows for the modal file's "
                f"{len(ids)}; cannot pair them"
            )
        if len({k for _, k in pairs}) != len(pairs):
            raise MchError(f"text file {tref.path} has two rows for one sample")
        tsha = file_sha256(tref.path)
        tkey = _key(model, dataset, "text", tsha, ids_sha)
        tkey["modal_checkpoint_fingerprint"] = f"sha256:{sha}"
        trows = [k for _, k in pairs]
        missing = len(ids) - len(trows)
        if missing:
            notes.append(f"text file pairs {len(trows)} of {len(ids)} samples ({missing} without text)")

    prev = entry.manifest() if entry.complete else None
    prev_text = ((prev or {}).get("imported") or {}).get("text") or {}
    # the same modal file again: unchanged unless a (different) text file comes with it; an
    # import without --text keeps the text baseline imported before
    if prev is not None and (text is None or prev_text.get("sha256") == tsha):
        for d, _ in stale:
            _remove(st, d, log)
        report = _report(model, dataset, entry.hash, prev["imported"], notes, len(ids))
        report.unchanged = True
        return report

    attributes = sorted(set(attribute_columns(columns)))
    with entry.writing():
        if not entry.complete:
            arrays = {s: ref.read_stage(s)[keep] for s in ref.stages}
            entry.write_chunk(0, list(range(len(ids))), arrays, [])
            entry.finalize({"imported_from": str(ref.path), "layout": LAYOUT})
        texts = _texts(columns, len(ids))
        entry.write_labels({"columns": columns, "texts": texts, "source": str(ref.path)})
        imp: dict[str, Any]
        imp = {
            "source": str(ref.path),
            "sha256": sha,
            "modality": modality,
            "n_rows_in_file": ref.n,
            "stages": list(ref.stages),
            "columns": sorted(columns),
            "attributes": attributes,
            "file_attrs": {k: v for k, v in ref.attrs.items() if isinstance(v, (str, int, float, bool))},
            "notes": notes,
            "imported_at": now_iso(),
            "text": None,
        }
        if tref is not None:
            assert tkey is not None  # set with tref
            tentry = st.entry(tkey, ids, chunk_size=max(len(ids), 1))
            with tentry.writing():
                if not tentry.complete:
                    tarr = {s: tref.read_stage(s) for s in tref.stages}
                    order = [j for j, _ in pairs]
                    tentry.write_chunk(
                        0,
                        trows,
                        {s: a[order] for s, a in tarr.items()},
                        [
                            {"sample_id": ids[k], "reason": "no row in the text file"}
                            for k in sorted(set(range(len(ids))) - set(trows))
                        ],
                    )
                    tentry.finalize({"imported_from": str(tref.path), "layout": LAYOUT})
                tentry.write_labels({"columns": columns, "texts": texts, "source": str(tref.path)})
            imp["text"] = {
                "source": str(tref.path),
                "sha256": tsha,
                "key": tentry.hash,
                "key_dict": tkey,
                "stages": list(tref.stages),
                "n_rows": len(trows),
            }
            old_text = ((prev or {}).get("imported") or {}).get("text")
            if old_text and old_text.get("key") != tentry.hash:
                _remove_key(st, old_text.get("key"), log)
        man = entry.manifest()
        man["imported"] = imp
        atomic_write_json(entry.manifest_path, man)
    for d, m in stale:  # replaced imports of the same names
        _remove(st, d, log)
        tk = ((m.get("imported") or {}).get("text") or {}).get("key")
        if tk and not (imp.get("text") and imp["text"]["key"] == tk):
            _remove_key(st, tk, log)
    return _report(model, dataset, entry.hash, imp, notes, len(ids))


def _report(model: str, dataset: str, key: str, imp: dict[str, Any], notes: list[str], n: int) -> ImportReport:
    t = imp.get("text") or {}
    return ImportReport(
        model, dataset, key, t.get("key"), n, imp["stages"], t.get("stages", []), imp.get("attributes", []), notes
    )


def _remove(st: Any, d: Path, log: Callable[[str], None]) -> None:
    st.remove(d)
    log(f"removed the earlier import {d.name}")


def _remove_key(st: Any, key: str | None, log: Callable[[str], None]) -> None:
    if not key:
        return
    try:
        _remove(st, st.find(key), log)
    except MchError:
        pass


def _texts(columns: dict[str, list[str]], n: int) -> list[str]:
    """Each sample's text: the first of transcript, caption, question the file has (script
    02's choice of field)."""
    for c in TEXT_COLUMNS:
        if c in columns:
            return list(columns[c])
    return [""] * n
