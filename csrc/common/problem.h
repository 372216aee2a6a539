// Plain structs shared by the CPU and CUDA kernels: pointers, shapes and scalars, no framework types.
#pragma once
#include <cstdint>

namespace fastface {

// Element types of tensors crossing the binding (the Python side passes these codes).
enum class DType : int { F32 = 0, F16 = 1, BF16 = 2, F64 = 3 };

// Sinkhorn modes; the pure-PyTorch twin (fastface/reference/sinkhorn.py) defines their semantics.
enum class SinkhornMode : int { Auto = 0, Kernel = 1, Log = 2, Official = 3 };

// In-kernel weightings of the fused re-rank path; External reads wx / wy given by the caller.
enum class Weighting : int { Uniform = 0, APC = 1, SC = 2, External = 3 };

// Auto mode switches to the log domain when max(reduced cost) / eps exceeds this.
constexpr double kLogDomainThreshold = 50.0;
// Patch norms below this count as zero (cost 1 to everything, weight 0).
constexpr double kNormFloor = 1e-12;

// P independent problems: cost (P, n, m), a (P, n), b (P, m), all contiguous.
struct SinkhornArgs {
  const void* cost = nullptr;  // (P, n, m)
  const void* a = nullptr;     // (P, n), each row sums to 1
  const void* b = nullptr;     // (P, m), each row sums to 1
  int64_t P = 0, n = 0, m = 0;
  double eps = 0.05;
  int max_iter = 100;
  double tol = 1e-6;
  SinkhornMode mode = SinkhornMode::Auto;
  int64_t group = 1;           // Official mode: consecutive problems stopped together
  DType dtype = DType::F32;    // F32 or F64 (cost, a, b, outputs alike)
  // Outputs.
  void* distance = nullptr;    // (P,)
  void* plan = nullptr;        // (P, n, m) or null
  void* f = nullptr;           // (P, n) potentials of the original cost, or null (Official)
  void* g = nullptr;           // (P, m)
  int32_t* n_iter = nullptr;   // (P,)
  uint8_t* converged = nullptr;  // (P,)
};

// Patch cosine cost: out (P, n, m) = 1 - cos(x[p / rep], y[p]).
struct PatchCostArgs {
  const void* x = nullptr;     // (P / rep, n, C)
  const void* y = nullptr;     // (P, m, C)
  int64_t P = 0, rep = 1, n = 0, m = 0, C = 0;
  DType in_dtype = DType::F32;
  void* out = nullptr;         // (P, n, m), float32 (float64 when in_dtype is F64)
};

// Fused re-rank: for query b and candidate slot j, problem p = b * k + j compares
// x[b] (n, C) with y[idx[p]] (m, C) (y[p] when idx is null): cost, weights, Sinkhorn, distance.
struct EmdPairsArgs {
  const void* x = nullptr;       // (B, n, C)
  const void* y = nullptr;       // (G, m, C), or (B * k, m, C) when idx is null
  const int64_t* idx = nullptr;  // (B, k) gallery rows, or null
  int64_t B = 0, k = 0, n = 0, m = 0, C = 0;
  DType in_dtype = DType::F32;   // CPU: F32 only; CUDA: F32, F16, BF16
  Weighting weighting = Weighting::APC;
  const float* wx_in = nullptr;  // (B * k, n) for External
  const float* wy_in = nullptr;  // (B * k, m) for External
  double eps = 0.05;
  int max_iter = 100;
  double tol = 1e-6;
  SinkhornMode mode = SinkhornMode::Auto;  // Auto, Kernel or Log (Official is not fused)
  // Outputs (float32).
  float* emd = nullptr;          // (B * k,)
  float* flows = nullptr;        // (B * k, n, m) or null
  int32_t* n_iter = nullptr;     // (B * k,)
  uint8_t* converged = nullptr;  // (B * k,)
  uint8_t* fallback = nullptr;   // (B * k,) 1 where a side's weights were all zero -> uniform
};

}  // namespace fastface

namespace fastface {

// ---- Fused ConvTranspose2d chains (fastface/ops/generator.py; twin: fastface/reference/generator.py) ----

// Epilogue activations of a fused layer.
enum class Activation : int { None = 0, ReLU = 1, LeakyReLU = 2, Tanh = 3, Sigmoid = 4 };

// One fused layer: y = post_scale * act(conv_transpose2d(x, weight) + bias) + post_shift, with
// BatchNorm before the activation already folded into weight and bias (groups = 1).
// Output size: hout = (hin - 1) * sh - 2 * ph + dh * (kh - 1) + oph + 1 (likewise wout).
struct ConvTLayer {
  const float* weight = nullptr;     // float32, packed per backend (cpu/kernels.h, cuda/launchers.h)
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

// Length and field order of the int64 layer descriptors the Python side builds (bind.cpp
// decodes them into ConvTLayer; slope travels as the bits of a float64).
constexpr int kConvTDescLen = 22;
enum ConvTDescField : int {
  kDescWeight = 0, kDescBias, kDescPostScale, kDescPostShift, kDescCin, kDescCout, kDescHin,
  kDescWin, kDescHout, kDescWout, kDescKh, kDescKw, kDescSh, kDescSw, kDescPh, kDescPw, kDescDh,
  kDescDw, kDescAct, kDescSlopeBits, kDescOph, kDescOpw
};

}  // namespace fastface
