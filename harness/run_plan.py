"""A run's plan: the model, dataset and analyses resolved, the samples chosen and checked, the
model plugin made (not loaded); the text baseline's plan (`text_plan`). mch.runner extracts
and analyses what a plan says.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .api import Attribute, MchError, Sample, SampleError, load_entry
from .checks import check_flags, check_model_and_dataset, check_params
from .configs import RunConfig
from .context import Progress
from .manager import get_registry

# What a run does, for whoever listens (the CLI shows it on stderr; a library caller configures
# logging, or passes its own `log`). Plain text: styling is the listener's.
RUN_LOG = logging.getLogger("mch.runner")
Log = Callable[[str], None]


@dataclass
class Plan:
    cfg: RunConfig
    model_spec: Any
    dataset_spec: Any
    analysis_specs: list[Any]
    dataset: Any
    attributes: dict[str, Attribute]
    samples: list[Sample]
    plugin: Any  # the model plugin object (not loaded yet)
    log: Log
    progress: Progress
    loaded: bool = False
    text_plan: Plan | None = None  # paper protocol: the separate text-only model's plan (text_plan())
    checkpoint_flag: str = "--checkpoint"  # the flag that sets this plan's checkpoint (for errors)

    def ensure_loaded(self) -> Any:
        if not self.loaded:
            self.log(
                f"loading model {self.model_spec.name} ({self.plugin.checkpoint}, "
                f"{self.plugin.dtype_name}, {self.plugin.device})"
            )
            t = time.time()
            try:
                self.plugin.load()
            except MchError as exc:
                if self.checkpoint_flag == "--checkpoint":
                    raise
                # the text-only model of the paper protocol: its checkpoint has its own flag
                why = str(exc).replace("--checkpoint", self.checkpoint_flag)
                raise MchError(
                    f"the paper protocol's text baseline: {why} (or run with --protocol default, "
                    f"whose text baseline is the model's own)"
                ) from None
            self.loaded = True
            self.log(f"model loaded in {time.time() - t:.1f}s")
        return self.plugin

    def release(self) -> None:
        """Drop the loaded weights (a fresh, unloaded plugin object takes their place)."""
        import gc

        self.plugin = model_plugin(self.model_spec, self.cfg)
        self.loaded = False
        gc.collect()
        try:
            import torch

            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        except ImportError:
            pass


def plan(cfg: RunConfig, log: Log = RUN_LOG.info, progress: Progress | None = None) -> Plan:
    from .api import PROTOCOLS, SPANS

    if cfg.protocol not in PROTOCOLS:
        raise MchError(f"unknown protocol {cfg.protocol!r}; use one of {', '.join(PROTOCOLS)}")
    if cfg.span is not None and cfg.span not in SPANS:
        raise MchError(f"unknown span {cfg.span!r}; use one of {', '.join(SPANS)}")
    if cfg.on_error not in ("stop", "skip"):
        raise MchError("--on-error must be 'stop' or 'skip'")
    if cfg.batch_size < 1:
        raise MchError("--batch-size must be at least 1")
    check_flags(cfg)
    from .reference import with_imports

    reg = with_imports(get_registry(), cfg)  # names brought in by `mch import-reference` (in this store)
    mspec = reg.get("model", cfg.model)
    aspecs = [reg.get("analysis", a) for a in cfg.analyses]
    cfg.params = check_params(cfg.params, reg, [a.name for a in aspecs], cfg.protocol)
    if (cfg.text_checkpoint or cfg.text_revision) and (cfg.protocol != "paper" or not mspec.text_baseline):
        log(
            f"--text-checkpoint/--text-revision unused: only the paper protocol of a model whose registry entry "
            f"names a text_baseline reads them ({mspec.name}: {mspec.text_baseline or 'none'})"
        )
    dname = cfg.dataset or mspec.options.get("default_dataset")  # the registry's options: {default_dataset: ...}
    if dname is None:
        raise MchError(f"model {mspec.name!r} has no default dataset: pass --dataset (see `mch list datasets`)")
    dspec = reg.get("dataset", dname)
    check_model_and_dataset(mspec, dspec, cfg)
    ds = load_entry(dspec.entry)(dspec, path=cfg.data_path, **cfg.dataset_options)  # checks its options
    opts = getattr(ds, "options", {})
    cfg.dataset_options = {k: opts.get(k, v) for k, v in cfg.dataset_options.items()}  # in their declared types
    samples = ds.samples(cfg.split, cfg.limit, cfg.seed, cfg.protocol)
    # attributes after samples: a dataset's classes may follow the split it listed
    attrs = ds.attributes(cfg.protocol)
    if cfg.attributes:
        unknown = [a for a in cfg.attributes if a not in attrs]
        if unknown:
            raise MchError(f"dataset {dspec.name!r} has no attribute {unknown[0]!r}; it has {', '.join(attrs)}")
        attrs = {a: attrs[a] for a in cfg.attributes}
    if cfg.sample_ids is not None:
        keep = set(cfg.sample_ids)
        samples = [s for s in samples if s.sample_id in keep]
    if not samples:
        raise MchError(f"dataset {dspec.name!r} gave no samples for split {cfg.split or 'default'!r}")
    ids = [s.sample_id for s in samples]
    if len(set(ids)) != len(ids):
        raise MchError(f"dataset {dspec.name!r} has duplicate sample ids")
    for s in samples:
        for a, attr in attrs.items():
            lab = s.labels.get(a, "")
            if lab and lab not in attr.classes:
                raise SampleError(
                    f"sample {s.sample_id}: {a} label {lab!r} is not one of the declared classes", sample_id=s.sample_id
                )
    plugin = model_plugin(mspec, cfg)
    check_stage_names(plugin, cfg.stages)
    for aspec in aspecs:  # parameters that cannot work on these samples, before any extraction
        analysis = load_entry(aspec.entry)(aspec)
        analysis.preflight(analysis_params(analysis, aspec, cfg, plugin), cfg.protocol, samples, attrs)
    return Plan(cfg, mspec, dspec, aspecs, ds, attrs, samples, plugin, log, progress or Progress())


def check_stage_names(plugin: Any, stages: Any) -> None:
    """`--stage` names the model does not declare, refused before it loads (one sentence listing
    its stages). Where its stage map needs what is not here (the loaded model, a checkpoint
    absent while the store holds its vectors) the names are checked later, by the capture or
    against the stored stages."""
    if not stages:
        return
    try:
        known = list(plugin.stages("modal"))
    except Exception:  # noqa: BLE001 - cannot know them yet: the later checks say it
        return
    unknown = [s for s in stages if s not in known]
    if unknown:
        raise MchError(
            f"model {plugin.spec.name!r} has no stage {unknown[0]!r} (--stage); it declares: {', '.join(known)}"
        )


def analysis_params(analysis: Any, aspec: Any, cfg: RunConfig, plugin: Any) -> dict[str, Any]:
    """An analysis's parameters: its defaults for the protocol, the registry's `params`, the
    model plugin's `analysis_defaults(protocol)` for the parameters the analysis takes (a
    model whose vectors lack a stage the defaults assume, e.g. imported reference files), then
    the user's `--param`."""
    defaults = analysis.default_params(cfg.protocol)
    own = getattr(plugin, "analysis_defaults", None)
    from_model = {k: v for k, v in (own(cfg.protocol) if callable(own) else {}).items() if k in defaults}
    return {**defaults, **aspec.options.get("params", {}), **from_model, **cfg.params.get(aspec.name, {})}


