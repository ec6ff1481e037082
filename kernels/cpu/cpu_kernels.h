// The CPU backend's kernels: one fused pass per chunk of a validated job. Implemented with
// Highway for every x86 SIMD target, chosen at run time: cpu_kernels.cc dispatches to one
// translation unit per kernel family (cpu_kernel_families.h).
#pragma once

#include <cstdint>
#include <string_view>

#include "focal/kernel_args.h"

namespace focal::cpu {

using focal::KernelArgs;
using focal::KernelKind;

/// What one chunk reports; the backend adds chunk sums in chunk order, so the total does not
/// depend on how many threads ran the chunks.
struct ChunkResult {
  double loss_sum = 0;
  bool bad_input = false;   ///< a logit failed the input check
  bool bad_target = false;  ///< a float target was outside its range
};

/// Runs `kind` over chunk [begin, end): elements for kElementwiseFloatTargets, positions
/// (n·S + s) for the class-indexed kinds.
ChunkResult RunChunk(KernelKind kind, const KernelArgs& args, int64_t begin, int64_t end);

/// Name of the SIMD target the dispatcher picked on this processor ("AVX3", "AVX2", ...).
const char* SimdTargetName();

/// Caps run-time dispatch at the target `name` (kSimdTargetNames) and those below it, so that one
/// machine can measure and test each target; "best" lifts the cap. The processor still decides
/// what it supports below the cap. Names match in any case. false, changing nothing, for a name
/// not in the list. Not while kernels run: Highway keeps the cap in a plain global that every
/// dispatch reads, so call it at start, before any computation (every caller does).
bool LimitSimdTarget(std::string_view name);

/// The names LimitSimdTarget takes, best first.
inline constexpr const char* kSimdTargetNames = "best, avx3, avx2, sse4, scalar";

}  // namespace focal::cpu
