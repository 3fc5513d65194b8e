#!/usr/bin/env bash
# The GPU check (issue 17): mch's extraction on randomly initialised LLaVA-1.5-7B and
# Qwen2-Audio-7B against a naive loop and the bf16 roofline; vectors against the naive loop's;
# --device-map auto. Every number goes to one JSON file ($OUT/gpu_check.json by default).
#
#   benchmarks/gpu_check.sh                  # one GPU, real sizes, bf16, 256 samples (< 5 min on an H100)
#   benchmarks/gpu_check.sh --device cpu     # anywhere: tiny sizes, float32, 16 samples
#
# Options: see benchmarks/gpu_check.py --help. $PYTHON picks the interpreter (default: the
# checkout's .venv, else python3).
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-.venv/bin/python}"
[ -x "$PY" ] || PY=python3
exec "$PY" benchmarks/gpu_check.py "$@"
