// distribution_focal on the CPU: [N, B] rows and the strided [N, B, S] layout read in place, the
// formulas of focal/math-inl.h (math::DistributionFocalBins, math::DistributionFocalRow and §1's
// softmax primitives) compiled once per SIMD target and dispatched at run time. e^(x - max) is
// kept between the softmax and the gradient passes: one exp per logit, as softmax_focal.

#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "kernels/cpu/cpu_distribution_kernels.cc"
#include "hwy/foreach_target.h"  // IWYU pragma: keep
// foreach_target.h re-includes this file once per target; everything below runs each time.
#include "hwy/highway.h"
#include "kernels/cpu/cpu_kernel_families.h"
#include "kernels/cpu/simd-inl.h"

HWY_BEFORE_NAMESPACE();
namespace focal::cpu {
namespace HWY_NAMESPACE {

/// The target distance of position p and whether it lies in [0, B-1] (NaN does not); an
/// out-of-range one computes as 0 and flags the chunk.
template <typename T>
HWY_INLINE T DistanceAt(const KernelArgs& a, int64_t p, ChunkResult& r) {
  const T y = static_cast<T>(ScalarAt(a.targets, a.targets_dtype, p));
  if (y >= T(0) && y <= static_cast<T>(a.classes - 1)) return y;
  r.bad_target = true;
  return T(0);
}

/// [N, B]: pass 1 the row max, pass 2 e_j = e^(x_j - max) (kept) and the normaliser, then the
/// per-row math (math::DistributionFocalRow) for a group of rows at once as one vector, then
/// pass 3 the gradient w·S_j from the kept e_j with the two target bins' own values written
/// over it. As softmax_focal's rows: one exp per logit, the per-row logs once per group.
template <typename T, bool kFloat32>
ChunkResult DistributionRowsChunk(const KernelArgs& args, int64_t begin, int64_t end) {
  const KernelArgs a = args;  // a local copy, as FloatTargetChunk's (cpu_elementwise_kernels.cc)
  const DType logits_dtype = DTypeOf<kFloat32>(a.logits_dtype), output_dtype = DTypeOf<kFloat32>(a.output_dtype);
  hn::ScalableTag<T> d;
  const HwyOps<decltype(d)> o{d};
  const ScalarOps<T> so;
  const int64_t B = a.classes;
  const int64_t lanes = static_cast<int64_t>(hn::Lanes(d));
  const int64_t group = B <= kGroupedRowMaxClasses ? lanes : 1;
  constexpr size_t kMaxLanes = hn::MaxLanes(d);
  T* const e = Scratch<T>(static_cast<size_t>(group * B));
  LossSum<decltype(d)> sum;
  ChunkResult r;
  // Per-row values of the group, laid out as vectors for the per-row math.
  HWY_ALIGN T row_max[kMaxLanes], row_rest[kMaxLanes], row_xl[kMaxLanes], row_xr[kMaxLanes], row_wl[kMaxLanes],
      row_wr[kMaxLanes], row_w[kMaxLanes], row_nan[kMaxLanes], row_lw[kMaxLanes], row_loss[kMaxLanes],
      row_k[kMaxLanes], row_gl[kMaxLanes], row_gr[kMaxLanes];
  int64_t row_left[kMaxLanes];
  for (int64_t first = begin; first < end; first += group) {
    const int64_t rows = std::min(group, end - first);
    for (int64_t g = 0; g < lanes; ++g) {  // idle lanes compute a harmless dummy row
      row_max[g] = row_rest[g] = row_xl[g] = row_xr[g] = row_wr[g] = row_w[g] = row_nan[g] = 0;
      row_wl[g] = row_lw[g] = 1;
    }
    for (int64_t g = 0; g < rows; ++g) {
      const int64_t row = first + g, base = row * B;
      const math::DistributionBins<T> bins = math::DistributionFocalBins(DistanceAt<T>(a, row, r), B);
      row_left[g] = bins.left;
      row_wl[g] = bins.w_left;
      row_wr[g] = bins.w_right;
      bool finite, poisoned;
      const T max = RowMax(d, a, logits_dtype, base, B, finite, poisoned);
      if (!finite && a.check_inputs) r.bad_input = true;
      row_max[g] = max;
      row_rest[g] = RowExpAndRest(d, a, logits_dtype, base, B, max, e + g * B);
      row_xl[g] = static_cast<T>(ScalarAt(a.logits, logits_dtype, base + bins.left));
      row_xr[g] = static_cast<T>(ScalarAt(a.logits, logits_dtype, base + bins.left + 1));
      row_w[g] = static_cast<T>(ItemWeight<T>(a, row));
      if (a.loss_weights) row_lw[g] = static_cast<T>(a.loss_weights[row]);
      if (poisoned && a.propagate_nan) {
        row_w[g] = std::numeric_limits<T>::quiet_NaN();
        row_nan[g] = 1;
      }
    }
    const auto rg = math::DistributionFocalRow(o, hn::Load(d, row_xl), hn::Load(d, row_xr), hn::Load(d, row_max),
                                               hn::Load(d, row_rest), hn::Load(d, row_wl), hn::Load(d, row_wr),
                                               hn::Load(d, row_w));
    auto loss = hn::IfThenElse(hn::Ne(hn::Load(d, row_nan), hn::Zero(d)),
                               hn::Set(d, std::numeric_limits<T>::quiet_NaN()), rg.loss);
    if (a.loss_weights) loss = hn::Mul(loss, hn::Load(d, row_lw));
    hn::Store(loss, d, row_loss);
    hn::Store(rg.coef_e, d, row_k);
    hn::Store(rg.grad_left, d, row_gl);
    hn::Store(rg.grad_right, d, row_gr);
    sum.Add(d, loss);
    for (int64_t g = 0; g < rows; ++g) {
      const int64_t row = first + g, base = row * B;
      if (a.losses) StoreScalar(row_loss[g], a.losses, output_dtype, row);
      if (!a.gradient) continue;
      const T* const row_e = e + g * B;
      const auto kp = hn::Set(d, row_k[g]);
      int64_t c = 0;
      for (; c + lanes <= B; c += lanes) {
        StoreFloat(d, math::SoftmaxFocalGradAt(o, kp, hn::LoadU(d, row_e + c)), a.gradient, output_dtype, base + c);
      }
      for (; c < B; ++c) {
        StoreScalar(math::SoftmaxFocalGradAt(so, row_k[g], row_e[c]), a.gradient, output_dtype, base + c);
      }
      StoreScalar(row_gl[g], a.gradient, output_dtype, base + row_left[g]);
      StoreScalar(row_gr[g], a.gradient, output_dtype, base + row_left[g] + 1);
    }
  }
  r.loss_sum = sum.Total();
  return r;
}

/// [N, B, S]: each lane is its own row (a position s of one n), the bin loop reads
/// x[n, b, s..s+L) at stride S, in place; e^(x - max) is kept per bin and lane between the
/// softmax and gradient passes, and the two target bins' logits are captured by select.
template <class D>
HWY_INLINE void DistributionStridedGroup(D d, const KernelArgs& a, int64_t p, hn::TFromD<D>* e, LossSum<D>& sum,
                                         ChunkResult& r) {
  using T = hn::TFromD<D>;
  const hn::RebindToSigned<D> di;
  using TI = hn::TFromD<decltype(di)>;
  const HwyOps<D> o{d};
  const int64_t B = a.classes, S = a.inner;
  const int64_t L = static_cast<int64_t>(hn::Lanes(d));
  const int64_t n = p / S, s = p % S;
  const int64_t base = n * B * S + s;
  HWY_ALIGN T w_left[hn::MaxLanes(d)], w_right[hn::MaxLanes(d)];
  HWY_ALIGN TI left[hn::MaxLanes(d)];
  for (int64_t k = 0; k < L; ++k) {
    const math::DistributionBins<T> bins = math::DistributionFocalBins(DistanceAt<T>(a, p + k, r), B);
    left[k] = static_cast<TI>(bins.left);
    w_left[k] = bins.w_left;
    w_right[k] = bins.w_right;
  }
  const auto vleft = hn::Load(di, left);
  auto x_at = [&](int64_t b) { return LoadFloat(d, a.logits, a.logits_dtype, base + b * S); };
  auto is_bin = [&](int64_t b, int64_t offset) {
    return hn::RebindMask(d, hn::Eq(vleft, hn::Set(di, static_cast<TI>(b - offset))));
  };
  // Pass 1: the max, and whether each position's logits are finite (or only -inf masked).
  const auto inf = hn::Set(d, std::numeric_limits<T>::infinity());
  auto max = hn::Neg(inf);
  auto finite = hn::Eq(max, max);
  auto below_inf = finite;
  for (int64_t b = 0; b < B; ++b) {
    const auto x = x_at(b);
    max = hn::Max(max, x);
    finite = hn::And(finite, hn::IsFinite(x));
    below_inf = hn::And(below_inf, hn::Lt(x, inf));
  }
  if (a.check_inputs && !hn::AllTrue(d, finite)) r.bad_input = true;
  const auto has_softmax = hn::And(below_inf, hn::Gt(max, hn::Neg(inf)));
  // Pass 2: e = e^(x - max), kept; rest (math::Rest); the target bins' logits by select.
  auto below = hn::Zero(d), ties = hn::Zero(d), x_left = max, x_right = max;
  for (int64_t b = 0; b < B; ++b) {
    const auto x = x_at(b);
    const auto ex = math::ExpAboutMax(o, x, max);
    hn::StoreU(ex, d, e + b * L);
    below = hn::Add(below, math::RestTermOf(o, x, max, ex));
    ties = hn::Add(ties, math::TieTerm(o, x, max));
    x_left = hn::IfThenElse(is_bin(b, 0), x, x_left);
    x_right = hn::IfThenElse(is_bin(b, 1), x, x_right);
  }
  const auto rest = math::Rest(o, below, ties);
  auto w = hn::Set(d, static_cast<T>(a.grad_scale));
  if (a.item_weights) w = hn::Mul(w, LoadFloat(d, a.item_weights, DType::kFloat32, p));
  const auto rg =
      math::DistributionFocalRow(o, x_left, x_right, max, rest, hn::Load(d, w_left), hn::Load(d, w_right), w);
  auto loss = rg.loss;
  if (a.gradient) {
    for (int64_t b = 0; b < B; ++b) {
      auto g = math::SoftmaxFocalGradAt(o, rg.coef_e, hn::LoadU(d, e + b * L));
      g = hn::IfThenElse(is_bin(b, 0), rg.grad_left, g);
      g = hn::IfThenElse(is_bin(b, 1), rg.grad_right, g);
      if (a.propagate_nan) g = hn::IfThenElse(has_softmax, g, hn::Set(d, std::numeric_limits<T>::quiet_NaN()));
      StoreFloat(d, g, a.gradient, a.output_dtype, base + b * S);
    }
  }
  if (a.propagate_nan) loss = hn::IfThenElse(has_softmax, loss, hn::Set(d, std::numeric_limits<T>::quiet_NaN()));
  if (a.loss_weights) loss = hn::Mul(loss, LoadFloat(d, a.loss_weights, DType::kFloat32, p));
  sum.Add(d, loss);
  if (a.losses) StoreFloat(d, loss, a.losses, a.output_dtype, p);
}

template <typename T>
ChunkResult DistributionStridedChunk(const KernelArgs& args, int64_t begin, int64_t end) {
  const KernelArgs a = args;  // a local copy, as FloatTargetChunk's (cpu_elementwise_kernels.cc)
  hn::ScalableTag<T> d;
  hn::CappedTag<T, 1> d1;
  T* const e = Scratch<T>(static_cast<size_t>(a.classes) * hn::Lanes(d));
  LossSum<decltype(d)> sum;
  LossSum<decltype(d1)> tail_sum;
  ChunkResult r;
  const int64_t S = a.inner;
  const int64_t lanes = static_cast<int64_t>(hn::Lanes(d));
  for (int64_t p = begin; p < end;) {
    const int64_t row_end = std::min(end, (p / S + 1) * S);  // lanes never straddle two n
    for (; p + lanes <= row_end; p += lanes) DistributionStridedGroup(d, a, p, e, sum, r);
    for (; p < row_end; ++p) DistributionStridedGroup(d1, a, p, e, tail_sum, r);
  }
  r.loss_sum = sum.Total() + tail_sum.Total();
  return r;
}

/// float64 logits compute in double; every other dtype in float.
template <typename T>
ChunkResult DistributionTyped(const KernelArgs& a, int64_t begin, int64_t end) {
  if (a.inner != 1) return DistributionStridedChunk<T>(a, begin, end);
  return RunFloat32OrGeneral<T>(LogitsAndOutputsAreFloat32(a), [&](auto float32_form) {
    return DistributionRowsChunk<T, decltype(float32_form)::value>(a, begin, end);
  });
}

ChunkResult DistributionChunkImpl(const KernelArgs& a, int64_t begin, int64_t end) {
  return a.logits_dtype == DType::kFloat64 ? DistributionTyped<double>(a, begin, end)
                                           : DistributionTyped<float>(a, begin, end);
}

}  // namespace HWY_NAMESPACE
}  // namespace focal::cpu
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
namespace focal::cpu {

HWY_EXPORT(DistributionChunkImpl);

ChunkResult RunDistributionChunk(const KernelArgs& args, int64_t begin, int64_t end) {
  return HWY_DYNAMIC_DISPATCH(DistributionChunkImpl)(args, begin, end);
}

}  // namespace focal::cpu
#endif
