// Element types of tensors crossing the binding, shared by every op family.
#pragma once

namespace fastface {

// The Python side passes these codes (fastface/_backend.py DTYPE_CODES).
enum class DType : int { F32 = 0, F16 = 1, BF16 = 2, F64 = 3 };

}  // namespace fastface
