// Whether the CUDA kernels of a build can run on a driver and GPU. Plain C++ (no CUDA headers), so
// the rule is bound and tested in every build (fastface._C.cuda_compatibility); the CUDA build
// applies it to the real driver and devices (csrc/cuda/device.cu).
#pragma once
#include <cctype>
#include <string>

namespace fastface {

// Why the CUDA kernels cannot run; fastface/_backend.py words each code for the user.
enum class CudaStatus : int {
  Ok = 0,
  NotBuilt = 1,        // fastface was built without CUDA
  NoDriver = 2,        // no CUDA driver (libcuda) found
  NoDevice = 3,        // a driver but no visible GPU
  DriverTooOld = 4,    // driver older than the major version of the (statically linked) runtime
  NoImage = 5,         // no SASS for the GPU's architecture and no PTX it can JIT-compile
  PtxNeedsDriver = 6,  // only PTX fits the GPU, and JIT-compiling it needs driver >= runtime
  QueryFailed = 7,     // another error from the runtime's device query
};

// driver_version, runtime_version: CUDA's encoding 1000 * major + 10 * minor (12040 = 12.4).
// A runtime runs on drivers of its own major version or newer (minor version compatibility).
inline CudaStatus driver_compatibility(int driver_version, int runtime_version) {
  if (driver_version <= 0) return CudaStatus::NoDriver;
  if (driver_version / 1000 < runtime_version / 1000) return CudaStatus::DriverTooOld;
  return CudaStatus::Ok;
}

// Whether a GPU of compute capability cc_major.cc_minor can run the build.
// archs: FASTFACE_CUDA_ARCHS with ',' or ';' between entries, each CMake's NN (SASS + PTX),
// NN-real (SASS) or NN-virtual (PTX), NN with an optional suffix 'a' (that exact GPU only) or
// 'f' (the family: same major). SASS runs on the same major and a minor >= its own; PTX is
// JIT-compiled for any newer GPU. Entries it cannot parse ("all", "native") count as fitting.
inline CudaStatus cuda_compatibility(int driver_version, int runtime_version, int cc_major,
                                     int cc_minor, const std::string& archs) {
  const CudaStatus driver = driver_compatibility(driver_version, runtime_version);
  if (driver != CudaStatus::Ok) return driver;
  const int cc = 10 * cc_major + cc_minor;
  bool sass_fits = false, ptx_fits = false;
  size_t pos = 0;
  while (pos <= archs.size()) {
    size_t end = archs.find_first_of(",;", pos);
    if (end == std::string::npos) end = archs.size();
    const std::string entry = archs.substr(pos, end - pos);
    pos = end + 1;
    if (entry.empty()) continue;
    size_t digits = 0;
    while (digits < entry.size() && std::isdigit(static_cast<unsigned char>(entry[digits])))
      ++digits;
    if (digits == 0) return CudaStatus::Ok;  // "all", "native", ...: cannot judge
    const int arch = std::stoi(entry.substr(0, digits));
    std::string rest = entry.substr(digits);
    char suffix = 0;
    if (!rest.empty() && (rest[0] == 'a' || rest[0] == 'f')) {
      suffix = rest[0];
      rest = rest.substr(1);
    }
    const bool sass = rest != "-virtual", ptx = rest != "-real";
    const bool same_major = arch / 10 == cc_major && arch <= cc;
    if (sass && (suffix == 'a' ? arch == cc : same_major)) sass_fits = true;
    if (ptx && (suffix == 'a' ? arch == cc : suffix == 'f' ? same_major : arch <= cc))
      ptx_fits = true;
  }
  if (sass_fits) return CudaStatus::Ok;
  if (!ptx_fits) return CudaStatus::NoImage;
  return driver_version >= runtime_version ? CudaStatus::Ok : CudaStatus::PtxNeedsDriver;
}

}  // namespace fastface
