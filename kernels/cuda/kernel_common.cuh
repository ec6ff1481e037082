// What every kernel translation unit shares: the math, the memory helpers, the per-block end of
// the deterministic reduction, and the switches from run-time job values to template arguments.
#pragma once

#include <type_traits>

#include "focal/kernel_args.h"
#include "focal/element_formulas.h"
#include "focal/math.h"
#include "focal/math_ops.h"
#include "kernels/cuda/device_api.h"
#include "kernels/cuda/device_memory.cuh"
#include "kernels/cuda/loss_kernels.h"
#include "kernels/cuda/online_softmax.h"
#include "kernels/cuda/teams.cuh"

namespace focal::cuda {

/// Threads per block of the elementwise, warp-row and strided kernels, and of the block-row one.
constexpr int kThreads = 256;
constexpr int kBlockRowThreads = 512;

/// Ends a kernel: the block's loss sum (float64, CUB's fixed tree) into partials[blockIdx.x],
/// and any input flags into *flags (an integer OR: the only atomic, and order-free).
template <int kBlockThreads>
__device__ __forceinline__ void FinishBlock(double thread_sum, int thread_flags, double* partials, int* flags) {
  using Reduce = cub::BlockReduce<double, kBlockThreads>;
  __shared__ typename Reduce::TempStorage storage;
  const double block_sum = Reduce(storage).Sum(thread_sum);
  if (threadIdx.x == 0) partials[blockIdx.x] = block_sum;
  if (thread_flags != 0) atomicOr(flags, thread_flags);
}

/// The per-item upstream weight (NONE's tensor) times the reduction's scale.
template <class T>
__device__ __forceinline__ T ItemWeight(const KernelArgs& a, int64_t item) {
  return static_cast<T>(a.grad_scale) * (a.item_weights ? static_cast<T>(a.item_weights[item]) : T(1));
}

template <DType kDT>
using DTypeConstant = std::integral_constant<DType, kDT>;

/// Calls f(DTypeConstant<dt>) for the logits dtypes the kernels are compiled for.
template <class F>
cudaError_t DispatchLogitsDType(DType dt, const F& f) {
  switch (dt) {
    case DType::kFloat32: return f(DTypeConstant<DType::kFloat32>{});
    case DType::kFloat16: return f(DTypeConstant<DType::kFloat16>{});
    case DType::kBFloat16: return f(DTypeConstant<DType::kBFloat16>{});
    case DType::kFloat64: return f(DTypeConstant<DType::kFloat64>{});
    default: return cudaErrorInvalidValue;
  }
}

/// Calls f(std::true_type) or f(std::false_type).
template <class F>
cudaError_t DispatchBool(bool b, const F& f) {
  return b ? f(std::true_type{}) : f(std::false_type{});
}

}  // namespace focal::cuda
