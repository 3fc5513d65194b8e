"""One run: resolve plugins, extract (or reuse the store), run analyses, write records.

    resolve model/dataset/analyses -> select samples -> store key
      -> complete in the store?  yes: never load the model
                                 no:  load, prepare + capture chunk by chunk (resumable)
      -> each analysis reads the store (and the lazy model, if it needs one)
      -> one validated result record per analysis
"""

from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from .api import (AnalysisOutput, Attribute, MchError, Sample, SampleError, check_options,
                  check_values, load_entry, param_table)
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
    device_map: str | None = None  # split the model over devices: auto, balanced, balanced_low_0, sequential
    max_memory: Any = None         # "0=70GiB,cpu=200GiB" (or a dict): the most each device may hold

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
    check_flags(cfg)
    reg = get_registry()
    mspec = reg.get("model", cfg.model)
    aspecs = [reg.get("analysis", a) for a in cfg.analyses]
    cfg.params = check_params(cfg.params, reg, [a.name for a in aspecs], cfg.protocol)
    if (cfg.text_checkpoint or cfg.text_revision) and (cfg.protocol != "paper" or not mspec.text_baseline):
        log(f"--text-checkpoint/--text-revision unused: only the paper protocol of a model whose registry entry "
            f"names a text_baseline reads them ({mspec.name}: {mspec.text_baseline or 'none'})")
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
                raise SampleError(f"sample {s.sample_id}: {a} label {lab!r} is not one of the declared classes",
                                  sample_id=s.sample_id)
    for aspec in aspecs:  # parameters that cannot work on these samples, before any extraction
        analysis = load_entry(aspec.entry)(aspec)
        analysis.preflight({**analysis.default_params(cfg.protocol), **aspec.options.get("params", {}),
                            **cfg.params.get(aspec.name, {})}, cfg.protocol, samples, attrs)
    return Plan(cfg, mspec, dspec, aspecs, ds, attrs, samples, model_plugin(mspec, cfg), log, progress or Progress())


def model_plugin(spec: Any, cfg: RunConfig) -> Any:
    """The model plugin object of `spec` as `cfg` configures it (not loaded)."""
    from . import dist, placement

    cls = load_entry(spec.entry)
    split = {}
    if cfg.device_map is not None:
        if not getattr(cls, "supports_device_map", False):
            raise MchError(f"model {spec.name!r} loads on one device and cannot be split by --device-map; "
                           f"drop --device-map (and --max-memory)")
        split = {"device_map": cfg.device_map, "max_memory": placement.parse_max_memory(cfg.max_memory)}
    return cls(spec, checkpoint=cfg.checkpoint, revision=cfg.revision,
               device=placement.rank_device(cfg.device, dist.ranks()), dtype=cfg.dtype, adapter=cfg.adapter,
               trust_remote_code=cfg.trust_remote_code, **split, **cfg.model_options)


def check_params(params: dict[str, dict[str, Any]], reg: Any, run: list[str], protocol: str
                 ) -> dict[str, dict[str, Any]]:
    """Every `--param ANALYSIS.KEY=VALUE` names a registered analysis and a parameter it
    declares, with a value of its type and range (`mch.api.Param`), checked before any work:
    found later, a typo would cost the extraction. An analysis outside the run (lora
    re-measures with other analyses' params) may also be given the parameters of the other
    protocol, checked when it runs; a key no protocol knows is an error. An analysis that
    declares no parameters takes any. The registry's `params` of the analyses in the run are
    checked alike. Returns the values in their declared types."""
    from .api import PROTOCOLS

    out: dict[str, dict[str, Any]] = {}
    for name in list(params) + [a for a in run if a not in params]:
        spec = reg.get("analysis", name)  # an unknown name fails here, with a suggestion
        given = params.get(name, {})
        analysis = load_entry(spec.entry)(spec)
        defaults = analysis.default_params(protocol)
        if not defaults:
            if given:
                out[name] = dict(given)
            continue
        takes = param_table(defaults, getattr(analysis, "param_specs", None))
        check_values(f"analysis {name!r}", spec.options.get("params", {}), takes)
        if name not in params:
            continue
        later = {}
        if name not in run:
            known = {k for pr in PROTOCOLS for k in analysis.default_params(pr)}
            later = {k: v for k, v in given.items() if k not in takes and k in known}
        checked = check_values(f"analysis {name!r}", {k: v for k, v in given.items() if k not in later}, takes)
        out[name] = {**checked, **later}
    return out


DEVICES = "cpu, cuda or cuda:N"


