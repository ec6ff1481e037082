// The CPU kernels' SIMD plumbing, per Highway target: the math-ops policy over Highway vectors,
// loads and stores of every dtype (widened to the compute type on load, rounded on store), class
// index loads, chunking over positions and vectors, the loss sums and row reductions, and the
// per-thread scratch. No formula of VARIANTS.md is here: those are focal/math-inl.h's, which this
// header compiles again for each target (as math::). Each kernel family's .cc (cpu_*_kernels.cc)
// includes it after hwy/foreach_target.h, so it is compiled once per target, in that target's
// namespace.
//
// Per-target include guard, Highway's pattern: foreach_target.h toggles HWY_TARGET_TOGGLE
// before each re-inclusion of the .cc file.
#if defined(FOCAL_KERNELS_CPU_SIMD_INL_H_) == defined(HWY_TARGET_TOGGLE)
#ifdef FOCAL_KERNELS_CPU_SIMD_INL_H_
#undef FOCAL_KERNELS_CPU_SIMD_INL_H_
#else
#define FOCAL_KERNELS_CPU_SIMD_INL_H_
#endif

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
#include "focal/element_formulas-inl.h"
}  // namespace math

/// The math-ops policy of focal/math.h over Highway vectors of descriptor D.
template <class D>
struct HwyOps {
  using V = hn::Vec<D>;
  using M = hn::Mask<D>;
  using T = hn::TFromD<D>;
  using Scalar = T;
  D d;

  /// ln 2 in two parts for ExpNonPositive and LogOfParts: the first of 12 bits, so that k times
  /// it is exact for every exponent k of a float.
  static constexpr double kLn2High = 0.693115234375;
  static constexpr double kLn2Low = 3.194618329871446e-05;

