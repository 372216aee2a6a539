// Batched Sinkhorn on the GPU: one block per problem, the whole loop on-chip (K in shared memory
// when it fits, else in the plan buffer that the caller then provides); Official mode: one block
// per group of coupled problems.
#include <algorithm>

#include "launchers.h"
#include "sinkhorn_block.cuh"

namespace fastface {
namespace cuda {

// Lays out one problem's scratch at `cursor` (W there too when kSharedW, else in the plan buffer).
template <typename T, bool kSharedW>
__device__ BlockScratch<T> carve(T* cursor, T* plan, int n, int m) {
  BlockScratch<T> s;
  if (kSharedW) { s.W = cursor; s.ld = m + 1; cursor += int64_t(n) * (m + 1); } else { s.W = plan; s.ld = m; }
  s.u = cursor; cursor += n;
  s.v = cursor; cursor += m;
  s.Kv = cursor; cursor += n;
  s.alpha = cursor; cursor += n;
  s.beta = cursor; cursor += m;
  s.red = cursor;
  return s;
}

template <typename T, bool kSharedW, typename Group>
__device__ void solve_problem(const Group& grp, const SinkhornArgs& args, int64_t p, T* cursor) {
  const int n = int(args.n), m = int(args.m);
  const int64_t nm = int64_t(n) * m;
  T* plan = args.plan ? static_cast<T*>(args.plan) + p * nm : nullptr;
  BlockScratch<T> s = carve<T, kSharedW>(cursor, plan, n, m);
  const T* C = static_cast<const T*>(args.cost) + p * nm;
  const T* a = static_cast<const T*>(args.a) + p * n;
  const T* b = static_cast<const T*>(args.b) + p * m;
  T* f = args.f ? static_cast<T*>(args.f) + p * n : nullptr;
  T* g = args.g ? static_cast<T*>(args.g) + p * m : nullptr;
  BlockResult res;
  const T dist = solve_block<T>(grp, C, m, a, b, n, m, T(args.eps), args.max_iter, T(args.tol), args.mode,
                                s, plan, f, g, res);
  if (grp.rank() == 0) {
    static_cast<T*>(args.distance)[p] = dist;
    args.n_iter[p] = res.iters;
    args.converged[p] = res.converged ? 1 : 0;
  }
}

// One block per problem (large problems).
template <typename T, bool kSharedW>
__global__ void sinkhorn_kernel(SinkhornArgs args) {
  extern __shared__ unsigned char smem_raw[];
  solve_problem<T, kSharedW>(BlockGroup(), args, blockIdx.x, reinterpret_cast<T*>(smem_raw));
}

// One warp per problem, several problems per block (small problems: no block-wide barriers).
template <typename T>
__global__ void sinkhorn_warp_kernel(SinkhornArgs args, int64_t per_problem) {
  extern __shared__ unsigned char smem_raw[];
  const int warp = threadIdx.x >> 5;
  const int64_t p = int64_t(blockIdx.x) * (blockDim.x >> 5) + warp;
  if (p >= args.P) return;  // whole warps leave; warps never wait on each other
  solve_problem<T, true>(WarpGroup(), args, p, reinterpret_cast<T*>(smem_raw) + warp * per_problem);
}

// Official DeepFace-EMD loop for one group: K = exp(-C/eps) kept in plan, r in f, c in g (the
// caller provides all three buffers), mean |r - r_prev| over the group < tol stops the group.
template <typename T>
__global__ void official_kernel(SinkhornArgs args) {
  __shared__ T red[32];
  const int n = int(args.n), m = int(args.m);
  const int64_t G = args.group, first = int64_t(blockIdx.x) * G, nm = int64_t(n) * m;
  const T eps = T(args.eps);
  T* K = static_cast<T*>(args.plan) + first * nm;
  T* r = static_cast<T*>(args.f) + first * n;
  T* c = static_cast<T*>(args.g) + first * m;
  const T* C = static_cast<const T*>(args.cost) + first * nm;
  const T* a = static_cast<const T*>(args.a) + first * n;
  const T* b = static_cast<const T*>(args.b) + first * m;
  for (int64_t t = threadIdx.x; t < G * nm; t += blockDim.x) K[t] = exp(-C[t] / eps);
  for (int64_t t = threadIdx.x; t < G * n; t += blockDim.x) r[t] = T(1);
  for (int64_t t = threadIdx.x; t < G * m; t += blockDim.x) c[t] = T(1);
  __syncthreads();
  int iters = 0;
  bool stopped = false;
  for (int it = 0; it < args.max_iter && !stopped; ++it) {
    T delta = 0;
    for (int64_t q = 0; q < G; ++q) {
      const T* Kq = K + q * nm;
      for (int i = threadIdx.x; i < n; i += blockDim.x) {
        T acc = 0;
        for (int j = 0; j < m; ++j) acc += Kq[int64_t(i) * m + j] * c[q * m + j];
        const T rn = a[q * n + i] / acc;
        delta += fabs(rn - r[q * n + i]);
        r[q * n + i] = rn;
      }
      __syncthreads();
      for (int j = threadIdx.x; j < m; j += blockDim.x) {
        T acc = 0;
        for (int i = 0; i < n; ++i) acc += Kq[int64_t(i) * m + j] * r[q * n + i];
        c[q * m + j] = b[q * m + j] / acc;
      }
      __syncthreads();
    }
    delta = block_reduce(delta, red, SumOp<T>(), T(0));
    ++iters;
    stopped = delta / T(G * n) < T(args.tol);
  }
  for (int64_t q = 0; q < G; ++q) {
    T sim = 0;
    for (int64_t t = threadIdx.x; t < nm; t += blockDim.x) {
      const int64_t i = t / m, j = t - i * m;
      const T pl = r[q * n + i] * K[q * nm + t] * c[q * m + j];
      K[q * nm + t] = pl;  // the plan replaces K
      sim += pl * (T(1) - C[q * nm + t]);
    }
    sim = block_reduce(sim, red, SumOp<T>(), T(0));
    if (threadIdx.x == 0) {
      static_cast<T*>(args.distance)[first + q] = T(1) - sim;
      args.n_iter[first + q] = iters;
      args.converged[first + q] = stopped ? 1 : 0;
    }
  }
}

template <typename T>
static void launch(const SinkhornArgs& args, cudaStream_t stream) {
  if (args.mode == SinkhornMode::Official) {
    if (!args.plan || !args.f || !args.g)
      throw std::invalid_argument("sinkhorn (cuda, official): plan, f and g buffers are required");
    official_kernel<T><<<grid_of(args.P / args.group, "official_kernel"), kThreads, 0, stream>>>(args);
    return check_launch("official_kernel");
  }
  // Per-problem shared memory, W padded to (n, m + 1); keep it a multiple of 16 bytes.
  const int64_t per_problem = ((args.n * (args.m + 1) + 3 * args.n + 3 * args.m + 32) * int64_t(sizeof(T)) + 15) / 16 * 16 / int64_t(sizeof(T));
  const size_t per_bytes = size_t(per_problem) * sizeof(T);
  const int warps = int(std::min<size_t>(4, kDefaultSmem / per_bytes));
  if (warps >= 2) {
    const int64_t blocks = (args.P + warps - 1) / warps;
    sinkhorn_warp_kernel<T><<<grid_of(blocks, "sinkhorn_warp_kernel"), 32 * warps, per_bytes * warps, stream>>>(args, per_problem);
    return check_launch("sinkhorn_warp_kernel");
  }
  const size_t vec = vector_smem(args.n, args.m, sizeof(T));
  const size_t full = vec + size_t(args.n) * (args.m + 1) * sizeof(T);
  if (full <= kDefaultSmem) {
    sinkhorn_kernel<T, true><<<grid_of(args.P, "sinkhorn_kernel"), kThreads, full, stream>>>(args);
    return check_launch("sinkhorn_kernel");
  }
  if (!args.plan)
    throw std::invalid_argument("sinkhorn (cuda): n*m too large for shared memory; pass a plan buffer");
  set_smem(sinkhorn_kernel<T, false>, vec, "sinkhorn_kernel");
  sinkhorn_kernel<T, false><<<grid_of(args.P, "sinkhorn_kernel"), kThreads, vec, stream>>>(args);
  check_launch("sinkhorn_kernel");
}

void sinkhorn(const SinkhornArgs& args, void* stream) {
  if (args.P == 0) return;
  if (args.mode == SinkhornMode::Official && (args.group <= 0 || args.P % args.group != 0))
    throw std::invalid_argument("sinkhorn: P must be a multiple of group in official mode");
  auto st = static_cast<cudaStream_t>(stream);
  if (args.dtype == DType::F32) return launch<float>(args, st);
  if (args.dtype == DType::F64) return launch<double>(args, st);
  throw std::invalid_argument("sinkhorn (cuda): dtype must be float32 or float64");
}

}  // namespace cuda
}  // namespace fastface
