#!/usr/bin/env bash
# On a GPU machine: build with CUDA, run the kernel tests (CUDA paths included), then the GPU
# benchmarks. Usage: bash bench/gpu_check.sh [OUTDIR] [STAGES]
#   STAGES: any of "build tests bench r3an train facevit full" (default "build tests bench r3an train facevit"); "full" runs
#   the whole suite instead of the kernel test files (the CPU-only tests are CI's job).
# Needs torch (CUDA), triton, pybind11, scikit-build-core, pytest, pytest-benchmark and POT (carry
# POT's wheel where there is no internet). Each stage has a time limit so that one slow stage cannot
# eat a short device lease; a failing stage is reported and the next one still runs. The limits add
# up to more than one 600-s device call: rerun the stages left, with "build" first (incremental).
set -uo pipefail
cd "$(dirname "$0")/.."
out="${1:-.}"
stages="${2:-build tests bench r3an train facevit}"
mkdir -p "$out"
has() { [[ " $stages " == *" $1 "* ]]; }
step() {  # step NAME LIMIT_S LOGFILE CMD...
  local name=$1 limit=$2 log=$3; shift 3
  echo "== $name ($(date +%T), limit ${limit}s)"
  timeout "$limit" "$@" 2>&1 | tee "$out/$log" | tail -40
  local rc=${PIPESTATUS[0]}
  [ "$rc" -eq 0 ] || echo "== $name FAILED (exit $rc, see $out/$log)"
}
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
if has build; then
  # sm_90 only on the GPU machine (H100/H200): half the nvcc work of the default "80-real;90".
  FASTFACE_CUDA=ON step build 300 gpu_build.log python3 -m pip install --no-build-isolation --no-deps \
    --config-settings=cmake.define.FASTFACE_CUDA_ARCHS="${FASTFACE_CUDA_ARCHS:-90}" .
fi
python3 -m fastface.cli info
kernel_tests="tests/test_sinkhorn.py tests/test_cost_weights.py tests/test_rerank.py tests/test_generator.py
  tests/test_bad_input.py tests/test_triton_kernels.py tests/test_backend.py tests/test_cpu_kernels.py"
has tests && step tests 300 gpu_tests.log python3 -m pytest -q -rs $kernel_tests
has full && step full-suite 600 gpu_tests_full.log python3 -m pytest -q -rs tests
if has bench; then
  step report 240 gpu_report.md python3 bench/report.py --gpu
  # FusedGenerator: eager vs fused (auto, chain and per-layer paths) vs torch.compile, batch 1-4096.
  step generator 300 gpu_generator.md python3 bench/report.py --gpu --generator
fi
if has train; then
  # The shared loop on CUDA: AMP (bf16), CUDA RNG in checkpoints, exact resume; then NCCL under torchrun.
  step train-tests 240 gpu_train_tests.log python3 -m pytest -q -rs tests/test_train_loop.py tests/test_train.py
  step train-nccl 180 gpu_train_nccl.log python3 -m torch.distributed.run --standalone --nproc_per_node 1 \
    -m fastface train backbone --steps 30 --set batch_size=32 --device cuda --out "$out/nccl_run"
fi
if has r3an; then
  # R³AN transform vs ResNet-101 extraction on the GPU (the paper's ≈ 10x claim).
  step r3an-b1 120 gpu_r3an_b1.md python3 bench/bench_r3an.py --device cuda --batch 1
  step r3an-b32 120 gpu_r3an_b32.md python3 bench/bench_r3an.py --device cuda --batch 32
fi
if has facevit; then
  # Face-ViT stage 2 (vit_rerank, H2L depth 1 and 8) vs fused EMD vs eager / torch.compile, k = 100; then its tests.
  step facevit-bench 240 gpu_facevit.md python3 bench/bench_facevit.py --device cuda
  step facevit-tests 120 gpu_facevit_tests.log python3 -m pytest -q -rs tests/test_vit_rerank.py
fi
