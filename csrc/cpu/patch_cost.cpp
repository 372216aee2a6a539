// Patch cosine cost on the CPU: out (P, n, m) = 1 - cos(x[p / rep], y[p]).
#include <stdexcept>
#include <vector>

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
        floored_norms(xp, n, C, xn.data());
        floored_norms(yp, m, C, yn.data());
        cosines(xp, xn.data(), yp, yn.data(), n, m, C, ws, D);
        for (int64_t t = 0; t < n * m; ++t) D[t] = T(1) - D[t];
      });
    }
  }
  errors.rethrow_first();
}

void patch_cost(const PatchCostArgs& args, int n_threads) {
  if (args.P == 0 || args.n == 0 || args.m == 0) return;
  if (args.rep <= 0 || args.P % args.rep != 0) throw std::invalid_argument("patch_cost: P must be a multiple of rep");
  if (args.in_dtype == DType::F32) return patch_cost_impl<float>(args, n_threads);
  if (args.in_dtype == DType::F64) return patch_cost_impl<double>(args, n_threads);
  throw std::invalid_argument("patch_cost (cpu): dtype must be float32 or float64");
}

}  // namespace FASTFACE_ISA_NS
}  // namespace cpu
}  // namespace fastface
