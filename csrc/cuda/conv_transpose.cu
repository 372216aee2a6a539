// Fused ConvTranspose2d chains on the GPU (FusedGenerator). Two paths, float32 accumulation:
//
//  chain  (small batches, one launch): a cluster of `cluster` blocks per sample (up to 16 on sm_90,
//         1 elsewhere), the sample's activations in shared memory. Every block holds the whole
//         input activation of the current layer and computes a slice of output rows (co, oy);
//         after each layer the cluster all-gathers the slices through distributed shared
//         memory. The last layer writes the output directly. Nothing touches global memory
//         between layers.
//  layers (large batches, one launch per layer): an implicit GEMM in gather form. Output pixels
//         are split by stride phase (oy % sh, ox % sw), so that every pixel of a tile has the
//         same candidate taps; a 64-pixel x 64-channel tile accumulates over (tap, Cin) in
//         16-deep chunks staged in shared memory, 4 x 4 outputs per thread, taps that no pixel
//         of the tile reaches are skipped. Bias, activation and post-affine run in the
//         epilogue; intermediates are float32 in the caller's workspace.
// Weights are float32 (Cin, kh, kw, Cout); x / out are float32, float16 or bfloat16.
#include <cooperative_groups.h>

#include <algorithm>
#include <cstdint>
#include <limits>
#include <map>
#include <mutex>
#include <stdexcept>
#include <string>
#include <tuple>
#include <type_traits>

#include "common.cuh"
#include "convt_launchers.h"

namespace fastface {
namespace cuda {

namespace {

constexpr int kMaxChainLayers = 16;
constexpr int kChainThreads = 256;
constexpr int kChainMaxBatch = 16;   // auto: chain path up to this batch (sm_90+)
constexpr int kMaxCluster = 16;      // non-portable cluster size on H100 / H200
constexpr int kBM = 64, kBN = 64, kBK = 16, kLayerThreads = 256;
constexpr int kAsLd = kBM + 4;       // padded rows: 16-byte aligned, fewer store conflicts

// One layer as the kernels see it (per-sample sizes fit in int; checked by the launcher).
struct DevLayer {
  const float* w;     // (Cin, kh, kw, Cout)
  const float* bias;  // (Cout) or null
  const float* post_scale;  // (Cout) or null
  const float* post_shift;  // (Cout) or null
  int cin, cout, hin, win, hout, wout, kh, kw, sh, sw, ph, pw, dh, dw;
  int act;
  float slope;
};

template <typename T> __device__ __forceinline__ T from_float(float v);
template <> __device__ __forceinline__ float from_float<float>(float v) { return v; }
template <> __device__ __forceinline__ __half from_float<__half>(float v) { return __float2half_rn(v); }
template <> __device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float v) {
  return __float2bfloat16_rn(v);
}

// y = post_scale * act(acc + bias) + post_shift for output channel co.
__device__ __forceinline__ float epilogue(const DevLayer& L, int co, float acc) {
  float v = acc + (L.bias ? __ldg(L.bias + co) : 0.0f);
  switch (L.act) {
    case int(Activation::ReLU): v = v < 0.0f ? 0.0f : v; break;  // NaN passes, as in torch
    case int(Activation::LeakyReLU): v = v < 0.0f ? v * L.slope : v; break;
    case int(Activation::Tanh): v = tanhf(v); break;
    case int(Activation::Sigmoid): v = 1.0f / (1.0f + expf(-v)); break;
    default: break;
  }
  if (L.post_scale) v *= __ldg(L.post_scale + co);
  if (L.post_shift) v += __ldg(L.post_shift + co);
  return v;
}

// ================================ chain path ====================================================

struct ChainLaunch {
  DevLayer layers[kMaxChainLayers];
  int n_layers;
  int normalize;
  int in_floats;     // capacity of act_in (max over layers of the input activation)
  int slice_floats;  // capacity of act_out (max over layers but the last of one block's rows)
  int64_t B;
};

// Rows [lo, hi) of `rows` owned by block `rank` of `cluster`.
__host__ __device__ __forceinline__ int row_begin(int rows, int rank, int cluster) {
  return int(int64_t(rows) * rank / cluster);
}

// j-th output column of a row in stride-phase-major order (ox = px, px + sw, ... for px = 0, 1, ...),
// so that neighbouring threads share their taps.
__device__ __forceinline__ int phase_major_column(int j, int wout, int sw) {
  for (int px = 0; px < sw; ++px) {
    const int n = px < wout ? (wout - px + sw - 1) / sw : 0;
    if (j < n) return px + j * sw;
    j -= n;
  }
  return 0;  // not reached for j < wout
}

// Sum over taps and input channels for output (co, oy, ox) of layer L from act_in (Cin, hin, win).
__device__ __forceinline__ float conv_point(const DevLayer& L, const float* act_in, int co, int oy,
                                            int ox) {
  float acc = 0.0f;
  const int plane = L.hin * L.win, wstride = L.kh * L.kw * L.cout;
  for (int ky = 0; ky < L.kh; ++ky) {
    const int ty = oy + L.ph - ky * L.dh;
    if (ty < 0 || ty % L.sh) continue;
    const int iy = ty / L.sh;
    if (iy >= L.hin) continue;
    for (int kx = 0; kx < L.kw; ++kx) {
      const int tx = ox + L.pw - kx * L.dw;
      if (tx < 0 || tx % L.sw) continue;
      const int ix = tx / L.sw;
      if (ix >= L.win) continue;
      const float* a = act_in + iy * L.win + ix;
      const float* w = L.w + (ky * L.kw + kx) * L.cout + co;
      for (int ci = 0; ci < L.cin; ++ci) acc = fmaf(a[ci * plane], __ldg(w + ci * wstride), acc);
    }
  }
  return acc;
}

__device__ __forceinline__ void cluster_barrier() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  cooperative_groups::this_cluster().sync();
#else
  __syncthreads();
#endif
}

// act_out of block `rank` of this cluster (this block's own when there is no cluster).
__device__ __forceinline__ const float* cluster_slice(float* act_out, int rank) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  return cooperative_groups::this_cluster().map_shared_rank(act_out, rank);
#else
  (void)rank;
  return act_out;
#endif
}

