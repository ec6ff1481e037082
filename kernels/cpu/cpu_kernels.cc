// CPU kernels: the formulas of focal/math.h instantiated with Highway vectors, compiled once per
// x86 SIMD target (SSE4, AVX2, AVX-512) and dispatched at run time, so one binary runs well on
// whatever processor the container lands on. Each kernel reads the logits once, in place (the
// class dimension at its stride), widens on load, and writes the gradient once.

#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "kernels/cpu/cpu_kernels.cc"
#include "hwy/foreach_target.h"  // IWYU pragma: keep
// foreach_target.h re-includes this file once per target; everything below runs each time.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <type_traits>
#include <vector>

#include "focal/hd.h"
#include "focal/math_ops.h"
#include "hwy/cache_control.h"
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
  HWY_INLINE V Exp(V a) const { return hn::Exp(d, a); }
  // Highway's logs are defined on (0, max]; the formulas rely on log 0 = -inf.
  HWY_INLINE V Log(V a) const {
    return hn::IfThenElse(hn::Eq(a, Zero()), Set(-HUGE_VAL), hn::Log(d, a));
  }
  // log a for a ∈ [1, 2]: Highway's log without the zero and subnormal handling.
  HWY_INLINE V LogOneToTwo(V a) const { return hn::impl::Log<D, V, /*kAllowSubnormals=*/false>(d, a); }
  HWY_INLINE V Log1p(V a) const {
    return hn::IfThenElse(hn::Eq(a, Set(-1)), Set(-HUGE_VAL), hn::Log1p(d, a));
  }
  HWY_INLINE V Expm1(V a) const { return hn::Expm1(d, a); }
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

/// The class-index target at position i, or -1 when it equals ignore_index.
HWY_INLINE int64_t ClassIndexAt(const KernelArgs& a, int64_t i) {
  int64_t y = 0;
  switch (a.targets_dtype) {
    case DType::kInt32: y = static_cast<const int32_t*>(a.targets)[i]; break;
    case DType::kInt64: y = static_cast<const int64_t*>(a.targets)[i]; break;
    case DType::kUInt8: y = static_cast<const uint8_t*>(a.targets)[i]; break;
    default: break;
  }
  return a.has_ignore_index && y == a.ignore_index ? -1 : y;
}

/// Class-index targets at positions [p, p + Lanes(di)), in signed lanes as wide as the compute
/// type's (so masks rebind), ignored rows as -1. Targets are C times smaller than the logits, so
/// a scalar gather costs little.
template <class DI>
HWY_INLINE hn::Vec<DI> LoadClassIndex(DI di, const KernelArgs& a, int64_t p) {
  using TI = hn::TFromD<DI>;
  HWY_ALIGN TI lanes[hn::MaxLanes(di)];
  const int64_t n = static_cast<int64_t>(hn::Lanes(di));
  auto fill = [&](const auto* y) {  // one loop per dtype, so the compiler can vectorise it
    for (int64_t k = 0; k < n; ++k) {
      const int64_t v = static_cast<int64_t>(y[p + k]);
      lanes[k] = a.has_ignore_index && v == a.ignore_index ? TI{-1} : static_cast<TI>(v);
    }
  };
  switch (a.targets_dtype) {
    case DType::kInt32: fill(static_cast<const int32_t*>(a.targets)); break;
    case DType::kInt64: fill(static_cast<const int64_t*>(a.targets)); break;
    case DType::kUInt8: fill(static_cast<const uint8_t*>(a.targets)); break;
    default: std::fill(lanes, lanes + n, TI{-1}); break;
  }
  return hn::Load(di, lanes);
}

/// Chunks of positions in blocks that stay within one n, so that class c of a block is the
/// contiguous run (n·C + c)·S + s .. + count: f(n, s, p, count) for each. Reading the strided
/// layout a block and a class at a time streams through memory instead of touching C cache
/// lines per vector.
template <class F>
HWY_INLINE void ForEachPositionBlock(const KernelArgs& a, int64_t begin, int64_t end,
                                     int64_t block, const F& f) {
  const int64_t S = a.inner;
  for (int64_t p = begin; p < end;) {
    const int64_t n = p / S, s = p % S;
    const int64_t count = std::min({block, end - p, S - s});
    f(n, s, p, count);
    p += count;
  }
}

/// f(d, j) over [0, count) in full vectors, then f(d1, j) one lane at a time for the rest.
template <class D, class D1, class F>
HWY_INLINE void ForEachVector(D d, D1 d1, int64_t count, const F& f) {
  const int64_t lanes = static_cast<int64_t>(hn::Lanes(d));
  int64_t j = 0;
  for (; j + lanes <= count; j += lanes) f(d, j);
  for (; j < count; ++j) f(d1, j);
}

