// The CPU kernel families, one translation unit each (cpu_elementwise_kernels.cc,
// cpu_softmax_kernels.cc, cpu_cosine_kernels.cc, cpu_distribution_kernels.cc), each compiled for every SIMD target and
// dispatched at run time; RunChunk (cpu_kernels.cc) picks the family of a job's kind.
#pragma once

#include <cstdint>

#include "kernels/cpu/cpu_kernels.h"

namespace focal::cpu {

/// kElementwiseFloatTargets and kElementwiseIndexTargets, every ElementFormula.
ChunkResult RunElementwiseChunk(KernelKind kind, const KernelArgs& args, int64_t begin, int64_t end);
/// kSoftmaxFocal, [N, C] rows and the strided [N, C, S] layout.
ChunkResult RunSoftmaxChunk(const KernelArgs& args, int64_t begin, int64_t end);
/// kFocalCosine.
ChunkResult RunFocalCosineChunk(const KernelArgs& args, int64_t begin, int64_t end);
/// kDistributionFocal, [N, B] rows and the strided [N, B, S] layout.
ChunkResult RunDistributionChunk(const KernelArgs& args, int64_t begin, int64_t end);

/// The SIMD target the dispatch picks. Every family is compiled for the same targets, so one
/// answers for all (cpu_elementwise_kernels.cc: a translation unit of its own for this alone
/// would parse Highway once per target again).
const char* DispatchedTargetName();

}  // namespace focal::cpu