template <typename Tio>
__global__ void __launch_bounds__(kChainThreads) convt_chain_kernel(const ChainLaunch p,
                                                                   const Tio* __restrict__ x,
                                                                   Tio* __restrict__ y) {
  FASTFACE_DYNAMIC_SMEM(chain_smem);
  float* act_in = reinterpret_cast<float*>(chain_smem);  // (Cin, hin, win) of the current layer
  float* act_out = act_in + p.in_floats;                 // this block's rows of its output
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  const int cluster = int(cooperative_groups::this_cluster().num_blocks());
  const int rank = int(cooperative_groups::this_cluster().block_rank());
#else
  const int cluster = 1, rank = 0;
#endif
  const int t = threadIdx.x, nthreads = blockDim.x;
  const int64_t n_clusters = gridDim.x / cluster, cluster_id = blockIdx.x / cluster;
  const DevLayer& first = p.layers[0];
  const int in0 = first.cin * first.hin * first.win;
  for (int64_t b = cluster_id; b < p.B; b += n_clusters) {  // the same samples for the whole cluster
    const Tio* xs = x + b * in0;
    for (int i = t; i < in0; i += nthreads) act_in[i] = to_acc(xs[i]);
    __syncthreads();
    if (p.normalize) {  // x / max(||x||, 1e-12) over the channels of each pixel: a warp per pixel
      const int hw = first.hin * first.win, lane = t & 31;
      for (int pix = t >> 5; pix < hw; pix += nthreads >> 5) {
        float ss = 0.0f;
        for (int c = lane; c < first.cin; c += 32) ss += act_in[c * hw + pix] * act_in[c * hw + pix];
        const float inv = 1.0f / fmaxf(sqrtf(warp_sum(ss)), 1e-12f);
        for (int c = lane; c < first.cin; c += 32) act_in[c * hw + pix] *= inv;
      }
      __syncthreads();
    }
    for (int l = 0; l < p.n_layers; ++l) {
      const DevLayer& L = p.layers[l];
      const bool last = l + 1 == p.n_layers;
      const int rows = L.cout * L.hout;
      const int r_lo = row_begin(rows, rank, cluster), r_hi = row_begin(rows, rank + 1, cluster);
      const int n_el = (r_hi - r_lo) * L.wout;
      for (int e = t; e < n_el; e += nthreads) {
        const int r = r_lo + e / L.wout;
        const int co = r / L.hout, oy = r - co * L.hout;
        const int ox = phase_major_column(e % L.wout, L.wout, L.sw);
        const float v = epilogue(L, co, conv_point(L, act_in, co, oy, ox));
        if (last)
          y[b * rows * L.wout + int64_t(r) * L.wout + ox] = from_float<Tio>(v);
        else
          act_out[(r - r_lo) * L.wout + ox] = v;
      }
      if (!last) {
        cluster_barrier();  // all slices of layer l written; all reads of act_in done
        for (int q = 0; q < cluster; ++q) {
          const int q_lo = row_begin(rows, q, cluster), n = (row_begin(rows, q + 1, cluster) - q_lo) * L.wout;
          const float* src = cluster_slice(act_out, q);
          float* dst = act_in + q_lo * L.wout;
          for (int i = t; i < n; i += nthreads) dst[i] = src[i];
        }
        cluster_barrier();  // every block has its copy before any act_out is written again
      }
    }
    __syncthreads();  // the last layer's reads of act_in end before the next sample's load
  }
}

