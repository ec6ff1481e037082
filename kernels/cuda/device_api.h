// The CUDA device API the kernels use, from one place: the real one, or a stand-in the build
// names. The host tests (tests/cuda/emulation, target focal_cuda_emulated) define
// FOCAL_DEVICE_API_HEADER as the header of an emulation that runs the same kernel source on CPU
// threads (warps and blocks in lockstep at every shuffle and barrier), so the kernels' logic is
// exercised where no GPU is; production code never names it. This is the only header that knows
// about the switch: the others include this one.
#pragma once

#if defined(FOCAL_DEVICE_API_HEADER)
#include FOCAL_DEVICE_API_HEADER
#else
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

// CUB is device code: only under nvcc (host-compiled users such as cuda_backend.cc include this
// header through loss_kernels.h for the runtime types alone).
#if defined(__CUDACC__)
#include <cub/block/block_reduce.cuh>
#endif

/// FOCAL_LAUNCH(blocks, threads, stream, kernel)(args...) is kernel<<<blocks, threads, 0,
/// stream>>>(args...), in a form the emulation can launch too (the kernel name may hold commas).
#define FOCAL_LAUNCH(blocks, threads, stream, ...) __VA_ARGS__<<<(blocks), (threads), 0, (stream)>>>
#endif
