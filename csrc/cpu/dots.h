// Register-blocked cosines of patch sets (row-major) and their floored norms, used by the cost
// kernels (patch_cost.cpp, emd_pairs.cpp).
#pragma once
#include "isa.h"  // FASTFACE_ISA_NS
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "../common/emd_problem.h"

namespace fastface {
namespace cpu {
namespace FASTFACE_ISA_NS {

constexpr int64_t kRowBlock = 4;   // rows of X per micro-kernel
constexpr int64_t kColBlock = 16;  // columns of D per micro-kernel (two AVX2 float vectors)

inline int64_t round_up(int64_t v, int64_t r) { return (v + r - 1) / r * r; }

// Per-thread buffers: X padded to a multiple of kRowBlock rows, Y transposed and padded.
template <typename T>
struct DotsWorkspace {
  std::vector<T> xp, yt, d;
};

// norms_i = max(||X_i||, kNormFloor) for X (n, C), in double and free of overflow: each row is
// divided by its largest |x| before squaring (float32 squares overflow from |x| ~ 1.8e19).
// Returns whether X is finite.
template <typename T>
bool floored_norms(const T* X, int64_t n, int64_t C, double* norms) {
  bool finite = true;
  for (int64_t i = 0; i < n; ++i) {
    const T* row = X + i * C;
    double largest = 0;
    for (int64_t c = 0; c < C; ++c) {
      largest = std::max(largest, std::abs(double(row[c])));
      finite = finite && std::isfinite(row[c]);
    }
    double s = 0;
    if (largest > 0) {
      const double inv = 1.0 / largest;
      for (int64_t c = 0; c < C; ++c) {
        const double v = double(row[c]) * inv;
        s += v * v;
      }
    }
    norms[i] = std::max(largest * std::sqrt(s), kNormFloor);
  }
  return finite;
}

// D (n, m): cosines D_ij = <X_i / xnorm_i, Y_j / ynorm_j> of X (n, C) and Y (m, C), with the
// floored norms of floored_norms. Rows are scaled (in double) while they are packed, so the dot
// products never see magnitudes beyond 1. Accumulates in T.
template <typename T>
void cosines(const T* X, const double* xnorm, const T* Y, const double* ynorm, int64_t n,
             int64_t m, int64_t C, DotsWorkspace<T>& ws, T* D) {
  const int64_t np = round_up(n, kRowBlock), mp = round_up(m, kColBlock);
  ws.xp.assign(np * C, T(0));
  for (int64_t i = 0; i < n; ++i) {
    const double inv = 1.0 / xnorm[i];
    for (int64_t c = 0; c < C; ++c) ws.xp[i * C + c] = T(double(X[i * C + c]) * inv);
  }
  ws.yt.assign(C * mp, T(0));
  for (int64_t j = 0; j < m; ++j) {
    const double inv = 1.0 / ynorm[j];
    for (int64_t c = 0; c < C; ++c) ws.yt[c * mp + j] = T(double(Y[j * C + c]) * inv);
  }
  ws.d.resize(np * mp);
  const T* xp = ws.xp.data();
  const T* yt = ws.yt.data();
  for (int64_t i0 = 0; i0 < np; i0 += kRowBlock) {
    for (int64_t j0 = 0; j0 < mp; j0 += kColBlock) {
      T acc[kRowBlock][kColBlock] = {};
      for (int64_t c = 0; c < C; ++c) {
        const T* yrow = yt + c * mp + j0;
        for (int64_t r = 0; r < kRowBlock; ++r) {
          const T xv = xp[(i0 + r) * C + c];
#pragma omp simd
          for (int64_t jj = 0; jj < kColBlock; ++jj) acc[r][jj] += xv * yrow[jj];
        }
      }
      for (int64_t r = 0; r < kRowBlock; ++r)
        for (int64_t jj = 0; jj < kColBlock; ++jj) ws.d[(i0 + r) * mp + j0 + jj] = acc[r][jj];
    }
  }
  for (int64_t i = 0; i < n; ++i) std::copy(&ws.d[i * mp], &ws.d[i * mp] + m, D + i * m);
}

}  // namespace FASTFACE_ISA_NS
}  // namespace cpu
}  // namespace fastface