// ================================ layers path ===================================================

struct LayerLaunch {
  DevLayer L;
  int64_t B;
  int64_t tiles_per_phase;  // pixel tiles of the largest phase
  int co_tiles;
  int batch_inner;          // pixel order in a phase: 1 = (qy, qx, b), 0 = (b, qy, qx)
};

struct Pixel {
  int64_t b;
  int oy, ox;
  bool valid;
};

__device__ __forceinline__ Pixel decode_pixel(const LayerLaunch& p, int64_t m, int64_t npix, int nqy,
                                              int nqx, int py, int px) {
  Pixel q{0, 0, 0, m < npix};
  if (!q.valid) return q;
  int64_t pos;
  if (p.batch_inner) {
    pos = m / p.B;
    q.b = m - pos * p.B;
  } else {
    const int64_t per = int64_t(nqy) * nqx;
    q.b = m / per;
    pos = m - q.b * per;
  }
  const int qy = int(pos / nqx), qx = int(pos - int64_t(qy) * nqx);
  q.oy = py + qy * p.L.sh;
  q.ox = px + qx * p.L.sw;
  return q;
}

template <typename Tin, typename Tout>
__global__ void __launch_bounds__(kLayerThreads) convt_layer_kernel(const LayerLaunch p,
                                                                   const Tin* __restrict__ x,
                                                                   Tout* __restrict__ y) {
  __shared__ __align__(16) float As[kBK][kAsLd];  // (k, pixel)
  __shared__ __align__(16) float Bs[kBK][kBN];    // (k, channel)
  const DevLayer& L = p.L;
  const int t = threadIdx.x;
  const int tm = t & 15, tn = t >> 4;  // outputs: pixels 4 tm + i, channels 4 tn + j
  const int64_t in_plane = int64_t(L.hin) * L.win, in_sample = in_plane * L.cin;
  const int64_t out_plane = int64_t(L.hout) * L.wout, out_sample = out_plane * L.cout;
  const int64_t per_phase = p.tiles_per_phase * p.co_tiles;
  const int64_t total = per_phase * L.sh * L.sw;
  // Staging slots: A element r of this thread is (k, pixel) = (ka[r], ma[r]); B is (t / 64 + 4 r, t % 64).
  int ka[4], ma[4];
#pragma unroll
  for (int r = 0; r < 4; ++r) {
    if (p.batch_inner) {  // neighbouring threads read neighbouring channels of one sample
      ka[r] = t & 15;
      ma[r] = (t >> 4) + 16 * r;
    } else {              // neighbouring threads read neighbouring pixels of one channel
      ka[r] = (t >> 6) + 4 * r;
      ma[r] = t & 63;
    }
  }
  for (int64_t tile = blockIdx.x; tile < total; tile += gridDim.x) {
    const int phase = int(tile / per_phase);
    const int64_t rem = tile - phase * per_phase;
    const int64_t mt = rem / p.co_tiles;
    const int co0 = int(rem - mt * p.co_tiles) * kBN;
    const int py = phase / L.sw, px = phase - py * L.sw;
    const int nqy = py < L.hout ? (L.hout - py + L.sh - 1) / L.sh : 0;
    const int nqx = px < L.wout ? (L.wout - px + L.sw - 1) / L.sw : 0;
    const int64_t npix = p.B * nqy * nqx, m0 = mt * kBM;
    if (m0 >= npix) continue;  // uniform: this phase has fewer tiles
    Pixel pa[4];
#pragma unroll
    for (int r = 0; r < 4; ++r) pa[r] = decode_pixel(p, m0 + ma[r], npix, nqy, nqx, py, px);
    float acc[4][4];
#pragma unroll
    for (int i = 0; i < 4; ++i)
#pragma unroll
      for (int j = 0; j < 4; ++j) acc[i][j] = 0.0f;

    for (int ky = 0; ky < L.kh; ++ky) {
      if (((py + L.ph - ky * L.dh) % L.sh + L.sh) % L.sh) continue;  // not a tap of this phase
      for (int kx = 0; kx < L.kw; ++kx) {
        if (((px + L.pw - kx * L.dw) % L.sw + L.sw) % L.sw) continue;
        // Input offset of each staged pixel for this tap (-1: outside the input).
        int64_t base[4];
        int any = 0;
#pragma unroll
        for (int r = 0; r < 4; ++r) {
          const int ty = pa[r].oy + L.ph - ky * L.dh, tx = pa[r].ox + L.pw - kx * L.dw;
          const int iy = ty / L.sh, ix = tx / L.sw;  // exact: the tap belongs to the phase
          const bool ok = pa[r].valid && ty >= 0 && tx >= 0 && iy < L.hin && ix < L.win;
          base[r] = ok ? pa[r].b * in_sample + int64_t(iy) * L.win + ix : -1;
          any |= ok;
        }
        if (!__syncthreads_or(any)) continue;  // no pixel of the tile reaches this tap
        const float* wt = L.w + int64_t(ky * L.kw + kx) * L.cout;
        const int64_t wstride = int64_t(L.kh) * L.kw * L.cout;
        for (int ci0 = 0; ci0 < L.cin; ci0 += kBK) {
          float av[4], bv[4];
#pragma unroll
          for (int r = 0; r < 4; ++r) {
            const int ci = ci0 + ka[r];
            av[r] = base[r] >= 0 && ci < L.cin ? to_acc(x[base[r] + ci * in_plane]) : 0.0f;
            const int cb = ci0 + (t >> 6) + 4 * r, co = co0 + (t & 63);
            bv[r] = cb < L.cin && co < L.cout ? __ldg(wt + cb * wstride + co) : 0.0f;
          }
          __syncthreads();  // the previous chunk's reads of As / Bs are done
#pragma unroll
          for (int r = 0; r < 4; ++r) {
            As[ka[r]][ma[r]] = av[r];
            Bs[(t >> 6) + 4 * r][t & 63] = bv[r];
          }
          __syncthreads();
#pragma unroll
          for (int k = 0; k < kBK; ++k) {
            const float4 a = *reinterpret_cast<const float4*>(&As[k][4 * tm]);
            const float4 w = *reinterpret_cast<const float4*>(&Bs[k][4 * tn]);
            const float ar[4] = {a.x, a.y, a.z, a.w}, wr[4] = {w.x, w.y, w.z, w.w};
#pragma unroll
            for (int i = 0; i < 4; ++i)
#pragma unroll
              for (int j = 0; j < 4; ++j) acc[i][j] = fmaf(ar[i], wr[j], acc[i][j]);
          }
        }
      }
    }
    // Epilogue: pixels 4 tm + i, channels co0 + 4 tn + j.
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const Pixel q = decode_pixel(p, m0 + 4 * tm + i, npix, nqy, nqx, py, px);
      if (!q.valid) continue;
      Tout* o = y + q.b * out_sample + int64_t(q.oy) * L.wout + q.ox;
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        const int co = co0 + 4 * tn + j;
        if (co < L.cout) o[co * out_plane] = from_float<Tout>(epilogue(L, co, acc[i][j]));
      }
    }
  }
}

