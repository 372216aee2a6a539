// Device discovery without torch.
#include <cuda_runtime.h>

#include "launchers.h"

namespace fastface {
namespace cuda {

int device_count() {
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess) {
    cudaGetLastError();
    return 0;
  }
  return count;
}

}  // namespace cuda
}  // namespace fastface
