// softmax_focal and focal_cosine on the GPU (distribution_focal's row, distribution_kernels.cu,
// runs in the same shapes). Each row function is written once against a team
// (teams.cuh) and runs in three shapes: lanes of a warp per [N, C] row for small C, a block per
// row for large C, a thread per position for the strided [N, C, S] layout (read in place: the
// threads of a warp take neighbouring positions, so every class read is coalesced). The softmax
// statistics come from one online pass (running max, the sum below it, the count of ties); the
// gradient pass reads the row again, from L1/L2 for all but the largest rows.
#pragma once

#include <cmath>

#include "kernels/cuda/kernel_common.cuh"
#include "kernels/cuda/online_softmax.h"

namespace focal::cuda {

/// The member's share of the row's C logits at base + c·stride, in runs of 16 bytes per member
/// where the row is contiguous and aligned, single elements otherwise. kWrite: f(c, x_c) is the
/// gradient of class c, stored in the same runs (a run of V elements at an index that is a
/// multiple of V is aligned for every output dtype); otherwise f(c, x_c) only reads.
template <DType kDT, bool kWrite, class Team, class F>
__device__ __forceinline__ void VisitRow(const Team& team, const KernelArgs& a, int64_t base, int64_t stride,
                                         const F& f) {
  using T = ComputeT<kDT>;
  constexpr int kV = kVectorElements<kDT>;
  const int64_t C = a.classes;
  if (stride == 1 && C % kV == 0 && base % kV == 0) {
#pragma unroll 4  // several loads in flight before the first use
    for (int64_t v = team.rank(); v < C / kV; v += team.size()) {
      T x[kV], out[kV];
      LoadRun<kV>(a.logits, kDT, base + v * kV, x);
#pragma unroll
      for (int k = 0; k < kV; ++k) {
        if constexpr (kWrite) {
          out[k] = f(v * kV + k, x[k]);
        } else {
          f(v * kV + k, x[k]);
        }
      }
      if constexpr (kWrite) StoreRun<kV>(a.gradient, a.output_dtype, base + v * kV, out);
    }
  } else {
    for (int64_t c = team.rank(); c < C; c += team.size()) {
      const T x = LoadAs<T>(a.logits, kDT, base + c * stride);
      if constexpr (kWrite) {
        StoreAs(a.gradient, a.output_dtype, base + c * stride, f(c, x));
      } else {
        f(c, x);
      }
    }
  }
}

/// Calls f(c, x_c) over the member's share of the row.
template <DType kDT, class Team, class F>
__device__ __forceinline__ void ForEachInRow(const Team& team, const KernelArgs& a, int64_t base, int64_t stride,
                                             const F& f) {
  VisitRow<kDT, false>(team, a, base, stride, f);
}

/// Writes the gradient g(c, x_c) of the member's share of the row.
template <DType kDT, class Team, class G>
__device__ __forceinline__ void WriteRowGradient(const Team& team, const KernelArgs& a, int64_t base, int64_t stride,
                                                 const G& g) {
  VisitRow<kDT, true>(team, a, base, stride, g);
}

/// A row's loss times the request's loss weight of the row, when there are any (their gradient
/// side is already in item_weights).
template <class T>
__device__ __forceinline__ T LossWeighted(const KernelArgs& a, int64_t item, T loss) {
  return a.loss_weights ? loss * static_cast<T>(a.loss_weights[item]) : loss;
}

/// Where a row is and what its team does with it.
struct RowRef {
  int64_t item;    ///< index of the per-item loss (n·S + s) and of its target
  int64_t base;    ///< first logit
  int64_t stride;  ///< between classes
  bool active;     ///< false for a warp's padding rows past the end: computed, never written
};

/// One pass over a row: its max, rest and finiteness (OnlineSoftmax), reduced over the team,
/// with a non-finite logit of an active row flagged in `bad` for the input check.
template <DType kDT, class Team>
__device__ __forceinline__ OnlineSoftmax<ComputeT<kDT>> RowSoftmaxStats(const Team& team, const KernelArgs& a,
                                                                        const RowRef& row, int& bad) {
  using T = ComputeT<kDT>;
  const ScalarOps<T> o;
  OnlineSoftmax<T> stats = OnlineSoftmax<T>::Empty();
  ForEachInRow<kDT>(team, a, row.base, row.stride, [&](int64_t, T x) { stats.Add(o, x); });
  stats = team.Reduce(stats, CombineOnlineSoftmax());
  if (!stats.finite && a.check_inputs && row.active) bad |= kBadInput;
  return stats;
}

/// §1 for one row: returns the row's loss; writes the gradient and NONE's per-item loss.
template <DType kDT, bool kSmooth, bool kGrad, class Team>
__device__ __forceinline__ ComputeT<kDT> SoftmaxFocalRow(const Team& team, const KernelArgs& a,
                                                         const math::Gamma<ComputeT<kDT>>& gamma, const RowRef& row,
                                                         int& bad) {
  using T = ComputeT<kDT>;
  const ScalarOps<T> o;
  const OnlineSoftmax<T> stats = RowSoftmaxStats<kDT>(team, a, row, bad);
  const T max = stats.max, rest = stats.Rest();
  const int64_t y = LoadClassIndex(a.targets, a.targets_dtype, row.item, a.has_ignore_index, a.ignore_index);
  const bool valid = y >= 0;
  // allow_non_finite: a counted row with a NaN or +inf logit (or only -inf ones) has a NaN loss
  // and gradient, as in PyTorch; a -inf logit alone is a masked class (VARIANTS.md §5.6). With
  // label smoothing every class carries a term, so any non-finite logit makes the row NaN. An
  // ignored row contributes 0 like every ignored item.
  const bool has_softmax = kSmooth ? static_cast<bool>(stats.finite) : stats.HasSoftmax();
  const bool nan_row = !has_softmax && a.propagate_nan && valid;
  T w = valid ? ItemWeight<T>(a, row.item) : T(0);
  if (nan_row) w = T(NAN);
  // α in the compute type: float64 kernels read it exactly.
  auto alpha_at = [&](int64_t c) { return a.class_alpha ? static_cast<T>(a.class_alpha[c]) : T(1); };
  T loss;
  if constexpr (!kSmooth) {
    // An ignored row takes its max as x_y: log p_y ≤ 0 keeps its (unused) focal term finite.
    const T x_y = valid ? LoadAs<T>(a.logits, kDT, row.base + y * row.stride) : max;
    const T alpha_y = valid ? alpha_at(y) : T(0);
    const math::SoftmaxRowGrad<T> rg = math::SoftmaxFocalRow(o, x_y, max, rest, alpha_y, w, gamma, math::SoftmaxOptionsOf(a));
    loss = valid ? rg.loss : T(0);
    if (kGrad && row.active) {
      WriteRowGradient<kDT>(team, a, row.base, row.stride, [&](int64_t c, T x) {
        if (!valid) return T(0);
        return c == y ? rg.grad_y : math::SoftmaxFocalGradAt(o, rg.coef_e, math::ExpAboutMax(o, x, max));
      });
    }
  } else {
    // ℓ = Σ_c weight_c f_c and W = Σ_c weight_c g_c (math::SoftmaxFocalSmoothedClass).
    const math::LabelSmoothing<T> smoothing = math::MakeLabelSmoothing(o, a.smoothing, a.classes);
    const T log_norm = math::LogNormalizer(o, rest);
    // Σ over every class, in float64: W's error becomes the gradient's, and a thread of a
    // block-row team adds up to C/512 terms in turn.
    Sums<double, 2> sums{{0.0, 0.0}};
    ForEachInRow<kDT>(team, a, row.base, row.stride, [&](int64_t c, T x) {
      const T u = math::LogProb(o, x, max, log_norm);
      const math::SmoothedClass<T> cls = math::SoftmaxFocalSmoothedClass(o, u, c == y, alpha_at(c), smoothing, gamma);
      sums.v[0] += static_cast<double>(cls.weight * cls.term.f);
      sums.v[1] += static_cast<double>(cls.weight * cls.term.g);
    });
    sums = team.Reduce(sums, AddSums());
    loss = valid ? static_cast<T>(sums.v[0]) : T(0);
    if (kGrad && row.active) {
      const T W = static_cast<T>(sums.v[1]);
      WriteRowGradient<kDT>(team, a, row.base, row.stride, [&](int64_t c, T x) {
        if (!valid) return T(0);
        const T weight = math::SmoothedWeight(o, smoothing, c == y, alpha_at(c));
        return math::SoftmaxFocalSmoothedGrad(o, math::LogProb(o, x, max, log_norm), weight, W, w, gamma);
      });
    }
  }
  if (nan_row) loss = T(NAN);
  loss = LossWeighted(a, row.item, loss);
  if (a.losses && row.active && team.rank() == 0) StoreAs(a.losses, a.output_dtype, row.item, loss);
  return loss;
}

/// §3 for one [N, C] row: pass 1 ‖x‖², the max and finiteness; pass 2 the softmax sums of
/// z = x/‖x‖ (exact about z_max = CosineZ(max), as z_scale > 0); then math::FocalCosine's
/// per-row coefficients and the gradient (math::FocalCosineGradAt).
template <DType kDT, bool kGrad, class Team>
__device__ __forceinline__ ComputeT<kDT> FocalCosineRow(const Team& team, const KernelArgs& a,
                                                        const math::Gamma<ComputeT<kDT>>& gamma, const RowRef& row,
                                                        int& bad) {
  using T = ComputeT<kDT>;
  const ScalarOps<T> o;
  struct Norm {
    T sum_squares, max;
    int finite;
  };
  Norm norm{T(0), T(-INFINITY), 1};
  ForEachInRow<kDT>(team, a, row.base, row.stride, [&](int64_t, T x) {
    norm.sum_squares += x * x;
    norm.max = o.Max(norm.max, x);
    norm.finite &= IsFiniteValue(x) ? 1 : 0;
  });
  norm = team.Reduce(norm, [&](const Norm& p, const Norm& q) {
    return Norm{p.sum_squares + q.sum_squares, o.Max(p.max, q.max), p.finite & q.finite};
  });
  if (!norm.finite && a.check_inputs && row.active) bad |= kBadInput;
  const T z_scale = math::CosineZScale(o, norm.sum_squares);
  const T z_max = math::CosineZ(o, norm.max, z_scale);
  Sums<T, 3> sums{{T(0), T(0), T(0)}};  // Σ RestTerm, Σ TieTerm, Σ z e^(z - z_max)
  ForEachInRow<kDT>(team, a, row.base, row.stride, [&](int64_t, T x) {
    const T z = math::CosineZ(o, x, z_scale);
    const T e = math::ExpAboutMax(o, z, z_max);
    sums.v[0] += math::RestTermOf(o, z, z_max, e);
    sums.v[1] += math::TieTerm(o, z, z_max);
    sums.v[2] += z * e;
  });
  sums = team.Reduce(sums, AddSums());
  const T rest = math::Rest(o, sums.v[0], sums.v[1]);
  const int64_t y = LoadClassIndex(a.targets, a.targets_dtype, row.item, a.has_ignore_index, a.ignore_index);
  const T x_y = LoadAs<T>(a.logits, kDT, row.base + y * row.stride);
  const bool nan_row = !norm.finite && a.propagate_nan;  // NaN loss and gradient
  T w = ItemWeight<T>(a, row.item);
  if (nan_row) w = T(NAN);
  const math::FocalCosineRow<T> rc = math::FocalCosine(o, norm.sum_squares, x_y, z_max, rest, sums.v[2],
                                                       static_cast<T>(a.cosine_alpha), gamma,
                                                       static_cast<T>(a.xent), w);
  const T loss = LossWeighted(a, row.item, nan_row ? T(NAN) : rc.loss);  // a NaN upstream weight leaves the loss alone
  if (kGrad && row.active) {
    WriteRowGradient<kDT>(team, a, row.base, row.stride, [&](int64_t c, T x) {
      if (c == y) return rc.grad_y;
      return math::FocalCosineGradAt(o, rc.coef_x, rc.coef_e, x, math::ExpAboutMax(o, math::CosineZ(o, x, z_scale), z_max));
    });
  }
  if (a.losses && row.active && team.rank() == 0) StoreAs(a.losses, a.output_dtype, row.item, loss);
  return loss;
}

/// A row variant as the kernels below take it: Run(team, args, gamma, row, bad) → the row's loss.
template <DType kDT, bool kSmooth, bool kGrad>
struct SoftmaxFocalRows {
  static constexpr DType kLogits = kDT;
  template <class Team>
  __device__ __forceinline__ static ComputeT<kDT> Run(const Team& team, const KernelArgs& a,
                                                      const math::Gamma<ComputeT<kDT>>& gamma, const RowRef& row,
                                                      int& bad) {
    return SoftmaxFocalRow<kDT, kSmooth, kGrad>(team, a, gamma, row, bad);
  }
};

template <DType kDT, bool kGrad>
struct FocalCosineRows {
  static constexpr DType kLogits = kDT;
  template <class Team>
  __device__ __forceinline__ static ComputeT<kDT> Run(const Team& team, const KernelArgs& a,
                                                      const math::Gamma<ComputeT<kDT>>& gamma, const RowRef& row,
                                                      int& bad) {
    return FocalCosineRow<kDT, kGrad>(team, a, gamma, row, bad);
  }
};

/// [N, C], small C: each warp takes 32 / width rows at a time, `width` lanes per row.
template <class Rows>
__global__ void __launch_bounds__(kThreads) WarpRowsKernel(const KernelArgs a, int width, double* partials, int* flags) {
  using T = ComputeT<Rows::kLogits>;
  const math::Gamma<T> gamma = math::MakeGamma(ScalarOps<T>(), a.gamma);
  const int lane = static_cast<int>(threadIdx.x) & 31;
  const WarpTeam team{width, lane % width};
  const int rows_per_warp = 32 / width;
  const int64_t warp = (blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x) / 32;
  const int64_t warps = static_cast<int64_t>(gridDim.x) * blockDim.x / 32;
  const int64_t N = a.batch;
  double sum = 0;
  int bad = 0;
  // The loop bound is the same for every lane of a warp, so all of them reach each shuffle.
  for (int64_t first = warp * rows_per_warp; first < N; first += warps * rows_per_warp) {
    const int64_t n = first + lane / width;
    const bool active = n < N;
    const int64_t r = active ? n : N - 1;  // padding lanes recompute the last row, writing nothing
    const T loss = Rows::Run(team, a, gamma, RowRef{r, r * a.classes, 1, active}, bad);
    if (active && team.rank() == 0) sum += static_cast<double>(loss);
  }
  FinishBlock<kThreads>(sum, bad, partials, flags);
}

/// [N, C], large C: a block per row.
template <class Rows>
__global__ void __launch_bounds__(kBlockRowThreads) BlockRowsKernel(const KernelArgs a, double* partials, int* flags) {
  using T = ComputeT<Rows::kLogits>;
  __shared__ BlockTeamScratch scratch;
  const math::Gamma<T> gamma = math::MakeGamma(ScalarOps<T>(), a.gamma);
  const BlockTeam<kBlockRowThreads> team{&scratch};
  double sum = 0;
  int bad = 0;
  for (int64_t n = blockIdx.x; n < a.batch; n += gridDim.x) {
    const T loss = Rows::Run(team, a, gamma, RowRef{n, n * a.classes, 1, true}, bad);
    if (team.rank() == 0) sum += static_cast<double>(loss);
  }
  FinishBlock<kBlockRowThreads>(sum, bad, partials, flags);
}

/// [N, C, S]: a thread per position n·S + s, classes at stride S.
template <class Rows>
__global__ void __launch_bounds__(kThreads) StridedRowsKernel(const KernelArgs a, double* partials, int* flags) {
  using T = ComputeT<Rows::kLogits>;
  const math::Gamma<T> gamma = math::MakeGamma(ScalarOps<T>(), a.gamma);
  const int64_t S = a.inner, positions = a.batch * a.inner;
  double sum = 0;
  int bad = 0;
  for (int64_t p = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; p < positions;
       p += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t n = p / S, s = p - n * S;
    sum += static_cast<double>(Rows::Run(ThreadTeam(), a, gamma, RowRef{p, n * a.classes * S + s, S, true}, bad));
  }
  FinishBlock<kThreads>(sum, bad, partials, flags);
}

/// Launches `Rows` in the plan's shape (focal_cosine is [N, C] only: no strided instantiation).
template <class Rows, bool kStrided = true>
cudaError_t LaunchRows(const KernelArgs& a, const LaunchPlan& plan, double* partials, int* flags, cudaStream_t stream) {
  switch (plan.shape) {
    case LaunchPlan::Shape::kWarpRows:
      FOCAL_LAUNCH(plan.blocks, plan.threads, stream, WarpRowsKernel<Rows>)(a, plan.row_width, partials, flags);
      break;
    case LaunchPlan::Shape::kBlockRows:
      FOCAL_LAUNCH(plan.blocks, plan.threads, stream, BlockRowsKernel<Rows>)(a, partials, flags);
      break;
    case LaunchPlan::Shape::kStridedRows:
      if constexpr (kStrided) {
        FOCAL_LAUNCH(plan.blocks, plan.threads, stream, StridedRowsKernel<Rows>)(a, partials, flags);
        break;
      }
      return cudaErrorInvalidValue;
    default: return cudaErrorInvalidValue;
  }
  return cudaGetLastError();
}

}  // namespace focal::cuda
