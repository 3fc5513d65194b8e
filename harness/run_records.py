"""A run's result records: one per analysis, with the provenance of the vectors it read
(`record_for`), and the plugins told of each one written (`record_written`).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from .api import AnalysisOutput
from .results import build_record, config_hash, sample_ids_hash
from .run_plan import Plan, text_plan
from .store_key import plugin_fingerprint

OnRecord = Callable[[Path, dict[str, Any]], None]


def record_for(
    p: Plan, entry: Any, name: str, out: AnalysisOutput, params: dict[str, Any], duration: float, extract_s: float
) -> dict[str, Any]:
    cfg = p.cfg
    man = entry.manifest()
    config = {
        "model": p.plugin.identity(),
        "dataset": p.dataset_spec.name,
        "split": cfg.split,
        "limit": cfg.limit,
        "seed": cfg.seed,
        "protocol": cfg.protocol,
        "span": cfg.effective_span,
        "analysis": name,
        "params": params,
        "attributes": sorted(p.attributes),
    }
    if cfg.dataset_options:
        config["dataset_options"] = cfg.dataset_options_record["options"]
    tp = text_plan(p)
    text_model = (
        None
        if tp is p
        else {
            "name": tp.model_spec.name,
            "checkpoint": str(tp.plugin.checkpoint),
            "revision": tp.plugin.revision,
            "checkpoint_fingerprint": plugin_fingerprint(tp.plugin),
        }
    )
    # fingerprints of the files the stored vectors came from, as the entry's key holds them
    kmodel, kdata = entry.key.get("model", {}), entry.key.get("dataset", {})
    fingerprints = {k: kmodel[k] for k in ("checkpoint_fingerprint", "adapter_fingerprint") if kmodel.get(k)}
    media = {"media_fingerprint": kdata["media_fingerprint"]} if kdata.get("media_fingerprint") else {}
    if text_model:
        config["text_model"] = text_model
    return build_record(
        model={
            "name": p.model_spec.name,
            "modality": p.model_spec.modality,
            "checkpoint": str(p.plugin.checkpoint),
            "revision": p.plugin.revision,
            "adapter": cfg.adapter,
            "dtype": p.plugin.dtype_name,
            "device": cfg.device,
            **fingerprints,
            **model_fidelity(p),
            **({"smoke": True} if config["model"].get("smoke") else {}),
        },
        dataset={
            "name": p.dataset_spec.name,
            "split": cfg.split,
            "path": str(cfg.data_path) if cfg.data_path else None,
            "n": int(man.get("n_rows", len(p.samples))),
            "sample_ids_sha256": sample_ids_hash(s.sample_id for s in p.samples),
            "attributes": sorted(p.attributes),
            "label_rules": {a: attr.label_rule.get(cfg.protocol, "") for a, attr in p.attributes.items()},
            "skipped": man.get("skipped", []),
            **cfg.dataset_options_record,
            **media,
        },
        analysis={"name": name, "params": params},
        protocol=cfg.protocol,
        extraction={
            "span": cfg.effective_span,
            "stages": [s for s in man.get("stages", []) if not cfg.stages or s in cfg.stages],  # those analysed
            "store_key": entry.hash,
            **({"reused_from": entry.hash} if getattr(entry, "reused_for", None) else {}),
            "batch_size": cfg.batch_size,
            "model_loaded": p.loaded,
            **_how_extracted(man),
            **({"text_model": text_model} if text_model else {}),
        },
        seeds=[cfg.seed],
        config_hash=config_hash(config),
        duration_s=round(duration + extract_s, 3),
        metrics=[m.as_dict() for m in out.metrics],
        summary=out.summary,
        notes=out.notes,
        run_config=_resolved_config(p),
    )


def _how_extracted(man: dict[str, Any]) -> dict[str, Any]:
    """From the entry's manifest: how many processes extracted it and, for a model split over
    devices, where its modules were (the placement the stored vectors came from)."""
    info = man.get("info") or {}
    return {k: info[k] for k in ("world_size", "device_map") if info.get(k) is not None}


def _resolved_config(p: Plan) -> dict[str, Any]:
    """The run config that reproduces this run (the model and dataset as resolved)."""
    import dataclasses

    from .configs import resolved

    return resolved(dataclasses.replace(p.cfg, model=p.model_spec.name, dataset=p.dataset_spec.name))


def model_fidelity(p: Plan) -> dict[str, Any]:
    """The model plugin's own notes on where its computation follows or departs from the
    released model's code (optional `fidelity(protocol)` method), for the record's model."""
    notes = getattr(p.plugin, "fidelity", None)
    out = [str(n) for n in notes(p.cfg.protocol)] if callable(notes) else []
    return {"fidelity": out} if out else {}


def record_written(record: dict[str, Any], path: Path, log: Callable[[str], None] = lambda s: None) -> None:
    """Call every plugin's `mch_record_written(record, path)` (hookspecs). The record is on disk
    already: a plugin that fails is reported in the log and the run goes on."""
    from .manager import get_manager

    hook = get_manager().hook.mch_record_written
    for impl in hook.get_hookimpls():
        try:
            impl.function(record=record, path=path)
        except Exception as exc:  # noqa: BLE001 - a logging plugin must not cost the run
            log(f"plugin {impl.plugin_name!r}: mch_record_written failed ({type(exc).__name__}: {exc})")
