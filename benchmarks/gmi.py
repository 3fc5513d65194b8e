"""GMI scoring speed: shared-prefix batching against scoring each class's full sequence, same
model, same run.

GMI needs log p(v | Q(x)) for the K verbalizers of every class after a prompt Q(x) that holds
the whole modality (hundreds of image tokens). `mch.scoring.score_shared_prefix` runs the
prompt once and reuses its KV cache for the K continuations; `mch.scoring.score_full` runs
prompt + continuation K times. Both read the same decoder inputs (the model's own
`score_parts`: media merged in, the attribute's query after it), so the media preprocessing
common to both is left out of the timing. The benchmark checks the two give the same scores
(float tolerance), then prints the time per batch of each and the ratio.

    python benchmarks/gmi.py [--k 6,8,12] [--batch 8] [--repeats 7] [--image-size 224]

Models: the toy organism (prompt: BOS, 8-16 modality tokens, the query) and a tiny
LLaVA-shaped model built here in the llava-hf format (`make_tiny_llava`; at image size 224,
patch 14: 256 image tokens + the prompt, so the prefix dominates). Target (issue 6): >= 3x
for K >= 6 classes.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mch.scoring import left_pad, score_full, score_shared_prefix

WORDS = ["cat", "dog", "bird", "fish", "tree", "car", "boat", "house", "red", "blue", "green", "white"]


def timed_pair(f: Callable[[], Any], g: Callable[[], Any], repeats: int) -> tuple[float, float, float, Any, Any]:
    """Time f and g alternately, `repeats` times each after one warm-up, so both see the same
    load on a shared machine. Returns the best-of times (as timeit reports them), the median
    of the per-repeat ratios t_g / t_f, and the last results."""
    a, b = f(), g()
    tf, tg = [], []
    for _ in range(repeats):
        t = time.perf_counter()
        a = f()
        tf.append(time.perf_counter() - t)
        t = time.perf_counter()
        b = g()
        tg.append(time.perf_counter() - t)
    ratio = float(np.median(np.array(tg) / np.array(tf)))
    return min(tf), min(tg), ratio, a, b


def compare(name: str, parts: Any, repeats: int) -> dict[str, Any]:
    x, m = left_pad(parts.prefixes)
    conts = parts.continuations
    with torch.inference_mode():
        t_shared, t_full, ratio, (a, _), (b, _) = timed_pair(
            lambda: score_shared_prefix(parts.lm, x, m, conts), lambda: score_full(parts.lm, x, m, conts), repeats
        )
    diff = float((a - b).abs().max())
    row = {
        "model": name,
        "K": len(conts),
        "batch": x.shape[0],
        "prefix_tokens": int(m.sum(1).max()),
        "cont_tokens": max(len(c) for c in conts),
        "shared_s": t_shared,
        "full_s": t_full,
        "speedup": ratio,
        "max_abs_diff": diff,
    }
    print(
        f"{name:11s} K={row['K']:2d} batch={row['batch']} prefix={row['prefix_tokens']:4d} "
        f"cont<={row['cont_tokens']} | shared {1000 * t_shared:7.1f} ms  full {1000 * t_full:7.1f} ms (best of "
        f"{repeats}) | speedup {ratio:5.2f}x (median of paired ratios)  max |diff| {diff:.1e}"
    )
    return row


def toy_parts(k: int, batch: int) -> tuple[Any, Any]:
    from mch.api import load_entry
    from mch.manager import get_registry
    from mch.plugins.attributes import toy as world

    spec = get_registry().get("model", "toy")
    model = load_entry(spec.entry)(spec)
    model.load()
    samples = [world.make_sample("test", i) for i in range(batch)]
    words = (world.CONTENT + world.SPEAKERS)[:k]
    return model, model.score_parts(samples, "the word is", words, "default")


def llava_parts(k: int, batch: int, image_size: int, tmp: Path) -> tuple[Any, Any]:
    from mch.api import ModelSpec
    from mch.plugins.models.llava import Llava
    from mch.plugins.models.tiny import make_tiny_llava
    from mch.testing import tiny_samples

    ckpt = tmp / f"llava{image_size}"
    if not (ckpt / "config.json").exists():
        make_tiny_llava(ckpt, image_size=image_size)
    spec = ModelSpec(name="llava", entry="mch.plugins.models.llava:Llava", modality="vision", checkpoint=str(ckpt))
    model = Llava(spec)
    model.load()
    samples = tiny_samples("vision", batch)
    return model, model.score_parts(samples, "The picture shows", WORDS[:k], "default")


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--k", default="6,8,12", help="numbers of classes (continuations)")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--image-size", type=int, default=224, help="tiny LLaVA image size (patch 14)")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (1: stable timings on a shared box)")
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    ks = [int(k) for k in a.k.split(",")]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for k in ks:
            _, parts = toy_parts(k, a.batch)
            rows.append(compare("toy", parts, a.repeats))
        for k in ks:
            _, parts = llava_parts(k, a.batch, a.image_size, Path(tmp))
            rows.append(compare("tiny-llava", parts, a.repeats))
    worst = min(r["speedup"] for r in rows if r["K"] >= 6)
    ok = all(r["max_abs_diff"] < 1e-3 for r in rows)
    print(
        f"\nshared-prefix vs full sequences: min speedup {worst:.2f}x at K >= 6 (target >= 3x); "
        f"scores identical to float tolerance: {'yes' if ok else 'NO'}"
    )
    return rows


if __name__ == "__main__":
    main()