// y (B, C, H, W) float32 = x / max(||x||, 1e-12) over the channels of each pixel; a warp per pixel.
template <typename Tin>
__global__ void normalize_kernel(const Tin* __restrict__ x, float* __restrict__ y, int64_t B, int C,
                                 int hw) {
  const int lane = threadIdx.x & 31;
  const int64_t warps = (int64_t(gridDim.x) * blockDim.x) >> 5;
  for (int64_t w = (int64_t(blockIdx.x) * blockDim.x + threadIdx.x) >> 5; w < B * hw; w += warps) {
    const int64_t b = w / hw;
    const int pix = int(w - b * hw);
    const Tin* src = x + b * C * hw + pix;
    float ss = 0.0f;
    for (int c = lane; c < C; c += 32) {
      const float v = to_acc(src[int64_t(c) * hw]);
      ss += v * v;
    }
    const float inv = 1.0f / fmaxf(sqrtf(warp_sum(ss)), 1e-12f);
    for (int c = lane; c < C; c += 32) y[b * C * hw + int64_t(c) * hw + pix] = to_acc(src[int64_t(c) * hw]) * inv;
  }
}

// ================================ host side =====================================================

DevLayer to_dev(const ConvTLayer& L) {
  DevLayer layer;
  layer.w = L.weight; layer.bias = L.bias; layer.post_scale = L.post_scale; layer.post_shift = L.post_shift;
  layer.cin = int(L.cin); layer.cout = int(L.cout); layer.hin = int(L.hin); layer.win = int(L.win);
  layer.hout = int(L.hout); layer.wout = int(L.wout); layer.kh = int(L.kh); layer.kw = int(L.kw);
  layer.sh = int(L.sh); layer.sw = int(L.sw); layer.ph = int(L.ph); layer.pw = int(L.pw);
  layer.dh = int(L.dh); layer.dw = int(L.dw);
  layer.act = int(L.act); layer.slope = L.slope;
  return layer;
}

