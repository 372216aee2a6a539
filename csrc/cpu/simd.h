// Float vectors of the instruction set a kernel file is compiled for (GCC/Clang vector extensions:
// 16 lanes with AVX-512, 8 with AVX2, 4 with SSE or NEON), and the few operations the kernels need.
#pragma once
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <new>

#include "isa.h"  // FASTFACE_ISA_NS

namespace fastface {
namespace cpu {
namespace FASTFACE_ISA_NS {
namespace simd {

#if defined(__AVX512F__)
constexpr int kLanes = 16;
#elif defined(__AVX__)
constexpr int kLanes = 8;
#else
constexpr int kLanes = 4;
#endif

typedef float vf __attribute__((vector_size(kLanes * 4)));
typedef int32_t vi __attribute__((vector_size(kLanes * 4)));

inline int64_t round_up(int64_t v, int64_t r) { return (v + r - 1) / r * r; }

inline vf load(const float* p) {  // any alignment
  vf v;
  std::memcpy(&v, p, sizeof v);
  return v;
}
inline void store(float* p, vf v) { std::memcpy(p, &v, sizeof v); }
inline vf splat(float s) { return vf{} + s; }
inline float bits_to_float_u(uint32_t b) {
  float f;
  std::memcpy(&f, &b, 4);
  return f;
}
inline vf vmin(vf a, vf b) { return a < b ? a : b; }
inline vf vmax(vf a, vf b) { return a > b ? a : b; }
inline vf vabs(vf a) {
  vi bits;
  std::memcpy(&bits, &a, sizeof a);
  bits &= 0x7fffffff;
  std::memcpy(&a, &bits, sizeof a);
  return a;
}
// Horizontal reductions: halves combined down to 4 lanes (vector instructions), then 4 scalars.
typedef float v4 __attribute__((vector_size(16)));
template <typename Op>
inline float reduce(vf v, Op op) {
  v4 q;
#if defined(__AVX512F__)
  typedef float v8 __attribute__((vector_size(32)));
  v8 lo, hi;
  std::memcpy(&lo, &v, 32);
  std::memcpy(&hi, reinterpret_cast<const char*>(&v) + 32, 32);
  const v8 h = op(lo, hi);
  v4 a, b;
  std::memcpy(&a, &h, 16);
  std::memcpy(&b, reinterpret_cast<const char*>(&h) + 16, 16);
  q = op(a, b);
#elif defined(__AVX__)
  v4 a, b;
  std::memcpy(&a, &v, 16);
  std::memcpy(&b, reinterpret_cast<const char*>(&v) + 16, 16);
  q = op(a, b);
#else
  q = v;
#endif
  const float x = op(q[0], q[1]), y = op(q[2], q[3]);
  return op(x, y);
}
struct Add { template <typename T> T operator()(T a, T b) const { return a + b; } };
struct Min { template <typename T> T operator()(T a, T b) const { return a < b ? a : b; } };
struct Max { template <typename T> T operator()(T a, T b) const { return a > b ? a : b; } };
inline float hsum(vf v) { return reduce(v, Add()); }
inline float hmin(vf v) { return reduce(v, Min()); }
inline float hmax(vf v) { return reduce(v, Max()); }

// 2^k for integer k in [-126, 127], built in the exponent field.
inline vf pow2i(vi k) {
  vi bits = (k + 127) << 23;
  vf out;
  std::memcpy(&out, &bits, sizeof out);
  return out;
}

// exp(x) to about 2 ulp (Cephes expf: Cody-Waite reduction, degree-6 polynomial), 0 below -104
// (subnormal results come from two exact power-of-two scalings), +inf above 88.72.
inline vf exp(vf x) {
  const vf big = splat(12582912.0f);  // 1.5 * 2^23: adding and subtracting it rounds to an integer
  const vf xc = vmin(vmax(x, splat(-104.0f)), splat(88.72f));
  const vf n = (xc * 1.44269504088896341f + big) - big;
  vf r = xc - n * 0.693359375f;
  r = r - n * -2.12194440e-4f;
  vf p = splat(1.9875691500e-4f);
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * (r * r) + r + 1.0f;
  const vi k = __builtin_convertvector(n, vi);
  const vi k1 = k >> 1;
  vf out = p * pow2i(k1) * pow2i(k - k1);
  out = x < -104.0f ? vf{} : out;
  out = x > 88.72f ? splat(__builtin_inff()) : out;
  return out;
}

// A 64-byte aligned float buffer that only grows (per-thread workspaces).
struct Buffer {
  float* p = nullptr;
  int64_t n = 0;
  Buffer() = default;
  Buffer(const Buffer&) = delete;
  Buffer& operator=(const Buffer&) = delete;
  ~Buffer() { std::free(p); }
  float* get(int64_t floats) {
    if (floats > (int64_t(1) << 60) / 4) throw std::bad_alloc();  // bytes would overflow
    if (floats > n) {
      std::free(p);
      p = nullptr;
      n = 0;
      const size_t bytes = size_t(round_up(floats < 16 ? 16 : floats, 16)) * 4;
      p = static_cast<float*>(std::aligned_alloc(64, bytes));
      if (!p) throw std::bad_alloc();
      n = int64_t(bytes / 4);
    }
    return p;
  }
};

}  // namespace simd
}  // namespace FASTFACE_ISA_NS
}  // namespace cpu
}  // namespace fastface
