// Device queries for the Python side: device count and whether the kernels can run on each GPU.
#include "../common/cuda_compat.h"
#include "common.cuh"
#include "device.h"

#ifndef FASTFACE_CUDA_ARCHS_CSV
#error "CMake passes FASTFACE_CUDA_ARCHS_CSV (the compiled architectures, ',' separated)"
#endif

namespace fastface {
namespace cuda {

int device_count() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    cudaGetLastError();  // clear the error
    return 0;
  }
  return n;
}

CudaReport report() {
  CudaReport r;
  r.runtime_version = CUDART_VERSION;
  r.archs = FASTFACE_CUDA_ARCHS_CSV;
  if (cudaDriverGetVersion(&r.driver_version) != cudaSuccess) r.driver_version = 0;
  // Version and GPU rules first (no context is created); the device count only if they pass.
  const CudaStatus driver = driver_compatibility(r.driver_version, r.runtime_version);
  if (driver != CudaStatus::Ok) {
    r.status = int(driver);
    return r;
  }
  int n = 0;
  const cudaError_t err = cudaGetDeviceCount(&n);
  if (err != cudaSuccess) {
    cudaGetLastError();
    r.status = int(err == cudaErrorInsufficientDriver ? CudaStatus::DriverTooOld
                   : err == cudaErrorNoDevice          ? CudaStatus::NoDevice
                                                       : CudaStatus::QueryFailed);
    r.error = cudaGetErrorString(err);
    return r;
  }
  r.status = int(n > 0 ? CudaStatus::Ok : CudaStatus::NoDevice);
  for (int d = 0; d < n; ++d) {
    DeviceReport dev;
    if (cudaDeviceGetAttribute(&dev.cc_major, cudaDevAttrComputeCapabilityMajor, d) != cudaSuccess ||
        cudaDeviceGetAttribute(&dev.cc_minor, cudaDevAttrComputeCapabilityMinor, d) != cudaSuccess) {
      cudaGetLastError();
      dev.status = int(CudaStatus::QueryFailed);
    } else {
      dev.status = int(cuda_compatibility(r.driver_version, r.runtime_version, dev.cc_major,
                                          dev.cc_minor, r.archs));
    }
    r.devices.push_back(dev);
  }
  return r;
}

}  // namespace cuda
}  // namespace fastface
