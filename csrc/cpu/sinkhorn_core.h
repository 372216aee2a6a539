// One Sinkhorn problem on the CPU (per-thread workspace); used by sinkhorn.cpp and emd_pairs.cpp.
// Semantics: fastface/reference/sinkhorn.py.
#pragma once
#include "isa.h"  // FASTFACE_ISA_NS
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <type_traits>
#include <vector>

#include "../common/emd_problem.h"
#include "sinkhorn_f32.h"

namespace fastface {
namespace cpu {
namespace FASTFACE_ISA_NS {

template <typename T>
struct SinkhornWorkspace {
  std::vector<T> K, u, v, Kv, KTu, alpha, beta, row_lse;
  sinkhorn_f32::Buffers fast;  // the vectorised float32 kernel domain (sinkhorn_f32.h)
  void reserve(int64_t n, int64_t m) {
    K.resize(n * m); u.resize(n); v.resize(m); Kv.resize(n); KTu.resize(m);
    alpha.resize(n); beta.resize(m); row_lse.resize(n);
  }
};

struct SinkhornSolution {
  double distance = 0;
  int32_t n_iter = 0;
  bool converged = false;
};

// out_i = sum_j K_ij v_j, K (n, m) row-major.
template <typename T>
inline void matvec(const T* K, const T* v, T* out, int64_t n, int64_t m) {
  for (int64_t i = 0; i < n; ++i) {
    const T* row = K + i * m;
    T s = 0;
#pragma omp simd reduction(+ : s)
    for (int64_t j = 0; j < m; ++j) s += row[j] * v[j];
    out[i] = s;
  }
}

// out_j = sum_i u_i K_ij.
template <typename T>
inline void matvec_t(const T* K, const T* u, T* out, int64_t n, int64_t m) {
  std::fill(out, out + m, T(0));
  for (int64_t i = 0; i < n; ++i) {
    const T* row = K + i * m;
    const T ui = u[i];
#pragma omp simd
    for (int64_t j = 0; j < m; ++j) out[j] += ui * row[j];
  }
}

// Fills ws.K with the reduced cost Cr = C - alpha_i - beta_j; returns max(Cr).
template <typename T>
inline T reduce_cost(const T* C, int64_t n, int64_t m, SinkhornWorkspace<T>& ws) {
  T* Cr = ws.K.data();
  for (int64_t i = 0; i < n; ++i) {
    T mn = C[i * m];
    for (int64_t j = 1; j < m; ++j) mn = std::min(mn, C[i * m + j]);
    ws.alpha[i] = mn;
  }
  std::fill(ws.beta.begin(), ws.beta.end(), std::numeric_limits<T>::infinity());
  for (int64_t i = 0; i < n; ++i)
    for (int64_t j = 0; j < m; ++j) {
      Cr[i * m + j] = C[i * m + j] - ws.alpha[i];
      ws.beta[j] = std::min(ws.beta[j], Cr[i * m + j]);
    }
  T mx = 0;
  for (int64_t i = 0; i < n; ++i)
    for (int64_t j = 0; j < m; ++j) {
      Cr[i * m + j] -= ws.beta[j];
      mx = std::max(mx, Cr[i * m + j]);
    }
  return mx;
}

template <typename T>
inline bool kernel_domain(const T* a, const T* b, int64_t n, int64_t m, T eps, int max_iter,
                          T tol, SinkhornWorkspace<T>& ws, SinkhornSolution& res) {
  T* K = ws.K.data();  // holds Cr on entry
  const T inv_eps = T(1) / eps;
  for (int64_t t = 0; t < n * m; ++t) K[t] = std::exp(-K[t] * inv_eps);
  T *u = ws.u.data(), *v = ws.v.data(), *Kv = ws.Kv.data(), *KTu = ws.KTu.data();
  // u = v = 1 for every problem (the workspace holds the previous problem's scalings).
  std::fill(u, u + n, T(1));
  std::fill(v, v + m, T(1));
  matvec(K, v, Kv, n, m);
  res.n_iter = 0;
  res.converged = false;
  for (int it = 0; it < max_iter; ++it) {
    for (int64_t i = 0; i < n; ++i) u[i] = a[i] > 0 ? a[i] / Kv[i] : T(0);
    matvec_t(K, u, KTu, n, m);
    for (int64_t j = 0; j < m; ++j) v[j] = b[j] > 0 ? b[j] / KTu[j] : T(0);
    matvec(K, v, Kv, n, m);
    ++res.n_iter;
    T err = 0;
    for (int64_t i = 0; i < n; ++i) err += std::abs(u[i] * Kv[i] - a[i]);
    if (err <= tol) {
      res.converged = true;
      break;
    }
  }
  // Every positive weight needs a finite, positive scaling (else its potential is not finite).
  for (int64_t i = 0; i < n; ++i)
    if (a[i] > 0 && !(std::isfinite(u[i]) && u[i] > 0)) return false;
  for (int64_t j = 0; j < m; ++j)
    if (b[j] > 0 && !(std::isfinite(v[j]) && v[j] > 0)) return false;
  return true;
}

// Log-sum-exp of z[0..len) with stride; -inf when every term is -inf.
template <typename T>
inline T lse_strided(const T* z, int64_t len, int64_t stride) {
  T mx = -std::numeric_limits<T>::infinity();
  for (int64_t t = 0; t < len; ++t) mx = std::max(mx, z[t * stride]);
  if (!std::isfinite(mx)) return mx;
  T s = 0;
  for (int64_t t = 0; t < len; ++t) s += std::exp(z[t * stride] - mx);
  return mx + std::log(s);
}

template <typename T>
inline void log_domain(const T* Cr, const T* a, const T* b, int64_t n, int64_t m, T eps,
                       int max_iter, T tol, SinkhornWorkspace<T>& ws,
                       SinkhornSolution& res) {
  // ws.u / ws.v hold f / g, ws.row_lse the row log-sum-exps reused by the next f update.
  const T inv_eps = T(1) / eps;
  T *f = ws.u.data(), *g = ws.v.data(), *R = ws.row_lse.data();
  std::vector<T> z(std::max(n, m));
  std::fill(f, f + n, T(0));
  std::fill(g, g + m, T(0));
  auto row_lse = [&](int64_t i) {
    for (int64_t j = 0; j < m; ++j) z[j] = (g[j] - Cr[i * m + j]) * inv_eps;
    return lse_strided(z.data(), m, 1);
  };
  for (int64_t i = 0; i < n; ++i) R[i] = row_lse(i);
  res.n_iter = 0;
  res.converged = false;
  const T neg_inf = -std::numeric_limits<T>::infinity();
  for (int it = 0; it < max_iter; ++it) {
    for (int64_t i = 0; i < n; ++i) f[i] = a[i] > 0 ? eps * std::log(a[i]) - eps * R[i] : neg_inf;
    for (int64_t j = 0; j < m; ++j) {
      if (!(b[j] > 0)) { g[j] = neg_inf; continue; }
      for (int64_t i = 0; i < n; ++i) z[i] = (f[i] - Cr[i * m + j]) * inv_eps;
      g[j] = eps * std::log(b[j]) - eps * lse_strided(z.data(), n, 1);
    }
    for (int64_t i = 0; i < n; ++i) R[i] = row_lse(i);
    ++res.n_iter;
    T err = 0;
    for (int64_t i = 0; i < n; ++i) err += std::abs(std::exp(f[i] * inv_eps + R[i]) - a[i]);
    if (err <= tol) {
      res.converged = true;
      break;
    }
  }
}

// Solves one problem. C (n, m), a (n), b (m). Writes plan / f / g when non-null; f, g are the
// potentials of the reduced cost Cr = C - alpha_i - beta_j (Python adds alpha, beta).
template <typename T>
inline SinkhornSolution solve_sinkhorn_problem(const T* C, const T* a, const T* b, int64_t n,
                                               int64_t m, T eps, int max_iter, T tol,
                                               SinkhornMode mode, SinkhornWorkspace<T>& ws,
                                               T* plan, T* f_out, T* g_out) {
  SinkhornSolution res;
  if constexpr (std::is_same<T, float>::value) {
    if (mode != SinkhornMode::Log && n > 0 && m > 0) {
      if (sinkhorn_f32::solve(C, a, b, n, m, eps, max_iter, tol, mode, ws.fast, res.distance, res.n_iter,
                              res.converged, plan, f_out, g_out) == sinkhorn_f32::Status::Solved)
        return res;
      mode = SinkhornMode::Log;  // Auto mode, and the problem needs the log domain
    }
  }
  const T max_cr = reduce_cost(C, n, m, ws);
  bool use_log = mode == SinkhornMode::Log ||
                 (mode == SinkhornMode::Auto && max_cr / eps > T(kLogDomainThreshold));
  bool kernel_ok = false;
  if (!use_log) {
    kernel_ok = kernel_domain(a, b, n, m, eps, max_iter, tol, ws, res);
    if (!kernel_ok && mode == SinkhornMode::Auto) {
      use_log = true;
      reduce_cost(C, n, m, ws);  // K was overwritten by exp(-Cr/eps)
    }
  }
  const T inv_eps = T(1) / eps;
  double dist = 0;
  if (use_log) {
    // Keep Cr in a separate buffer: log_domain reads it every iteration.
    std::vector<T> Cr(ws.K.begin(), ws.K.begin() + n * m);
    log_domain(Cr.data(), a, b, n, m, eps, max_iter, tol, ws, res);
    const T *f = ws.u.data(), *g = ws.v.data();
    for (int64_t i = 0; i < n; ++i)
      for (int64_t j = 0; j < m; ++j) {
        const T p = std::exp((f[i] + g[j] - Cr[i * m + j]) * inv_eps);
        dist += double(p) * double(C[i * m + j]);
        if (plan) plan[i * m + j] = p;
      }
    if (f_out) for (int64_t i = 0; i < n; ++i) f_out[i] = f[i];  // reduced potentials (of Cr)
    if (g_out) for (int64_t j = 0; j < m; ++j) g_out[j] = g[j];
  } else {
    const T *K = ws.K.data(), *u = ws.u.data(), *v = ws.v.data();
    for (int64_t i = 0; i < n; ++i) {
      T s = 0;
      const T* Ci = C + i * m;
      const T* Ki = K + i * m;
#pragma omp simd reduction(+ : s)
      for (int64_t j = 0; j < m; ++j) s += Ki[j] * v[j] * Ci[j];
      dist += double(u[i]) * double(s);
      if (plan)
        for (int64_t j = 0; j < m; ++j) plan[i * m + j] = u[i] * K[i * m + j] * v[j];
    }
    if (f_out) for (int64_t i = 0; i < n; ++i) f_out[i] = eps * std::log(u[i]);  // of Cr
    if (g_out) for (int64_t j = 0; j < m; ++j) g_out[j] = eps * std::log(v[j]);
  }
  res.distance = dist;
  return res;
}

}  // namespace FASTFACE_ISA_NS
}  // namespace cpu
}  // namespace fastface
