// Fused ConvTranspose2d chains on the CPU (FusedGenerator): a whole chain per call.
//
// Per layer, per group of G samples (all threads cooperate on each layer; two barriers per layer):
//   1. GEMM    cols (N, M) = X (N, Cin) . W (Cin, M), N = G * hin * win input pixels,
//              M = kh * kw * Cout ordered (tap, co); X is stored packed in MR-row panels
//              (written so by the previous layer), W pre-packed in NR-column panels
//              (conv_transpose_pack), register-blocked MR x NR micro-kernel (broadcast X, FMA).
//   2. col2im  each output row (b, oy) gathers its taps from cols, starting from the bias,
//              applies the activation and the post-affine, and writes either the next layer's
//              packed X or, for the last layer, the NCHW output.
// Small batches therefore run the whole chain in one call with no Python between layers; large
// batches are cut into groups whose buffers stay in cache.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <new>
#include <stdexcept>
#include <string>

#ifdef _OPENMP
#include <omp.h>
#endif
#if defined(__linux__)
#include <sys/mman.h>
#endif

#include "isa.h"
#include "parallel.h"

namespace fastface {
namespace cpu {
namespace FASTFACE_ISA_NS {

namespace {

// ---- vector width of the build (GCC vector extensions; -march=native picks the widest) ----
#if defined(__AVX512F__)
constexpr int kVec = 16;
constexpr int kMR = 12;  // 12 x 2 accumulators + 2 weight vectors + 1 broadcast <= 32 zmm
#elif defined(__AVX__)
constexpr int kVec = 8;
constexpr int kMR = 6;   // 6 x 2 accumulators + 3 <= 16 ymm
#else
constexpr int kVec = 4;
constexpr int kMR = 4;
#endif
constexpr int kNR = 2 * kVec;  // weight columns per micro-tile
typedef float vfloat __attribute__((vector_size(kVec * 4), aligned(4)));   // unaligned loads ok
typedef int32_t vint __attribute__((vector_size(kVec * 4), aligned(4)));

inline int64_t round_up(int64_t v, int64_t r) { return (v + r - 1) / r * r; }

// Ask Linux for transparent huge pages on the whole 2 MB pages inside [p, p + bytes) (streamed
// weights and scratch: fewer TLB misses; a hint, no effect elsewhere or when THP is off).
inline void advise_huge_pages(const void* p, size_t bytes) {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  constexpr uintptr_t kHuge = uintptr_t(2) << 20;
  const uintptr_t lo = (reinterpret_cast<uintptr_t>(p) + kHuge - 1) & ~(kHuge - 1);
  const uintptr_t hi = (reinterpret_cast<uintptr_t>(p) + bytes) & ~(kHuge - 1);
  if (hi > lo) madvise(reinterpret_cast<void*>(lo), hi - lo, MADV_HUGEPAGE);
#else
  (void)p;
  (void)bytes;
#endif
}

// ---- activations, elementwise and vectorisable (no libm calls in the loops) ----
// exp: Cody-Waite reduction x = n ln2 + r and a degree-6 polynomial (Cephes expf), rel. err. ~1e-7.
template <typename V, typename VI>
inline V exp_approx(V x) {
  x = x > V{} + 88.3762626647949f ? V{} + 88.3762626647949f : x;
  x = x < V{} - 87.3365447505531f ? V{} - 87.3365447505531f : x;
  V fx = x * 1.44269504088896341f + 0.5f;
  VI ti = __builtin_convertvector(fx, VI);      // truncation
  V tf = __builtin_convertvector(ti, V);
  tf = tf > fx ? tf - 1.0f : tf;                // floor
  ti = __builtin_convertvector(tf, VI);
  V r = x - tf * 0.693359375f + tf * 2.12194440e-4f;
  V y = ((((1.9875691500e-4f * r + 1.3981999507e-3f) * r + 8.3334519073e-3f) * r + 4.1665795894e-2f) * r +
         1.6666665459e-1f) * r + 5.0000001201e-1f;
  y = y * (r * r) + r + 1.0f;
  const VI bits = (ti + 127) << 23;
  V scale;
  std::memcpy(&scale, &bits, sizeof(V));
  return y * scale;
}

// tanh: odd polynomial below 0.625 (Cephes tanhf), 1 - 2 / (exp(2|x|) + 1) above; NaN propagates.
template <typename V, typename VI>
inline V tanh_approx(V x) {
  const V a = x < 0.0f ? -x : x;
  const V z = x * x;
  const V small = ((((-5.70498872745e-3f * z + 2.06390887954e-2f) * z - 5.37397155531e-2f) * z +
                    1.33314422036e-1f) * z - 3.33332819422e-1f) * z * x + x;
  V big = 1.0f - 2.0f / (exp_approx<V, VI>(a + a) + 1.0f);
  big = x < 0.0f ? -big : big;
  return a < 0.625f ? small : big;
}

template <typename V, typename VI>
inline V sigmoid_approx(V x) { return 1.0f / (1.0f + exp_approx<V, VI>(-x)); }

template <typename V, typename VI>
inline V activate(V x, Activation act, float slope) {
  switch (act) {
    case Activation::ReLU: return x < 0.0f ? V{} : x;  // NaN passes, as in torch
    case Activation::LeakyReLU: return x < 0.0f ? x * slope : x;
    case Activation::Tanh: return tanh_approx<V, VI>(x);
    case Activation::Sigmoid: return sigmoid_approx<V, VI>(x);
    case Activation::None: break;
  }
  return x;
}

// Scalar lanes use one-element vectors so that both paths share the same arithmetic.
typedef float sfloat __attribute__((vector_size(4)));
typedef int32_t sint __attribute__((vector_size(4)));

void activate_inplace(float* v, int64_t n, Activation act, float slope) {
  if (act == Activation::None) return;
  int64_t i = 0;
  for (; i + kVec <= n; i += kVec) {
    vfloat x;
    std::memcpy(&x, v + i, sizeof(x));
    x = activate<vfloat, vint>(x, act, slope);
    std::memcpy(v + i, &x, sizeof(x));
  }
  for (; i < n; ++i) {
    sfloat x = {v[i]};
    v[i] = activate<sfloat, sint>(x, act, slope)[0];
  }
}

// ---- packed GEMM micro-kernel: C (MR, NR) = Xp (K, MR)^T . Wp (K, NR), ldc in floats ----
inline void micro_kernel(const float* __restrict xp, const float* __restrict wp, int64_t K,
                         float* __restrict c, int64_t ldc) {
  vfloat acc[kMR][2];
#pragma GCC unroll 16
  for (int r = 0; r < kMR; ++r) acc[r][0] = acc[r][1] = vfloat{};
  for (int64_t k = 0; k < K; ++k) {
    const vfloat w0 = *reinterpret_cast<const vfloat*>(wp + k * kNR);
    const vfloat w1 = *reinterpret_cast<const vfloat*>(wp + k * kNR + kVec);
#pragma GCC unroll 16
    for (int r = 0; r < kMR; ++r) {
      const float xv = xp[k * kMR + r];
      acc[r][0] += xv * w0;
      acc[r][1] += xv * w1;
    }
  }
#pragma GCC unroll 16
  for (int r = 0; r < kMR; ++r) {
    *reinterpret_cast<vfloat*>(c + r * ldc) = acc[r][0];
    *reinterpret_cast<vfloat*>(c + r * ldc + kVec) = acc[r][1];
  }
}

// ---- 64-byte aligned scratch that lives as long as the calling thread and only grows ----
struct Scratch {
  float* p = nullptr;
  int64_t n = 0;
  ~Scratch() { std::free(p); }
  float* get(int64_t floats) {
    if (floats > n) {
      std::free(p);
      p = nullptr;
      n = 0;
      const size_t align = floats * 4 >= (int64_t(2) << 20) ? size_t(2) << 20 : 64;
      const size_t bytes = size_t(round_up(std::max<int64_t>(floats, 16) * 4, int64_t(align)));
      p = static_cast<float*>(std::aligned_alloc(align, bytes));
      if (!p) throw std::bad_alloc();
      advise_huge_pages(p, bytes);
      std::memset(p, 0, bytes);
      n = int64_t(bytes / 4);
    }
    return p;
  }
};

// Even split of [0, total) over nt parts: part t is [lo, hi).
inline void split(int64_t total, int t, int nt, int64_t& lo, int64_t& hi) {
  lo = total * t / nt;
  hi = total * (t + 1) / nt;
}

struct LayerDims {
  int64_t hwin, N1, K, M, Mp;  // per sample: input pixels, N1 = hwin; K = cin; M = taps * cout
};

// Pack layer 0's input rows n = (b, iy, ix) of samples [b0, b0 + G) into MR-row panels,
// optionally L2-normalised over the channels of each pixel.
void pack_input(const float* x, int64_t b0, int64_t G, const ConvTLayer& L, bool normalize,
                float* xp, int t, int nt) {
  const int64_t hw = L.hin * L.win, K = L.cin, N = G * hw, Np = round_up(N, kMR);
  int64_t lo, hi;
  split(Np / kMR, t, nt, lo, hi);
  for (int64_t nb = lo; nb < hi; ++nb) {
    float* panel = xp + nb * K * kMR;
    for (int r = 0; r < kMR; ++r) {
      const int64_t n = nb * kMR + r;
      if (n >= N) {
        for (int64_t k = 0; k < K; ++k) panel[k * kMR + r] = 0.0f;
        continue;
      }
      const int64_t b = n / hw, p = n - b * hw;
      const float* src = x + (b0 + b) * K * hw + p;  // channel k at src[k * hw]
      float scale = 1.0f;
      if (normalize) {
        double ss = 0;
        for (int64_t k = 0; k < K; ++k) ss += double(src[k * hw]) * double(src[k * hw]);
        scale = float(1.0 / std::max(std::sqrt(ss), 1e-12));
      }
      for (int64_t k = 0; k < K; ++k) panel[k * kMR + r] = src[k * hw] * scale;
    }
  }
}

// cols (Np, Mp) = Xp . Wp over this thread's share of (panel, block) tiles, panel-major so
// that one weight panel serves many row blocks while it is in cache.
void gemm_share(const float* xp, const float* wp, const LayerDims& d, int64_t Np, float* cols,
                int t, int nt) {
  const int64_t nblocks = Np / kMR, npanels = d.Mp / kNR;
  int64_t lo, hi;
  split(nblocks * npanels, t, nt, lo, hi);
  for (int64_t w = lo; w < hi; ++w) {
    const int64_t mp = w / nblocks, nb = w - mp * nblocks;
    micro_kernel(xp + nb * d.K * kMR, wp + mp * d.K * kNR, d.K, cols + nb * kMR * d.Mp + mp * kNR,
                 d.Mp);
  }
}

// Gather every output row (b, oy) of this thread's share from cols, add bias, activate, and
// write the next layer's packed input (xp_next) or the NCHW output (out, samples from b0).
void col2im_share(const float* cols, const ConvTLayer& L, const LayerDims& d, int64_t G,
                  float* xp_next, float* out, int64_t b0, float* acc, int t, int nt) {
  const int64_t cout = L.cout, wout = L.wout, hout = L.hout;
  int64_t lo, hi;
  split(G * hout, t, nt, lo, hi);
  for (int64_t row = lo; row < hi; ++row) {
    const int64_t b = row / hout, oy = row - b * hout;
    // acc (wout, cout) starts at the bias.
    for (int64_t ox = 0; ox < wout; ++ox) {
      float* a = acc + ox * cout;
      if (L.bias)
        std::memcpy(a, L.bias, size_t(cout) * sizeof(float));
      else
        std::memset(a, 0, size_t(cout) * sizeof(float));
    }
    for (int64_t ky = 0; ky < L.kh; ++ky) {
      const int64_t ty = oy + L.ph - ky * L.dh;
      if (ty < 0 || ty % L.sh) continue;
      const int64_t iy = ty / L.sh;
      if (iy >= L.hin) continue;
      const float* crow = cols + (b * L.hin + iy) * L.win * d.Mp;
      for (int64_t kx = 0; kx < L.kw; ++kx) {
        const int64_t ox0 = kx * L.dw - L.pw;  // output column of input column 0
        const int64_t tap = (ky * L.kw + kx) * cout;
        int64_t ix = ox0 < 0 ? (-ox0 + L.sw - 1) / L.sw : 0;
        for (int64_t ox = ox0 + ix * L.sw; ix < L.win && ox < wout; ++ix, ox += L.sw) {
          const float* src = crow + ix * d.Mp + tap;
          float* a = acc + ox * cout;
#pragma omp simd
          for (int64_t co = 0; co < cout; ++co) a[co] += src[co];
        }
      }
    }
    activate_inplace(acc, wout * cout, L.act, L.slope);
    if (L.post_scale || L.post_shift) {
      for (int64_t ox = 0; ox < wout; ++ox)
        for (int64_t co = 0; co < cout; ++co) {
          float& v = acc[ox * cout + co];
          if (L.post_scale) v *= L.post_scale[co];
          if (L.post_shift) v += L.post_shift[co];
        }
    }
    if (out) {
      float* o = out + (b0 + b) * cout * hout * wout + oy * wout;  // channel co at o[co * hout * wout]
      for (int64_t co = 0; co < cout; ++co)
        for (int64_t ox = 0; ox < wout; ++ox) o[co * hout * wout + ox] = acc[ox * cout + co];
    } else {
      // Next layer's packed input: row n = (b, oy, ox), channel co at panel[co * MR + n % MR].
      for (int64_t ox = 0; ox < wout; ++ox) {
        const int64_t n = (b * hout + oy) * wout + ox;
        float* dst = xp_next + (n / kMR) * cout * kMR + n % kMR;
        const float* a = acc + ox * cout;
        for (int64_t co = 0; co < cout; ++co) dst[co * kMR] = a[co];
      }
    }
  }
  // Padding rows of the next packed input (past G * hout * wout) are zeroed by one thread.
  if (!out && t == 0) {
    const int64_t N = G * hout * wout, Np = round_up(N, kMR);
    for (int64_t n = N; n < Np; ++n) {
      float* dst = xp_next + (n / kMR) * cout * kMR + n % kMR;
      for (int64_t co = 0; co < cout; ++co) dst[co * kMR] = 0.0f;
    }
  }
}

inline void barrier() {
#ifdef _OPENMP
#pragma omp barrier
#endif
}

}  // namespace

int64_t conv_transpose_packed_size(int64_t cin, int64_t cout, int64_t kh, int64_t kw) {
  return cin * round_up(kh * kw * cout, kNR);
}

void conv_transpose_pack(const float* w, float* packed, int64_t cin, int64_t cout, int64_t kh,
                         int64_t kw) {
  const int64_t taps = kh * kw, M = taps * cout, Mp = round_up(M, kNR);
  // packed[panel][k][j] = W[k, co, tap] for column m = panel * NR + j = tap * cout + co.
  for (int64_t panel = 0; panel < Mp / kNR; ++panel)
    for (int64_t k = 0; k < cin; ++k)
      for (int64_t j = 0; j < kNR; ++j) {
        const int64_t m = panel * kNR + j;
        float v = 0.0f;
        if (m < M) {
          const int64_t tap = m / cout, co = m - tap * cout;
          v = w[(k * cout + co) * taps + tap];
        }
        packed[(panel * cin + k) * kNR + j] = v;
      }
  advise_huge_pages(packed, size_t(cin * Mp) * sizeof(float));
}

int conv_transpose_row_block() { return kMR; }
int conv_transpose_col_block() { return kNR; }

void conv_transpose_chain(const ConvTChainArgs& args, int n_threads) {
  if (args.dtype != DType::F32)
    throw std::invalid_argument("conv_transpose_chain (cpu): dtype must be float32");
  if (args.n_layers <= 0 || !args.layers)
    throw std::invalid_argument("conv_transpose_chain: the chain has no layers");
  if (args.B <= 0) return;
  const int nl = args.n_layers;
  const ConvTLayer* Ls = args.layers;
  for (int l = 0; l < nl; ++l) {
    const ConvTLayer& L = Ls[l];
    if (!L.weight || L.cin <= 0 || L.cout <= 0 || L.hin <= 0 || L.win <= 0 || L.hout <= 0 ||
        L.wout <= 0 || L.kh <= 0 || L.kw <= 0 || L.sh <= 0 || L.sw <= 0 || L.ph < 0 || L.pw < 0 ||
        L.dh <= 0 || L.dw <= 0)
      throw std::invalid_argument("conv_transpose_chain: invalid shape in layer " + std::to_string(l));
    if (l + 1 < nl && (Ls[l + 1].cin != L.cout || Ls[l + 1].hin != L.hout || Ls[l + 1].win != L.wout))
      throw std::invalid_argument("conv_transpose_chain: layer " + std::to_string(l + 1) +
                                  " input does not match layer " + std::to_string(l) + " output");
  }
  // Per-sample sizes and the group size G: buffers for G samples stay within a cache budget.
  LayerDims dims[64];
  if (nl > 64) throw std::invalid_argument("conv_transpose_chain: at most 64 layers");
  int64_t per_x = 0, per_c = 0;
  for (int l = 0; l < nl; ++l) {
    const ConvTLayer& L = Ls[l];
    LayerDims& d = dims[l];
    d.hwin = L.hin * L.win;
    d.N1 = d.hwin;
    d.K = L.cin;
    d.M = L.kh * L.kw * L.cout;
    d.Mp = round_up(d.M, kNR);
    per_x = std::max(per_x, d.hwin * d.K);
    per_c = std::max(per_c, d.hwin * d.Mp);
  }
  constexpr int64_t kBudgetFloats = int64_t(6) << 20;  // 24 MB of packed inputs + cols
  int64_t G = std::max<int64_t>(1, kBudgetFloats / (2 * per_x + per_c));
  if (G > kMR) G = G / kMR * kMR;
  G = std::min(G, args.B);
  const int64_t groups = (args.B + G - 1) / G;
  G = (args.B + groups - 1) / groups;  // even groups
  int64_t x_floats = 0, c_floats = 0, acc_floats = 0;
  for (int l = 0; l < nl; ++l) {
    const int64_t Np = round_up(G * dims[l].hwin, kMR);
    x_floats = std::max(x_floats, Np * dims[l].K);
    c_floats = std::max(c_floats, Np * dims[l].Mp);
    acc_floats = std::max(acc_floats, round_up(Ls[l].wout * Ls[l].cout, 16));
  }
  static thread_local Scratch s_x0, s_x1, s_cols;
  float* xbuf[2] = {s_x0.get(x_floats), s_x1.get(x_floats)};
  float* cols = s_cols.get(c_floats);
  const float* x = static_cast<const float*>(args.x);
  float* out = static_cast<float*>(args.out);
  const int64_t B = args.B;
  const bool normalize = args.normalize_input;
  const int nt_req = std::max(1, n_threads);
  (void)nt_req;  // unused without OpenMP

  ParallelErrors errors;
#pragma omp parallel num_threads(nt_req)
  {
#ifdef _OPENMP
    const int t = omp_get_thread_num(), nt = omp_get_num_threads();
#else
    const int t = 0, nt = 1;
#endif
    static thread_local Scratch s_acc;  // per worker thread (the OpenMP pool persists)
    float* acc = nullptr;
    errors.run([&] { acc = s_acc.get(acc_floats); });
    barrier();  // after it every thread sees the same errors.failed(): all skip, or none
    if (!errors.failed()) {
      for (int64_t b0 = 0; b0 < B; b0 += G) {
        const int64_t g = std::min(G, B - b0);
        pack_input(x, b0, g, Ls[0], normalize, xbuf[0], t, nt);
        barrier();
        for (int l = 0; l < nl; ++l) {
          const ConvTLayer& L = Ls[l];
          const int64_t Np = round_up(g * dims[l].hwin, kMR);
          gemm_share(xbuf[l & 1], L.weight, dims[l], Np, cols, t, nt);
          barrier();
          const bool last = l + 1 == nl;
          col2im_share(cols, L, dims[l], g, last ? nullptr : xbuf[(l + 1) & 1],
                       last ? out : nullptr, b0, acc, t, nt);
          barrier();
        }
      }
    }
  }
  errors.rethrow_first();
}

}  // namespace FASTFACE_ISA_NS
}  // namespace cpu
}  // namespace fastface
