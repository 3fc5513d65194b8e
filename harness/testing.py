"""The plugin-author kit: a contract check for model plugins, and tiny sample fixtures.

    from mch.testing import assert_model_plugin_contract, tiny_samples

    def test_my_model(tmp_path):
        ckpt = make_my_tiny_checkpoint(tmp_path)          # your builder, real on-disk format
        report = assert_model_plugin_contract(spec, ckpt, tiny_samples("vision"))

`assert_model_plugin_contract` loads the plugin and checks what the harness relies on, for
every view the plugin declares (`views`, default: modal, plus text when the samples have
text) and both protocols:

- every declared stage resolves in the loaded module tree; the stage names are `encoder`
  (modal view), `adapter`, `llm.0` .. `llm.{L-1}` without gaps, and `llm.final`;
- `prepare` returns pools whose owners cover every sample and whose span masks have one
  shape per group, with `modality` inside `all` and non-empty for every sample;
- one full forward fires every stage's module exactly once, with the declared width
  (`stage_dims(view)` when the plugin has it; otherwise every `llm.*` and the `adapter`
  share the LLM width), and with as many rows and positions as the pool masks;
- pooled vectors (spans `modality` and `all`) do not change with batch size, batch order or
  padding: each sample alone against the whole batch, within `atol`;
- `score` returns finite log-probabilities <= 0 of shape (B, K) with token counts >= 1,
  the same for a sample alone as in the batch.

Failures raise `ContractError` (an AssertionError) naming the plugin, view, protocol and
stage. The returned `ContractReport` has the measured numbers (widths, largest batch
difference) for a test to print or assert on.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from .api import MchError, ModelSpec, Sample, load_entry
from .capture import capture, pool
from .hooks import Trace
from .model import ModelPlugin, Prepared, stage_group, stage_map_of

SPANS_CHECKED = ("modality", "all")


class ContractError(AssertionError):
    """A model plugin breaks the contract the harness relies on."""


@dataclass
class ContractReport:
    plugin: str
    views: list[str]
    stages: dict[str, list[str]] = field(default_factory=dict)  # view -> stages
    widths: dict[str, dict[str, int]] = field(default_factory=dict)  # view -> stage -> D
    max_batch_diff: float = 0.0  # largest |batch - alone| of any pooled value
    score_shape: tuple[int, int] | None = None
    checks: int = 0


# --------------------------------------------------------------------------- fixtures

_WORDS = [
    "a dog on the grass",
    "a red bus near a building",
    "two people ride bikes",
    "it is eleven o'clock",
    "that is exactly what happened",
    "the speaker sounds happy",
    "a plate of food",
    "a cat on a chair",
]
_CLASSES = ["angry", "happy", "sad", "neutral"]


def tiny_samples(modality: str, n: int = 4, seed: int = 0) -> list[Sample]:
    """`n` small deterministic samples of `modality` (speech, vision or text), each with a
    paired text, a label for attribute `emotion` and a group `speaker`. Sizes differ on
    purpose so batches need padding: speech clips of 0.3-2 s at 16 kHz (every third at
    22.05 kHz, to exercise resampling), images of different sizes and aspect ratios."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        text = _WORDS[i % len(_WORDS)]
        labels = {"emotion": _CLASSES[i % len(_CLASSES)]}
        groups = {"speaker": f"spk{i % 2}"}
        if modality == "speech":
            sr = 22050 if i % 3 == 2 else 16000
            dur = 0.3 + 1.7 * ((i * 0.37) % 1.0)
            t = np.arange(int(sr * dur)) / sr
            wav = 0.3 * np.sin(2 * np.pi * (150 + 40 * i) * t) + 0.05 * rng.standard_normal(t.size)
            media: Any = (wav.astype(np.float32), sr)
        elif modality == "vision":
            from PIL import Image

            h, w = 24 + 12 * (i % 3), 40 + 8 * (i % 2)
            arr = (rng.random((h, w, 3)) * 255).astype(np.uint8)
            media = Image.fromarray(arr, "RGB")
        elif modality == "text":
            media = None
        else:
            raise MchError(f"tiny_samples: unknown modality {modality!r}; use speech, vision or text")
        out.append(Sample(sample_id=f"tiny{i}", text=text, labels=labels, groups=groups, _media=media))
    return out