def check_flags(cfg: RunConfig) -> None:
    """--seed, --limit, --dtype, --device, --device-map and --max-memory, before any work (a
    missing GPU found at load time would come after the dataset was read, or generated)."""
    import operator

    try:
        seed = None if isinstance(cfg.seed, bool) else operator.index(cfg.seed)
    except TypeError:
        seed = None
    if seed is None or not 0 <= seed < 2**32:
        raise MchError(f"--seed must be an integer from 0 to 2**32 - 1 (numpy and sklearn seeds), not {cfg.seed!r}")
    if cfg.limit is not None and cfg.limit < 1:
        raise MchError(f"--limit must be at least 1, not {cfg.limit}: the selection would be empty")
    if cfg.dtype is not None and cfg.dtype not in ("float32", "fp32", "bfloat16", "bf16", "float16", "fp16"):
        raise MchError(f"unknown --dtype {cfg.dtype!r}; use float32, bfloat16 or float16")
    check_device(cfg.device)
    from . import dist, placement

    r = dist.ranks()
    placement.check(cfg.device, cfg.device_map, cfg.max_memory, r)
    if cfg.device == "cuda" and r.local_world > 1 and cfg.device_map is None:
        import torch

        n = torch.cuda.device_count()
        if r.local_world > n:
            raise MchError(f"{r.local_world} processes on this node and {n} visible GPU{'s' * (n != 1)}: with "
                           f"--device cuda each process takes its own GPU (cuda:LOCAL_RANK); start at most {n} "
                           f"per node, or name one GPU for all with --device cuda:N")


def check_device(device: str) -> None:
    import re

    m = re.fullmatch(r"(cpu|cuda)(?::(\d+))?", str(device))
    if m is None or (m.group(1) == "cpu" and m.group(2) is not None):
        raise MchError(f"unknown --device {device!r}; use {DEVICES}")
    if m.group(1) == "cpu":
        return
    import torch

    if not torch.cuda.is_available():
        why = "this torch build has no CUDA support" if torch.version.cuda is None else "no CUDA GPU is visible"
        raise MchError(f"--device {device} asks for a GPU, but {why} (torch {torch.__version__}); "
                       f"use --device cpu")
    n = torch.cuda.device_count()
    if m.group(2) is not None and int(m.group(2)) >= n:
        raise MchError(f"--device {device}: this machine has {n} CUDA device{'s' if n != 1 else ''} "
                       f"(cuda:0{f' to cuda:{n - 1}' if n > 1 else ''})")


def check_model_and_dataset(mspec: Any, dspec: Any, cfg: RunConfig) -> None:
    """The model can read the dataset (modality, and models or datasets that only read each
    other, like the toy organism and its world), and takes the options it is given."""
    mcls, dcls = load_entry(mspec.entry), load_entry(dspec.entry)
    if cfg.device_map is not None and not getattr(mcls, "supports_device_map", False):
        raise MchError(f"model {mspec.name!r} loads on one device and cannot be split by --device-map; "
                       f"drop --device-map (and --max-memory)")
    only = getattr(mcls, "datasets", None)
    if only is not None and dspec.name not in only:
        raise MchError(f"model {mspec.name!r} reads only dataset{'s' if len(only) > 1 else ''} "
                       f"{', '.join(repr(d) for d in only)}, not {dspec.name!r}")
    readers = getattr(dcls, "models", None)
    if readers is not None and mspec.name not in readers:
        raise MchError(f"dataset {dspec.name!r} is read only by model{'s' if len(readers) > 1 else ''} "
                       f"{', '.join(repr(m) for m in readers)}, not {mspec.name!r}")
    if mspec.modality != "text" and dspec.modality != mspec.modality:
        raise MchError(f"model {mspec.name!r} reads {mspec.modality} and dataset {dspec.name!r} is {dspec.modality}; "
                       f"choose a {mspec.modality} dataset (`mch list datasets`)")
    cfg.model_options = {k: v for k, v in check_options(
        "model", mspec.name, getattr(mcls, "option_specs", None),
        {**mspec.options, **cfg.model_options}).items() if k in cfg.model_options}


def store_key(p: Plan, view: str) -> dict[str, Any]:
    """What the stored vectors depend on. Fingerprints of the files read (mch.fingerprint) make
    the key change when the checkpoint's weights or configs, an adapter, a model option's
    directory, a sample's media file (modal view) or a paired text (text view) change."""
    from .fingerprint import media_fingerprint, texts_sha256

    cfg = p.cfg
    ident = p.plugin.identity()
    ident["checkpoint_fingerprint"] = plugin_fingerprint(p.plugin)
    if cfg.model_options:
        ident["options"] = dict(sorted(cfg.model_options.items()))
        local = {k: _path_fingerprint(v) for k, v in sorted(cfg.model_options.items()) if _is_local_path(v)}
        if local:
            ident["option_fingerprints"] = local
    if cfg.adapter:
        ident["adapter_fingerprint"] = _path_fingerprint(cfg.adapter)
    dataset = {"name": p.dataset_spec.name, "path": str(cfg.data_path) if cfg.data_path else None,
               "split": cfg.split, "sample_ids_sha256": sample_ids_hash(s.sample_id for s in p.samples),
               **cfg.dataset_options_record}  # options can change a sample under the same id
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