/// `full` for a multi-lane descriptor, `one` for the one-lane tail descriptor.
template <class D, class Full, class One>
HWY_INLINE auto& ForLanes(D, Full& full, One& one) {
  if constexpr (hn::MaxLanes(D()) == 1) {
    return one;
  } else {
    return full;
  }
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

/// A row sum of vectors that stays accurate for long rows: lanes add in T for blocks of
/// kBlock vectors, and each block's total joins a float64 sum. A float lane that takes 16384
/// terms in turn (C = 262144 with 16 lanes) drifts by ~1e-5; in blocks of 64 it stays near the
/// tree sums of the CUDA kernels (VARIANTS.md: at least float32-pairwise with a float64 step).
template <class D>
class RowSum {
 public:
  static constexpr int kBlock = 64;
  HWY_INLINE explicit RowSum(D d) : d_(d), lanes_(hn::Zero(d)) {}
  HWY_INLINE void Add(hn::Vec<D> v) {
    lanes_ = hn::Add(lanes_, v);
    if (++count_ == kBlock) Flush();
  }
  HWY_INLINE void MulAdd(hn::Vec<D> a, hn::Vec<D> b) {
    lanes_ = hn::MulAdd(a, b, lanes_);
    if (++count_ == kBlock) Flush();
  }
  /// The row's total plus `tail` (the scalar remainder), in T.
  HWY_INLINE hn::TFromD<D> Total(double tail = 0) {
    Flush();
    return static_cast<hn::TFromD<D>>(total_ + tail);
  }

 private:
  HWY_INLINE void Flush() {
    total_ += static_cast<double>(hn::GetLane(hn::SumOfLanes(d_, lanes_)));
    lanes_ = hn::Zero(d_);
    count_ = 0;
  }
  D d_;
  hn::Vec<D> lanes_;
  int count_ = 0;
  double total_ = 0;
};

/// With allow_non_finite, a NaN input must give NaN outputs, as in PyTorch. Highway's
/// transcendentals map NaN to numbers (Exp(NaN) is 0), so the kernels put it back explicitly;
/// without the flag such inputs are rejected and this costs nothing.
template <class D>
HWY_INLINE hn::Vec<D> PropagateNaN(const KernelArgs& a, hn::Vec<D> x, hn::Vec<D> v) {
  return a.propagate_nan ? hn::IfThenElse(hn::IsNaN(x), x, v) : v;
}

/// Per-thread scratch, reused across chunks and jobs: the strided kernels' blocks of targets,
/// and the row kernels' e^(x - max), kept between the softmax and the gradient passes so that
/// each logit costs one exp.
template <typename T>
T* Scratch(size_t count) {
  static thread_local std::vector<T> buffer;
  if (buffer.size() < count) buffer.resize(count);
  return buffer.data();
}

// ------------------------------------------------------------------------------------------
// sigmoid_focal and dynamic_focal: elementwise.

/// Per-job constants broadcast once per chunk, for one descriptor.
template <class D>
struct SigmoidConsts {
  using V = hn::Vec<D>;
  HWY_INLINE SigmoidConsts(D d, const KernelArgs& a)
      : o{d},
        gamma(math::MakeGamma(o, a.gamma)),
        keep(o.Set(1 - a.smoothing)),
        floor(o.Set(a.smoothing_floor)),
        scale(o.Set(a.grad_scale)) {}
  HwyOps<D> o;
  math::Gamma<V> gamma;
  V keep, floor;  ///< label smoothing: t' = t·keep + floor
  V scale;        ///< gradient scale of the reduction and the upstream scalar
};

/// Writes one vector of results: per-item losses for NONE, and the gradient scaled by the
/// reduction and the upstream weight.
template <class D>
HWY_INLINE void EmitElementwise(D d, const SigmoidConsts<D>& k, const KernelArgs& a, int64_t i,
                                hn::Vec<D> x, hn::Vec<D> loss, hn::Vec<D> grad) {
  if (a.losses) StoreFloat(d, PropagateNaN<D>(a, x, loss), a.losses, a.output_dtype, i);
  if (a.gradient) {
    auto g = hn::Mul(grad, k.scale);
    if (a.item_weights) g = hn::Mul(g, LoadFloat(d, a.item_weights, DType::kFloat32, i));
    StoreFloat(d, PropagateNaN<D>(a, x, g), a.gradient, a.output_dtype, i);
  }
}

/// The §2 formula for one vector of targets t (before smoothing). `hard` says t is known to be
/// 0/1 with no smoothing, which allows the cheaper hard-target form.
template <class D>
HWY_INLINE math::LossGrad<hn::Vec<D>> SigmoidFocalVec(const SigmoidConsts<D>& k,
                                                       const KernelArgs& a, hn::Vec<D> x,
                                                       hn::Vec<D> t, bool hard, hn::Vec<D> ap,
                                                       hn::Vec<D> an) {
  const HwyOps<D>& o = k.o;
  if (hard && !a.probabilities) {
    const auto is_pos = hn::Eq(t, o.Set(1));
    return math::SigmoidFocalHard(o, x, o.Select(is_pos, o.Set(1), o.Set(-1)),
                                  o.Select(is_pos, ap, an), k.gamma);
  }
  const auto smoothed = hn::MulAdd(t, k.keep, k.floor);
  if (a.probabilities) return math::SigmoidFocalProbabilities(o, x, smoothed, ap, an, k.gamma);
  return math::SigmoidFocalSoft(o, x, smoothed, ap, an, k.gamma);
}

template <class D>
HWY_INLINE void SigmoidFloatStep(D d, const SigmoidConsts<D>& k, const KernelArgs& a, int64_t i,
                                 hn::Vec<D> ap, hn::Vec<D> an, LossSum<D>& sum, ChunkResult& r) {
  const auto x = LoadFloat(d, a.logits, a.logits_dtype, i);
  const auto t = LoadFloat(d, a.targets, a.targets_dtype, i);
  r.bad_input |= AnyBadInput(d, a, x);
  const auto zero = hn::Zero(d);
  const auto one = hn::Set(d, 1);
  const bool all_binary = hn::AllTrue(d, hn::Or(hn::Eq(t, zero), hn::Eq(t, one)));
  if (!all_binary && (a.binary_targets || !hn::AllTrue(d, hn::And(hn::Ge(t, zero), hn::Le(t, one))))) {
    r.bad_target = true;
  }
  const auto out = SigmoidFocalVec(k, a, x, t, all_binary && a.smoothing == 0, ap, an);
  sum.Add(d, PropagateNaN<D>(a, x, out.loss));
  EmitElementwise(d, k, a, i, x, out.loss, out.grad);
}

template <typename T>
ChunkResult SigmoidFloatChunk(const KernelArgs& a, int64_t begin, int64_t end) {
  hn::ScalableTag<T> d;
  hn::CappedTag<T, 1> d1;
  const SigmoidConsts<decltype(d)> k(d, a);
  const SigmoidConsts<decltype(d1)> k1(d1, a);
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
    const auto ap = k.o.Set(alpha_pos), an = k.o.Set(alpha_neg);
    for (; i + lanes <= segment_end; i += lanes) SigmoidFloatStep(d, k, a, i, ap, an, sum, r);
    const auto ap1 = k1.o.Set(alpha_pos), an1 = k1.o.Set(alpha_neg);
    for (; i < segment_end; ++i) SigmoidFloatStep(d1, k1, a, i, ap1, an1, tail_sum, r);
  }
  r.loss_sum = sum.Total() + tail_sum.Total();
  return r;
}

