// Bindings of the fused ConvTranspose2d chains (fastface/ops/generator.py): weight packing and
// chain runs (CPU, and CUDA when built).
#include <cstdint>
#include <cstring>
#include <stdexcept>
#include <string>
#include <vector>

#include "bind.h"
#include "common/convt_problem.h"
#include "cpu/convt_kernels.h"
#ifdef FASTFACE_WITH_CUDA
#include "cuda/convt_launchers.h"
#endif

namespace fastface {
namespace bind {

namespace {

// Decode the int64 layer descriptors built by fastface/ops/generator.py (kConvTDescLen fields per
// layer, see convt_problem.h) and check that each layer's output size follows from its input.
std::vector<ConvTLayer> make_convt_layers(uintptr_t desc_ptr, int n_layers, int desc_len) {
  if (desc_len != kConvTDescLen)
    throw std::invalid_argument("conv_transpose: descriptor length " + std::to_string(desc_len) +
                                " != " + std::to_string(kConvTDescLen) + " (stale build?)");
  if (n_layers <= 0 || desc_ptr == 0) throw std::invalid_argument("conv_transpose: no layers");
  const int64_t* desc = ptr<const int64_t>(desc_ptr);
  std::vector<ConvTLayer> layers(static_cast<size_t>(n_layers));
  for (int l = 0; l < n_layers; ++l, desc += kConvTDescLen) {
    ConvTLayer& layer = layers[static_cast<size_t>(l)];
    layer.weight = ptr<const float>(uintptr_t(desc[kDescWeight]));
    layer.bias = ptr<const float>(uintptr_t(desc[kDescBias]));
    layer.post_scale = ptr<const float>(uintptr_t(desc[kDescPostScale]));
    layer.post_shift = ptr<const float>(uintptr_t(desc[kDescPostShift]));
    layer.cin = desc[kDescCin]; layer.cout = desc[kDescCout];
    layer.hin = desc[kDescHin]; layer.win = desc[kDescWin];
    layer.hout = desc[kDescHout]; layer.wout = desc[kDescWout];
    layer.kh = desc[kDescKh]; layer.kw = desc[kDescKw];
    layer.sh = desc[kDescSh]; layer.sw = desc[kDescSw];
    layer.ph = desc[kDescPh]; layer.pw = desc[kDescPw];
    layer.dh = desc[kDescDh]; layer.dw = desc[kDescDw];
    const int64_t act = desc[kDescAct];
    if (act < 0 || act > int64_t(Activation::Sigmoid))
      throw std::invalid_argument("conv_transpose: unknown activation code " + std::to_string(act));
    layer.act = static_cast<Activation>(act);
    double slope = 0;
    std::memcpy(&slope, &desc[kDescSlopeBits], sizeof(double));
    layer.slope = static_cast<float>(slope);
    if (layer.hout != (layer.hin - 1) * layer.sh - 2 * layer.ph + layer.dh * (layer.kh - 1) +
                          desc[kDescOph] + 1 ||
        layer.wout != (layer.win - 1) * layer.sw - 2 * layer.pw + layer.dw * (layer.kw - 1) +
                          desc[kDescOpw] + 1)
      throw std::invalid_argument("conv_transpose: layer " + std::to_string(l) +
                                  " output size does not follow from its input size");
  }
  return layers;
}

ConvTChainArgs make_chain_args(uintptr_t x, uintptr_t out, int64_t B,
                               const std::vector<ConvTLayer>& layers, bool normalize, int dtype,
                               int cuda_path, uintptr_t workspace, int64_t workspace_bytes) {
  ConvTChainArgs args;
  args.x = ptr<const void>(x); args.out = ptr<void>(out); args.B = B;
  args.n_layers = static_cast<int>(layers.size()); args.layers = layers.data();
  args.normalize_input = normalize; args.dtype = static_cast<DType>(dtype);
  args.cuda_path = cuda_path;
  args.workspace = ptr<void>(workspace); args.workspace_bytes = workspace_bytes;
  return args;
}

}  // namespace

void register_convt(py::module_& mod) {
  auto nogil = py::call_guard<py::gil_scoped_release>();

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
#endif
}

}  // namespace bind
}  // namespace fastface
