// EMD / Sinkhorn ops (patch cost, batched Sinkhorn, fused re-rank): plain structs shared by the
// CPU and CUDA kernels: pointers, shapes and scalars, no framework types.
#pragma once
#include <cstdint>

#include "dtype.h"

namespace fastface {

// Sinkhorn modes; the pure-PyTorch twin (fastface/reference/sinkhorn.py) defines their semantics.
enum class SinkhornMode : int { Auto = 0, Kernel = 1, Log = 2, Official = 3 };

// In-kernel weightings of the fused re-rank path.
enum class Weighting : int { Uniform = 0, APC = 1, SC = 2 };

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
  DType in_dtype = DType::F32;  // any: F32, F16, BF16 (float32 accumulation) or F64
  void* out = nullptr;         // (P, n, m), float32 (float64 when in_dtype is F64)
  uint8_t* nonfinite = nullptr;  // (2,) or null (CPU): set to 1 where x / y holds a NaN or inf
};

// Fused re-rank: for query b and candidate slot j, problem p = b * k + j compares
// x[b] (n, C) with y[idx[p]] (m, C) (y[p] when idx is null): cost, weights, Sinkhorn, distance.
struct EmdPairsArgs {
  const void* x = nullptr;       // (B, n, C)
  const void* y = nullptr;       // (G, m, C), or (B * k, m, C) when idx is null
  const int64_t* idx = nullptr;  // (B, k) gallery rows, or null
  int64_t B = 0, k = 0, n = 0, m = 0, C = 0;
  DType in_dtype = DType::F32;   // F32, F16, BF16 (float32 accumulation)
  Weighting weighting = Weighting::APC;
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
