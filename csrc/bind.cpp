// The only pybind11 file: functions over raw pointers (Python ints), shapes and scalars.
// No torch here; fastface/_backend.py validates inputs and passes tensor.data_ptr() values.
#include <pybind11/pybind11.h>

#include <cstdint>
#include <string>

#include "common/problem.h"
#include "cpu/kernels.h"
#ifdef FASTFACE_WITH_CUDA
#include "cuda/launchers.h"
#endif

namespace py = pybind11;
using namespace fastface;

namespace {

template <typename T>
T* ptr(uintptr_t p) { return reinterpret_cast<T*>(p); }

PatchCostArgs make_cost_args(uintptr_t x, uintptr_t y, uintptr_t out, int64_t P, int64_t rep,
                             int64_t n, int64_t m, int64_t C, int dtype) {
  PatchCostArgs a;
  a.x = ptr<const void>(x); a.y = ptr<const void>(y); a.out = ptr<void>(out);
  a.P = P; a.rep = rep; a.n = n; a.m = m; a.C = C; a.in_dtype = static_cast<DType>(dtype);
  return a;
}

SinkhornArgs make_sinkhorn_args(uintptr_t cost, uintptr_t a, uintptr_t b, int64_t P, int64_t n,
                                int64_t m, double eps, int max_iter, double tol, int mode,
                                int64_t group, int dtype, uintptr_t distance, uintptr_t plan,
                                uintptr_t f, uintptr_t g, uintptr_t n_iter, uintptr_t converged) {
  SinkhornArgs s;
  s.cost = ptr<const void>(cost); s.a = ptr<const void>(a); s.b = ptr<const void>(b);
  s.P = P; s.n = n; s.m = m; s.eps = eps; s.max_iter = max_iter; s.tol = tol;
  s.mode = static_cast<SinkhornMode>(mode); s.group = group; s.dtype = static_cast<DType>(dtype);
  s.distance = ptr<void>(distance); s.plan = ptr<void>(plan); s.f = ptr<void>(f); s.g = ptr<void>(g);
  s.n_iter = ptr<int32_t>(n_iter); s.converged = ptr<uint8_t>(converged);
  return s;
}

EmdPairsArgs make_pairs_args(uintptr_t x, uintptr_t y, uintptr_t idx, int64_t B, int64_t k,
                             int64_t n, int64_t m, int64_t C, int dtype, int weighting,
                             uintptr_t wx, uintptr_t wy, double eps, int max_iter, double tol,
                             int mode, uintptr_t emd, uintptr_t flows, uintptr_t n_iter,
                             uintptr_t converged, uintptr_t fallback) {
  EmdPairsArgs e;
  e.x = ptr<const void>(x); e.y = ptr<const void>(y); e.idx = ptr<const int64_t>(idx);
  e.B = B; e.k = k; e.n = n; e.m = m; e.C = C; e.in_dtype = static_cast<DType>(dtype);
  e.weighting = static_cast<Weighting>(weighting);
  e.wx_in = ptr<const float>(wx); e.wy_in = ptr<const float>(wy);
  e.eps = eps; e.max_iter = max_iter; e.tol = tol; e.mode = static_cast<SinkhornMode>(mode);
  e.emd = ptr<float>(emd); e.flows = ptr<float>(flows); e.n_iter = ptr<int32_t>(n_iter);
  e.converged = ptr<uint8_t>(converged); e.fallback = ptr<uint8_t>(fallback);
  return e;
}

}  // namespace

PYBIND11_MODULE(_C, mod) {
  mod.doc() = "fastface kernels over raw pointers (see fastface/_backend.py)";
  auto nogil = py::call_guard<py::gil_scoped_release>();

  mod.def("patch_cost_cpu",
          [](uintptr_t x, uintptr_t y, uintptr_t out, int64_t P, int64_t rep, int64_t n, int64_t m,
             int64_t C, int dtype, int threads) {
            cpu::patch_cost(make_cost_args(x, y, out, P, rep, n, m, C, dtype), threads);
          }, nogil);
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
             int64_t C, int dtype, int weighting, uintptr_t wx, uintptr_t wy, double eps,
             int max_iter, double tol, int mode, uintptr_t emd, uintptr_t flows, uintptr_t n_iter,
             uintptr_t converged, uintptr_t fallback, int threads) {
            cpu::emd_pairs(make_pairs_args(x, y, idx, B, k, n, m, C, dtype, weighting, wx, wy, eps,
                                           max_iter, tol, mode, emd, flows, n_iter, converged,
                                           fallback), threads);
          }, nogil);

#ifdef FASTFACE_WITH_CUDA
  mod.attr("cuda_built") = true;
  mod.def("cuda_device_count", &cuda::device_count);
  mod.def("patch_cost_cuda",
          [](uintptr_t x, uintptr_t y, uintptr_t out, int64_t P, int64_t rep, int64_t n, int64_t m,
             int64_t C, int dtype, uintptr_t stream) {
            cuda::patch_cost(make_cost_args(x, y, out, P, rep, n, m, C, dtype), ptr<void>(stream));
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
             int64_t C, int dtype, int weighting, uintptr_t wx, uintptr_t wy, double eps,
             int max_iter, double tol, int mode, uintptr_t emd, uintptr_t flows, uintptr_t n_iter,
             uintptr_t converged, uintptr_t fallback, uintptr_t stream) {
            cuda::emd_pairs(make_pairs_args(x, y, idx, B, k, n, m, C, dtype, weighting, wx, wy, eps,
                                            max_iter, tol, mode, emd, flows, n_iter, converged,
                                            fallback), ptr<void>(stream));
          }, nogil);
#else
  mod.attr("cuda_built") = false;
  mod.def("cuda_device_count", []() { return 0; });
#endif
}
