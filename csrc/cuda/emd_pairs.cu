// Fused re-rank on the GPU: one block (128 threads) per (query, candidate) pair, grid-stride in
// p = b * k + j order (neighbouring blocks share the query's X in L2). The cost tile is computed
// from X and Y staged through shared memory (gemm_tile), then weights and the Sinkhorn loop run
// on-chip; the (B*k, n, m) cost never reaches global memory unless flows are requested.
#include <cstdint>
#include <stdexcept>
#include <string>

#include "gemm_tile.cuh"
#include "emd_launchers.h"
#include "sinkhorn_core.cuh"
#include "smem_limits.h"

namespace fastface {
namespace cuda {

namespace {

struct EmdParams {
  const void* x;       // (B, n, C)
  const void* y;       // (G, m, C) or (B * k, m, C)
  const int64_t* idx;  // (B, k) or null
  int64_t P, k;        // P = B * k
  int n, m;
  int64_t C;
  int weighting, mode, max_iter;
  float eps, tol;
  float* emd;          // (P,)
  float* flows;        // (P, n, m) or null
  int32_t* n_iter;
  uint8_t* converged;
  uint8_t* fallback;
};

// Dynamic shared layout (bytes): red (32 doubles) | A: gemm staging, later the K / Cr buffer
// (n, ld) | cost (n, ld) | norms (n + m) + 2 row-sum squared norms | solver vectors.
struct EmdLayout {
  Dims d;
  bool fast;  // n, m <= 64: tiled GEMM; else one dot product per thread
  size_t off_a, off_c, off_misc, off_core, bytes;
};

__host__ __device__ inline EmdLayout emd_layout(int n, int m) {
  EmdLayout L;
  L.fast = n <= kTile && m <= kTile;
  L.d = make_dims(n, m, m | 1, kGemmThreads);
  const size_t kb = size_t(n) * L.d.ld * sizeof(float);
  const size_t gb = L.fast ? sizeof(GemmSmem<float>) : 0;
  size_t off = kRedBytes;
  L.off_a = off;
  off += align16(gb > kb ? gb : kb);
  L.off_c = off;
  off += align16(kb);
  L.off_misc = off;
  off += align16(size_t(n + m + 2) * sizeof(float));
  L.off_core = off;
  off += core_vec_elems(L.d) * sizeof(float);
  L.bytes = off;
  return L;
}

// Slow path for n or m > 64: cb = X Y^T (one dot product per thread), nrm = row norms (a warp
// per row), sums = squared norms of the row sums (APC only).
// X and Y are multiplied by x_scale, y_scale (powers of two); the norm floor applies to the true norm.
template <typename Tin>
__device__ void simple_dots(const Tin* X, int n, const Tin* Y, int m, int64_t C, bool apc, float* cb,
                            int ldb, float* nrm, float* sums, double* red, float x_scale,
                            float y_scale) {
  const int t = threadIdx.x, nt = blockDim.x, lane = t & 31;
  for (int r = t >> 5; r < n + m; r += nt >> 5) {  // warp-uniform loop
    const Tin* z = r < n ? X + int64_t(r) * C : Y + int64_t(r - n) * C;
    const float zs = r < n ? x_scale : y_scale;
    float s = 0.f;
    for (int64_t c = lane; c < C; c += 32) {
      const float v = to_acc(z[c]) * zs;
      s = fmaf(v, v, s);
    }
    s = warp_sum(s);
    if (lane == 0) nrm[r] = fmaxf(sqrtf(s), float(kNormFloor) * zs);
  }
  for (int idx = t; idx < n * m; idx += nt) {
    const int i = idx / m, j = idx - i * m;
    const Tin* xi = X + int64_t(i) * C;
    const Tin* yj = Y + int64_t(j) * C;
    float s = 0.f;
    for (int64_t c = 0; c < C; ++c) s = fmaf(to_acc(xi[c]) * x_scale, to_acc(yj[c]) * y_scale, s);
    cb[i * ldb + j] = s;
  }
  if (apc) {
    float sx = 0.f, sy = 0.f;
    for (int64_t c = t; c < C; c += nt) {
      float a = 0.f, b = 0.f;
      for (int i = 0; i < n; ++i) a += to_acc(X[int64_t(i) * C + c]) * x_scale;
      for (int j = 0; j < m; ++j) b += to_acc(Y[int64_t(j) * C + c]) * y_scale;
      sx = fmaf(a, a, sx);
      sy = fmaf(b, b, sy);
    }
    sx = block_sum(sx, red);
    sy = block_sum(sy, red);
    if (t == 0) {
      sums[0] = sx;
      sums[1] = sy;
    }
  }
}

constexpr int32_t kRescaleMark = -1;  // n_iter of a pair left to the rescaled kernel

struct InputScales {
  float x, y;  // X and Y were multiplied by these (powers of two) before the dot products
};

// RESCALED: only the pairs the plain kernel marked (n_iter == kRescaleMark), with X and Y scaled
// down by powers of two first (patch entries so large that squared norms could overflow).
// Separate instantiations keep the rare path's registers out of the common kernel.
template <typename Tin, bool RESCALED>
__global__ void __launch_bounds__(kGemmThreads, 3) emd_pairs_kernel(EmdParams q) {
  FASTFACE_DYNAMIC_SMEM(smem);
  const int n = q.n, m = q.m, t = threadIdx.x, nt = blockDim.x;
  const EmdLayout L = emd_layout(n, m);
  const Dims& d = L.d;
  double* red = reinterpret_cast<double*>(smem);
  GemmSmem<float>& gs = *reinterpret_cast<GemmSmem<float>*>(smem + L.off_a);
  float* kbuf = reinterpret_cast<float*>(smem + L.off_a);   // (n, ld), after the GEMM
  float* cost_smem = reinterpret_cast<float*>(smem + L.off_c);  // (n, ld) cost
  float* nrm = reinterpret_cast<float*>(smem + L.off_misc); // |x_i| (n), then |y_j| (m)
  float* sums = nrm + n + m;                                // ||sum_i x_i||^2, ||sum_j y_j||^2
  Core<float> core = carve_core(reinterpret_cast<float*>(smem + L.off_core), d, red);
  const bool apc = q.weighting == int(Weighting::APC), sc_weights = q.weighting == int(Weighting::SC);
  const int64_t nm = int64_t(n) * m;
  const float floor_ = float(kNormFloor);
  for (int64_t p = blockIdx.x; p < q.P; p += gridDim.x) {
    const Tin* X = static_cast<const Tin*>(q.x) + (p / q.k) * n * q.C;  // (n, C)
    if constexpr (RESCALED) {
      if (q.n_iter[p] != kRescaleMark) continue;  // the same value for the whole block
    }
    const int64_t yrow = q.idx ? q.idx[p] : p;
    const Tin* Y = static_cast<const Tin*>(q.y) + yrow * m * q.C;      // (m, C)
    float* cb = cost_smem;  // (n, ldb): dot products, then the cost
    const int ldb = d.ld;

    // 1. Dot products D, norms, squared norms of the row sums.
    InputScales sc{1.f, 1.f};
    if constexpr (RESCALED) {  // X and Y scaled down: the cost and the weights do not change
      sc.x = scale_for(max_abs<Tin, float>(X, n, q.C, red));
      sc.y = scale_for(max_abs<Tin, float>(Y, m, q.C, red));
      simple_dots<Tin>(X, n, Y, m, q.C, apc, cb, ldb, nrm, sums, red, sc.x, sc.y);
    } else if (L.fast) {
      float acc[4][8], ss, colsq;
      gemm_tile<Tin, float>(X, n, Y, m, q.C, apc, gs, acc, ss, colsq);
      const int tx = t & 7, ty = t >> 3;
#pragma unroll
      for (int r = 0; r < 4; ++r)
#pragma unroll
        for (int c = 0; c < 8; ++c) {
          const int i = ty + 16 * r, j = tx + 8 * c;
          if (i < n && j < m) cb[i * ldb + j] = acc[r][c];
        }
      const float nv = fmaxf(sqrtf(ss), floor_);
      if (t < kTile) {
        if (t < n) nrm[t] = nv;
      } else if (t - kTile < m) {
        nrm[n + t - kTile] = nv;
      }
      if (t < 32) {  // warp 0: lanes 0-15 hold X's partials, 16-31 Y's
#pragma unroll
        for (int o = 8; o > 0; o >>= 1) colsq += __shfl_xor_sync(0xffffffffu, colsq, o);
        if ((t & 15) == 0) sums[t >> 4] = colsq;
      }
    } else {
      simple_dots<Tin>(X, n, Y, m, q.C, apc, cb, ldb, nrm, sums, red, 1.f, 1.f);
    }
    __syncthreads();
    if constexpr (!RESCALED) {  // squares that could overflow: left to the rescaled kernel
      int huge = 0;
      for (int r = t; r < n + m; r += nt) huge |= !(nrm[r] * nrm[r] <= safe_sq_norm<float>());
      if (__syncthreads_or(huge)) {  // its barrier ends every read of this pair's shared data
        if (t == 0) q.n_iter[p] = kRescaleMark;
        continue;
      }
    }

    // 2. Weights (APC from the dot products), then the cost C = 1 - D / (|x_i| |y_j|).
    auto D = [&](int i, int j) { return cb[i * ldb + j]; };
    if (apc) {
      // <x̂_i, unit(mean y)> = sum_j D_ij / (|x_i| m |mean y|), and symmetrically.
      const float xmn = fmaxf(sqrtf(sums[0]) / float(n), floor_ * sc.x);
      const float ymn = fmaxf(sqrtf(sums[1]) / float(m), floor_ * sc.y);
      row_partials<float, SumOp>(d, D, core.part);
      col_partials<float, SumOp>(d, D, core.part2);
      __syncthreads();
      for (int i = t; i < n; i += nt) {
        const float v = combine<float, SumOp>(core.part, d.row_chunks, n, i) / (nrm[i] * float(m) * ymn);
        core.wa[i] = v > 0.f ? v : 0.f;
      }
      for (int j = t; j < m; j += nt) {
        const float v = combine<float, SumOp>(core.part2, d.col_chunks, m, j) / (nrm[n + j] * float(n) * xmn);
        core.wb[j] = v > 0.f ? v : 0.f;
      }
    }
    for (int idx = t; idx < n * m; idx += nt) {  // D's readers above passed a barrier already
      const int i = idx / m, j = idx - i * m;
      cb[i * ldb + j] = 1.f - cb[i * ldb + j] / (nrm[i] * nrm[n + j]);
    }
    __syncthreads();
    if (sc_weights) {  // the official code sums cosine distances
      row_partials<float, SumOp>(d, D, core.part);
      col_partials<float, SumOp>(d, D, core.part2);
      __syncthreads();
      for (int i = t; i < n; i += nt) {
        const float v = combine<float, SumOp>(core.part, d.row_chunks, n, i);
        core.wa[i] = v > 0.f ? v : 0.f;
      }
      for (int j = t; j < m; j += nt) {
        const float v = combine<float, SumOp>(core.part2, d.col_chunks, m, j);
        core.wb[j] = v > 0.f ? v : 0.f;
      }
    } else if (!apc) {  // Uniform
      for (int i = t; i < n; i += nt) core.wa[i] = 1.f / float(n);
      for (int j = t; j < m; j += nt) core.wb[j] = 1.f / float(m);
    }
    bool fell_back = false;
    if (apc || sc_weights) {  // w = s / sum(s); an all-zero side becomes uniform
      double tx = 0, ty = 0;
      for (int i = t; i < n; i += nt) tx += core.wa[i];  // same thread wrote wa[i]
      for (int j = t; j < m; j += nt) ty += core.wb[j];
      tx = block_sum(tx, red);
      ty = block_sum(ty, red);
      if (!(tx > 0.0)) {
        for (int i = t; i < n; i += nt) core.wa[i] = 1.f / float(n);
        fell_back = true;
      } else {
        for (int i = t; i < n; i += nt) core.wa[i] = float(double(core.wa[i]) / tx);
      }
      if (!(ty > 0.0)) {
        for (int j = t; j < m; j += nt) core.wb[j] = 1.f / float(m);
        fell_back = true;
      } else {
        for (int j = t; j < m; j += nt) core.wb[j] = float(double(core.wb[j]) / ty);
      }
    }
    __syncthreads();

    // 3. Sinkhorn; the plan goes to flows when asked.
    const CostRef<float> cost{cb, ldb};
    const SolveOut result = solve_problem<float, true>(d, cost, kbuf, core, q.eps, q.max_iter, q.tol, q.mode,
                                                q.flows ? q.flows + p * nm : static_cast<float*>(nullptr),
                                                static_cast<float*>(nullptr), static_cast<float*>(nullptr));
    if (t == 0) {
      q.emd[p] = float(result.dist);
      q.n_iter[p] = result.iters;
      q.converged[p] = result.conv ? 1 : 0;
      if (q.fallback) q.fallback[p] = fell_back ? 1 : 0;
    }
    __syncthreads();
  }
}

template <typename Tin>
void launch(const EmdParams& q, cudaStream_t st) {
  const size_t limit = max_smem_optin();
  const EmdLayout L = emd_layout(q.n, q.m);
  if (L.bytes > limit)
    throw std::invalid_argument("emd_pairs (cuda): n, m = " + std::to_string(q.n) + ", " + std::to_string(q.m) +
                                " need " + std::to_string(L.bytes) + " bytes of shared memory, the device allows " +
                                std::to_string(limit) + "; use the unfused path (cost, weights, sinkhorn)");
  allow_max_smem<emd_pairs_kernel<Tin, false>>();
  allow_max_smem<emd_pairs_kernel<Tin, true>>();
  launch_kernel("emd_pairs_kernel", emd_pairs_kernel<Tin, false>, LaunchShape{grid_for(q.P), kGemmThreads, L.bytes}, st,
                q);
  // The pairs marked for rescaling (none unless entries are huge): blocks of others return at once.
  launch_kernel("emd_pairs_kernel", emd_pairs_kernel<Tin, true>, LaunchShape{grid_for(q.P), kGemmThreads, L.bytes}, st,
                q);
}

}  // namespace

int64_t emd_pairs_smem_bytes(int64_t n, int64_t m) { return int64_t(emd_layout(int(n), int(m)).bytes); }

bool emd_pairs_fits(int64_t n, int64_t m) {
  return n >= 1 && m >= 1 && n * (m + 1) < (int64_t(1) << 31) &&
         emd_layout(int(n), int(m)).bytes <= max_smem_optin();
}

void emd_pairs(const EmdPairsArgs& args, void* stream) {
  if (args.B <= 0 || args.k <= 0) return;
  if (args.mode == SinkhornMode::Official)
    throw std::invalid_argument("emd_pairs: official mode is not fused");
  if (args.n <= 0 || args.m <= 0) throw std::invalid_argument("emd_pairs: n and m must be >= 1");
  if (args.C < 0) throw std::invalid_argument("emd_pairs: C must be >= 0");
  if (args.n * (args.m + 1) >= (int64_t(1) << 31))
    throw std::invalid_argument("emd_pairs (cuda): n * m too large (>= 2^31 per pair)");
  if (args.weighting != Weighting::Uniform && args.weighting != Weighting::APC &&
      args.weighting != Weighting::SC)
    throw std::invalid_argument("emd_pairs (cuda): weighting must be uniform, apc or sc");
  EmdParams q;
  q.x = args.x;
  q.y = args.y;
  q.idx = args.idx;
  q.P = args.B * args.k;
  q.k = args.k;
  q.n = int(args.n);
  q.m = int(args.m);
  q.C = args.C;
  q.weighting = int(args.weighting);
  q.mode = int(args.mode);
  q.max_iter = args.max_iter;
  q.eps = float(args.eps);
  q.tol = float(args.tol);
  q.emd = args.emd;
  q.flows = args.flows;
  q.n_iter = args.n_iter;
  q.converged = args.converged;
  q.fallback = args.fallback;
  const auto st = static_cast<cudaStream_t>(stream);
  switch (args.in_dtype) {
    case DType::F32: return launch<float>(q, st);
    case DType::F16: return launch<__half>(q, st);
    case DType::BF16: return launch<__nv_bfloat16>(q, st);
    default: break;
  }
  throw std::invalid_argument("emd_pairs (cuda): inputs must be float32, float16 or bfloat16");
}

}  // namespace cuda
}  // namespace fastface
