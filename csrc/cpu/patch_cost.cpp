// Patch cosine cost on the CPU: out (P, n, m) = 1 - cos(x[p / rep], y[p]).
#include <stdexcept>
#include <vector>

#include "cosine_gemm.h"
#include "dots.h"
#include "isa.h"
#include "parallel.h"

namespace fastface {
namespace cpu {
namespace FASTFACE_ISA_NS {

template <typename T>
static void patch_cost_impl(const PatchCostArgs& args, int n_threads) {
  const T* x = static_cast<const T*>(args.x);
  const T* y = static_cast<const T*>(args.y);
  T* out = static_cast<T*>(args.out);
  const int64_t P = args.P, rep = args.rep, n = args.n, m = args.m, C = args.C;
  ParallelErrors errors;
#pragma omp parallel num_threads(n_threads)
  {
    DotsWorkspace<T> ws;
    std::vector<double> xn, yn;
    errors.run([&] {
      xn.resize(n);
      yn.resize(m);
    });
#pragma omp for schedule(dynamic, 1)
    for (int64_t p = 0; p < P; ++p) {
      if (errors.failed()) continue;
      errors.run([&] {
        const T* xp = x + (p / rep) * n * C;
        const T* yp = y + p * m * C;
        T* D = out + p * n * m;
        const bool x_finite = floored_norms(xp, n, C, xn.data());
        const bool y_finite = floored_norms(yp, m, C, yn.data());
        if (args.nonfinite && !x_finite) {
#pragma omp atomic write
          args.nonfinite[0] = 1;
        }
        if (args.nonfinite && !y_finite) {
#pragma omp atomic write
          args.nonfinite[1] = 1;
        }
        cosines(xp, xn.data(), yp, yn.data(), n, m, C, ws, D);
        for (int64_t t = 0; t < n * m; ++t) D[t] = T(1) - D[t];
      });
    }
  }
  errors.rethrow_first();
}

// float32: the packed-query GEMM of cosine_gemm.h; each thread packs a query once for its candidates.
static void patch_cost_f32(const PatchCostArgs& args, int n_threads) {
  const float* x = static_cast<const float*>(args.x);
  const float* y = static_cast<const float*>(args.y);
  float* out = static_cast<float*>(args.out);
  const int64_t P = args.P, rep = args.rep, n = args.n, m = args.m, C = args.C;
  ParallelErrors errors;
#pragma omp parallel num_threads(n_threads)
  {
    gemm::PackedQuery query;
    gemm::CandidateWork work;
    int64_t packed = -1;
#pragma omp for schedule(dynamic, 1)
    for (int64_t p = 0; p < P; ++p) {
      if (errors.failed()) continue;
      errors.run([&] {
        if (p / rep != packed) {
          packed = p / rep;
          gemm::pack_query(x + packed * n * C, n, C, query);
        }
        gemm::cosines(query, y + p * m * C, m, work, out + p * n * m, /*one_minus=*/true);
        if (args.nonfinite && !query.finite) {
#pragma omp atomic write
          args.nonfinite[0] = 1;
        }
        if (args.nonfinite && !work.finite) {
#pragma omp atomic write
          args.nonfinite[1] = 1;
        }
      });
    }
  }
  errors.rethrow_first();
}

void patch_cost(const PatchCostArgs& args, int n_threads) {
  if (args.P == 0 || args.n == 0 || args.m == 0) return;
  if (args.rep <= 0 || args.P % args.rep != 0) throw std::invalid_argument("patch_cost: P must be a multiple of rep");
  if (args.in_dtype == DType::F32) return patch_cost_f32(args, n_threads);
  if (args.in_dtype == DType::F64) return patch_cost_impl<double>(args, n_threads);
  throw std::invalid_argument("patch_cost (cpu): dtype must be float32 or float64");
}

}  // namespace FASTFACE_ISA_NS
}  // namespace cpu
}  // namespace fastface