void validate(const ConvTChainArgs& a) {
  if (a.n_layers <= 0 || !a.layers)
    throw std::invalid_argument("conv_transpose_chain (cuda): the chain has no layers");
  if (a.dtype == DType::F64)
    throw std::invalid_argument("conv_transpose_chain (cuda): dtype must be float32, float16 or bfloat16");
  if (a.B < 0) throw std::invalid_argument("conv_transpose_chain (cuda): B must be >= 0");
  const int64_t lim = int64_t(1) << 31;
  for (int l = 0; l < a.n_layers; ++l) {
    const ConvTLayer& L = a.layers[l];
    const std::string where = "conv_transpose_chain (cuda): layer " + std::to_string(l);
    if (!L.weight || L.cin <= 0 || L.cout <= 0 || L.hin <= 0 || L.win <= 0 || L.hout <= 0 ||
        L.wout <= 0 || L.kh <= 0 || L.kw <= 0 || L.sh <= 0 || L.sw <= 0 || L.ph < 0 || L.pw < 0 ||
        L.dh <= 0 || L.dw <= 0)
      throw std::invalid_argument(where + ": invalid shape");
    if (L.cin * L.hin * L.win >= lim || L.cout * L.hout * L.wout >= lim ||
        L.cin * L.kh * L.kw * L.cout >= lim || L.sh * L.sw >= lim || L.kh * L.dh >= lim ||
        L.kw * L.dw >= lim || L.hout + L.ph + L.kh * L.dh >= lim || L.wout + L.pw + L.kw * L.dw >= lim)
      throw std::invalid_argument(where + ": per-sample sizes must be below 2^31");
    if (l + 1 < a.n_layers) {
      const ConvTLayer& N = a.layers[l + 1];
      if (N.cin != L.cout || N.hin != L.hout || N.win != L.wout)
        throw std::invalid_argument(where + ": output does not match the next layer's input");
    }
  }
}

