// FOCAL_HD marks the math that both backends share: __host__ __device__ under nvcc, plain
// inline under a host compiler, so a CPU-only build compiles the same header (CUTLASS's
// CUTLASS_HOST_DEVICE).
#pragma once

#if defined(__CUDACC__)
#define FOCAL_HD __host__ __device__ __forceinline__
#elif defined(__GNUC__) && !defined(__clang__)
// Forced under GCC, the release build's compiler: it otherwise keeps a formula such as a whole
// element's loss and gradient out of line, and each SIMD vector then crosses a call that passes
// its vectors through the stack. Highway's HWY_INLINE does the same. Not under clang (the
// sanitizer and fuzz builds): forced inlining under ASan made each SIMD kernel file a compile
// of over 10 minutes, and those builds check behaviour, not speed.
#define FOCAL_HD inline __attribute__((always_inline))
#else
#define FOCAL_HD inline
#endif
