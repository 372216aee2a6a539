// The only pybind11 file: functions over raw pointers (Python ints), shapes and scalars.
// No torch here; fastface/_backend.py validates inputs and passes tensor.data_ptr() values.
#include <pybind11/pybind11.h>

#include <cstdint>
#include <cstring>
#include <stdexcept>
#include <string>
#include <vector>

#include "common/problem.h"
#include "cpu/kernels.h"
#ifdef FASTFACE_WITH_CUDA
#include "cuda/launchers.h"
#include "cuda/smem_limits.h"
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

// Decode the int64 layer descriptors built by fastface/ops/generator.py (kConvTDescLen fields per
// layer, see problem.h) and check that each layer's output size follows from its input.
std::vector<ConvTLayer> make_convt_layers(uintptr_t desc_ptr, int n_layers, int desc_len) {
  if (desc_len != kConvTDescLen)
    throw std::invalid_argument("conv_transpose: descriptor length " + std::to_string(desc_len) +
                                " != " + std::to_string(kConvTDescLen) + " (stale build?)");
  if (n_layers <= 0 || desc_ptr == 0) throw std::invalid_argument("conv_transpose: no layers");
  const int64_t* d = ptr<const int64_t>(desc_ptr);
  std::vector<ConvTLayer> layers(static_cast<size_t>(n_layers));
  for (int l = 0; l < n_layers; ++l, d += kConvTDescLen) {
    ConvTLayer& L = layers[static_cast<size_t>(l)];
    L.weight = ptr<const float>(uintptr_t(d[kDescWeight]));
    L.bias = ptr<const float>(uintptr_t(d[kDescBias]));
    L.post_scale = ptr<const float>(uintptr_t(d[kDescPostScale]));
    L.post_shift = ptr<const float>(uintptr_t(d[kDescPostShift]));
    L.cin = d[kDescCin]; L.cout = d[kDescCout]; L.hin = d[kDescHin]; L.win = d[kDescWin];
    L.hout = d[kDescHout]; L.wout = d[kDescWout]; L.kh = d[kDescKh]; L.kw = d[kDescKw];
    L.sh = d[kDescSh]; L.sw = d[kDescSw]; L.ph = d[kDescPh]; L.pw = d[kDescPw];
    L.dh = d[kDescDh]; L.dw = d[kDescDw];
    const int64_t act = d[kDescAct];
    if (act < 0 || act > int64_t(Activation::Sigmoid))
      throw std::invalid_argument("conv_transpose: unknown activation code " + std::to_string(act));
    L.act = static_cast<Activation>(act);
    double slope = 0;
    std::memcpy(&slope, &d[kDescSlopeBits], sizeof(double));
    L.slope = static_cast<float>(slope);
    if (L.hout != (L.hin - 1) * L.sh - 2 * L.ph + L.dh * (L.kh - 1) + d[kDescOph] + 1 ||
        L.wout != (L.win - 1) * L.sw - 2 * L.pw + L.dw * (L.kw - 1) + d[kDescOpw] + 1)
      throw std::invalid_argument("conv_transpose: layer " + std::to_string(l) +
                                  " output size does not follow from its input size");
  }
  return layers;
}

ConvTChainArgs make_chain_args(uintptr_t x, uintptr_t out, int64_t B,
                               const std::vector<ConvTLayer>& layers, bool normalize, int dtype,
                               int cuda_path, uintptr_t workspace, int64_t workspace_bytes) {
  ConvTChainArgs c;
  c.x = ptr<const void>(x); c.out = ptr<void>(out); c.B = B;
  c.n_layers = static_cast<int>(layers.size()); c.layers = layers.data();
  c.normalize_input = normalize; c.dtype = static_cast<DType>(dtype); c.cuda_path = cuda_path;
  c.workspace = ptr<void>(workspace); c.workspace_bytes = workspace_bytes;
  return c;
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

  mod.def("conv_transpose_packed_size_cpu", &cpu::conv_transpose_packed_size);
  mod.def("conv_transpose_pack_cpu",
          [](uintptr_t w, uintptr_t packed, int64_t cin, int64_t cout, int64_t kh, int64_t kw) {
            cpu::conv_transpose_pack(ptr<const float>(w), ptr<float>(packed), cin, cout, kh, kw);
          }, nogil);
  mod.def("conv_transpose_blocks_cpu", []() {
    return py::make_tuple(cpu::conv_transpose_row_block(), cpu::conv_transpose_col_block());
  });
  mod.def("conv_transpose_chain_cpu",
          [](uintptr_t x, uintptr_t out, int64_t B, uintptr_t desc, int n_layers, int desc_len,
             bool normalize, int dtype, int threads) {
            const auto layers = make_convt_layers(desc, n_layers, desc_len);
            cpu::conv_transpose_chain(make_chain_args(x, out, B, layers, normalize, dtype, 0, 0, 0),
                                      threads);
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
  mod.def("conv_transpose_workspace_cuda",
          [](int64_t B, uintptr_t desc, int n_layers, int desc_len, bool normalize, int dtype,
             int path) {
            const auto layers = make_convt_layers(desc, n_layers, desc_len);
            return cuda::conv_transpose_workspace(
                make_chain_args(0, 0, B, layers, normalize, dtype, path, 0, 0));
          });
  mod.def("conv_transpose_chain_cuda",
          [](uintptr_t x, uintptr_t out, int64_t B, uintptr_t desc, int n_layers, int desc_len,
             bool normalize, int dtype, int path, uintptr_t workspace, int64_t workspace_bytes,
             uintptr_t stream) {
            const auto layers = make_convt_layers(desc, n_layers, desc_len);
            cuda::conv_transpose_chain(make_chain_args(x, out, B, layers, normalize, dtype, path,
                                                       workspace, workspace_bytes),
                                       ptr<void>(stream));
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
#else
  mod.attr("cuda_built") = false;
  mod.def("cuda_device_count", []() { return 0; });
#endif
}
