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
# A failing test must not stop the benchmarks below: their figures are what a GPU session is for.
python3 -m pytest -q -rs tests 2>&1 | tee "$out/gpu_tests.log" | tail -25 || echo "TESTS FAILED (see gpu_tests.log)"
python3 bench/report.py --gpu 2>&1 | tee "$out/gpu_report.md"
# FusedGenerator: eager vs fused (auto, chain and per-layer paths) vs torch.compile, batch 1-4096.
python3 bench/report.py --gpu --generator 2>&1 | tee "$out/gpu_generator.md"
# R³AN transform vs ResNet-101 extraction on the GPU (the paper's ≈ 10x claim), batch 1 and 32.
{ python3 bench/bench_r3an.py --device cuda --batch 1; python3 bench/bench_r3an.py --device cuda --batch 32 | tail -1; } \
  2>&1 | tee "$out/gpu_r3an.md"
