"""Which store entry a plan reads (mch.runner): its own store key's, or a complete one that
already holds what it asks for, so nothing is extracted twice:

- a stage subset (`--stage llm.10`) reads a complete entry whose key differs from its own only
  in holding more stages (a full run of the same model, checkpoint files, samples, ...);
- a checkpoint that is not on this machine reads the one complete entry extracted from that
  checkpoint name (its fingerprint cannot be taken here).

Capture stops after the deepest stage asked for and pools each stage on its own (mch.capture),
so a stage's vectors do not depend on which other stages were captured with it: the reused
rows are the ones a fresh subset extraction writes.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from .api import MchError
from .run_plan import Plan
from .store_key import MISSING, _without_checkpoint_fingerprint, store_key

# A reused entry's key equals the plan's in every field of `store_key` but `stages`:
#   model: identity (name, checkpoint, revision, smoke, ...), checkpoint_fingerprint (the weights'
#     files), options and option_fingerprints (--model-option), adapter_fingerprint (--adapter);
#   dataset: name, path (--data-path), split, sample_ids_sha256 (--limit, --seed, the selected
#     ids), options (--data-option), media_fingerprint (modal view) or texts_sha256 (text view);
#   prompt, view, span, protocol, dtype.
# The whole key but `stages` is compared, so a field added to the key later is compared too.
# `stages` itself: the entry must hold every stage asked for (its manifest's stages).


def _without_stages(key: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in key.items() if k != "stages"}


def _without_stages_and_fingerprint(key: dict[str, Any]) -> dict[str, Any]:
    return _without_stages(_without_checkpoint_fingerprint(key))


def _holds(man: dict[str, Any], stages: Any) -> bool:
    """Does an entry (its manifest) hold every stage of `stages` (a key's: a list, or "all")?"""
    if stages == "all":  # every stage of the model: only an entry of every stage holds them
        return man["key"].get("stages") == "all"
    return set(stages) <= set(man.get("stages") or [])


def stored_entry(p: Plan, view: str, reuse: bool = True) -> Any:
    """This plan's store entry for `view` (complete or not), or with `reuse` a complete one
    holding more stages (module docstring). When the checkpoint is not on this machine, its
    fingerprint cannot be taken: a complete entry extracted from the same checkpoint name is
    used if there is exactly one such extraction, and the log says so."""
    from .store import Store

    cfg = p.cfg
    want = cfg.chunk_size or int(os.environ.get("MCH_CHUNK_SIZE", "256"))
    chunk = cfg.batch_size * max(1, want // cfg.batch_size)  # whole batches: resumed runs batch alike
    store = Store(cfg.store)
    key = store_key(p, view)
    entry = store.entry(key, [s.sample_id for s in p.samples], chunk_size=chunk)
    entry.log = p.log
    if entry.complete:
        return entry
    missing = key["model"]["checkpoint_fingerprint"] == MISSING
    if missing:
        found = _complete_holding(store, key, _without_stages_and_fingerprint)
        same = [(d, k) for d, k in found if k["stages"] == key["stages"]]  # its own stages first
        found = same or found
        prints = {str(k["model"].get("checkpoint_fingerprint")): d.name for d, k in found}
        if len(prints) > 1:
            raise MchError(
                f"checkpoint {p.plugin.checkpoint} is not on this machine and the store holds "
                f"{len(prints)} extractions of it from different files ({', '.join(prints.values())}); "
                f"make the checkpoint available, or remove the ones not wanted with `mch store rm KEY`"
            )
        if not found:
            return entry
        old = _open(store, found[0][1], entry)
        if not same:
            old.reused_for = entry.hash
        p.log(
            f"checkpoint {p.plugin.checkpoint} is not on this machine: using store entry {old.hash}, extracted "
            f"from its files with fingerprint {old.key['model'].get('checkpoint_fingerprint')}"
            + ("" if same else f" (it holds more stages than {', '.join(key['stages'])}: those are read)")
        )
        return old
    sup = superset_entry(p, view, entry) if reuse else None
    return sup or entry


def superset_entry(p: Plan, view: str, entry: Any) -> Any:
    """A complete entry of the store that holds every stage `entry` (this plan's own, not
    complete) asks for and equals its key in every other field, marked reused; None if none."""
    from .store import Store

    if entry.key.get("stages") == "all":  # only the plan's own key holds every stage
        return None
    store = Store(p.cfg.store)
    found = _complete_holding(store, entry.key, _without_stages)
    return reused_entry(p, view, found[0][0], entry) if found else None


def reused_entry(p: Plan, view: str, d: Path, entry: Any) -> Any:
    """The complete entry in directory `d`, read for `entry`'s stages (a stage subset of it)."""
    from .store import Store

    key = json.loads((d / "manifest.json").read_text())["key"]
    sup = _open(Store(p.cfg.store), key, entry)  # refuses an entry of other samples
    if not sup.complete:  # rank 0 found it complete: a store that is not shared, or removed since
        raise MchError(
            f"store entry {sup.hash} ({sup.dir}) was complete and is not here (removed meanwhile, or a "
            f"store that not every node shares: set MCH_STORE to one they share); run again"
        )
    sup.reused_for = entry.hash
    stages = ", ".join(entry.key["stages"])
    p.log(f"{view} representations: stages {stages} read from store entry {sup.hash}, which holds them (not extracted)")
    return sup


def _complete_holding(store: Any, key: dict[str, Any], ignore: Any) -> list[tuple[Path, dict[str, Any]]]:
    """[(directory, key)] of the complete entries equal to `key` once `ignore` drops fields,
    holding every stage it asks."""
    out = []
    for d in store.complete_like(key, ignore):
        try:
            man = json.loads((d / "manifest.json").read_text())
            if _holds(man, key["stages"]):
                out.append((d, man["key"]))
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return out


def _open(store: Any, key: dict[str, Any], like: Any) -> Any:
    old = store.entry(key, like.sample_ids, like.chunk_size)
    old.log = like.log
    return old