// ------------------------------------------------------------------------------------------
// sigmoid_focal with class-index targets: t = [c == y], background y = C, ignored rows 0.

template <class D>
HWY_INLINE void SigmoidIndexStep(D d, const SigmoidConsts<D>& k, const KernelArgs& a, int64_t i,
                                 hn::Mask<D> is_target, hn::Mask<D> valid, LossSum<D>& sum,
                                 ChunkResult& r) {
  const auto x = LoadFloat(d, a.logits, a.logits_dtype, i);
  r.bad_input |= AnyBadInput(d, a, x);
  const auto t = hn::IfThenElseZero(is_target, hn::Set(d, 1));
  const auto ap = k.o.Set(a.alpha_pos), an = k.o.Set(a.alpha_neg);
  auto out = SigmoidFocalVec(k, a, x, t, a.smoothing == 0, ap, an);
  out.loss = hn::IfThenElseZero(valid, out.loss);
  out.grad = hn::IfThenElseZero(valid, out.grad);
  sum.Add(d, PropagateNaN<D>(a, x, out.loss));
  EmitElementwise(d, k, a, i, x, out.loss, out.grad);
}

template <typename T>
ChunkResult SigmoidIndexChunk(const KernelArgs& a, int64_t begin, int64_t end) {
  hn::ScalableTag<T> d;
  hn::CappedTag<T, 1> d1;
  hn::RebindToSigned<decltype(d)> di;
  hn::RebindToSigned<decltype(d1)> di1;
  using TI = hn::TFromD<decltype(di)>;
  const SigmoidConsts<decltype(d)> k(d, a);
  const SigmoidConsts<decltype(d1)> k1(d1, a);
  LossSum<decltype(d)> sum;
  LossSum<decltype(d1)> tail_sum;
  ChunkResult r;
  const int64_t C = a.classes, S = a.inner;
  const int64_t lanes = static_cast<int64_t>(hn::Lanes(d));
  if (S == 1) {
    // [N, C]: a row is contiguous; vectorise along the classes. Lane j of the vector at class c
    // is the target when j == y - c (Highway's Iota goes through memory: build it once).
    const auto iota = hn::Iota(di, 0);
    for (int64_t row = begin; row < end; ++row) {
      const TI y = hn::GetLane(LoadClassIndex(di1, a, row));
      const int64_t base = row * C;
      const auto valid = hn::RebindMask(d, hn::Gt(hn::Set(di, y), hn::Set(di, -1)));
      const auto valid1 = hn::RebindMask(d1, hn::Gt(hn::Set(di1, y), hn::Set(di1, -1)));
      int64_t c = 0;
      for (; c + lanes <= C; c += lanes) {
        const auto is_target = hn::RebindMask(d, hn::Eq(iota, hn::Set(di, static_cast<TI>(y - c))));
        SigmoidIndexStep(d, k, a, base + c, is_target, valid, sum, r);
      }
      for (; c < C; ++c) {
        const auto is_target = hn::RebindMask(d1, hn::Eq(hn::Set(di1, static_cast<TI>(c)), hn::Set(di1, y)));
        SigmoidIndexStep(d1, k1, a, base + c, is_target, valid1, tail_sum, r);
      }
    }
  } else {
    // [N, C, S]: vectorise along S, a block of positions and a class at a time.
    constexpr int64_t kBlock = 4096;
    TI* const ybuf = Scratch<TI>(kBlock);
    ForEachPositionBlock(a, begin, end, kBlock, [&](int64_t n, int64_t s, int64_t p, int64_t count) {
      for (int64_t j = 0; j < count; ++j) ybuf[j] = static_cast<TI>(ClassIndexAt(a, p + j));
      for (int64_t c = 0; c < C; ++c) {
        const int64_t base = (n * C + c) * S + s;
        ForEachVector(d, d1, count, [&](auto dv, int64_t j) {
          const hn::RebindToSigned<decltype(dv)> div;
          const auto y = hn::LoadU(div, ybuf + j);
          const auto valid = hn::RebindMask(dv, hn::Gt(y, hn::Set(div, -1)));
          const auto is_target = hn::RebindMask(dv, hn::Eq(y, hn::Set(div, static_cast<TI>(c))));
          SigmoidIndexStep(dv, ForLanes(dv, k, k1), a, base + j, is_target, valid,
                           ForLanes(dv, sum, tail_sum), r);
        });
      }
    });
  }
  r.loss_sum = sum.Total() + tail_sum.Total();
  return r;
}

// ------------------------------------------------------------------------------------------
// softmax_focal and focal_cosine: rows.

template <typename T>
HWY_INLINE double ItemWeight(const KernelArgs& a, int64_t position) {
  return a.grad_scale * (a.item_weights ? a.item_weights[position] : 1.0f);
}

/// Pass 1 over a contiguous row of C logits: the max, whether all of them are finite, and
/// whether the row has no softmax at all (`poisoned`: a NaN or +inf logit, or every logit
/// -inf). A -inf logit alone is a masked class (VARIANTS.md §5.6): probability 0, gradient 0.
template <class D>
HWY_INLINE hn::TFromD<D> RowMax(D d, const KernelArgs& a, int64_t base, int64_t C, bool& finite, bool& poisoned) {
  using T = hn::TFromD<D>;
  const int64_t lanes = static_cast<int64_t>(hn::Lanes(d));
  const auto inf = hn::Set(d, std::numeric_limits<T>::infinity());
  auto vmax = hn::Neg(inf);
  T max = -std::numeric_limits<T>::infinity();
  finite = true;
  bool below_inf = true;  // no NaN, no +inf (Lt is false for both)
  int64_t c = 0;
  for (; c + lanes <= C; c += lanes) {
    const auto x = LoadFloat(d, a.logits, a.logits_dtype, base + c);
    finite &= hn::AllTrue(d, hn::IsFinite(x));
    below_inf &= hn::AllTrue(d, hn::Lt(x, inf));
    vmax = hn::Max(vmax, x);
  }
  for (; c < C; ++c) {
    const T x = static_cast<T>(ScalarAt(a.logits, a.logits_dtype, base + c));
    finite &= std::isfinite(x);
    below_inf &= x < std::numeric_limits<T>::infinity();
    max = std::max(max, x);
  }
  max = C >= lanes ? std::max(max, MaxLanesOf(d, vmax)) : max;
  poisoned = !below_inf || !(max > -std::numeric_limits<T>::infinity());
  return max;
}

