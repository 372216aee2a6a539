// One Sinkhorn problem solved by one thread block, the whole loop on-chip.
// Semantics: fastface/reference/sinkhorn.py (reduced cost, auto log-domain switch, per-problem stop).
#pragma once
#include <cstdint>

#include "../common/problem.h"
#include "common.cuh"

namespace fastface {
namespace cuda {

// The threads that solve one problem: a whole block, or one warp (several problems per block).
struct BlockGroup {
  __device__ int rank() const { return threadIdx.x; }
  __device__ int size() const { return blockDim.x; }
  __device__ void sync() const { __syncthreads(); }
  template <typename T, typename Op>
  __device__ T reduce(T v, T* red, Op op, T identity) const { return block_reduce(v, red, op, identity); }
};

struct WarpGroup {
  __device__ int rank() const { return threadIdx.x & 31; }
  __device__ int size() const { return 32; }
  __device__ void sync() const { __syncwarp(); }
  template <typename T, typename Op>
  __device__ T reduce(T v, T*, Op op, T) const {
    __syncwarp();  // order the shared-memory writes made before the reduction
    for (int o = 16; o > 0; o >>= 1) v = op(v, __shfl_xor_sync(0xffffffffu, v, o));
    __syncwarp();
    return v;
  }
};

// Scratch of one problem: W (n*m) in shared or global memory; vectors in shared memory.
template <typename T>
struct BlockScratch {
  T* W;      // (n, ld): reduced cost, then K = exp(-Cr/eps) in the kernel domain
  int ld;    // row stride of W (m + 1 in shared memory: no bank conflicts down a column)
  T* u;      // (n) scaling u, or potential f
  T* v;      // (m) scaling v, or potential g
  T* Kv;     // (n) K v, or row log-sum-exp
  T* alpha;  // (n) row minima
  T* beta;   // (m) column minima
  T* red;    // (32) reduction slots
};

template <typename T>
__device__ T lse_row(const T* Cr, const T* g, int i, int m, int ld, T inv_eps) {
  T mx = -INFINITY;
  for (int j = 0; j < m; ++j) mx = fmax(mx, (g[j] - Cr[(int64_t)i * ld + j]) * inv_eps);
  if (isinf(mx)) return mx;
  T s = 0;
  for (int j = 0; j < m; ++j) s += exp((g[j] - Cr[(int64_t)i * ld + j]) * inv_eps - mx);
  return mx + log(s);
}

template <typename T>
__device__ T lse_col(const T* Cr, const T* f, int j, int n, int ld, T inv_eps) {
  T mx = -INFINITY;
  for (int i = 0; i < n; ++i) mx = fmax(mx, (f[i] - Cr[(int64_t)i * ld + j]) * inv_eps);
  if (isinf(mx)) return mx;
  T s = 0;
  for (int i = 0; i < n; ++i) s += exp((f[i] - Cr[(int64_t)i * ld + j]) * inv_eps - mx);
  return mx + log(s);
}

// Writes Cr = C - alpha_i - beta_j into W; returns max(Cr) to every thread. C (n, ldc).
template <typename T, typename Group>
__device__ T reduce_cost_block(const Group& grp, const T* C, int ldc, int n, int m, BlockScratch<T>& s) {
  for (int i = grp.rank(); i < n; i += grp.size()) {
    T mn = C[(int64_t)i * ldc];
    for (int j = 1; j < m; ++j) mn = fmin(mn, C[(int64_t)i * ldc + j]);
    s.alpha[i] = mn;
  }
  grp.sync();
  for (int j = grp.rank(); j < m; j += grp.size()) {
    T mn = INFINITY;
    for (int i = 0; i < n; ++i) mn = fmin(mn, C[(int64_t)i * ldc + j] - s.alpha[i]);
    s.beta[j] = mn;
  }
  grp.sync();
  T mx = 0;
  for (int t = grp.rank(); t < n * m; t += grp.size()) {
    const int i = t / m, j = t - i * m;
    const T cr = C[(int64_t)i * ldc + j] - s.alpha[i] - s.beta[j];
    s.W[(int64_t)i * s.ld + j] = cr;
    mx = fmax(mx, cr);
  }
  return grp.reduce(mx, s.red, MaxOp<T>(), T(0));  // ends with a barrier-protected broadcast
}

struct BlockResult {
  int iters;
  bool converged;
};

// Kernel domain; W holds Cr on entry and K on exit. Returns false if a positive weight got a
// non-finite or zero scaling (the auto mode then reruns in the log domain).
template <typename T, typename Group>
__device__ bool kernel_domain_block(const Group& grp, const T* a, const T* b, int n, int m, T eps, int max_iter, T tol,
                                    BlockScratch<T>& s, BlockResult& res) {
  const T inv_eps = T(1) / eps;
  for (int t = grp.rank(); t < n * m; t += grp.size()) {
    const int i = t / m, j = t - i * m;
    s.W[(int64_t)i * s.ld + j] = exp(-s.W[(int64_t)i * s.ld + j] * inv_eps);
  }
  for (int j = grp.rank(); j < m; j += grp.size()) s.v[j] = T(1);
  grp.sync();
  for (int i = grp.rank(); i < n; i += grp.size()) {
    T acc = 0;
    for (int j = 0; j < m; ++j) acc += s.W[(int64_t)i * s.ld + j] * s.v[j];
    s.Kv[i] = acc;
  }
  grp.sync();
  res.iters = 0;
  res.converged = false;
  for (int it = 0; it < max_iter; ++it) {
    for (int i = grp.rank(); i < n; i += grp.size()) s.u[i] = a[i] > 0 ? a[i] / s.Kv[i] : T(0);
    grp.sync();
    for (int j = grp.rank(); j < m; j += grp.size()) {
      T acc = 0;
      for (int i = 0; i < n; ++i) acc += s.W[(int64_t)i * s.ld + j] * s.u[i];
      s.v[j] = b[j] > 0 ? b[j] / acc : T(0);
    }
    grp.sync();
    T err = 0;
    for (int i = grp.rank(); i < n; i += grp.size()) {
      T acc = 0;
      for (int j = 0; j < m; ++j) acc += s.W[(int64_t)i * s.ld + j] * s.v[j];
      s.Kv[i] = acc;
      err += fabs(s.u[i] * acc - a[i]);
    }
    err = grp.reduce(err, s.red, SumOp<T>(), T(0));
    ++res.iters;
    if (err <= tol) {
      res.converged = true;
      break;
    }
  }
  T bad = 0;
  for (int i = grp.rank(); i < n; i += grp.size())
    if (a[i] > 0 && !(isfinite(s.u[i]) && s.u[i] > 0)) bad = 1;
  for (int j = grp.rank(); j < m; j += grp.size())
    if (b[j] > 0 && !(isfinite(s.v[j]) && s.v[j] > 0)) bad = 1;
  return grp.reduce(bad, s.red, SumOp<T>(), T(0)) == T(0);
}

// Log domain on W = Cr; f in u, g in v, row LSE in Kv.
template <typename T, typename Group>
__device__ void log_domain_block(const Group& grp, const T* a, const T* b, int n, int m, T eps, int max_iter, T tol,
                                 BlockScratch<T>& s, BlockResult& res) {
  const T inv_eps = T(1) / eps;
  for (int j = grp.rank(); j < m; j += grp.size()) s.v[j] = T(0);
  grp.sync();
  for (int i = grp.rank(); i < n; i += grp.size()) s.Kv[i] = lse_row(s.W, s.v, i, m, s.ld, inv_eps);
  grp.sync();
  res.iters = 0;
  res.converged = false;
  for (int it = 0; it < max_iter; ++it) {
    for (int i = grp.rank(); i < n; i += grp.size())
      s.u[i] = a[i] > 0 ? eps * log(a[i]) - eps * s.Kv[i] : T(-INFINITY);
    grp.sync();
    for (int j = grp.rank(); j < m; j += grp.size())
      s.v[j] = b[j] > 0 ? eps * log(b[j]) - eps * lse_col(s.W, s.u, j, n, s.ld, inv_eps) : T(-INFINITY);
    grp.sync();
    T err = 0;
    for (int i = grp.rank(); i < n; i += grp.size()) {
      const T r = lse_row(s.W, s.v, i, m, s.ld, inv_eps);
      s.Kv[i] = r;
      err += fabs(exp(s.u[i] * inv_eps + r) - a[i]);
    }
    err = grp.reduce(err, s.red, SumOp<T>(), T(0));
    ++res.iters;
    if (err <= tol) {
      res.converged = true;
      break;
    }
  }
}

// Solves one problem; every thread of the group must call it. Returns the distance to all of them.
template <typename T, typename Group>
__device__ T solve_block(const Group& grp, const T* C, int ldc, const T* a, const T* b, int n, int m, T eps, int max_iter, T tol,
                         SinkhornMode mode, BlockScratch<T>& s, T* plan, T* f_out, T* g_out,
                         BlockResult& res) {
  const T max_cr = reduce_cost_block(grp, C, ldc, n, m, s);
  bool use_log = mode == SinkhornMode::Log ||
                 (mode == SinkhornMode::Auto && max_cr / eps > T(kLogDomainThreshold));
  if (!use_log) {
    const bool ok = kernel_domain_block(grp, a, b, n, m, eps, max_iter, tol, s, res);
    if (!ok && mode == SinkhornMode::Auto) {
      use_log = true;
      reduce_cost_block(grp, C, ldc, n, m, s);
    }
  }
  if (use_log) log_domain_block(grp, a, b, n, m, eps, max_iter, tol, s, res);
  grp.sync();
  const T inv_eps = T(1) / eps;
  T dist = 0;
  for (int t = grp.rank(); t < n * m; t += grp.size()) {
    const int i = t / m, j = t - i * m;
    const T w = s.W[(int64_t)i * s.ld + j];
    const T p = use_log ? exp((s.u[i] + s.v[j] - w) * inv_eps) : s.u[i] * w * s.v[j];
    dist += p * C[(int64_t)i * ldc + j];
    if (plan) plan[t] = p;  // plan is (n, m); when W aliases plan, ld == m and t is the same slot
  }
  if (f_out)
    for (int i = grp.rank(); i < n; i += grp.size())
      f_out[i] = (use_log ? s.u[i] : eps * log(s.u[i])) + s.alpha[i];
  if (g_out)
    for (int j = grp.rank(); j < m; j += grp.size())
      g_out[j] = (use_log ? s.v[j] : eps * log(s.v[j])) + s.beta[j];
  return grp.reduce(dist, s.red, SumOp<T>(), T(0));
}

// Shared-memory bytes for the vectors of one problem (W excluded).
inline size_t vector_smem(int64_t n, int64_t m, size_t elem) { return (3 * n + 3 * m + 32) * elem; }

}  // namespace cuda
}  // namespace fastface
