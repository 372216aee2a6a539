// Patch cosine cost on the GPU: one thread per output, dot and both norms in one pass over C
// (float32 accumulation, float64 for float64 inputs; no tensor cores, so no TF32 rounding).
#include "common.cuh"
#include "launchers.h"

namespace fastface {
namespace cuda {

template <typename In, typename Acc>
__global__ void patch_cost_kernel(const In* __restrict__ x, const In* __restrict__ y,
                                  Acc* __restrict__ out, int64_t P, int64_t rep, int64_t n,
                                  int64_t m, int64_t C) {
  const int64_t total = P * n * m;
  for (int64_t t = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; t < total;
       t += int64_t(gridDim.x) * blockDim.x) {
    const int64_t p = t / (n * m), ij = t - p * n * m, i = ij / m, j = ij - i * m;
    const In* xr = x + ((p / rep) * n + i) * C;  // (C)
    const In* yr = y + (p * m + j) * C;          // (C)
    Acc dot = 0, xx = 0, yy = 0;
    for (int64_t c = 0; c < C; ++c) {
      const Acc xv = to_float(xr[c]), yv = to_float(yr[c]);
      dot = fma(xv, yv, dot);
      xx = fma(xv, xv, xx);
      yy = fma(yv, yv, yy);
    }
    const Acc nx = fmax(sqrt(xx), Acc(kNormFloor)), ny = fmax(sqrt(yy), Acc(kNormFloor));
    out[t] = Acc(1) - dot / (nx * ny);
  }
}

template <typename In, typename Acc>
static void launch(const PatchCostArgs& a, cudaStream_t stream) {
  const int64_t total = a.P * a.n * a.m;
  const int64_t blocks = std::min<int64_t>((total + 255) / 256, 65535 * 32);
  patch_cost_kernel<In, Acc><<<unsigned(blocks), 256, 0, stream>>>(
      static_cast<const In*>(a.x), static_cast<const In*>(a.y), static_cast<Acc*>(a.out), a.P, a.rep,
      a.n, a.m, a.C);
  check_launch("patch_cost_kernel");
}

void patch_cost(const PatchCostArgs& args, void* stream) {
  if (args.P == 0 || args.n == 0 || args.m == 0) return;
  if (args.rep <= 0 || args.P % args.rep != 0)
    throw std::invalid_argument("patch_cost: P must be a multiple of rep");
  auto st = static_cast<cudaStream_t>(stream);
  switch (args.in_dtype) {
    case DType::F32: return launch<float, float>(args, st);
    case DType::F16: return launch<__half, float>(args, st);
    case DType::BF16: return launch<__nv_bfloat16, float>(args, st);
    case DType::F64: return launch<double, double>(args, st);
  }
  throw std::invalid_argument("patch_cost (cuda): unsupported dtype");
}

}  // namespace cuda
}  // namespace fastface