# --------------------------------------------------------------------------- the contract


def load_plugin(plugin_or_spec: ModelPlugin | ModelSpec, checkpoint: str | None = None, **kwargs: Any) -> ModelPlugin:
    """A loaded plugin from a plugin object or a spec (`checkpoint` overrides the spec's)."""
    if isinstance(plugin_or_spec, ModelSpec):
        cls = load_entry(plugin_or_spec.entry)
        plugin = cls(plugin_or_spec, checkpoint=None if checkpoint is None else str(checkpoint), **kwargs)
    else:
        plugin = plugin_or_spec
    if plugin.module is None:
        plugin.load()
    return plugin


def _fail(plugin: ModelPlugin, where: str, msg: str) -> ContractError:
    return ContractError(f"model {plugin.spec.name!r} ({where}): {msg}")


def _check_stage_names(plugin: ModelPlugin, view: str, stages: Sequence[str]) -> None:
    where = f"view {view}"
    llm = sorted(int(s.split(".")[1]) for s in stages if s.startswith("llm.") and s != "llm.final")
    if not llm or llm != list(range(len(llm))):
        raise _fail(plugin, where, f"llm stages must be llm.0 .. llm.{{L-1}} without gaps, got {llm}")
    required = {"adapter", "llm.final"} | ({"encoder"} if view == "modal" else set())
    missing = required - set(stages)
    if missing:
        raise _fail(plugin, where, f"missing stages {sorted(missing)}")
    unknown = [s for s in stages if s not in ("encoder", "adapter", "llm.final") and not s.startswith("llm.")]
    if unknown:
        raise _fail(plugin, where, f"unknown stage names {unknown}")


def _check_pools(plugin: ModelPlugin, prepared: Prepared, groups: set[str], where: str) -> None:
    n = prepared.n
    for g in groups:
        pool = prepared.pools.get(g)
        if pool is None:
            continue  # capture then requires one row per sample, checked at the forward
        owner = pool.owner
        if owner.dim() != 1 or owner.dtype not in (torch.int64, torch.int32):
            raise _fail(plugin, where, f"pool {g!r}: owner must be a 1-D integer tensor")
        if owner.numel() and (int(owner.min()) < 0 or int(owner.max()) >= n):
            raise _fail(plugin, where, f"pool {g!r}: owner values outside [0, {n})")
        if set(owner.tolist()) != set(range(n)):
            raise _fail(plugin, where, f"pool {g!r}: some sample owns no row")
        if pool.split is not None and (pool.split.shape != (n,) or bool((pool.split <= 0).any())):
            raise _fail(
                plugin,
                where,
                f"pool {g!r}: proportional weights {pool.split.tolist()} must be one positive number per sample",
            )
        shapes = {s: tuple(m.shape) for s, m in pool.masks.items()}
        if len(set(shapes.values())) > 1:
            raise _fail(plugin, where, f"pool {g!r}: span masks differ in shape {shapes}")
        for s, m in pool.masks.items():
            if m.dtype != torch.bool or m.dim() != 2 or m.shape[0] != owner.numel():
                raise _fail(plugin, where, f"pool {g!r}: mask {s!r} must be bool (R, T) with R = len(owner)")
        mod, alls = pool.masks.get("modality"), pool.masks.get("all")
        if mod is not None and alls is not None and bool((mod & ~alls).any()):
            raise _fail(plugin, where, f"pool {g!r}: span 'modality' covers positions outside span 'all'")
        for s in SPANS_CHECKED:
            span_mask = pool.masks.get(s)
            if span_mask is None:
                continue
            per_sample = torch.zeros(n, dtype=torch.long).index_add_(
                0, owner.long().cpu(), span_mask.sum(1).long().cpu()
            )
            if bool((per_sample == 0).any()):
                raise _fail(
                    plugin,
                    where,
                    f"pool {g!r}: span {s!r} is empty for samples {torch.nonzero(per_sample == 0).flatten().tolist()}",
                )


