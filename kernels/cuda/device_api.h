// The CUDA device API the kernels use, from one place: the real one under nvcc, or, for the
// host tests in tests/cuda/emulation, an emulation that runs the same kernel source on CPU
// threads (warps and blocks in lockstep at every shuffle and barrier), so the kernels' logic is
// exercised where no GPU is.
#pragma once

#if defined(FOCAL_CUDA_EMULATION)
#include "tests/cuda/emulation/device_emulation.h"
#else
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cub/block/block_reduce.cuh>

/// FOCAL_LAUNCH(blocks, threads, stream, kernel)(args...) is kernel<<<blocks, threads, 0,
/// stream>>>(args...), in a form the emulation can launch too (the kernel name may hold commas).
#define FOCAL_LAUNCH(blocks, threads, stream, ...) __VA_ARGS__<<<(blocks), (threads), 0, (stream)>>>
#endif
