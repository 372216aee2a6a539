// One Sinkhorn problem solved by one thread block, the whole loop on-chip.
// Semantics: fastface/reference/sinkhorn.py (reduced cost, auto log-domain switch, per-problem stop).
#pragma once
#include <cstdint>

#include "../common/problem.h"
#include "common.cuh"

namespace fastface {
namespace cuda {

// Scratch of one block: W (n*m) in shared or global memory; vectors in shared memory.
template <typename T>
struct BlockScratch {
  T* W;      // (n, m): reduced cost, then K = exp(-Cr/eps) in the kernel domain
  T* u;      // (n) scaling u, or potential f
  T* v;      // (m) scaling v, or potential g
  T* Kv;     // (n) K v, or row log-sum-exp
  T* alpha;  // (n) row minima
  T* beta;   // (m) column minima
  T* red;    // (32) reduction slots
};

template <typename T>
__device__ T lse_row(const T* Cr, const T* g, int i, int m, T inv_eps) {
  T mx = -INFINITY;
  for (int j = 0; j < m; ++j) mx = fmax(mx, (g[j] - Cr[(int64_t)i * m + j]) * inv_eps);
  if (isinf(mx)) return mx;
  T s = 0;
  for (int j = 0; j < m; ++j) s += exp((g[j] - Cr[(int64_t)i * m + j]) * inv_eps - mx);
  return mx + log(s);
}

template <typename T>
__device__ T lse_col(const T* Cr, const T* f, int j, int n, int m, T inv_eps) {
  T mx = -INFINITY;
  for (int i = 0; i < n; ++i) mx = fmax(mx, (f[i] - Cr[(int64_t)i * m + j]) * inv_eps);
  if (isinf(mx)) return mx;
  T s = 0;
  for (int i = 0; i < n; ++i) s += exp((f[i] - Cr[(int64_t)i * m + j]) * inv_eps - mx);
  return mx + log(s);
}

// Writes Cr = C - alpha_i - beta_j into W; returns max(Cr) to every thread.
template <typename T>
__device__ T reduce_cost_block(const T* C, int n, int m, BlockScratch<T>& s) {
  for (int i = threadIdx.x; i < n; i += blockDim.x) {
    T mn = C[(int64_t)i * m];
    for (int j = 1; j < m; ++j) mn = fmin(mn, C[(int64_t)i * m + j]);
    s.alpha[i] = mn;
  }
  __syncthreads();
  for (int j = threadIdx.x; j < m; j += blockDim.x) {
    T mn = INFINITY;
    for (int i = 0; i < n; ++i) mn = fmin(mn, C[(int64_t)i * m + j] - s.alpha[i]);
    s.beta[j] = mn;
  }
  __syncthreads();
  T mx = 0;
  for (int t = threadIdx.x; t < n * m; t += blockDim.x) {
    const int i = t / m, j = t - i * m;
    const T cr = C[t] - s.alpha[i] - s.beta[j];
    s.W[t] = cr;
    mx = fmax(mx, cr);
  }
  return block_reduce(mx, s.red, MaxOp<T>(), T(0));  // ends with a barrier-protected broadcast
}

struct BlockResult {
  int iters;
  bool converged;
};

// Kernel domain; W holds Cr on entry and K on exit. Returns false if a positive weight got a
// non-finite or zero scaling (the auto mode then reruns in the log domain).
template <typename T>
__device__ bool kernel_domain_block(const T* a, const T* b, int n, int m, T eps, int max_iter, T tol,
                                    BlockScratch<T>& s, BlockResult& res) {
  const T inv_eps = T(1) / eps;
  for (int t = threadIdx.x; t < n * m; t += blockDim.x) s.W[t] = exp(-s.W[t] * inv_eps);
  for (int j = threadIdx.x; j < m; j += blockDim.x) s.v[j] = T(1);
  __syncthreads();
  for (int i = threadIdx.x; i < n; i += blockDim.x) {
    T acc = 0;
    for (int j = 0; j < m; ++j) acc += s.W[(int64_t)i * m + j] * s.v[j];
    s.Kv[i] = acc;
  }
  __syncthreads();
  res.iters = 0;
  res.converged = false;
  for (int it = 0; it < max_iter; ++it) {
    for (int i = threadIdx.x; i < n; i += blockDim.x) s.u[i] = a[i] > 0 ? a[i] / s.Kv[i] : T(0);
    __syncthreads();
    for (int j = threadIdx.x; j < m; j += blockDim.x) {
      T acc = 0;
      for (int i = 0; i < n; ++i) acc += s.W[(int64_t)i * m + j] * s.u[i];
      s.v[j] = b[j] > 0 ? b[j] / acc : T(0);
    }
    __syncthreads();
    T err = 0;
    for (int i = threadIdx.x; i < n; i += blockDim.x) {
      T acc = 0;
      for (int j = 0; j < m; ++j) acc += s.W[(int64_t)i * m + j] * s.v[j];
      s.Kv[i] = acc;
      err += fabs(s.u[i] * acc - a[i]);
    }
    err = block_reduce(err, s.red, SumOp<T>(), T(0));
    ++res.iters;
    if (err <= tol) {
      res.converged = true;
      break;
    }
  }
  T bad = 0;
  for (int i = threadIdx.x; i < n; i += blockDim.x)
    if (a[i] > 0 && !(isfinite(s.u[i]) && s.u[i] > 0)) bad = 1;
  for (int j = threadIdx.x; j < m; j += blockDim.x)
    if (b[j] > 0 && !(isfinite(s.v[j]) && s.v[j] > 0)) bad = 1;
  return block_reduce(bad, s.red, SumOp<T>(), T(0)) == T(0);
}

// Log domain on W = Cr; f in u, g in v, row LSE in Kv.
template <typename T>
__device__ void log_domain_block(const T* a, const T* b, int n, int m, T eps, int max_iter, T tol,
                                 BlockScratch<T>& s, BlockResult& res) {
  const T inv_eps = T(1) / eps;
  for (int j = threadIdx.x; j < m; j += blockDim.x) s.v[j] = T(0);
  __syncthreads();
  for (int i = threadIdx.x; i < n; i += blockDim.x) s.Kv[i] = lse_row(s.W, s.v, i, m, inv_eps);
  __syncthreads();
  res.iters = 0;
  res.converged = false;
  for (int it = 0; it < max_iter; ++it) {
    for (int i = threadIdx.x; i < n; i += blockDim.x)
      s.u[i] = a[i] > 0 ? eps * log(a[i]) - eps * s.Kv[i] : T(-INFINITY);
    __syncthreads();
    for (int j = threadIdx.x; j < m; j += blockDim.x)
      s.v[j] = b[j] > 0 ? eps * log(b[j]) - eps * lse_col(s.W, s.u, j, n, m, inv_eps) : T(-INFINITY);
    __syncthreads();
    T err = 0;
    for (int i = threadIdx.x; i < n; i += blockDim.x) {
      const T r = lse_row(s.W, s.v, i, m, inv_eps);
      s.Kv[i] = r;
      err += fabs(exp(s.u[i] * inv_eps + r) - a[i]);
    }
    err = block_reduce(err, s.red, SumOp<T>(), T(0));
    ++res.iters;
    if (err <= tol) {
      res.converged = true;
      break;
    }
  }
}

// Solves one problem; every thread of the block must call it. Returns the distance to all threads.
template <typename T>
__device__ T solve_block(const T* C, const T* a, const T* b, int n, int m, T eps, int max_iter, T tol,
                         SinkhornMode mode, BlockScratch<T>& s, T* plan, T* f_out, T* g_out,
                         BlockResult& res) {
  const T max_cr = reduce_cost_block(C, n, m, s);
  bool use_log = mode == SinkhornMode::Log ||
                 (mode == SinkhornMode::Auto && max_cr / eps > T(kLogDomainThreshold));
  if (!use_log) {
    const bool ok = kernel_domain_block(a, b, n, m, eps, max_iter, tol, s, res);
    if (!ok && mode == SinkhornMode::Auto) {
      use_log = true;
      reduce_cost_block(C, n, m, s);
    }
  }
  if (use_log) log_domain_block(a, b, n, m, eps, max_iter, tol, s, res);
  __syncthreads();
  const T inv_eps = T(1) / eps;
  T dist = 0;
  for (int t = threadIdx.x; t < n * m; t += blockDim.x) {
    const int i = t / m, j = t - i * m;
    const T p = use_log ? exp((s.u[i] + s.v[j] - s.W[t]) * inv_eps) : s.u[i] * s.W[t] * s.v[j];
    dist += p * C[t];
    if (plan) plan[t] = p;
  }
  if (f_out)
    for (int i = threadIdx.x; i < n; i += blockDim.x)
      f_out[i] = (use_log ? s.u[i] : eps * log(s.u[i])) + s.alpha[i];
  if (g_out)
    for (int j = threadIdx.x; j < m; j += blockDim.x)
      g_out[j] = (use_log ? s.v[j] : eps * log(s.v[j])) + s.beta[j];
  return block_reduce(dist, s.red, SumOp<T>(), T(0));
}

// Shared-memory bytes for the vectors of one problem (W excluded).
inline size_t vector_smem(int64_t n, int64_t m, size_t elem) { return (3 * n + 3 * m + 32) * elem; }

}  // namespace cuda
}  // namespace fastface
