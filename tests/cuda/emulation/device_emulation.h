// A host emulation of the slice of the CUDA device API that kernels/cuda uses, so that the real
// kernel source runs on CPU threads in the tests (tests/cuda/emulation_test.cc) where no GPU is.
// Included through kernels/cuda/device_api.h, which the target focal_cuda_emulated points here
// with FOCAL_DEVICE_API_HEADER (tests/CMakeLists.txt).
//
// Faithful where our kernels depend on it: every CUDA thread of a block is a fiber on the
// launching thread (device_emulation.cc); __syncthreads is a block-wide barrier and each
// __shfl_xor_sync a warp-wide one, so a shuffle or barrier that not every thread reaches — undefined
// on a GPU — is reported and aborts. Blocks run one after another; __shared__ variables are
// function statics, shared by the threads of the running block. Conversions to
// float16/bfloat16 round to nearest even as the device intrinsics do. What it cannot show: the
// device compiler's code, timing, memory-model subtleties beyond these barriers, and speed.
#pragma once

#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>

#include "focal/dtype.h"

// ---- qualifiers --------------------------------------------------------------------------------
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __shared__ static

// ---- runtime types and calls ---------------------------------------------------------------------
enum cudaError_t : int { cudaSuccess = 0, cudaErrorInvalidValue = 1 };
using cudaStream_t = struct EmulatedStream*;

inline cudaError_t cudaGetLastError() { return cudaSuccess; }
inline cudaError_t cudaMemsetAsync(void* p, int value, size_t bytes, cudaStream_t) {
  std::memset(p, value, bytes);
  return cudaSuccess;
}

// ---- vector and 16-bit float types ---------------------------------------------------------------
struct alignas(16) uint4 {
  unsigned int x, y, z, w;
};
struct alignas(8) uint2 {
  unsigned int x, y;
};
struct __half {
  unsigned short bits;
};
struct __nv_bfloat16 {
  unsigned short bits;
};

inline float __half2float(__half h) { return focal::HalfToFloat(h.bits); }
inline __half __ushort_as_half(unsigned short u) { return {u}; }
inline unsigned short __half_as_ushort(__half h) { return h.bits; }
inline __half __float2half_rn(float f) { return {focal::FloatToHalf(f)}; }
inline __nv_bfloat16 __float2bfloat16_rn(float f) { return {focal::FloatToBFloat16(f)}; }
inline unsigned short __bfloat16_as_ushort(__nv_bfloat16 b) { return b.bits; }
inline float __uint_as_float(uint32_t u) { return focal::BitsToFloat(u); }
inline uint32_t __float_as_uint(float f) { return focal::FloatBits(f); }
inline double __longlong_as_double(long long v) {
  double d;
  std::memcpy(&d, &v, sizeof d);
  return d;
}
inline long long __double_as_longlong(double d) {
  long long v;
  std::memcpy(&v, &d, sizeof v);
  return v;
}

template <class T>
inline T __ldg(const T* p) {
  return *p;
}

inline int atomicOr(int* address, int value) { return __atomic_fetch_or(address, value, __ATOMIC_RELAXED); }

// ---- thread geometry, barriers, shuffles ------------------------------------------------------------
struct EmulatedDim3 {
  unsigned int x = 0, y = 1, z = 1;
};
inline thread_local EmulatedDim3 threadIdx, blockIdx, blockDim, gridDim;

namespace focal::cuda::emulation {

/// Called by the emulated __syncthreads and __shfl_xor_sync.
void SyncBlock();
uint32_t ShuffleXor(uint32_t value, int lane_mask, int width);

/// Runs `body` as `blocks` blocks of `threads` threads (a multiple of 32), one block at a time,
/// on the calling thread.
void LaunchGrid(int blocks, int threads, const std::function<void()>& body);

/// FOCAL_LAUNCH's stand-in for <<<blocks, threads>>>.
template <class Kernel>
struct Launcher {
  int blocks, threads;
  Kernel kernel;
  template <class... Args>
  void operator()(Args... args) const {
    LaunchGrid(blocks, threads, [&] { kernel(args...); });
  }
};
template <class Kernel>
Launcher(int, int, Kernel) -> Launcher<Kernel>;

}  // namespace focal::cuda::emulation

inline void __syncthreads() { focal::cuda::emulation::SyncBlock(); }
inline unsigned int __shfl_xor_sync(unsigned int /*mask: the full warp, always*/, unsigned int value, int lane_mask,
                                    int width = 32) {
  return focal::cuda::emulation::ShuffleXor(value, lane_mask, width);
}

#define FOCAL_LAUNCH(blocks, threads, stream, ...) \
  ::focal::cuda::emulation::Launcher{static_cast<int>(blocks), static_cast<int>(threads), __VA_ARGS__}

// ---- CUB: the one block primitive the kernels use -----------------------------------------------------
namespace cub {

/// Only thread 0's result is defined, as in CUB; the order of the sum is fixed.
template <class T, int kThreads>
class BlockReduce {
 public:
  struct TempStorage {
    T values[kThreads];
  };
  explicit BlockReduce(TempStorage& storage) : storage_(storage) {}
  T Sum(T value) {
    storage_.values[threadIdx.x] = value;
    __syncthreads();
    T total{};
    if (threadIdx.x == 0) {
      for (int i = 0; i < kThreads; ++i) total += storage_.values[i];
    }
    __syncthreads();
    return total;
  }

 private:
  TempStorage& storage_;
};

}  // namespace cub
