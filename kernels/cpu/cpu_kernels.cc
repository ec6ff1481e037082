// CPU kernels: the formulas of focal/math.h instantiated with Highway vectors, compiled once per
// x86 SIMD target (SSE4, AVX2, AVX-512) and dispatched at run time, so one binary runs well on
// whatever processor the container lands on. Each kernel reads the logits once, in place (the
// class dimension at its stride), widens on load, and writes the gradient once.

#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "kernels/cpu/cpu_kernels.cc"
#include "hwy/foreach_target.h"  // IWYU pragma: keep
// foreach_target.h re-includes this file once per target; everything below runs each time.
#include <cmath>
#include <cstring>
#include <limits>
#include <type_traits>

#include "focal/hd.h"
#include "focal/math_ops.h"
#include "hwy/contrib/math/math-inl.h"
#include "hwy/highway.h"
#include "kernels/cpu/cpu_kernels.h"

HWY_BEFORE_NAMESPACE();
namespace focal::cpu {
namespace HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;

// The shared formulas, compiled again for this target (see focal/math-inl.h).
namespace math {
#include "focal/math-inl.h"
}  // namespace math

/// The math-ops policy of focal/math.h over Highway vectors of descriptor D.
template <class D>
struct HwyOps {
  using V = hn::Vec<D>;
  using M = hn::Mask<D>;
  using T = hn::TFromD<D>;
  D d;

