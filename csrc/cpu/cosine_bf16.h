// Cosines of bfloat16 patch sets with the AVX-512 BF16 dot products (vdpbf16ps: two bf16 products
// per float32 lane, fp32 accumulation): cosine_gemm.h's product with pairs of channels per step.
// Only in the avx512 kernel set, and only called on CPUs with avx512_bf16 (checked at run time).
#pragma once
#if defined(__AVX512F__) && defined(FASTFACE_HAVE_AVX512_BF16)
#include <immintrin.h>

#include <algorithm>
#include <cstring>

#include "cosine_gemm.h"

#define FASTFACE_HAS_BF16_DOTS 1

namespace fastface {
namespace cpu {
namespace FASTFACE_ISA_NS {
namespace gemm_bf16 {

using gemm::Bf16;
constexpr int kMR = 6, kNV = 4, kNR = 64;  // 24 zmm accumulators, panels of 64 query rows

inline bool cpu_has_bf16_dots() { return __builtin_cpu_supports("avx512bf16"); }

// The packed query: panels (C / 2, kNR, 2) of bf16 pairs, rows scaled by a power of two (exact).
struct PackedQuery {
  simd::Buffer xp, xs, row;
  std::vector<double> norm;
  int64_t n = 0, C = 0, npad = 0;
  bool finite = true;
};

inline uint16_t* pairs(simd::Buffer& b, int64_t count) { return reinterpret_cast<uint16_t*>(b.get(count / 2 + 1)); }

inline void pack_query(const Bf16* X, int64_t n, int64_t C, PackedQuery& q) {  // C even
  q.n = n;
  q.C = C;
  q.npad = simd::round_up(n, kNR);
  uint16_t* xp = pairs(q.xp, q.npad * C);
  float* xs = q.xs.get(q.npad);
  float* row = q.row.get(C);
  q.norm.resize(n);
  q.finite = true;
  for (int64_t i = 0; i < q.npad; ++i) {
    uint16_t* dst = xp + (i / kNR) * C * kNR + (i % kNR) * 2;
    xs[i] = 0.0f;
    if (i >= n) {
      for (int64_t c = 0; c < C; ++c) dst[(c / 2) * kNR * 2 + (c & 1)] = 0;
      continue;
    }
    gemm::to_float(X + i * C, row, C);
    int e;
    q.finite = gemm::row_norm(row, C, q.norm[i], e) && q.finite;
    if (e != 0) gemm::scale_row(row, row, C, e);
    for (int64_t c = 0; c < C; ++c) {  // bf16 times a power of two is a bf16: truncation is exact
      uint32_t b;
      const float v = row[c];
      std::memcpy(&b, &v, 4);
      dst[(c / 2) * kNR * 2 + (c & 1)] = uint16_t(b >> 16);
    }
    xs[i] = float(std::ldexp(1.0, e) / q.norm[i]);
  }
}

// t[r * ldt + (0..kNR)] = sum_c y[r * C + c] * panel column, r < MR, from bf16 pairs.
template <int MR>
__attribute__((target("avx512f,avx512bw,avx512bf16"), noinline)) void micro_kernel(
    const uint16_t* __restrict y, int64_t C, const uint16_t* __restrict panel, float* __restrict t,
    int64_t ldt, const gemm::TileScale& sc) {
  __m512 acc[MR][kNV];
  for (int r = 0; r < MR; ++r)
    for (int v = 0; v < kNV; ++v) acc[r][v] = _mm512_setzero_ps();
  const uint16_t* rows[MR];  // one pointer per row: no strides re-read in the loop (gemm::micro_kernel)
  for (int r = 0; r < MR; ++r) rows[r] = y + r * C;
  for (int64_t k2 = 0; k2 < C / 2; ++k2) {
    __m512i b[kNV];
    for (int v = 0; v < kNV; ++v) b[v] = _mm512_loadu_si512(panel + k2 * kNR * 2 + v * 32);
    for (int r = 0; r < MR; ++r) {
      uint32_t w;
      std::memcpy(&w, rows[r] + 2 * k2, 4);
      const __m512i s = _mm512_set1_epi32(int(w));
      for (int v = 0; v < kNV; ++v) acc[r][v] = _mm512_dpbf16_ps(acc[r][v], (__m512bh)s, (__m512bh)b[v]);
    }
  }
  for (int r = 0; r < MR; ++r) {
    const __m512 yr = _mm512_set1_ps(sc.sign * sc.ys[r]), shift = _mm512_set1_ps(sc.shift);
    for (int v = 0; v < kNV; ++v)
      _mm512_storeu_ps(t + r * ldt + v * 16,
                       _mm512_fmadd_ps(acc[r][v], _mm512_mul_ps(_mm512_loadu_ps(sc.xs + v * 16), yr), shift));
  }
}

template <int MR>
__attribute__((target("avx512f,avx512bw,avx512bf16"))) inline void rows_times_panels(
    const uint16_t* y, const PackedQuery& q, float* t, const float* ys, bool one_minus) {
  const uint16_t* xp = reinterpret_cast<const uint16_t*>(q.xp.p);
  for (int64_t p = 0; p < q.npad / kNR; ++p) {
    const gemm::TileScale sc{q.xs.p + p * kNR, ys, one_minus ? 1.0f : 0.0f, one_minus ? -1.0f : 1.0f};
    micro_kernel<MR>(y, q.C, xp + p * q.C * kNR, t + p * kNR, q.npad, sc);
  }
}

// The largest |v| of a bf16 row as its bits (sign cleared), 32 lanes at a time.
__attribute__((target("avx512f,avx512bw"))) inline uint16_t largest_magnitude_bits(const uint16_t* row, int64_t C) {
  const __m512i mask = _mm512_set1_epi16(0x7fff);
  __m512i big = _mm512_setzero_si512();
  int64_t c = 0;
  for (; c + 32 <= C; c += 32) big = _mm512_max_epu16(big, _mm512_and_si512(_mm512_loadu_si512(row + c), mask));
  const __m256i h = _mm256_max_epu16(_mm512_castsi512_si256(big), _mm512_extracti64x4_epi64(big, 1));
  const __m128i q = _mm_max_epu16(_mm256_castsi256_si128(h), _mm256_extracti128_si256(h, 1));
  // the max of 8 lanes: the min (phminposuw) of their complements
  uint16_t largest = uint16_t(~_mm_cvtsi128_si32(_mm_minpos_epu16(_mm_xor_si128(q, _mm_set1_epi16(-1)))));
  for (; c < C; ++c) largest = std::max<uint16_t>(largest, row[c] & 0x7fffu);
  return largest;
}

// D (n, m) as gemm::cosines; false (nothing written) when a row of Y is beyond 2^+-60, where raw
// products could overflow: the caller then takes the float32 path.
__attribute__((target("avx512f,avx512bw,avx512bf16"))) inline bool cosines(
    const PackedQuery& q, const Bf16* Y, int64_t m, gemm::CandidateWork& w, float* D, bool one_minus) {
  const int64_t C = q.C, npad = q.npad;
  float* ys = w.ys.get(m);
  w.norm.resize(m);
  w.finite = true;
  const uint16_t* y = reinterpret_cast<const uint16_t*>(Y);
  // The largest |y| from the bits (exponent field), then |y|^2 with the dot products themselves:
  // exact products, float32 sums, no overflow or underflow inside 2^+-60. Every row's sum first,
  // then the norms (no per-row chain of a sum, a square root and a division to wait on).
  for (int64_t j = 0; j < m; ++j) {
    const uint16_t* row = y + j * C;
    const uint16_t largest = largest_magnitude_bits(row, C);
    if (largest >= 0x7f80u) w.finite = false;  // inf or NaN: flagged, and the float32 path runs
    const int e = int(largest >> 7) - 126;     // largest < 2^e
    if (largest != 0 && (e <= -60 || e >= 60 || largest >= 0x7f80u)) return false;
    __m512 sq0 = _mm512_setzero_ps(), sq1 = _mm512_setzero_ps();
    int64_t c = 0;
    for (; c + 64 <= C; c += 64) {
      const __m512i v0 = _mm512_loadu_si512(row + c), v1 = _mm512_loadu_si512(row + c + 32);
      sq0 = _mm512_dpbf16_ps(sq0, (__m512bh)v0, (__m512bh)v0);
      sq1 = _mm512_dpbf16_ps(sq1, (__m512bh)v1, (__m512bh)v1);
    }
    for (; c + 32 <= C; c += 32) {
      const __m512i v = _mm512_loadu_si512(row + c);
      sq0 = _mm512_dpbf16_ps(sq0, (__m512bh)v, (__m512bh)v);
    }
    double s = _mm512_reduce_add_ps(_mm512_add_ps(sq0, sq1));
    for (; c < C; ++c) {
      const double v = gemm::bits_to_float(uint32_t(row[c]) << 16);
      s += v * v;
    }
    w.norm[j] = s;
  }
  for (int64_t j = 0; j < m; ++j) {
    w.norm[j] = std::max(std::sqrt(w.norm[j]), kNormFloor);
    ys[j] = float(1.0 / w.norm[j]);
  }
  float* t = w.t.get(m * npad);
  int64_t j0 = 0;
  for (; j0 + kMR <= m; j0 += kMR) rows_times_panels<kMR>(y + j0 * C, q, t + j0 * npad, ys + j0, one_minus);
  switch (m - j0) {
    case 5: rows_times_panels<5>(y + j0 * C, q, t + j0 * npad, ys + j0, one_minus); break;
    case 4: rows_times_panels<4>(y + j0 * C, q, t + j0 * npad, ys + j0, one_minus); break;
    case 3: rows_times_panels<3>(y + j0 * C, q, t + j0 * npad, ys + j0, one_minus); break;
    case 2: rows_times_panels<2>(y + j0 * C, q, t + j0 * npad, ys + j0, one_minus); break;
    case 1: rows_times_panels<1>(y + j0 * C, q, t + j0 * npad, ys + j0, one_minus); break;
    default: break;
  }
  gemm::transpose_into(t, npad, q.n, m, D);
  return true;
}

}  // namespace gemm_bf16
}  // namespace FASTFACE_ISA_NS
}  // namespace cpu
}  // namespace fastface
#endif
