// Cosines of patch sets at GEMM speed: D (n, m) = cos(X_i, Y_j) for X (n, C), Y (m, C) float32
// row-major, as one register-blocked product T = Y . Xp^T (m, npad) followed by a scaling epilogue.
//
// The query side X is packed once (per query, reused for all its candidates): each row scaled by a
// power of two (exact) into NR-column panels Xp (C, NR), one aligned vector load per NR/kLanes lanes.
// The candidate side Y is read in place, one broadcast per element, kMR rows at a time (its rows
// stay in L1 while the panels stream from L2); rows of extreme magnitude (beyond 2^+-60, where raw
// dot products could overflow or underflow) are first copied scaled by a power of two.
// Norms: the largest |x| of a row (exact), then the sum of squares of the row scaled to it.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <vector>

#include "../common/emd_problem.h"
#include "simd.h"

namespace fastface {
namespace cpu {
namespace FASTFACE_ISA_NS {
namespace gemm {

using simd::kLanes;
using simd::vf;

// Micro-tile: kMR rows of Y times kNV vectors of Xp columns, all accumulators in registers.
#if defined(__AVX512F__)
constexpr int kMR = 6, kNV = 4;  // 24 zmm accumulators + 4 panel vectors + 1 broadcast <= 32
                                 // (12 x 2 measured 13-17 % slower on Zen 4)
#elif defined(__aarch64__)
constexpr int kMR = 6, kNV = 4;  // 32 NEON registers
#else
constexpr int kMR = 6, kNV = 2;  // 12 ymm / xmm accumulators + 2 + 1 <= 16
#endif
constexpr int kNR = kNV * kLanes;

// Half-precision inputs: their bits, converted to float32 as they are read (fp32 accumulation).
struct Bf16 { uint16_t bits; };
struct F16 { uint16_t bits; };

inline float bits_to_float(uint32_t b) {
  float f;
  std::memcpy(&f, &b, 4);
  return f;
}
inline void to_float(const float* src, float* dst, int64_t len) { std::memcpy(dst, src, len * 4); }
inline void to_float(const Bf16* src, float* dst, int64_t len) {
  for (int64_t t = 0; t < len; ++t) dst[t] = bits_to_float(uint32_t(src[t].bits) << 16);
}
inline void to_float(const F16* src, float* dst, int64_t len) {
  for (int64_t t = 0; t < len; ++t) {
    const uint32_t h = src[t].bits, em = h & 0x7fffu, sign = (h & 0x8000u) << 16;
    // exponent and mantissa moved into float position, rebiased by 2^112 (exact, subnormals too)
    float f = bits_to_float(em << 13) * 5.192296858534828e+33f;
    if (em >= 0x7c00u) f = bits_to_float(0x7f800000u | ((em & 0x3ffu) << 13));  // inf, NaN
    uint32_t b;
    std::memcpy(&b, &f, 4);
    dst[t] = bits_to_float(b | sign);
  }
}

// The sum of squares of a row in float (NaN or inf when the row has a NaN or inf, or overflows).
inline float sum_of_squares(const float* row, int64_t C) {
  vf sq0 = vf{}, sq1 = vf{};
  int64_t c = 0;
  for (; c + 2 * kLanes <= C; c += 2 * kLanes) {
    const vf v0 = simd::load(row + c), v1 = simd::load(row + c + kLanes);
    sq0 += v0 * v0;
    sq1 += v1 * v1;
  }
  for (; c + kLanes <= C; c += kLanes) {
    const vf v = simd::load(row + c);
    sq0 += v * v;
  }
  float s = simd::hsum(sq0 + sq1);
  for (; c < C; ++c) s += row[c] * row[c];
  return s;
}

// The one-pass case of row_norm from the row's sum_of_squares s: false (nothing set) outside 2^+-40.
inline bool window_norm(float s, double& norm, int& e) {
  if (!(s >= 0x1p-40f && s <= 0x1p40f)) return false;  // NaN and inf included
  e = 0;
  norm = std::max(std::sqrt(double(s)), kNormFloor);
  return true;
}

// row_norm for any row, from its largest |x|.
inline bool row_norm_scaled(const float* row, int64_t C, double& norm, int& e) {
  vf big0 = vf{}, big1 = vf{}, sq0 = vf{}, sq1 = vf{}, zero = vf{};
  int64_t c = 0;
  for (; c + 2 * kLanes <= C; c += 2 * kLanes) {
    const vf v0 = simd::load(row + c), v1 = simd::load(row + c + kLanes);
    big0 = simd::vmax(big0, simd::vabs(v0));
    big1 = simd::vmax(big1, simd::vabs(v1));
    sq0 += v0 * v0;
    sq1 += v1 * v1;
    zero += v0 * 0.0f + v1 * 0.0f;
  }
  for (; c + kLanes <= C; c += kLanes) {
    const vf v = simd::load(row + c);
    big0 = simd::vmax(big0, simd::vabs(v));
    sq0 += v * v;
    zero += v * 0.0f;
  }
  float largest = simd::hmax(simd::vmax(big0, big1)), z = simd::hsum(zero);
  double s = simd::hsum(sq0 + sq1);
  for (; c < C; ++c) {
    largest = std::max(largest, std::fabs(row[c]));
    z += row[c] * 0.0f;
    s += double(row[c]) * double(row[c]);
  }
  e = 0;
  norm = kNormFloor;
  if (z != 0.0f) return false;
  if (!(largest > 0)) return true;
  uint32_t bits;
  std::memcpy(&bits, &largest, 4);
  e = int(bits >> 23) - 126;  // largest < 2^e for a normal float
  if (e <= -60 || e >= 60) {  // rescale in double: 2^-e overflows a float for subnormal rows
    std::frexp(largest, &e);
    const double inv = std::ldexp(1.0, -e);
    s = 0;
    for (c = 0; c < C; ++c) s += (row[c] * inv) * (row[c] * inv);
    norm = std::max(std::ldexp(std::sqrt(s), e), kNormFloor);
    return true;
  }
  norm = std::max(std::sqrt(s), kNormFloor);
  return true;
}

// norm = max(||row||, kNormFloor) in double, and an exponent e such that the row scaled by 2^-e
// (exact) is safe in raw float dot products: e = 0 for rows of sum of squares within 2^+-40 (the
// common case, one multiply-add per element), else max|row| = f * 2^e, f in [0.5, 1) (0 for a zero
// row). Free of overflow and underflow for every finite float row. Returns whether the row is
// finite (0 * v is NaN exactly for a NaN or inf v).
inline bool row_norm(const float* row, int64_t C, double& norm, int& e) {
  return window_norm(sum_of_squares(row, C), norm, e) || row_norm_scaled(row, C, norm, e);
}

// dst = src * 2^-e (exact: a power of two), for any e row_norm returns (2^-e may overflow a float
// when the row is subnormal: then in double).
inline void scale_row(const float* src, float* dst, int64_t C, int e, int64_t dst_stride = 1) {
  if (e > -126 && e < 127) {
    const float inv = simd::bits_to_float_u(uint32_t(127 - e) << 23);
    for (int64_t c = 0; c < C; ++c) dst[c * dst_stride] = src[c] * inv;
  } else {
    const double inv = std::ldexp(1.0, -e);
    for (int64_t c = 0; c < C; ++c) dst[c * dst_stride] = float(src[c] * inv);
  }
}

// The packed query: Xp (npad / kNR panels of (C, kNR)), xs_i = 2^e_i / norm_i, norm_i floored.
struct PackedQuery {
  simd::Buffer xp, xs, row;
  std::vector<double> norm;
  std::vector<int> ex;  // power-of-two exponents of the rows' largest |x|
  int64_t n = 0, C = 0, npad = 0;
  bool finite = true;   // no NaN or inf in X
};

template <typename In>
inline void pack_query(const In* X, int64_t n, int64_t C, PackedQuery& q) {
  q.n = n;
  q.C = C;
  q.npad = simd::round_up(n, kNR);
  float* xp = q.xp.get(q.npad * C);
  float* xs = q.xs.get(q.npad);
  q.norm.resize(n);
  q.ex.assign(n, 0);
  q.finite = true;
  std::fill(xs, xs + q.npad, 0.0f);
  for (int64_t i = 0; i < q.npad; ++i) {
    const int64_t panel = i / kNR, col = i % kNR;
    float* dst = xp + panel * C * kNR + col;
    if (i >= n) {
      for (int64_t c = 0; c < C; ++c) dst[c * kNR] = 0.0f;
      continue;
    }
    int& e = q.ex[i];
    float* row = q.row.get(C);
    to_float(X + i * C, row, C);
    q.finite = row_norm(row, C, q.norm[i], e) && q.finite;
    scale_row(row, dst, C, e, kNR);
    xs[i] = float(std::ldexp(1.0, e) / q.norm[i]);
  }
}

// The scaling of a product tile into cosines: t = shift + sign * dot * xs_i * ys_j (shift 1, sign
// -1 gives 1 - cos).
struct TileScale {
  const float* xs;  // (kNR,) of the panel
  const float* ys;  // (MR,) of the rows
  float shift, sign;
};

// t[r * ldt + (0..kNR)] = scaled sum_c y[r * ldy + c] * panel[c * kNR + (0..kNR)], r < MR.
// Not inlined: inside its callers' loops the compiler hoisted the epilogue's constants into vector
// registers, spilled accumulators and re-read the panel and the row strides from memory in the
// inner loop (17 loads per 12 FMAs with AVX2); on its own, accumulators, panel vectors and one row
// pointer per row all stay in registers.
template <int MR>
__attribute__((noinline)) void micro_kernel(const float* __restrict y, int64_t ldy, const float* __restrict panel,
                                            int64_t C, float* __restrict t, int64_t ldt, const TileScale& sc) {
  vf acc[MR][kNV];
  const float* rows[MR];
#pragma GCC unroll 8
  for (int r = 0; r < MR; ++r) {
    rows[r] = y + r * ldy;
#pragma GCC unroll 4
    for (int v = 0; v < kNV; ++v) acc[r][v] = vf{};
  }
  for (int64_t c = 0; c < C; ++c) {
    vf b[kNV];
#pragma GCC unroll 4
    for (int v = 0; v < kNV; ++v) b[v] = *reinterpret_cast<const vf*>(panel + c * kNR + v * kLanes);
#pragma GCC unroll 8
    for (int r = 0; r < MR; ++r) {
      const float s = rows[r][c];
#pragma GCC unroll 4
      for (int v = 0; v < kNV; ++v) acc[r][v] += s * b[v];
    }
  }
#pragma GCC unroll 8
  for (int r = 0; r < MR; ++r) {
    const float yr = sc.sign * sc.ys[r];
#pragma GCC unroll 4
    for (int v = 0; v < kNV; ++v)
      simd::store(t + r * ldt + v * kLanes, sc.shift + acc[r][v] * (simd::load(sc.xs + v * kLanes) * yr));
  }
}

template <int MR>
inline void rows_times_panels(const float* y, int64_t C, const PackedQuery& q, float* t, const float* ys,
                              bool one_minus) {
  for (int64_t p = 0; p < q.npad / kNR; ++p) {
    const TileScale sc{q.xs.p + p * kNR, ys, one_minus ? 1.0f : 0.0f, one_minus ? -1.0f : 1.0f};
    micro_kernel<MR>(y, C, q.xp.p + p * C * kNR, C, t + p * kNR, q.npad, sc);
  }
}

typedef float v4f __attribute__((vector_size(16)));  // SSE / NEON width, in every kernel set
#if defined(__clang__)
#define FASTFACE_SHUFFLE(a, b, i, j, k, l) __builtin_shufflevector(a, b, i, j, k, l)
#else
#define FASTFACE_SHUFFLE(a, b, i, j, k, l) __builtin_shuffle(a, b, (v4i){i, j, k, l})
#endif
typedef int32_t v4i __attribute__((vector_size(16)));

inline v4f load4(const float* p) {
  v4f v;
  std::memcpy(&v, p, 16);
  return v;
}

// D_ij = t_ji from t (m, npad): 4 x 4 blocks transposed in registers, the edges one by one.
inline void transpose_into(const float* t, int64_t npad, int64_t n, int64_t m, float* D) {
  const int64_t n4 = n / 4 * 4, m4 = m / 4 * 4;
  for (int64_t j = 0; j < m4; j += 4) {
    for (int64_t i = 0; i < n4; i += 4) {
      const v4f r0 = load4(t + j * npad + i), r1 = load4(t + (j + 1) * npad + i);
      const v4f r2 = load4(t + (j + 2) * npad + i), r3 = load4(t + (j + 3) * npad + i);
      const v4f t0 = FASTFACE_SHUFFLE(r0, r1, 0, 4, 1, 5), t1 = FASTFACE_SHUFFLE(r0, r1, 2, 6, 3, 7);
      const v4f t2 = FASTFACE_SHUFFLE(r2, r3, 0, 4, 1, 5), t3 = FASTFACE_SHUFFLE(r2, r3, 2, 6, 3, 7);
      const v4f c[4] = {FASTFACE_SHUFFLE(t0, t2, 0, 1, 4, 5), FASTFACE_SHUFFLE(t0, t2, 2, 3, 6, 7),
                        FASTFACE_SHUFFLE(t1, t3, 0, 1, 4, 5), FASTFACE_SHUFFLE(t1, t3, 2, 3, 6, 7)};
      for (int k = 0; k < 4; ++k) std::memcpy(D + (i + k) * m + j, &c[k], 16);
    }
  }
  for (int64_t i = 0; i < n; ++i)
    for (int64_t j = (i < n4 ? m4 : 0); j < m; ++j) D[i * m + j] = t[j * npad + i];
}

// The last rows (fewer than kMR) of Y: the micro-kernel of exactly that height.
template <int R>
inline void last_rows(int64_t rows, const float* y, int64_t C, const PackedQuery& q, float* t, const float* ys,
                      bool one_minus) {
  if (rows == R) return rows_times_panels<R>(y, C, q, t, ys, one_minus);
  if constexpr (R > 1) last_rows<R - 1>(rows, y, C, q, t, ys, one_minus);
}

// Per-thread buffers of the candidate side.
struct CandidateWork {
  simd::Buffer t, ys, ycopy, yfloat;
  std::vector<double> norm;  // floored norms of the candidate's rows
  std::vector<int> ex;       // their power-of-two exponents
  bool finite = true;        // no NaN or inf in the last Y
};

// D (n, m) = cosines of the packed query and Y (m, C) (1 - cosines when one_minus); w.norm gets
// Y's floored row norms.
template <typename In>
inline void cosines(const PackedQuery& q, const In* Yin, int64_t m, CandidateWork& w, float* D,
                    bool one_minus = false) {
  const int64_t C = q.C, npad = q.npad, n = q.n;
  const float* Y = reinterpret_cast<const float*>(Yin);
  if (!std::is_same<In, float>::value) {  // half inputs: converted once, then as float32
    float* yc = w.yfloat.get(m * C);
    to_float(Yin, yc, m * C);
    Y = yc;
  }
  float* ys = w.ys.get(m);
  w.norm.resize(m);
  std::vector<int>& ex = w.ex;
  ex.resize(m);
  bool in_range = true;
  w.finite = true;
  // every row's sum of squares first, then the norms: independent rows, no per-row chain of a
  // horizontal sum, a square root and a division for the CPU to wait on
  for (int64_t j = 0; j < m; ++j) ys[j] = sum_of_squares(Y + j * C, C);
  for (int64_t j = 0; j < m; ++j) {
    if (window_norm(ys[j], w.norm[j], ex[j])) continue;
    w.finite = row_norm_scaled(Y + j * C, C, w.norm[j], ex[j]) && w.finite;
    in_range = in_range && ex[j] > -60 && ex[j] < 60;
  }
  const float* y = Y;
  if (!in_range) {  // copy every row scaled to [0.5, 1)
    float* yc = w.ycopy.get(m * C);
    for (int64_t j = 0; j < m; ++j) {
      scale_row(Y + j * C, yc + j * C, C, ex[j]);
      ys[j] = float(std::ldexp(1.0, ex[j]) / w.norm[j]);
    }
    y = yc;
  } else {
    for (int64_t j = 0; j < m; ++j) ys[j] = float(1.0 / w.norm[j]);
  }
  float* t = w.t.get(m * npad);
  int64_t j0 = 0;
  for (; j0 + kMR <= m; j0 += kMR) rows_times_panels<kMR>(y + j0 * C, C, q, t + j0 * npad, ys + j0, one_minus);
  if (m > j0) last_rows<kMR - 1>(m - j0, y + j0 * C, C, q, t + j0 * npad, ys + j0, one_minus);
  transpose_into(t, npad, n, m, D);
  if (C == 1) {  // 1-channel patches above the norm floor: the sign product, exactly (as x / |x|)
    auto sign = [](float v) { return float((v > 0.0f) - (v < 0.0f)); };
    for (int64_t i = 0; i < n; ++i)
      for (int64_t j = 0; j < m; ++j) {
        if (!(q.norm[i] > kNormFloor && w.norm[j] > kNormFloor)) continue;
        const float c = sign(q.xp.p[i]) * sign(y[j]);  // C = 1: panel p, column i % kNR is xp[i]
        D[i * m + j] = one_minus ? 1.0f - c : c;
      }
  }
}

// max(||mean of the rows||, kNormFloor) of X (len, C) with row_norm's exponents ex (each row's
// largest |x| below 2^ex[t], or below 2^20 where ex[t] = 0): rows scaled by one power of two (exact)
// so that float sums cannot overflow; acc holds C floats.
inline double mean_norm(const float* X, int64_t len, int64_t C, const std::vector<int>& ex,
                        simd::Buffer& acc_buf) {
  int E = -1000;
  for (int64_t t = 0; t < len; ++t) E = std::max(E, ex[t]);
  float* acc = acc_buf.get(2 * C);
  std::fill(acc, acc + C, 0.0f);
  for (int64_t t = 0; t < len; ++t) {
    const float* row = X + t * C;
    if (E <= -126 || E >= 127) {  // subnormal rows: scaled one at a time, exactly
      scale_row(row, acc + C, C, E);
      row = acc + C;
    }
    const float inv = E > -126 && E < 127 ? simd::bits_to_float_u(uint32_t(127 - E) << 23) : 1.0f;
    int64_t c = 0;
    for (; c + kLanes <= C; c += kLanes) simd::store(acc + c, simd::load(acc + c) + simd::load(row + c) * inv);
    for (; c < C; ++c) acc[c] += row[c] * inv;
  }
  double s = 0;
  for (int64_t c = 0; c < C; ++c) s += (double(acc[c]) / len) * (double(acc[c]) / len);
  return std::max(std::ldexp(std::sqrt(s), E), kNormFloor);
}

}  // namespace gemm
}  // namespace FASTFACE_ISA_NS
}  // namespace cpu
}  // namespace fastface
