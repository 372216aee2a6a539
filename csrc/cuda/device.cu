// Device query for the Python side (0 when there is no driver or no GPU).
#include "common.cuh"
#include "launchers.h"

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

}  // namespace cuda
}  // namespace fastface
