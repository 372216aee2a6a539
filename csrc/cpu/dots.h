// Register-blocked dot products D = X Y^T for patch sets (row-major), used by the cost kernels.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "../common/emd_problem.h"

namespace fastface {
namespace cpu {

constexpr int64_t kRowBlock = 4;   // rows of X per micro-kernel
constexpr int64_t kColBlock = 16;  // columns of D per micro-kernel (two AVX2 float vectors)

inline int64_t round_up(int64_t v, int64_t r) { return (v + r - 1) / r * r; }

// Per-thread buffers: X padded to a multiple of kRowBlock rows, Y transposed and padded.
template <typename T>
struct DotsWorkspace {
  std::vector<T> xp, yt, d;
};

// D (n, m) = X (n, C) Y (m, C)^T. Accumulates in T.
template <typename T>
void dots(const T* X, const T* Y, int64_t n, int64_t m, int64_t C, DotsWorkspace<T>& ws, T* D) {
  const int64_t np = round_up(n, kRowBlock), mp = round_up(m, kColBlock);
  ws.xp.assign(np * C, T(0));
  std::copy(X, X + n * C, ws.xp.begin());
  ws.yt.assign(C * mp, T(0));
  for (int64_t j = 0; j < m; ++j)
    for (int64_t c = 0; c < C; ++c) ws.yt[c * mp + j] = Y[j * C + c];
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

// norms_i = max(||X_i||, kNormFloor) for X (n, C); accumulates in double.
template <typename T>
void row_norms(const T* X, int64_t n, int64_t C, T* norms) {
  for (int64_t i = 0; i < n; ++i) {
    double s = 0;
    for (int64_t c = 0; c < C; ++c) s += double(X[i * C + c]) * double(X[i * C + c]);
    norms[i] = T(std::max(std::sqrt(s), kNormFloor));
  }
}

}  // namespace cpu
}  // namespace fastface