def model_plugin(spec: Any, cfg: RunConfig) -> Any:
    """The model plugin object of `spec` as `cfg` configures it (not loaded)."""
    from . import dist, placement

    cls = load_entry(spec.entry)
    split = {}
    if cfg.device_map is not None:
        if not getattr(cls, "supports_device_map", False):
            raise MchError(
                f"model {spec.name!r} loads on one device and cannot be split by --device-map; "
                f"drop --device-map (and --max-memory)"
            )
        split = {"device_map": cfg.device_map, "max_memory": placement.parse_max_memory(cfg.max_memory)}
    return cls(
        spec,
        checkpoint=cfg.checkpoint,
        revision=cfg.revision,
        device=placement.rank_device(cfg.device, dist.ranks()),
        dtype=cfg.dtype,
        adapter=cfg.adapter,
        trust_remote_code=cfg.trust_remote_code,
        **split,
        **cfg.model_options,
    )


def text_plan(p: Plan) -> Plan:
    """The plan whose model makes the text baseline (science.md, Text baseline): under the
    paper protocol, the separate text-only checkpoint the model's registry entry names as
    `text_baseline` (the reference's Llama-3.1-8B base or Vicuna-7B, raw text with BOS);
    otherwise, and for a model that names none, the model's own text view."""
    name = p.model_spec.text_baseline
    if p.cfg.protocol != "paper" or not name:
        return p
    if p.text_plan is None:
        import dataclasses

        tspec = get_registry().get("model", name)
        cfg = dataclasses.replace(
            p.cfg,
            model=tspec.name,
            checkpoint=p.cfg.text_checkpoint,
            revision=p.cfg.text_revision,
            adapter=None,
            model_options={},
        )
        p.text_plan = dataclasses.replace(
            p,
            cfg=cfg,
            model_spec=tspec,
            plugin=model_plugin(tspec, cfg),
            loaded=False,
            checkpoint_flag="--text-checkpoint",
        )
    return p.text_plan


def text_source(p: Plan) -> str:
    """Which model made the text baseline, in words (for the analyses' notes)."""
    t = text_plan(p)
    own = getattr(p.plugin, "text_view_source", None)
    if t is p and callable(own):  # a plugin whose text view is not its own LLM (imported files)
        return str(own())
    if t is p:
        return f"{p.model_spec.name}'s own text view"
    return f"{t.model_spec.name} ({t.plugin.checkpoint}), the separate text-only model the paper protocol uses"
