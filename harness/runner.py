"""One run: resolve plugins, extract (or reuse the store), run analyses, write records.

resolve model/dataset/analyses -> select samples -> store key
  -> complete in the store?  yes: never load the model
                             no:  load, prepare + capture chunk by chunk (resumable)
  -> each analysis reads the store (and the lazy model, if it needs one)
  -> one validated result record per analysis

The plan is mch.run_plan's, the records mch.run_records'; this module extracts (one process or
every rank of a launcher) and runs the analyses. Their public names are all found here.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from .api import AnalysisOutput, MchError, Sample, SampleError, load_entry
from .checks import check_params, check_results_dir  # noqa: F401 - check_params: also mch.runner's
from .configs import RunConfig  # also re-exported: mch.runner.RunConfig
from .context import AnalysisContext, Progress
from .results import write_record
from .run_entry import reused_entry, stored_entry, superset_entry  # which entry a plan reads

# the plan and the records are their own modules; their names are still found here
from .run_plan import (  # noqa: F401
    RUN_LOG,
    Log,
    Plan,
    analysis_params,
    model_plugin,
    plan,
    text_plan,
    text_source,
)
from .run_records import OnRecord, model_fidelity, record_for, record_written  # noqa: F401
from .store_key import MISSING, _without_checkpoint_fingerprint, plugin_fingerprint, store_key  # noqa: F401


def extract(p: Plan, view: str = "modal") -> Any:
    """Make sure the store entry for this plan and view is complete; return it. The entry's
    lock is taken before the model is loaded: a second process on the same key waits, then
    reuses what the first wrote. Under a launcher (torchrun, accelerate launch) every rank
    calls this and extracts its share of the chunks (`mch.dist`)."""
    from . import dist

    if dist.active():
        entry = _extract_ranks(p, view)
        if dist.is_main():  # one writer of the labels file
            save_labels(p, entry)
        return entry
    entry = stored_entry(p, view)
    if entry.complete:
        if not entry.reused_for:  # a stage subset read from a fuller entry says so itself
            p.log(f"{view} representations: cached in the store ({entry.dir})")
        save_labels(p, entry)
        return entry
    if entry.key["model"]["checkpoint_fingerprint"] == MISSING:
        p.ensure_loaded()  # the plugin's own sentence on the missing checkpoint, before the store is touched
    with entry.writing():
        if entry.complete:
            p.log(f"{view} representations: written by another mch process meanwhile ({entry.dir})")
            return entry
        _fill(p, entry, view)
    p.log(f"{view} representations written to the store ({entry.dir})")
    save_labels(p, entry)
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
    entry = dist.agree(lambda: stored_entry(p, view, reuse=False), "finding the store entry")
    keys = dist.gather((entry.hash, entry.chunk_size, len(entry.sample_ids), dist.host()))
    if any(k[:3] != keys[0][:3] for k in keys):
        bad = next(i for i, k in enumerate(keys) if k[:3] != keys[0][:3])
        raise MchError(
            f"rank {bad} (on {keys[bad][3]}) computes store entry {keys[bad][0]} and rank 0 "
            f"(on {keys[0][3]}) {keys[0][0]}: every rank must see the same checkpoint files, dataset and "
            f"options (on several nodes: one shared copy, or MCH_FINGERPRINT=full for identical copies)"
        )
    with contextlib.ExitStack() as held:
        fuller: list[Any] = []  # rank 0's choice of a complete entry holding more stages

        def decide() -> tuple[str, list[int]]:
            if not r.rank == 0:
                return "", []
            if entry.complete:
                return "cached", []
            fuller.append(superset_entry(p, view, entry))
            if fuller[0] is not None:  # a stage subset: rank 0 decides, every rank reads the same entry
                return "reuse", []
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
        if state == "reuse":
            h = dist.broadcast(fuller[0].hash if r.rank == 0 else None)
            return dist.agree(
                lambda: fuller[0] if r.rank == 0 else reused_entry(p, view, entry.dir.parent / h, entry),
                f"reading store entry {h}",
            )
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
                raise MchError(
                    f"rank {r.rank} on {dist.host()} does not see store entry {entry.dir}, which rank 0 "
                    f"created: the store must be on a filesystem every node shares (MCH_STORE or --store)"
                )
            mine = dist.shard(missing, r)
            return _fill_chunks(p, entry, view, mine) if mine else None

        infos = dist.gather(dist.agree(fill_mine, f"extracting {view} chunks"))
        info = next((i for i in infos if i is not None), None)

        def finalize() -> None:
            if r.rank == 0:
                assert info is not None
                entry.finalize(
                    {
                        **info,
                        "world_size": r.world,
                        "devices": sorted({str(i["device"]) for i in infos if i is not None}),
                    }
                )

        dist.agree(finalize, f"finalizing store entry {entry.hash}")
    p.log(f"{view} representations written to the store ({entry.dir})")
    return entry


def save_labels(p: Plan, entry: Any) -> None:
    """Keep the samples' labels, groups and texts beside their vectors (`mch.store.load`,
    `mch export-store`), rewritten whenever they differ from what the entry holds (annotations
    edited in place change no media fingerprint, so the entry is reused); a read-only store
    goes without."""
    if callable(getattr(p.plugin, "stored_key", None)):  # imported: the file's own columns are kept
        return
    if len(p.samples) != len(entry.sample_ids):  # not this plan's samples (never expected)
        return
    try:
        labels, groups = _labels(p, p.samples)
    except MchError:
        return
    have = entry.read_labels() or {}
    held_l, held_g = have.get("labels") or {}, have.get("groups") or {}
    if have.get("texts") == [s.text for s in p.samples] and all(
        held_l.get(a) == labels[a].tolist() and held_g.get(a) == groups[a].tolist() for a in p.attributes
    ):
        return
    try:
        entry.write_labels(
            {
                "labels": {a: v.tolist() for a, v in labels.items()},
                "groups": {a: v.tolist() for a, v in groups.items()},
                "texts": [s.text for s in p.samples],
                "protocol": p.cfg.protocol,
            }
        )
    except (OSError, MchError) as exc:
        p.log(f"labels not kept beside the vectors ({exc})")


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
                idx = rng[b : b + bs]
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
                        skipped.append(
                            {"sample_id": s.sample_id, "reason": str(exc), "path": getattr(exc, "path", None)}
                        )
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
    info: dict[str, Any] = {
        "batch_size": bs,
        "padding_side": "right",
        "stages_resolved": stages,
        "device": str(plugin.device),
    }
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
                raise MchError(
                    f"dataset {p.dataset_spec.name!r}: sample {s.sample_id} has no group "
                    f"{attr.group_key!r} (the group key of attribute {a!r})"
                )
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
    if cfg.stages:  # an entry may hold more stages than asked (imported files): analyse those asked
        missing = [s for s in cfg.stages if s not in reps]
        if missing:
            raise MchError(f"--stage {missing[0]}: the stored representations have stages {', '.join(reps)}")
        reps = {s: reps[s] for s in cfg.stages}
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
                treps = {s: np.asarray(v)[np.asarray(keep, dtype=np.intp)] for s, v in treps.items()}
            text_entry[key] = treps
        return text_entry[key]

    previous: dict[str, AnalysisOutput] = {}
    for aspec in p.analysis_specs:
        analysis = load_entry(aspec.entry)(aspec)
        params = analysis_params(analysis, aspec, cfg, p.plugin)
        ctx = AnalysisContext(
            protocol=cfg.protocol,
            params=params,
            seed=cfg.seed,
            stages=list(reps),
            reps=reps,
            samples=samples,
            attributes=p.attributes,
            labels=labels,
            groups=groups,
            span=cfg.effective_span,
            previous=previous,
            progress=p.progress,
            run_config=cfg,
            dataset=p.dataset,
            _model_loader=p.ensure_loaded if aspec.needs_model else None,
            _cache=entry.cached,
            _text_reps=paired_text,
            text_source=text_source(p),
            _own_text_reps=lambda: paired_text(own=True),
            _rerun=lambda *args: rerun(p, *args),
        )
        if p.loaded:
            ctx._model = p.plugin
        p.log(f"running analysis {aspec.name}")
        t = time.time()
        out = analysis.run(ctx)
        previous[aspec.name] = out
        yield aspec.name, out, params, time.time() - t


def rerun(
    p: Plan,
    analyses: Sequence[str],
    sample_ids: Sequence[str],
    adapter: str | None = None,
    write_records: bool = False,
    model: Any = None,
) -> tuple[dict[str, AnalysisOutput], list[Path]]:
    """`analyses` again on `sample_ids` of this run, with the PEFT `adapter` merged or without
    (`AnalysisContext.rerun`): a plan over the same configuration and store, silent; `model`, the
    run's loaded model, is reused when there is no adapter. Returns {name: output} and the paths
    of the records written (with `write_records`)."""
    import dataclasses

    cfg = dataclasses.replace(p.cfg, analyses=tuple(analyses), sample_ids=list(sample_ids), adapter=adapter)
    sub = plan(cfg, log=lambda s: None, progress=p.progress)
    if adapter is None and model is not None:  # the live model is this very model: no second load
        sub.plugin, sub.loaded = model, True
    t = time.time()
    entry = extract(sub, "modal")
    ex = time.time() - t
    outs = analyze(sub, entry)
    written = (
        [
            write_record(record_for(sub, entry, name, out, params, dur, ex), Path(cfg.out_dir))
            for name, out, params, dur in outs
        ]
        if write_records
        else []
    )
    return {name: out for name, out, _, _ in outs}, written


def _write_each(p: Plan, entry: Any, extract_s: float, on_record: OnRecord | None) -> list[tuple[Path, dict]]:
    """Run the analyses, writing each one's record as soon as it has finished: a failure or
    Ctrl-C in a later analysis keeps the earlier records."""
    written = []
    for name, out, params, dur in iter_analyses(p, entry):
        rec = record_for(p, entry, name, out, params, dur, extract_s)
        path = write_record(rec, p.cfg.out_dir)
        written.append((path, rec))
        record_written(rec, path, p.log)
        if on_record is not None:
            on_record(path, rec)
    return written


def run_bench(
    cfg: RunConfig, log: Log = RUN_LOG.info, progress: Progress | None = None, on_record: OnRecord | None = None
) -> tuple[Plan, list[tuple[Path, dict[str, Any]]]]:
    """Extract (or reuse), then run the analyses; each record is written as its analysis ends
    (`on_record(path, record)` is called then). Returns the plan and [(path, record)]. Under a
    launcher every rank extracts its share, then rank 0 alone runs the analyses (the other
    ranks return no records)."""
    from . import dist

    check_results_dir(cfg.out_dir)
    p = plan(cfg, log, progress)
    t = time.time()
    entry = extract(p, "modal")
    dist.finish()  # the analyses run on rank 0 alone (a launcher's other ranks stop here)
    if not dist.is_main():
        return p, []
    return p, _write_each(p, entry, time.time() - t, on_record)


def run_analyze(
    cfg: RunConfig, log: Log = RUN_LOG.info, progress: Progress | None = None, on_record: OnRecord | None = None
) -> tuple[Plan, list[tuple[Path, dict[str, Any]]]]:
    """Like `run_bench`, on an extraction already complete in the store (never extracts)."""
    check_results_dir(cfg.out_dir)
    p = plan(cfg, log, progress)
    entry = stored_entry(p, "modal")
    if not entry.complete:
        raise MchError(
            "no complete extraction for this model/dataset/protocol in the store; run `mch extract` "
            "with the same options first"
        )
    return p, _write_each(p, entry, 0.0, on_record)