struct DeviceInfo {
  int major = 0, sms = 0;
  size_t smem_optin = 0;
};

DeviceInfo device_info() {
  int dev = 0;
  DeviceInfo info;
  check_call(cudaGetDevice(&dev), "cudaGetDevice");
  check_call(cudaDeviceGetAttribute(&info.major, cudaDevAttrComputeCapabilityMajor, dev),
             "cudaDeviceGetAttribute");
  check_call(cudaDeviceGetAttribute(&info.sms, cudaDevAttrMultiProcessorCount, dev),
             "cudaDeviceGetAttribute");
  info.smem_optin = max_smem_optin();
  return info;
}

// Shared memory of the chain kernel for clusters of `cluster` blocks (floats -> bytes).
void chain_sizes(const ConvTChainArgs& a, int cluster, int& in_floats, int& slice_floats, size_t& bytes) {
  int64_t in = 0, slice = 0;
  for (int l = 0; l < a.n_layers; ++l) {
    const ConvTLayer& L = a.layers[l];
    in = std::max(in, L.cin * L.hin * L.win);
    if (l + 1 < a.n_layers) {
      const int64_t rows = L.cout * L.hout;
      slice = std::max(slice, (rows + cluster - 1) / cluster * L.wout);
    }
  }
  in = (in + 3) / 4 * 4;  // act_out stays 16-byte aligned
  const int64_t imax = std::numeric_limits<int>::max();
  in_floats = int(std::min(in, imax));
  slice_floats = int(std::min(std::max<int64_t>(slice, 4), imax));
  bytes = size_t(in + slice + 4) * sizeof(float);
}

// Lets the chain kernel use smem bytes of dynamic shared memory and clusters of `cluster` blocks;
// with max_clusters, returns how many such clusters can be resident at once.
template <typename Tio>
cudaError_t prepare_chain(int cluster, size_t smem, int* max_clusters) {
  auto kernel = convt_chain_kernel<Tio>;
  allow_max_smem<convt_chain_kernel<Tio>>();
  if (cluster > 8) {
    const cudaError_t e = cudaFuncSetAttribute(kernel, cudaFuncAttributeNonPortableClusterSizeAllowed, 1);
    if (e != cudaSuccess) return e;
  }
  if (!max_clusters) return cudaSuccess;
  cudaLaunchConfig_t cfg = {};
  cfg.gridDim = dim3(unsigned(cluster));
  cfg.blockDim = dim3(kChainThreads);
  cfg.dynamicSmemBytes = smem;
  cudaLaunchAttribute attr[1];
  attr[0].id = cudaLaunchAttributeClusterDimension;
  attr[0].val.clusterDim.x = unsigned(cluster);
  attr[0].val.clusterDim.y = 1;
  attr[0].val.clusterDim.z = 1;
  cfg.attrs = attr;
  cfg.numAttrs = 1;
  return cudaOccupancyMaxActiveClusters(max_clusters, kernel, &cfg);
}

// Largest cluster size (<= kMaxCluster) whose clusters fit on the device with this shared memory,
// and how many of them run at once; cached per (device, shared memory bytes).
template <typename Tio>
int pick_cluster(const ConvTChainArgs& a, const DeviceInfo& dev, int& cs_out, size_t& smem_out) {
  static std::mutex mu;
  static std::map<std::tuple<int, size_t, int>, std::pair<int, int>> cache;
  int device = 0;
  check_call(cudaGetDevice(&device), "cudaGetDevice");
  for (int cluster = dev.major >= 9 ? kMaxCluster : 1; cluster >= 1; cluster /= 2) {
    int in_f = 0, slice_f = 0;
    size_t smem = 0;
    chain_sizes(a, cluster, in_f, slice_f, smem);
    if (smem > dev.smem_optin) continue;
    if (cluster == 1) {
      cs_out = 1;
      smem_out = smem;
      return dev.sms;
    }
    const auto key = std::make_tuple(device, smem, cluster * 4 + int(a.dtype));
    {
      std::lock_guard<std::mutex> lock(mu);
      const auto it = cache.find(key);
      if (it != cache.end() && it->second.first > 0) {
        cs_out = cluster;
        smem_out = smem;
        return it->second.first;
      }
      if (it != cache.end()) continue;
    }
    int n = 0;
    const cudaError_t e = prepare_chain<Tio>(cluster, smem, &n);
    if (e != cudaSuccess) {
      cudaGetLastError();  // clear: this cluster size is not available, try a smaller one
      n = 0;
    }
    std::lock_guard<std::mutex> lock(mu);
    cache[key] = {n, cluster};
    if (n > 0) {
      cs_out = cluster;
      smem_out = smem;
      return n;
    }
  }
  return 0;  // does not fit in shared memory
}

