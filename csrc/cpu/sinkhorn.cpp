// Batched Sinkhorn on the CPU: OpenMP over problems (over groups in Official mode).
#include <cmath>
#include <stdexcept>

#include "isa.h"
#include "parallel.h"
#include "sinkhorn_core.h"

namespace fastface {
namespace cpu {
namespace FASTFACE_ISA_NS {

// Official DeepFace-EMD numerics: the problems of a group iterate together and stop together.
template <typename T>
static void official_group(const SinkhornArgs& args, int64_t first, std::vector<T>& K,
                           std::vector<T>& r, std::vector<T>& c, std::vector<T>& r_prev,
                           std::vector<T>& tmp) {
  const int64_t G = args.group, n = args.n, m = args.m;
  const T* cost = static_cast<const T*>(args.cost) + first * n * m;
  const T* a = static_cast<const T*>(args.a) + first * n;
  const T* b = static_cast<const T*>(args.b) + first * m;
  const T eps = T(args.eps);
  K.resize(G * n * m);
  r.assign(G * n, T(1));
  c.assign(G * m, T(1));
  r_prev.resize(G * n);
  tmp.resize(std::max(n, m));
  for (int64_t t = 0; t < G * n * m; ++t) K[t] = std::exp(-cost[t] / eps);
  int32_t iters = 0;
  bool stopped = false;
  for (int it = 0; it < args.max_iter && !stopped; ++it) {
    r_prev = r;
    double delta = 0;
    for (int64_t q = 0; q < G; ++q) {
      const T* Kq = K.data() + q * n * m;
      T* rq = r.data() + q * n;
      T* cq = c.data() + q * m;
      matvec(Kq, cq, tmp.data(), n, m);
      for (int64_t i = 0; i < n; ++i) rq[i] = a[q * n + i] / tmp[i];
      matvec_t(Kq, rq, tmp.data(), n, m);
      for (int64_t j = 0; j < m; ++j) cq[j] = b[q * m + j] / tmp[j];
      for (int64_t i = 0; i < n; ++i) delta += std::abs(double(rq[i]) - double(r_prev[q * n + i]));
    }
    ++iters;
    stopped = delta / double(G * n) < args.tol;
  }
  for (int64_t q = 0; q < G; ++q) {
    const int64_t p = first + q;
    double mass_sim = 0;
    for (int64_t i = 0; i < n; ++i)
      for (int64_t j = 0; j < m; ++j) {
        const T pl = r[q * n + i] * K[(q * n + i) * m + j] * c[q * m + j];
        mass_sim += double(pl) * (1.0 - double(cost[(q * n + i) * m + j]));
        if (args.plan) static_cast<T*>(args.plan)[(p * n + i) * m + j] = pl;
      }
    static_cast<T*>(args.distance)[p] = T(1.0 - mass_sim);
    args.n_iter[p] = iters;
    args.converged[p] = stopped ? 1 : 0;
  }
}

template <typename T>
static void sinkhorn_impl(const SinkhornArgs& args, int n_threads) {
  const int64_t P = args.P, n = args.n, m = args.m;
  const T* cost = static_cast<const T*>(args.cost);
  const T* a = static_cast<const T*>(args.a);
  const T* b = static_cast<const T*>(args.b);
  T* plan = static_cast<T*>(args.plan);
  T* f = static_cast<T*>(args.f);
  T* g = static_cast<T*>(args.g);
  ParallelErrors errors;
  if (args.mode == SinkhornMode::Official) {
    const int64_t groups = P / args.group;
#pragma omp parallel num_threads(n_threads)
    {
      std::vector<T> K, r, c, r_prev, tmp;
#pragma omp for schedule(dynamic, 1)
      for (int64_t q = 0; q < groups; ++q) {
        if (errors.failed()) continue;
        errors.run([&] { official_group<T>(args, q * args.group, K, r, c, r_prev, tmp); });
      }
    }
    errors.rethrow_first();
    return;
  }
#pragma omp parallel num_threads(n_threads)
  {
    SinkhornWorkspace<T> ws;
    errors.run([&] { ws.reserve(n, m); });
#pragma omp for schedule(dynamic, 1)
    for (int64_t p = 0; p < P; ++p) {
      if (errors.failed()) continue;
      errors.run([&] {
        SinkhornSolution res = solve_sinkhorn_problem<T>(
            cost + p * n * m, a + p * n, b + p * m, n, m, T(args.eps), args.max_iter, T(args.tol),
            args.mode, ws, plan ? plan + p * n * m : nullptr, f ? f + p * n : nullptr,
            g ? g + p * m : nullptr);
        static_cast<T*>(args.distance)[p] = T(res.distance);
        args.n_iter[p] = res.n_iter;
        args.converged[p] = res.converged ? 1 : 0;
      });
    }
  }
  errors.rethrow_first();
}

void sinkhorn(const SinkhornArgs& args, int n_threads) {
  if (args.P == 0) return;
  if (args.mode == SinkhornMode::Official && (args.group <= 0 || args.P % args.group != 0))
    throw std::invalid_argument("sinkhorn: P must be a multiple of group in official mode");
  if (args.dtype == DType::F32) return sinkhorn_impl<float>(args, n_threads);
  if (args.dtype == DType::F64) return sinkhorn_impl<double>(args, n_threads);
  throw std::invalid_argument("sinkhorn (cpu): dtype must be float32 or float64");
}

}  // namespace FASTFACE_ISA_NS
}  // namespace cpu
}  // namespace fastface
