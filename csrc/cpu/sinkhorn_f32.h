// Kernel-domain Sinkhorn of one float32 problem at FMA speed (used by sinkhorn_core.h).
//
// K = exp(-Cr / eps) is computed once, vectorised, and kept twice, K (n, mp) and K^T (m, np), rows
// padded with zeros to whole vectors (64 x 64: 2 x 16 KB, L1/L2 resident). Both mat-vecs then run
// as sums of scaled rows (K^T u over the rows of K, K v over the rows of K^T): vector FMAs into
// register accumulators, no horizontal sums. Semantics are those of kernel_domain in
// sinkhorn_core.h (fastface/reference/sinkhorn.py), including the early exit of each problem.
#pragma once
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>

#include "../common/emd_problem.h"
#include "simd.h"

namespace fastface {
namespace cpu {
namespace FASTFACE_ISA_NS {
namespace sinkhorn_f32 {

using simd::kLanes;
using simd::load;
using simd::store;
using simd::vf;

struct Buffers {
  simd::Buffer K, KT, u, v, Kv, KTu, a, b, beta;
};

// out[0, width) = sum_{r < rows} s[r] * M[r * ld + (0, width)]; width, ld multiples of kLanes.
inline void sum_scaled_rows(const float* __restrict M, int64_t rows, int64_t ld,
                            const float* __restrict s, float* __restrict out, int64_t width) {
  constexpr int kV = 4;  // vectors per column block; two row streams for independent FMA chains
  int64_t c0 = 0;
  for (; c0 + kV * kLanes <= width; c0 += kV * kLanes) {
    vf a[kV] = {}, b[kV] = {};
    int64_t r = 0;
    for (; r + 2 <= rows; r += 2) {
      const float* p = M + r * ld + c0;
      const float s0 = s[r], s1 = s[r + 1];
#pragma GCC unroll 4
      for (int v = 0; v < kV; ++v) {
        a[v] += s0 * load(p + v * kLanes);
        b[v] += s1 * load(p + ld + v * kLanes);
      }
    }
    if (r < rows)
#pragma GCC unroll 4
      for (int v = 0; v < kV; ++v) a[v] += s[r] * load(M + r * ld + c0 + v * kLanes);
#pragma GCC unroll 4
    for (int v = 0; v < kV; ++v) store(out + c0 + v * kLanes, a[v] + b[v]);
  }
  for (; c0 < width; c0 += kLanes) {
    vf a = vf{}, b = vf{};
    int64_t r = 0;
    for (; r + 2 <= rows; r += 2) {
      a += s[r] * load(M + r * ld + c0);
      b += s[r + 1] * load(M + (r + 1) * ld + c0);
    }
    if (r < rows) a += s[r] * load(M + r * ld + c0);
    store(out + c0, a + b);
  }
}

// dst[i] = w[i] > 0 ? w[i] / den[i] : 0 over whole vectors (padding has w = 0).
inline void scale_update(const float* w, const float* den, float* dst, int64_t len) {
  for (int64_t c = 0; c < len; c += kLanes) {
    const vf wv = load(w + c);
    store(dst + c, wv > 0.0f ? wv / load(den + c) : vf{});
  }
}

enum class Status { Solved, NeedLog };

// Solves C (n, m), a (n), b (m) in the kernel domain; NeedLog when mode is Auto and the problem
// needs the log domain (large reduced cost, or scalings that are not finite and positive).
// Writes plan / f / g (potentials of the reduced cost) when non-null.
inline Status solve(const float* C, const float* a, const float* b, int64_t n, int64_t m, float eps,
                    int max_iter, float tol, SinkhornMode mode, Buffers& buf, double& distance,
                    int32_t& n_iter, bool& converged, float* plan, float* f_out, float* g_out) {
  const int64_t np = simd::round_up(n, kLanes), mp = simd::round_up(m, kLanes);
  float* K = buf.K.get(n * mp);
  float* KT = buf.KT.get(m * np);
  float *u = buf.u.get(np), *v = buf.v.get(mp), *Kv = buf.Kv.get(np), *KTu = buf.KTu.get(mp);
  float *ap = buf.a.get(np), *bp = buf.b.get(mp), *beta = buf.beta.get(mp);
  const float inf = std::numeric_limits<float>::infinity();

  // Reduced cost Cr = C - alpha_i - beta_j (row minima, then column minima) in K; padding is +inf.
  for (int64_t j = 0; j < mp; ++j) beta[j] = inf;
  for (int64_t i = 0; i < n; ++i) {
    float* row = K + i * mp;
    std::memcpy(row, C + i * m, m * sizeof(float));
    for (int64_t j = m; j < mp; ++j) row[j] = inf;
    vf lo = simd::splat(inf);
    for (int64_t c = 0; c < mp; c += kLanes) lo = simd::vmin(lo, load(row + c));
    const float alpha = simd::hmin(lo);
    for (int64_t c = 0; c < mp; c += kLanes) {
      const vf r = load(row + c) - alpha;
      store(row + c, r);
      store(beta + c, simd::vmin(load(beta + c), r));
    }
  }
  for (int64_t j = m; j < mp; ++j) beta[j] = 0.0f;
  vf hi = vf{};
  for (int64_t i = 0; i < n; ++i) {
    float* row = K + i * mp;
    for (int64_t c = 0; c < mp; c += kLanes) {
      const vf r = load(row + c) - load(beta + c);
      store(row + c, r);
      hi = simd::vmax(hi, r < inf ? r : vf{});
    }
  }
  const float max_cr = simd::hmax(hi);
  if (mode == SinkhornMode::Auto && max_cr / eps > float(kLogDomainThreshold)) return Status::NeedLog;

  // K = exp(-Cr / eps) (padding: exp(-inf) = 0) and its transpose.
  const float neg_inv_eps = -1.0f / eps;
  for (int64_t i = 0; i < n; ++i)
    for (int64_t c = 0; c < mp; c += kLanes) store(K + i * mp + c, simd::exp(load(K + i * mp + c) * neg_inv_eps));
  for (int64_t j = 0; j < m; ++j) {
    float* col = KT + j * np;
    for (int64_t i = 0; i < n; ++i) col[i] = K[i * mp + j];
    for (int64_t i = n; i < np; ++i) col[i] = 0.0f;
  }
  for (int64_t i = 0; i < np; ++i) {
    ap[i] = i < n ? a[i] : 0.0f;
    u[i] = i < n ? 1.0f : 0.0f;
  }
  for (int64_t j = 0; j < mp; ++j) {
    bp[j] = j < m ? b[j] : 0.0f;
    v[j] = j < m ? 1.0f : 0.0f;
  }

  sum_scaled_rows(KT, m, np, v, Kv, np);  // K v
  n_iter = 0;
  converged = false;
  for (int it = 0; it < max_iter; ++it) {
    scale_update(ap, Kv, u, np);
    sum_scaled_rows(K, n, mp, u, KTu, mp);  // K^T u
    scale_update(bp, KTu, v, mp);
    sum_scaled_rows(KT, m, np, v, Kv, np);  // K v
    ++n_iter;
    vf err = vf{};
    for (int64_t c = 0; c < np; c += kLanes) err += simd::vabs(load(u + c) * load(Kv + c) - load(ap + c));
    if (simd::hsum(err) <= tol) {
      converged = true;
      break;
    }
  }
  // Every positive weight needs a finite, positive scaling (else its potential is not finite).
  bool ok = true;
  for (int64_t i = 0; i < n; ++i) ok = ok && (!(a[i] > 0) || (std::isfinite(u[i]) && u[i] > 0));
  for (int64_t j = 0; j < m; ++j) ok = ok && (!(b[j] > 0) || (std::isfinite(v[j]) && v[j] > 0));
  if (!ok && mode == SinkhornMode::Auto) return Status::NeedLog;

  double dist = 0;
  const int64_t m_full = m / kLanes * kLanes;
  for (int64_t i = 0; i < n; ++i) {
    const float* Ki = K + i * mp;
    const float* Ci = C + i * m;
    vf acc = vf{};
    for (int64_t c = 0; c < m_full; c += kLanes) acc += load(Ki + c) * load(v + c) * load(Ci + c);
    float s = simd::hsum(acc);
    for (int64_t j = m_full; j < m; ++j) s += Ki[j] * v[j] * Ci[j];
    dist += double(u[i]) * double(s);
    if (plan)
      for (int64_t j = 0; j < m; ++j) plan[i * m + j] = u[i] * Ki[j] * v[j];
  }
  if (f_out)
    for (int64_t i = 0; i < n; ++i) f_out[i] = eps * std::log(u[i]);  // of Cr
  if (g_out)
    for (int64_t j = 0; j < m; ++j) g_out[j] = eps * std::log(v[j]);
  distance = dist;
  return Status::Solved;
}

}  // namespace sinkhorn_f32
}  // namespace FASTFACE_ISA_NS
}  // namespace cpu
}  // namespace fastface