// The path for these arguments on this device: chain (with its cluster size and shared memory)
// or layers. conv_transpose_workspace and conv_transpose_chain take the same decision.
struct Decision {
  bool chain = false;
  int cluster = 1, active = 0;
  size_t smem = 0;
};

Decision decide(const ConvTChainArgs& a, const DeviceInfo& dev) {
  Decision decision;
  const bool forced = a.cuda_path == 1;
  if (a.cuda_path == 2) return decision;
  if (!forced && (dev.major < 9 || a.B > kChainMaxBatch)) return decision;
  if (a.n_layers > kMaxChainLayers) {
    if (forced)
      throw std::invalid_argument("conv_transpose_chain (cuda): the chain path takes at most " +
                                  std::to_string(kMaxChainLayers) + " layers");
    return decision;
  }
  switch (a.dtype) {
    case DType::F16: decision.active = pick_cluster<__half>(a, dev, decision.cluster, decision.smem); break;
    case DType::BF16: decision.active = pick_cluster<__nv_bfloat16>(a, dev, decision.cluster, decision.smem); break;
    default: decision.active = pick_cluster<float>(a, dev, decision.cluster, decision.smem); break;
  }
  decision.chain = decision.active > 0;
  if (forced && !decision.chain) {
    int in_f = 0, slice_f = 0;
    size_t smem = 0;
    chain_sizes(a, 1, in_f, slice_f, smem);
    throw std::invalid_argument("conv_transpose_chain (cuda): the chain path needs " +
                                std::to_string(smem) + " bytes of shared memory per block, the "
                                "device allows " + std::to_string(dev.smem_optin));
  }
  return decision;
}

int64_t layers_workspace(const ConvTChainArgs& a, int64_t& buf_floats, int64_t& norm_floats) {
  buf_floats = 0;
  for (int l = 0; l + 1 < a.n_layers; ++l) {
    const ConvTLayer& L = a.layers[l];
    buf_floats = std::max(buf_floats, a.B * L.cout * L.hout * L.wout);
  }
  const ConvTLayer& f = a.layers[0];
  norm_floats = a.normalize_input ? a.B * f.cin * f.hin * f.win : 0;
  auto al = [](int64_t floats) { return (floats * 4 + 255) / 256 * 256; };
  const int64_t two = a.n_layers > 2 ? 2 : (a.n_layers > 1 ? 1 : 0);
  return two * al(buf_floats) + al(norm_floats);
}

template <typename Tin, typename Tout>
void launch_layer(const ConvTLayer& L, int64_t B, const void* x, void* y, cudaStream_t st) {
  LayerLaunch p;
  p.L = to_dev(L);
  p.B = B;
  const int64_t nqy = (L.hout + L.sh - 1) / L.sh, nqx = (L.wout + L.sw - 1) / L.sw;
  p.tiles_per_phase = (B * nqy * nqx + kBM - 1) / kBM;
  p.co_tiles = int((L.cout + kBN - 1) / kBN);
  p.batch_inner = L.hin * L.win <= 4 ? 1 : 0;  // tiny planes: a tile's pixels share their tap
  const int64_t total = p.tiles_per_phase * p.co_tiles * L.sh * L.sw;
  launch_kernel("convt_layer_kernel", convt_layer_kernel<Tin, Tout>, LaunchShape{grid_for(total), kLayerThreads},
                st, p, static_cast<const Tin*>(x), static_cast<Tout*>(y));
}

