// C++ CPU kernels of the EMD / Sinkhorn ops (OpenMP over problems), dispatched at run time to the
// kernels of the best instruction set (cpu/dispatch.cpp, cpu/isa.h).
// Shapes and semantics: csrc/common/emd_problem.h.
#pragma once
#include "../common/emd_problem.h"

namespace fastface {
namespace cpu {

void patch_cost(const PatchCostArgs& args, int n_threads);  // F32 or F64 inputs
void sinkhorn(const SinkhornArgs& args, int n_threads);     // F32 or F64
void emd_pairs(const EmdPairsArgs& args, int n_threads);    // F32 inputs

}  // namespace cpu
}  // namespace fastface
