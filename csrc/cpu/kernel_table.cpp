// The kernel table of the instruction set this file is compiled for (isa.h).
#include "isa.h"

namespace fastface {
namespace cpu {
namespace FASTFACE_ISA_NS {

#define FASTFACE_STR2(x) #x
#define FASTFACE_STR(x) FASTFACE_STR2(x)

const KernelTable& kernel_table() {
  static const KernelTable table = {
      FASTFACE_STR(FASTFACE_ISA_NAME), patch_cost, sinkhorn, emd_pairs,
      conv_transpose_packed_size, conv_transpose_pack, conv_transpose_chain,
      conv_transpose_row_block, conv_transpose_col_block};
  return table;
}

}  // namespace FASTFACE_ISA_NS
}  // namespace cpu
}  // namespace fastface
