// Fused re-rank on the CPU: per (query, candidate) pair cost -> weights -> Sinkhorn -> distance,
// all in per-thread buffers (the (B, k, n, m) cost is never materialised).
#include <cmath>
#include <stdexcept>
#include <type_traits>
#include <vector>

#include "cosine_gemm.h"
#include "isa.h"
#include "parallel.h"
#include "sinkhorn_core.h"

namespace fastface {
namespace cpu {
namespace FASTFACE_ISA_NS {

namespace {

// w = s / sum(s) with s >= 0; all-zero s -> uniform, returns true (a fallback).
bool normalise(float* w, int64_t len) {
  double total = 0;
  for (int64_t t = 0; t < len; ++t) total += w[t];
  if (!(total > 0)) {
    for (int64_t t = 0; t < len; ++t) w[t] = 1.0f / float(len);
    return true;
  }
  for (int64_t t = 0; t < len; ++t) w[t] = float(w[t] / total);
  return false;
}

}  // namespace

// In: float, or the bits of float16 / bfloat16 (converted as they are read, float32 thereafter).
template <typename In>
static void emd_pairs_impl(const EmdPairsArgs& args, int n_threads) {
  const int64_t B = args.B, k = args.k, n = args.n, m = args.m, C = args.C;
  const In* x = static_cast<const In*>(args.x);
  const In* y = static_cast<const In*>(args.y);
  const float eps = float(args.eps), tol = float(args.tol);
  ParallelErrors errors;
#pragma omp parallel num_threads(n_threads)
  {
    // Per-thread buffers (no shared writes but one output slot per pair).
    gemm::PackedQuery query;
    gemm::CandidateWork work;
    simd::Buffer mean_acc, xfloat;
    SinkhornWorkspace<float> sws;
    std::vector<float> cost, wx, wy;
    std::vector<double> wy_acc;
    errors.run([&] {
      sws.reserve(n, m);
      cost.resize(n * m);
      wx.resize(n);
      wy.resize(m);
      wy_acc.resize(m);
    });
    int64_t last_b = -1;
    double x_mean_norm = 1.0;
    // One (query, candidate) pair per task; a thread packs a query once for its run of candidates.
#pragma omp for schedule(dynamic, 1)
    for (int64_t p = 0; p < B * k; ++p) {
      if (errors.failed()) continue;
      errors.run([&] {
        const int64_t qb = p / k;
        const In* X = x + qb * n * C;
        const In* Y = y + (args.idx ? args.idx[p] : p) * m * C;
        if (qb != last_b) {
          gemm::pack_query(X, n, C, query);
          if (args.weighting == Weighting::APC) {
            const float* Xf = reinterpret_cast<const float*>(X);
            if (!std::is_same<In, float>::value) {
              float* buf = xfloat.get(n * C);
              gemm::to_float(X, buf, n * C);
              Xf = buf;
            }
            x_mean_norm = gemm::mean_norm(Xf, n, C, query.ex, mean_acc);
          }
          last_b = qb;
        }
        gemm::cosines(query, Y, m, work, cost.data());  // cos_ij
        // Y as float32: the rows themselves, or their conversion cosines() made
        const float* Yf = std::is_same<In, float>::value ? reinterpret_cast<const float*>(Y) : work.yfloat.p;
        const std::vector<double>& xn = query.norm;
        const std::vector<double>& yn = work.norm;
        bool fell_back = false;
        if (args.weighting == Weighting::APC) {
          // <x_i / |x_i|, unit(mean y)> = sum_j |y_j| cos_ij / (m |mean y|), and symmetrically
          // (with the floored norms; in double, so rows near the float range stay finite).
          const double y_mean_norm = gemm::mean_norm(Yf, m, C, work.ex, mean_acc);
          std::fill(wy_acc.begin(), wy_acc.end(), 0.0);
          for (int64_t i = 0; i < n; ++i) {
            double s = 0;
            const double xi = xn[i];
            const float* ci = cost.data() + i * m;
#pragma omp simd reduction(+ : s)
            for (int64_t j = 0; j < m; ++j) {
              s += yn[j] * ci[j];
              wy_acc[j] += xi * ci[j];
            }
            wx[i] = std::max(0.0f, float(s / (double(m) * y_mean_norm)));
          }
          for (int64_t j = 0; j < m; ++j)
            wy[j] = std::max(0.0f, float(wy_acc[j] / (double(n) * x_mean_norm)));
        }
        for (int64_t t = 0; t < n * m; ++t) cost[t] = 1.0f - cost[t];
        if (args.weighting == Weighting::SC) {
          std::fill(wy.begin(), wy.end(), 0.0f);
          for (int64_t i = 0; i < n; ++i) {
            float s = 0;
            for (int64_t j = 0; j < m; ++j) {
              s += cost[i * m + j];
              wy[j] += cost[i * m + j];
            }
            wx[i] = std::max(0.0f, s);
          }
          for (int64_t j = 0; j < m; ++j) wy[j] = std::max(0.0f, wy[j]);
        }
        if (args.weighting == Weighting::Uniform) {
          std::fill(wx.begin(), wx.end(), 1.0f / float(n));
          std::fill(wy.begin(), wy.end(), 1.0f / float(m));
        } else {
          fell_back = normalise(wx.data(), n);
          fell_back = normalise(wy.data(), m) || fell_back;
        }
        SinkhornSolution res = solve_sinkhorn_problem<float>(
            cost.data(), wx.data(), wy.data(), n, m, eps, args.max_iter, tol, args.mode, sws,
            args.flows ? args.flows + p * n * m : nullptr, nullptr, nullptr);
        args.emd[p] = float(res.distance);
        args.n_iter[p] = res.n_iter;
        args.converged[p] = res.converged ? 1 : 0;
        if (args.fallback) args.fallback[p] = fell_back ? 1 : 0;
      });
    }
  }
  errors.rethrow_first();
}

void emd_pairs(const EmdPairsArgs& args, int n_threads) {
  if (args.B == 0 || args.k == 0) return;
  if (args.mode == SinkhornMode::Official) throw std::invalid_argument("emd_pairs: official mode is not fused");
  switch (args.in_dtype) {
    case DType::F32: return emd_pairs_impl<float>(args, n_threads);
    case DType::F16: return emd_pairs_impl<gemm::F16>(args, n_threads);
    case DType::BF16: return emd_pairs_impl<gemm::Bf16>(args, n_threads);
    default: throw std::invalid_argument("emd_pairs (cpu): inputs must be float32, float16 or bfloat16");
  }
}

}  // namespace FASTFACE_ISA_NS
}  // namespace cpu
}  // namespace fastface
