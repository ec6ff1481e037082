// The variants' math in namespace focal::math, for CUDA kernels, references and tests.
// The formulas themselves live in focal/math-inl.h.
#pragma once

#include "focal/hd.h"
#include "focal/math_ops.h"  // kExpNormalFloor and the other policy constants

namespace focal::math {
#include "focal/math-inl.h"  // IWYU pragma: export
}  // namespace focal::math