/// Pass 2 over a contiguous row: e_j = e^(x_j - max) into `e`, and the normaliser's
/// rest = Σ e_j - 1 accumulated without the maximum's own 1 (see math::LogProb).
template <class D>
HWY_INLINE hn::TFromD<D> RowExpAndRest(D d, const KernelArgs& a, int64_t base, int64_t C,
                                       hn::TFromD<D> max, hn::TFromD<D>* e) {
  using T = hn::TFromD<D>;
  const HwyOps<D> o{d};
  const hn::CappedTag<T, 1> d1;
  const HwyOps<decltype(d1)> o1{d1};
  const int64_t lanes = static_cast<int64_t>(hn::Lanes(d));
  RowSum<D> vrest(d);
  auto vties = hn::Zero(d);
  const auto vm = hn::Set(d, max);
  int64_t c = 0;
  for (; c + lanes <= C; c += lanes) {
    const auto x = LoadFloat(d, a.logits, a.logits_dtype, base + c);
    const auto ex = o.Exp(hn::Sub(x, vm));
    hn::StoreU(ex, d, e + c);
    vrest.Add(hn::IfThenZeroElse(hn::Eq(x, vm), ex));
    vties = hn::Add(vties, math::TieTerm(o, x, vm));
  }
  // The tail's terms and ties apart: -1 + a small term would round the term away.
  T tail_rest = 0, ties = SumLanes(d, vties);
  for (; c < C; ++c) {
    const auto x = LoadFloat(d1, a.logits, a.logits_dtype, base + c);
    const auto m = hn::Set(d1, max);
    hn::StoreU(o1.Exp(hn::Sub(x, m)), d1, e + c);
    tail_rest += hn::GetLane(math::RestTerm(o1, x, m));
    ties += hn::GetLane(math::TieTerm(o1, x, m));
  }
  return vrest.Total(static_cast<double>(tail_rest) + static_cast<double>(ties - 1));
}

/// Rows up to this many classes are processed in groups of one vector's lanes, so that the
/// per-row math (logs, exps of the target) runs once per group as vectors instead of once per
/// row as scalars; longer rows amortise it on their own and keep their scratch in L1/L2.
constexpr int64_t kGroupedRowMaxClasses = 512;

/// [N, C] softmax focal without label smoothing: pass 1 the row max, pass 2 e_j = e^(x_j - max)
/// (kept) and the normaliser, then the per-row focal term for a group of rows at once, then
/// pass 3 the gradient α_y g(p_y)(p_j - [j = y]) from the kept e_j: one exp per logit.
template <typename T>
ChunkResult SoftmaxRowsChunk(const KernelArgs& a, int64_t begin, int64_t end) {
  hn::ScalableTag<T> d;
  const HwyOps<decltype(d)> o{d};
  const int64_t C = a.classes;
  const int64_t lanes = static_cast<int64_t>(hn::Lanes(d));
  const int64_t group = C <= kGroupedRowMaxClasses ? lanes : 1;
  constexpr size_t kMaxLanes = hn::MaxLanes(d);
  T* const e = Scratch<T>(static_cast<size_t>(group * C));
  const math::Gamma<hn::Vec<decltype(d)>> gamma = math::MakeGamma(o, a.gamma);
  LossSum<decltype(d)> sum;
  ChunkResult r;

  // Per-row values of the group, laid out as vectors for the per-row math.
  HWY_ALIGN T row_max[kMaxLanes], row_rest[kMaxLanes], row_xy[kMaxLanes], row_alpha[kMaxLanes],
      row_w[kMaxLanes], row_nan[kMaxLanes], row_k[kMaxLanes], row_fix[kMaxLanes], row_loss[kMaxLanes];
  int64_t row_y[kMaxLanes];

  for (int64_t first = begin; first < end; first += group) {
    const int64_t rows = std::min(group, end - first);
    for (int64_t g = 0; g < lanes; ++g) {  // idle lanes compute a harmless dummy row
      row_max[g] = 0, row_rest[g] = 0, row_xy[g] = 0, row_alpha[g] = 0, row_w[g] = 0, row_nan[g] = 0;
    }
    for (int64_t g = 0; g < rows; ++g) {
      const int64_t row = first + g, base = row * C;
      T* const row_e = e + g * C;
      const int64_t y = hn::GetLane(LoadClassIndex(hn::CappedTag<int64_t, 1>(), a, row));
      row_y[g] = y;
      bool finite, poisoned;
      const T max = RowMax(d, a, base, C, finite, poisoned);
      if (!finite && a.check_inputs) r.bad_input = true;
      const T rest = RowExpAndRest(d, a, base, C, max, row_e);
      row_max[g] = max;
      row_rest[g] = rest;
      // An ignored row takes its max as x_y: log p_y ≤ 0 keeps its (unused) focal term finite.
      row_xy[g] = max;
      if (y >= 0) {
        row_xy[g] = static_cast<T>(ScalarAt(a.logits, a.logits_dtype, base + y));
        row_alpha[g] = a.class_alpha ? a.class_alpha[y] : T(1);
        row_w[g] = static_cast<T>(ItemWeight<T>(a, row));
        if (poisoned && a.propagate_nan) {
          row_w[g] = std::numeric_limits<T>::quiet_NaN();
          row_nan[g] = 1;
        }
      }
    }
    // The per-row focal term, one group of rows as one vector.
    const auto log_norm = math::LogNormalizer(o, hn::Load(d, row_rest));
    const auto u_y = math::LogProb(o, hn::Load(d, row_xy), hn::Load(d, row_max), log_norm);
    const auto term = math::SoftmaxFocalTerm(o, u_y, gamma);
    const auto alpha_y = hn::Load(d, row_alpha);
    const auto w = hn::Load(d, row_w);
    const auto k = hn::Mul(w, hn::Mul(alpha_y, term.g));
    // Loss: α_y f, NaN for a counted non-finite row under allow_non_finite, 0 when ignored (α_y
    // is 0 there). Not tested on w: a NaN upstream weight is the gradient's business, not the loss's.
    const auto nan_row = hn::Ne(hn::Load(d, row_nan), hn::Zero(d));
    const auto loss = hn::IfThenElse(nan_row, hn::Set(d, std::numeric_limits<T>::quiet_NaN()), hn::Mul(alpha_y, term.f));
    hn::Store(loss, d, row_loss);
    // p_j = e_j / (1 + rest); the target's p_y - 1 is expm1(log p_y), exact as p_y → 1.
    hn::Store(hn::Div(k, hn::Add(hn::Load(d, row_rest), hn::Set(d, 1))), d, row_k);
    hn::Store(hn::Mul(k, o.Expm1(u_y)), d, row_fix);
    sum.Add(d, loss);
    for (int64_t g = 0; g < rows; ++g) {
      const int64_t row = first + g, base = row * C;
      if (a.losses) StoreScalar(row_loss[g], a.losses, a.output_dtype, row);
      if (!a.gradient) continue;
      if (row_y[g] < 0) {  // ignored: gradient 0, whatever its logits hold
        for (int64_t c = 0; c < C; ++c) StoreScalar(0, a.gradient, a.output_dtype, base + c);
        continue;
      }
      const T* const row_e = e + g * C;
      const auto kp = hn::Set(d, row_k[g]);
      int64_t c = 0;
      for (; c + lanes <= C; c += lanes) {
        StoreFloat(d, hn::Mul(kp, hn::LoadU(d, row_e + c)), a.gradient, a.output_dtype, base + c);
      }
      for (; c < C; ++c) StoreScalar(row_k[g] * row_e[c], a.gradient, a.output_dtype, base + c);
      if (row_y[g] >= 0) StoreScalar(row_fix[g], a.gradient, a.output_dtype, base + row_y[g]);
    }
  }
  r.loss_sum = sum.Total();
  return r;
}