  HWY_INLINE V Set(double c) const { return hn::Set(d, static_cast<T>(c)); }
  HWY_INLINE V Zero() const { return hn::Zero(d); }
  HWY_INLINE V Exp(V a) const { return hn::Exp(d, DefinedForEmulation(a)); }
  /// e^a for a ≤ 0: the sigmoid's e^-|x| and the softmax's e^(x - max), the exp of every
  /// element of every variant. In float, with no conversion between float and integer (Highway's
  /// Exp has two on its critical path): k = round(a/ln 2) is read off the bits of
  /// a/ln 2 + 1.5·2^23, whose last place is 1; r = a - k ln 2 ∈ [-0.347, 0.347] with ln 2 in two
  /// parts (the first of 12 bits, so that k times it is exact); e^r = 1 + r + r²Q(r), Q of degree
  /// 4 fitted by scripts/fit_sigmoid_polynomials.py (within 1.005 ulp, mean 0.27); then k is
  /// added to the exponent's bits. Where a vector holds an a below -86 (a result that may be
  /// subnormal: rare, so the branch predicts), k + 64 is added instead, which stays normal, and
  /// the product by 2^-64 rounds once; the same bits where the result is normal, so that an
  /// element's result does not depend on its neighbours. Below -120 every result rounds to 0,
  /// and the clamp there keeps the exponent in range (-inf and, on x86, NaN give 0, as Highway's
  /// Exp does). In double, Exp.
  HWY_INLINE V ExpNonPositive(V a) const {
    if constexpr (std::is_same_v<T, float>) {
      const hn::RebindToUnsigned<D> du;
      if (HWY_LIKELY(hn::AllTrue(d, hn::Le(Set(kExpNormalFloor), a)))) return ExpNonPositiveNormal(a);
      const ExpParts parts = ExpReduce(hn::Max(a, Set(-120)));
      const auto biased = hn::Add(parts.k_exponent, hn::Set(du, uint32_t{64} << 23));
      return hn::Mul(hn::BitCast(d, hn::Add(hn::BitCast(du, parts.y), biased)), Set(0x1p-64));
    } else {
      return Exp(a);
    }
  }
  /// ExpNonPositive for a ∈ [kExpNormalFloor, 0] in every lane, which the caller has checked
  /// for many vectors at once (a softmax position's classes from their min and max): the same
  /// bits, without the per-vector check.
  HWY_INLINE V ExpNonPositiveNormal(V a) const {
    if constexpr (std::is_same_v<T, float>) {
      // k ≥ -124 and e^r ≥ √½: y·2^k is normal, and the clamp and the scaling have no work.
      const hn::RebindToUnsigned<D> du;
      const ExpParts parts = ExpReduce(a);
      return hn::BitCast(d, hn::Add(hn::BitCast(du, parts.y), parts.k_exponent));
    } else {
      return Exp(a);
    }
  }
  /// ExpNonPositive's float parts of a ∈ [-120, 0]: y = e^r ∈ [√½, √2] and k in the exponent's
  /// place (k·2^23 as integer bits, modulo 2^32).
  struct ExpParts {
    V y;
    hn::Vec<hn::RebindToUnsigned<D>> k_exponent;
  };
  HWY_INLINE ExpParts ExpReduce(V x) const {
    const hn::RebindToUnsigned<D> du;
    const V magic = Set(12582912.0);  // 1.5·2^23
    const V shifted = hn::MulAdd(x, Set(1.4426950408889634), magic);
    const V k = hn::Sub(shifted, magic);
    const V r = hn::MulAdd(k, Set(-kLn2Low), hn::MulAdd(k, Set(-kLn2High), x));
    const V r2 = hn::Mul(r, r);
    const V q = hn::MulAdd(hn::MulAdd(Set(0.001381830545142293), r2, hn::MulAdd(Set(0.008368712849915028), r, Set(0.04166832193732262))),
                           r2, hn::MulAdd(Set(0.1666652113199234), r, Set(0.4999999403953552)));
    // The low 9 bits of the shifted value's bits are k's (those of 1.5·2^23 are 0), so shifting
    // them up by 23 is k times the exponent's unit.
    return {hn::Add(hn::MulAdd(r2, q, r), Set(1)), hn::ShiftLeft<23>(hn::BitCast(du, shifted))};
  }
  /// a + a²·Q(a) for Q of degree 8 with coefficients q[0..8] (of a⁰ first), the form of both
  /// log1p polynomials (Log1pUnit, LogOfParts): the leading a exact, so that Q's rounding moves
  /// only the correction. Estrin's scheme: a dependency chain of 4 fused steps instead of
  /// Horner's 8, so that consecutive vectors overlap in the out-of-order window.
  HWY_INLINE V PlusSquareTimesOctic(V a, const double (&q)[9]) const {
    const V a2 = hn::Mul(a, a);
    const V a4 = hn::Mul(a2, a2);
    const V q01 = hn::MulAdd(Set(q[1]), a, Set(q[0]));
    const V q23 = hn::MulAdd(Set(q[3]), a, Set(q[2]));
    const V q45 = hn::MulAdd(Set(q[5]), a, Set(q[4]));
    const V q67 = hn::MulAdd(Set(q[8]), a2, hn::MulAdd(Set(q[7]), a, Set(q[6])));
    const V poly = hn::MulAdd(hn::MulAdd(q67, a2, q45), a4, hn::MulAdd(q23, a2, q01));
    return hn::MulAdd(a2, poly, a);
  }
  /// a = 2^k (1 + f) with 1 + f ∈ [√½, √2), for a normal, positive and finite: k from the
  /// exponent of a's bits less those of √½ (the borrow from the mantissa lowers k where 1.m < √2),
  /// 1 + f from the mantissa with √½'s added back, f = (1 + f) - 1 exact (Sterbenz).
  struct LogParts {
    V k;
    V f;
  };
  HWY_INLINE LogParts LogReduce(V a) const {
    const hn::RebindToSigned<D> di;
    const auto sqrt_half = hn::Set(di, 0x3f3504f3);
    const auto bits = hn::Sub(hn::BitCast(di, a), sqrt_half);
    const V mantissa = hn::BitCast(d, hn::Add(hn::And(bits, hn::Set(di, 0x007fffff)), sqrt_half));
    return {hn::ConvertTo(d, hn::ShiftRight<23>(bits)), hn::Sub(mantissa, Set(1))};
  }
  /// k ln 2 + log1p(f) for f ∈ [√½ - 1, √2 - 1]: log1p(f) = f + f²·Q(f), Q of degree 8 by
  /// Estrin's grouping, fitted by scripts/fit_sigmoid_polynomials.py (with the sum below,
  /// within 0.99 ulp of the true log, mean 0.26), then k ln 2 in its two parts (kLn2High, kLn2Low):
  /// k times the first is exact, and the second joins the polynomial before the one rounding of
  /// the sum. No division, where Highway's Log has one.
  HWY_INLINE V LogOfParts(const LogParts& parts) const {
    static constexpr double kQ[9] = {-0.49999988079071045, 0.33333325386047363, -0.25001585483551025,
                                     0.20001988112926483,  -0.166090726852417,  0.14181555807590485,
                                     -0.13242782652378082, 0.12905952334403992, -0.0762409046292305};
    const V low = hn::MulAdd(parts.k, Set(kLn2Low), PlusSquareTimesOctic(parts.f, kQ));
    return hn::MulAdd(parts.k, Set(kLn2High), low);
  }
  /// Whether LogReduce serves every lane of a: normal, positive and finite (NaN is not).
  HWY_INLINE bool AllLogReducible(V a) const {
    return hn::AllTrue(d, hn::And(hn::Le(Set(std::numeric_limits<T>::min()), a), hn::Lt(a, Set(HUGE_VAL))));
  }
  /// log a for every a, as std::log: 0 gives -inf (the formulas rely on it), +inf itself, NaN
  /// and negatives NaN. In float, LogOfParts, with subnormals scaled by 2^23 first (and 23
  /// taken off k) where a vector holds one: a branch that predicts, as they are rare.
  HWY_INLINE V Log(V a) const {
    if constexpr (std::is_same_v<T, float>) {
      if (HWY_LIKELY(AllLogReducible(a))) return LogOfParts(LogReduce(a));
      return LogOfAny(a);
    } else {
      // Highway's logs are defined on (0, max].
      return LogLimits(a, hn::Log(d, a));
    }
  }
  /// Log's float path for vectors with a subnormal, a zero or a value outside (0, ∞).
  HWY_NOINLINE V LogOfAny(V a) const {
    const auto subnormal = hn::Lt(a, Set(std::numeric_limits<T>::min()));
    LogParts parts = LogReduce(hn::IfThenElse(subnormal, hn::Mul(a, Set(0x1p23)), a));
    parts.k = hn::Sub(parts.k, hn::IfThenElseZero(subnormal, Set(23)));
    return LogLimits(a, LogOfParts(parts));
  }
  /// `log` (right for positive finite a) with std::log's limits elsewhere: 0 gives -inf, +inf
  /// and NaN themselves, negatives NaN.
  HWY_INLINE V LogLimits(V a, V log) const {
    const V finite = hn::IfThenElse(hn::Lt(a, Set(HUGE_VAL)), log, a);
    const V nonpositive = hn::IfThenElse(hn::Eq(a, Zero()), Set(-HUGE_VAL), Set(std::numeric_limits<T>::quiet_NaN()));
    return hn::IfThenElse(hn::Le(a, Zero()), nonpositive, finite);
  }
  /// log(1 - y) for y ∈ [0, 1] given w = 1 - y without cancellation (ScalarOps::LogComplement):
  /// in float one LogOfParts, of k = 0 and f = -y (exact) below the split, of w's parts above.
  HWY_INLINE V LogComplement(V y, V w) const {
    const auto near_zero = hn::Le(y, Set(kLogComplementSplit));
    if constexpr (std::is_same_v<T, float>) {
      if (HWY_LIKELY(AllLogReducible(hn::IfThenElse(near_zero, Set(1), w)))) return LogComplementOfNormal(y, w);
      return hn::IfThenElse(near_zero, LogOfParts({Zero(), hn::Neg(y)}), LogOfAny(w));
    } else {
      return hn::IfThenElse(near_zero, Log1p(hn::Neg(y)), Log(w));
    }
  }
  /// LogComplement where the caller knows every w is normal, positive and finite (or a lane's
  /// result is not used): no check, no other path.
  HWY_INLINE V LogComplementOfNormal(V y, V w) const {
    if constexpr (std::is_same_v<T, float>) {
      const auto near_zero = hn::Le(y, Set(kLogComplementSplit));
      const LogParts parts = LogReduce(w);
      return LogOfParts({hn::IfThenZeroElse(near_zero, parts.k), hn::IfThenElse(near_zero, hn::Neg(y), parts.f)});
    } else {
      return LogComplement(y, w);
    }
  }
  /// log1p(a) for a ∈ [0, 1], the sigmoid's log1p(e^-|x|). In float a polynomial, with no
  /// division and no exponent split: log1p(a) = a + a²·Q(a), Q of degree 8 fitted to the relative
  /// error by scripts/fit_sigmoid_polynomials.py: within 1.47 ulp of the true value over [0, 1] (mean 0.28),
  /// subnormal a included (where it returns a). Highway's Log1p would cost a log, with its own
  /// division, and a correction. In double, Kahan's log1p from Highway's log of u = 1 + a ∈ [1, 2]
  /// plus the correction (a - (u - 1))/u, a division of its own: where 1 + a rounds (a near
  /// 2^-53) the correction is as large as the result, and a product by the sigmoid's 1/u
  /// would round once more there.
  HWY_INLINE V Log1pUnit(V a) const {
    if constexpr (std::is_same_v<T, float>) {
      static constexpr double kQ[9] = {-0.4999990463256836,  0.333299845457077,    -0.2495434582233429,
                                       0.1967700868844986,   -0.15308623015880585, 0.10608717799186707,
                                       -0.057008929550647736, 0.019877498969435692, -0.0032497518695890903};
      return PlusSquareTimesOctic(a, kQ);
    } else {
      const V one = Set(1);
      const V u = hn::Add(one, a);
      return hn::Add(hn::impl::Log<D, V, /*kAllowSubnormals=*/false>(d, u),
                     hn::Div(hn::Sub(a, hn::Sub(u, one)), u));
    }
  }
  HWY_INLINE V Log1p(V a) const {
    return hn::IfThenElse(hn::Eq(a, Set(-1)), Set(-HUGE_VAL), hn::Log1p(d, a));
  }
  HWY_INLINE V Expm1(V a) const {
#if HWY_TARGET == HWY_EMU128 || HWY_TARGET == HWY_SCALAR
    return hn::IfThenElse(hn::IsNaN(a), a, hn::Expm1(d, DefinedForEmulation(a)));  // NaN, as on SIMD
#else
    return hn::Expm1(d, a);
#endif
  }
  /// Highway's Exp and Expm1 convert round(a·log2 e) to int. On the SIMD targets that is an
  /// instruction, defined for every input; under the scalar fallback (EMU128, SCALAR) it is a
  /// C++ cast, undefined for NaN and ±inf, which allow_non_finite jobs and masked classes pass
  /// here. There the argument is first made finite: -inf and NaN become -10⁴ (Exp gives 0, as the
  /// SIMD targets do for both; Expm1 of a NaN is put back to NaN above) and +inf becomes 10⁴
  /// (that finite argument's result, as on every target). A no-op elsewhere.
  HWY_INLINE V DefinedForEmulation(V a) const {
#if HWY_TARGET == HWY_EMU128 || HWY_TARGET == HWY_SCALAR
    const V bound = Set(1e4);
    return hn::IfThenElse(hn::IsNaN(a), hn::Neg(bound), hn::Min(hn::Max(a, hn::Neg(bound)), bound));
#else
    return a;
#endif
  }
  HWY_INLINE V Sqrt(V a) const { return hn::Sqrt(a); }
  HWY_INLINE V Abs(V a) const { return hn::Abs(a); }
  HWY_INLINE V Neg(V a) const { return hn::Neg(a); }
  HWY_INLINE V Max(V a, V b) const { return hn::Max(a, b); }
  HWY_INLINE V Min(V a, V b) const { return hn::Min(a, b); }
  HWY_INLINE M Lt(V a, V b) const { return hn::Lt(a, b); }
  HWY_INLINE M Le(V a, V b) const { return hn::Le(a, b); }
  HWY_INLINE M Eq(V a, V b) const { return hn::Eq(a, b); }
  HWY_INLINE M Or(M a, M b) const { return hn::Or(a, b); }
  HWY_INLINE bool AllTrue(M m) const { return hn::AllTrue(d, m); }
  HWY_INLINE V Select(M m, V a, V b) const { return hn::IfThenElse(m, a, b); }
  HWY_INLINE V IfThenElseZero(M m, V a) const { return hn::IfThenElseZero(m, a); }
  HWY_INLINE V IfThenZeroElse(M m, V a) const { return hn::IfThenZeroElse(m, a); }
  HWY_INLINE V MulAdd(V a, V b, V c) const { return hn::MulAdd(a, b, c); }
  HWY_INLINE V MulSub(V a, V b, V c) const { return hn::MulSub(a, b, c); }
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

/// Where the logits, targets and outputs are all float32 (kFloat32, the common case), a chunk's
/// loads and stores are compiled for that dtype alone: without the dtype switches in its loops,
/// the register allocator keeps the formula's constants in registers (on AVX2's 16 it spilled
/// them), and a row's passes lose a switch per vector.
template <bool kFloat32>
HWY_INLINE DType DTypeOf(DType dtype) {
  return kFloat32 ? DType::kFloat32 : dtype;
}

/// Whether a job's logits and outputs are both float32: the chunks compiled with kFloat32 serve it.
HWY_INLINE bool LogitsAndOutputsAreFloat32(const KernelArgs& a) {
  return a.logits_dtype == DType::kFloat32 && a.output_dtype == DType::kFloat32;
}

/// A chunk in compute type T through its kFloat32 form where `float32` holds (the job's tensors
/// are float32; see DTypeOf) and through its general form otherwise: `chunk(std::true_type{})`
/// or `chunk(std::false_type{})`. The kFloat32 form exists for float alone: float64 logits never
/// take it, so it is not compiled for double.
template <typename T, class Chunk>
HWY_INLINE ChunkResult RunFloat32OrGeneral(bool float32, const Chunk& chunk) {
  if constexpr (std::is_same_v<T, float>) {
    if (float32) return chunk(std::true_type{});
  }
  return chunk(std::false_type{});
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
      case DType::kFloat64:
        // softmax α (always float64) and float64 targets of float logits: two vectors of
        // doubles, each rounded to nearest.
        if constexpr (hn::MaxLanes(D()) > 1) {
          const hn::Repartition<double, D> dd;
          const hn::Half<D> dh;
          const double* p = static_cast<const double*>(base) + i;
          // Unqualified: found by ADL only on targets that have it (not HWY_SCALAR).
          return Combine(d, hn::DemoteTo(dh, hn::LoadU(dd, p + hn::Lanes(dd))), hn::DemoteTo(dh, hn::LoadU(dd, p)));
        }
        break;
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

/// Float32 gradients from this size up are written by streaming (non-temporal) stores where a
/// kernel writes them in whole aligned vectors (the strided softmax, SoftmaxStridedChunk): they
/// skip the read that a cached store's write-allocate costs and do not evict the inputs being
/// read; at this size they would not stay in a small machine's caches for their reader anyway.
/// Only where the vectors the layout gives fall on aligned addresses: moving them to the
/// address would change the loss sum's order with it.
inline constexpr int64_t kStreamedGradientBytes = int64_t{16} << 20;

/// Vectors of D that may stream: float ones of 16 bytes or more (Highway's Stream writes 16
/// bytes from a partial vector, so single-lane tails never stream).
template <class D>
inline constexpr bool kStreamable = std::is_same_v<hn::TFromD<D>, float> && hn::MaxLanes(D()) * sizeof(float) >= 16;

/// Whether a chunk of a kernel in its float32-only form (`float32`: logits and outputs float32,
/// DTypeOf) streams its gradient through vectors of D.
template <class D>
HWY_INLINE bool StreamsGradient(D, const KernelArgs& a, bool float32) {
  return kStreamable<D> && float32 && a.gradient != nullptr &&
         a.num_elements * static_cast<int64_t>(sizeof(float)) >= kStreamedGradientBytes;
}

/// Whether element i of a float32 output starts a vector that Stream may write.
template <class D>
HWY_INLINE bool StreamAligned(D d, const void* base, int64_t i) {
  return reinterpret_cast<uintptr_t>(static_cast<const float*>(base) + i) % (hn::Lanes(d) * sizeof(float)) == 0;
}

/// The gradient's vector at i, by a streaming store where `stream` (StreamsGradient, at an
/// index StreamAligned) and StoreFloat otherwise. A chunk that streamed ends with
/// hwy::FlushStream, so that its stores are ordered before the caller reads them.
template <bool kFloat32, class D>
HWY_INLINE void StoreGradient(D d, hn::Vec<D> g, const KernelArgs& a, int64_t i, bool stream) {
  if constexpr (kStreamable<D>) {
    if (stream) return hn::Stream(g, d, static_cast<float*>(a.gradient) + i);
  }
  StoreFloat(d, g, a.gradient, DTypeOf<kFloat32>(a.output_dtype), i);
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
#if HWY_TARGET <= HWY_AVX2
  // int64 targets (PyTorch's) into 32-bit lanes in registers: two int64 vectors truncated. The
  // array below, filled by narrower stores and read by one full-width load, defeats the
  // processor's store forwarding: that stall was the strided softmax's largest cost.
  if constexpr (sizeof(TI) == 4 && hn::MaxLanes(DI()) >= 8) {
    if (a.targets_dtype == DType::kInt64) {
      const hn::Repartition<int64_t, DI> d64;
      const hn::RebindToUnsigned<decltype(d64)> du64;
      const hn::Half<DI> dh;
      const hn::Rebind<uint32_t, decltype(d64)> du32;
      const int64_t* y = static_cast<const int64_t*>(a.targets) + p;
      // Validated targets are in [0, C] or ignore_index, so truncation keeps them; ignored ones
      // become -1 first.
      auto half = [&](const int64_t* from) {
        auto v = hn::LoadU(d64, from);
        if (a.has_ignore_index) v = hn::IfThenElse(hn::Eq(v, hn::Set(d64, a.ignore_index)), hn::Set(d64, -1), v);
        return hn::BitCast(dh, hn::TruncateTo(du32, hn::BitCast(du64, v)));
      };
      return hn::Combine(di, half(y + hn::Lanes(d64)), half(y));
    }
  }
#endif
  // int32 and uint8 targets (segmentation masks are often bytes) straight into 32-bit lanes too.
  // An ignore_index outside the dtype's range matches nothing.
  if constexpr (sizeof(TI) == 4) {
    auto ignored_to_minus_one = [&](hn::Vec<DI> v, int64_t lo, int64_t hi) {
      if (!a.has_ignore_index || a.ignore_index < lo || a.ignore_index > hi) return v;
      return hn::IfThenElse(hn::Eq(v, hn::Set(di, static_cast<TI>(a.ignore_index))), hn::Set(di, TI{-1}), v);
    };
    if (a.targets_dtype == DType::kInt32) {
      const auto v = hn::LoadU(di, static_cast<const int32_t*>(a.targets) + p);
      return ignored_to_minus_one(v, std::numeric_limits<int32_t>::min(), std::numeric_limits<int32_t>::max());
    }
    if (a.targets_dtype == DType::kUInt8) {
      const hn::Rebind<uint8_t, DI> d8;
      const auto v = hn::PromoteTo(di, hn::LoadU(d8, static_cast<const uint8_t*>(a.targets) + p));
      return ignored_to_minus_one(v, 0, 255);
    }
  }
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
// Rows of the class-indexed kernels.

template <typename T>
HWY_INLINE double ItemWeight(const KernelArgs& a, int64_t position) {
  return a.grad_scale * (a.item_weights ? a.item_weights[position] : 1.0f);
}

/// Pass 1 over a contiguous row of C logits of `dtype` (DTypeOf's): the max, whether all of them
/// are finite, and whether the row has no softmax at all (`poisoned`: a NaN or +inf logit, or
/// every logit -inf). A -inf logit alone is a masked class (VARIANTS.md §5.6): probability 0,
/// gradient 0. The lane checks accumulate as masks and are read once per row.
template <class D>
HWY_INLINE hn::TFromD<D> RowMax(D d, const KernelArgs& a, DType dtype, int64_t base, int64_t C, bool& finite,
                                bool& poisoned) {
  using T = hn::TFromD<D>;
  const int64_t lanes = static_cast<int64_t>(hn::Lanes(d));
  const auto inf = hn::Set(d, std::numeric_limits<T>::infinity());
  auto vmax = hn::Neg(inf);
  T max = -std::numeric_limits<T>::infinity();
  // |x| < ∞ and x < ∞ are false for NaN: finite lanes, and lanes with no NaN and no +inf.
  auto finite_lanes = hn::FirstN(d, static_cast<size_t>(lanes));
  auto below_inf_lanes = finite_lanes;
  int64_t c = 0;
  for (; c + lanes <= C; c += lanes) {
    const auto x = LoadFloat(d, a.logits, dtype, base + c);
    finite_lanes = hn::And(finite_lanes, hn::Lt(hn::Abs(x), inf));
    below_inf_lanes = hn::And(below_inf_lanes, hn::Lt(x, inf));
    vmax = hn::Max(vmax, x);
  }
  finite = hn::AllTrue(d, finite_lanes);
  bool below_inf = hn::AllTrue(d, below_inf_lanes);
  for (; c < C; ++c) {
    const T x = static_cast<T>(ScalarAt(a.logits, dtype, base + c));
    finite &= std::isfinite(x);
    below_inf &= x < std::numeric_limits<T>::infinity();
    max = std::max(max, x);
  }
  max = C >= lanes ? std::max(max, MaxLanesOf(d, vmax)) : max;
  poisoned = !below_inf || !(max > -std::numeric_limits<T>::infinity());
  return max;
}

/// Pass 2 over a contiguous row of `dtype`: e_j = e^(x_j - max) into `e`, and the normaliser's
/// rest = Σ e_j - 1 accumulated without the maximum's own 1 (see math::Rest).
template <class D>
HWY_INLINE hn::TFromD<D> RowExpAndRest(D d, const KernelArgs& a, DType dtype, int64_t base, int64_t C,
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
    const auto x = LoadFloat(d, a.logits, dtype, base + c);
    const auto ex = math::ExpAboutMax(o, x, vm);
    hn::StoreU(ex, d, e + c);
    vrest.Add(math::RestTermOf(o, x, vm, ex));
    vties = hn::Add(vties, math::TieTerm(o, x, vm));
  }
  // The tail's terms and the ties apart, joining the blocked sum in float64: -1 + a small term
  // would round the term away.
  T tail_rest = 0, ties = SumLanes(d, vties);
  for (; c < C; ++c) {
    const auto x = LoadFloat(d1, a.logits, dtype, base + c);
    const auto m = hn::Set(d1, max);
    const auto ex = math::ExpAboutMax(o1, x, m);
    hn::StoreU(ex, d1, e + c);
    tail_rest += hn::GetLane(math::RestTermOf(o1, x, m, ex));
    ties += hn::GetLane(math::TieTerm(o1, x, m));
  }
  return vrest.Total(math::Rest(ScalarOps<double>(), static_cast<double>(tail_rest), static_cast<double>(ties)));
}

/// Rows up to this many classes are processed in groups of one vector's lanes, so that the
/// per-row math (logs, exps of the target) runs once per group as vectors instead of once per
/// row as scalars; longer rows amortise it on their own and keep their scratch in L1/L2.
constexpr int64_t kGroupedRowMaxClasses = 512;

}  // namespace HWY_NAMESPACE
}  // namespace focal::cpu
HWY_AFTER_NAMESPACE();

#endif  // per-target include guard