  HWY_INLINE V Set(double c) const { return hn::Set(d, static_cast<T>(c)); }
  HWY_INLINE V Zero() const { return hn::Zero(d); }
  // Highway's transcendentals map NaN to a number (Exp(NaN) is 0); a NaN input must come out
  // as NaN so that allow_non_finite propagates like PyTorch.
  HWY_INLINE V KeepNaN(V a, V y) const { return hn::IfThenElse(hn::IsNaN(a), a, y); }
  HWY_INLINE V Exp(V a) const { return KeepNaN(a, hn::Exp(d, a)); }
  // Highway's logs are defined on (0, max]; the formulas rely on log 0 = -inf.
  HWY_INLINE V Log(V a) const {
    return KeepNaN(a, hn::IfThenElse(hn::Eq(a, Zero()), Set(-HUGE_VAL), hn::Log(d, a)));
  }
  HWY_INLINE V Log1p(V a) const {
    return KeepNaN(a, hn::IfThenElse(hn::Eq(a, Set(-1)), Set(-HUGE_VAL), hn::Log1p(d, a)));
  }
  HWY_INLINE V Expm1(V a) const { return KeepNaN(a, hn::Expm1(d, a)); }
  HWY_INLINE V Sqrt(V a) const { return hn::Sqrt(a); }
  HWY_INLINE V Abs(V a) const { return hn::Abs(a); }
  HWY_INLINE V Neg(V a) const { return hn::Neg(a); }
  HWY_INLINE V Max(V a, V b) const { return hn::Max(a, b); }
  HWY_INLINE V Min(V a, V b) const { return hn::Min(a, b); }
  HWY_INLINE M Lt(V a, V b) const { return hn::Lt(a, b); }
  HWY_INLINE M Le(V a, V b) const { return hn::Le(a, b); }
  HWY_INLINE M Eq(V a, V b) const { return hn::Eq(a, b); }
  HWY_INLINE M Or(M a, M b) const { return hn::Or(a, b); }
  HWY_INLINE V Select(M m, V a, V b) const { return hn::IfThenElse(m, a, b); }
};

// ------------------------------------------------------------------------------------------
// Memory: any floating dtype in, computed in T (float, or double for float64 logits), any
// output dtype out. The dtype switches are uniform over a job, so the branches predict.

HWY_INLINE double ScalarAt(const void* base, DType dtype, int64_t i) {
  switch (dtype) {
    case DType::kFloat32: return static_cast<const float*>(base)[i];
    case DType::kFloat64: return static_cast<const double*>(base)[i];
    case DType::kFloat16: return HalfToFloat(static_cast<const uint16_t*>(base)[i]);
    case DType::kBFloat16: return BFloat16ToFloat(static_cast<const uint16_t*>(base)[i]);
    default: return 0;
  }
}

HWY_INLINE void StoreScalar(double v, void* base, DType dtype, int64_t i) {
  switch (dtype) {
    case DType::kFloat32: static_cast<float*>(base)[i] = static_cast<float>(v); return;
    case DType::kFloat64: static_cast<double*>(base)[i] = v; return;
    case DType::kFloat16:
      static_cast<uint16_t*>(base)[i] = FloatToHalf(static_cast<float>(v));
      return;
    case DType::kBFloat16:
      static_cast<uint16_t*>(base)[i] = FloatToBFloat16(static_cast<float>(v));
      return;
    default: return;
  }
}

/// Lanes [i, i + Lanes(d)) of a floating tensor, widened to T.
template <class D>
HWY_INLINE hn::Vec<D> LoadFloat(D d, const void* base, DType dtype, int64_t i) {
  using T = hn::TFromD<D>;
  if constexpr (std::is_same_v<T, float>) {
    switch (dtype) {
      case DType::kFloat32: return hn::LoadU(d, static_cast<const float*>(base) + i);
      case DType::kFloat16:
        return hn::PromoteTo(d, hn::LoadU(hn::Rebind<hwy::float16_t, D>(),
                                          static_cast<const hwy::float16_t*>(base) + i));
      case DType::kBFloat16:
        return hn::PromoteTo(d, hn::LoadU(hn::Rebind<hwy::bfloat16_t, D>(),
                                          static_cast<const hwy::bfloat16_t*>(base) + i));
      default: break;
    }
  } else {
    switch (dtype) {
      case DType::kFloat64: return hn::LoadU(d, static_cast<const double*>(base) + i);
      case DType::kFloat32:
        return hn::PromoteTo(d, hn::LoadU(hn::Rebind<float, D>(), static_cast<const float*>(base) + i));
      default: break;
    }
  }
  // Rare mixes (float64 targets with float32 logits, 16-bit targets with float64 logits).
  HWY_ALIGN T lanes[hn::MaxLanes(d)];
  for (size_t k = 0; k < hn::Lanes(d); ++k) lanes[k] = static_cast<T>(ScalarAt(base, dtype, i + k));
  return hn::Load(d, lanes);
}

/// Stores v to lanes [i, i + Lanes(d)) of an output of `dtype`, rounding to nearest even.
template <class D>
HWY_INLINE void StoreFloat(D d, hn::Vec<D> v, void* base, DType dtype, int64_t i) {
  using T = hn::TFromD<D>;
  if constexpr (std::is_same_v<T, float>) {
    if (dtype == DType::kFloat32) return hn::StoreU(v, d, static_cast<float*>(base) + i);
    if (dtype == DType::kBFloat16) {
      // bfloat16 is the upper half of the float: add 0x7fff plus the lowest kept bit, then shift
      // (Highway 1.0's DemoteTo truncates). NaN is kept quiet rather than rounded to infinity.
      const hn::RebindToUnsigned<D> du;
      const auto bits = hn::BitCast(du, v);
      const auto lsb = hn::And(hn::ShiftRight<16>(bits), hn::Set(du, 1u));
      auto rounded = hn::Add(bits, hn::Add(hn::Set(du, 0x7fffu), lsb));
      rounded = hn::IfThenElse(hn::RebindMask(du, hn::IsNaN(v)), hn::Or(bits, hn::Set(du, 0x400000u)),
                               rounded);
      const hn::Rebind<uint16_t, D> du16;
      const hn::RebindToSigned<D> di;
      return hn::StoreU(hn::DemoteTo(du16, hn::BitCast(di, hn::ShiftRight<16>(rounded))), du16,
                        static_cast<uint16_t*>(base) + i);
    }
#if HWY_TARGET <= HWY_AVX2
    // F16C rounds to nearest even; the SSE4 emulation truncates, so it takes the scalar path.
    if (dtype == DType::kFloat16) {
      const hn::Rebind<hwy::float16_t, D> dh;
      return hn::StoreU(hn::DemoteTo(dh, v), dh, static_cast<hwy::float16_t*>(base) + i);
    }
#endif
  } else {
    if (dtype == DType::kFloat64) return hn::StoreU(v, d, static_cast<double*>(base) + i);
    if (dtype == DType::kFloat32) {
      const hn::Rebind<float, D> df;
      return hn::StoreU(hn::DemoteTo(df, v), df, static_cast<float*>(base) + i);
    }
  }
  HWY_ALIGN T lanes[hn::MaxLanes(d)];
  hn::Store(v, d, lanes);
  for (size_t k = 0; k < hn::Lanes(d); ++k) StoreScalar(lanes[k], base, dtype, i + k);
}

/// Class-index targets at positions [p, p + Lanes(di)), in signed lanes as wide as the compute
/// type's (so masks rebind), ignored rows as -1. Targets are C times smaller than the logits, so
/// a scalar gather costs little.
template <class DI>
HWY_INLINE hn::Vec<DI> LoadClassIndex(DI di, const KernelArgs& a, int64_t p) {
  using TI = hn::TFromD<DI>;
  HWY_ALIGN TI lanes[hn::MaxLanes(di)];
  for (size_t k = 0; k < hn::Lanes(di); ++k) {
    int64_t y = 0;
    switch (a.targets_dtype) {
      case DType::kInt32: y = static_cast<const int32_t*>(a.targets)[p + k]; break;
      case DType::kInt64: y = static_cast<const int64_t*>(a.targets)[p + k]; break;
      case DType::kUInt8: y = static_cast<const uint8_t*>(a.targets)[p + k]; break;
      default: break;
    }
    lanes[k] = y == a.ignore_index ? TI{-1} : static_cast<TI>(y);
  }
  return hn::Load(di, lanes);
}

template <class D>
HWY_INLINE bool AnyBadInput(D d, const KernelArgs& a, hn::Vec<D> x) {
  if (!a.check_inputs) return false;
  if (a.probabilities) {
    return !hn::AllTrue(d, hn::And(hn::Ge(x, hn::Zero(d)), hn::Le(x, hn::Set(d, 1))));
  }
  return !hn::AllTrue(d, hn::IsFinite(x));
}

/// Chunk loss sum: every lane widened to double before it is added (VARIANTS: CPU reductions
/// accumulate in float64), in an order fixed by the data layout alone.
template <class D>
class LossSum {
 public:
  // Written out (not a default member initializer) so it compiles under this target's flags.
  HWY_INLINE LossSum() : wide_(hn::Zero(DW())) {}
  HWY_INLINE void Add(D d, hn::Vec<D> v) {
    using T = hn::TFromD<D>;
    if constexpr (hn::MaxLanes(D()) == 1) {
      scalar_ += static_cast<double>(hn::GetLane(v));
    } else if constexpr (std::is_same_v<T, double>) {
      wide_ = hn::Add(wide_, v);
    } else {
      const hn::Half<D> dh;
      wide_ = hn::Add(wide_, hn::PromoteTo(DW(), hn::LowerHalf(dh, v)));
      // Unqualified: found by ADL only on targets that have it (not HWY_SCALAR, where MaxLanes is 1).
      wide_ = hn::Add(wide_, hn::PromoteTo(DW(), UpperHalf(dh, v)));
    }
  }
  HWY_INLINE void AddScalar(double v) { scalar_ += v; }
  HWY_INLINE double Total() const {
    if constexpr (hn::MaxLanes(D()) == 1) {
      return scalar_;
    } else {
      return scalar_ + hn::GetLane(hn::SumOfLanes(DW(), wide_));
    }
  }

