"""Run configs: one YAML (or JSON) file instead of ~25 flags.

    # run.yaml                                  mch bench --config run.yaml [--seed 3 ...]
    model: llava
    dataset: coco
    data_path: ~/data/coco
    analyses: [probe, gmi]
    protocol: paper
    params: {probe: {n_bootstrap: 2000}}
    model_options: {}
    data_options: {}

Keys are the command-line flags' names (underscores for dashes; `analyses`, `attributes`,
`stages` are lists or comma-separated strings); the file is checked against
`schemas/run.schema.json` before any work. A flag given on the command line overrides the
file (`params`, `model_options` and `data_options` merge key by key, the flag winning).
Every record keeps the resolved config (`run_config`). Light: yaml and jsonschema only.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .api import MchError


@dataclass
class RunConfig:
    model: str = "toy"
    dataset: str | None = None
    analyses: Sequence[str] = ("probe", "gmi")
    attributes: Sequence[str] | None = None
    checkpoint: str | None = None
    revision: str | None = None
    adapter: str | None = None
    data_path: str | None = None
    split: str | None = None
    limit: int | None = None
    seed: int = 0
    device: str = "cpu"
    dtype: str | None = None
    protocol: str = "default"
    span: str | None = None
    stages: Sequence[str] | None = None
    batch_size: int = 16
    out_dir: Path = Path("results")
    store: Path | None = None
    on_error: str = "stop"
    params: dict[str, Any] = field(default_factory=dict)
    trust_remote_code: bool = False
    model_options: dict[str, Any] = field(default_factory=dict)  # plugin options, e.g. prismatic llm=DIR
    dataset_options: dict[str, Any] = field(default_factory=dict)  # dataset plugin options, e.g. download=true
    text_checkpoint: str | None = None  # paper protocol: the separate text-only model's checkpoint
    text_revision: str | None = None
    sample_ids: Sequence[str] | None = None  # keep only these samples of the split (e.g. held-out groups)
    chunk_size: int | None = None  # samples per store chunk (default $MCH_CHUNK_SIZE or 256)
    device_map: str | None = None  # split the model over devices: auto, balanced, balanced_low_0, sequential
    max_memory: Any = None  # "0=70GiB,cpu=200GiB" (or a dict): the most each device may hold

    @property
    def dataset_options_record(self) -> dict[str, Any]:
        """{"options": sorted dataset options} for store keys and records; {} when none were given."""
        return {"options": dict(sorted(self.dataset_options.items()))} if self.dataset_options else {}

    @property
    def effective_span(self) -> str:
        return self.span or ("all" if self.protocol == "paper" else "modality")


# config key -> RunConfig field (where the names differ)
FIELDS = {"out": "out_dir", "data_options": "dataset_options"}
LISTS = ("analyses", "attributes", "stages")
MERGED = ("params", "model_options", "dataset_options")


def keys() -> list[str]:
    from .results import load_schema

    return list(load_schema("run")["properties"])


def check_config(data: Any, where: str) -> dict[str, Any]:
    """`data` validated against the run schema; the first problem as one sentence."""
    import jsonschema

    from .results import load_schema

    validator = jsonschema.Draft202012Validator(load_schema("run"))
    errors = sorted(validator.iter_errors(data), key=lambda e: list(e.absolute_path))
    if errors:
        e = errors[0]
        path = ".".join(str(p) for p in e.absolute_path)
        msg = e.message
        if e.validator == "additionalProperties" and not path:
            known = ", ".join(keys())
            msg = f"{msg} (a run config takes: {known})"
        raise MchError(f"run config {where}: {('key ' + path + ': ') if path else ''}{msg}")
    return dict(data)


def load_config(path: str | Path) -> dict[str, Any]:
    """The run config in `path` (YAML or JSON), validated."""
    import yaml

    p = Path(path).expanduser()
    try:
        text = p.read_text()
    except OSError as exc:
        raise MchError(f"cannot read the run config {p}: {exc.strerror or exc}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise MchError(f"run config {p} is not valid YAML: {str(exc).splitlines()[0]}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise MchError(f"run config {p} must be a mapping of keys to values (model: ..., analyses: [...])")
    return check_config(data, str(p))


def _names(value: Any) -> list[str] | None:
    if value is None:
        return None
    items = [value] if isinstance(value, str) else list(value)
    return [x.strip() for item in items for x in str(item).split(",") if x.strip()]  # "a,b" as the flags take it


def run_config_fields(config: Mapping[str, Any]) -> dict[str, Any]:
    """A (validated) run config as RunConfig field values."""
    out: dict[str, Any] = {}
    for key, value in config.items():
        field = FIELDS.get(key, key)
        if key in LISTS:
            value = _names(value)
        elif key in ("out", "store") and value is not None:
            value = Path(str(value)).expanduser()
        elif key == "data_path" and value is not None:
            value = str(Path(str(value)).expanduser())
        elif key in ("params", "model_options", "data_options"):
            value = json.loads(json.dumps(value))  # a copy the run may change
        out[field] = value
    return out


def merge(base: Mapping[str, Any], over: Mapping[str, Any], nested: bool = False) -> dict[str, Any]:
    """`base` with `over`'s keys on top; with `nested`, per-analysis dicts merge key by key."""
    out = {k: (dict(v) if isinstance(v, dict) else v) for k, v in base.items()}
    for k, v in over.items():
        if nested and isinstance(out.get(k), dict) and isinstance(v, dict):
            out[k] = {**out[k], **v}
        else:
            out[k] = v
    return out


