// Patch cosine cost on the GPU: out (P, n, m) = 1 - <x̂[p / rep]_i, ŷ[p]_j>, one 64 x 64 output
// tile per block iteration (grid-stride over P * tiles), plain FMA (float32, or float64 for F64).
#include <cstdint>
#include <stdexcept>

#include "gemm_tile.cuh"
#include "emd_launchers.h"

namespace fastface {
namespace cuda {

namespace {

template <typename Tin, typename Acc>
__global__ void __launch_bounds__(kGemmThreads) patch_cost_kernel(const Tin* __restrict__ x,
                                                                  const Tin* __restrict__ y,
                                                                  Acc* __restrict__ out, int64_t P,
                                                                  int64_t rep, int n, int m,
                                                                  int64_t C, int tn, int tm) {
  __shared__ GemmSmem<Acc> sm;
  __shared__ Acc nrm[2 * kTile];  // norms of the tile's X rows, then Y rows
  __shared__ double red[32];
  const int t = threadIdx.x, tx = t & 7, ty = t >> 3;
  const int64_t per = int64_t(tn) * tm, tiles = P * per;
  for (int64_t id = blockIdx.x; id < tiles; id += gridDim.x) {
    const int64_t p = id / per;
    const int rem = int(id - p * per), ti = rem / tm, tj = rem - ti * tm;
    const int i0 = ti * kTile, j0 = tj * kTile;
    const int nr = min(kTile, n - i0), mr = min(kTile, m - j0);
    const Tin* X = x + ((p / rep) * n + i0) * C;  // (nr, C)
    const Tin* Y = y + (p * m + j0) * C;          // (mr, C)
    Acc acc[4][8], ss, colsq;
    gemm_tile<Tin, Acc>(X, nr, Y, mr, C, false, sm, acc, ss, colsq);  // begins with a barrier
    Acc x_scale = Acc(1), y_scale = Acc(1);  // cosines do not change when X or Y is scaled
    if (__syncthreads_or(!(ss <= safe_sq_norm<Acc>()))) {  // huge entries: redo scaled down
      x_scale = scale_for(max_abs<Tin, Acc>(X, nr, C, red));
      y_scale = scale_for(max_abs<Tin, Acc>(Y, mr, C, red));
      gemm_tile<Tin, Acc>(X, nr, Y, mr, C, false, sm, acc, ss, colsq, x_scale, y_scale);
    }
    // The norm floor applies to the true norm.
    const Acc nv = dsqrt(ss), fl = Acc(kNormFloor) * (t < kTile ? x_scale : y_scale);
    nrm[t] = nv > fl ? nv : fl;
    __syncthreads();
    Acc* o = out + (p * n + i0) * m + j0;  // (nr, mr) block of (n, m)
#pragma unroll
    for (int r = 0; r < 4; ++r) {
      const int i = ty + 16 * r;
#pragma unroll
      for (int c = 0; c < 8; ++c) {
        const int j = tx + 8 * c;
        if (i < nr && j < mr) o[int64_t(i) * m + j] = Acc(1) - acc[r][c] / (nrm[i] * nrm[kTile + j]);
      }
    }
  }
}

template <typename Tin, typename Acc>
void launch(const PatchCostArgs& a, cudaStream_t st) {
  const int n = int(a.n), m = int(a.m);
  const int tn = (n + kTile - 1) / kTile, tm = (m + kTile - 1) / kTile;
  const unsigned grid = grid_for(a.P * tn * tm);
  launch_kernel("patch_cost_kernel", patch_cost_kernel<Tin, Acc>, LaunchShape{grid, kGemmThreads}, st,
                static_cast<const Tin*>(a.x), static_cast<const Tin*>(a.y), static_cast<Acc*>(a.out), a.P,
                a.rep, n, m, a.C, tn, tm);
}

}  // namespace

void patch_cost(const PatchCostArgs& args, void* stream) {
  if (args.P <= 0 || args.n <= 0 || args.m <= 0) return;
  if (args.rep <= 0 || args.P % args.rep != 0)
    throw std::invalid_argument("patch_cost: P must be a multiple of rep");
  if (args.C < 0) throw std::invalid_argument("patch_cost: C must be >= 0");
  if (args.n >= (int64_t(1) << 30) || args.m >= (int64_t(1) << 30))
    throw std::invalid_argument("patch_cost (cuda): n or m too large");
  const auto st = static_cast<cudaStream_t>(stream);
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