def stored_entry(p: Plan, view: str) -> Any:
    """This plan's store entry for `view` (complete or not). When the checkpoint is not on this
    machine, its fingerprint cannot be taken: a complete entry extracted from the same
    checkpoint name is used if there is exactly one, and the log says so."""
    from .store import Store

    cfg = p.cfg
    want = cfg.chunk_size or int(os.environ.get("MCH_CHUNK_SIZE", "256"))
    chunk = cfg.batch_size * max(1, want // cfg.batch_size)  # whole batches: resumed runs batch alike
    store = Store(cfg.store)
    key = store_key(p, view)
    entry = store.entry(key, [s.sample_id for s in p.samples], chunk_size=chunk)
    entry.log = p.log
    if entry.complete or key["model"]["checkpoint_fingerprint"] != MISSING:
        return entry
    found = store.complete_like(key, _without_checkpoint_fingerprint)
    if len(found) > 1:
        raise MchError(f"checkpoint {p.plugin.checkpoint} is not on this machine and the store holds "
                       f"{len(found)} extractions of it from different files ({', '.join(d.name for d in found)}); "
                       f"make the checkpoint available, or remove the ones not wanted with `mch store rm KEY`")
    if found:
        import json

        old = store.entry(json.loads((found[0] / "manifest.json").read_text())["key"], entry.sample_ids, chunk)
        old.log = p.log
        p.log(f"checkpoint {p.plugin.checkpoint} is not on this machine: using store entry {old.hash}, extracted "
              f"from its files with fingerprint {old.key['model'].get('checkpoint_fingerprint')}")
        return old
    return entry


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
    """Make sure the store entry for this plan and view is complete; return it. The entry's
    lock is taken before the model is loaded: a second process on the same key waits, then
    reuses what the first wrote. Under a launcher (torchrun, accelerate launch) every rank
    calls this and extracts its share of the chunks (`mch.dist`)."""
    from . import dist

    if dist.active():
        return _extract_ranks(p, view)
    entry = stored_entry(p, view)
    if entry.complete:
        p.log(f"{view} representations: cached in the store ({entry.dir})")
        return entry
    if entry.key["model"]["checkpoint_fingerprint"] == MISSING:
        p.ensure_loaded()  # the plugin's own sentence on the missing checkpoint, before the store is touched
    with entry.writing():
        if entry.complete:
            p.log(f"{view} representations: written by another mch process meanwhile ({entry.dir})")
            return entry
        _fill(p, entry, view)
    p.log(f"{view} representations written to the store ({entry.dir})")
    return entry


SHARED_STORE_WAIT_S = 30.0  # how long a rank waits to see the entry rank 0 created (network filesystems)


def _extract_ranks(p: Plan, view: str) -> Any:
    """`extract` as one rank of a data-parallel job (module docstring of `mch.dist`): rank 0
    takes the entry's lock for the whole job (a second job waits, or stops with
    MCH_STORE_WAIT=0) and says which chunks are missing; each rank extracts its share; rank 0
    finalizes. Every step ends with all ranks agreeing, so an error anywhere stops them all
    with one sentence, and chunks already written stay for the next run."""
    import contextlib

    from . import dist

    r = dist.ranks()
    entry = dist.agree(lambda: stored_entry(p, view), "finding the store entry")
    keys = dist.gather((entry.hash, entry.chunk_size, len(entry.sample_ids), dist.host()))
    if any(k[:3] != keys[0][:3] for k in keys):
        bad = next(i for i, k in enumerate(keys) if k[:3] != keys[0][:3])
        raise MchError(f"rank {bad} (on {keys[bad][3]}) computes store entry {keys[bad][0]} and rank 0 "
                       f"(on {keys[0][3]}) {keys[0][0]}: every rank must see the same checkpoint files, dataset and "
                       f"options (on several nodes: one shared copy, or MCH_FINGERPRINT=full for identical copies)")
    with contextlib.ExitStack() as held:
        def decide() -> tuple[str, list[int]]:
            if not r.rank == 0:
                return "", []
            if entry.complete:
                return "cached", []
            if entry.key["model"]["checkpoint_fingerprint"] == MISSING:
                p.ensure_loaded()
            held.enter_context(entry.writing())  # released when this rank leaves the block
            if entry.complete:
                return "meanwhile", []
            return "fill", entry.missing_chunks()

        state, missing = dist.broadcast(dist.agree(decide, f"locking store entry {entry.hash}"))
        if state == "cached":
            p.log(f"{view} representations: cached in the store ({entry.dir})")
            return entry
        if state == "meanwhile":
            p.log(f"{view} representations: written by another mch process meanwhile ({entry.dir})")
            return entry
        done_before = len(entry.sample_ids) - sum(len(entry.chunk_range(i)) for i in missing)
        if done_before:
            p.log(f"resuming extraction: {done_before} samples already in the store")
        p.log(f"{view}: {len(missing)} chunks over {r.world} ranks")

        def fill_mine() -> dict[str, Any] | None:
            t = time.time()
            while not entry.manifest_path.exists() and time.time() - t < SHARED_STORE_WAIT_S:
                time.sleep(0.5)  # a network filesystem may show another node's new file late
            if not entry.manifest_path.exists():
                raise MchError(f"rank {r.rank} on {dist.host()} does not see store entry {entry.dir}, which rank 0 "
                               f"created: the store must be on a filesystem every node shares (MCH_STORE or --store)")
            mine = dist.shard(missing, r)
            return _fill_chunks(p, entry, view, mine) if mine else None

        infos = dist.gather(dist.agree(fill_mine, f"extracting {view} chunks"))
        info = next((i for i in infos if i is not None), None)

        def finalize() -> None:
            if r.rank == 0:
                assert info is not None
                entry.finalize({**info, "world_size": r.world,
                                "devices": sorted({str(i["device"]) for i in infos if i is not None})})

        dist.agree(finalize, f"finalizing store entry {entry.hash}")
    p.log(f"{view} representations written to the store ({entry.dir})")
    return entry


def _fill(p: Plan, entry: Any, view: str) -> None:
    """Extract the chunks `entry` lacks and finalize it (under its lock)."""
    missing = entry.missing_chunks()
    todo = sum(len(entry.chunk_range(i)) for i in missing)
    done_before = len(p.samples) - todo
    if done_before:
        p.log(f"resuming extraction: {done_before} samples already in the store")
    info = _fill_chunks(p, entry, view, missing)
    entry.finalize({**info, "world_size": 1})


def _fill_chunks(p: Plan, entry: Any, view: str, chunks: Sequence[int]) -> dict[str, Any]:
    """Extract and write the chunks `chunks` of `entry`; returns what the manifest records of
    how (stages, batch size, device and the model's placement over devices)."""
    import numpy as np

    from .capture import capture

    cfg = p.cfg
    plugin = p.ensure_loaded()
    stages = list(cfg.stages) if cfg.stages else plugin.stages(view)
    todo = sum(len(entry.chunk_range(i)) for i in chunks)
    bs = cfg.batch_size
    with p.progress.task(f"extract {view} ({p.model_spec.name})", todo) as advance:
        for i in chunks:
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
            arrays = {k: np.concatenate(v) for k, v in parts.items()}
            if not arrays:
                arrays = {s: np.zeros((0, 1), np.float32) for s in stages}
            entry.write_chunk(i, rows_kept, arrays, skipped)
    info: dict[str, Any] = {"batch_size": bs, "padding_side": "right", "stages_resolved": stages,
                            "device": str(plugin.device)}
    placement = getattr(plugin, "placement", None)
    where = placement() if callable(placement) else None
    if where:
        info.update(where)
    return info


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
    """Every analysis of the plan on `entry`: [(name, output, params, seconds)]."""
    return list(iter_analyses(p, entry))


def iter_analyses(p: Plan, entry: Any) -> Iterator[tuple[str, AnalysisOutput, dict[str, Any], float]]:
    """The analyses of the plan one at a time, each yielded as soon as it has finished (so its
    record can be written before the next one starts)."""
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
        yield aspec.name, out, params, time.time() - t


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
                                       "revision": tp.plugin.revision,
                                       "checkpoint_fingerprint": plugin_fingerprint(tp.plugin)}
    # fingerprints of the files the stored vectors came from, as the entry's key holds them
    kmodel, kdata = entry.key.get("model", {}), entry.key.get("dataset", {})
    fingerprints = {k: kmodel[k] for k in ("checkpoint_fingerprint", "adapter_fingerprint") if kmodel.get(k)}
    media = {"media_fingerprint": kdata["media_fingerprint"]} if kdata.get("media_fingerprint") else {}
    if text_model:
        config["text_model"] = text_model
    return build_record(
        model={"name": p.model_spec.name, "modality": p.model_spec.modality, "checkpoint": str(p.plugin.checkpoint),
               "revision": p.plugin.revision, "adapter": cfg.adapter, "dtype": p.plugin.dtype_name,
               "device": cfg.device, **fingerprints, **model_fidelity(p)},
        dataset={"name": p.dataset_spec.name, "split": cfg.split, "path": str(cfg.data_path) if cfg.data_path else None,
                 "n": int(man.get("n_rows", len(p.samples))),
                 "sample_ids_sha256": sample_ids_hash(s.sample_id for s in p.samples),
                 "attributes": sorted(p.attributes),
                 "label_rules": {a: attr.label_rule.get(cfg.protocol, "") for a, attr in p.attributes.items()},
                 "skipped": man.get("skipped", []), **cfg.dataset_options_record, **media},
        analysis={"name": name, "params": params},
        protocol=cfg.protocol,
        extraction={"span": cfg.effective_span, "stages": man.get("stages", []), "store_key": entry.hash,
                    "batch_size": cfg.batch_size, "model_loaded": p.loaded, **_how_extracted(man),
                    **({"text_model": text_model} if text_model else {})},
        seeds=[cfg.seed],
        config_hash=config_hash(config),
        duration_s=round(duration + extract_s, 3),
        metrics=[m.as_dict() for m in out.metrics],
        summary=out.summary,
        notes=out.notes,
    )


