// C++ CPU kernels of the fused ConvTranspose2d chains (conv_transpose.cpp), dispatched at run time
// (cpu/dispatch.cpp, cpu/isa.h).
// Shapes and semantics: csrc/common/convt_problem.h.
#pragma once
#include <cstdint>

#include "../common/convt_problem.h"

namespace fastface {
namespace cpu {

// Weights are packed once per plan: w (Cin, Cout, kh, kw) float32 -> packed
// (conv_transpose_packed_size floats).
int64_t conv_transpose_packed_size(int64_t cin, int64_t cout, int64_t kh, int64_t kw);
void conv_transpose_pack(const float* w, float* packed, int64_t cin, int64_t cout, int64_t kh,
                         int64_t kw);
void conv_transpose_chain(const ConvTChainArgs& args, int n_threads);  // F32; x, out NCHW
int conv_transpose_row_block();  // MR and NR of the build's micro-kernel (for reports and tests)
int conv_transpose_col_block();

}  // namespace cpu
}  // namespace fastface
