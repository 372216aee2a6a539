// Shared CUDA helpers: dtype loads, math overloads, warp / block reductions, launch checks.
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>
#include <stdexcept>
#include <string>

#include "../common/dtype.h"

namespace fastface {
namespace cuda {

// ---- element loads: float / half / bfloat16 accumulate in float, double in double ----
__device__ __forceinline__ float to_acc(float v) { return v; }
__device__ __forceinline__ float to_acc(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_acc(__nv_bfloat16 v) { return __bfloat162float(v); }
__device__ __forceinline__ double to_acc(double v) { return v; }

// ---- math overloads (IEEE versions; the build never uses --use_fast_math) ----
__device__ __forceinline__ float dexp(float x) { return expf(x); }
__device__ __forceinline__ double dexp(double x) { return exp(x); }
__device__ __forceinline__ float dlog(float x) { return logf(x); }
__device__ __forceinline__ double dlog(double x) { return log(x); }
__device__ __forceinline__ float dsqrt(float x) { return sqrtf(x); }
__device__ __forceinline__ double dsqrt(double x) { return sqrt(x); }
__device__ __forceinline__ float dabs(float x) { return fabsf(x); }
__device__ __forceinline__ double dabs(double x) { return fabs(x); }
__device__ __forceinline__ bool dfinite(float x) { return isfinite(x); }
__device__ __forceinline__ bool dfinite(double x) { return isfinite(x); }

template <typename T> __device__ __forceinline__ T inf_v();
template <> __device__ __forceinline__ float inf_v<float>() { return __int_as_float(0x7f800000); }
template <> __device__ __forceinline__ double inf_v<double>() {
  return __longlong_as_double(0x7ff0000000000000LL);
}

// ---- reductions: all 32 lanes of the warp call (every block is a whole number of warps) ----
template <typename V>
__device__ __forceinline__ V warp_sum(V x) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) x += __shfl_xor_sync(0xffffffffu, x, o);
  return x;
}

template <typename V>
__device__ __forceinline__ V warp_max(V x) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) {
    const V y = __shfl_xor_sync(0xffffffffu, x, o);
    x = y > x ? y : x;
  }
  return x;
}

// Block-wide sum: every thread calls and gets the same value (fixed summation order, so
// decisions taken on it are uniform). red: 32 doubles of shared memory. Two barriers.
template <typename V>
__device__ __forceinline__ V block_sum(V x, double* red) {
  x = warp_sum(x);
  if ((threadIdx.x & 31) == 0) red[threadIdx.x >> 5] = double(x);
  __syncthreads();
  V s = V(0);
  const int nw = int(blockDim.x >> 5);
  for (int w = 0; w < nw; ++w) s += V(red[w]);
  __syncthreads();
  return s;
}

template <typename V>
__device__ __forceinline__ V block_max(V x, double* red) {
  x = warp_max(x);
  if ((threadIdx.x & 31) == 0) red[threadIdx.x >> 5] = double(x);
  __syncthreads();
  V s = V(red[0]);
  const int nw = int(blockDim.x >> 5);
  for (int w = 1; w < nw; ++w) s = V(red[w]) > s ? V(red[w]) : s;
  __syncthreads();
  return s;
}

constexpr int kRedBytes = 32 * int(sizeof(double));  // `red` scratch at the start of dynamic smem

__host__ __device__ inline size_t align16(size_t b) { return (b + 15) & ~size_t(15); }

// ---- host helpers ----
inline void check_launch(const char* kernel) {
  const cudaError_t e = cudaGetLastError();
  if (e != cudaSuccess)
    throw std::runtime_error(std::string("fastface CUDA kernel ") + kernel + " failed: " +
                             cudaGetErrorString(e));
}

inline void check_call(cudaError_t e, const char* what) {
  if (e != cudaSuccess) {
    cudaGetLastError();  // clear it so that it is not blamed on a later launch
    throw std::runtime_error(std::string("fastface CUDA: ") + what + " failed: " +
                             cudaGetErrorString(e));
  }
}

// Largest dynamic shared memory one block may opt in to on the current device.
inline size_t max_smem_optin() {
  int dev = 0, v = 0;
  check_call(cudaGetDevice(&dev), "cudaGetDevice");
  check_call(cudaDeviceGetAttribute(&v, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev),
             "cudaDeviceGetAttribute");
  return size_t(v);
}

// Lets a kernel use more than the default 48 KB of dynamic shared memory.
template <typename K>
inline void allow_smem(K* kernel, size_t bytes) {
  if (bytes > 48 * 1024)
    check_call(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(bytes)),
               "cudaFuncSetAttribute(MaxDynamicSharedMemorySize)");
}

// Grid size for a grid-stride loop over `work` items (kernels loop, so capping is safe).
inline unsigned grid_for(int64_t work) {
  const int64_t cap = 0x7fffffff;
  return unsigned(work < cap ? work : cap);
}

}  // namespace cuda
}  // namespace fastface
