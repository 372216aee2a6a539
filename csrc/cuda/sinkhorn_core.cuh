// One Sinkhorn problem solved by one thread block, the whole loop on-chip; used by sinkhorn.cu
// and emd_pairs.cu. Semantics: fastface/reference/sinkhorn.py (reduced cost Cr = C - alpha_i -
// beta_j, kernel or log domain, auto switch to the log domain, per-problem stop on the L1
// row-marginal error). Every function here is block-wide: all threads call it, uniformly.
#pragma once
#include "../common/emd_problem.h"
#include "common.cuh"

namespace fastface {
namespace cuda {

// Work split of a block over an (n, m) problem. Row reductions (over j) run as row_chunks chunks
// of row_chunk columns per row, task = t * n + i; column reductions as col_chunks chunks of
// col_chunk rows, task = t * m + j.
// Consecutive threads take consecutive rows (columns): with an odd row stride ld the shared
// accesses of a warp are conflict-free both ways.
struct Dims {
  int n, m, ld;
  int row_chunks, row_chunk;  // row reductions: row_chunks chunks of row_chunk columns
  int col_chunks, col_chunk;  // column reductions: col_chunks chunks of col_chunk rows
  int part_len;  // length of each partial buffer: max(row_chunks * n, col_chunks * m, threads)
};

__host__ __device__ inline Dims make_dims(int n, int m, int ld, int threads) {
  Dims d;
  d.n = n;
  d.m = m;
  d.ld = ld;
  int s = threads / n;
  s = s > m ? m : s;
  s = s < 1 ? 1 : s;
  d.row_chunk = (m + s - 1) / s;
  d.row_chunks = (m + d.row_chunk - 1) / d.row_chunk;  // no empty chunk
  s = threads / m;
  s = s > n ? n : s;
  s = s < 1 ? 1 : s;
  d.col_chunk = (n + s - 1) / s;
  d.col_chunks = (n + d.col_chunk - 1) / d.col_chunk;
  const int a = d.row_chunks * n, b = d.col_chunks * m;
  d.part_len = a > b ? a : b;
  d.part_len = d.part_len > threads ? d.part_len : threads;
  return d;
}

// Elements of the solver's shared vectors: wa, wb, alpha, beta, u, v, kv, part, part2.
__host__ __device__ inline size_t core_vec_elems(const Dims& d) {
  return size_t(4) * d.n + size_t(3) * d.m + size_t(2) * d.part_len;
}

template <typename T>
struct Core {
  T *wa, *wb;       // (n), (m) marginals
  T *alpha, *beta;  // (n), (m) row minima of C, column minima of C - alpha
  T *u, *v;         // (n), (m) scalings (kernel domain) or potentials f, g (log domain)
  T* kv;            // (n) K v (kernel) or row log-sum-exp (log)
  T *part, *part2;  // (part_len) partial reductions (LSE: chunk maxima, chunk sums); contiguous
  double* red;      // (32) block reductions
};

template <typename T>
__device__ __forceinline__ Core<T> carve_core(T* p, const Dims& d, double* red) {
  Core<T> core;
  core.wa = p; p += d.n;
  core.wb = p; p += d.m;
  core.alpha = p; p += d.n;
  core.beta = p; p += d.m;
  core.u = p; p += d.n;
  core.v = p; p += d.m;
  core.kv = p; p += d.n;
  core.part = p; p += d.part_len;
  core.part2 = p;
  core.red = red;
  return core;
}

struct SumOp {
  template <typename T> __device__ static T init() { return T(0); }
  template <typename T> __device__ static T apply(T a, T b) { return a + b; }
};
struct MinOp {
  template <typename T> __device__ static T init() { return inf_v<T>(); }
  template <typename T> __device__ static T apply(T a, T b) { return b < a ? b : a; }
};

// part[t * n + i] = Op over the columns j of chunk t of f(i, j).
template <typename T, class Op, class F>
__device__ __forceinline__ void row_partials(const Dims& d, F f, T* part) {
  const int tasks = d.row_chunks * d.n;
  for (int task = threadIdx.x; task < tasks; task += blockDim.x) {
    const int t = task / d.n, i = task - t * d.n;
    const int j0 = t * d.row_chunk, j1 = min(d.m, j0 + d.row_chunk);
    T acc = Op::template init<T>();
    for (int j = j0; j < j1; ++j) acc = Op::apply(acc, f(i, j));
    part[task] = acc;
  }
}

// part[t * m + j] = Op over the rows i of chunk t of f(i, j).
template <typename T, class Op, class F>
__device__ __forceinline__ void col_partials(const Dims& d, F f, T* part) {
  const int tasks = d.col_chunks * d.m;
  for (int task = threadIdx.x; task < tasks; task += blockDim.x) {
    const int t = task / d.m, j = task - t * d.m;
    const int i0 = t * d.col_chunk, i1 = min(d.n, i0 + d.col_chunk);
    T acc = Op::template init<T>();
    for (int i = i0; i < i1; ++i) acc = Op::apply(acc, f(i, j));
    part[task] = acc;
  }
}

template <typename T, class Op>
__device__ __forceinline__ T combine(const T* part, int S, int stride, int idx) {
  T acc = part[idx];
  for (int t = 1; t < S; ++t) acc = Op::apply(acc, part[t * stride + idx]);
  return acc;
}

// Log-sum-exp partials: pmax = chunk max of z, psum = sum exp(z - pmax) (0 when pmax is not finite).
template <typename T, class F>
__device__ __forceinline__ void row_lse_partials(const Dims& d, F z, T* pmax, T* psum) {
  const int tasks = d.row_chunks * d.n;
  for (int task = threadIdx.x; task < tasks; task += blockDim.x) {
    const int t = task / d.n, i = task - t * d.n;
    const int j0 = t * d.row_chunk, j1 = min(d.m, j0 + d.row_chunk);
    T mx = -inf_v<T>();
    for (int j = j0; j < j1; ++j) {
      const T v = z(i, j);
      mx = v > mx ? v : mx;
    }
    T s = 0;
    if (dfinite(mx))
      for (int j = j0; j < j1; ++j) s += dexp(z(i, j) - mx);
    pmax[task] = mx;
    psum[task] = s;
  }
}

template <typename T, class F>
__device__ __forceinline__ void col_lse_partials(const Dims& d, F z, T* pmax, T* psum) {
  const int tasks = d.col_chunks * d.m;
  for (int task = threadIdx.x; task < tasks; task += blockDim.x) {
    const int t = task / d.m, j = task - t * d.m;
    const int i0 = t * d.col_chunk, i1 = min(d.n, i0 + d.col_chunk);
    T mx = -inf_v<T>();
    for (int i = i0; i < i1; ++i) {
      const T v = z(i, j);
      mx = v > mx ? v : mx;
    }
    T s = 0;
    if (dfinite(mx))
      for (int i = i0; i < i1; ++i) s += dexp(z(i, j) - mx);
    pmax[task] = mx;
    psum[task] = s;
  }
}

// LSE over all chunks; -inf when every term is -inf (no NaN from -inf - -inf).
template <typename T>
__device__ __forceinline__ T lse_combine(const T* pmax, const T* psum, int S, int stride, int idx) {
  T mx = pmax[idx];
  for (int t = 1; t < S; ++t) {
    const T v = pmax[t * stride + idx];
    mx = v > mx ? v : mx;
  }
  if (!dfinite(mx)) return mx;
  T s = 0;
  for (int t = 0; t < S; ++t) s += psum[t * stride + idx] * dexp(pmax[t * stride + idx] - mx);
  return mx + dlog(s);
}

// ---- sources of K / Cr values ----
// Original cost C (n, ld), in shared or global memory.
template <typename T>
struct CostRef {
  const T* p;
  int ld;
  __device__ __forceinline__ T operator()(int i, int j) const { return p[i * ld + j]; }
};

// A buffer (n, ld) holding K = exp(-Cr/eps) in the kernel domain, Cr in the log domain.
template <typename T>
struct BufKS {
  const T* buf;
  int ld;
  __device__ __forceinline__ T k(int i, int j) const { return buf[i * ld + j]; }
  __device__ __forceinline__ T cr(int i, int j) const { return buf[i * ld + j]; }
};

struct SolveOut {
  double dist;
  int iters;
  bool conv;
};

// alpha, beta and buf = Cr. Returns max(Cr) to every thread.
template <typename T>
__device__ __forceinline__ T reduce_cost(const Dims& d, const CostRef<T>& cost, T* buf, Core<T>& core) {
  const int nm = d.n * d.m, tid = threadIdx.x, nt = blockDim.x;
  for (int idx = tid; idx < nm; idx += nt) {  // coalesced copy first; the strided reductions then read buf
    const int i = idx / d.m, j = idx - i * d.m;
    buf[i * d.ld + j] = cost(i, j);
  }
  __syncthreads();
  auto src = [&](int i, int j) -> T { return buf[i * d.ld + j]; };
  row_partials<T, MinOp>(d, src, core.part);
  __syncthreads();
  for (int i = tid; i < d.n; i += nt) core.alpha[i] = combine<T, MinOp>(core.part, d.row_chunks, d.n, i);
  __syncthreads();
  col_partials<T, MinOp>(d, [&](int i, int j) { return src(i, j) - core.alpha[i]; }, core.part);
  __syncthreads();
  for (int j = tid; j < d.m; j += nt) core.beta[j] = combine<T, MinOp>(core.part, d.col_chunks, d.m, j);
  __syncthreads();
  T mx = 0;
  for (int idx = tid; idx < nm; idx += nt) {
    const int i = idx / d.m, j = idx - i * d.m;
    const T cr = (src(i, j) - core.alpha[i]) - core.beta[j];
    buf[i * d.ld + j] = cr;
    mx = cr > mx ? cr : mx;
  }
  return block_max(mx, core.red);  // its barriers also publish buf
}

// buf = Cr again (after the kernel domain overwrote it with K), from the original cost.
template <typename T>
__device__ __forceinline__ void refill_cr(const Dims& d, const CostRef<T>& cost, T* buf, const Core<T>& core) {
  const int nm = d.n * d.m;
  for (int idx = threadIdx.x; idx < nm; idx += blockDim.x) {
    const int i = idx / d.m, j = idx - i * d.m;
    buf[i * d.ld + j] = (cost(i, j) - core.alpha[i]) - core.beta[j];
  }
}

// u = a / (K v); v = b / (K^T u); stop when sum_i |u_i (K v)_i - a_i| <= tol.
template <typename T, class KS>
__device__ __forceinline__ void kernel_domain(const Dims& d, const KS& ks, Core<T>& core, int max_iter,
                                              T tol, SolveOut& result) {
  const int tid = threadIdx.x, nt = blockDim.x;
  for (int i = tid; i < d.n; i += nt) core.u[i] = T(1);
  for (int j = tid; j < d.m; j += nt) core.v[j] = T(1);
  __syncthreads();
  row_partials<T, SumOp>(d, [&](int i, int j) { return ks.k(i, j) * core.v[j]; }, core.part);
  __syncthreads();
  for (int i = tid; i < d.n; i += nt) core.kv[i] = combine<T, SumOp>(core.part, d.row_chunks, d.n, i);
  result.iters = 0;
  result.conv = false;
  for (int it = 0; it < max_iter; ++it) {
    // Row i is always handled by the same thread, so kv[i] / u[i] need no barrier of their own.
    for (int i = tid; i < d.n; i += nt) core.u[i] = core.wa[i] > T(0) ? core.wa[i] / core.kv[i] : T(0);
    __syncthreads();
    col_partials<T, SumOp>(d, [&](int i, int j) { return ks.k(i, j) * core.u[i]; }, core.part);
    __syncthreads();
    for (int j = tid; j < d.m; j += nt) {
      const T ktu = combine<T, SumOp>(core.part, d.col_chunks, d.m, j);
      core.v[j] = core.wb[j] > T(0) ? core.wb[j] / ktu : T(0);
    }
    __syncthreads();
    row_partials<T, SumOp>(d, [&](int i, int j) { return ks.k(i, j) * core.v[j]; }, core.part);
    __syncthreads();
    T e = 0;
    for (int i = tid; i < d.n; i += nt) {
      const T kv = combine<T, SumOp>(core.part, d.row_chunks, d.n, i);
      core.kv[i] = kv;
      e += dabs(core.u[i] * kv - core.wa[i]);
    }
    const T err = block_sum(e, core.red);  // same value in every thread: uniform exit
    ++result.iters;
    if (err <= tol) {
      result.conv = true;
      break;
    }
  }
}

// Register-resident K for the common small case: blockDim.x == kRegThreads, n, m <= kRegDim.
constexpr int kRegThreads = 128;
constexpr int kRegDim = 64;

// Same iteration as kernel_domain, with K read once from buf (n, ld) into registers: thread
// t = 8 ty + tx holds K[ty + 16 r][tx + 8 c] (r < 4, c < 8; 0 outside n x m). K v: xor-shuffles
// over the 8 lanes sharing ty (every lane gets the 4 row sums). K^T u: reduce-scatter over the 4
// ty of a warp (lane bits 4, 3), then the 4 warps through shared memory (core.part as 4 x 64).
// On exit core.u, core.v hold u, v (as kernel_domain leaves them).
template <typename T>
__device__ __forceinline__ void kernel_domain_reg(const Dims& d, const T* buf, Core<T>& core, int max_iter,
                                                  T tol, SolveOut& result) {
  const int t = threadIdx.x, tx = t & 7, ty = t >> 3, w = t >> 5;
  const bool b4 = (t >> 4) & 1, b3 = (t >> 3) & 1;
  T* colbuf = core.part;  // (4, 64): per-warp column sums; part and part2 are contiguous, 2 part_len >= 256
  T kr[4][8], vr[8], ur[4], kvr[4], ar[4];
#pragma unroll
  for (int q = 0; q < 4; ++q) {
    const int i = ty + 16 * q;
    ar[q] = i < d.n ? core.wa[i] : T(0);
    ur[q] = T(1);
#pragma unroll
    for (int c = 0; c < 8; ++c) {
      const int j = tx + 8 * c;
      kr[q][c] = (i < d.n && j < d.m) ? buf[i * d.ld + j] : T(0);
    }
  }
#pragma unroll
  for (int c = 0; c < 8; ++c) vr[c] = tx + 8 * c < d.m ? T(1) : T(0);
  if (t < d.m) core.v[t] = T(1);  // v if max_iter == 0
  auto row_sums = [&]() {      // kvr = K v for this thread's 4 rows (bit-identical in the 8 lanes)
#pragma unroll
    for (int q = 0; q < 4; ++q) {
      T x = T(0);
#pragma unroll
      for (int c = 0; c < 8; ++c) x += kr[q][c] * vr[c];
      x += __shfl_xor_sync(0xffffffffu, x, 1);
      x += __shfl_xor_sync(0xffffffffu, x, 2);
      x += __shfl_xor_sync(0xffffffffu, x, 4);
      kvr[q] = x;
    }
  };
  row_sums();
  result.iters = 0;
  result.conv = false;
  for (int it = 0; it < max_iter; ++it) {
#pragma unroll
    for (int q = 0; q < 4; ++q) ur[q] = ar[q] > T(0) ? ar[q] / kvr[q] : T(0);
    T cp[8];
#pragma unroll
    for (int c = 0; c < 8; ++c) {
      T x = T(0);
#pragma unroll
      for (int q = 0; q < 4; ++q) x += kr[q][c] * ur[q];
      cp[c] = x;
    }
    // Reduce-scatter over lane bit 4 (keep c = 4 b4 + 0..3), then bit 3 (keep 4 b4 + 2 b3 + 0..1).
    T h[4], h2[2];
#pragma unroll
    for (int k = 0; k < 4; ++k) {
      const T send = b4 ? cp[k] : cp[k + 4];
      const T keep = b4 ? cp[k + 4] : cp[k];
      h[k] = keep + __shfl_xor_sync(0xffffffffu, send, 16);
    }
#pragma unroll
    for (int k = 0; k < 2; ++k) {
      const T send = b3 ? h[k] : h[k + 2];
      const T keep = b3 ? h[k + 2] : h[k];
      h2[k] = keep + __shfl_xor_sync(0xffffffffu, send, 8);
    }
    const int cbase = 4 * int(b4) + 2 * int(b3);
#pragma unroll
    for (int k = 0; k < 2; ++k) colbuf[w * kRegDim + tx + 8 * (cbase + k)] = h2[k];
    __syncthreads();
    if (t < d.m) {
      const T ktu = (colbuf[t] + colbuf[kRegDim + t]) + (colbuf[2 * kRegDim + t] + colbuf[3 * kRegDim + t]);
      core.v[t] = core.wb[t] > T(0) ? core.wb[t] / ktu : T(0);
    }
    __syncthreads();
#pragma unroll
    for (int c = 0; c < 8; ++c) {
      const int j = tx + 8 * c;
      vr[c] = j < d.m ? core.v[j] : T(0);
    }
    row_sums();
    T e = T(0);
    if (tx == 0) {  // each row counted once
#pragma unroll
      for (int q = 0; q < 4; ++q)
        if (ty + 16 * q < d.n) e += dabs(ur[q] * kvr[q] - ar[q]);
    }
    const T err = block_sum(e, core.red);  // its barriers also order colbuf / core.v reuse
    ++result.iters;
    if (err <= tol) {
      result.conv = true;
      break;
    }
  }
  if (tx == 0) {
#pragma unroll
    for (int q = 0; q < 4; ++q)
      if (ty + 16 * q < d.n) core.u[ty + 16 * q] = ur[q];
  }
  __syncthreads();  // core.u is read next by other threads
}

// f = eps log a - eps LSE_j((g - Cr)/eps); g likewise; stop on sum_i |exp(LSE_j((f+g-Cr)/eps)) - a_i|.
template <typename T, class KS>
__device__ __forceinline__ void log_domain(const Dims& d, const KS& ks, Core<T>& core, T eps, int max_iter,
                                           T tol, SolveOut& result) {
  const int tid = threadIdx.x, nt = blockDim.x;
  const T inv_eps = T(1) / eps, ninf = -inf_v<T>();
  for (int i = tid; i < d.n; i += nt) core.u[i] = T(0);
  for (int j = tid; j < d.m; j += nt) core.v[j] = T(0);
  __syncthreads();
  row_lse_partials(d, [&](int i, int j) { return (core.v[j] - ks.cr(i, j)) * inv_eps; }, core.part, core.part2);
  __syncthreads();
  for (int i = tid; i < d.n; i += nt) core.kv[i] = lse_combine(core.part, core.part2, d.row_chunks, d.n, i);
  result.iters = 0;
  result.conv = false;
  for (int it = 0; it < max_iter; ++it) {
    for (int i = tid; i < d.n; i += nt)
      core.u[i] = core.wa[i] > T(0) ? eps * dlog(core.wa[i]) - eps * core.kv[i] : ninf;
    __syncthreads();
    col_lse_partials(d, [&](int i, int j) { return (core.u[i] - ks.cr(i, j)) * inv_eps; }, core.part, core.part2);
    __syncthreads();
    for (int j = tid; j < d.m; j += nt)
      core.v[j] = core.wb[j] > T(0) ? eps * dlog(core.wb[j]) - eps * lse_combine(core.part, core.part2, d.col_chunks, d.m, j) : ninf;
    __syncthreads();
    row_lse_partials(d, [&](int i, int j) { return (core.v[j] - ks.cr(i, j)) * inv_eps; }, core.part, core.part2);
    __syncthreads();
    T e = 0;
    for (int i = tid; i < d.n; i += nt) {
      const T R = lse_combine(core.part, core.part2, d.row_chunks, d.n, i);
      core.kv[i] = R;
      e += dabs(dexp(core.u[i] * inv_eps + R) - core.wa[i]);  // f = -inf, R finite: exp(-inf) = 0
    }
    const T err = block_sum(e, core.red);
    ++result.iters;
    if (err <= tol) {
      result.conv = true;
      break;
    }
  }
}

// Solves one problem: marginals in core.wa / core.wb, cost through `cost`, in buf (n, d.ld): Cr,
// then K in the kernel domain. Writes plan (n, m) / f (n) / g (m) when non-null (plan may be buf
// itself when d.ld == m: each slot is read before it is written).
// REG: use kernel_domain_reg when the block and the problem fit it.
template <typename T, bool REG>
__device__ __forceinline__ SolveOut solve_problem(const Dims& d, const CostRef<T>& cost, T* buf, Core<T>& core,
                                                  T eps, int max_iter, T tol, int mode, T* plan, T* f_out,
                                                  T* g_out) {
  const int tid = threadIdx.x, nt = blockDim.x;
  const BufKS<T> ks{buf, d.ld};
  SolveOut result;
  result.dist = 0;
  result.iters = 0;
  result.conv = false;
  const T max_cr = reduce_cost<T>(d, cost, buf, core);
  bool use_log = mode == int(SinkhornMode::Log) ||
                 (mode == int(SinkhornMode::Auto) && max_cr / eps > T(kLogDomainThreshold));
  if (!use_log) {
    const int nm = d.n * d.m;
    for (int idx = tid; idx < nm; idx += nt) {
      const int i = idx / d.m, j = idx - i * d.m;
      buf[i * d.ld + j] = dexp(-buf[i * d.ld + j] / eps);
    }
    __syncthreads();
    if constexpr (REG) {
      if (blockDim.x == kRegThreads && d.n <= kRegDim && d.m <= kRegDim)
        kernel_domain_reg(d, static_cast<const T*>(buf), core, max_iter, tol, result);
      else
        kernel_domain(d, ks, core, max_iter, tol, result);
    } else {
      kernel_domain(d, ks, core, max_iter, tol, result);
    }
    if (mode == int(SinkhornMode::Auto)) {
      // A positive weight needs a finite, positive scaling; else rerun in the log domain.
      int bad = 0;
      for (int i = tid; i < d.n; i += nt)
        if (core.wa[i] > T(0) && !(dfinite(core.u[i]) && core.u[i] > T(0))) bad = 1;
      for (int j = tid; j < d.m; j += nt)
        if (core.wb[j] > T(0) && !(dfinite(core.v[j]) && core.v[j] > T(0))) bad = 1;
      if (__syncthreads_or(bad)) {
        use_log = true;
        refill_cr(d, cost, buf, core);
        __syncthreads();
      }
    }
  }
  if (use_log) log_domain(d, ks, core, eps, max_iter, tol, result);
  __syncthreads();
  // Outputs: plan = u K v (kernel) or exp((f + g - Cr)/eps) (log); distance = <plan, C>.
  const T inv_eps = T(1) / eps;
  const int nm = d.n * d.m;
  double acc = 0;
  for (int idx = tid; idx < nm; idx += nt) {
    const int i = idx / d.m, j = idx - i * d.m;
    const T p = use_log ? dexp((core.u[i] + core.v[j] - ks.cr(i, j)) * inv_eps) : core.u[i] * ks.k(i, j) * core.v[j];
    acc += double(p) * double(cost(i, j));
    if (plan) plan[idx] = p;
  }
  if (f_out)
    for (int i = tid; i < d.n; i += nt) f_out[i] = use_log ? core.u[i] : eps * dlog(core.u[i]);  // of Cr
  if (g_out)
    for (int j = tid; j < d.m; j += nt) g_out[j] = use_log ? core.v[j] : eps * dlog(core.v[j]);
  result.dist = block_sum(acc, core.red);
  return result;
}

}  // namespace cuda
}  // namespace fastface
