"""What the store's fingerprints cost: the default (fast) mode against MCH_FINGERPRINT=full,
same files, same run.

Every run fingerprints the checkpoint's files and each sample's media before it may reuse
the store, so a run answered from the store pays this and nothing else of the model. The
fast mode reads Hugging Face blob names, hashes small files whole, and takes size + mtime
(+ the safetensors header) of large ones; the full mode reads every byte. The benchmark
builds a checkpoint with one large safetensors file and a corpus of small media files, then
prints the time of each mode and the ratio (each timed alternately, best of `--repeats`, the
page cache warm: the full mode's floor, a cold cache only makes it slower).

    python benchmarks/store.py [--weights-mib 512] [--media 5000] [--repeats 5]

Target: the fast mode costs under 1% of reading the checkpoint (ratio > 100x) and a
10,000-sample corpus fingerprints in well under a second.
"""

from __future__ import annotations

import argparse
import json
import os
import struct
import tempfile
import time
from collections.abc import Callable
from pathlib import Path


def write_checkpoint(root: Path, mib: int) -> None:
    root.mkdir(parents=True)
    (root / "config.json").write_text(json.dumps({"hidden_size": 4096, "num_hidden_layers": 32}))
    n = mib << 20
    header = json.dumps({"w": {"dtype": "U8", "shape": [n], "data_offsets": [0, n]}}).encode()
    header += b" " * (-len(header) % 8)
    block = os.urandom(1 << 20)
    with open(root / "model.safetensors", "wb") as f:
        f.write(struct.pack("<Q", len(header)) + header)
        for _ in range(mib):
            f.write(block)


def write_media(root: Path, n: int) -> list[tuple[str, list[str]]]:
    root.mkdir(parents=True)
    out = []
    for i in range(n):
        p = root / f"{i:06d}.wav"
        p.write_bytes(os.urandom(32 << 10))
        out.append((f"s{i}", [str(p)]))
    return out


def best(f: Callable[[], object], g: Callable[[], object], repeats: int) -> tuple[float, float]:
    tf, tg = [], []
    f(), g()  # warm the page cache and imports
    for _ in range(repeats):
        t = time.perf_counter()
        f()
        tf.append(time.perf_counter() - t)
        t = time.perf_counter()
        g()
        tg.append(time.perf_counter() - t)
    return min(tf), min(tg)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--weights-mib", type=int, default=512)
    ap.add_argument("--media", type=int, default=5000)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()

    from mch import fingerprint as fp

    def in_mode(mode: str, fn: Callable[[], object]) -> Callable[[], object]:
        def run() -> object:
            os.environ["MCH_FINGERPRINT"] = mode
            fp._content.clear()  # no memo across calls: each run of mch starts without one
            return fn()

        return run

    with tempfile.TemporaryDirectory() as tmp:
        ck = Path(tmp) / "ckpt"
        write_checkpoint(ck, args.weights_mib)
        media = write_media(Path(tmp) / "media", args.media)
        rows = []
        fast, full = best(
            in_mode("fast", lambda: fp.checkpoint_fingerprint([ck])),
            in_mode("full", lambda: fp.checkpoint_fingerprint([ck])),
            args.repeats,
        )
        rows.append((f"checkpoint, {args.weights_mib} MiB safetensors + config", fast, full))
        fast, full = best(
            in_mode("fast", lambda: fp.media_fingerprint(media)),
            in_mode("full", lambda: fp.media_fingerprint(media)),
            args.repeats,
        )
        rows.append((f"media, {args.media} files of 32 KiB", fast, full))
    os.environ.pop("MCH_FINGERPRINT", None)
    print(f"{'what':<44} {'fast (s)':>10} {'full (s)':>10} {'full / fast':>12}")
    for what, fast, full in rows:
        print(f"{what:<44} {fast:>10.4f} {full:>10.4f} {full / fast:>11.0f}x")


if __name__ == "__main__":
    main()
