#!/usr/bin/env bash
# On a GPU machine: build with CUDA, run the whole test suite (CUDA paths included), then the
# GPU benchmarks. Usage: bash bench/gpu_check.sh [OUTDIR]. Needs torch (CUDA), triton, pybind11,
# scikit-build-core, pytest, pytest-benchmark and POT (carry POT's wheel where there is no internet).
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-.}"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
FASTFACE_CUDA=ON python3 -m pip install --no-build-isolation --no-deps . 2>&1 | tail -3
python3 -m fastface.cli info
python3 -m pytest -q -rs tests 2>&1 | tee "$out/gpu_tests.log" | tail -25
python3 bench/report.py --gpu 2>&1 | tee "$out/gpu_report.md"
# FusedGenerator: eager vs fused (auto, chain and per-layer paths) vs torch.compile, batch 1-4096.
python3 bench/report.py --gpu --generator 2>&1 | tee "$out/gpu_generator.md"
