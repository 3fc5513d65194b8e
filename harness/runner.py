"""One run: resolve plugins, extract (or reuse the store), run analyses, write records.

    resolve model/dataset/analyses -> select samples -> store key
      -> complete in the store?  yes: never load the model
                                 no:  load, prepare + capture chunk by chunk (resumable)
      -> each analysis reads the store (and the lazy model, if it needs one)
      -> one validated result record per analysis
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from .api import AnalysisOutput, Attribute, MchError, Sample, SampleError, check_param_keys, load_entry
from .context import AnalysisContext, Progress
from .manager import get_registry
from .results import build_record, config_hash, sample_ids_hash, write_record


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

    @property
    def dataset_options_record(self) -> dict[str, Any]:
        """{"options": sorted dataset options} for store keys and records; {} when none were given."""
        return {"options": dict(sorted(self.dataset_options.items()))} if self.dataset_options else {}

    @property
    def effective_span(self) -> str:
        return self.span or ("all" if self.protocol == "paper" else "modality")


class RichProgress(Progress):
    """Progress bars on a rich console (or nothing when quiet)."""

    def __init__(self, console: Any | None, quiet: bool = False):
        self.console = console
        self.quiet = quiet or console is None

    @contextlib.contextmanager
    def task(self, description: str, total: int | None) -> Iterator[Callable[[int], None]]:
        if self.quiet:
            yield lambda n=1: None
            return
        from rich.progress import BarColumn, MofNCompleteColumn, Progress as RP, TextColumn, TimeElapsedColumn, \
            TimeRemainingColumn

        with RP(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                TimeRemainingColumn(), console=self.console, transient=False) as p:
            t = p.add_task(description, total=total)
            yield lambda n=1: p.advance(t, n)


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
    log: Callable[[str], None]
    progress: Progress
    loaded: bool = False
    text_plan: "Plan | None" = None   # paper protocol: the separate text-only model's plan (text_plan())
    checkpoint_flag: str = "--checkpoint"  # the flag that sets this plan's checkpoint (for errors)

    def ensure_loaded(self) -> Any:
        if not self.loaded:
            self.log(f"loading model [bold]{self.model_spec.name}[/] ({self.plugin.checkpoint}, "
                     f"{self.plugin.dtype_name}, {self.plugin.device})")
            t = time.time()
            try:
                self.plugin.load()
            except MchError as exc:
                if self.checkpoint_flag == "--checkpoint":
                    raise
                # the text-only model of the paper protocol: its checkpoint has its own flag
                why = str(exc).replace("--checkpoint", self.checkpoint_flag)
                raise MchError(f"the paper protocol's text baseline: {why} (or run with --protocol default, "
                               f"whose text baseline is the model's own)") from None
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


def plan(cfg: RunConfig, log: Callable[[str], None] = lambda s: None, progress: Progress | None = None) -> Plan:
    from .api import PROTOCOLS, SPANS

    if cfg.protocol not in PROTOCOLS:
        raise MchError(f"unknown protocol {cfg.protocol!r}; use one of {', '.join(PROTOCOLS)}")
    if cfg.span is not None and cfg.span not in SPANS:
        raise MchError(f"unknown span {cfg.span!r}; use one of {', '.join(SPANS)}")
    if cfg.on_error not in ("stop", "skip"):
        raise MchError("--on-error must be 'stop' or 'skip'")
    if cfg.batch_size < 1:
        raise MchError("--batch-size must be at least 1")
    reg = get_registry()
    mspec = reg.get("model", cfg.model)
    aspecs = [reg.get("analysis", a) for a in cfg.analyses]
    check_params(cfg.params, reg, [a.name for a in aspecs], cfg.protocol)
    if (cfg.text_checkpoint or cfg.text_revision) and (cfg.protocol != "paper" or not mspec.text_baseline):
        log(f"--text-checkpoint/--text-revision unused: only the paper protocol of a model whose registry entry "
            f"names a text_baseline reads them ({mspec.name}: {mspec.text_baseline or 'none'})")
    dname = cfg.dataset or mspec.options.get("default_dataset")  # the registry's options: {default_dataset: ...}
    if dname is None:
        raise MchError(f"model {mspec.name!r} has no default dataset: pass --dataset (see `mch list datasets`)")
    dspec = reg.get("dataset", dname)
    ds = load_entry(dspec.entry)(dspec, path=cfg.data_path, **cfg.dataset_options)
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
                raise SampleError(f"sample {s.sample_id}: {a} label {lab!r} is not one of the declared classes",
                                  sample_id=s.sample_id)
    return Plan(cfg, mspec, dspec, aspecs, ds, attrs, samples, model_plugin(mspec, cfg), log, progress or Progress())


def model_plugin(spec: Any, cfg: RunConfig) -> Any:
    """The model plugin object of `spec` as `cfg` configures it (not loaded)."""
    return load_entry(spec.entry)(spec, checkpoint=cfg.checkpoint, revision=cfg.revision, device=cfg.device,
                                  dtype=cfg.dtype, adapter=cfg.adapter, trust_remote_code=cfg.trust_remote_code,
                                  **cfg.model_options)


def check_params(params: dict[str, dict[str, Any]], reg: Any, run: list[str], protocol: str) -> None:
    """Every `--param ANALYSIS.KEY` names a registered analysis, and for the analyses in `run`
    a parameter they declare, checked before any work: found later, a typo would cost the
    extraction, and `bench` writes its records only once every analysis has run. Parameters
    of an analysis outside the run are allowed (lora re-measures with other analyses' params,
    which those check when they run); so are any of an analysis that declares none."""
    for name, given in params.items():
        spec = reg.get("analysis", name)  # an unknown name fails here, with a suggestion
        if name not in run:
            continue
        takes = load_entry(spec.entry)(spec).default_params(protocol)
        if takes:
            check_param_keys(name, given, takes)


def store_key(p: Plan, view: str) -> dict[str, Any]:
    cfg = p.cfg
    ident = p.plugin.identity()
    if cfg.model_options:
        ident["options"] = dict(sorted(cfg.model_options.items()))
    if cfg.adapter:
        ident["adapter_sha256"] = _dir_hash(Path(cfg.adapter))
    return {
        "model": ident,
        "dataset": {"name": p.dataset_spec.name, "path": str(cfg.data_path) if cfg.data_path else None,
                    "split": cfg.split, "sample_ids_sha256": sample_ids_hash(s.sample_id for s in p.samples),
                    **cfg.dataset_options_record},  # options can change a sample under the same id
        "prompt": getattr(p.plugin, "prompt_id", lambda protocol, view: f"{protocol}/{view}")(cfg.protocol, view),
        "view": view,
        "span": cfg.effective_span,
        "stages": sorted(cfg.stages) if cfg.stages else "all",
        "protocol": cfg.protocol,
        "dtype": p.plugin.dtype_name,
    }


def _dir_hash(path: Path) -> str:
    import hashlib

    h = hashlib.sha256()
    files = sorted(path.rglob("*")) if path.is_dir() else [path]
    for f in files:
        if f.is_file():
            h.update(f.name.encode())
            h.update(f.read_bytes())
    return h.hexdigest()[:16]


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
        cfg = dataclasses.replace(p.cfg, model=tspec.name, checkpoint=p.cfg.text_checkpoint,
                                  revision=p.cfg.text_revision, adapter=None, model_options={})
        p.text_plan = dataclasses.replace(p, cfg=cfg, model_spec=tspec, plugin=model_plugin(tspec, cfg),
                                          loaded=False, checkpoint_flag="--text-checkpoint")
    return p.text_plan


def text_source(p: Plan) -> str:
    """Which model made the text baseline, in words (for the analyses' notes)."""
    t = text_plan(p)
    if t is p:
        return f"{p.model_spec.name}'s own text view"
    return f"{t.model_spec.name} ({t.plugin.checkpoint}), the separate text-only model the paper protocol uses"


def extract(p: Plan, view: str = "modal") -> Any:
    """Make sure the store entry for this plan and view is complete; return it."""
    from .store import Store

    cfg = p.cfg
    import os

    want = cfg.chunk_size or int(os.environ.get("MCH_CHUNK_SIZE", "256"))
    chunk = cfg.batch_size * max(1, want // cfg.batch_size)  # whole batches: resumed runs batch alike
    entry = Store(cfg.store).entry(store_key(p, view), [s.sample_id for s in p.samples], chunk_size=chunk)
    if entry.complete:
        p.log(f"{view} representations: cached in the store ({entry.dir})")
        return entry
    missing = entry.missing_chunks()
    plugin = p.ensure_loaded()
    from .capture import capture

    stages = list(cfg.stages) if cfg.stages else plugin.stages(view)
    todo = sum(len(entry.chunk_range(i)) for i in missing)
    done_before = len(p.samples) - todo
    if done_before:
        p.log(f"resuming extraction: {done_before} samples already in the store")
    bs = cfg.batch_size
    with p.progress.task(f"extract {view} ({p.model_spec.name})", todo) as advance:
        for i in missing:
            rows_kept: list[int] = []
            parts: dict[str, list[Any]] = {}
            skipped: list[dict[str, Any]] = []
            rng = list(entry.chunk_range(i))
            for b in range(0, len(rng), bs):
                idx = rng[b: b + bs]
                batch, kept = [], []
                for j in idx:
                    s = p.samples[j]
                    try:
                        if view == "modal":
                            _ = s.media
                        elif not s.text:
                            raise SampleError(f"sample {s.sample_id} has no paired text", sample_id=s.sample_id)
                        batch.append(s)
                        kept.append(j)
                    except SampleError as exc:
                        if cfg.on_error != "skip":
                            raise
                        skipped.append({"sample_id": s.sample_id, "reason": str(exc),
                                        "path": getattr(exc, "path", None)})
                if batch:
                    prepared = plugin.prepare(batch, cfg.protocol, view)
                    out = capture(plugin, prepared, stages, cfg.effective_span, view)
                    for k, v in out.items():
                        parts.setdefault(k, []).append(v.numpy())
                    rows_kept += kept
                    for s in batch:  # free decoded media: the store holds what we need
                        s._media = None
                advance(len(idx))
            import numpy as np

            arrays = {k: np.concatenate(v) for k, v in parts.items()}
            if not arrays:
                arrays = {s: np.zeros((0, 1), np.float32) for s in stages}
            entry.write_chunk(i, rows_kept, arrays, skipped)
    entry.finalize({"batch_size": bs, "padding_side": "right", "stages_resolved": stages,
                    "device": cfg.device})
    p.log(f"{view} representations written to the store ({entry.dir})")
    return entry


def _labels(p: Plan, samples: list[Sample]) -> tuple[dict[str, Any], dict[str, Any]]:
    import numpy as np

    labels = {a: np.array([s.labels.get(a, "") for s in samples], dtype=object) for a in p.attributes}
    groups = {}
    for a, attr in p.attributes.items():
        vals = []
        for s in samples:
            if attr.group_key not in s.groups:
                raise MchError(f"dataset {p.dataset_spec.name!r}: sample {s.sample_id} has no group "
                               f"{attr.group_key!r} (the group key of attribute {a!r})")
            vals.append(s.groups[attr.group_key])
        groups[a] = np.array(vals, dtype=object)
    return labels, groups


def analyze(p: Plan, entry: Any) -> list[tuple[str, AnalysisOutput, dict[str, Any], float]]:
    cfg = p.cfg
    reps, rows = entry.read()
    samples = [p.samples[int(i)] for i in rows]
    labels, groups = _labels(p, samples)
    text_entry: dict[str, Any] = {}

    def paired_text(own: bool = False):
        """The text baseline's representations, rows paired with the modal ones: the protocol's
        baseline (text_plan), or with `own` the model's own text view."""
        key = "own" if own else "baseline"
        if key not in text_entry:
            tp = p if own else text_plan(p)
            te = extract(tp, "text")
            if tp is not p and tp.loaded:  # the text-only model is done: free it before the analyses load the MLLM
                tp.release()
            treps, trows = te.read()
            if list(trows) != list(rows):  # keep modal and text rows paired
                pos = {int(r): k for k, r in enumerate(trows)}
                import numpy as np

                keep = [pos.get(int(r)) for r in rows]
                if any(k is None for k in keep):
                    raise MchError("the text baseline lacks some samples the modal run has (no paired text?)")
                treps = {s: np.asarray(v)[keep] for s, v in treps.items()}
            text_entry[key] = treps
        return text_entry[key]

    outputs = []
    previous: dict[str, AnalysisOutput] = {}
    for aspec in p.analysis_specs:
        analysis = load_entry(aspec.entry)(aspec)
        params = {**analysis.default_params(cfg.protocol), **aspec.options.get("params", {}),
                  **cfg.params.get(aspec.name, {})}
        ctx = AnalysisContext(protocol=cfg.protocol, params=params, seed=cfg.seed, stages=list(reps),
                              reps=reps, samples=samples, attributes=p.attributes, labels=labels, groups=groups,
                              span=cfg.effective_span, previous=previous, progress=p.progress,
                              run_config=cfg, dataset=p.dataset,
                              _model_loader=p.ensure_loaded if aspec.needs_model else None,
                              _cache=entry.cached, _text_reps=paired_text, text_source=text_source(p),
                              _own_text_reps=lambda: paired_text(own=True))
        if p.loaded:
            ctx._model = p.plugin
        p.log(f"running analysis [bold]{aspec.name}[/]")
        t = time.time()
        out = analysis.run(ctx)
        previous[aspec.name] = out
        outputs.append((aspec.name, out, params, time.time() - t))
    return outputs


def record_for(p: Plan, entry: Any, name: str, out: AnalysisOutput, params: dict[str, Any], duration: float,
               extract_s: float) -> dict[str, Any]:
    cfg = p.cfg
    man = entry.manifest()
    config = {"model": p.plugin.identity(), "dataset": p.dataset_spec.name, "split": cfg.split, "limit": cfg.limit,
              "seed": cfg.seed, "protocol": cfg.protocol, "span": cfg.effective_span, "analysis": name,
              "params": params, "attributes": sorted(p.attributes)}
    if cfg.dataset_options:
        config["dataset_options"] = cfg.dataset_options_record["options"]
    tp = text_plan(p)
    text_model = None if tp is p else {"name": tp.model_spec.name, "checkpoint": str(tp.plugin.checkpoint),
                                       "revision": tp.plugin.revision}
    if text_model:
        config["text_model"] = text_model
    return build_record(
        model={"name": p.model_spec.name, "modality": p.model_spec.modality, "checkpoint": str(p.plugin.checkpoint),
               "revision": p.plugin.revision, "adapter": cfg.adapter, "dtype": p.plugin.dtype_name,
               "device": cfg.device, **({"smoke": True} if config["model"].get("smoke") else {})},
        dataset={"name": p.dataset_spec.name, "split": cfg.split, "path": str(cfg.data_path) if cfg.data_path else None,
                 "n": int(man.get("n_rows", len(p.samples))),
                 "sample_ids_sha256": sample_ids_hash(s.sample_id for s in p.samples),
                 "attributes": sorted(p.attributes),
                 "label_rules": {a: attr.label_rule.get(cfg.protocol, "") for a, attr in p.attributes.items()},
                 "skipped": man.get("skipped", []), **cfg.dataset_options_record},
        analysis={"name": name, "params": params},
        protocol=cfg.protocol,
        extraction={"span": cfg.effective_span, "stages": man.get("stages", []), "store_key": entry.hash,
                    "batch_size": cfg.batch_size, "model_loaded": p.loaded,
                    **({"text_model": text_model} if text_model else {})},
        seeds=[cfg.seed],
        config_hash=config_hash(config),
        duration_s=round(duration + extract_s, 3),
        metrics=[m.as_dict() for m in out.metrics],
        summary=out.summary,
        notes=out.notes,
    )


def run_bench(cfg: RunConfig, log: Callable[[str], None] = lambda s: None,
              progress: Progress | None = None) -> tuple[Plan, list[tuple[Path, dict[str, Any]]]]:
    p = plan(cfg, log, progress)
    t = time.time()
    entry = extract(p, "modal")
    extract_s = time.time() - t
    written = []
    for name, out, params, dur in analyze(p, entry):
        rec = record_for(p, entry, name, out, params, dur, extract_s)
        written.append((write_record(rec, cfg.out_dir), rec))
    return p, written
