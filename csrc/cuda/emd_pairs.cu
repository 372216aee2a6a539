// Fused re-rank on the GPU: one block per (query, candidate) pair. The cost tile is built in
// shared memory from X and Y staged over chunks of C, then weights and the Sinkhorn loop run
// on-chip; the (B, k, n, m) cost never reaches global memory (flows are written only if asked).
#include "launchers.h"
#include "sinkhorn_block.cuh"

namespace fastface {
namespace cuda {

constexpr int kTileC = 16;   // channels staged per step
constexpr int kTileLd = 17;  // padded tile row stride: no shared-memory bank conflicts

// Shared layout (floats): D (n, m+1), W (n, m+1), X tile (n, kTileLd), Y tile (m, kTileLd),
// wx (n), wy (m), xn (n), yn (m), sums (2), then the Sinkhorn vectors.
inline size_t pairs_smem(int64_t n, int64_t m) {
  return (2 * n * (m + 1) + (n + m) * kTileLd + 2 * (n + m) + 2) * sizeof(float) +
         vector_smem(n, m, sizeof(float));
}

template <typename In>
__global__ void emd_pairs_kernel(EmdPairsArgs args) {
  extern __shared__ unsigned char smem_raw[];
  float* sm = reinterpret_cast<float*>(smem_raw);
  const int n = int(args.n), m = int(args.m);
  const int64_t C = args.C, p = blockIdx.x, qb = p / args.k, nm = int64_t(n) * m;
  const int ld = m + 1;
  float* D = sm;             // (n, ld) dot products, then the cost
  float* Wb = D + n * ld;    // (n, ld) Sinkhorn scratch
  float* xt = Wb + n * ld;   // (n, kTileLd)
  float* yt = xt + n * kTileLd;
  float* wx = yt + m * kTileLd;
  float* wy = wx + n;
  float* xn = wy + m;
  float* yn = xn + n;
  float* sums = yn + m;      // ||sum_i x_i||^2, ||sum_j y_j||^2
  BlockScratch<float> s;
  s.W = Wb;
  s.ld = ld;
  s.u = sums + 2;
  s.v = s.u + n;
  s.Kv = s.v + m;
  s.alpha = s.Kv + n;
  s.beta = s.alpha + n;
  s.red = s.beta + m;
  const In* X = static_cast<const In*>(args.x) + qb * n * C;
  const int64_t row = args.idx ? args.idx[p] : p;
  const In* Y = static_cast<const In*>(args.y) + row * m * C;

  for (int t = threadIdx.x; t < n * ld; t += blockDim.x) D[t] = 0.f;
  for (int i = threadIdx.x; i < n; i += blockDim.x) xn[i] = 0.f;
  for (int j = threadIdx.x; j < m; j += blockDim.x) yn[j] = 0.f;
  float xsum2 = 0.f, ysum2 = 0.f;  // per-thread partial squared norms of the row sums
  for (int64_t c0 = 0; c0 < C; c0 += kTileC) {
    const int w = C - c0 < kTileC ? int(C - c0) : kTileC;
    __syncthreads();
    for (int t = threadIdx.x; t < n * kTileC; t += blockDim.x) {
      const int i = t / kTileC, c = t - i * kTileC;
      xt[i * kTileLd + c] = c < w ? to_float(X[int64_t(i) * C + c0 + c]) : 0.f;
    }
    for (int t = threadIdx.x; t < m * kTileC; t += blockDim.x) {
      const int j = t / kTileC, c = t - j * kTileC;
      yt[j * kTileLd + c] = c < w ? to_float(Y[int64_t(j) * C + c0 + c]) : 0.f;
    }
    __syncthreads();
    for (int t = threadIdx.x; t < nm; t += blockDim.x) {
      const int i = t / m, j = t - i * m;
      float acc = D[i * ld + j];
#pragma unroll
      for (int c = 0; c < kTileC; ++c) acc = fmaf(xt[i * kTileLd + c], yt[j * kTileLd + c], acc);
      D[i * ld + j] = acc;
    }
    for (int i = threadIdx.x; i < n; i += blockDim.x) {
      float acc = 0.f;
      for (int c = 0; c < kTileC; ++c) acc = fmaf(xt[i * kTileLd + c], xt[i * kTileLd + c], acc);
      xn[i] += acc;
    }
    for (int j = threadIdx.x; j < m; j += blockDim.x) {
      float acc = 0.f;
      for (int c = 0; c < kTileC; ++c) acc = fmaf(yt[j * kTileLd + c], yt[j * kTileLd + c], acc);
      yn[j] += acc;
    }
    if (args.weighting == Weighting::APC) {
      for (int c = threadIdx.x; c < kTileC; c += blockDim.x) {
        float sx = 0.f, sy = 0.f;
        for (int i = 0; i < n; ++i) sx += xt[i * kTileLd + c];
        for (int j = 0; j < m; ++j) sy += yt[j * kTileLd + c];
        xsum2 += sx * sx;
        ysum2 += sy * sy;
      }
    }
  }
  const float xs2 = block_reduce(xsum2, s.red, SumOp<float>(), 0.f);
  const float ys2 = block_reduce(ysum2, s.red, SumOp<float>(), 0.f);  // also orders the D/xn/yn writes
  for (int i = threadIdx.x; i < n; i += blockDim.x) xn[i] = fmaxf(sqrtf(xn[i]), float(kNormFloor));
  for (int j = threadIdx.x; j < m; j += blockDim.x) yn[j] = fmaxf(sqrtf(yn[j]), float(kNormFloor));
  __syncthreads();
  if (args.weighting == Weighting::APC) {
    // <x̂_i, unit(mean y)> = sum_j D_ij / (|x_i| m |mean y|), and symmetrically.
    const float ymean = fmaxf(sqrtf(ys2) / float(m), float(kNormFloor));
    const float xmean = fmaxf(sqrtf(xs2) / float(n), float(kNormFloor));
    for (int i = threadIdx.x; i < n; i += blockDim.x) {
      float acc = 0.f;
      for (int j = 0; j < m; ++j) acc += D[i * ld + j];
      wx[i] = fmaxf(0.f, acc / (xn[i] * float(m) * ymean));
    }
    for (int j = threadIdx.x; j < m; j += blockDim.x) {
      float acc = 0.f;
      for (int i = 0; i < n; ++i) acc += D[i * ld + j];
      wy[j] = fmaxf(0.f, acc / (yn[j] * float(n) * xmean));
    }
    __syncthreads();
  }
  for (int t = threadIdx.x; t < nm; t += blockDim.x) {
    const int i = t / m, j = t - i * m;
    D[i * ld + j] = 1.f - D[i * ld + j] / (xn[i] * yn[j]);
  }
  __syncthreads();
  if (args.weighting == Weighting::SC) {
    for (int i = threadIdx.x; i < n; i += blockDim.x) {
      float acc = 0.f;
      for (int j = 0; j < m; ++j) acc += D[i * ld + j];
      wx[i] = fmaxf(0.f, acc);
    }
    for (int j = threadIdx.x; j < m; j += blockDim.x) {
      float acc = 0.f;
      for (int i = 0; i < n; ++i) acc += D[i * ld + j];
      wy[j] = fmaxf(0.f, acc);
    }
  } else if (args.weighting == Weighting::Uniform) {
    for (int i = threadIdx.x; i < n; i += blockDim.x) wx[i] = 1.f / float(n);
    for (int j = threadIdx.x; j < m; j += blockDim.x) wy[j] = 1.f / float(m);
  } else if (args.weighting == Weighting::External) {
    for (int i = threadIdx.x; i < n; i += blockDim.x) wx[i] = args.wx_in[p * n + i];
    for (int j = threadIdx.x; j < m; j += blockDim.x) wy[j] = args.wy_in[p * m + j];
  }
  float fell = 0.f;
  if (args.weighting == Weighting::APC || args.weighting == Weighting::SC) {
    float tx = 0.f, ty = 0.f;
    for (int i = threadIdx.x; i < n; i += blockDim.x) tx += wx[i];
    for (int j = threadIdx.x; j < m; j += blockDim.x) ty += wy[j];
    tx = block_reduce(tx, s.red, SumOp<float>(), 0.f);
    ty = block_reduce(ty, s.red, SumOp<float>(), 0.f);
    for (int i = threadIdx.x; i < n; i += blockDim.x) wx[i] = tx > 0.f ? wx[i] / tx : 1.f / float(n);
    for (int j = threadIdx.x; j < m; j += blockDim.x) wy[j] = ty > 0.f ? wy[j] / ty : 1.f / float(m);
    fell = (tx > 0.f && ty > 0.f) ? 0.f : 1.f;
  }
  __syncthreads();
  BlockResult res;
  float* flows = args.flows ? args.flows + p * nm : nullptr;
  const float dist = solve_block<float>(BlockGroup(), D, ld, wx, wy, n, m, float(args.eps), args.max_iter, float(args.tol),
                                        args.mode, s, flows, nullptr, nullptr, res);
  if (threadIdx.x == 0) {
    args.emd[p] = dist;
    args.n_iter[p] = res.iters;
    args.converged[p] = res.converged ? 1 : 0;
    if (args.fallback) args.fallback[p] = fell > 0.f ? 1 : 0;
  }
}

template <typename In>
static void launch(const EmdPairsArgs& args, cudaStream_t stream) {
  const size_t bytes = pairs_smem(args.n, args.m);
  set_smem(emd_pairs_kernel<In>, bytes, "emd_pairs_kernel");
  emd_pairs_kernel<In><<<grid_of(args.B * args.k, "emd_pairs_kernel"), kThreads, bytes, stream>>>(args);
  check_launch("emd_pairs_kernel");
}

void emd_pairs(const EmdPairsArgs& args, void* stream) {
  if (args.B == 0 || args.k == 0) return;
  if (args.mode == SinkhornMode::Official) throw std::invalid_argument("emd_pairs: official mode is not fused");
  auto st = static_cast<cudaStream_t>(stream);
  switch (args.in_dtype) {
    case DType::F32: return launch<float>(args, st);
    case DType::F16: return launch<__half>(args, st);
    case DType::BF16: return launch<__nv_bfloat16>(args, st);
    default: break;
  }
  throw std::invalid_argument("emd_pairs (cuda): inputs must be float32, float16 or bfloat16");
}

}  // namespace cuda
}  // namespace fastface
