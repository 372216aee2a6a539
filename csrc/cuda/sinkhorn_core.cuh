// One Sinkhorn problem solved by one thread block, the whole loop on-chip; used by sinkhorn.cu
// and emd_pairs.cu. Semantics: fastface/reference/sinkhorn.py (reduced cost Cr = C - alpha_i -
// beta_j, kernel or log domain, auto switch to the log domain, per-problem stop on the L1
// row-marginal error). Every function here is block-wide: all threads call it, uniformly.
#pragma once
#include "common.cuh"

namespace fastface {
namespace cuda {

// Work split of a block over an (n, m) problem. Row reductions (over j) run as sr chunks of rch
// columns per row, task = t * n + i; column reductions as sc chunks of cch rows, task = t * m + j.
// Consecutive threads take consecutive rows (columns): with an odd row stride ld the shared
// accesses of a warp are conflict-free both ways.
struct Dims {
  int n, m, ld;
  int sr, rch;
  int sc, cch;
  int pl;  // length of each partial buffer: max(sr * n, sc * m, threads)
};

__host__ __device__ inline Dims make_dims(int n, int m, int ld, int threads) {
  Dims d;
  d.n = n;
  d.m = m;
  d.ld = ld;
  int s = threads / n;
  s = s > m ? m : s;
  s = s < 1 ? 1 : s;
  d.rch = (m + s - 1) / s;
  d.sr = (m + d.rch - 1) / d.rch;  // no empty chunk
  s = threads / m;
  s = s > n ? n : s;
  s = s < 1 ? 1 : s;
  d.cch = (n + s - 1) / s;
  d.sc = (n + d.cch - 1) / d.cch;
  const int a = d.sr * n, b = d.sc * m;
  d.pl = a > b ? a : b;
  d.pl = d.pl > threads ? d.pl : threads;
  return d;
}

// Elements of the solver's shared vectors: wa, wb, alpha, beta, u, v, kv, pm, ps.
__host__ __device__ inline size_t core_vec_elems(const Dims& d) {
  return size_t(4) * d.n + size_t(3) * d.m + size_t(2) * d.pl;
}

template <typename T>
struct Core {
  T *wa, *wb;       // (n), (m) marginals
  T *alpha, *beta;  // (n), (m) row minima of C, column minima of C - alpha
  T *u, *v;         // (n), (m) scalings (kernel domain) or potentials f, g (log domain)
  T* kv;            // (n) K v (kernel) or row log-sum-exp (log)
  T *pm, *ps;       // (pl) partial reductions (LSE: chunk maxima, chunk sums); contiguous
  double* red;      // (32) block reductions
};

template <typename T>
__device__ __forceinline__ Core<T> carve_core(T* p, const Dims& d, double* red) {
  Core<T> s;
  const int pl = d.pl;
  s.wa = p; p += d.n;
  s.wb = p; p += d.m;
  s.alpha = p; p += d.n;
  s.beta = p; p += d.m;
  s.u = p; p += d.n;
  s.v = p; p += d.m;
  s.kv = p; p += d.n;
  s.pm = p; p += pl;
  s.ps = p;
  s.red = red;
  return s;
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
  const int tasks = d.sr * d.n;
  for (int task = threadIdx.x; task < tasks; task += blockDim.x) {
    const int t = task / d.n, i = task - t * d.n;
    const int j0 = t * d.rch, j1 = min(d.m, j0 + d.rch);
    T acc = Op::template init<T>();
    for (int j = j0; j < j1; ++j) acc = Op::apply(acc, f(i, j));
    part[task] = acc;
  }
}

// part[t * m + j] = Op over the rows i of chunk t of f(i, j).
template <typename T, class Op, class F>
__device__ __forceinline__ void col_partials(const Dims& d, F f, T* part) {
  const int tasks = d.sc * d.m;
  for (int task = threadIdx.x; task < tasks; task += blockDim.x) {
    const int t = task / d.m, j = task - t * d.m;
    const int i0 = t * d.cch, i1 = min(d.n, i0 + d.cch);
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

// Log-sum-exp partials: pm = chunk max of z, ps = sum exp(z - pm) (0 when pm is not finite).
template <typename T, class F>
__device__ __forceinline__ void row_lse_partials(const Dims& d, F z, T* pm, T* ps) {
  const int tasks = d.sr * d.n;
  for (int task = threadIdx.x; task < tasks; task += blockDim.x) {
    const int t = task / d.n, i = task - t * d.n;
    const int j0 = t * d.rch, j1 = min(d.m, j0 + d.rch);
    T mx = -inf_v<T>();
    for (int j = j0; j < j1; ++j) {
      const T v = z(i, j);
      mx = v > mx ? v : mx;
    }
    T s = 0;
    if (dfinite(mx))
      for (int j = j0; j < j1; ++j) s += dexp(z(i, j) - mx);
    pm[task] = mx;
    ps[task] = s;
  }
}

template <typename T, class F>
__device__ __forceinline__ void col_lse_partials(const Dims& d, F z, T* pm, T* ps) {
  const int tasks = d.sc * d.m;
  for (int task = threadIdx.x; task < tasks; task += blockDim.x) {
    const int t = task / d.m, j = task - t * d.m;
    const int i0 = t * d.cch, i1 = min(d.n, i0 + d.cch);
    T mx = -inf_v<T>();
    for (int i = i0; i < i1; ++i) {
      const T v = z(i, j);
      mx = v > mx ? v : mx;
    }
    T s = 0;
    if (dfinite(mx))
      for (int i = i0; i < i1; ++i) s += dexp(z(i, j) - mx);
    pm[task] = mx;
    ps[task] = s;
  }
}

// LSE over all chunks; -inf when every term is -inf (no NaN from -inf - -inf).
template <typename T>
__device__ __forceinline__ T lse_combine(const T* pm, const T* ps, int S, int stride, int idx) {
  T mx = pm[idx];
  for (int t = 1; t < S; ++t) {
    const T v = pm[t * stride + idx];
    mx = v > mx ? v : mx;
  }
  if (!dfinite(mx)) return mx;
  T s = 0;
  for (int t = 0; t < S; ++t) s += ps[t * stride + idx] * dexp(pm[t * stride + idx] - mx);
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

// No buffer: Cr and K recomputed from the cost each time (problems too large for shared memory).
template <typename T>
struct LiveKS {
  const T* C;
  int ldc;
  const T* alpha;
  const T* beta;
  T eps;
  __device__ __forceinline__ T cr(int i, int j) const { return (C[i * ldc + j] - alpha[i]) - beta[j]; }
  __device__ __forceinline__ T k(int i, int j) const { return dexp(-cr(i, j) / eps); }
};

struct SolveOut {
  double dist;
  int iters;
  bool conv;
};

// alpha, beta; with FILL, buf = Cr. Returns max(Cr) to every thread.
template <typename T, bool FILL>
__device__ __forceinline__ T reduce_cost(const Dims& d, const CostRef<T>& cost, T* buf, Core<T>& s) {
  const int nm = d.n * d.m, tid = threadIdx.x, nt = blockDim.x;
  if constexpr (FILL) {  // coalesced copy first; the strided reductions then read the buffer
    for (int idx = tid; idx < nm; idx += nt) {
      const int i = idx / d.m, j = idx - i * d.m;
      buf[i * d.ld + j] = cost(i, j);
    }
    __syncthreads();
  }
  auto src = [&](int i, int j) -> T {
    if constexpr (FILL) return buf[i * d.ld + j];
    else return cost(i, j);
  };
  row_partials<T, MinOp>(d, src, s.pm);
  __syncthreads();
  for (int i = tid; i < d.n; i += nt) s.alpha[i] = combine<T, MinOp>(s.pm, d.sr, d.n, i);
  __syncthreads();
  col_partials<T, MinOp>(d, [&](int i, int j) { return src(i, j) - s.alpha[i]; }, s.pm);
  __syncthreads();
  for (int j = tid; j < d.m; j += nt) s.beta[j] = combine<T, MinOp>(s.pm, d.sc, d.m, j);
  __syncthreads();
  T mx = 0;
  for (int idx = tid; idx < nm; idx += nt) {
    const int i = idx / d.m, j = idx - i * d.m;
    const T cr = (src(i, j) - s.alpha[i]) - s.beta[j];
    if constexpr (FILL) buf[i * d.ld + j] = cr;
    mx = cr > mx ? cr : mx;
  }
  return block_max(mx, s.red);  // its barriers also publish buf
}

// buf = Cr again (after the kernel domain overwrote it with K), from the original cost.
template <typename T>
__device__ __forceinline__ void refill_cr(const Dims& d, const CostRef<T>& cost, T* buf, const Core<T>& s) {
  const int nm = d.n * d.m;
  for (int idx = threadIdx.x; idx < nm; idx += blockDim.x) {
    const int i = idx / d.m, j = idx - i * d.m;
    buf[i * d.ld + j] = (cost(i, j) - s.alpha[i]) - s.beta[j];
  }
}

// u = a / (K v); v = b / (K^T u); stop when sum_i |u_i (K v)_i - a_i| <= tol.
template <typename T, class KS>
__device__ __forceinline__ void kernel_domain(const Dims& d, const KS& ks, Core<T>& s, int max_iter,
                                              T tol, SolveOut& r) {
  const int tid = threadIdx.x, nt = blockDim.x;
  for (int i = tid; i < d.n; i += nt) s.u[i] = T(1);
  for (int j = tid; j < d.m; j += nt) s.v[j] = T(1);
  __syncthreads();
  row_partials<T, SumOp>(d, [&](int i, int j) { return ks.k(i, j) * s.v[j]; }, s.pm);
  __syncthreads();
  for (int i = tid; i < d.n; i += nt) s.kv[i] = combine<T, SumOp>(s.pm, d.sr, d.n, i);
  r.iters = 0;
  r.conv = false;
  for (int it = 0; it < max_iter; ++it) {
    // Row i is always handled by the same thread, so kv[i] / u[i] need no barrier of their own.
    for (int i = tid; i < d.n; i += nt) s.u[i] = s.wa[i] > T(0) ? s.wa[i] / s.kv[i] : T(0);
    __syncthreads();
    col_partials<T, SumOp>(d, [&](int i, int j) { return ks.k(i, j) * s.u[i]; }, s.pm);
    __syncthreads();
    for (int j = tid; j < d.m; j += nt) {
      const T ktu = combine<T, SumOp>(s.pm, d.sc, d.m, j);
      s.v[j] = s.wb[j] > T(0) ? s.wb[j] / ktu : T(0);
    }
    __syncthreads();
    row_partials<T, SumOp>(d, [&](int i, int j) { return ks.k(i, j) * s.v[j]; }, s.pm);
    __syncthreads();
    T e = 0;
    for (int i = tid; i < d.n; i += nt) {
      const T kv = combine<T, SumOp>(s.pm, d.sr, d.n, i);
      s.kv[i] = kv;
      e += dabs(s.u[i] * kv - s.wa[i]);
    }
    const T err = block_sum(e, s.red);  // same value in every thread: uniform exit
    ++r.iters;
    if (err <= tol) {
      r.conv = true;
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
// ty of a warp (lane bits 4, 3), then the 4 warps through shared memory (s.pm as 4 x 64).
// On exit s.u, s.v hold u, v (as kernel_domain leaves them).
template <typename T>
__device__ __forceinline__ void kernel_domain_reg(const Dims& d, const T* buf, Core<T>& s, int max_iter,
                                                  T tol, SolveOut& r) {
  const int t = threadIdx.x, tx = t & 7, ty = t >> 3, w = t >> 5;
  const bool b4 = (t >> 4) & 1, b3 = (t >> 3) & 1;
  T* colbuf = s.pm;  // (4, 64): per-warp column sums; pm and ps are contiguous, 2 pl >= 256
  T kr[4][8], vr[8], ur[4], kvr[4], ar[4];
#pragma unroll
  for (int q = 0; q < 4; ++q) {
    const int i = ty + 16 * q;
    ar[q] = i < d.n ? s.wa[i] : T(0);
    ur[q] = T(1);
#pragma unroll
    for (int c = 0; c < 8; ++c) {
      const int j = tx + 8 * c;
      kr[q][c] = (i < d.n && j < d.m) ? buf[i * d.ld + j] : T(0);
    }
  }
#pragma unroll
  for (int c = 0; c < 8; ++c) vr[c] = tx + 8 * c < d.m ? T(1) : T(0);
  if (t < d.m) s.v[t] = T(1);  // v if max_iter == 0
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
  r.iters = 0;
  r.conv = false;
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
      s.v[t] = s.wb[t] > T(0) ? s.wb[t] / ktu : T(0);
    }
    __syncthreads();
#pragma unroll
    for (int c = 0; c < 8; ++c) {
      const int j = tx + 8 * c;
      vr[c] = j < d.m ? s.v[j] : T(0);
    }
    row_sums();
    T e = T(0);
    if (tx == 0) {  // each row counted once
#pragma unroll
      for (int q = 0; q < 4; ++q)
        if (ty + 16 * q < d.n) e += dabs(ur[q] * kvr[q] - ar[q]);
    }
    const T err = block_sum(e, s.red);  // its barriers also order colbuf / s.v reuse
    ++r.iters;
    if (err <= tol) {
      r.conv = true;
      break;
    }
  }
  if (tx == 0) {
#pragma unroll
    for (int q = 0; q < 4; ++q)
      if (ty + 16 * q < d.n) s.u[ty + 16 * q] = ur[q];
  }
  __syncthreads();  // s.u is read next by other threads
}

// f = eps log a - eps LSE_j((g - Cr)/eps); g likewise; stop on sum_i |exp(LSE_j((f+g-Cr)/eps)) - a_i|.
template <typename T, class KS>
__device__ __forceinline__ void log_domain(const Dims& d, const KS& ks, Core<T>& s, T eps, int max_iter,
                                           T tol, SolveOut& r) {
  const int tid = threadIdx.x, nt = blockDim.x;
  const T inv_eps = T(1) / eps, ninf = -inf_v<T>();
  for (int i = tid; i < d.n; i += nt) s.u[i] = T(0);
  for (int j = tid; j < d.m; j += nt) s.v[j] = T(0);
  __syncthreads();
  row_lse_partials(d, [&](int i, int j) { return (s.v[j] - ks.cr(i, j)) * inv_eps; }, s.pm, s.ps);
  __syncthreads();
  for (int i = tid; i < d.n; i += nt) s.kv[i] = lse_combine(s.pm, s.ps, d.sr, d.n, i);
  r.iters = 0;
  r.conv = false;
  for (int it = 0; it < max_iter; ++it) {
    for (int i = tid; i < d.n; i += nt)
      s.u[i] = s.wa[i] > T(0) ? eps * dlog(s.wa[i]) - eps * s.kv[i] : ninf;
    __syncthreads();
    col_lse_partials(d, [&](int i, int j) { return (s.u[i] - ks.cr(i, j)) * inv_eps; }, s.pm, s.ps);
    __syncthreads();
    for (int j = tid; j < d.m; j += nt)
      s.v[j] = s.wb[j] > T(0) ? eps * dlog(s.wb[j]) - eps * lse_combine(s.pm, s.ps, d.sc, d.m, j) : ninf;
    __syncthreads();
    row_lse_partials(d, [&](int i, int j) { return (s.v[j] - ks.cr(i, j)) * inv_eps; }, s.pm, s.ps);
    __syncthreads();
    T e = 0;
    for (int i = tid; i < d.n; i += nt) {
      const T R = lse_combine(s.pm, s.ps, d.sr, d.n, i);
      s.kv[i] = R;
      e += dabs(dexp(s.u[i] * inv_eps + R) - s.wa[i]);  // f = -inf, R finite: exp(-inf) = 0
    }
    const T err = block_sum(e, s.red);
    ++r.iters;
    if (err <= tol) {
      r.conv = true;
      break;
    }
  }
}

// Solves one problem: marginals in s.wa / s.wb, cost through `cost`. FILL: ks reads buf, which
// this fills (Cr, then K in the kernel domain). Writes plan (n, m) / f (n) / g (m) when non-null
// (plan may be the buffer itself when its ld == m: each slot is read before it is written).
// REG: use kernel_domain_reg when the block and the problem fit it (needs FILL).
template <typename T, bool FILL, bool REG, class KS>
__device__ __forceinline__ SolveOut solve(const Dims& d, const KS& ks, const CostRef<T>& cost, T* buf,
                                          Core<T>& s, T eps, int max_iter, T tol, int mode, T* plan,
                                          T* f_out, T* g_out) {
  const int tid = threadIdx.x, nt = blockDim.x;
  SolveOut r;
  r.dist = 0;
  r.iters = 0;
  r.conv = false;
  const T max_cr = reduce_cost<T, FILL>(d, cost, buf, s);
  bool use_log = mode == int(SinkhornMode::Log) ||
                 (mode == int(SinkhornMode::Auto) && max_cr / eps > T(kLogDomainThreshold));
  if (!use_log) {
    if constexpr (FILL) {
      const int nm = d.n * d.m;
      for (int idx = tid; idx < nm; idx += nt) {
        const int i = idx / d.m, j = idx - i * d.m;
        buf[i * d.ld + j] = dexp(-buf[i * d.ld + j] / eps);
      }
      __syncthreads();
    }
    if constexpr (FILL && REG) {
      if (blockDim.x == kRegThreads && d.n <= kRegDim && d.m <= kRegDim)
        kernel_domain_reg(d, static_cast<const T*>(buf), s, max_iter, tol, r);
      else
        kernel_domain(d, ks, s, max_iter, tol, r);
    } else {
      kernel_domain(d, ks, s, max_iter, tol, r);
    }
    if (mode == int(SinkhornMode::Auto)) {
      // A positive weight needs a finite, positive scaling; else rerun in the log domain.
      int bad = 0;
      for (int i = tid; i < d.n; i += nt)
        if (s.wa[i] > T(0) && !(dfinite(s.u[i]) && s.u[i] > T(0))) bad = 1;
      for (int j = tid; j < d.m; j += nt)
        if (s.wb[j] > T(0) && !(dfinite(s.v[j]) && s.v[j] > T(0))) bad = 1;
      if (__syncthreads_or(bad)) {
        use_log = true;
        if constexpr (FILL) {
          refill_cr(d, cost, buf, s);
          __syncthreads();
        }
      }
    }
  }
  if (use_log) log_domain(d, ks, s, eps, max_iter, tol, r);
  __syncthreads();
  // Outputs: plan = u K v (kernel) or exp((f + g - Cr)/eps) (log); distance = <plan, C>.
  const T inv_eps = T(1) / eps;
  const int nm = d.n * d.m;
  double acc = 0;
  for (int idx = tid; idx < nm; idx += nt) {
    const int i = idx / d.m, j = idx - i * d.m;
    const T p = use_log ? dexp((s.u[i] + s.v[j] - ks.cr(i, j)) * inv_eps) : s.u[i] * ks.k(i, j) * s.v[j];
    acc += double(p) * double(cost(i, j));
    if (plan) plan[idx] = p;
  }
  if (f_out)
    for (int i = tid; i < d.n; i += nt) f_out[i] = use_log ? s.u[i] : eps * dlog(s.u[i]);  // of Cr
  if (g_out)
    for (int j = tid; j < d.m; j += nt) g_out[j] = use_log ? s.v[j] : eps * dlog(s.v[j]);
  r.dist = block_sum(acc, s.red);
  return r;
}

}  // namespace cuda
}  // namespace fastface
