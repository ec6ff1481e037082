// FOCAL_HD marks the math that both backends share: __host__ __device__ under nvcc, plain
// inline under a host compiler, so a CPU-only build compiles the same header (CUTLASS's
// CUTLASS_HOST_DEVICE).
#pragma once

#if defined(__CUDACC__)
#define FOCAL_HD __host__ __device__ __forceinline__
#else
#define FOCAL_HD inline
#endif
