// Fused ConvTranspose2d chains (fastface/ops/generator.py; twin: fastface/reference/generator.py):
// plain structs shared by the CPU and CUDA kernels.
#pragma once
#include <cstdint>

#include "dtype.h"

namespace fastface {

// Epilogue activations of a fused layer.
enum class Activation : int { None = 0, ReLU = 1, LeakyReLU = 2, Tanh = 3, Sigmoid = 4 };

// One fused layer: y = post_scale * act(conv_transpose2d(x, weight) + bias) + post_shift, with
// BatchNorm before the activation already folded into weight and bias (groups = 1).
// Output size: hout = (hin - 1) * sh - 2 * ph + dh * (kh - 1) + oph + 1 (likewise wout).
struct ConvTLayer {
  // float32, packed per backend (cpu/convt_kernels.h, cuda/convt_launchers.h)
  const float* weight = nullptr;
  const float* bias = nullptr;       // (Cout) or null
  const float* post_scale = nullptr; // (Cout) or null (BatchNorm after the activation)
  const float* post_shift = nullptr; // (Cout) or null
  int64_t cin = 0, cout = 0, hin = 0, win = 0, hout = 0, wout = 0;
  int64_t kh = 1, kw = 1, sh = 1, sw = 1, ph = 0, pw = 0, dh = 1, dw = 1;
  Activation act = Activation::None;
  float slope = 0.01f;               // LeakyReLU negative slope
};

// A chain of n_layers fused layers applied to B samples: x (B, Cin0, Hin0, Win0) -> out
// (B, CoutL, HoutL, WoutL), both contiguous NCHW; layer l + 1 reads layer l's output.
struct ConvTChainArgs {
  const void* x = nullptr;
  void* out = nullptr;
  int64_t B = 0;
  int n_layers = 0;
  const ConvTLayer* layers = nullptr;  // host array of n_layers
  DType dtype = DType::F32;            // of x and out (CPU: F32; CUDA: F32, F16, BF16); weights,
                                       // bias and intermediate activations are always float32
  bool normalize_input = false;        // x <- x / max(||x||_channels, 1e-12) per pixel (R3AN G)
  int cuda_path = 0;                   // CUDA: 0 auto, 1 fused chain (one launch), 2 per layer
  void* workspace = nullptr;           // CUDA: caller-owned scratch (conv_transpose_workspace bytes)
  int64_t workspace_bytes = 0;
};

// Length and field order of the int64 layer descriptors the Python side builds (bind_convt.cpp
// decodes them into ConvTLayer; slope travels as the bits of a float64).
constexpr int kConvTDescLen = 22;
enum ConvTDescField : int {
  kDescWeight = 0, kDescBias, kDescPostScale, kDescPostShift, kDescCin, kDescCout, kDescHin,
  kDescWin, kDescHout, kDescWout, kDescKh, kDescKw, kDescSh, kDescSw, kDescPh, kDescPw, kDescDh,
  kDescDw, kDescAct, kDescSlopeBits, kDescOph, kDescOpw
};

}  // namespace fastface