def _how_extracted(man: dict[str, Any]) -> dict[str, Any]:
    """From the entry's manifest: how many processes extracted it and, for a model split over
    devices, where its modules were (the placement the stored vectors came from)."""
    info = man.get("info") or {}
    out = {k: info[k] for k in ("world_size", "device_map") if info.get(k) is not None}
    return out


def model_fidelity(p: Plan) -> dict[str, Any]:
    """The model plugin's own notes on where its computation follows or departs from the
    released model's code (optional `fidelity(protocol)` method), for the record's model."""
    notes = getattr(p.plugin, "fidelity", None)
    out = [str(n) for n in notes(p.cfg.protocol)] if callable(notes) else []
    return {"fidelity": out} if out else {}


def check_results_dir(out_dir: Path) -> None:
    """The results directory exists (or can be made) and takes a file: checked before any
    work, so a bad --out or $MCH_RESULTS never costs an extraction."""
    from .fsio import ensure_writable_dir

    ensure_writable_dir(out_dir, "results directory", "pass --out (or set MCH_RESULTS) with a writable directory")


OnRecord = Callable[[Path, dict[str, Any]], None]


def _write_each(p: Plan, entry: Any, extract_s: float, on_record: OnRecord | None) -> list[tuple[Path, dict]]:
    """Run the analyses, writing each one's record as soon as it has finished: a failure or
    Ctrl-C in a later analysis keeps the earlier records."""
    written = []
    for name, out, params, dur in iter_analyses(p, entry):
        rec = record_for(p, entry, name, out, params, dur, extract_s)
        path = write_record(rec, p.cfg.out_dir)
        written.append((path, rec))
        if on_record is not None:
            on_record(path, rec)
    return written


