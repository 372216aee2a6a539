// CUDA launchers. Each takes the caller's stream (a cudaStream_t passed as void*), launches
// asynchronously on it, returns at once for empty inputs, and throws std::runtime_error when a
// launch fails. Shapes and semantics: csrc/common/problem.h and fastface/reference/.
#pragma once
#include "../common/problem.h"

namespace fastface {
namespace cuda {

void patch_cost(const PatchCostArgs& args, void* stream);  // F32 / F16 / BF16 / F64 inputs
void sinkhorn(const SinkhornArgs& args, void* stream);     // F32 or F64
void emd_pairs(const EmdPairsArgs& args, void* stream);    // F32 / F16 / BF16 inputs
int device_count();                                        // 0 when no driver or no GPU

}  // namespace cuda
}  // namespace fastface