/// [N, C] softmax focal with label smoothing: every class carries a focal term,
///   ℓ = Σ_c q_c α_c f(p_c), ∂ℓ/∂x_j = p_j W - q_j α_j g(p_j), W = Σ_c q_c α_c g(p_c),
/// so the per-element work dominates and rows are taken one at a time.
template <typename T>
ChunkResult SoftmaxSmoothedRowsChunk(const KernelArgs& a, int64_t begin, int64_t end) {
  hn::ScalableTag<T> d;
  hn::CappedTag<T, 1> d1;
  hn::RebindToSigned<decltype(d)> di;
  hn::RebindToSigned<decltype(d1)> di1;
  using TI = hn::TFromD<decltype(di)>;
  const HwyOps<decltype(d)> o{d};
  const HwyOps<decltype(d1)> o1{d1};
  const ScalarOps<T> so;
  const auto gamma = math::MakeGamma(o, a.gamma);
  const auto gamma1 = math::MakeGamma(o1, a.gamma);
  const int64_t C = a.classes;
  const int64_t lanes = static_cast<int64_t>(hn::Lanes(d));
  const T eps = static_cast<T>(a.smoothing);
  const T uniform = eps / static_cast<T>(C);
  ChunkResult r;
  double chunk_sum = 0;
  for (int64_t row = begin; row < end; ++row) {
    const int64_t base = row * C;
    const TI y = hn::GetLane(LoadClassIndex(di1, a, row));
    bool finite, poisoned;  // checked in ignored rows too, as every other path does
    const T max = RowMax(d, a, base, C, finite, poisoned);
    if (!finite && a.check_inputs) r.bad_input = true;
    if (y < 0) {  // ignored: contributes nothing, gradient 0
      if (a.losses) StoreScalar(0, a.losses, a.output_dtype, row);
      if (a.gradient) {
        for (int64_t c = 0; c < C; ++c) StoreScalar(0, a.gradient, a.output_dtype, base + c);
      }
      continue;
    }
    const T rest = RowExpAndRest(d, a, base, C, max, Scratch<T>(static_cast<size_t>(C)));
    int64_t c = 0;
    const T log_norm = math::LogNormalizer(so, rest);
    auto log_prob = [&](auto dv, int64_t cc) {  // log p of classes [cc, cc + lanes)
      return math::LogProb(HwyOps<decltype(dv)>{dv}, LoadFloat(dv, a.logits, a.logits_dtype, base + cc),
                           hn::Set(dv, max), hn::Set(dv, log_norm));
    };
    auto qa_of = [&](auto dv, auto div, int64_t cc) {  // q_c α_c
      const auto is_y = hn::RebindMask(dv, hn::Eq(hn::Iota(div, 0), hn::Set(div, static_cast<TI>(y - cc))));
      const auto q = hn::Add(hn::Set(dv, uniform), hn::IfThenElseZero(is_y, hn::Set(dv, 1 - eps)));
      return hn::Mul(q, a.class_alpha ? LoadFloat(dv, a.class_alpha, DType::kFloat32, cc) : hn::Set(dv, 1));
    };
    RowSum<decltype(d)> vloss(d), vw(d);
    T tail_loss = 0, tail_w = 0;
    for (c = 0; c + lanes <= C; c += lanes) {
      const auto term = math::SoftmaxFocalTerm(o, log_prob(d, c), gamma);
      const auto qa = qa_of(d, di, c);
      vloss.MulAdd(qa, term.f);
      vw.MulAdd(qa, term.g);
    }
    for (; c < C; ++c) {
      const auto term = math::SoftmaxFocalTerm(o1, log_prob(d1, c), gamma1);
      const auto qa = qa_of(d1, di1, c);
      tail_loss += hn::GetLane(hn::Mul(qa, term.f));
      tail_w += hn::GetLane(hn::Mul(qa, term.g));
    }
    T loss = vloss.Total(tail_loss);
    const T W = vw.Total(tail_w);
    T w = static_cast<T>(ItemWeight<T>(a, row));
    // With label smoothing every class carries a term, so a masked (-inf) class would make the
    // row +inf with a NaN gradient: the row is NaN, as for any non-finite logit.
    if (!finite && a.propagate_nan) loss = w = std::numeric_limits<T>::quiet_NaN();
    if (a.gradient) {
      auto grad_at = [&](auto dv, auto div, const auto& gv, int64_t cc) {
        const HwyOps<decltype(dv)> ov{dv};
        const auto u = log_prob(dv, cc);
        const auto term = math::SoftmaxFocalTerm(ov, u, gv);
        const auto g = hn::Mul(hn::Set(dv, w), hn::Sub(hn::Mul(ov.Exp(u), hn::Set(dv, W)),
                                                       hn::Mul(qa_of(dv, div, cc), term.g)));
        StoreFloat(dv, g, a.gradient, a.output_dtype, base + cc);
      };
      for (c = 0; c + lanes <= C; c += lanes) grad_at(d, di, gamma, c);
      for (; c < C; ++c) grad_at(d1, di1, gamma1, c);
    }
    if (a.losses) StoreScalar(loss, a.losses, a.output_dtype, row);
    chunk_sum += static_cast<double>(loss);
  }
  r.loss_sum = chunk_sum;
  return r;
}

