// The CPU kernels' entry: RunChunk hands a chunk to its kernel family (cpu_kernel_families.h),
// each its own translation unit over the SIMD plumbing of simd-inl.h and the formulas of
// focal/math-inl.h, compiled once per x86 SIMD target (SSE4, AVX2, AVX-512) and dispatched at
// run time, so one binary runs well on whatever processor the container lands on. Each kernel
// reads the logits once, in place (the class dimension at its stride), widens on load, and
// writes the gradient once. This file itself has no SIMD code, so it is compiled once.
#include "kernels/cpu/cpu_kernels.h"

#include "absl/strings/match.h"

#include "hwy/targets.h"
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

bool LimitSimdTarget(std::string_view name) {
  struct Named {
    std::string_view name;
    int64_t target;  // a Highway target bit; a lower bit is a better target
  };
  static constexpr Named kTargets[] = {
      {"best", 0}, {"avx3", HWY_AVX3}, {"avx2", HWY_AVX2}, {"sse4", HWY_SSE4}, {"scalar", HWY_SCALAR}};
  for (const Named& t : kTargets) {
    // Any case: the start line prints the dispatched target as "AVX2", and that is what people copy.
    if (!absl::EqualsIgnoreCase(absl::string_view(t.name.data(), t.name.size()), absl::string_view(name.data(), name.size()))) {
      continue;
    }
    // Every bit below the cap's is a better target. DisableTargets also drops the dispatch
    // tables' cached choice, so the next call picks again.
    hwy::DisableTargets(t.target == 0 ? 0 : t.target - 1);
    return true;
  }
  return false;
}

}  // namespace focal::cpu
