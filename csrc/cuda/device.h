// Device queries for the Python side (device.cu): how many GPUs, and whether this build's
// kernels can run on each (driver version vs the static runtime, GPU vs compiled archs).
#pragma once
#include <string>
#include <vector>

namespace fastface {
namespace cuda {

struct DeviceReport {
  int cc_major = 0, cc_minor = 0;
  int status = 0;  // CudaStatus (csrc/common/cuda_compat.h)
};

struct CudaReport {
  int driver_version = 0;   // cudaDriverGetVersion, 0 when no driver
  int runtime_version = 0;  // CUDART_VERSION of the build (linked statically)
  std::string archs;        // FASTFACE_CUDA_ARCHS of the build, ',' separated
  int status = 0;           // CudaStatus of the whole query (Ok when devices were listed)
  std::string error;        // the runtime's message when status is QueryFailed
  std::vector<DeviceReport> devices;  // one per visible GPU, in CUDA's order
};

int device_count();  // 0 when there is no driver or no GPU
CudaReport report();

}  // namespace cuda
}  // namespace fastface
