// The CPU kernels' entry: RunChunk hands a chunk to its kernel family (cpu_kernel_families.h),
// each its own translation unit over the SIMD plumbing of simd-inl.h and the formulas of
// focal/math-inl.h, compiled once per x86 SIMD target (SSE4, AVX2, AVX-512) and dispatched at
// run time, so one binary runs well on whatever processor the container lands on. Each kernel
// reads the logits once, in place (the class dimension at its stride), widens on load, and
// writes the gradient once. This file itself has no SIMD code, so it is compiled once.
#include "kernels/cpu/cpu_kernels.h"

#include "kernels/cpu/cpu_kernel_families.h"

namespace focal::cpu {

ChunkResult RunChunk(KernelKind kind, const KernelArgs& args, int64_t begin, int64_t end) {
  switch (kind) {
    case KernelKind::kElementwiseFloatTargets:
    case KernelKind::kElementwiseIndexTargets: return RunElementwiseChunk(kind, args, begin, end);
    case KernelKind::kSoftmaxFocal: return RunSoftmaxChunk(args, begin, end);
    case KernelKind::kFocalCosine: return RunFocalCosineChunk(args, begin, end);
    case KernelKind::kDistributionFocal: return RunDistributionChunk(args, begin, end);
  }
  return {};
}

const char* SimdTargetName() { return DispatchedTargetName(); }

}  // namespace focal::cpu
