// CUDA launchers of the EMD / Sinkhorn ops. Each takes the caller's stream (a cudaStream_t passed
// as void*), launches asynchronously on it, returns at once for empty inputs, and throws
// std::runtime_error when a launch fails. Shapes and semantics: csrc/common/emd_problem.h and
// fastface/reference/.
#pragma once
#include "../common/emd_problem.h"

namespace fastface {
namespace cuda {

void patch_cost(const PatchCostArgs& args, void* stream);  // F32 / F16 / BF16 / F64 inputs
void sinkhorn(const SinkhornArgs& args, void* stream);     // F32 or F64
void emd_pairs(const EmdPairsArgs& args, void* stream);    // F32 / F16 / BF16 inputs

}  // namespace cuda
}  // namespace fastface