template <typename Tio>
void run(const ConvTChainArgs& a, const DeviceInfo& dev, cudaStream_t st) {
  const Tio* x = static_cast<const Tio*>(a.x);
  Tio* y = static_cast<Tio*>(a.out);
  const Decision decision = decide(a, dev);
  if (decision.chain) {
    ChainLaunch p = {};
    for (int l = 0; l < a.n_layers; ++l) p.layers[l] = to_dev(a.layers[l]);
    p.n_layers = a.n_layers;
    p.normalize = a.normalize_input ? 1 : 0;
    size_t smem = 0;
    chain_sizes(a, decision.cluster, p.in_floats, p.slice_floats, smem);
    p.B = a.B;
    check_call(prepare_chain<Tio>(decision.cluster, smem, nullptr), "cudaFuncSetAttribute(convt_chain_kernel)");
    launch_kernel("convt_chain_kernel", convt_chain_kernel<Tio>,
                  LaunchShape{std::min<int64_t>(a.B, decision.active) * decision.cluster, kChainThreads, smem, decision.cluster}, st, p, x, y);
    return;
  }
  int64_t buf_floats = 0, norm_floats = 0;
  const int64_t need = layers_workspace(a, buf_floats, norm_floats);
  if (a.workspace_bytes < need || (need > 0 && !a.workspace))
    throw std::invalid_argument("conv_transpose_chain (cuda): workspace of " +
                                std::to_string(a.workspace_bytes) + " bytes, need " + std::to_string(need));
  char* ws = static_cast<char*>(a.workspace);
  const int64_t buf_bytes = (buf_floats * 4 + 255) / 256 * 256;
  float* bufs[2] = {reinterpret_cast<float*>(ws), reinterpret_cast<float*>(ws + buf_bytes)};
  float* normed = reinterpret_cast<float*>(ws + (a.n_layers > 2 ? 2 : (a.n_layers > 1 ? 1 : 0)) * buf_bytes);
  const void* cur = x;
  bool cur_float = std::is_same<Tio, float>::value;
  if (a.normalize_input) {
    const ConvTLayer& f = a.layers[0];
    const int64_t warps = a.B * f.hin * f.win;
    launch_kernel("normalize_kernel", normalize_kernel<Tio>, LaunchShape{grid_for((warps + 7) / 8), 256}, st, x,
                  normed, a.B, int(f.cin), int(f.hin * f.win));
    cur = normed;
    cur_float = true;
  }
  for (int l = 0; l < a.n_layers; ++l) {
    const bool last = l + 1 == a.n_layers;
    void* dst = last ? static_cast<void*>(y) : static_cast<void*>(bufs[l & 1]);
    if (cur_float && last) launch_layer<float, Tio>(a.layers[l], a.B, cur, dst, st);
    else if (cur_float) launch_layer<float, float>(a.layers[l], a.B, cur, dst, st);
    else if (last) launch_layer<Tio, Tio>(a.layers[l], a.B, cur, dst, st);
    else launch_layer<Tio, float>(a.layers[l], a.B, cur, dst, st);
    cur = dst;
    cur_float = true;
  }
}

}  // namespace

int64_t conv_transpose_workspace(const ConvTChainArgs& args) {
  validate(args);
  if (args.B == 0) return 0;
  if (decide(args, device_info()).chain) return 0;
  int64_t buf = 0, norm = 0;
  return layers_workspace(args, buf, norm);
}

void conv_transpose_chain(const ConvTChainArgs& args, void* stream) {
  validate(args);
  if (args.B == 0) return;
  const DeviceInfo dev = device_info();
  const auto st = static_cast<cudaStream_t>(stream);
  switch (args.dtype) {
    case DType::F32: return run<float>(args, dev, st);
    case DType::F16: return run<__half>(args, dev, st);
    case DType::BF16: return run<__nv_bfloat16>(args, dev, st);
    case DType::F64: break;
  }
  throw std::invalid_argument("conv_transpose_chain (cuda): dtype must be float32, float16 or bfloat16");
}

}  // namespace cuda
}  // namespace fastface
