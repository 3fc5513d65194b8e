"""Extraction speed: mch's capture against the reference implementation's loop, same run.

The naive loop is the reference's way (extraction-and-labels.md §2): batch 1, a full forward
pass (LM head over every position included), hooks on every stage, a plain mean over all
positions. mch: batched, mask-aware pooling in the hook, and the forward pass stopped after
the deepest stage, so the LM head is never computed. Both use span `all` so the pooled
vectors must agree; the benchmark checks that, then prints samples/s and the ratio.

    python benchmarks/extract.py [--n 96] [--batch-sizes 1,8,16,32]

Target (issue 2): mch >= 3x the naive loop on CPU at its best batch size.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from mch.api import ModelSpec
from mch.capture import capture
from mch.model import resolve_module


def naive_loop(plugin, samples, full_forward) -> dict[str, np.ndarray]:
    rows: dict[str, list[np.ndarray]] = {}
    with torch.no_grad():
        for s in samples:
            prepared = plugin.prepare([s], "paper")
            stages = plugin.stage_map("modal", "paper")  # hand-written hooks: the reference's way, independent of mch's
            grabbed = {}
            hooks = []
            for st, path in stages.items():

                def hook(_m, _a, out, st=st):
                    h = out[0] if isinstance(out, (tuple, list)) else out
                    h = h.detach().float()
                    grabbed[st] = (h.mean(1) if h.dim() == 3 else h)[0].cpu().numpy()

                hooks.append(resolve_module(plugin.module, path).register_forward_hook(hook))
            try:
                full_forward(plugin, prepared)
            finally:
                for h in hooks:
                    h.remove()
            for st in stages:
                rows.setdefault(st, []).append(grabbed[st])
    return {k: np.stack(v) for k, v in rows.items()}


def mch_capture(plugin, samples, batch_size: int) -> dict[str, np.ndarray]:
    stages = plugin.stages("modal")
    parts: dict[str, list[np.ndarray]] = {}
    for i in range(0, len(samples), batch_size):
        out = capture(plugin, plugin.prepare(samples[i : i + batch_size], "paper"), stages, "all")
        for k, v in out.items():
            parts.setdefault(k, []).append(v.numpy())
    return {k: np.concatenate(v) for k, v in parts.items()}


def bench_model(name, plugin, samples, full_forward, batch_sizes) -> float:
    for s in samples:
        _ = s.media
    t = time.perf_counter()
    ref = naive_loop(plugin, samples, full_forward)
    naive_rate = len(samples) / (time.perf_counter() - t)
    print(f"\n{name}: {len(samples)} samples, stages {len(ref)}")
    print(f"  naive loop (batch 1, full forward, plain mean): {naive_rate:8.1f} samples/s")
    best = 0.0
    for bs in batch_sizes:
        t = time.perf_counter()
        got = mch_capture(plugin, samples, bs)
        rate = len(samples) / (time.perf_counter() - t)
        worst = max(float(np.abs(got[k] - ref[k]).max() / (np.abs(ref[k]).max() + 1e-12)) for k in ref)
        ok = "equal" if worst < 1e-4 else f"DIFFERENT (rel {worst:.1e})"
        print(
            f"  mch batch {bs:3d}:                                  {rate:8.1f} samples/s  "
            f"({rate / naive_rate:4.1f}x)  pooled vectors {ok}"
        )
        if worst < 1e-4:
            best = max(best, rate / naive_rate)
    print(f"  best speed-up with equal vectors: {best:.1f}x (target >= 3x)")
    return best


def toy_case(n):
    from mch.plugins.attributes import toy as world
    from mch.plugins.models.toy import ToyModel

    plugin = ToyModel(ModelSpec("toy", "", "speech", "builtin:toy"))
    plugin.load()

    def full(p, prep):  # the reference calls the whole model: LM head included
        x = prep.inputs
        emb = p.module.embed(x["frames"], x["input_ids"], x["audio_mask"], x["frame_mask"])
        return p.module.llm(inputs_embeds=emb, attention_mask=x["attention_mask"])

    return plugin, [world.make_sample("test", i) for i in range(n)], full


def llava_case(n, tmp: Path):
    """A small randomly initialised LLaVA-1.5-architecture model: CLIP tower at 224 px (256
    image tokens), hidden 256, 4 layers, a 32000-word vocabulary (the LM head is what the
    naive loop wastes time on)."""
    from PIL import Image
    from transformers import LlavaConfig, LlavaForConditionalGeneration

    from mch.api import Sample
    from mch.plugins.models.llava import Llava
    from mch.plugins.models.tiny import make_tiny_llava

    path = make_tiny_llava(tmp / "llava", image_size=224)
    cfg = LlavaConfig.from_pretrained(path)
    t = cfg.text_config
    t.hidden_size, t.intermediate_size, t.num_hidden_layers = 256, 688, 4
    t.num_attention_heads, t.num_key_value_heads, t.vocab_size = 4, 4, 32000
    torch.manual_seed(0)
    LlavaForConditionalGeneration(cfg).eval().save_pretrained(path)
    plugin = Llava(ModelSpec("llava", "", "vision", str(path)))
    plugin.load()
    rng = np.random.default_rng(0)
    samples = []
    for i in range(n):
        arr = rng.integers(0, 255, size=(224, 224, 3), dtype=np.uint8)
        samples.append(Sample(f"img{i}", "a picture", {}, {}, loader=lambda a=arr: Image.fromarray(a)))
    return plugin, samples, lambda p, prep: p.module(**prep.inputs)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=96)
    ap.add_argument("--batch-sizes", default="1,8,16,32")
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    bss = [int(x) for x in a.batch_sizes.split(",")]
    results = {"toy": bench_model("toy organism", *toy_case(a.n * 4), batch_sizes=bss)}
    with tempfile.TemporaryDirectory() as d:
        results["llava"] = bench_model(
            "LLaVA-architecture (random, hidden 256, 4 layers, 256 image tokens)",
            *llava_case(a.n // 2, Path(d)),
            batch_sizes=bss,
        )
    print("\nsummary: " + ", ".join(f"{k} {v:.1f}x" for k, v in results.items()))


if __name__ == "__main__":
    main()