def run_bench(cfg: RunConfig, log: Callable[[str], None] = lambda s: None, progress: Progress | None = None,
              on_record: OnRecord | None = None) -> tuple[Plan, list[tuple[Path, dict[str, Any]]]]:
    """Extract (or reuse), then run the analyses; each record is written as its analysis ends
    (`on_record(path, record)` is called then). Returns the plan and [(path, record)]."""
    from . import dist

    check_results_dir(cfg.out_dir)
    p = plan(cfg, log, progress)
    t = time.time()
    entry = extract(p, "modal")
    dist.finish()  # the analyses run on rank 0 alone (a launcher's other ranks stop here)
    if not dist.is_main():
        return p, []
    return p, _write_each(p, entry, time.time() - t, on_record)


def run_analyze(cfg: RunConfig, log: Callable[[str], None] = lambda s: None, progress: Progress | None = None,
                on_record: OnRecord | None = None) -> tuple[Plan, list[tuple[Path, dict[str, Any]]]]:
    """Like `run_bench`, on an extraction already complete in the store (never extracts)."""
    check_results_dir(cfg.out_dir)
    p = plan(cfg, log, progress)
    entry = stored_entry(p, "modal")
    if not entry.complete:
        raise MchError("no complete extraction for this model/dataset/protocol in the store; run `mch extract` "
                       "with the same options first")
    return p, _write_each(p, entry, 0.0, on_record)
