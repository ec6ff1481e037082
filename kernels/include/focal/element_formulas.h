// The elementwise kinds' per-element formulas in namespace focal::math, for CUDA kernels and
// tests. The formulas themselves live in focal/element_formulas-inl.h.
#pragma once

#include "focal/kernel_args.h"
#include "focal/math.h"

namespace focal::math {
#include "focal/element_formulas-inl.h"  // IWYU pragma: export
}  // namespace focal::math