def make_run_config(config: Mapping[str, Any] | None = None, **values: Any) -> Any:
    """A RunConfig from a run config (a mapping, e.g. `load_config(path)`) and values on top
    (run-config keys or RunConfig field names); `params`, `model_options` and
    `data_options` merge key by key with the config's."""
    import dataclasses

    fields = run_config_fields(check_config(dict(config), "(given)")) if config else {}
    for key, value in values.items():
        field = FIELDS.get(key, key)
        if field in LISTS:
            value = _names(value)
        elif field in ("out_dir", "store") and value is not None:
            value = Path(str(value)).expanduser()
        if field in MERGED and isinstance(fields.get(field), dict) and isinstance(value, dict):
            value = merge(fields[field], value, nested=(field == "params"))
        fields[field] = value
    known = {f.name for f in dataclasses.fields(RunConfig)}
    unknown = sorted(set(fields) - known)
    if unknown:
        raise MchError(f"unknown run option {unknown[0]!r}; the options are the run config's keys: {', '.join(keys())}")
    return RunConfig(**fields)


def resolved(cfg: Any) -> dict[str, Any]:
    """The run's config as a run-config mapping: what the record keeps as `run_config` (the
    same keys as a run config file; `sample_ids`, set only when an analysis re-runs the runner
    on a subset, is their count and hash)."""
    import hashlib

    out: dict[str, Any] = {
        "model": cfg.model,
        "dataset": cfg.dataset,
        "analyses": list(cfg.analyses),
        "attributes": list(cfg.attributes) if cfg.attributes else None,
        "checkpoint": cfg.checkpoint,
        "revision": cfg.revision,
        "adapter": cfg.adapter,
        "data_path": str(cfg.data_path) if cfg.data_path is not None else None,
        "split": cfg.split,
        "limit": cfg.limit,
        "seed": cfg.seed,
        "device": cfg.device,
        "dtype": cfg.dtype,
        "protocol": cfg.protocol,
        "span": cfg.span,
        "stages": list(cfg.stages) if cfg.stages else None,
        "batch_size": cfg.batch_size,
        "out": str(cfg.out_dir) if cfg.out_dir is not None else None,
        "store": str(cfg.store) if cfg.store is not None else None,
        "on_error": cfg.on_error,
        "params": cfg.params,
        "model_options": cfg.model_options,
        "data_options": cfg.dataset_options,
        "text_checkpoint": cfg.text_checkpoint,
        "text_revision": cfg.text_revision,
        "trust_remote_code": cfg.trust_remote_code,
        "device_map": cfg.device_map,
        "max_memory": cfg.max_memory,
    }
    if cfg.sample_ids is not None:  # set by analyses that re-run the runner on a subset (lora)
        h = hashlib.sha256("\0".join(map(str, cfg.sample_ids)).encode()).hexdigest()
        out["sample_ids"] = {"n": len(cfg.sample_ids), "sha256": h}
    return json.loads(json.dumps(out, default=str))
