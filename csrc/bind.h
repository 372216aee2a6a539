// Shared by the pybind11 sources (csrc/bind*.cpp, the only files that know pybind11): pointer
// decoding and the registration function of each op family, called by bind.cpp's module.
#pragma once
#include <pybind11/pybind11.h>

#include <cstdint>

namespace fastface {
namespace bind {

namespace py = pybind11;

// A Python int holding tensor.data_ptr() (0 for None) as a typed pointer.
template <typename T>
T* ptr(uintptr_t p) { return reinterpret_cast<T*>(p); }

void register_emd(py::module_& mod);     // bind_emd.cpp: patch_cost, sinkhorn, emd_pairs
void register_convt(py::module_& mod);   // bind_convt.cpp: fused ConvTranspose2d chains
void register_device(py::module_& mod);  // bind_device.cpp: what was built, CUDA usability

}  // namespace bind
}  // namespace fastface
