// csrc/cuda/conv_transpose.cu built for the host emulator (include/cuda_runtime.h here) as a C
// library for ctypes: the same launchers and kernels, on host memory. Built and driven by
// tests/test_generator_cuda_emu.py with
//   g++ -std=c++20 -O2 -pthread -shared -fPIC -DFASTFACE_CUDA_EMULATION -Itests/cuda_emu/include
//       tests/cuda_emu/emu_conv_transpose.cpp -o libffemu.so
#include <cstdint>
#include <cstring>
#include <exception>
#include <string>
#include <vector>

#include "../../csrc/cuda/conv_transpose.cu"

namespace {

thread_local std::string g_error;

// The int64 layer descriptors of fastface/ops/generator.py (as csrc/bind.cpp decodes them).
std::vector<fastface::ConvTLayer> decode(const int64_t* d, int n) {
  using namespace fastface;
  std::vector<ConvTLayer> layers(static_cast<size_t>(n));
  for (int l = 0; l < n; ++l, d += kConvTDescLen) {
    ConvTLayer& L = layers[static_cast<size_t>(l)];
    L.weight = reinterpret_cast<const float*>(uintptr_t(d[kDescWeight]));
    L.bias = reinterpret_cast<const float*>(uintptr_t(d[kDescBias]));
    L.post_scale = reinterpret_cast<const float*>(uintptr_t(d[kDescPostScale]));
    L.post_shift = reinterpret_cast<const float*>(uintptr_t(d[kDescPostShift]));
    L.cin = d[kDescCin]; L.cout = d[kDescCout]; L.hin = d[kDescHin]; L.win = d[kDescWin];
    L.hout = d[kDescHout]; L.wout = d[kDescWout]; L.kh = d[kDescKh]; L.kw = d[kDescKw];
    L.sh = d[kDescSh]; L.sw = d[kDescSw]; L.ph = d[kDescPh]; L.pw = d[kDescPw];
    L.dh = d[kDescDh]; L.dw = d[kDescDw];
    L.act = static_cast<Activation>(d[kDescAct]);
    double slope = 0;
    std::memcpy(&slope, &d[kDescSlopeBits], sizeof(double));
    L.slope = static_cast<float>(slope);
  }
  return layers;
}

fastface::ConvTChainArgs args_of(const void* x, void* out, long long B,
                                 const std::vector<fastface::ConvTLayer>& layers, int normalize,
                                 int dtype, int path, void* ws, long long ws_bytes) {
  fastface::ConvTChainArgs a;
  a.x = x; a.out = out; a.B = B;
  a.n_layers = int(layers.size()); a.layers = layers.data();
  a.dtype = static_cast<fastface::DType>(dtype); a.normalize_input = normalize != 0;
  a.cuda_path = path; a.workspace = ws; a.workspace_bytes = ws_bytes;
  return a;
}

}  // namespace

extern "C" {

const char* ff_emu_error() { return g_error.c_str(); }

// Workspace bytes, or -1 with ff_emu_error() set.
long long ff_emu_workspace(long long B, const int64_t* desc, int n, int normalize, int dtype, int path) {
  try {
    const auto layers = decode(desc, n);
    return fastface::cuda::conv_transpose_workspace(
        args_of(nullptr, nullptr, B, layers, normalize, dtype, path, nullptr, 0));
  } catch (const std::exception& e) {
    g_error = e.what();
    return -1;
  }
}

// 0 on success, -1 with ff_emu_error() set.
int ff_emu_chain(const void* x, void* out, long long B, const int64_t* desc, int n, int normalize,
                 int dtype, int path, void* ws, long long ws_bytes) {
  try {
    const auto layers = decode(desc, n);
    fastface::cuda::conv_transpose_chain(
        args_of(x, out, B, layers, normalize, dtype, path, ws, ws_bytes), nullptr);
    return 0;
  } catch (const std::exception& e) {
    g_error = e.what();
    return -1;
  }
}

}  // extern "C"
