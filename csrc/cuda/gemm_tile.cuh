// Dot products of two patch tiles, D = X Y^T (up to 64 x 64), for patch_cost.cu and emd_pairs.cu:
// plain FMA in the accumulator type (no tensor cores, no TF32), X and Y staged through shared
// memory 32 channels at a time with a register prefetch of the next chunk. Also yields the
// squared row norms of X and Y and, optionally, the squared norms of their row sums (APC).
#pragma once
#include "common.cuh"

namespace fastface {
namespace cuda {

constexpr int kTile = 64;           // rows of X and of Y per tile
constexpr int kGemmThreads = 128;   // gemm_tile needs exactly this many threads
constexpr int kTK = 16;             // channels per staged chunk
constexpr int kLdt = kTK + 4;       // padded row stride (20): conflict-free 16-byte reads
constexpr int kStage = kTile * kTK / kGemmThreads;  // elements of X (and of Y) each thread stages

template <typename Acc>
struct __align__(16) GemmSmem {
  Acc xs[kTile * kLdt];  // (64, kLdt) X chunk
  Acc ys[kTile * kLdt];  // (64, kLdt) Y chunk
  Acc colpart[kGemmThreads];
};

// (sum over the 64 rows of Z)^2 for channel t & 15 of the staged chunk, Z = X (t < 16) or Y.
template <typename Acc>
__device__ __forceinline__ Acc colsum_sq(const GemmSmem<Acc>& sm, int t) {
  const int base = (t >> 4) * 64 + (t & 15);
  const Acc s = (sm.colpart[base] + sm.colpart[base + 16]) + (sm.colpart[base + 32] + sm.colpart[base + 48]);
  return s * s;
}

__device__ __forceinline__ void ld4(const float* p, float (&o)[4]) {
  const float4 v = *reinterpret_cast<const float4*>(p);
  o[0] = v.x; o[1] = v.y; o[2] = v.z; o[3] = v.w;
}
__device__ __forceinline__ void ld4(const double* p, double (&o)[4]) {
  const double2 v = *reinterpret_cast<const double2*>(p);
  const double2 w = *reinterpret_cast<const double2*>(p + 2);
  o[0] = v.x; o[1] = v.y; o[2] = w.x; o[3] = w.y;
}

// X (nr, C), Y (mr, C) row-major, nr, mr <= 64; blockDim.x == 128; every thread calls.
// Thread t = 8 ty + tx gets acc[r][c] = <X[ty + 16 r], Y[tx + 8 c]> (0 outside nr x mr),
// ss = squared norm of row t of [X; Y] (t < 64: X row t, else Y row t - 64; 0 past nr / mr).
// With colsums, thread t < 32 gets a partial colsq (sum over its channels of (sum of the rows
// of Z)^2, Z = X for t < 16 else Y): summing colsq over lanes 0-15 (16-31) of warp 0 gives
// ||sum_i X_i||^2 (||sum_j Y_j||^2).
// Starts with a barrier, so the caller may keep reading its own shared data up to the call.
// X and Y are multiplied by x_scale, y_scale (powers of two: exact) as they are loaded.
template <typename Tin, typename Acc>
__device__ __forceinline__ void gemm_tile(const Tin* __restrict__ X, int nr, const Tin* __restrict__ Y,
                                          int mr, int64_t C, bool colsums, GemmSmem<Acc>& sm,
                                          Acc (&acc)[4][8], Acc& ss, Acc& colsq, Acc x_scale = Acc(1),
                                          Acc y_scale = Acc(1)) {
  const int t = threadIdx.x, tx = t & 7, ty = t >> 3;
  const int r0 = t >> 4, kk = t & 15;  // this thread stages rows r0 + 8 s, channel kk
#pragma unroll
  for (int r = 0; r < 4; ++r)
#pragma unroll
    for (int c = 0; c < 8; ++c) acc[r][c] = Acc(0);
  ss = Acc(0);
  colsq = Acc(0);
  const Tin* xp = X + int64_t(r0) * C + kk;
  const Tin* yp = Y + int64_t(r0) * C + kk;
  Acc rx[kStage], ry[kStage];
  auto load = [&](int64_t k0) {
    const bool in = k0 + kk < C;
#pragma unroll
    for (int s = 0; s < kStage; ++s) {
      const int row = r0 + 8 * s;
      const int64_t off = int64_t(8 * s) * C + k0;
      rx[s] = (in && row < nr) ? Acc(to_acc(xp[off])) * x_scale : Acc(0);
      ry[s] = (in && row < mr) ? Acc(to_acc(yp[off])) * y_scale : Acc(0);
    }
  };
  if (C > 0) load(0);
  __syncthreads();
  for (int64_t k0 = 0; k0 < C; k0 += kTK) {
    if (colsums && k0 > 0 && t < 32) colsq += colsum_sq(sm, t);  // previous chunk
#pragma unroll
    for (int s = 0; s < kStage; ++s) {
      sm.xs[(r0 + 8 * s) * kLdt + kk] = rx[s];
      sm.ys[(r0 + 8 * s) * kLdt + kk] = ry[s];
    }
    __syncthreads();
    if (k0 + kTK < C) load(k0 + kTK);  // in flight during the FMAs below
    {
      const Acc* z = (t < 64 ? sm.xs : sm.ys) + (t & 63) * kLdt;
#pragma unroll
      for (int k = 0; k < kTK; k += 4) {
        Acc v[4];
        ld4(z + k, v);
#pragma unroll
        for (int q = 0; q < 4; ++q) ss = fma(v[q], v[q], ss);
      }
    }
    if (colsums) {  // thread t: rows 16 ((t >> 4) & 3) .. + 15 of Z = t < 64 ? X : Y, channel kk
      const Acc* z = (t < 64 ? sm.xs : sm.ys) + ((t >> 4) & 3) * 16 * kLdt + kk;
      Acc s = 0;
#pragma unroll
      for (int r = 0; r < 16; ++r) s += z[r * kLdt];
      sm.colpart[t] = s;
    }
#pragma unroll 1
    for (int k = 0; k < kTK; k += 4) {
      Acc a[4][4];
#pragma unroll
      for (int r = 0; r < 4; ++r) ld4(sm.xs + (ty + 16 * r) * kLdt + k, a[r]);
#pragma unroll
      for (int c = 0; c < 8; ++c) {
        Acc b[4];
        ld4(sm.ys + (tx + 8 * c) * kLdt + k, b);
#pragma unroll
        for (int r = 0; r < 4; ++r)
#pragma unroll
          for (int q = 0; q < 4; ++q) acc[r][c] = fma(a[r][q], b[q], acc[r][c]);
      }
    }
    __syncthreads();
  }
  if (colsums && C > 0 && t < 32) colsq += colsum_sq(sm, t);
}

// ---- scale-safe norms ----
// Squared norms up to this are safe to use as they are: norms, their products, the row sums of up
// to 4096 rows and their squares all stay finite. Past it (patch entries around 1e15 and up, or an
// overflow to inf), the tile is redone with X and Y each scaled down by scale_for(its max |entry|):
// cosines do not change.
template <typename Acc> __device__ __forceinline__ Acc safe_sq_norm();
template <> __device__ __forceinline__ float safe_sq_norm<float>() { return 1e30f; }
template <> __device__ __forceinline__ double safe_sq_norm<double>() { return 1e290; }

// A power of two that brings amax into [1, 2); 1 when amax is 0 or not finite.
__device__ __forceinline__ float scale_for(float amax) {
  return (amax > 0.f && isfinite(amax)) ? ldexpf(1.f, -ilogbf(amax)) : 1.f;
}
__device__ __forceinline__ double scale_for(double amax) {
  return (amax > 0.0 && isfinite(amax)) ? ldexp(1.0, -ilogb(amax)) : 1.0;
}

// Largest |entry| of the rows Z (rows, C); block-wide, every thread gets it.
template <typename Tin, typename Acc>
__device__ Acc max_abs(const Tin* Z, int rows, int64_t C, double* red) {
  Acc mx = Acc(0);
  const int64_t total = int64_t(rows) * C;
  for (int64_t e = threadIdx.x; e < total; e += blockDim.x) {
    const Acc v = dabs(Acc(to_acc(Z[e])));
    mx = v > mx ? v : mx;
  }
  return block_max(mx, red);
}

}  // namespace cuda
}  // namespace fastface
