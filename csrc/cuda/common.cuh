// Shared CUDA helpers: element loads, block reductions, launch checks.
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cmath>
#include <stdexcept>
#include <string>

namespace fastface {
namespace cuda {

constexpr int kThreads = 128;  // threads per block (a multiple of 32)
constexpr size_t kDefaultSmem = 48 * 1024;

__device__ __forceinline__ float to_float(float v) { return v; }
__device__ __forceinline__ float to_float(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_float(__nv_bfloat16 v) { return __bfloat162float(v); }
__device__ __forceinline__ double to_float(double v) { return v; }

template <typename T>
struct SumOp { __device__ T operator()(T x, T y) const { return x + y; } };
template <typename T>
struct MaxOp { __device__ T operator()(T x, T y) const { return x > y ? x : y; } };

// Every thread of the block gets op over all threads' values. red: >= 32 slots of shared memory.
template <typename T, typename Op>
__device__ T block_reduce(T val, T* red, Op op, T identity) {
  for (int o = 16; o > 0; o >>= 1) val = op(val, __shfl_xor_sync(0xffffffffu, val, o));
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  __syncthreads();  // red may still be read by a previous reduction
  if (lane == 0) red[warp] = val;
  __syncthreads();
  T r = identity;
  for (int w = 0; w < int(blockDim.x >> 5); ++w) r = op(r, red[w]);
  return r;
}

inline void check_launch(const char* kernel) {
  cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess)
    throw std::runtime_error(std::string(kernel) + " launch failed: " + cudaGetErrorString(err));
}

// Grid size for `count` blocks, or a clear error past CUDA's limit.
inline unsigned grid_of(int64_t count, const char* name) {
  if (count > int64_t(0x7fffffff))
    throw std::invalid_argument(std::string(name) + ": " + std::to_string(count) +
                                " problems exceed one launch; split the batch");
  return unsigned(count);
}

// Opts a kernel into more than 48 KB of dynamic shared memory; throws if the device has less.
template <typename Kernel>
inline void set_smem(Kernel kernel, size_t bytes, const char* name) {
  if (bytes <= kDefaultSmem) return;
  int dev = 0, optin = 0;
  cudaGetDevice(&dev);
  cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev);
  if (bytes > size_t(optin))
    throw std::invalid_argument(std::string(name) + ": problem needs " + std::to_string(bytes) +
                                " bytes of shared memory, the device has " + std::to_string(optin));
  cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(bytes));
  check_launch(name);
}

}  // namespace cuda
}  // namespace fastface
