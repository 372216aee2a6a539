// CUDA launchers of the fused ConvTranspose2d chains (conv_transpose.cu): x, out F32 / F16 / BF16
// NCHW; weights (Cin, kh, kw, Cout), bias and post-affine float32; float32 accumulation and
// intermediates. Same stream and error conventions as emd_launchers.h.
#pragma once
#include <cstdint>

#include "../common/convt_problem.h"

namespace fastface {
namespace cuda {

// The caller provides args.workspace of at least conv_transpose_workspace(args) bytes.
int64_t conv_transpose_workspace(const ConvTChainArgs& args);
void conv_transpose_chain(const ConvTChainArgs& args, void* stream);

}  // namespace cuda
}  // namespace fastface
