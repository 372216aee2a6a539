// Patch cosine cost on the CPU: out (P, n, m) = 1 - cos(x[p / rep], y[p]); float32 out for float32,
// float16 and bfloat16 inputs (float32 accumulation), float64 for float64.
#include <stdexcept>
#include <vector>

#include "cosine_bf16.h"
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

// float32 and half inputs: the packed-query GEMM of cosine_gemm.h (bf16 with the AVX-512 BF16 dot
// products where the CPU has them); each thread packs a query once for its candidates.
template <typename In, bool kBf16Dots = false>
static void patch_cost_fast(const PatchCostArgs& args, int n_threads) {
  const In* x = static_cast<const In*>(args.x);
  const In* y = static_cast<const In*>(args.y);
  float* out = static_cast<float*>(args.out);
  const int64_t P = args.P, rep = args.rep, n = args.n, m = args.m, C = args.C;
  ParallelErrors errors;
#pragma omp parallel num_threads(n_threads)
  {
    gemm::PackedQuery query;
    gemm::CandidateWork work;
#ifdef FASTFACE_HAS_BF16_DOTS
    gemm_bf16::PackedQuery query16;
#endif
    int64_t packed = -1;
#pragma omp for schedule(dynamic, 1)
    for (int64_t p = 0; p < P; ++p) {
      if (errors.failed()) continue;
      errors.run([&] {
        const bool new_query = p / rep != packed;
        packed = p / rep;
        bool x_finite = true, done = false;
#ifdef FASTFACE_HAS_BF16_DOTS
        if constexpr (kBf16Dots) {
          if (new_query) gemm_bf16::pack_query(x + packed * n * C, n, C, query16);
          x_finite = query16.finite;
          done = gemm_bf16::cosines(query16, y + p * m * C, m, work, out + p * n * m, /*one_minus=*/true);
        }
#endif
        if (!done) {
          // (with bf16 dots: a candidate of extreme magnitude, rare; its query is packed again)
          if (new_query || kBf16Dots) gemm::pack_query(x + packed * n * C, n, C, query);
          x_finite = query.finite;
          gemm::cosines(query, y + p * m * C, m, work, out + p * n * m, /*one_minus=*/true);
        }
        if (args.nonfinite && !x_finite) {
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
  if (args.in_dtype == DType::F32) return patch_cost_fast<float>(args, n_threads);
  if (args.in_dtype == DType::F16) return patch_cost_fast<gemm::F16>(args, n_threads);
  if (args.in_dtype == DType::BF16) {
#ifdef FASTFACE_HAS_BF16_DOTS
    if (args.C % 2 == 0 && gemm_bf16::cpu_has_bf16_dots()) return patch_cost_fast<gemm::Bf16, true>(args, n_threads);
#endif
    return patch_cost_fast<gemm::Bf16>(args, n_threads);
  }
  if (args.in_dtype == DType::F64) return patch_cost_impl<double>(args, n_threads);
  throw std::invalid_argument("patch_cost (cpu): dtype must be float32, float16, bfloat16 or float64");
}

}  // namespace FASTFACE_ISA_NS
}  // namespace cpu
}  // namespace fastface