def _forward_once(
    plugin: ModelPlugin, prepared: Prepared, view: str, where: str, protocol: str = "default"
) -> dict[str, torch.Tensor]:
    """Run one full forward with hooks on every stage; each must fire exactly once. Returns
    each stage's raw output (detached, on CPU) for pooling."""
    smap = stage_map_of(plugin, view, protocol)
    if plugin.module is None:
        raise _fail(plugin, where, "the plugin is not loaded")
    with torch.inference_mode(), Trace(plugin.module, smap, keep=True) as tr:
        plugin.forward(prepared)
    bad = {s: n for s, n in tr.calls.items() if n != 1}
    if bad:
        raise _fail(plugin, where, f"stages must fire exactly once per forward, fired {bad}")
    return {s: kept[0].float().cpu() for s, kept in tr.kept.items()}


def _pooled(prepared: Prepared, raw: dict[str, torch.Tensor], span: str) -> dict[str, torch.Tensor]:
    return {s: pool(h, prepared.pools.get(stage_group(s)), span, prepared.n) for s, h in raw.items()}


def assert_model_plugin_contract(
    plugin_or_spec: ModelPlugin | ModelSpec,
    checkpoint: str | None = None,
    samples: Sequence[Sample] | None = None,
    *,
    protocols: Sequence[str] = ("default", "paper"),
    views: Sequence[str] | None = None,
    atol: float = 1e-5,
    query: str = "The answer is",
    continuations: Sequence[str] = ("yes", "no", "not sure"),
) -> ContractReport:
    """Load the plugin and check the contract (module docstring); returns a ContractReport."""
    plugin = load_plugin(plugin_or_spec, checkpoint)
    samples = (
        list(samples)
        if samples is not None
        else tiny_samples(plugin.modality if plugin.modality in ("speech", "vision", "text") else "speech")
    )
    if len(samples) < 2:
        raise ContractError("the contract check needs at least 2 samples (batch invariance)")
    if views is None:
        declared = getattr(plugin, "views", None)
        has_text = all((s.text or "").strip() for s in samples)
        views = list(declared) if declared else ["modal"] + (["text"] if has_text else [])
        if not has_text:
            views = [v for v in views if v != "text"]
    report = ContractReport(plugin=plugin.spec.name, views=list(views))
    for view in views:
        plugin.validate_stage_map(view)
        stages = plugin.stages(view)
        _check_stage_names(plugin, view, stages)
        report.stages[view] = stages
        declared = plugin.stage_dims(view) if hasattr(plugin, "stage_dims") else None
        for protocol in protocols:
            where = f"view {view}, protocol {protocol}"
            prepared = plugin.prepare(samples, protocol, view)
            if prepared.n != len(samples):
                raise _fail(plugin, where, f"prepare returned n={prepared.n} for {len(samples)} samples")
            _check_pools(plugin, prepared, {stage_group(s) for s in stages}, where)
            raw = _forward_once(plugin, prepared, view, where, protocol)
            widths = {s: int(h.shape[-1]) for s, h in raw.items()}
            for s, h in raw.items():
                pool_spec = prepared.pools.get(stage_group(s))
                rows, length = h.shape[0], (h.shape[1] if h.dim() == 3 else 1)
                if pool_spec is None:
                    if rows != prepared.n:
                        raise _fail(plugin, where, f"stage {s!r} has {rows} rows for {prepared.n} samples and no pool")
                    continue
                if pool_spec.split is not None:  # rows in proportion to the samples' weights
                    try:
                        pool_spec.split_owner(int(h.numel() // h.shape[-1]))
                    except MchError as exc:
                        raise _fail(plugin, where, f"stage {s!r}: {exc}") from None
                    continue
                for span, m in pool_spec.masks.items():
                    if tuple(m.shape) != (rows, length):
                        raise _fail(
                            plugin,
                            where,
                            f"stage {s!r} output is {tuple(h.shape)} but span {span!r} mask is {tuple(m.shape)}",
                        )
            if declared is not None:
                wrong = {s: (widths[s], declared.get(s)) for s in widths if declared.get(s) != widths[s]}
                if wrong:
                    raise _fail(plugin, where, f"stage widths differ from stage_dims (got, declared): {wrong}")
            llm_w = {widths[s] for s in widths if s.startswith("llm.")}
            if len(llm_w) != 1 or widths["adapter"] not in llm_w:
                raise _fail(plugin, where, f"adapter and llm stages must share the LLM width, got {widths}")
            report.widths[view] = widths
            # capture() itself (hooks, pooling, early stop) must agree with the full forward
            via_capture = capture(plugin, prepared, stages, "modality", view, protocol)
            mine = _pooled(prepared, raw, "modality")
            for s in stages:
                d = float((via_capture[s] - mine[s]).abs().max())
                if not d <= atol:
                    raise _fail(plugin, where, f"stage {s!r}: capture() differs from the full forward by {d:.3g}")
            order = list(range(len(samples)))[::-1]
            rev_prep = plugin.prepare([samples[i] for i in order], protocol, view)
            rev_raw = _forward_once(plugin, rev_prep, view, where, protocol)
            alone = []
            for smp in samples:
                prep1 = plugin.prepare([smp], protocol, view)
                alone.append((prep1, _forward_once(plugin, prep1, view, where, protocol)))
            for span in SPANS_CHECKED:
                batch = _pooled(prepared, raw, span)
                for s, v in batch.items():
                    if tuple(v.shape) != (len(samples), widths[s]) or not bool(torch.isfinite(v).all()):
                        raise _fail(
                            plugin,
                            where,
                            f"stage {s!r} span {span!r}: pooled output {tuple(v.shape)} is not finite (n, D)",
                        )
                rev = _pooled(rev_prep, rev_raw, span)
                for j, i in enumerate(order):
                    one = _pooled(alone[i][0], alone[i][1], span)
                    for s in stages:
                        for other, label in ((one[s][0], "alone"), (rev[s][j], "in reversed order")):
                            d = float((batch[s][i] - other).abs().max())
                            report.max_batch_diff = max(report.max_batch_diff, d)
                            if not d <= atol:
                                raise _fail(
                                    plugin,
                                    where,
                                    f"stage {s!r} span {span!r}: sample {samples[i].sample_id} "
                                    f"pooled {label} differs from the batch by {d:.3g} > {atol}",
                                )
                report.checks += 1
        # scoring, once per view (default protocol)
        sc = plugin.score(samples, query, list(continuations), "default", view)
        logp = np.asarray(sc.logp, dtype=np.float64)
        if logp.shape != (len(samples), len(continuations)):
            raise _fail(
                plugin,
                f"view {view}",
                f"score returned logp of shape {logp.shape}, expected {(len(samples), len(continuations))}",
            )
        if not np.isfinite(logp).all() or (logp > 1e-4).any():
            raise _fail(plugin, f"view {view}", "score returned log-probabilities that are not finite and <= 0")
        nt = np.asarray(sc.n_tokens)
        if nt.shape not in ((len(continuations),), logp.shape) or (nt < 1).any():
            raise _fail(plugin, f"view {view}", f"score returned token counts {nt.tolist()}")
        first = np.asarray(
            plugin.score(samples[:1], query, list(continuations), "default", view).logp, dtype=np.float64
        )
        d = float(np.abs(first[0] - logp[0]).max())
        if not d <= max(1e-3, 1e3 * atol):
            raise _fail(plugin, f"view {view}", f"score of a sample alone differs from the batch by {d:.3g}")
        report.score_shape = (int(logp.shape[0]), int(logp.shape[1]))
        report.checks += 1
    if not math.isfinite(report.max_batch_diff):
        raise ContractError("non-finite batch difference")
    return report


def make_lora_adapter(
    module: torch.nn.Module,
    out_dir: Any,
    target_modules: Sequence[str] = ("q_proj", "v_proj"),
    r: int = 4,
    seed: int = 0,
) -> tuple[Any, dict[str, torch.Tensor]]:
    """Save a PEFT LoRA adapter made on a deep copy of `module` (the LLM decoder a plugin
    merges adapters into) with random, non-zero A and B, so that merging it changes the
    weights. Returns the directory and the expected merged weights {parameter name: W}."""
    import copy
    from pathlib import Path

    from peft import LoraConfig, get_peft_model

    torch.manual_seed(seed)
    cfg = LoraConfig(
        r=r, lora_alpha=2 * r, target_modules=list(target_modules), lora_dropout=0.0, init_lora_weights=False
    )
    peft_model = get_peft_model(copy.deepcopy(module).float(), cfg)
    out = Path(out_dir)
    peft_model.save_pretrained(str(out))
    merged = peft_model.merge_and_unload()
    expected = {
        k: v.detach().clone() for k, v in merged.state_dict().items() if any(f"{t}.weight" in k for t in target_modules)
    }
    return out, expected
