// The EMD kernels of csrc/cuda (sinkhorn.cu, emd_pairs.cu, patch_cost.cu) built for the host
// emulator (include/cuda_runtime.h here) as a C library for ctypes: the same launchers and
// kernels, on host memory, with the argument lists of the _C bindings (csrc/bind.cpp) minus the
// stream; every integer is an int64_t (what ctypes passes for a Python int). Built and driven by tests/test_emd_cuda_emu.py with
//   g++ -std=c++20 -O2 -pthread -shared -fPIC -fno-gnu-unique -DFASTFACE_CUDA_EMULATION -Itests/cuda_emu/include
//       tests/cuda_emu/emu_emd.cpp -o libffemu_emd.so
#include <cstdint>
#include <exception>
#include <string>

#include "../../csrc/cuda/emd_pairs.cu"
#include "../../csrc/cuda/patch_cost.cu"
#include "../../csrc/cuda/sinkhorn.cu"

namespace {

thread_local std::string g_error;

template <typename T>
T* ptr(uintptr_t p) { return reinterpret_cast<T*>(p); }

// Runs f; 0 on success, -1 with ff_emu_error() set.
template <typename F>
int guarded(F&& f) {
  try {
    f();
    return 0;
  } catch (const std::exception& e) {
    g_error = e.what();
    return -1;
  }
}

}  // namespace

extern "C" {

const char* ff_emu_error() { return g_error.c_str(); }

// cudaFuncSetAttribute(MaxDynamicSharedMemorySize) calls so far, and how many set less than the
// device maximum (csrc/cuda/common.cuh sets it once per kernel and device, to the maximum).
int ff_emu_smem_attr_sets() { return emu::smem_attr_sets.load(); }
int ff_emu_smem_attr_below_max() { return emu::smem_attr_below.load(); }
// Dynamic shared memory of the last launch (which layout a launcher chose).
int64_t ff_emu_last_launch_smem_bytes() { return emu::last_launch_smem.load(); }

// csrc/cuda/smem_limits.h: 1 / 0, or -1 with ff_emu_error() set.
int ff_emu_sinkhorn_needs_plan(int64_t n, int64_t m, int64_t dtype, int64_t mode) {
  bool r = false;
  if (guarded([&] {
        r = fastface::cuda::sinkhorn_needs_plan(n, m, static_cast<fastface::DType>(dtype),
                                                static_cast<fastface::SinkhornMode>(mode));
      }) != 0)
    return -1;
  return r ? 1 : 0;
}
int64_t ff_emu_sinkhorn_smem_bytes(int64_t n, int64_t m, int64_t dtype, int64_t mode, int64_t k_in_smem) {
  return fastface::cuda::sinkhorn_smem_bytes(n, m, static_cast<fastface::DType>(dtype),
                                             static_cast<fastface::SinkhornMode>(mode), k_in_smem != 0);
}
int ff_emu_emd_pairs_fits(int64_t n, int64_t m) { return fastface::cuda::emd_pairs_fits(n, m) ? 1 : 0; }
int64_t ff_emu_emd_pairs_smem_bytes(int64_t n, int64_t m) { return fastface::cuda::emd_pairs_smem_bytes(n, m); }

int ff_emu_patch_cost(uintptr_t x, uintptr_t y, uintptr_t out, int64_t P, int64_t rep, int64_t n, int64_t m,
                      int64_t C, int64_t dtype) {
  return guarded([&] {
    fastface::PatchCostArgs a;
    a.x = ptr<const void>(x); a.y = ptr<const void>(y); a.out = ptr<void>(out);
    a.P = P; a.rep = rep; a.n = n; a.m = m; a.C = C; a.in_dtype = static_cast<fastface::DType>(dtype);
    fastface::cuda::patch_cost(a, nullptr);
  });
}

int ff_emu_sinkhorn(uintptr_t cost, uintptr_t a, uintptr_t b, int64_t P, int64_t n, int64_t m, double eps,
                    int64_t max_iter, double tol, int64_t mode, int64_t group, int64_t dtype, uintptr_t distance,
                    uintptr_t plan, uintptr_t f, uintptr_t g, uintptr_t n_iter, uintptr_t converged) {
  return guarded([&] {
    fastface::SinkhornArgs s;
    s.cost = ptr<const void>(cost); s.a = ptr<const void>(a); s.b = ptr<const void>(b);
    s.P = P; s.n = n; s.m = m; s.eps = eps; s.max_iter = int(max_iter); s.tol = tol;
    s.mode = static_cast<fastface::SinkhornMode>(mode); s.group = group;
    s.dtype = static_cast<fastface::DType>(dtype);
    s.distance = ptr<void>(distance); s.plan = ptr<void>(plan); s.f = ptr<void>(f); s.g = ptr<void>(g);
    s.n_iter = ptr<int32_t>(n_iter); s.converged = ptr<uint8_t>(converged);
    fastface::cuda::sinkhorn(s, nullptr);
  });
}

int ff_emu_emd_pairs(uintptr_t x, uintptr_t y, uintptr_t idx, int64_t B, int64_t k, int64_t n, int64_t m,
                     int64_t C, int64_t dtype, int64_t weighting, double eps, int64_t max_iter,
                     double tol, int64_t mode, uintptr_t emd, uintptr_t flows, uintptr_t n_iter, uintptr_t converged,
                     uintptr_t fallback) {
  return guarded([&] {
    fastface::EmdPairsArgs e;
    e.x = ptr<const void>(x); e.y = ptr<const void>(y); e.idx = ptr<const int64_t>(idx);
    e.B = B; e.k = k; e.n = n; e.m = m; e.C = C; e.in_dtype = static_cast<fastface::DType>(dtype);
    e.weighting = static_cast<fastface::Weighting>(weighting);
    e.eps = eps; e.max_iter = int(max_iter); e.tol = tol; e.mode = static_cast<fastface::SinkhornMode>(mode);
    e.emd = ptr<float>(emd); e.flows = ptr<float>(flows); e.n_iter = ptr<int32_t>(n_iter);
    e.converged = ptr<uint8_t>(converged); e.fallback = ptr<uint8_t>(fallback);
    fastface::cuda::emd_pairs(e, nullptr);
  });
}

}  // extern "C"
