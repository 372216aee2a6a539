// Bindings of the EMD / Sinkhorn ops: patch_cost, sinkhorn, emd_pairs (CPU, and CUDA when built).
#include <cstdint>
#include <stdexcept>
#include <string>

#include "bind.h"
#include "common/emd_problem.h"
#include "cpu/emd_kernels.h"
#ifdef FASTFACE_WITH_CUDA
#include "cuda/emd_launchers.h"
#include "cuda/smem_limits.h"
#endif

namespace fastface {
namespace bind {

namespace {

PatchCostArgs make_patch_cost_args(uintptr_t x, uintptr_t y, uintptr_t out, int64_t P,
                                   int64_t rep, int64_t n, int64_t m, int64_t C, int dtype) {
  PatchCostArgs args;
  args.x = ptr<const void>(x); args.y = ptr<const void>(y); args.out = ptr<void>(out);
  args.P = P; args.rep = rep; args.n = n; args.m = m; args.C = C;
  args.in_dtype = static_cast<DType>(dtype);
  return args;
}

SinkhornArgs make_sinkhorn_args(uintptr_t cost, uintptr_t a, uintptr_t b, int64_t P, int64_t n,
                                int64_t m, double eps, int max_iter, double tol, int mode,
                                int64_t group, int dtype, uintptr_t distance, uintptr_t plan,
                                uintptr_t f, uintptr_t g, uintptr_t n_iter, uintptr_t converged) {
  SinkhornArgs args;
  args.cost = ptr<const void>(cost); args.a = ptr<const void>(a); args.b = ptr<const void>(b);
  args.P = P; args.n = n; args.m = m; args.eps = eps; args.max_iter = max_iter; args.tol = tol;
  args.mode = static_cast<SinkhornMode>(mode); args.group = group;
  args.dtype = static_cast<DType>(dtype);
  args.distance = ptr<void>(distance); args.plan = ptr<void>(plan);
  args.f = ptr<void>(f); args.g = ptr<void>(g);
  args.n_iter = ptr<int32_t>(n_iter); args.converged = ptr<uint8_t>(converged);
  return args;
}

EmdPairsArgs make_emd_pairs_args(uintptr_t x, uintptr_t y, uintptr_t idx, int64_t B, int64_t k,
                                 int64_t n, int64_t m, int64_t C, int dtype, int weighting,
                                 double eps, int max_iter, double tol,
                                 int mode, uintptr_t emd, uintptr_t flows, uintptr_t n_iter,
                                 uintptr_t converged, uintptr_t fallback) {
  EmdPairsArgs args;
  args.x = ptr<const void>(x); args.y = ptr<const void>(y); args.idx = ptr<const int64_t>(idx);
  args.B = B; args.k = k; args.n = n; args.m = m; args.C = C;
  args.in_dtype = static_cast<DType>(dtype);
  if (weighting < int(Weighting::Uniform) || weighting > int(Weighting::SC))
    throw std::invalid_argument("emd_pairs: weighting code must be 0 (uniform), 1 (apc) or 2 (sc), got " +
                                std::to_string(weighting));
  args.weighting = static_cast<Weighting>(weighting);
  args.eps = eps; args.max_iter = max_iter; args.tol = tol;
  args.mode = static_cast<SinkhornMode>(mode);
  args.emd = ptr<float>(emd); args.flows = ptr<float>(flows); args.n_iter = ptr<int32_t>(n_iter);
  args.converged = ptr<uint8_t>(converged); args.fallback = ptr<uint8_t>(fallback);
  return args;
}

}  // namespace

void register_emd(py::module_& mod) {
  auto nogil = py::call_guard<py::gil_scoped_release>();

  // nonfinite: a (2,) uint8 buffer the kernel sets where x / y holds a NaN or inf (it reads every
  // value anyway), so fastface/ops/cost.py needs no separate pass over the inputs.
  mod.def("patch_cost_cpu",
          [](uintptr_t x, uintptr_t y, uintptr_t out, int64_t P, int64_t rep, int64_t n, int64_t m,
             int64_t C, int dtype, int threads, uintptr_t nonfinite) {
            PatchCostArgs args = make_patch_cost_args(x, y, out, P, rep, n, m, C, dtype);
            args.nonfinite = ptr<uint8_t>(nonfinite);
            cpu::patch_cost(args, threads);
          }, nogil, py::arg("x"), py::arg("y"), py::arg("out"), py::arg("P"), py::arg("rep"), py::arg("n"),
          py::arg("m"), py::arg("C"), py::arg("dtype"), py::arg("threads"), py::arg("nonfinite") = 0);
  mod.def("sinkhorn_cpu",
          [](uintptr_t cost, uintptr_t a, uintptr_t b, int64_t P, int64_t n, int64_t m, double eps,
             int max_iter, double tol, int mode, int64_t group, int dtype, uintptr_t distance,
             uintptr_t plan, uintptr_t f, uintptr_t g, uintptr_t n_iter, uintptr_t converged,
             int threads) {
            cpu::sinkhorn(make_sinkhorn_args(cost, a, b, P, n, m, eps, max_iter, tol, mode, group,
                                             dtype, distance, plan, f, g, n_iter, converged), threads);
          }, nogil);
  mod.def("emd_pairs_cpu",
          [](uintptr_t x, uintptr_t y, uintptr_t idx, int64_t B, int64_t k, int64_t n, int64_t m,
             int64_t C, int dtype, int weighting, double eps,
             int max_iter, double tol, int mode, uintptr_t emd, uintptr_t flows, uintptr_t n_iter,
             uintptr_t converged, uintptr_t fallback, int threads) {
            cpu::emd_pairs(make_emd_pairs_args(x, y, idx, B, k, n, m, C, dtype, weighting,
                                               eps, max_iter, tol, mode, emd, flows, n_iter,
                                               converged, fallback), threads);
          }, nogil);

#ifdef FASTFACE_WITH_CUDA
  mod.def("patch_cost_cuda",
          [](uintptr_t x, uintptr_t y, uintptr_t out, int64_t P, int64_t rep, int64_t n, int64_t m,
             int64_t C, int dtype, uintptr_t stream) {
            cuda::patch_cost(make_patch_cost_args(x, y, out, P, rep, n, m, C, dtype),
                             ptr<void>(stream));
          }, nogil);
  mod.def("sinkhorn_cuda",
          [](uintptr_t cost, uintptr_t a, uintptr_t b, int64_t P, int64_t n, int64_t m, double eps,
             int max_iter, double tol, int mode, int64_t group, int dtype, uintptr_t distance,
             uintptr_t plan, uintptr_t f, uintptr_t g, uintptr_t n_iter, uintptr_t converged,
             uintptr_t stream) {
            cuda::sinkhorn(make_sinkhorn_args(cost, a, b, P, n, m, eps, max_iter, tol, mode, group,
                                              dtype, distance, plan, f, g, n_iter, converged),
                           ptr<void>(stream));
          }, nogil);
  mod.def("emd_pairs_cuda",
          [](uintptr_t x, uintptr_t y, uintptr_t idx, int64_t B, int64_t k, int64_t n, int64_t m,
             int64_t C, int dtype, int weighting, double eps,
             int max_iter, double tol, int mode, uintptr_t emd, uintptr_t flows, uintptr_t n_iter,
             uintptr_t converged, uintptr_t fallback, uintptr_t stream) {
            cuda::emd_pairs(make_emd_pairs_args(x, y, idx, B, k, n, m, C, dtype, weighting,
                                                eps, max_iter, tol, mode, emd, flows, n_iter,
                                                converged, fallback), ptr<void>(stream));
          }, nogil);

  // What the CUDA launchers need for a problem size (cuda/smem_limits.h; fastface/ops/kernel_limits.py).
  mod.def("sinkhorn_cuda_smem_bytes", [](int64_t n, int64_t m, int dtype, int mode, bool k_in_smem) {
    return cuda::sinkhorn_smem_bytes(n, m, static_cast<DType>(dtype), static_cast<SinkhornMode>(mode), k_in_smem);
  });
  mod.def("sinkhorn_cuda_needs_plan", [](int64_t n, int64_t m, int dtype, int mode) {
    return cuda::sinkhorn_needs_plan(n, m, static_cast<DType>(dtype), static_cast<SinkhornMode>(mode));
  });
  mod.def("emd_pairs_cuda_smem_bytes", &cuda::emd_pairs_smem_bytes);
  mod.def("emd_pairs_cuda_fits", &cuda::emd_pairs_fits);
#endif
}

}  // namespace bind
}  // namespace fastface
