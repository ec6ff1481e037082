// The elementwise variants on the GPU (sigmoid_focal, dynamic_focal, asymmetric, quality_focal,
// varifocal, focal_star): one pass over the logits, each thread a run of 8 consecutive elements
// per grid-stride step (16-byte loads and stores for every dtype: one vector of 16-bit floats,
// two of float32, four of float64), the last partial run element by element. The per-element
// formula is focal/element_formulas-inl.h's math::Element, chosen at compile time from
// KernelArgs::formula, the same the CPU backend runs.
#include "focal/element_formulas.h"
#include "kernels/cuda/kernel_common.cuh"
#include "kernels/cuda/kernel_launchers.h"

namespace focal::cuda {
namespace {

constexpr int kRun = 8;

/// A run's float32 per-item weights (upstream or loss weights), 0 past the end of a partial run.
template <class T>
__device__ __forceinline__ void LoadWeights(const float* w, int64_t i0, bool full, int count, T (&out)[kRun]) {
  if (full) {
    LoadRun<kRun>(w, DType::kFloat32, i0, out);
  } else {
#pragma unroll
    for (int k = 0; k < kRun; ++k) out[k] = k < count ? static_cast<T>(w[i0 + k]) : T(0);
  }
}

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

template <ElementFormula kF, DType kDT, bool kIndexTargets, bool kGrad>
__global__ void __launch_bounds__(kThreads) ElementwiseKernel(const KernelArgs a, double* partials, int* flags) {
  using T = ComputeT<kDT>;
  const ScalarOps<T> o;
  const math::Element<kF, ScalarOps<T>> formula(o, a);
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
      // t = [c == y] (quality_focal with scores: the position's score there); the value C means
      // background (all negatives), ignored rows count nothing.
      ClassCursor at(i0, a.classes, a.inner);
#pragma unroll
      for (int k = 0; k < kRun; ++k) {
        const int64_t y = k < count ? LoadClassIndex(a.targets, a.targets_dtype, at.position, a.has_ignore_index, a.ignore_index) : -1;
        valid[k] = y >= 0;
        const bool is_target = y == at.c;
        t[k] = !is_target ? T(0) : a.scores ? LoadAs<T>(a.scores, a.scores_dtype, at.position) : T(1);
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
    T weight[kRun], loss_weight[kRun];
    if (kGrad && a.item_weights) LoadWeights(a.item_weights, i0, full, count, weight);
    if (a.loss_weights) LoadWeights(a.loss_weights, i0, full, count, loss_weight);
    T loss[kRun], grad[kRun];
#pragma unroll
    for (int k = 0; k < kRun; ++k) {
      if (a.check_inputs && k < count) {
        const bool ok = a.probabilities ? (x[k] >= T(0) && x[k] <= T(1)) : IsFiniteValue(x[k]);
        if (!ok) bad |= kBadInput;
      }
      // The form per element: sigmoid_focal's hard one wherever t is 0 or 1.
      math::LossGrad<T> out =
          formula(o, x[k], t[k], math::IsBinaryTarget(o, t[k]), math::ClassWeights<T>{ap[k], an[k]});
      if (!valid[k]) out = {T(0), T(0)};
      // The request's loss weights scale the loss here; their gradient side is in item_weights.
      if (a.loss_weights) out.loss = out.loss * loss_weight[k];
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

/// Launches formula kF's kernel for the job's dtype, target form and gradient.
template <ElementFormula kF>
cudaError_t LaunchFormula(bool index_targets, const KernelArgs& a, const LaunchPlan& plan, double* partials,
                          int* flags, cudaStream_t stream) {
  return DispatchLogitsDType(a.logits_dtype, [&](auto dt) {
    return DispatchBool(index_targets, [&](auto index) {
      return DispatchBool(a.gradient != nullptr, [&](auto grad) -> cudaError_t {
        using DT = decltype(dt);
        using Index = decltype(index);
        using Grad = decltype(grad);
        if constexpr (Index::value && kF == ElementFormula::kVarifocal) {
          return cudaErrorInvalidValue;  // varifocal takes float targets only (validated)
        } else {
          FOCAL_LAUNCH(plan.blocks, plan.threads, stream,
                       ElementwiseKernel<kF, DT::value, Index::value, Grad::value>)(a, partials, flags);
          return cudaGetLastError();
        }
      });
    });
  });
}

}  // namespace

cudaError_t LaunchElementwise(bool index_targets, const KernelArgs& a, const LaunchPlan& plan, double* partials,
                              int* flags, cudaStream_t stream) {
  switch (a.formula) {
    case ElementFormula::kSigmoidFocal:
      return LaunchFormula<ElementFormula::kSigmoidFocal>(index_targets, a, plan, partials, flags, stream);
    case ElementFormula::kAsymmetric:
      return LaunchFormula<ElementFormula::kAsymmetric>(index_targets, a, plan, partials, flags, stream);
    case ElementFormula::kQualityFocal:
      return LaunchFormula<ElementFormula::kQualityFocal>(index_targets, a, plan, partials, flags, stream);
    case ElementFormula::kVarifocal:
      return LaunchFormula<ElementFormula::kVarifocal>(index_targets, a, plan, partials, flags, stream);
    case ElementFormula::kFocalStar:
      return LaunchFormula<ElementFormula::kFocalStar>(index_targets, a, plan, partials, flags, stream);
  }
  return cudaErrorInvalidValue;
}

int64_t ElementwiseRuns(int64_t num_elements) { return (num_elements + kRun - 1) / kRun; }

}  // namespace focal::cuda
