// The Python module fastface._C: functions over raw pointers (Python ints), shapes and scalars.
// No torch here; fastface/_backend.py validates inputs and passes tensor.data_ptr() values.
// Each op family registers its functions from its own bind_*.cpp.
#include "bind.h"

PYBIND11_MODULE(_C, mod) {
  mod.doc() = "fastface kernels over raw pointers (see fastface/_backend.py)";
  fastface::bind::register_device(mod);
  fastface::bind::register_emd(mod);
  fastface::bind::register_convt(mod);
}