/// [N, C, S] softmax focal: each lane is its own row (a position s of one n), and the class
/// loop reads x[n, c, s..s+L) at stride S, in place. The per-position state stays in
/// registers; e^(x - max) is kept per class and lane between the softmax and gradient passes
/// (one exp per logit), and the target's logit and α are gathered once per position.
template <class D>
HWY_INLINE void SoftmaxStridedGroup(D d, const KernelArgs& a, int64_t p,
                                    const math::Gamma<hn::Vec<D>>& gamma, hn::TFromD<D>* e,
                                    LossSum<D>& sum, ChunkResult& r) {
  using T = hn::TFromD<D>;
  const hn::RebindToSigned<D> di;
  using TI = hn::TFromD<decltype(di)>;
  const HwyOps<D> o{d};
  const int64_t C = a.classes, S = a.inner;
  const int64_t L = static_cast<int64_t>(hn::Lanes(d));
  const int64_t n = p / S, s = p % S;
  const int64_t base = n * C * S + s;
  const auto y = LoadClassIndex(di, a, p);
  const auto valid = hn::RebindMask(d, hn::Gt(y, hn::Set(di, -1)));
  auto x_at = [&](int64_t c) { return LoadFloat(d, a.logits, a.logits_dtype, base + c * S); };
  auto is_y = [&](int64_t c) { return hn::RebindMask(d, hn::Eq(y, hn::Set(di, static_cast<TI>(c)))); };
  // Pass 1: the max, and whether every logit of each position is finite. Each class is its
  // own memory stream; prefetching the lanes two groups ahead keeps C streams flowing.
  const auto inf = hn::Set(d, std::numeric_limits<T>::infinity());
  auto max = hn::Neg(inf);
  auto finite = hn::Eq(max, max);
  auto below_inf = finite;  // no NaN and no +inf: -inf alone is a masked class (VARIANTS.md §5.6)
  const size_t elem = DTypeSize(a.logits_dtype);
  const char* const logits = static_cast<const char*>(a.logits);
  const bool prefetch = s + 9 * L <= S;  // stay inside this n's rows
  for (int64_t c = 0; c < C; ++c) {
    if (prefetch) hwy::Prefetch(logits + (base + c * S + 8 * L) * elem);
    const auto x = x_at(c);
    max = hn::Max(max, x);
    finite = hn::And(finite, hn::IsFinite(x));
    below_inf = hn::And(below_inf, hn::Lt(x, inf));
  }
  if (a.check_inputs && !hn::AllTrue(d, finite)) r.bad_input = true;
  // Rows with a softmax: no NaN or +inf, and some logit above -inf. Label-smoothed rows give
  // every class a term, so there any non-finite logit makes the row NaN.
  const auto has_softmax = a.smoothing == 0 ? hn::And(below_inf, hn::Gt(max, hn::Neg(inf))) : finite;
  // Pass 2: e = e^(x - max), kept; rest = Σ e - 1 without the maximum's own 1 (math::LogProb);
  // the target's logit and α captured by select, without a gather.
  // x_y starts at the max, so an ignored position's (unused) focal term stays finite.
  auto rest = hn::Zero(d), ties = hn::Set(d, -1), x_y = max, alpha_y = hn::Set(d, 1);
  for (int64_t c = 0; c < C; ++c) {
    const auto x = x_at(c);
    const auto is_max = hn::Eq(x, max);
    const auto ex = o.Exp(hn::Sub(x, max));
    hn::StoreU(ex, d, e + c * L);
    rest = hn::Add(rest, hn::IfThenZeroElse(is_max, ex));
    ties = hn::Add(ties, hn::IfThenElseZero(is_max, hn::Set(d, 1)));
    x_y = hn::IfThenElse(is_y(c), x, x_y);
    if (a.class_alpha) alpha_y = hn::IfThenElse(is_y(c), hn::Set(d, a.class_alpha[c]), alpha_y);
  }
  rest = hn::Add(rest, ties);
  const auto log_norm = math::LogNormalizer(o, rest);
  auto w = hn::Set(d, static_cast<T>(a.grad_scale));
  if (a.item_weights) w = hn::Mul(w, LoadFloat(d, a.item_weights, DType::kFloat32, p));
  w = hn::IfThenElseZero(valid, w);
  hn::Vec<D> loss;
  if (a.smoothing == 0) {
    const auto u_y = math::LogProb(o, x_y, max, log_norm);
    const auto term = math::SoftmaxFocalTerm(o, u_y, gamma);
    loss = hn::Mul(alpha_y, term.f);
    if (a.gradient) {
      // α_y g(p_y)(p_j - [j = y]) with p_j = e_j / (1 + rest); p_y - 1 as expm1(log p_y).
      const auto k = hn::Mul(w, hn::Mul(alpha_y, term.g));
      const auto kp = hn::Div(k, hn::Add(rest, hn::Set(d, 1)));
      const auto fix = hn::Mul(k, o.Expm1(u_y));
      for (int64_t c = 0; c < C; ++c) {
        const auto g = hn::IfThenElseZero(valid, hn::IfThenElse(is_y(c), fix, hn::Mul(kp, hn::LoadU(d, e + c * L))));
        StoreFloat(d, g, a.gradient, a.output_dtype, base + c * S);
      }
    }
  } else {
    // ℓ = Σ_c q_c α_c f(p_c); ∂ℓ/∂x_j = p_j W - q_j α_j g(p_j), W = Σ_c q_c α_c g(p_c).
    const auto uniform = o.Set(a.smoothing / static_cast<double>(C));
    const auto keep = o.Set(1 - a.smoothing);
    auto qa_at = [&](int64_t c) {
      return hn::Mul(hn::Add(uniform, hn::IfThenElseZero(is_y(c), keep)),
                     o.Set(a.class_alpha ? a.class_alpha[c] : 1.0f));
    };
    auto log_prob = [&](int64_t c) { return math::LogProb(o, x_at(c), max, log_norm); };
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
        StoreFloat(d, hn::IfThenElseZero(valid, g), a.gradient, a.output_dtype, base + c * S);
      }
    }
  }
  loss = hn::IfThenElseZero(valid, loss);
  const auto nan_rows = hn::AndNot(has_softmax, valid);  // counted positions without a softmax
  if (a.propagate_nan && !hn::AllFalse(d, nan_rows)) {
    // allow_non_finite: a counted position with a NaN or +inf logit has a NaN loss and gradient
    // (an ignored one contributes 0, as VARIANTS.md says of every ignored item).
    const auto nan = hn::Set(d, std::numeric_limits<T>::quiet_NaN());
    loss = hn::IfThenElse(nan_rows, nan, loss);
    for (int64_t c = 0; c < C && a.gradient; ++c) {
      HWY_ALIGN T lanes[hn::MaxLanes(d)];
      hn::Store(hn::IfThenElseZero(nan_rows, nan), d, lanes);
      for (int64_t k = 0; k < L; ++k) {
        if (std::isnan(lanes[k])) StoreScalar(lanes[k], a.gradient, a.output_dtype, base + c * S + k);
      }
    }
  }
  sum.Add(d, loss);
  if (a.losses) StoreFloat(d, loss, a.losses, a.output_dtype, p);
}

