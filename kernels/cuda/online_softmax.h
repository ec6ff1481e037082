// The softmax statistics of a row in one pass, mergeable in any tree: the running max, the sum
// of e^(x - max) over the logits below it (rescaled when the max moves) and the count of logits
// equal to it, so that the normaliser's rest = Σ e^(x - max) - 1 keeps the max's own 1 out of the
// sum (math::LogProb: a confident row keeps its digits). FOCAL_HD so that the host tests check
// the algebra the kernels rely on.
#pragma once

#include <cmath>

#include "focal/hd.h"
#include "focal/math.h"
#include "focal/math_ops.h"

namespace focal::cuda {

/// x is finite: written as x - x == 0 so that host and device compile the same expression.
template <class T>
FOCAL_HD bool IsFiniteValue(T x) {
  return x - x == T(0);
}

template <class T>
struct OnlineSoftmax {
  T max, below, ties;
  int finite;
  /// No NaN and no +inf among the logits: -inf alone is a masked class (VARIANTS.md §5.6),
  /// e^(-inf - max) = 0, and a row has a softmax when this holds and max > -inf.
  int below_inf;

  FOCAL_HD static OnlineSoftmax Empty() { return {-INFINITY, T(0), T(0), 1, 1}; }

  /// Whether the row has a softmax (allow_non_finite): see below_inf.
  FOCAL_HD bool HasSoftmax() const { return below_inf && max > T(-INFINITY); }

  FOCAL_HD void Add(const ScalarOps<T>& o, T x) {
    finite &= IsFiniteValue(x) ? 1 : 0;
    below_inf &= x < T(INFINITY) ? 1 : 0;
    if (x > max) {
      below = (below + ties) * math::ExpAboutMax(o, max, x);  // rescaled to the new maximum
      ties = T(1);
      max = x;
    } else if (x == max) {
      ties += T(1);
    } else {
      below += math::ExpAboutMax(o, x, max);  // a NaN lands here and makes the row NaN
    }
  }

  /// rest of math::LogProb (math::Rest).
  FOCAL_HD T Rest() const { return math::Rest(ScalarOps<T>(), below, ties); }
};

/// Merges two partial states. Commutative to the bit (each branch is symmetric in its
/// arguments), which the butterfly reductions of teams.cuh need: both partners of an exchange
/// compute the same value. The max never becomes NaN (Add sends NaN to `below`).
struct CombineOnlineSoftmax {
  template <class T>
  FOCAL_HD OnlineSoftmax<T> operator()(const OnlineSoftmax<T>& a, const OnlineSoftmax<T>& b) const {
    const int finite = a.finite & b.finite, below_inf = a.below_inf & b.below_inf;
    if (a.max == b.max) return {a.max, a.below + b.below, a.ties + b.ties, finite, below_inf};
    const OnlineSoftmax<T>& hi = a.max > b.max ? a : b;
    const OnlineSoftmax<T>& lo = a.max > b.max ? b : a;
    return {hi.max, hi.below + (lo.below + lo.ties) * math::ExpAboutMax(ScalarOps<T>(), lo.max, hi.max), hi.ties,
            finite, below_inf};
  }
};

}  // namespace focal::cuda
