"""The store key of a plan's extraction: what the stored vectors depend on, and the
fingerprint of the files a model plugin loads (mch.fingerprint)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .api import MchError
from .results import sample_ids_hash


def store_key(p: Any, view: str) -> dict[str, Any]:
    """What the stored vectors depend on. Fingerprints of the files read (mch.fingerprint) make
    the key change when the checkpoint's weights or configs, an adapter, a model option's
    directory, a sample's media file (modal view) or a paired text (text view) change."""
    from .fingerprint import media_fingerprint, texts_sha256

    cfg = p.cfg
    fixed = getattr(p.plugin, "stored_key", None)
    if callable(fixed):  # vectors that exist only in the store (mch import-reference): their own key
        return fixed(view)
    ident = p.plugin.identity()
    ident["checkpoint_fingerprint"] = plugin_fingerprint(p.plugin)
    if cfg.model_options:
        ident["options"] = dict(sorted(cfg.model_options.items()))
        local = {k: _path_fingerprint(v) for k, v in sorted(cfg.model_options.items()) if _is_local_path(v)}
        if local:
            ident["option_fingerprints"] = local
    if cfg.adapter:
        ident["adapter_fingerprint"] = _path_fingerprint(cfg.adapter)
    dataset = {
        "name": p.dataset_spec.name,
        "path": _key_path(cfg.data_path),
        "split": cfg.split,
        "sample_ids_sha256": sample_ids_hash(s.sample_id for s in p.samples),
        **cfg.dataset_options_record,
    }  # options can change a sample under the same id
    if view == "text":
        dataset["texts_sha256"] = texts_sha256(s.text for s in p.samples)
    else:
        dataset["media_fingerprint"] = media_fingerprint((s.sample_id, s.media_files) for s in p.samples)
    return {
        "model": ident,
        "dataset": dataset,
        "prompt": getattr(p.plugin, "prompt_id", lambda protocol, view: f"{protocol}/{view}")(cfg.protocol, view),
        "view": view,
        "span": cfg.effective_span,
        "stages": sorted(cfg.stages) if cfg.stages else "all",
        "protocol": cfg.protocol,
        "dtype": p.plugin.dtype_name,
    }


MISSING = "missing"  # the checkpoint fingerprint of a checkpoint that is not on this machine


def _key_path(path: Any) -> str | None:
    """--data-path as the store key holds it: an existing path in one spelling (absolute,
    resolved), so `data/`, `./data` and `data` find the same entry; anything else (an HF id)
    as given."""
    if not path:
        return None
    p = Path(str(path)).expanduser()
    return str(p.resolve()) if p.exists() else str(path)


def plugin_fingerprint(plugin: Any) -> str:
    """The fingerprint of the files a model plugin loads (its `checkpoint_paths()`), or
    "missing" when its checkpoint is not available here."""
    from .checkpoints import resolve_checkpoint
    from .fingerprint import checkpoint_fingerprint

    try:
        if hasattr(plugin, "checkpoint_paths"):
            paths = plugin.checkpoint_paths()
        else:  # a plugin that does not derive from ModelPlugin
            paths = [resolve_checkpoint(str(plugin.checkpoint), plugin.revision, plugin.spec.name)]
    except MchError:
        return MISSING
    if not paths or not Path(str(paths[0])).expanduser().exists():
        return MISSING
    if hasattr(plugin, "check_checkpoint"):  # its shape before its files are read (a user error, not "missing")
        plugin.check_checkpoint(paths[0])
    return checkpoint_fingerprint(paths)


def _is_local_path(value: Any) -> bool:
    return isinstance(value, (str, Path)) and bool(str(value)) and Path(str(value)).expanduser().exists()


def _path_fingerprint(path: Any) -> str:
    from .fingerprint import checkpoint_fingerprint

    return checkpoint_fingerprint([Path(str(path))])


def _without_checkpoint_fingerprint(key: dict[str, Any]) -> dict[str, Any]:
    key = dict(key)
    key["model"] = {k: v for k, v in key.get("model", {}).items() if k != "checkpoint_fingerprint"}
    return key