template <typename T>
ChunkResult SoftmaxStridedChunk(const KernelArgs& a, int64_t begin, int64_t end) {
  hn::ScalableTag<T> d;
  hn::CappedTag<T, 1> d1;
  const auto gamma = math::MakeGamma(HwyOps<decltype(d)>{d}, a.gamma);
  const auto gamma1 = math::MakeGamma(HwyOps<decltype(d1)>{d1}, a.gamma);
  T* const e = Scratch<T>(static_cast<size_t>(a.classes) * hn::Lanes(d));
  LossSum<decltype(d)> sum;
  LossSum<decltype(d1)> tail_sum;
  ChunkResult r;
  const int64_t S = a.inner;
  const int64_t lanes = static_cast<int64_t>(hn::Lanes(d));
  for (int64_t p = begin; p < end;) {
    const int64_t row_end = std::min(end, (p / S + 1) * S);  // lanes never straddle two n
    for (; p + lanes <= row_end; p += lanes) SoftmaxStridedGroup(d, a, p, gamma, e, sum, r);
    for (; p < row_end; ++p) SoftmaxStridedGroup(d1, a, p, gamma1, e, tail_sum, r);
  }
  r.loss_sum = sum.Total() + tail_sum.Total();
  return r;
}

// ------------------------------------------------------------------------------------------
// focal_cosine: [N, C] rows.

