"""benchmarks/gpu_check.sh in its CPU mode (tiny sizes, float32): it runs end to end through
the real plugins and runner, its vectors equal the naive loop's, its roofline counts the
parameters and tokens the geometry implies, and everything lands in one JSON file."""

from __future__ import annotations

import json
import os
import subprocess

from conftest import ROOT


def _decoder_params(tc: dict, qkv_bias: bool) -> int:
    """Parameters of a Llama/Qwen2 decoder stack without embeddings: attention, MLP, norms."""
    d, ff, L = tc["hidden_size"], tc["intermediate_size"], tc["num_hidden_layers"]
    kv = d // tc["num_attention_heads"] * tc["num_key_value_heads"]
    attn = d * d + 2 * d * kv + d * d + ((d + 2 * kv) if qkv_bias else 0)
    return L * (attn + 3 * d * ff + 2 * d) + d


def test_the_gpu_check_runs_on_the_cpu_and_its_numbers_add_up(tmp_path):
    out = tmp_path / "gpu_check.json"
    env = {**os.environ, "PYTHON": os.environ.get("PYTHON", ""), "OMP_NUM_THREADS": "1"}
    import sys

    env["PYTHON"] = sys.executable
    res = subprocess.run(
        [
            str(ROOT / "benchmarks" / "gpu_check.sh"),
            "--device",
            "cpu",
            "--samples",
            "4",
            "--batch-sizes",
            "4",
            "--peak-tflops",
            "1",
            "--out",
            str(out),
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert res.returncode == 0, res.stdout + res.stderr
    report = json.loads(out.read_text())
    geometry = json.loads((ROOT / "benchmarks" / "gpu_check_configs.json").read_text())
    assert report["peak_bf16_tflops"] == 1 and set(report["models"]) == {"llava", "qwen2audio"}
    for kind, r in report["models"].items():
        g = geometry[kind]["tiny"]
        assert r["params"]["llm_decoder"] == _decoder_params(g["text_config"], qkv_bias=kind == "qwen2audio")
        T = r["tokens_per_sample"]
        if kind == "llava":
            grid = g["vision_config"]["image_size"] // g["vision_config"]["patch_size"]
            assert T["encoder"] == grid**2 + 1 and T["modality"] == grid**2  # CLS + patches; patches
        else:
            assert T["encoder"] == g["audio_config"]["max_source_positions"]
        P = r["params"]
        flop = 2 * (P["encoder"] * T["encoder"] + P["projector"] * T["modality"] + P["llm_decoder"] * T["llm"])
        assert abs(r["flop_per_sample"] - flop) <= 1e-9 * flop
        assert abs(r["roofline_samples_per_s"] - 1e12 / flop) <= 1e-9 * r["roofline_samples_per_s"]
        m = r["mch"]["4"]
        assert abs(m["fraction_of_roofline"] - m["samples_per_s"] / r["roofline_samples_per_s"]) < 1e-12
        assert set(m["seconds_in"]) == {"prepare", "forward", "other"}
        v = r["vectors"]
        n_llm = g["text_config"]["num_hidden_layers"]
        # every stored stage but llm.{L-1} (and Qwen2-Audio's encoder) is compared with the naive loop
        assert v["not_compared"] == sorted([f"llm.{n_llm - 1}"] + (["encoder"] if kind == "qwen2audio" else []))
        assert v["pass"] and max(v["max_rel_err"].values()) <= 1e-4
        d = r["device_map_auto"]
        assert d["max_abs_diff_vs_plain"] == 0 and d["placement"]["modules"] == {"": "cpu"}
    assert "llava" in res.stdout and "all numbers:" in res.stdout
