// The math-ops policy for scalars. The formulas in focal/math.h are templates over a policy
// that supplies transcendental functions, comparisons and selects; arithmetic uses the value
// type's operators. ScalarOps<float> serves CUDA kernels and tests, ScalarOps<double> the
// float64 path; the CPU backend supplies a Highway vector policy with the same members.
#pragma once

#include <cmath>

#include "focal/hd.h"

namespace focal {

/// LogComplement's split: 1 - y ≥ √½ below it, where log(1 - y) is log1p(-y) of the exact y.
inline constexpr double kLogComplementSplit = 0.29289321881345248;  // 1 - √½

/// e^a is a normal float for a at least this (e^-86 ≈ 4.4e-38 > 2^-126): the SIMD policy's
/// ExpNonPositive checks for it, and ExpNonPositiveNormal takes it as given.
inline constexpr double kExpNormalFloor = -86;

template <typename T>
struct ScalarOps {
  using V = T;       ///< value type the formulas compute in
  using Scalar = T;  ///< type of one lane of V
  using M = bool;    ///< result of a comparison

  FOCAL_HD V Set(double c) const { return static_cast<T>(c); }
  FOCAL_HD V Zero() const { return T(0); }
  FOCAL_HD V Exp(V a) const { return std::exp(a); }
  /// e^a for a ≤ 0 (the SIMD policy's is a shorter evaluation there).
  FOCAL_HD V ExpNonPositive(V a) const { return std::exp(a); }
  /// ExpNonPositive where the caller knows a ≥ kExpNormalFloor (no range check in SIMD).
  FOCAL_HD V ExpNonPositiveNormal(V a) const { return std::exp(a); }
  FOCAL_HD V Log(V a) const { return std::log(a); }
  FOCAL_HD V Log1p(V a) const { return std::log1p(a); }
  /// log(1 - y) for y ∈ [0, 1], given w = 1 - y as the caller computes it without cancellation
  /// (from a complement it has): log1p(-y) of y itself up to kLogComplementSplit, where 1 - y
  /// would round away y's last digits, log(w) above, where y may itself have rounded (p - m
  /// to 1).
  FOCAL_HD V LogComplement(V y, V w) const { return y <= V(kLogComplementSplit) ? std::log1p(-y) : std::log(w); }
  /// LogComplement where the caller knows w is normal, positive and finite (the SIMD policy then
  /// checks nothing).
  FOCAL_HD V LogComplementOfNormal(V y, V w) const { return LogComplement(y, w); }
  /// log1p(a) for a ∈ [0, 1] (the SIMD policy's is a polynomial there).
  FOCAL_HD V Log1pUnit(V a) const { return std::log1p(a); }
  FOCAL_HD V Expm1(V a) const { return std::expm1(a); }
  FOCAL_HD V Sqrt(V a) const { return std::sqrt(a); }
  FOCAL_HD V Abs(V a) const { return std::fabs(a); }
  FOCAL_HD V Neg(V a) const { return -a; }
  FOCAL_HD V Max(V a, V b) const { return a > b ? a : b; }
  FOCAL_HD V Min(V a, V b) const { return a < b ? a : b; }
  FOCAL_HD M Lt(V a, V b) const { return a < b; }
  FOCAL_HD M Le(V a, V b) const { return a <= b; }
  FOCAL_HD M Eq(V a, V b) const { return a == b; }
  FOCAL_HD M Or(M a, M b) const { return a || b; }
  /// Whether every lane of `m` holds: a formula skips a term no lane needs.
  FOCAL_HD bool AllTrue(M m) const { return m; }
  FOCAL_HD V Select(M m, V a, V b) const { return m ? a : b; }
  FOCAL_HD V IfThenElseZero(M m, V a) const { return m ? a : T(0); }
  FOCAL_HD V IfThenZeroElse(M m, V a) const { return m ? T(0) : a; }
  /// a·b + c as written: nvcc contracts it to an fma as it would the expression at the call
  /// site; the Highway policy's is fused wherever the target has FMA.
  FOCAL_HD V MulAdd(V a, V b, V c) const { return a * b + c; }
  /// a·b - c, as MulAdd.
  FOCAL_HD V MulSub(V a, V b, V c) const { return a * b - c; }
};

}  // namespace focal