/// [N, C] focal cosine: pass 1 ‖x‖² and the max, pass 2 e_j = e^(z_j - z_max) (kept), the
/// normaliser and Σ z_j e_j, then the per-row math (math::FocalCosine) for a group of rows as one
/// vector, then the gradient coef_x·x_j + coef_p·p_j from the kept e_j: one exp per logit.
template <typename T>
ChunkResult FocalCosineChunk(const KernelArgs& a, int64_t begin, int64_t end) {
  hn::ScalableTag<T> d;
  hn::CappedTag<T, 1> d1;
  const HwyOps<decltype(d)> o{d};
  const HwyOps<decltype(d1)> o1{d1};
  const int64_t C = a.classes;
  const int64_t lanes = static_cast<int64_t>(hn::Lanes(d));
  const int64_t group = C <= kGroupedRowMaxClasses ? lanes : 1;
  constexpr size_t kMaxLanes = hn::MaxLanes(d);
  T* const e = Scratch<T>(static_cast<size_t>(group * C));
  const auto gamma = math::MakeGamma(o, a.gamma);
  double chunk_sum = 0;  // row by row, in order (idle lanes of a group are not rows)
  ChunkResult r;

  HWY_ALIGN T row_sq[kMaxLanes], row_xy[kMaxLanes], row_zmax[kMaxLanes], row_rest[kMaxLanes],
      row_tz[kMaxLanes], row_w[kMaxLanes], row_nan[kMaxLanes], row_loss[kMaxLanes], row_cx[kMaxLanes], row_cp[kMaxLanes],
      row_fix[kMaxLanes];
  int64_t row_y[kMaxLanes];

  for (int64_t first = begin; first < end; first += group) {
    const int64_t rows = std::min(group, end - first);
    for (int64_t g = 0; g < lanes; ++g) {  // idle lanes compute a harmless dummy row
      row_sq[g] = 1, row_xy[g] = 0, row_zmax[g] = 0, row_rest[g] = 0, row_tz[g] = 0, row_w[g] = 0, row_nan[g] = 0;
    }
    for (int64_t g = 0; g < rows; ++g) {
      const int64_t row = first + g, base = row * C;
      T* const row_e = e + g * C;
      const int64_t y = hn::GetLane(LoadClassIndex(hn::CappedTag<int64_t, 1>(), a, row));
      row_y[g] = y;
      // Pass 1: ‖x‖² and max x.
      RowSum<decltype(d)> vsq(d);
      auto vmax = hn::Set(d, -std::numeric_limits<T>::infinity());
      T sq = 0, max = -std::numeric_limits<T>::infinity();
      bool finite = true;
      int64_t c = 0;
      for (; c + lanes <= C; c += lanes) {
        const auto x = LoadFloat(d, a.logits, a.logits_dtype, base + c);
        finite &= hn::AllTrue(d, hn::IsFinite(x));
        vsq.MulAdd(x, x);
        vmax = hn::Max(vmax, x);
      }
      for (; c < C; ++c) {
        const T v = static_cast<T>(ScalarAt(a.logits, a.logits_dtype, base + c));
        finite &= std::isfinite(v);
        sq += v * v;
        max = std::max(max, v);
      }
      if (C >= lanes) max = std::max(max, MaxLanesOf(d, vmax));
      if (!finite && a.check_inputs) r.bad_input = true;
      const T sum_squares = vsq.Total(sq);
      const T z_scale = math::CosineZScale(ScalarOps<T>(), sum_squares);
      const T z_max = max * z_scale;  // z_scale > 0, so max z = z_scale · max x
      // Pass 2: e_j (kept), rest as for LogProb, tz = Σ z_j e_j.
      RowSum<decltype(d)> vrest(d), vtz(d);
      auto vties = hn::Zero(d);
      T tail_rest = 0, tail_ties = 0, tz = 0;
      const auto zm = hn::Set(d, z_max);
      for (c = 0; c + lanes <= C; c += lanes) {
        const auto z = hn::Mul(LoadFloat(d, a.logits, a.logits_dtype, base + c), hn::Set(d, z_scale));
        const auto ez = o.Exp(hn::Sub(z, zm));
        hn::StoreU(ez, d, row_e + c);
        vrest.Add(hn::IfThenZeroElse(hn::Eq(z, zm), ez));
        vties = hn::Add(vties, math::TieTerm(o, z, zm));
        vtz.MulAdd(z, ez);
      }
      for (; c < C; ++c) {
        const auto z = hn::Mul(LoadFloat(d1, a.logits, a.logits_dtype, base + c), hn::Set(d1, z_scale));
        const auto zm1 = hn::Set(d1, z_max);
        const auto ez = o1.Exp(hn::Sub(z, zm1));
        hn::StoreU(ez, d1, row_e + c);
        tail_rest += hn::GetLane(math::RestTerm(o1, z, zm1));
        tail_ties += hn::GetLane(math::TieTerm(o1, z, zm1));
        tz += hn::GetLane(hn::Mul(z, ez));
      }
      row_sq[g] = sum_squares;
      row_xy[g] = static_cast<T>(ScalarAt(a.logits, a.logits_dtype, base + y));
      row_zmax[g] = z_max;
      row_rest[g] = vrest.Total(static_cast<double>(tail_rest) + static_cast<double>(SumLanes(d, vties) + tail_ties - 1));
      row_tz[g] = vtz.Total(tz);
      row_w[g] = static_cast<T>(ItemWeight<T>(a, row));
      if (!finite && a.propagate_nan) {
        row_w[g] = std::numeric_limits<T>::quiet_NaN();
        row_nan[g] = 1;
      }
    }
    // The per-row math of §3 for the group, as one vector.
    const auto sum_squares = hn::Load(d, row_sq), x_y = hn::Load(d, row_xy), z_max = hn::Load(d, row_zmax);
    const auto rest = hn::Load(d, row_rest), w = hn::Load(d, row_w);
    hn::Vec<decltype(d)> log_norm;
    const math::FocalCosineRow<hn::Vec<decltype(d)>> rc =
        math::FocalCosine(o, sum_squares, x_y, z_max, rest, hn::Load(d, row_tz), o.Set(a.cosine_alpha), gamma,
                          o.Set(a.xent), w, log_norm);
    // NaN rows under allow_non_finite (a NaN upstream weight leaves the loss alone).
    const auto loss = hn::IfThenElse(hn::Ne(hn::Load(d, row_nan), hn::Zero(d)),
                                     hn::Set(d, std::numeric_limits<T>::quiet_NaN()), rc.loss);
    hn::Store(loss, d, row_loss);
    // p_j = e_j / (1 + rest); the target's p_y - 1 as expm1(log p_y), exact as p_y → 1.
    hn::Store(rc.coef_x, d, row_cx);
    hn::Store(hn::Div(rc.coef_p, hn::Add(rest, o.Set(1))), d, row_cp);
    const auto u_y = math::LogProb(o, hn::Mul(x_y, math::CosineZScale(o, sum_squares)), z_max, log_norm);
    hn::Store(hn::Add(hn::MulAdd(rc.coef_x, x_y, hn::Mul(rc.coef_p, o.Expm1(u_y))), rc.coef_target), d, row_fix);
    for (int64_t g = 0; g < rows; ++g) chunk_sum += static_cast<double>(row_loss[g]);
    for (int64_t g = 0; g < rows; ++g) {
      const int64_t row = first + g, base = row * C;
      if (a.losses) StoreScalar(row_loss[g], a.losses, a.output_dtype, row);
      if (!a.gradient) continue;
      const T* const row_e = e + g * C;
      const auto cx = hn::Set(d, row_cx[g]), cp = hn::Set(d, row_cp[g]);
      int64_t c = 0;
      for (; c + lanes <= C; c += lanes) {
        const auto x = LoadFloat(d, a.logits, a.logits_dtype, base + c);
        StoreFloat(d, hn::MulAdd(cx, x, hn::Mul(cp, hn::LoadU(d, row_e + c))), a.gradient, a.output_dtype, base + c);
      }
      for (; c < C; ++c) {
        const T x = static_cast<T>(ScalarAt(a.logits, a.logits_dtype, base + c));
        StoreScalar(row_cx[g] * x + row_cp[g] * row_e[c], a.gradient, a.output_dtype, base + c);
      }
      StoreScalar(row_fix[g], a.gradient, a.output_dtype, base + row_y[g]);
    }
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
      if (a.inner != 1) return SoftmaxStridedChunk<T>(a, begin, end);
      return a.smoothing == 0 ? SoftmaxRowsChunk<T>(a, begin, end)
                              : SoftmaxSmoothedRowsChunk<T>(a, begin, end);
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
