// Shared CUDA helpers: dtype loads, math overloads, warp / block reductions, launch checks.
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>
#include <mutex>
#include <stdexcept>
#include <string>

#include "../common/dtype.h"

namespace fastface {
namespace cuda {

// The calling block's dynamic shared memory as `unsigned char name[]`, 16-byte aligned. The host
// emulator (tests/cuda_emu) hands out a per-block buffer instead.
#ifdef FASTFACE_CUDA_EMULATION
#define FASTFACE_DYNAMIC_SMEM(name) \
  unsigned char* name = reinterpret_cast<unsigned char*>(fastface_emu_dynamic_smem())
#else
#define FASTFACE_DYNAMIC_SMEM(name) extern __shared__ __align__(16) unsigned char name[]
#endif

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

// Lets KERNEL use the device's whole opt-in dynamic shared memory: set once per kernel and
// device (thread-safe), so that no launch ever changes the attribute another launch relies on.
template <auto KERNEL>
inline void allow_max_smem() {
  constexpr int kMaxDevices = 64;
  static std::once_flag done[kMaxDevices];
  int dev = 0;
  check_call(cudaGetDevice(&dev), "cudaGetDevice");
  auto set = [] {
    check_call(cudaFuncSetAttribute(KERNEL, cudaFuncAttributeMaxDynamicSharedMemorySize, int(max_smem_optin())),
               "cudaFuncSetAttribute(MaxDynamicSharedMemorySize)");
  };
  if (dev >= 0 && dev < kMaxDevices)
    std::call_once(done[dev], set);  // a throw leaves the flag unset: the next launch retries
  else
    set();  // the same value every time: idempotent
}

// Launch geometry: grid and block sizes, dynamic shared memory, cluster size (1: no cluster),
// cooperative (every block resident at once, or the launch fails).
struct LaunchShape {
  int64_t grid;
  int block;
  size_t smem = 0;
  int cluster = 1;
  bool cooperative = false;
};

// Launches kernel on st and throws naming the kernel on failure. Arguments are coerced to the
// kernel's parameter types (cudaLaunchKernelEx).
template <typename... P, typename... A>
void launch_kernel(const char* name, void (*kernel)(P...), const LaunchShape& shape, cudaStream_t st,
                   const A&... args) {
  cudaLaunchConfig_t cfg = {};
  cfg.gridDim = dim3(unsigned(shape.grid));
  cfg.blockDim = dim3(unsigned(shape.block));
  cfg.dynamicSmemBytes = shape.smem;
  cfg.stream = st;
  cudaLaunchAttribute attrs[2];
  unsigned n_attrs = 0;
  if (shape.cluster > 1) {
    attrs[n_attrs].id = cudaLaunchAttributeClusterDimension;
    attrs[n_attrs].val.clusterDim.x = unsigned(shape.cluster);
    attrs[n_attrs].val.clusterDim.y = 1;
    attrs[n_attrs].val.clusterDim.z = 1;
    ++n_attrs;
  }
  if (shape.cooperative) {
    attrs[n_attrs].id = cudaLaunchAttributeCooperative;
    attrs[n_attrs].val.cooperative = 1;
    ++n_attrs;
  }
  cfg.attrs = n_attrs ? attrs : nullptr;
  cfg.numAttrs = n_attrs;
  check_call(cudaLaunchKernelEx(&cfg, kernel, args...), name);
  check_launch(name);
}

// Grid size for a grid-stride loop over `work` items (kernels loop, so capping is safe).
inline unsigned grid_for(int64_t work) {
  const int64_t cap = 0x7fffffff;
  return unsigned(work < cap ? work : cap);
}

}  // namespace cuda
}  // namespace fastface