 private:
  using DW = std::conditional_t<(hn::MaxLanes(D()) == 1), D, hn::Repartition<double, D>>;
  hn::Vec<DW> wide_;
  double scalar_ = 0;
};

/// Reduce helpers over one row's vector accumulator plus its scalar tail.
template <class D>
HWY_INLINE hn::TFromD<D> SumLanes(D d, hn::Vec<D> v) { return hn::GetLane(hn::SumOfLanes(d, v)); }
template <class D>
HWY_INLINE hn::TFromD<D> MaxLanesOf(D d, hn::Vec<D> v) { return hn::GetLane(hn::MaxOfLanes(d, v)); }

// ------------------------------------------------------------------------------------------
// sigmoid_focal and dynamic_focal: elementwise.

/// Writes one vector of results: per-item losses for NONE, and the gradient scaled by the
/// reduction and the upstream weight.
template <class D>
HWY_INLINE void EmitElementwise(D d, const KernelArgs& a, int64_t i, hn::Vec<D> loss,
                                hn::Vec<D> grad, int64_t weight_index) {
  if (a.losses) StoreFloat(d, loss, a.losses, a.output_dtype, i);
  if (a.gradient) {
    auto g = hn::Mul(grad, hn::Set(d, static_cast<hn::TFromD<D>>(a.grad_scale)));
    if (a.item_weights) g = hn::Mul(g, LoadFloat(d, a.item_weights, DType::kFloat32, weight_index));
    StoreFloat(d, g, a.gradient, a.output_dtype, i);
  }
}

/// The §2 formula for one vector of targets t (before smoothing). `hard` says t is known to be
/// 0/1 with no smoothing, which allows the cheaper hard-target form.
template <class D>
HWY_INLINE math::LossGrad<hn::Vec<D>> SigmoidFocalVec(D d, const KernelArgs& a, hn::Vec<D> x,
                                                       hn::Vec<D> t, bool hard, double alpha_pos,
                                                       double alpha_neg) {
  const HwyOps<D> o{d};
  const auto gamma = o.Set(a.gamma);
  const auto ap = o.Set(alpha_pos);
  const auto an = o.Set(alpha_neg);
  if (hard && !a.probabilities) {
    const auto is_pos = hn::Eq(t, o.Set(1));
    return math::SigmoidFocalHard(o, x, o.Select(is_pos, o.Set(1), o.Set(-1)),
                                  o.Select(is_pos, ap, an), gamma);
  }
  const auto smoothed = hn::MulAdd(t, o.Set(1 - a.smoothing), o.Set(a.smoothing_floor));
  if (a.probabilities) return math::SigmoidFocalProbabilities(o, x, smoothed, ap, an, gamma);
  return math::SigmoidFocalSoft(o, x, smoothed, ap, an, gamma);
}

template <class D>
HWY_INLINE void SigmoidFloatStep(D d, const KernelArgs& a, int64_t i, double alpha_pos,
                                 double alpha_neg, LossSum<D>& sum, ChunkResult& r) {
  const auto x = LoadFloat(d, a.logits, a.logits_dtype, i);
  const auto t = LoadFloat(d, a.targets, a.targets_dtype, i);
  r.bad_input |= AnyBadInput(d, a, x);
  const auto zero = hn::Zero(d);
  const auto one = hn::Set(d, 1);
  const auto binary = hn::Or(hn::Eq(t, zero), hn::Eq(t, one));
  const bool all_binary = hn::AllTrue(d, binary);
  if (a.binary_targets ? !all_binary : !hn::AllTrue(d, hn::And(hn::Ge(t, zero), hn::Le(t, one)))) {
    r.bad_target = true;
  }
  const auto out = SigmoidFocalVec(d, a, x, t, all_binary && a.smoothing == 0, alpha_pos, alpha_neg);
  sum.Add(d, out.loss);
  EmitElementwise(d, a, i, out.loss, out.grad, i);
}

template <typename T>
ChunkResult SigmoidFloatChunk(const KernelArgs& a, int64_t begin, int64_t end) {
  hn::ScalableTag<T> d;
  hn::CappedTag<T, 1> d1;
  LossSum<decltype(d)> sum;
  LossSum<decltype(d1)> tail_sum;
  ChunkResult r;
  const int64_t lanes = static_cast<int64_t>(hn::Lanes(d));
  for (int64_t i = begin; i < end;) {
    // dynamic_focal's α_n changes at row boundaries: run each row's part of the chunk.
    int64_t segment_end = end;
    double alpha_pos = a.alpha_pos, alpha_neg = a.alpha_neg;
    if (a.row_alpha) {
      const int64_t row = i / a.row_length;
      segment_end = std::min(end, (row + 1) * a.row_length);
      alpha_pos = a.row_alpha[row];
      alpha_neg = 1.0 - a.row_alpha[row];
    }
    for (; i + lanes <= segment_end; i += lanes) SigmoidFloatStep(d, a, i, alpha_pos, alpha_neg, sum, r);
    for (; i < segment_end; ++i) SigmoidFloatStep(d1, a, i, alpha_pos, alpha_neg, tail_sum, r);
  }
  r.loss_sum = sum.Total() + tail_sum.Total();
  return r;
}

// ------------------------------------------------------------------------------------------
// sigmoid_focal with class-index targets: t = [c == y], background y = C, ignored rows 0.

template <class D>
HWY_INLINE void SigmoidIndexStep(D d, const KernelArgs& a, int64_t i, hn::Vec<D> x,
                                 hn::Mask<D> is_target, hn::Mask<D> valid, LossSum<D>& sum,
                                 ChunkResult& r) {
  r.bad_input |= AnyBadInput(d, a, x);
  const auto t = hn::IfThenElseZero(is_target, hn::Set(d, 1));
  auto out = SigmoidFocalVec(d, a, x, t, a.smoothing == 0, a.alpha_pos, a.alpha_neg);
  out.loss = hn::IfThenElseZero(valid, out.loss);
  out.grad = hn::IfThenElseZero(valid, out.grad);
  sum.Add(d, out.loss);
  EmitElementwise(d, a, i, out.loss, out.grad, i);
}

template <typename T>
ChunkResult SigmoidIndexChunk(const KernelArgs& a, int64_t begin, int64_t end) {
  hn::ScalableTag<T> d;
  hn::CappedTag<T, 1> d1;
  hn::RebindToSigned<decltype(d)> di;
  hn::RebindToSigned<decltype(d1)> di1;
  LossSum<decltype(d)> sum;
  LossSum<decltype(d1)> tail_sum;
  ChunkResult r;
  const int64_t C = a.classes, S = a.inner;
  const int64_t lanes = static_cast<int64_t>(hn::Lanes(d));
  if (S == 1) {
    // [N, C]: a row is contiguous; vectorise along the classes.
    for (int64_t row = begin; row < end; ++row) {
      const int32_t y = hn::GetLane(LoadClassIndex(di1, a, row));
      const int64_t base = row * C;
      int64_t c = 0;
      for (; c + lanes <= C; c += lanes) {
        const auto x = LoadFloat(d, a.logits, a.logits_dtype, base + c);
        const auto is_target = hn::RebindMask(d, hn::Eq(hn::Iota(di, static_cast<hn::TFromD<decltype(di)>>(c)), hn::Set(di, y)));
        const auto valid = hn::RebindMask(d, hn::Gt(hn::Set(di, y), hn::Set(di, -1)));
        SigmoidIndexStep(d, a, base + c, x, is_target, valid, sum, r);
      }
      for (; c < C; ++c) {
        const auto x = LoadFloat(d1, a.logits, a.logits_dtype, base + c);
        const auto is_target = hn::RebindMask(d1, hn::Eq(hn::Set(di1, static_cast<hn::TFromD<decltype(di1)>>(c)), hn::Set(di1, y)));
        const auto valid = hn::RebindMask(d1, hn::Gt(hn::Set(di1, y), hn::Set(di1, -1)));
        SigmoidIndexStep(d1, a, base + c, x, is_target, valid, tail_sum, r);
      }
    }
  } else {
    // [N, C, S]: vectorise along S, where consecutive positions are contiguous for each class.
    auto run = [&](auto dv, auto div, int64_t p, LossSum<decltype(dv)>& acc) {
      const int64_t n = p / S, s = p % S;
      const auto y = LoadClassIndex(div, a, p);
      const auto valid = hn::RebindMask(dv, hn::Gt(y, hn::Set(div, -1)));
      for (int64_t c = 0; c < C; ++c) {
        const int64_t i = (n * C + c) * S + s;
        const auto x = LoadFloat(dv, a.logits, a.logits_dtype, i);
        const auto is_target = hn::RebindMask(dv, hn::Eq(y, hn::Set(div, static_cast<hn::TFromD<decltype(div)>>(c))));
        SigmoidIndexStep(dv, a, i, x, is_target, valid, acc, r);
      }
    };
    for (int64_t p = begin; p < end;) {
      const int64_t row_end = std::min(end, (p / S + 1) * S);
      for (; p + lanes <= row_end; p += lanes) run(d, di, p, sum);
      for (; p < row_end; ++p) run(d1, di1, p, tail_sum);
    }
  }
  r.loss_sum = sum.Total() + tail_sum.Total();
  return r;
}

// ------------------------------------------------------------------------------------------
// softmax_focal.

/// Per-item output of a row variant: the loss for NONE and the chunk sum.
template <typename T>
HWY_INLINE void EmitRowLoss(const KernelArgs& a, int64_t position, T loss) {
  if (a.losses) StoreScalar(loss, a.losses, a.output_dtype, position);
}

template <typename T>
HWY_INLINE double ItemWeight(const KernelArgs& a, int64_t position) {
  return a.grad_scale * (a.item_weights ? a.item_weights[position] : 1.0f);
}

/// [N, C] softmax focal: one contiguous row at a time, vectorised along the classes.
template <typename T>
ChunkResult SoftmaxRowsChunk(const KernelArgs& a, int64_t begin, int64_t end) {
  hn::ScalableTag<T> d;
  hn::CappedTag<T, 1> d1;
  hn::RebindToSigned<decltype(d)> di;
  hn::RebindToSigned<decltype(d1)> di1;
  const HwyOps<decltype(d)> o{d};
  const HwyOps<decltype(d1)> o1{d1};
  const ScalarOps<T> so;
  const int64_t C = a.classes;
  const int64_t lanes = static_cast<int64_t>(hn::Lanes(d));
  const T gamma = static_cast<T>(a.gamma), eps = static_cast<T>(a.smoothing);
  ChunkResult r;
  double chunk_sum = 0;
  auto alpha_of = [&](auto dv, int64_t c) {
    return a.class_alpha ? LoadFloat(dv, a.class_alpha, DType::kFloat32, c) : hn::Set(dv, 1);
  };
  for (int64_t row = begin; row < end; ++row) {
    const int64_t base = row * C;
    const int32_t y = hn::GetLane(LoadClassIndex(di1, a, row));
    if (y < 0) {  // ignored: contributes nothing, gradient 0
      EmitRowLoss<T>(a, row, 0);
      if (a.gradient) {
        for (int64_t c = 0; c < C; ++c) StoreScalar(0, a.gradient, a.output_dtype, base + c);
      }
      continue;
    }
    // Pass 1 and 2 over the row (in cache after the first): max, then Σ exp(x - max).
    auto vmax = hn::Set(d, -std::numeric_limits<T>::infinity());
    T max = -std::numeric_limits<T>::infinity();
    int64_t c = 0;
    for (; c + lanes <= C; c += lanes) {
      const auto x = LoadFloat(d, a.logits, a.logits_dtype, base + c);
      r.bad_input |= AnyBadInput(d, a, x);
      vmax = hn::Max(vmax, x);
    }
    for (; c < C; ++c) {
      const auto x = LoadFloat(d1, a.logits, a.logits_dtype, base + c);
      r.bad_input |= AnyBadInput(d1, a, x);
      max = std::max(max, hn::GetLane(x));
    }
    if (C >= lanes) max = std::max(max, MaxLanesOf(d, vmax));
    auto vrest = hn::Zero(d), vties = hn::Zero(d);
    T rest = -1;  // LogSumExp's rest: Σ e^(x - max) without the maximum's own 1
    for (c = 0; c + lanes <= C; c += lanes) {
      const auto x = LoadFloat(d, a.logits, a.logits_dtype, base + c);
      vrest = hn::Add(vrest, math::RestTerm(o, x, hn::Set(d, max)));
      vties = hn::Add(vties, math::TieTerm(o, x, hn::Set(d, max)));
    }
    for (; c < C; ++c) {
      const auto x = LoadFloat(d1, a.logits, a.logits_dtype, base + c);
      rest += hn::GetLane(hn::Add(math::RestTerm(o1, x, hn::Set(d1, max)), math::TieTerm(o1, x, hn::Set(d1, max))));
    }
    rest += SumLanes(d, vties);
    rest += SumLanes(d, vrest);
    const T log_norm = math::LogNormalizer(so, rest);
    auto log_prob = [&](auto dv, int64_t cc) {  // log p of classes [cc, cc + lanes)
      return math::LogProb(HwyOps<decltype(dv)>{dv}, LoadFloat(dv, a.logits, a.logits_dtype, base + cc),
                           hn::Set(dv, max), hn::Set(dv, log_norm));
    };
    const T w = static_cast<T>(ItemWeight<T>(a, row));
    T loss;
    if (eps == 0) {
      const T x_y = static_cast<T>(ScalarAt(a.logits, a.logits_dtype, base + y));
      const T alpha_y = a.class_alpha ? a.class_alpha[y] : T(1);
      const T u_y = math::LogProb(so, x_y, max, log_norm);
      const math::FocalTerm<T> term = math::SoftmaxFocalTerm(so, u_y, gamma);
      loss = alpha_y * term.f;
      if (a.gradient) {
        // ∂ℓ/∂x_j = α_y g(p_y) (p_j - [j = y])
        const T k = w * alpha_y * term.g;
        auto grad_at = [&](auto dv, auto div, int64_t cc) {
          const auto p = hn::Exp(dv, log_prob(dv, cc));
          const auto is_y = hn::RebindMask(dv, hn::Eq(hn::Iota(div, static_cast<hn::TFromD<decltype(div)>>(cc)), hn::Set(div, y)));
          const auto g = hn::Mul(hn::Set(dv, k), hn::Sub(p, hn::IfThenElseZero(is_y, hn::Set(dv, 1))));
          StoreFloat(dv, g, a.gradient, a.output_dtype, base + cc);
        };
        for (c = 0; c + lanes <= C; c += lanes) grad_at(d, di, c);
        for (; c < C; ++c) grad_at(d1, di1, c);
        // The target's p_y - 1 again as expm1(log p_y): exact as p_y → 1, where it matters most.
        StoreScalar(k * so.Expm1(u_y), a.gradient, a.output_dtype, base + y);
      }
    } else {
      // ℓ = Σ_c q_c α_c f(p_c), q_c = (1-ε)[c = y] + ε/C; ∂ℓ/∂x_j = p_j W - q_j α_j g(p_j).
      const T uniform = eps / static_cast<T>(C);
      auto qa_of = [&](auto dv, auto div, int64_t cc) {
        const auto is_y = hn::RebindMask(dv, hn::Eq(hn::Iota(div, static_cast<hn::TFromD<decltype(div)>>(cc)), hn::Set(div, y)));
        const auto q = hn::Add(hn::Set(dv, uniform), hn::IfThenElseZero(is_y, hn::Set(dv, 1 - eps)));
        return hn::Mul(q, alpha_of(dv, cc));
      };
      auto vloss = hn::Zero(d), vw = hn::Zero(d);
      T tail_loss = 0, tail_w = 0;
      for (c = 0; c + lanes <= C; c += lanes) {
        const auto term = math::SoftmaxFocalTerm(o, log_prob(d, c), hn::Set(d, gamma));
        const auto qa = qa_of(d, di, c);
        vloss = hn::MulAdd(qa, term.f, vloss);
        vw = hn::MulAdd(qa, term.g, vw);
      }
      for (; c < C; ++c) {
        const auto term = math::SoftmaxFocalTerm(o1, log_prob(d1, c), hn::Set(d1, gamma));
        const auto qa = qa_of(d1, di1, c);
        tail_loss += hn::GetLane(hn::Mul(qa, term.f));
        tail_w += hn::GetLane(hn::Mul(qa, term.g));
      }
      loss = tail_loss + SumLanes(d, vloss);
      const T W = tail_w + SumLanes(d, vw);
      if (a.gradient) {
        auto grad_at = [&](auto dv, auto div, int64_t cc) {
          const HwyOps<decltype(dv)> ov{dv};
          const auto u = log_prob(dv, cc);
          const auto term = math::SoftmaxFocalTerm(ov, u, hn::Set(dv, gamma));
          const auto g = hn::Mul(hn::Set(dv, w), hn::Sub(hn::Mul(hn::Exp(dv, u), hn::Set(dv, W)),
                                                         hn::Mul(qa_of(dv, div, cc), term.g)));
          StoreFloat(dv, g, a.gradient, a.output_dtype, base + cc);
        };
        for (c = 0; c + lanes <= C; c += lanes) grad_at(d, di, c);
        for (; c < C; ++c) grad_at(d1, di1, c);
      }
    }
    EmitRowLoss<T>(a, row, loss);
    chunk_sum += static_cast<double>(loss);
  }
  r.loss_sum = chunk_sum;
  return r;
}

/// [N, C, S] softmax focal: lanes are consecutive positions s of one n, each its own row;
/// the class loop reads x[n, c, s..s+L) at stride S, in place.
template <class D, class DI>
HWY_INLINE void SoftmaxStridedStep(D d, DI di, const KernelArgs& a, int64_t p, LossSum<D>& sum,
                                   ChunkResult& r) {
  using T = hn::TFromD<D>;
  const HwyOps<D> o{d};
  const int64_t C = a.classes, S = a.inner;
  const int64_t n = p / S, s = p % S;
  const int64_t base = n * C * S + s;
  const auto y = LoadClassIndex(di, a, p);
  const auto valid = hn::RebindMask(d, hn::Gt(y, hn::Set(di, -1)));
  auto x_at = [&](int64_t c) { return LoadFloat(d, a.logits, a.logits_dtype, base + c * S); };
  auto is_y = [&](int64_t c) { return hn::RebindMask(d, hn::Eq(y, hn::Set(di, static_cast<hn::TFromD<decltype(di)>>(c)))); };
  auto alpha_at = [&](int64_t c) { return o.Set(a.class_alpha ? a.class_alpha[c] : 1.0f); };
  auto max = hn::Set(d, -std::numeric_limits<T>::infinity());
  for (int64_t c = 0; c < C; ++c) {
    const auto x = x_at(c);
    r.bad_input |= AnyBadInput(d, a, x);
    max = hn::Max(max, x);
  }
  auto rest = hn::Zero(d), ties = hn::Set(d, -1), x_y = hn::Zero(d), alpha_y = hn::Zero(d);
  for (int64_t c = 0; c < C; ++c) {
    const auto x = x_at(c);
    rest = hn::Add(rest, math::RestTerm(o, x, max));
    ties = hn::Add(ties, math::TieTerm(o, x, max));
    x_y = hn::IfThenElse(is_y(c), x, x_y);  // the target logit, captured without a gather
    alpha_y = hn::IfThenElse(is_y(c), alpha_at(c), alpha_y);
  }
  const auto log_norm = math::LogNormalizer(o, hn::Add(ties, rest));
  auto log_prob = [&](int64_t c) { return math::LogProb(o, x_at(c), max, log_norm); };
  auto w = hn::Set(d, static_cast<T>(a.grad_scale));
  if (a.item_weights) w = hn::Mul(w, LoadFloat(d, a.item_weights, DType::kFloat32, p));
  w = hn::IfThenElseZero(valid, w);
  const auto gamma = o.Set(a.gamma);
  hn::Vec<D> loss;
  if (a.smoothing == 0) {
    const auto u_y = math::LogProb(o, x_y, max, log_norm);
    const auto term = math::SoftmaxFocalTerm(o, u_y, gamma);
    loss = hn::Mul(alpha_y, term.f);
    if (a.gradient) {
      const auto k = hn::Mul(w, hn::Mul(alpha_y, term.g));
      const auto p_y_minus_1 = o.Expm1(u_y);  // exact as p_y → 1, unlike p_y - 1
      for (int64_t c = 0; c < C; ++c) {
        const auto g = hn::Mul(k, hn::IfThenElse(is_y(c), p_y_minus_1, o.Exp(log_prob(c))));
        StoreFloat(d, g, a.gradient, a.output_dtype, base + c * S);
      }
    }
  } else {
    const auto uniform = o.Set(a.smoothing / static_cast<double>(C));
    const auto keep = o.Set(1 - a.smoothing);
    auto qa_at = [&](int64_t c) {
      return hn::Mul(hn::Add(uniform, hn::IfThenElseZero(is_y(c), keep)), alpha_at(c));
    };
    loss = hn::Zero(d);
    auto W = hn::Zero(d);
    for (int64_t c = 0; c < C; ++c) {
      const auto term = math::SoftmaxFocalTerm(o, log_prob(c), gamma);
      loss = hn::MulAdd(qa_at(c), term.f, loss);
      W = hn::MulAdd(qa_at(c), term.g, W);
    }
    if (a.gradient) {
      for (int64_t c = 0; c < C; ++c) {
        const auto u = log_prob(c);
        const auto term = math::SoftmaxFocalTerm(o, u, gamma);
        const auto g = hn::Mul(w, hn::Sub(hn::Mul(o.Exp(u), W), hn::Mul(qa_at(c), term.g)));
        StoreFloat(d, g, a.gradient, a.output_dtype, base + c * S);
      }
    }
  }
  loss = hn::IfThenElseZero(valid, loss);
  sum.Add(d, loss);
  if (a.losses) StoreFloat(d, loss, a.losses, a.output_dtype, p);
}

template <typename T>
ChunkResult SoftmaxStridedChunk(const KernelArgs& a, int64_t begin, int64_t end) {
  hn::ScalableTag<T> d;
  hn::CappedTag<T, 1> d1;
  LossSum<decltype(d)> sum;
  LossSum<decltype(d1)> tail_sum;
  ChunkResult r;
  const int64_t S = a.inner;
  const int64_t lanes = static_cast<int64_t>(hn::Lanes(d));
  for (int64_t p = begin; p < end;) {
    const int64_t row_end = std::min(end, (p / S + 1) * S);  // lanes never straddle two n
    for (; p + lanes <= row_end; p += lanes) SoftmaxStridedStep(d, hn::RebindToSigned<decltype(d)>(), a, p, sum, r);
    for (; p < row_end; ++p) SoftmaxStridedStep(d1, hn::RebindToSigned<decltype(d1)>(), a, p, tail_sum, r);
  }
  r.loss_sum = sum.Total() + tail_sum.Total();
  return r;
}

// ------------------------------------------------------------------------------------------
// focal_cosine: [N, C] rows.

template <typename T>
ChunkResult FocalCosineChunk(const KernelArgs& a, int64_t begin, int64_t end) {
  hn::ScalableTag<T> d;
  hn::CappedTag<T, 1> d1;
  const ScalarOps<T> so;
  const int64_t C = a.classes;
  const int64_t lanes = static_cast<int64_t>(hn::Lanes(d));
  ChunkResult r;
  double chunk_sum = 0;
  for (int64_t row = begin; row < end; ++row) {
    const int64_t base = row * C;
    const int32_t y = hn::GetLane(LoadClassIndex(hn::CappedTag<int32_t, 1>(), a, row));
    // Pass 1: ‖x‖² and max x.
    auto vsq = hn::Zero(d);
    auto vmax = hn::Set(d, -std::numeric_limits<T>::infinity());
    T sq = 0, max = -std::numeric_limits<T>::infinity();
    int64_t c = 0;
    for (; c + lanes <= C; c += lanes) {
      const auto x = LoadFloat(d, a.logits, a.logits_dtype, base + c);
      r.bad_input |= AnyBadInput(d, a, x);
      vsq = hn::MulAdd(x, x, vsq);
      vmax = hn::Max(vmax, x);
    }
    for (; c < C; ++c) {
      const auto x = LoadFloat(d1, a.logits, a.logits_dtype, base + c);
      r.bad_input |= AnyBadInput(d1, a, x);
      const T v = hn::GetLane(x);
      sq += v * v;
      max = std::max(max, v);
    }
    if (C >= lanes) max = std::max(max, MaxLanesOf(d, vmax));
    const T sum_squares = sq + SumLanes(d, vsq);
    const T z_scale = math::CosineZScale(so, sum_squares);
    const T z_max = max * z_scale;  // z_scale > 0, so max z = z_scale · max x
    // Pass 2: Σ e^(z - z_max) and Σ z e^(z - z_max).
    const HwyOps<decltype(d)> o{d};
    const HwyOps<decltype(d1)> o1{d1};
    auto vrest = hn::Zero(d), vties = hn::Zero(d), vtz = hn::Zero(d);
    T rest = -1, tz = 0;  // rest as for LogSumExp; tz = Σ z e^(z - z_max)
    for (c = 0; c + lanes <= C; c += lanes) {
      const auto z = hn::Mul(LoadFloat(d, a.logits, a.logits_dtype, base + c), hn::Set(d, z_scale));
      const auto zm = hn::Set(d, z_max);
      vrest = hn::Add(vrest, math::RestTerm(o, z, zm));
      vties = hn::Add(vties, math::TieTerm(o, z, zm));
      vtz = hn::MulAdd(z, o.Exp(hn::Sub(z, zm)), vtz);
    }
    for (; c < C; ++c) {
      const auto z = hn::Mul(LoadFloat(d1, a.logits, a.logits_dtype, base + c), hn::Set(d1, z_scale));
      const auto zm = hn::Set(d1, z_max);
      rest += hn::GetLane(hn::Add(math::RestTerm(o1, z, zm), math::TieTerm(o1, z, zm)));
      tz += hn::GetLane(hn::Mul(z, o1.Exp(hn::Sub(z, zm))));
    }
    rest += SumLanes(d, vties);
    rest += SumLanes(d, vrest);
    tz += SumLanes(d, vtz);
    const T x_y = static_cast<T>(ScalarAt(a.logits, a.logits_dtype, base + y));
    T log_norm;
    const math::FocalCosineRow<T> rc = math::FocalCosine(
        so, sum_squares, x_y, z_max, rest, tz, static_cast<T>(a.cosine_alpha), static_cast<T>(a.gamma),
        static_cast<T>(a.xent), static_cast<T>(ItemWeight<T>(a, row)), log_norm);
    if (a.gradient) {
      auto grad_at = [&](auto dv, int64_t cc) {
        const hn::RebindToSigned<decltype(dv)> div;
        const auto x = LoadFloat(dv, a.logits, a.logits_dtype, base + cc);
        const auto p = hn::Exp(dv, math::LogProb(HwyOps<decltype(dv)>{dv}, hn::Mul(x, hn::Set(dv, z_scale)),
                                                 hn::Set(dv, z_max), hn::Set(dv, log_norm)));
        const auto is_y = hn::RebindMask(dv, hn::Eq(hn::Iota(div, static_cast<hn::TFromD<decltype(div)>>(cc)), hn::Set(div, y)));
        auto g = hn::MulAdd(hn::Set(dv, rc.coef_x), x, hn::Mul(hn::Set(dv, rc.coef_p), p));
        g = hn::Add(g, hn::IfThenElseZero(is_y, hn::Set(dv, rc.coef_target - rc.coef_p)));
        StoreFloat(dv, g, a.gradient, a.output_dtype, base + cc);
      };
      for (c = 0; c + lanes <= C; c += lanes) grad_at(d, c);
      for (; c < C; ++c) grad_at(d1, c);
      // The target's p_y - 1 again as expm1(log p_y): exact as p_y → 1.
      const T u_y = math::LogProb(so, x_y * z_scale, z_max, log_norm);
      StoreScalar(rc.coef_x * x_y + rc.coef_p * so.Expm1(u_y) + rc.coef_target, a.gradient,
                  a.output_dtype, base + y);
    }
    EmitRowLoss<T>(a, row, rc.loss);
    chunk_sum += static_cast<double>(rc.loss);
  }
  r.loss_sum = chunk_sum;
  return r;
}

// ------------------------------------------------------------------------------------------

template <typename T>
ChunkResult RunTyped(KernelKind kind, const KernelArgs& a, int64_t begin, int64_t end) {
  switch (kind) {
    case KernelKind::kSigmoidFloatTargets: return SigmoidFloatChunk<T>(a, begin, end);
    case KernelKind::kSigmoidIndexTargets: return SigmoidIndexChunk<T>(a, begin, end);
    case KernelKind::kSoftmaxFocal:
      return a.inner == 1 ? SoftmaxRowsChunk<T>(a, begin, end) : SoftmaxStridedChunk<T>(a, begin, end);
    case KernelKind::kFocalCosine: return FocalCosineChunk<T>(a, begin, end);
  }
  return {};
}

ChunkResult RunChunkImpl(KernelKind kind, const KernelArgs& a, int64_t begin, int64_t end) {
  // float64 logits compute in double; every other dtype in float.
  return a.logits_dtype == DType::kFloat64 ? RunTyped<double>(kind, a, begin, end)
                                           : RunTyped<float>(kind, a, begin, end);
}

const char* TargetNameImpl() { return hwy::TargetName(HWY_TARGET); }

}  // namespace HWY_NAMESPACE
}  // namespace focal::cpu
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
namespace focal::cpu {

HWY_EXPORT(RunChunkImpl);
HWY_EXPORT(TargetNameImpl);

ChunkResult RunChunk(KernelKind kind, const KernelArgs& args, int64_t begin, int64_t end) {
  return HWY_DYNAMIC_DISPATCH(RunChunkImpl)(kind, args, begin, end);
}

const char* SimdTargetName() { return HWY_DYNAMIC_DISPATCH(TargetNameImpl)(); }

}  // namespace focal::cpu
#endif
