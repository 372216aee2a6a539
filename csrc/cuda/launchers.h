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

namespace fastface {
namespace cuda {

// Fused ConvTranspose2d chains (conv_transpose.cu): x, out F32 / F16 / BF16 NCHW; weights
// (Cin, kh, kw, Cout), bias and post-affine float32; float32 accumulation and intermediates.
// The caller provides args.workspace of at least conv_transpose_workspace(args) bytes.
int64_t conv_transpose_workspace(const ConvTChainArgs& args);
void conv_transpose_chain(const ConvTChainArgs& args, void* stream);

}  // namespace cuda
}  // namespace fastface
