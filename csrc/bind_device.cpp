// Bindings that say what was built, which CPU kernel set runs and whether the CUDA kernels can run here.
#include <pybind11/stl.h>

#include <string>

#include "bind.h"
#include "common/cuda_compat.h"
#include "cpu/dispatch.h"
#ifdef FASTFACE_WITH_CUDA
#include "cuda/device.h"
#endif

namespace fastface {
namespace bind {

void register_device(py::module_& mod) {
  // CPU kernel sets (cpu/dispatch.h): FASTFACE_CPU_ISA=auto|generic|avx2|avx512 picks one per process.
  mod.def("cpu_isa", &cpu::active_isa, "the CPU kernel set every call runs (ValueError if FASTFACE_CPU_ISA is unusable)");
  mod.def("cpu_isas_built", &cpu::isas_built);
  mod.def("cpu_isas_supported", &cpu::isas_supported);
  mod.def("cpu_has", &cpu::cpu_has, py::arg("feature"));
  mod.def("cpu_isa_choose", &cpu::choose_isa, py::arg("requested"), py::arg("supported"),
          "the rule of FASTFACE_CPU_ISA, bound so that it is tested for CPUs other than this one");

  // The compatibility rule itself, bound in every build so that it is tested without a GPU.
  mod.def("cuda_compatibility",
          [](int driver_version, int runtime_version, int cc_major, int cc_minor,
             const std::string& archs) {
            return int(cuda_compatibility(driver_version, runtime_version, cc_major, cc_minor,
                                          archs));
          },
          py::arg("driver_version"), py::arg("runtime_version"), py::arg("cc_major"),
          py::arg("cc_minor"), py::arg("archs"));

#ifdef FASTFACE_WITH_CUDA
  mod.attr("cuda_built") = true;
  mod.def("cuda_device_count", &cuda::device_count);
  // {"status", "driver_version", "runtime_version", "archs", "error",
  //  "devices": [(cc_major, cc_minor, status), ...]}; statuses are CudaStatus codes.
  mod.def("cuda_status", []() {
    const cuda::CudaReport r = cuda::report();
    py::list devices;
    for (const auto& d : r.devices) devices.append(py::make_tuple(d.cc_major, d.cc_minor, d.status));
    py::dict out;
    out["status"] = r.status;
    out["driver_version"] = r.driver_version;
    out["runtime_version"] = r.runtime_version;
    out["archs"] = r.archs;
    out["error"] = r.error;
    out["devices"] = devices;
    return out;
  });
#else
  mod.attr("cuda_built") = false;
  mod.def("cuda_device_count", []() { return 0; });
  mod.def("cuda_status", []() {
    py::dict out;
    out["status"] = int(CudaStatus::NotBuilt);
    out["driver_version"] = 0;
    out["runtime_version"] = 0;
    out["archs"] = "";
    out["error"] = "";
    out["devices"] = py::list();
    return out;
  });
#endif
}

}  // namespace bind
}  // namespace fastface
