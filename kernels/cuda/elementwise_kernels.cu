// sigmoid_focal and dynamic_focal on the GPU: one pass over the logits, each thread a run of 8
// consecutive elements per grid-stride step (16-byte loads and stores for every dtype: one
// vector of 16-bit floats, two of float32, four of float64), the last partial run element by
// element. The formulas are focal/math-inl.h's (math::SigmoidFocal, math::DynamicFocalWeights),
// the same the CPU backend runs.
#include "kernels/cuda/kernel_common.cuh"
#include "kernels/cuda/kernel_launchers.h"

namespace focal::cuda {
namespace {

constexpr int kRun = 8;

/// Where element i sits in [N, C, S]: its class c and its position n·S + s, advanced one element
/// at a time so that a run costs two divisions, not two per element.
struct ClassCursor {
  int64_t c, s, position;
  __device__ __forceinline__ ClassCursor(int64_t i, int64_t C, int64_t S) {
    const int64_t nc = i / S;
    s = i - nc * S;
    const int64_t n = nc / C;
    c = nc - n * C;
    position = n * S + s;
  }
  __device__ __forceinline__ void Next(int64_t C, int64_t S) {
    if (++s < S) {
      ++position;
    } else {
      s = 0;
      if (++c == C) {
        c = 0;
        ++position;  // the next n's first position follows the last one of this n
      } else {
        position -= S - 1;  // back to this n's first position
      }
    }
  }
};

template <DType kDT, bool kIndexTargets, bool kGrad>
__global__ void __launch_bounds__(kThreads) SigmoidKernel(const KernelArgs a, double* partials, int* flags) {
  using T = ComputeT<kDT>;
  const ScalarOps<T> o;
  const math::SigmoidFocalConsts<T> consts =
      math::MakeSigmoidFocalConsts(o, a.gamma, a.smoothing, a.smoothing_floor, a.probabilities);
  const int64_t n = a.num_elements;
  const int64_t runs = (n + kRun - 1) / kRun;
  double sum = 0;
  int bad = 0;
  for (int64_t r = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; r < runs;
       r += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t i0 = r * kRun;
    const bool full = i0 + kRun <= n;
    const int count = full ? kRun : static_cast<int>(n - i0);
    T x[kRun], t[kRun], ap[kRun], an[kRun];
    bool valid[kRun];
    if (full) {
      LoadRun<kRun>(a.logits, kDT, i0, x);
    } else {
#pragma unroll
      for (int k = 0; k < kRun; ++k) x[k] = k < count ? LoadAs<T>(a.logits, kDT, i0 + k) : T(0);
    }
    if constexpr (kIndexTargets) {
      // t = [c == y]; the value C means background (all negatives), ignored rows count nothing.
      ClassCursor at(i0, a.classes, a.inner);
#pragma unroll
      for (int k = 0; k < kRun; ++k) {
        const int64_t y = k < count ? LoadClassIndex(a.targets, a.targets_dtype, at.position, a.has_ignore_index, a.ignore_index) : -1;
        valid[k] = y >= 0;
        t[k] = y == at.c ? T(1) : T(0);
        ap[k] = static_cast<T>(a.alpha_pos);
        an[k] = static_cast<T>(a.alpha_neg);
        at.Next(a.classes, a.inner);
      }
    } else {
      if (full) {
        LoadRun<kRun>(a.targets, a.targets_dtype, i0, t);
      } else {
#pragma unroll
        for (int k = 0; k < kRun; ++k) t[k] = k < count ? LoadAs<T>(a.targets, a.targets_dtype, i0 + k) : T(0);
      }
      // dynamic_focal's α_n changes at row boundaries: one division per run, then a compare.
      int64_t row = a.row_alpha ? i0 / a.row_length : 0;
      int64_t row_end = (row + 1) * a.row_length;
#pragma unroll
      for (int k = 0; k < kRun; ++k) {
        valid[k] = true;
        if (a.row_alpha) {
          if (i0 + k >= row_end) ++row, row_end += a.row_length;
          const math::ClassWeights<T> alpha =
              math::DynamicFocalWeights(o, k < count ? static_cast<T>(a.row_alpha[row]) : T(0));
          ap[k] = alpha.pos;
          an[k] = alpha.neg;
        } else {
          ap[k] = static_cast<T>(a.alpha_pos);
          an[k] = static_cast<T>(a.alpha_neg);
        }
        const bool in_range = t[k] >= T(0) && t[k] <= T(1);
        if (k < count && !math::IsBinaryTarget(o, t[k]) && (a.binary_targets || !in_range)) bad |= kBadTarget;
      }
    }
    T weight[kRun];
    if (kGrad && a.item_weights) {
      if (full) {
        LoadRun<kRun>(a.item_weights, DType::kFloat32, i0, weight);
      } else {
#pragma unroll
        for (int k = 0; k < kRun; ++k) weight[k] = k < count ? static_cast<T>(a.item_weights[i0 + k]) : T(0);
      }
    }
    T loss[kRun], grad[kRun];
#pragma unroll
    for (int k = 0; k < kRun; ++k) {
      if (a.check_inputs && k < count) {
        const bool ok = a.probabilities ? (x[k] >= T(0) && x[k] <= T(1)) : IsFiniteValue(x[k]);
        if (!ok) bad |= kBadInput;
      }
      // The form per element: the hard one wherever t is 0 or 1.
      math::LossGrad<T> out =
          math::SigmoidFocal(o, consts, x[k], t[k], math::IsBinaryTarget(o, t[k]), ap[k], an[k]);
      if (!valid[k]) out = {T(0), T(0)};
      T g = out.grad * static_cast<T>(a.grad_scale);
      if (kGrad && a.item_weights) g = g * weight[k];
      // allow_non_finite: a NaN input gives NaN outputs, as in PyTorch.
      const bool nan_in = a.propagate_nan && x[k] != x[k];
      loss[k] = nan_in ? x[k] : out.loss;
      grad[k] = nan_in ? x[k] : g;
      if (k < count) sum += static_cast<double>(loss[k]);
    }
    if (full) {
      if (a.losses) StoreRun<kRun>(a.losses, a.output_dtype, i0, loss);
      if (kGrad) StoreRun<kRun>(a.gradient, a.output_dtype, i0, grad);
    } else {
#pragma unroll
      for (int k = 0; k < kRun; ++k) {
        if (k >= count) break;
        if (a.losses) StoreAs(a.losses, a.output_dtype, i0 + k, loss[k]);
        if (kGrad) StoreAs(a.gradient, a.output_dtype, i0 + k, grad[k]);
      }
    }
  }
  FinishBlock<kThreads>(sum, bad, partials, flags);
}

}  // namespace

cudaError_t LaunchSigmoid(bool index_targets, const KernelArgs& a, const LaunchPlan& plan, double* partials,
                          int* flags, cudaStream_t stream) {
  return DispatchLogitsDType(a.logits_dtype, [&](auto dt) {
    return DispatchBool(index_targets, [&](auto index) {
      return DispatchBool(a.gradient != nullptr, [&](auto grad) {
        FOCAL_LAUNCH(plan.blocks, plan.threads, stream,
                     SigmoidKernel<decltype(dt)::value, decltype(index)::value, decltype(grad)::value>)(a, partials, flags);
        return cudaGetLastError();
      });
    });
  });
}

int64_t SigmoidRuns(int64_t num_elements) { return (num_elements + kRun - 1) / kRun; }

}  // namespace focal::cuda
