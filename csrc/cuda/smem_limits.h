// What the CUDA launchers need for a problem size, computed from the layouts they launch with
// (sinkhorn.cu, emd_pairs.cu); fastface/ops/kernel_limits.py asks these through the binding.
#pragma once
#include <cstdint>

#include "../common/emd_problem.h"

namespace fastface {
namespace cuda {

// Dynamic shared memory of sinkhorn()'s launch for one (n, m) problem, with K in shared memory
// (k_in_smem) or in the plan buffer (official mode: one problem per block, K recomputed).
int64_t sinkhorn_smem_bytes(int64_t n, int64_t m, DType dtype, SinkhornMode mode, bool k_in_smem);
// Whether sinkhorn() on the current device needs args.plan as scratch (K too large for shared
// memory); throws std::invalid_argument when (n, m) cannot run at all.
bool sinkhorn_needs_plan(int64_t n, int64_t m, DType dtype, SinkhornMode mode);
// Dynamic shared memory of emd_pairs()'s launch, and whether it fits the current device.
int64_t emd_pairs_smem_bytes(int64_t n, int64_t m);
bool emd_pairs_fits(int64_t n, int64_t m);

}  // namespace cuda
}  // namespace fastface
