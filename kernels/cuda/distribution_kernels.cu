// distribution_focal on the GPU (VARIANTS.md §5.5): a softmax over the B bins of dim 1, in the
// three row shapes of row_kernels.cuh ([N, B] rows to lanes of a warp or to a block, [N, B, S]
// a thread per position read at stride S). One online pass gives the row's max and rest
// (OnlineSoftmax, math::Rest); math::DistributionFocalRow turns them and the two target bins'
// logits into the loss and the gradient's coefficients, the formulas the CPU backend runs.
#include "kernels/cuda/kernel_launchers.h"
#include "kernels/cuda/row_kernels.cuh"

namespace focal::cuda {
namespace {

/// §5.5 for one row: returns the row's loss (times its loss weight); writes the gradient
/// coef_e·e_j with the two target bins' own values, and NONE's per-item loss.
template <DType kDT, bool kGrad, class Team>
__device__ __forceinline__ ComputeT<kDT> DistributionFocalRow(const Team& team, const KernelArgs& a, const RowRef& row,
                                                              int& bad) {
  using T = ComputeT<kDT>;
  const ScalarOps<T> o;
  const OnlineSoftmax<T> stats = RowSoftmaxStats<kDT>(team, a, row, bad);
  const T max = stats.max, rest = stats.Rest();
  // The target distance, in [0, B-1]; NaN fails both compares. A bad one computes as 0 (the
  // job is rejected on the host, which finds the first bad index).
  T y = LoadAs<T>(a.targets, a.targets_dtype, row.item);
  if (!(y >= T(0) && y <= static_cast<T>(a.classes - 1))) {
    if (row.active) bad |= kBadTarget;
    y = T(0);
  }
  const math::DistributionBins<T> bins = math::DistributionFocalBins(y, a.classes);
  const int64_t left = bins.left, right = bins.left + 1;
  // allow_non_finite: a NaN or +inf logit (or only -inf ones) makes the row NaN, as softmax_focal
  // (VARIANTS.md §5.6); a -inf logit alone is a masked bin.
  const bool nan_row = !stats.HasSoftmax() && a.propagate_nan;
  T w = ItemWeight<T>(a, row.item);
  if (nan_row) w = T(NAN);
  const math::DistributionFocalRowGrad<T> rg =
      math::DistributionFocalRow(o, LoadAs<T>(a.logits, kDT, row.base + left * row.stride),
                                 LoadAs<T>(a.logits, kDT, row.base + right * row.stride), max, rest, bins.w_left,
                                 bins.w_right, w);
  if (kGrad && row.active) {
    WriteRowGradient<kDT>(team, a, row.base, row.stride, [&](int64_t c, T x) {
      if (c == left) return rg.grad_left;
      if (c == right) return rg.grad_right;
      return math::SoftmaxFocalGradAt(o, rg.coef_e, math::ExpAboutMax(o, x, max));
    });
  }
  const T loss = LossWeighted(a, row.item, nan_row ? T(NAN) : rg.loss);
  if (a.losses && row.active && team.rank() == 0) StoreAs(a.losses, a.output_dtype, row.item, loss);
  return loss;
}

/// The row variant as row_kernels.cuh's kernels take it (no γ: the argument is unused).
template <DType kDT, bool kGrad>
struct DistributionFocalRows {
  static constexpr DType kLogits = kDT;
  template <class Team>
  __device__ __forceinline__ static ComputeT<kDT> Run(const Team& team, const KernelArgs& a,
                                                      const math::Gamma<ComputeT<kDT>>&, const RowRef& row, int& bad) {
    return DistributionFocalRow<kDT, kGrad>(team, a, row, bad);
  }
};

}  // namespace

cudaError_t LaunchDistributionFocal(const KernelArgs& a, const LaunchPlan& plan, double* partials, int* flags,
                                    cudaStream_t stream) {
  return DispatchLogitsDType(a.logits_dtype, [&](auto dt) {
    return DispatchBool(a.gradient != nullptr, [&](auto grad) {
      return LaunchRows<DistributionFocalRows<decltype(dt)::value, decltype(grad)::value>>(a, plan, partials, flags,
                                                                                           stream);
    });
  });
}

}  // namespace focal::cuda
