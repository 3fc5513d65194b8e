"""The GPU check (issue 17): mch's extraction speed on LLaVA-1.5-7B and Qwen2-Audio-7B against
a naive loop and against the bf16 roofline, and its vectors against the naive loop's.

    benchmarks/gpu_check.sh                                  # on a GPU: real sizes, bf16, 256 samples
    benchmarks/gpu_check.sh --device cpu                     # anywhere: tiny sizes, float32, 16 samples
    benchmarks/gpu_check.sh --out results/gpu_check.json --batch-sizes 8,32,64

No weights are needed: each model is built *randomly initialised* from its release's
architecture (benchmarks/gpu_check_configs.json) on the device, in the run's dtype, behind
the real plugin (`mch.plugins.models.llava` / `qwen2audio`: its processor, prompts, stage
map, hooks and pooling) and the real runner (`mch.runner.extract`: chunks, store writes).
The corpora are mch's synthetic COCO and CREMA-D layouts (256 images, 256 clips).

For each model:
- mch: `extract` of every stage (LLaVA: 34; Qwen2-Audio: 34) at each batch size, samples/s
  over the whole extraction (media decoding, preprocessing, forward, pooling, store writes);
- naive: the loop a user writes first: batch 1, `model(**inputs, output_hidden_states=True)`
  (the full forward, LM head included), pooled over the modality tokens by hand;
- roofline: peak bf16 FLOP/s / (2 * params * tokens per sample), over the work extraction
  needs (encoder at its positions, projector at the modality tokens, LLM decoder without
  embeddings or LM head at every token); mch's fraction of it at its best batch size
  (target: >= 40% for LLaVA); the peak comes from the table below by the card's name, or
  from --peak-tflops;
- where mch's time went at each batch size: `prepare` (the plugin's preprocessing: image
  processor or mel features, tokenizing, collation), `forward` (capture: the hooked forward
  pass with early stop and pooling), and the rest (media decoding, fingerprints, store
  writes);
- vectors: per stage, the largest relative difference ||mch - naive|| / ||naive|| over
  samples, at every stage the naive forward returns (all but `llm.{L-1}`, the last block's
  output before the final norm, which `hidden_states` replaces by the normed one, and
  Qwen2-Audio's `encoder`, which its forward does not return); tolerance 5e-2 in bf16
  (batched against batch-1 kernels), 1e-4 in float32;
- `--device-map auto`: the same extraction with the model placed by accelerate through the
  plugin's --device-map path (over the visible GPUs; on the CPU, the CPU), its samples/s and
  its vectors against the plain run's.

Every number goes to one JSON file (--out; default $OUT/gpu_check.json, else ./gpu_check.json),
written after each model, so a short run on a borrowed GPU brings back whatever finished.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # run from a checkout without installing

# Dense (no sparsity) bf16 tensor-core peaks, TFLOP/s, from the vendors' data sheets. Matched
# against torch.cuda.get_device_name() in this order (first hit wins).
PEAK_BF16_TFLOPS = [
    ("H200", 989.4),
    ("GH200", 989.4),
    ("H100 NVL", 835.0),
    ("H100 PCIe", 756.0),
    ("H100", 989.4),
    ("B200", 2250.0),
    ("A100", 312.0),
    ("A800", 312.0),
    ("L40S", 362.1),
    ("L40", 181.0),
    ("L4", 121.0),
    ("A10G", 70.0),
    ("A10", 125.0),
    ("RTX 4090", 165.2),
    ("RTX 6000 Ada", 364.2),
    ("V100", 125.0),
]
TOLERANCE = {"bfloat16": 5e-2, "float16": 5e-2, "float32": 1e-4}


def log(msg: str) -> None:
    print(f"[gpu_check {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- the models


def checkpoint_dir(kind: str, size: str, root: Path) -> Path:
    """A checkpoint directory in the release layout with the processor and tokenizer files
    (mch's tiny builders, at the real image size) and a config.json with the geometry of
    gpu_check_configs.json; no weights (the loader below builds them)."""
    import torch  # noqa: F401 - the builders need it

    from mch.plugins.models import tiny

    geometry = json.loads((HERE / "gpu_check_configs.json").read_text())[kind][size]
    if kind == "llava":
        out = tiny.make_tiny_llava(root / kind, image_size=int(geometry["vision_config"]["image_size"]))
    else:
        out = tiny.make_tiny_qwen2audio(root / kind)
    made = json.loads((out / "config.json").read_text())
    cfg = json.loads(json.dumps(geometry))
    for key in ("image_token_index", "image_token_id", "audio_token_index", "audio_token_id"):  # the tokenizer's ids
        if key in made:
            cfg[key] = made[key]
    for key in ("bos_token_id", "eos_token_id", "pad_token_id"):
        if key in made.get("text_config", {}):
            cfg["text_config"][key] = made["text_config"][key]
    (out / "config.json").write_text(json.dumps(cfg, indent=1) + "\n")
    for f in list(out.glob("*.safetensors")) + list(out.glob("*.safetensors.index.json")):
        f.unlink()
    return out


def random_init_loader(seed: int):
    """Stands in for `_hf_common.load_pretrained`: the model of the checkpoint's config,
    randomly initialised (fixed seed) on the plugin's device in its dtype; under --device-map,
    placed by the map the plugin's own planning computes (`planned_device_map`)."""
    import torch

    from mch.plugins.models._hf_common import planned_device_map

    def load(plugin: Any, cls: Any, path: Path, what: str) -> Any:
        from transformers import AutoConfig

        cfg = AutoConfig.from_pretrained(str(path), local_files_only=True)
        dmap = planned_device_map(plugin, cls, path) if plugin.device_map is not None else None
        first = next(iter(dmap.values())) if dmap else plugin.device
        dev = f"cuda:{first}" if isinstance(first, int) else str(first)
        torch.manual_seed(seed)
        with torch.device(dev):
            model = cls._from_config(cfg, dtype=plugin.torch_dtype)
        if dmap:
            if len(set(dmap.values())) > 1:
                from accelerate import dispatch_model

                model = dispatch_model(model, device_map=dmap)
            model.hf_device_map = dmap
            model._mch_placed = True
        return model.eval()

    return load


def param_counts(model: Any, kind: str) -> dict[str, int]:
    """Parameters of the parts extraction runs: encoder, projector, LLM decoder (embeddings
    and LM head excluded: a lookup, and a head extraction never runs)."""

    def count(m: Any) -> int:
        return sum(p.numel() for p in m.parameters())

    inner = model.model
    enc = inner.vision_tower if kind == "llava" else inner.audio_tower
    lm = inner.language_model
    return {
        "encoder": count(enc),
        "projector": count(inner.multi_modal_projector),
        "llm_decoder": count(lm) - lm.embed_tokens.weight.numel(),
    }


# --------------------------------------------------------------------------- the two loops


def naive_loop(plugin: Any, samples: list, kind: str) -> tuple[dict[str, np.ndarray], dict[str, float], float]:
    """Batch 1, the full forward with output_hidden_states, pooled over the modality tokens by
    hand. Returns ({stage: (n, D)}, token counts per sample, seconds)."""
    import torch

    model, proc = plugin.module, plugin.processor
    dev = plugin.input_device
    prompt = plugin.render_prompt("default", "modal")[0]
    token = plugin.image_token_id if kind == "llava" else plugin.audio_token_id
    L = plugin.n_layers
    names = ["adapter"] + [f"llm.{i}" for i in range(L - 1)] + ["llm.final"]
    out: dict[str, list] = {}
    tokens = {"llm": [], "modality": [], "encoder": []}
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    sync()
    t = time.perf_counter()
    for s in samples:
        if kind == "llava":
            enc = proc(images=[s.media.convert("RGB")], text=[prompt], return_tensors="pt")
        else:
            enc = proc(text=prompt, audio=plugin._waveform(s), sampling_rate=plugin.sampling_rate, return_tensors="pt")
        s._media = None
        enc = {k: (v.to(dev, plugin.torch_dtype) if v.is_floating_point() else v.to(dev)) for k, v in enc.items()}
        with torch.inference_mode():
            o = model(**enc, output_hidden_states=True)
        mask = enc["input_ids"][0] == token
        for name, h in zip(names, o.hidden_states, strict=True):
            out.setdefault(name, []).append(h[0][mask].float().mean(0).cpu())
        if kind == "llava":
            vh = o.image_outputs.hidden_states[model.config.vision_feature_layer][0]
            out.setdefault("encoder", []).append(vh[1:].float().mean(0).cpu())  # 'default' drops CLS
            tokens["encoder"].append(vh.shape[0])
        else:
            tokens["encoder"].append(model.config.audio_config.max_source_positions)
        tokens["llm"].append(int(enc["attention_mask"].sum()))
        tokens["modality"].append(int(mask.sum()))
    sync()
    dt = time.perf_counter() - t
    return ({k: torch.stack(v).numpy() for k, v in out.items()}, {k: float(np.mean(v)) for k, v in tokens.items()}, dt)


def mch_extract(base: Any, plugin: Any, batch_size: int, store: Path) -> tuple[dict[str, np.ndarray], float]:
    """`mch.runner.extract` of every stage at `batch_size` into a fresh store, with `plugin`
    already loaded; ({stage: (n, D)} in sample order, seconds)."""
    import torch

    import mch.capture
    from mch.runner import extract, plan

    p = plan(dataclasses.replace(base, batch_size=batch_size, store=store))
    p.plugin, p.loaded = plugin, True
    sync = torch.cuda.synchronize if plugin.input_device.type == "cuda" else (lambda: None)
    spent = {"prepare": 0.0, "forward": 0.0}
    prepare, capture = plugin.prepare, mch.capture.capture

    def timed(what, fn):
        def call(*a, **k):
            t = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                sync()
                spent[what] += time.perf_counter() - t

        return call

    plugin.prepare = timed("prepare", prepare)  # the runner imports capture at each call: patched there
    mch.capture.capture = timed("forward", capture)
    try:
        sync()
        t = time.perf_counter()
        entry = extract(p, "modal")
        sync()
        dt = time.perf_counter() - t
    finally:
        del plugin.prepare
        mch.capture.capture = capture
    reps, rows = entry.read()
    order = np.argsort(rows)
    spent["other"] = dt - spent["prepare"] - spent["forward"]
    LAST_BREAKDOWN.clear()
    LAST_BREAKDOWN.update({k: round(v, 3) for k, v in spent.items()})
    return {k: np.asarray(v)[order] for k, v in reps.items()}, dt


LAST_BREAKDOWN: dict[str, float] = {}


def rel_err(a: np.ndarray, b: np.ndarray) -> float:
    num = np.linalg.norm(a.astype(np.float64) - b.astype(np.float64), axis=1)
    den = np.maximum(np.linalg.norm(b.astype(np.float64), axis=1), 1e-30)
    return float((num / den).max())


# --------------------------------------------------------------------------- one model


def check_model(kind: str, args: argparse.Namespace, root: Path, peak_tflops: float | None) -> dict[str, Any]:
    import torch

    from mch.plugins.attributes import synth
    from mch.plugins.models import _hf_common
    from mch.runner import RunConfig, plan

    res: dict[str, Any] = {"model": kind, "geometry": args.size}
    t0 = time.perf_counter()
    ck = checkpoint_dir(kind, args.size, root / "ck")
    if kind == "llava":
        data = synth.make("coco", root / "coco", images=args.samples, width=640, height=480)
        base = RunConfig(
            model="llava",
            checkpoint=str(ck),
            dataset="coco",
            data_path=str(data),
            limit=args.samples,
            device=args.device,
            dtype=args.dtype,
            analyses=[],
            chunk_size=args.samples,
        )
    else:
        actors = max(1, -(-args.samples // (6 * 6)))
        data = synth.make("cremad", root / "crema", actors=actors, sentences=6, engine="numpy")
        base = RunConfig(
            model="qwen2audio",
            checkpoint=str(ck),
            dataset="cremad",
            data_path=str(data),
            limit=args.samples,
            device=args.device,
            dtype=args.dtype,
            analyses=[],
            chunk_size=args.samples,
        )
    res["setup_s"] = round(time.perf_counter() - t0, 2)
    loader = random_init_loader(args.seed)
    _hf_common.load_pretrained = loader  # the plugins load through HFPluginMixin._load_model

    p = plan(dataclasses.replace(base, store=root / "store-load"))
    t = time.perf_counter()
    plugin = p.ensure_loaded()
    res["build_s"] = round(time.perf_counter() - t, 2)
    res["dtype"] = plugin.dtype_name
    res["params"] = param_counts(plugin.module, kind)
    res["params_total"] = sum(p_.numel() for p_ in plugin.module.parameters())
    log(f"{kind}: built ({res['params_total'] / 1e9:.2f}B parameters, {plugin.dtype_name}) in {res['build_s']} s")

    # warm-up: kernels, allocator, cuBLAS handles (not timed)
    mch_extract(
        dataclasses.replace(base, limit=min(8, args.samples)), plugin, min(8, args.samples), root / "store-warm"
    )
    naive_loop(plugin, plan(dataclasses.replace(base, limit=2, store=root / "store-warm2")).samples, kind)

    samples = plan(dataclasses.replace(base, store=root / "store-naive")).samples
    naive, tokens, dt = naive_loop(plugin, samples, kind)
    res["tokens_per_sample"] = tokens
    res["naive"] = {"seconds": round(dt, 3), "samples_per_s": args.samples / dt}
    log(f"{kind}: naive loop {args.samples / dt:.2f} samples/s")
    P = res["params"]
    flop = 2.0 * (
        P["encoder"] * tokens["encoder"] + P["projector"] * tokens["modality"] + P["llm_decoder"] * tokens["llm"]
    )
    res["flop_per_sample"] = flop
    res["roofline_samples_per_s"] = peak_tflops * 1e12 / flop if peak_tflops else None

    res["mch"] = {}
    vecs: dict[int, dict[str, np.ndarray]] = {}
    for bs in args.batch_sizes:
        try:
            vecs[bs], dt = mch_extract(base, plugin, bs, root / f"store-{bs}")
        except torch.cuda.OutOfMemoryError:
            res["mch"][str(bs)] = {"error": "out of GPU memory"}
            log(f"{kind}: batch {bs}: out of GPU memory")
            torch.cuda.empty_cache()
            continue
        r = {
            "seconds": round(dt, 3),
            "samples_per_s": args.samples / dt,
            "vs_naive": (args.samples / dt) / res["naive"]["samples_per_s"],
            "seconds_in": dict(LAST_BREAKDOWN),
        }
        if res["roofline_samples_per_s"]:
            r["fraction_of_roofline"] = (args.samples / dt) / res["roofline_samples_per_s"]
        res["mch"][str(bs)] = r
        log(
            f"{kind}: mch batch {bs}: {r['samples_per_s']:.2f} samples/s ({r['vs_naive']:.2f}x naive"
            + (f", {100 * r['fraction_of_roofline']:.1f}% of the roofline)" if "fraction_of_roofline" in r else ")")
        )
        shutil.rmtree(root / f"store-{bs}", ignore_errors=True)
    ok = {bs: v for bs, v in res["mch"].items() if "samples_per_s" in v}
    if not ok:
        return res
    best = max(ok, key=lambda b: ok[b]["samples_per_s"])
    res["best_batch_size"] = int(best)
    tol = TOLERANCE[plugin.dtype_name if plugin.dtype_name in TOLERANCE else "bfloat16"]
    stages = sorted(set(naive) & set(vecs[int(best)]))
    errs = {bs: {st: rel_err(vecs[bs][st], naive[st]) for st in stages} for bs in vecs}
    res["vectors"] = {
        "tolerance": tol,
        "stages_compared": len(stages),
        "stages_stored": len(vecs[int(best)]),
        "not_compared": sorted(set(vecs[int(best)]) - set(naive)),
        "max_rel_err": {str(bs): max(e.values()) for bs, e in errs.items()},
        "max_rel_err_by_stage_at_best": errs[int(best)],
        "pass": all(max(e.values()) <= tol for e in errs.values()),
    }
    if kind == "llava" and res["roofline_samples_per_s"]:
        frac = ok[best]["fraction_of_roofline"]
        res["target_40pct_of_roofline"] = {"fraction": frac, "met": frac >= 0.40}

    # --device-map auto: the plugin's own placement path, same weights (same seed)
    plugin_vectors = vecs[int(best)]
    del vecs
    p.release()
    del plugin
    import gc

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    mp = plan(
        dataclasses.replace(
            base,
            device_map="auto",
            device="cuda" if args.device.startswith("cuda") else "cpu",
            store=root / "store-map",
        )
    )
    mplugin = mp.ensure_loaded()
    mvec, dt = mch_extract(dataclasses.replace(mp.cfg), mplugin, int(best), root / "store-map-run")
    res["device_map_auto"] = {
        "batch_size": int(best),
        "seconds": round(dt, 3),
        "samples_per_s": args.samples / dt,
        "placement": mplugin.placement()["device_map"],
        "max_abs_diff_vs_plain": max(float(np.abs(mvec[k] - plugin_vectors[k]).max()) for k in plugin_vectors),
    }
    log(
        f"{kind}: --device-map auto batch {best}: {args.samples / dt:.2f} samples/s, max |diff| vs plain "
        f"{res['device_map_auto']['max_abs_diff_vs_plain']:.3g}"
    )
    mp.release()
    return res


# --------------------------------------------------------------------------- main


def peak_for(device: str, override: float | None) -> tuple[float | None, str]:
    import torch

    if override:
        return override, "--peak-tflops"
    if not device.startswith("cuda"):
        return None, "cpu: no roofline unless --peak-tflops"
    name = torch.cuda.get_device_name(torch.device(device))
    for key, tflops in PEAK_BF16_TFLOPS:
        if key in name:
            return tflops, f"table: {key}"
    return None, f"{name} is not in the table: pass --peak-tflops"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda", help="cuda (default) or cpu")
    ap.add_argument("--size", choices=("real", "tiny"), default=None, help="real (default on cuda) or tiny (on cpu)")
    ap.add_argument("--samples", type=int, default=None, help="samples per model (default 256 on cuda, 16 on cpu)")
    ap.add_argument("--batch-sizes", default=None, help="comma-separated (default 1,8,32,64 on cuda; 1,4,16 on cpu)")
    ap.add_argument("--dtype", default=None, help="default bfloat16 on cuda, float32 on cpu")
    ap.add_argument("--models", default="llava,qwen2audio")
    ap.add_argument("--peak-tflops", type=float, default=None, help="the device's dense bf16 peak, if not in the table")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None, help="the JSON file (default $OUT/gpu_check.json, else ./gpu_check.json)")
    args = ap.parse_args(argv)

    import torch

    gpu = args.device.startswith("cuda")
    if gpu and not torch.cuda.is_available():
        print(
            f"gpu_check: --device {args.device} but torch {torch.__version__} sees no CUDA GPU; "
            f"run with --device cpu for the small CPU check",
            file=sys.stderr,
        )
        return 2
    args.size = args.size or ("real" if gpu else "tiny")
    args.samples = args.samples or (256 if gpu else 16)
    args.batch_sizes = [int(b) for b in (args.batch_sizes or ("1,8,32,64" if gpu else "1,4,16")).split(",")]
    args.dtype = args.dtype or ("bfloat16" if gpu else "float32")
    out = Path(args.out or Path(os.environ.get("OUT", ".")) / "gpu_check.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    peak, peak_src = peak_for(args.device, args.peak_tflops)
    report: dict[str, Any] = {
        "when": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "host": platform.node(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "device": args.device,
        "device_name": torch.cuda.get_device_name(torch.device(args.device)) if gpu else platform.processor() or "cpu",
        "n_gpus": torch.cuda.device_count() if gpu else 0,
        "peak_bf16_tflops": peak,
        "peak_source": peak_src,
        "size": args.size,
        "samples": args.samples,
        "batch_sizes": args.batch_sizes,
        "dtype": args.dtype,
        "models": {},
    }
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="mch-gpu-check-") as tmp:
        os.environ.setdefault("MCH_STORE", str(Path(tmp) / "store-default"))
        for kind in [m.strip() for m in args.models.split(",") if m.strip()]:
            try:
                report["models"][kind] = check_model(kind, args, Path(tmp) / kind, peak)
            except Exception as exc:  # noqa: BLE001 - recorded, and the next model still runs
                import traceback

                report["models"][kind] = {"error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()}
                log(f"{kind}: failed: {type(exc).__name__}: {exc}")
            report["seconds"] = round(time.perf_counter() - t0, 1)
            out.write_text(json.dumps(report, indent=1) + "\n")
    print_table(report)
    print(f"all numbers: {out}")
    failed = [k for k, v in report["models"].items() if "error" in v or not v.get("vectors", {}).get("pass", False)]
    return 1 if failed else 0


def print_table(report: dict[str, Any]) -> None:
    print(
        f"\n{report['device_name']} ({report['device']}, {report['dtype']}, {report['size']} sizes, "
        f"{report['samples']} samples; peak {report['peak_bf16_tflops'] or '-'} TFLOP/s: {report['peak_source']})"
    )
    print(f"{'model':<11} {'run':<18} {'samples/s':>10} {'x naive':>8} {'% roofline':>10}")
    for kind, r in report["models"].items():
        if "error" in r:
            print(f"{kind:<11} failed: {r['error']}")
            continue
        print(
            f"{kind:<11} {'naive (batch 1)':<18} {r['naive']['samples_per_s']:>10.2f} {1:>8.2f} "
            f"{_pct(r['naive']['samples_per_s'], r['roofline_samples_per_s']):>10}"
        )
        for bs, m in r["mch"].items():
            if "error" in m:
                print(f"{'':<11} {'mch batch ' + bs:<18} {m['error']}")
                continue
            split = ", ".join(f"{k} {v:.1f} s" for k, v in m.get("seconds_in", {}).items())
            print(
                f"{'':<11} {'mch batch ' + bs:<18} {m['samples_per_s']:>10.2f} {m['vs_naive']:>8.2f} "
                f"{_pct(m['samples_per_s'], r['roofline_samples_per_s']):>10}   ({split})"
            )
        if "device_map_auto" in r:
            d = r["device_map_auto"]
            print(
                f"{'':<11} {'device-map auto':<18} {d['samples_per_s']:>10.2f} "
                f"{d['samples_per_s'] / r['naive']['samples_per_s']:>8.2f} "
                f"{_pct(d['samples_per_s'], r['roofline_samples_per_s']):>10}"
            )
        if "vectors" in r:
            v = r["vectors"]
            worst = max(v["max_rel_err"].values())
            print(
                f"{'':<11} vectors: {v['stages_compared']} stages vs naive, max rel. err {worst:.2e} "
                f"(tolerance {v['tolerance']:.0e}): {'ok' if v['pass'] else 'FAIL'}"
            )
        if "target_40pct_of_roofline" in r:
            t = r["target_40pct_of_roofline"]
            print(
                f"{'':<11} target >= 40% of the roofline: {100 * t['fraction']:.1f}%, "
                f"{'met' if t['met'] else 'NOT met'}"
            )


def _pct(x: float, roof: float | None) -> str:
    return f"{100 * x / roof:.1f}" if roof else "-"


if __name__ == "__main__":
    sys.exit(main())
