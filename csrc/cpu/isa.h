// Run-time instruction-set dispatch of the CPU kernels.
//
// The kernel sources (patch_cost.cpp, sinkhorn.cpp, emd_pairs.cpp, conv_transpose.cpp,
// kernel_table.cpp) are compiled once per instruction set (CMakeLists.txt), each time inside its own
// namespace fastface::cpu::FASTFACE_ISA_NS (isa_generic, isa_avx2, isa_avx512, isa_neon,
// isa_native), so no code compiled for one instruction set can stand in for another's at link time.
// dispatch.cpp (compiled for the baseline only) picks one table per process.
#pragma once
#include <cstdint>

#include "../common/convt_problem.h"
#include "../common/emd_problem.h"

#ifndef FASTFACE_ISA_NS
#define FASTFACE_ISA_NS isa_generic
#define FASTFACE_ISA_NAME generic
#endif

namespace fastface {
namespace cpu {

// The kernels of one instruction set; entry points as in emd_kernels.h / convt_kernels.h.
struct KernelTable {
  const char* isa;  // "generic", "avx2", "avx512", "neon" or "native"
  void (*patch_cost)(const PatchCostArgs&, int);
  void (*sinkhorn)(const SinkhornArgs&, int);
  void (*emd_pairs)(const EmdPairsArgs&, int);
  int64_t (*convt_packed_size)(int64_t, int64_t, int64_t, int64_t);
  void (*convt_pack)(const float*, float*, int64_t, int64_t, int64_t, int64_t);
  void (*convt_chain)(const ConvTChainArgs&, int);
  int (*convt_row_block)();
  int (*convt_col_block)();
};

#define FASTFACE_DECLARE_KERNELS(ns)                                                           \
  namespace ns {                                                                              \
  void patch_cost(const PatchCostArgs& args, int n_threads);                                  \
  void sinkhorn(const SinkhornArgs& args, int n_threads);                                     \
  void emd_pairs(const EmdPairsArgs& args, int n_threads);                                    \
  int64_t conv_transpose_packed_size(int64_t cin, int64_t cout, int64_t kh, int64_t kw);      \
  void conv_transpose_pack(const float* w, float* packed, int64_t cin, int64_t cout,          \
                           int64_t kh, int64_t kw);                                          \
  void conv_transpose_chain(const ConvTChainArgs& args, int n_threads);                       \
  int conv_transpose_row_block();                                                             \
  int conv_transpose_col_block();                                                             \
  const KernelTable& kernel_table();                                                          \
  }

FASTFACE_DECLARE_KERNELS(FASTFACE_ISA_NS)

}  // namespace cpu
}  // namespace fastface
