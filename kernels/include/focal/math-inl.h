// The math of every variant, forward and gradient side by side, written once (VARIANTS.md is
// the contract; the section numbers below are its sections). Each function is a template over a
// math-ops policy (focal/math_ops.h): ScalarOps<float> in CUDA kernels, ScalarOps<double> in
// references, Highway vectors in the CPU backend. Arithmetic uses the value type's operators;
// constants go through o.Set so the same expression serves scalars and vectors.
//
// Kernels load, store, reduce and dispatch; every expression of the contract is here, at one of
// two levels: per element (one class of a row, one sigmoid element: ExpAboutMax, SmoothedClass,
// SigmoidFocal, the ...GradAt functions) and per row, from the row's reductions (SoftmaxFocalRow,
// FocalCosine). A value type of several lanes holds several rows (or elements) at once.
//
// No include guard and no namespace, on purpose: focal/math.h includes it once inside
// focal::math, and the CPU kernels include it again inside each Highway target's namespace, so
// that every SIMD target compiles the formulas with its own instruction set (the way Highway's
// own -inl.h headers work). Include focal/hd.h before it. Functions are defined before their
// first use: with a scalar value type, argument-dependent lookup cannot find a later one.

// ------------------------------------------------------------------------------------------
// Shared primitives.

template <class V>
struct LossGrad {
  V loss;
  V grad;  ///< ∂loss/∂input, before the upstream weight
};

/// σ(x) and 1-σ(x) from one exp and one division, and e^-|x| for the logs (SigmoidParts).
template <class V>
struct SigmoidProbabilities {
  V e;  ///< e^-|x| ∈ [0, 1]
  V p;  ///< σ(x)
  V q;  ///< 1 - σ(x), computed directly: no cancellation as p → 1
};

template <class Ops, class V = typename Ops::V>
FOCAL_HD SigmoidProbabilities<V> SigmoidProbabilitiesOf(const Ops& o, V x) {
  const V e = o.ExpNonPositive(o.Neg(o.Abs(x)));  // never overflows
  // A division, correctly rounded on every target and the same bits in every lane width. The
  // elementwise loops are bound by the latency of the chain from x to the loss (the out-of-order
  // window fills with its waiting instructions): a float division's latency (about 11 cycles
  // on current x86 cores) is under half that of a reciprocal refined by two Newton steps (six
  // dependent fused multiply-adds), in fewer instructions.
  const V inv = o.Set(1) / (o.Set(1) + e);
  const auto nonneg = o.Le(o.Zero(), x);
  return {e, o.Select(nonneg, inv, e * inv), o.Select(nonneg, e * inv, inv)};
}

/// σ(x) and its logs, from one exp, one log1p and one division.
template <class V>
struct SigmoidParts {
  V log_p;  ///< log σ(x) = -softplus(-x)
  V log_q;  ///< log(1-σ(x)) = -softplus(x)
  V p;      ///< σ(x)
  V q;      ///< 1 - σ(x)
};

/// The logs of σ(x) from its probabilities (a formula that needs only p and q skips the log1p).
template <class Ops, class V>
FOCAL_HD SigmoidParts<V> SigmoidLogs(const Ops& o, V x, const SigmoidProbabilities<V>& s) {
  // log1p of e itself, not log(1 + e): exact to the last digits even where e ≪ ε and 1 + e
  // rounds to 1.
  const V l = o.Log1pUnit(s.e);
  // softplus(x) = max(x, 0) + l and softplus(-x) = max(-x, 0) + l: exact maxima, so log σ(x)
  // keeps its relative accuracy for large x where softplus(x) - x would cancel to 0, and an
  // infinite x (allow_non_finite) gives the logs' limits (0 and ∓∞), as PyTorch's, where
  // max(x, 0) - x would be ∞ - ∞.
  return {o.Neg(o.Max(o.Neg(x), o.Zero()) + l), o.Neg(o.Max(x, o.Zero()) + l), s.p, s.q};
}

template <class Ops, class V = typename Ops::V>
FOCAL_HD SigmoidParts<V> Sigmoid(const Ops& o, V x) {
  return SigmoidLogs(o, x, SigmoidProbabilitiesOf(o, x));
}

/// The focusing parameter as the formulas take it: γ itself and, when γ is a whole number up to
/// 4, that number, so that (1-p)^γ is a product instead of exp(γ·log(1-p)). The common γ = 1, 2
/// then cost a multiply instead of an exp per element.
template <class V>
struct Gamma {
  V value;
  /// γ when it is 0, 1, 2, 3 or 4 (uniform over a job); kFractional otherwise; kPerLane when
  /// each lane has its own γ (a γ schedule), which may be 0 in some lanes.
  int whole = kFractional;
  static constexpr int kFractional = -1;
  static constexpr int kPerLane = -2;
};

/// Gamma for γ broadcast into the value type by `o`.
template <class Ops>
FOCAL_HD Gamma<typename Ops::V> MakeGamma(const Ops& o, double gamma) {
  Gamma<typename Ops::V> g{o.Set(gamma)};
  const int whole = static_cast<int>(gamma);
  if (whole == gamma && whole >= 0 && whole <= 4) g.whole = whole;
  return g;
}

/// (1-p)^γ from 1-p and, lazily, its log (`log_base()` runs only for a fractional γ).
/// 0^0 = 1: with γ = 0 every variant is exactly its cross-entropy, even where 1-p underflows
/// to 0. A fractional γ is > 0, so γ·log(1-p) never meets 0·(-∞); per-lane γs may be 0, so
/// their lanes of γ = 0 are 1 by select.
template <class Ops, class V, class LogBase>
FOCAL_HD V Modulating(const Ops& o, V base, const LogBase& log_base, const Gamma<V>& gamma) {
  switch (gamma.whole) {
    case 0: return o.Set(1);
    case 1: return base;
    case 2: return base * base;
    case 3: return base * base * base;
    case 4: {
      const V square = base * base;
      return square * square;
    }
    case Gamma<V>::kPerLane: return o.Select(o.Eq(gamma.value, o.Zero()), o.Set(1), o.Exp(gamma.value * log_base()));
    default: return o.Exp(gamma.value * log_base());
  }
}

/// log(e^a + e^b); exact when one side is -∞.
template <class Ops, class V>
FOCAL_HD V LogAddExp(const Ops& o, V a, V b) {
  const V hi = o.Max(a, b);
  return hi + o.Log1p(o.Exp(o.Min(a, b) - hi));
}

// ------------------------------------------------------------------------------------------
// Log-softmax through the row maximum (§1 and §3). A row's kernel reduces its classes to the
// maximum m, rest = Σ_j e^(x_j - m) - 1 (RestTerm + TieTerm, then Rest) and whatever else its
// variant needs; the functions below turn those into probabilities and logs.

/// e_j = e^(x_j - m), class j's softmax numerator about the row maximum m: ≤ 1, never overflows.
/// Also the online softmax's rescaling factor e^(m_old - m_new).
template <class Ops, class V>
FOCAL_HD V ExpAboutMax(const Ops& o, V x, V max) {
  return o.ExpNonPositive(x - max);
}

/// ExpAboutMax where the caller has checked min_j x_j - m ≥ kExpNormalFloor for the row (or
/// for a vector of rows): every e_j normal, computed without a per-vector range check.
template <class Ops, class V>
FOCAL_HD V ExpAboutMaxNormal(const Ops& o, V x, V max) {
  return o.ExpNonPositiveNormal(x - max);
}

/// Whether a row's (or each lane's row's) logits from min to max all take ExpAboutMaxNormal.
template <class Ops, class V>
FOCAL_HD auto ExpAboutMaxIsNormal(const Ops& o, V min, V max) {
  return o.Le(o.Set(kExpNormalFloor), min - max);
}

/// One class's term of `rest`, from its e = ExpAboutMax(x, m): e for classes below the maximum,
/// 0 for those equal to it. Those are counted apart (TieTerm), so rest = Σ RestTerm + Σ TieTerm
/// - 1 carries no rounding from adding small terms to 1.
template <class Ops, class V>
FOCAL_HD V RestTermOf(const Ops& o, V x, V max, V e) {
  return o.IfThenZeroElse(o.Eq(x, max), e);
}
/// RestTermOf with its own exp.
template <class Ops, class V>
FOCAL_HD V RestTerm(const Ops& o, V x, V max) {
  return RestTermOf(o, x, max, ExpAboutMax(o, x, max));
}
template <class Ops, class V>
FOCAL_HD V TieTerm(const Ops& o, V x, V max) {
  return o.IfThenElseZero(o.Eq(x, max), o.Set(1));
}

/// rest = Σ_j e^(x_j - m) - 1 from the row's two sums, Σ RestTerm and Σ TieTerm: the ties'
/// count less the maximum's own 1 is exact (a whole number), so nothing rounds against 1.
template <class Ops, class V>
FOCAL_HD V Rest(const Ops& o, V below, V ties) {
  return below + (ties - o.Set(1));
}

/// log(1 + rest): the log-normaliser of LogProb.
template <class Ops, class V>
FOCAL_HD V LogNormalizer(const Ops& o, V rest) {
  return o.Log1p(rest);
}

/// log-softmax of one class: log p = (x - m) - log(1 + rest), with m the row maximum.
/// Subtracting m first and taking log1p of rest keeps log p of a confident row (p → 1) accurate
/// to the last digits; x - (m + log Σ) would round the small normaliser away.
template <class Ops, class V>
FOCAL_HD V LogProb(const Ops& o, V x, V max, V log_normalizer) {
  return (x - max) - log_normalizer;
}

/// 1/(1 + rest) · coef: a row coefficient that multiplies p_j = e_j/(1 + rest), turned into one
/// that multiplies e_j, so that the per-element pass needs no division.
template <class Ops, class V>
FOCAL_HD V PerExp(const Ops& o, V coef, V rest) {
  return coef / (rest + o.Set(1));
}

// ------------------------------------------------------------------------------------------
// §1 softmax_focal.

/// One class of §1 from its log-probability u = log p ≤ 0.
template <class V>
struct FocalTerm {
  V f;  ///< -(1-p)^γ log p, the class's focal cross-entropy
  V g;  ///< g(p) = (1-p)^γ (1 - γ p r(u)), r(u) = u / (1 - e^u)
};

template <class Ops, class V>
FOCAL_HD FocalTerm<V> SoftmaxFocalTerm(const Ops& o, V u, const Gamma<V>& gamma) {
  const V one = o.Set(1);
  const V one_m_p = o.Neg(o.Expm1(u));  // 1 - p, accurate as p → 1
  const V mod = Modulating(o, one_m_p, [&] { return o.Log(one_m_p); }, gamma);
  // g equals (1-p)^γ - γp(1-p)^(γ-1) log p without the (γ-1) power, so γ < 1 stays finite;
  // r → -1 as p → 1, and the select also covers the exact 0/0 at u = 0.
  const V r = o.Select(o.Eq(one_m_p, o.Zero()), o.Neg(one), u / one_m_p);
  return {o.Neg(mod * u), mod * (one - gamma.value * o.Exp(u) * r)};
}

/// A softmax row's loss and gradient as the per-element pass takes them:
///   ∂ℓ/∂x_j = coef_e·e_j for j ≠ y (SoftmaxFocalGradAt), grad_y for j = y,
/// with e_j = ExpAboutMax(x_j, m). Already weighted by the row's upstream weight w.
template <class V>
struct SoftmaxRowGrad {
  V loss;
  V coef_e;
  V grad_y;
};

/// §5.0's options of a softmax row, per job: FLSD's γ steps (thresholds increasing, `steps` = 0
/// for a fixed γ) and Poly-1's ε_p (0 for none). Plain doubles: each use broadcasts them.
struct SoftmaxRowOptions {
  int steps = 0;
  const double* thresholds = nullptr;
  const double* gammas = nullptr;
  double poly_epsilon = 0;
};

/// The row's γ under a schedule: the γ of the first step whose threshold is above p_y, else
/// `fixed` (piecewise constant: no gradient flows through the choice).
template <class Ops, class V>
FOCAL_HD V ScheduledGamma(const Ops& o, const SoftmaxRowOptions& options, V p_y, V fixed) {
  V gamma = fixed;
  for (int i = options.steps - 1; i >= 0; --i) {
    gamma = o.Select(o.Lt(p_y, o.Set(options.thresholds[i])), o.Set(options.gammas[i]), gamma);
  }
  return gamma;
}

/// Poly-1's extra term ε_p (1-p_t)^(γ+1) for a softmax row's target class, from u = log p_y, as
/// a FocalTerm: f = ε_p (1-p)^(γ+1) and g = ε_p (γ+1)(1-p)^γ p, so that the row's
/// ∂ℓ/∂x_j gains g (p_j - [j = y]). Not α-weighted (the paper's listing). No negative power.
template <class Ops, class V>
FOCAL_HD FocalTerm<V> SoftmaxPolyTerm(const Ops& o, V u, const Gamma<V>& gamma, V poly_epsilon) {
  const V one_m_p = o.Neg(o.Expm1(u));
  const V mod = Modulating(o, one_m_p, [&] { return o.Log(one_m_p); }, gamma);
  return {poly_epsilon * mod * one_m_p, poly_epsilon * (gamma.value + o.Set(1)) * mod * o.Exp(u)};
}

/// §1 with ε = 0 for one row, from its target logit x_y, maximum m, rest (see Rest), the target
/// class's α_y and the row's upstream weight w:
///   ℓ = α_y f(p_y),  ∂ℓ/∂x_j = w α_y g(p_y) (p_j - [j = y]),
/// with §5.0's options: γ from the schedule, and Poly-1's term f_p, g_p (not α-weighted) added
/// to f and g.
template <class Ops, class V>
FOCAL_HD SoftmaxRowGrad<V> SoftmaxFocalRow(const Ops& o, V x_y, V max, V rest, V alpha_y, V w,
                                           const Gamma<V>& gamma, const SoftmaxRowOptions& options = {}) {
  const V u_y = LogProb(o, x_y, max, LogNormalizer(o, rest));
  const Gamma<V> row_gamma =
      options.steps > 0 ? Gamma<V>{ScheduledGamma(o, options, o.Exp(u_y), gamma.value), Gamma<V>::kPerLane} : gamma;
  const FocalTerm<V> term = SoftmaxFocalTerm(o, u_y, row_gamma);
  V f = alpha_y * term.f, g = alpha_y * term.g;
  if (options.poly_epsilon != 0) {
    const FocalTerm<V> poly = SoftmaxPolyTerm(o, u_y, row_gamma, o.Set(options.poly_epsilon));
    f = f + poly.f;
    g = g + poly.g;
  }
  const V k = w * g;
  // The target's p_y - 1 as expm1(log p_y): it keeps its digits as p_y → 1.
  return {f, PerExp(o, k, rest), k * o.Expm1(u_y)};
}

/// ∂ℓ/∂x_j of a non-target class j from its e_j (SoftmaxRowGrad).
template <class Ops, class V>
FOCAL_HD V SoftmaxFocalGradAt(const Ops& o, V coef_e, V e) {
  return coef_e * e;
}

/// §1's label smoothing, per job: q_c = keep·[c = y] + uniform, keep = 1-ε, uniform = ε/C, each
/// computed from ε rounded to the compute type, in scalars, then broadcast.
template <class V>
struct LabelSmoothing {
  V keep;
  V uniform;
};

template <class Ops>
FOCAL_HD LabelSmoothing<typename Ops::V> MakeLabelSmoothing(const Ops& o, double smoothing, int64_t classes) {
  using S = typename Ops::Scalar;
  const S eps = static_cast<S>(smoothing);
  return {o.Set(S(1) - eps), o.Set(eps / static_cast<S>(classes))};
}

/// q_c α_c, the weight of class c's focal term under label smoothing.
template <class Ops, class V, class M>
FOCAL_HD V SmoothedWeight(const Ops& o, const LabelSmoothing<V>& s, M is_target, V alpha_c) {
  return (s.uniform + o.IfThenElseZero(is_target, s.keep)) * alpha_c;
}

/// One class of §1 with ε > 0: ℓ = Σ_c weight_c·term_c.f and W = Σ_c weight_c·term_c.g, the
/// row's two dot products, which the kernels reduce in their own order and precision.
template <class V>
struct SmoothedClass {
  V weight;  ///< q_c α_c
  FocalTerm<V> term;
};

/// Class c of a smoothed row from u = log p_c (LogProb), whether c is the target, and α_c.
template <class Ops, class V, class M>
FOCAL_HD SmoothedClass<V> SoftmaxFocalSmoothedClass(const Ops& o, V u, M is_target, V alpha_c,
                                                     const LabelSmoothing<V>& s, const Gamma<V>& gamma) {
  return {SmoothedWeight(o, s, is_target, alpha_c), SoftmaxFocalTerm(o, u, gamma)};
}

/// ∂ℓ/∂x_j = w (p_j W - q_j α_j g(p_j)) of a smoothed row, from u = log p_j, q_j α_j
/// (SmoothedWeight), the row's W and its upstream weight w.
template <class Ops, class V>
FOCAL_HD V SoftmaxFocalSmoothedGrad(const Ops& o, V u, V weight, V W, V w, const Gamma<V>& gamma) {
  const FocalTerm<V> term = SoftmaxFocalTerm(o, u, gamma);
  return w * (o.Exp(u) * W - weight * term.g);
}

// ------------------------------------------------------------------------------------------
// §2 sigmoid_focal (and §4, which is its hard form with other weights).

/// §2 with a hard target. `sign` is 2t-1 (±1), `alpha_t` the weight of this target's class.
template <class Ops, class V>
FOCAL_HD LossGrad<V> SigmoidFocalHard(const Ops& o, V x, V sign, V alpha_t, const Gamma<V>& gamma) {
  // With z = (2t-1)x, p_t = σ(z) and 1-p_t = σ(-z): both logs without cancellation.
  const SigmoidParts<V> s = Sigmoid(o, sign * x);
  const V mod = Modulating(o, s.q, [&] { return s.log_q; }, gamma);  // (1-p_t)^γ
  const V loss = alpha_t * mod * o.Neg(s.log_p);
  // ∂ℓ/∂x = s α_t (1-p_t)^γ (γ p_t log p_t - (1-p_t)): the apex/mmcv form, no (γ-1) power;
  // γ p_t log p_t - (1-p_t) in one fused step after the log, the last to arrive.
  const V grad = sign * alpha_t * mod * o.MulSub(gamma.value * s.p, s.log_p, s.q);
  return {loss, grad};
}

/// softplus(x) - x·y, the cross-entropy of σ(x) against a soft target y ∈ [0, 1], as
/// y·softplus(-x) + (1-y)·softplus(x): two non-negative terms.
template <class Ops, class V>
FOCAL_HD V SoftCrossEntropy(const Ops& o, const SigmoidParts<V>& s, V y) {
  return o.Neg(y * s.log_p + (o.Set(1) - y) * s.log_q);
}

/// log(1-p_t) = log(p(1-t) + (1-p)t) of a soft target t, in log space: finite even where a 0/1
/// target saturates p.
template <class Ops, class V>
FOCAL_HD V LogOneMinusPt(const Ops& o, const SigmoidParts<V>& s, V t) {
  return LogAddExp(o, s.log_p + o.Log1p(o.Neg(t)), s.log_q + o.Log(t));
}

/// §2 with a soft target t ∈ [0,1] (after label smoothing). α_t = alpha_pos·t + alpha_neg·(1-t).
template <class Ops, class V>
FOCAL_HD LossGrad<V> SigmoidFocalSoft(const Ops& o, V x, V t, V alpha_pos, V alpha_neg,
                                      const Gamma<V>& gamma) {
  const V one = o.Set(1);
  const SigmoidParts<V> s = Sigmoid(o, x);
  const V u = one - t;
  const V alpha_t = alpha_pos * t + alpha_neg * u;
  const V ce = SoftCrossEntropy(o, s, t);
  const V log_1m_pt = LogOneMinusPt(o, s, t);
  const V mod = Modulating(o, s.p * u + s.q * t, [&] { return log_1m_pt; }, gamma);
  // γ(1-p_t)^(γ-1) p(1-p) as one exponential whose exponent is ≤ 0 for every γ ≥ 0: it never
  // overflows, and γ < 1 never raises 0 to a negative power.
  const V second = gamma.value * (t + t - one) *
                   o.Exp((gamma.value - one) * log_1m_pt + s.log_p + s.log_q) * ce;
  // p - t written as p(1-t) - (1-p)t: no cancellation of p - 1 at t = 1.
  const V grad = alpha_t * (mod * (s.p * u - s.q * t) - second);
  return {alpha_t * mod * ce, grad};
}

/// §2 with input = PROBABILITIES: the input is p itself and the gradient is ∂ℓ/∂p.
template <class Ops, class V>
FOCAL_HD LossGrad<V> SigmoidFocalProbabilities(const Ops& o, V p, V t, V alpha_pos, V alpha_neg,
                                               const Gamma<V>& gamma) {
  const V one = o.Set(1);
  const V zero = o.Zero();
  const V q = one - p;
  const V u = one - t;
  const V alpha_t = alpha_pos * t + alpha_neg * u;
  // PyTorch's BCELoss clamps each log at -100 so that p ∈ {0, 1} stays finite.
  const V floor = o.Set(-100);
  const V ce = o.Neg(t * o.Max(o.Log(p), floor) + u * o.Max(o.Log1p(o.Neg(p)), floor));
  const V one_m_pt = p * u + q * t;
  const V log_1m_pt = o.Log(one_m_pt);
  const V mod = Modulating(o, one_m_pt, [&] { return log_1m_pt; }, gamma);
  // ∂ce/∂p as BCELoss's backward: (p - t) / max(p(1-p), 1e-12).
  const V dce = (p - t) / o.Max(p * q, o.Set(1e-12));
  // ce·∂(1-p_t)^γ/∂p = γ(1-2t)(1-p_t)^(γ-1)·ce, as exp((γ-1)log(1-p_t) + log ce) so that γ < 1
  // does not overflow; its limit where 1-p_t = 0 is 0 (ce vanishes as fast as 1-p_t).
  const V dmod_ce =
      o.Select(o.Or(o.Eq(one_m_pt, zero), o.Eq(gamma.value, zero)), zero,
               gamma.value * (u - t) * o.Exp((gamma.value - one) * log_1m_pt + o.Log(ce)));
  return {alpha_t * mod * ce, alpha_t * (mod * dce + dmod_ce)};
}

/// §2's per-job constants in the value type: γ, the target smoothing t' = t·keep + floor with
/// keep = 1-ε and floor = ε/K, and what the input holds.
template <class V>
struct SigmoidFocalConsts {
  Gamma<V> gamma;
  V keep;
  V floor;
  bool smoothed;       ///< ε > 0
  bool probabilities;  ///< input = PROBABILITIES
};

/// `smoothing_floor` is ε/K (KernelArgs::smoothing_floor).
template <class Ops>
FOCAL_HD SigmoidFocalConsts<typename Ops::V> MakeSigmoidFocalConsts(const Ops& o, double gamma, double smoothing,
                                                                    double smoothing_floor, bool probabilities) {
  return {MakeGamma(o, gamma), o.Set(1 - smoothing), o.Set(smoothing_floor), smoothing != 0, probabilities};
}

/// t ∈ {0, 1}: a hard target (for the form choice, and dynamic_focal's input check).
template <class Ops, class V>
FOCAL_HD typename Ops::M IsBinaryTarget(const Ops& o, V t) {
  return o.Or(o.Eq(t, o.Zero()), o.Eq(t, o.Set(1)));
}

/// §2 for one element, or one vector of them, with target t before smoothing and the class
/// weights α_t of positives and negatives. The form: the cheaper hard one where `binary` (the
/// caller's IsBinaryTarget over everything it passes, or true for one-hot targets) holds with
/// no smoothing on logits, which is exact there; the soft (or probabilities) one of t' otherwise.
template <class Ops, class V>
FOCAL_HD LossGrad<V> SigmoidFocalBinary(const Ops& o, const SigmoidFocalConsts<V>& c, V x, V t, V alpha_pos,
                                        V alpha_neg) {
  const auto positive = o.Eq(t, o.Set(1));
  return SigmoidFocalHard(o, x, o.Select(positive, o.Set(1), o.Set(-1)), o.Select(positive, alpha_pos, alpha_neg),
                          c.gamma);
}

template <class Ops, class V>
FOCAL_HD LossGrad<V> SigmoidFocal(const Ops& o, const SigmoidFocalConsts<V>& c, V x, V t, bool binary, V alpha_pos,
                                  V alpha_neg) {
  if (binary && !c.smoothed && !c.probabilities) return SigmoidFocalBinary(o, c, x, t, alpha_pos, alpha_neg);
  const V smoothed = o.MulAdd(t, c.keep, c.floor);  // t(1-ε) + ε/K
  if (c.probabilities) return SigmoidFocalProbabilities(o, x, smoothed, alpha_pos, alpha_neg, c.gamma);
  return SigmoidFocalSoft(o, x, smoothed, alpha_pos, alpha_neg, c.gamma);
}

// ------------------------------------------------------------------------------------------
// §3 focal_cosine.

/// The normalisation of §3: z = x·z_scale with z_scale = 1 / max(‖x‖, 1e-12) (F.normalize).
template <class Ops, class V>
FOCAL_HD V CosineZScale(const Ops& o, V sum_squares) {
  return o.Set(1) / o.Max(o.Sqrt(sum_squares), o.Set(1e-12));
}

/// z = x·z_scale, a normalised logit; the row's maximum z is CosineZ(max x), as z_scale > 0.
template <class Ops, class V>
FOCAL_HD V CosineZ(const Ops& o, V x, V z_scale) {
  return x * z_scale;
}

/// A focal-cosine row's loss and gradient as the per-element pass takes them:
///   ∂ℓ/∂x_j = coef_x·x_j + coef_e·e_j for j ≠ y (FocalCosineGradAt), grad_y for j = y,
/// with e_j = ExpAboutMax(z_j, z_max). Already weighted by the row's upstream weight w.
template <class V>
struct FocalCosineRow {
  V loss;
  V coef_x, coef_e, grad_y;
};

/// §3 for one row, from ‖x‖², the target logit x_y, and the softmax sums of z = CosineZ(x) about
/// its maximum z_max: `rest` (see Rest) and tz = Σ z_j e^(z_j - z_max). `w` is the row's
/// upstream weight.
template <class Ops, class V>
FOCAL_HD FocalCosineRow<V> FocalCosine(const Ops& o, V sum_squares, V x_y, V z_max, V rest, V tz, V alpha,
                                       const Gamma<V>& gamma, V xent, V w) {
  const V one = o.Set(1);
  const V norm = o.Sqrt(sum_squares);
  const V z_scale = CosineZScale(o, sum_squares);
  const V norm_eps = o.Sqrt(sum_squares + o.Set(1e-12));  // cosine_embedding_loss's denominator
  const V cosine = x_y / norm_eps;
  const V z_y = CosineZ(o, x_y, z_scale);
  const V s = one + rest;  // Σ e^(z_j - z_max)
  const V u_y = LogProb(o, z_y, z_max, LogNormalizer(o, rest));
  const FocalTerm<V> term = SoftmaxFocalTerm(o, u_y, gamma);
  // Focal part: G_j = g (p_j - [j=y]) w.r.t. z; through z = x/‖x‖ it becomes (G - z (z·G))/‖x‖,
  // and z·G = g (Σ z_j p_j - z_y). Below ‖x‖ = 1e-12, F.normalize divides by the constant 1e-12
  // and the projection drops out.
  const V k = w * xent * alpha * term.g;
  const V z_dot_g = tz / s - z_y;
  const V projection = o.Select(o.Lt(o.Set(1e-12), norm), k * z_dot_g * z_scale * z_scale, o.Zero());
  FocalCosineRow<V> row;
  row.loss = (one - cosine) + xent * alpha * term.f;
  // Cosine part: ∂cos/∂x_j = [j=y]/n - x_y x_j / n³ with n = norm_eps.
  row.coef_x = w * x_y / (norm_eps * norm_eps * norm_eps) - projection;
  const V coef_p = k * z_scale;  // of p_j - [j=y]
  row.coef_e = coef_p / s;
  // The target: coef_x·x_y + coef_p (p_y - 1) - w/n, with p_y - 1 as expm1(log p_y), exact as
  // p_y → 1.
  row.grad_y = o.MulAdd(row.coef_x, x_y, coef_p * o.Expm1(u_y)) + o.Neg(w) / norm_eps;
  return row;
}

/// ∂ℓ/∂x_j of a non-target class j from x_j and e_j (FocalCosineRow).
template <class Ops, class V>
FOCAL_HD V FocalCosineGradAt(const Ops& o, V coef_x, V coef_e, V x, V e) {
  return o.MulAdd(coef_x, x, coef_e * e);
}

// ------------------------------------------------------------------------------------------
// §4 dynamic_focal.

/// The weights α_t of a positive and a negative target.
template <class V>
struct ClassWeights {
  V pos;
  V neg;
};

/// §4's a_t = t α_n + (1-t)(1-α_n) of a row with α_n = num_objects_n / mean, as §2's hard form
/// takes it. A row with more than the mean number of objects gives its negatives a negative
/// weight: the seed's definition, kept.
template <class Ops, class V>
FOCAL_HD ClassWeights<V> DynamicFocalWeights(const Ops& o, V alpha_n) {
  return {alpha_n, o.Set(1) - alpha_n};
}

/// §4's α_n: the row's number of objects over the batch's mean number (the mean is > 0, checked).
template <class V>
FOCAL_HD V ObjectsWeight(V num_objects, V mean_objects) {
  return num_objects / mean_objects;
}

/// §2's α_t weights of positives and negatives from the request's α: α and 1-α, or 1 and 1 when
/// a negative α disables the weighting (torchvision's convention).
template <class Ops>
FOCAL_HD ClassWeights<typename Ops::V> SigmoidFocalWeights(const Ops& o, double alpha) {
  if (alpha < 0) return {o.Set(1), o.Set(1)};
  return {o.Set(alpha), o.Set(1 - alpha)};
}

/// §2's smoothing floor ε/K: a target t becomes t(1-ε) + ε/K (SigmoidFocal applies it).
template <class V>
FOCAL_HD V SmoothingFloor(V smoothing, V classes) {
  return smoothing / classes;
}

// ------------------------------------------------------------------------------------------
// §5 the catalogue: the elementwise variants (§5.1–§5.4). Each is one element of logits x and
// its target, like §2, with the sigmoid's parts from Sigmoid: no log of a difference, no
// negative power.

/// σ(x) - y without the cancellation of p - y where both are near 1: (1-y) - (1-σ(x)) there
/// (1-y is exact for y ≥ 1/2), p - y below.
template <class Ops, class V>
FOCAL_HD V SigmoidMinus(const Ops& o, const SigmoidParts<V>& s, V y) {
  const V one = o.Set(1);
  return o.Select(o.Le(o.Set(0.5), y), (one - y) - s.q, s.p - y);
}

/// §5.1's per-job constants: γ+, γ- and the clip m.
template <class V>
struct AsymmetricConsts {
  Gamma<V> gamma_pos;
  Gamma<V> gamma_neg;
  /// γ- - 1 where γ- is a whole number from 1 to 4 (its `whole` is then 0 to 3), so that the
  /// clipped L-'s gradient takes p_m^(γ-1) as a product; unused otherwise.
  Gamma<V> gamma_neg_less_one;
  V clip;
  bool clipped;  ///< m > 0 in the compute type (a smaller m rounds to 0 there: no clip)
  bool clip_normal;  ///< m is a normal number of the compute type, and so is 1 - p_m ≥ m
};

template <class Ops>
FOCAL_HD AsymmetricConsts<typename Ops::V> MakeAsymmetricConsts(const Ops& o, double gamma_pos, double gamma_neg,
                                                                double clip) {
  using S = typename Ops::Scalar;
  return {MakeGamma(o, gamma_pos), MakeGamma(o, gamma_neg), MakeGamma(o, gamma_neg - 1), o.Set(clip),
          static_cast<S>(clip) > 0, static_cast<S>(clip) >= (sizeof(S) == 4 ? 0x1p-126 : 0x1p-1022)};
}

/// §5.1 asymmetric for one element with target t ∈ [0, 1]:
///   ℓ = t (1-p)^γ+ (-log p) + (1-t) p_m^γ- (-log(1-p_m)),  p_m = max(p - m, 0).
template <class Ops, class V>
FOCAL_HD LossGrad<V> Asymmetric(const Ops& o, const AsymmetricConsts<V>& c, V x, V t) {
  const V one = o.Set(1);
  const V zero = o.Zero();
  // A term no lane needs is skipped (its part is 0): most vectors of a multi-label batch hold
  // negatives only. The sum below is then the same, bit for bit, as with the term computed.
  const bool positives = !o.AllTrue(o.Eq(t, zero));
  const bool negatives = !o.AllTrue(o.Eq(t, one));
  const SigmoidProbabilities<V> probabilities = SigmoidProbabilitiesOf(o, x);
  // The clipped L- needs no log of σ: without L+ the log1p is skipped too.
  const SigmoidParts<V> s = positives || !c.clipped ? SigmoidLogs(o, x, probabilities)
                                                    : SigmoidParts<V>{zero, zero, probabilities.p, probabilities.q};
  // L+: §2's hard form with t = 1 and α_t = 1.
  V loss_pos = zero, grad_pos = zero;
  if (positives) {
    const V mod_pos = Modulating(o, s.q, [&] { return s.log_q; }, c.gamma_pos);
    loss_pos = mod_pos * o.Neg(s.log_p);
    grad_pos = mod_pos * o.MulSub(c.gamma_pos.value * s.p, s.log_p, s.q);  // as SigmoidFocalHard
  }
  // L-: ∂/∂x = p(1-p) p_m^γ- [γ- r + 1/(1-p_m)], r = -log(1-p_m)/p_m → 1 as p_m → 0, so that
  // γ- < 1 raises nothing to a negative power.
  V loss_neg = zero, grad_neg = zero;
  if (negatives && !c.clipped) {
    // p_m = p: -log(1-p) = softplus(x) for every x, and p(1-p)/(1-p_m) = p.
    const V neg_log = o.Neg(s.log_q);
    const V mod_neg = Modulating(o, s.p, [&] { return s.log_p; }, c.gamma_neg);
    const V r = o.Select(o.Eq(s.p, zero), one, neg_log / s.p);
    loss_neg = mod_neg * neg_log;
    grad_neg = mod_neg * s.p * (c.gamma_neg.value * r * s.q + one);
  } else if (negatives) {
    const V shifted = o.Max(s.p - c.clip, zero);
    const auto active = o.Lt(zero, shifted);
    // 1 - p_m = (1-p) + m ≥ m where p > m: from 1-p, without the cancellation of 1 - p_m.
    const V one_m_shifted = o.Select(active, s.q + c.clip, one);
    // -log(1 - p_m): log1p(-p_m) of p_m itself where it is small (its digits as p_m → 0), the
    // log of 1 - p_m above (where p - m may have rounded to 1: x ≳ 17 with a tiny m).
    const V neg_log = o.Neg(c.clip_normal ? o.LogComplementOfNormal(shifted, one_m_shifted)
                                          : o.LogComplement(shifted, one_m_shifted));
    // p(1-p) and p(1-p)/(1-p_m), the latter as p·(q/(q + m)) ≤ p: no overflow where q
    // underflows and m is tiny.
    const V pq = s.p * s.q;
    const V pq_over = s.p * (s.q / one_m_shifted);
    if (c.gamma_neg.whole >= 1) {
      // A whole γ- ≥ 1: p_m^γ- r = p_m^(γ--1)·(-log(1-p_m)), a product with no division and
      // no negative power.
      const V mod_less = Modulating(o, shifted, [&] { return o.Log(shifted); }, c.gamma_neg_less_one);
      loss_neg = mod_less * shifted * neg_log;
      // γ- pq formed beside the log, so that one fused step follows it on the chain.
      grad_neg = o.IfThenElseZero(active, mod_less * o.MulAdd(neg_log, c.gamma_neg.value * pq, pq_over * shifted));
    } else {
      // γ- = 0 or fractional: r = -log(1-p_m)/p_m → 1 as p_m → 0, exact there as both are.
      const V r = o.Select(active, neg_log / shifted, one);
      const V mod_neg = Modulating(o, shifted, [&] { return o.Log(shifted); }, c.gamma_neg);
      loss_neg = mod_neg * neg_log;
      grad_neg = o.IfThenElseZero(active, mod_neg * o.MulAdd(c.gamma_neg.value * r, pq, pq_over));
    }
  }
  // Every t = 0: the weight 1 - t is 1, and L- is the result as it stands (1·v is v).
  if (!positives) return {loss_neg, grad_neg};
  const V u = one - t;
  // A term of weight 0 adds nothing, even where it is infinite (an infinite logit under
  // allow_non_finite), as PyTorch's ASL gives; so a skipped term's 0 is the same bits.
  const auto has_pos = o.Lt(zero, t), has_neg = o.Lt(zero, u);
  return {o.IfThenElseZero(has_pos, t * loss_pos) + o.IfThenElseZero(has_neg, u * loss_neg),
          o.IfThenElseZero(has_pos, t * grad_pos) + o.IfThenElseZero(has_neg, u * grad_neg)};
}

/// §5.2's β as the formulas take it: |d|^(β-1) is a modulating factor (β ≥ 1, checked).
template <class V>
struct QualityFocalConsts {
  Gamma<V> beta_minus_one;
  V beta;
};

template <class Ops>
FOCAL_HD QualityFocalConsts<typename Ops::V> MakeQualityFocalConsts(const Ops& o, double beta) {
  return {MakeGamma(o, beta - 1), o.Set(beta)};
}

/// §5.2 quality_focal for one element with quality target y ∈ [0, 1]:
///   ℓ = |d|^β (softplus(x) - x y),  ∂ℓ/∂x = sign(d)|d|^(β-1) [d² + β σ(1-σ)(softplus(x) - x y)],
/// d = σ(x) - y, written |d|^(β-1) (d|d| + sign(d) β p q ce): one power, of exponent β-1 ≥ 0.
template <class Ops, class V>
FOCAL_HD LossGrad<V> QualityFocal(const Ops& o, const QualityFocalConsts<V>& c, V x, V y) {
  const V zero = o.Zero();
  const SigmoidParts<V> s = Sigmoid(o, x);
  if (o.AllTrue(o.Eq(y, zero))) {
    // Every target 0 (most vectors of a detection batch): d = p, and where p = 0 the gradient's
    // terms are 0 without sign(d). The same operations as the general form below on y = 0, so
    // the same bits, infinite logits included (ce keeps its 0·log p).
    // ce = -(0·log p + log(1-p)) as 0·(-log p) + (-log(1-p)): the same bits (negation is exact)
    // in one fused step after the negated logs, two steps sooner on the chain to the loss.
    const V ce = o.MulAdd(zero, o.Neg(s.log_p), o.Neg(s.log_q));
    const V mod = Modulating(o, s.p, [&] { return o.Log(s.p); }, c.beta_minus_one);
    return {mod * s.p * ce, mod * o.MulAdd(c.beta * s.p * s.q, ce, s.p * s.p)};
  }
  const V d = SigmoidMinus(o, s, y);
  const V abs_d = o.Abs(d);
  const V ce = SoftCrossEntropy(o, s, y);
  const V mod = Modulating(o, abs_d, [&] { return o.Log(abs_d); }, c.beta_minus_one);
  const V sign = o.Select(o.Lt(zero, d), o.Set(1), o.Select(o.Lt(d, zero), o.Set(-1), zero));
  return {mod * abs_d * ce, mod * o.MulAdd(sign * (c.beta * s.p * s.q), ce, d * abs_d)};
}

/// §5.3's per-job constants.
template <class V>
struct VarifocalConsts {
  Gamma<V> gamma;
  V alpha;
  bool iou_weighted;  ///< positives weighted by q (else by 1)
};

template <class Ops>
FOCAL_HD VarifocalConsts<typename Ops::V> MakeVarifocalConsts(const Ops& o, double alpha, double gamma,
                                                              bool iou_weighted) {
  return {MakeGamma(o, gamma), o.Set(alpha), iou_weighted};
}

/// §5.3 varifocal for one element with IoU-aware target q ∈ [0, 1]:
///   q > 0: ℓ = w⁺ (softplus(x) - x q), ∂ℓ/∂x = w⁺ (p - q), w⁺ = q or 1;
///   q = 0: ℓ = α p^γ softplus(x),      ∂ℓ/∂x = α p^γ [γ (1-p) softplus(x) + p],
/// with p^γ = exp(-γ softplus(-x)) for a fractional γ (Modulating of p and log p).
template <class Ops, class V>
FOCAL_HD LossGrad<V> Varifocal(const Ops& o, const VarifocalConsts<V>& c, V x, V q) {
  const SigmoidParts<V> s = Sigmoid(o, x);
  const auto positive = o.Lt(o.Zero(), q);
  const V softplus = o.Neg(s.log_q);
  const V mod = Modulating(o, s.p, [&] { return s.log_p; }, c.gamma);
  const V negative_weight = c.alpha * mod;
  const LossGrad<V> negative = {negative_weight * softplus, negative_weight * (c.gamma.value * s.q * softplus + s.p)};
  // Every q = 0 (most vectors of a detection batch): the negatives' terms alone, the same
  // operations as the select below takes for them, so the same bits.
  if (o.AllTrue(o.Eq(q, o.Zero()))) return negative;
  const V w = c.iou_weighted ? q : o.Set(1);
  return {o.Select(positive, w * SoftCrossEntropy(o, s, q), negative.loss),
          o.Select(positive, w * SigmoidMinus(o, s, q), negative.grad)};
}

/// §5.4's per-job constants: γ > 0 (checked), β, and 1/γ.
template <class V>
struct FocalStarConsts {
  V gamma;
  V beta;
  V inv_gamma;
};

template <class Ops>
FOCAL_HD FocalStarConsts<typename Ops::V> MakeFocalStarConsts(const Ops& o, double gamma, double beta) {
  return {o.Set(gamma), o.Set(beta), o.Set(1 / gamma)};
}

/// §5.4 focal_star for one element with a hard target: `sign` = 2t-1, `alpha_t` its class's
/// weight (SigmoidFocalWeights). With z = γ(2t-1)x + β: ℓ = α_t softplus(-z)/γ = -α_t log σ(z)/γ,
/// ∂ℓ/∂x = α_t (2t-1)(σ(z) - 1) = -α_t (2t-1) σ(-z), both from Sigmoid(z) without cancellation.
/// The loss is written softplus(-z)/γ = max(-(x_t + β/γ), 0) + log1p(e^-|z|)/γ, so that a logit
/// whose γ x_t overflows (float32 beyond 3.4e38/γ) still gives its finite loss |x_t + β/γ|.
template <class Ops, class V>
FOCAL_HD LossGrad<V> FocalStar(const Ops& o, const FocalStarConsts<V>& c, V x, V sign, V alpha_t) {
  const V x_t = sign * x;
  // z may overflow to ±∞ (float32 γ x_t beyond 3.4e38): its e^-|z| is then 0 and its side the
  // right one, so σ(±z) are exact, and nothing below takes z itself. No clamp on the chain.
  const V z = o.MulAdd(c.gamma, x_t, c.beta);
  const SigmoidProbabilities<V> s = SigmoidProbabilitiesOf(o, z);
  // log1p(e^-|z|) = -log σ(|z|), the sigmoid's own log1p: no log of σ itself is needed.
  const V tail = o.Log1pUnit(s.e);
  const V linear = o.Max(o.Neg(o.MulAdd(c.beta, c.inv_gamma, x_t)), o.Zero());
  // The weights are applied off the chain from e: one fused step after the log1p, one product
  // after σ(-z).
  return {o.MulAdd(tail, alpha_t * c.inv_gamma, alpha_t * linear), o.Neg(alpha_t * sign) * s.q};
}

// ------------------------------------------------------------------------------------------
// §5.5 distribution_focal: one row of B bins, through the log-softmax of §1's primitives.

/// A target distance y ∈ [0, B-1] split over its two bins: left = min(floor(y), B-2),
/// w_left = (left+1) - y, w_right = y - left (both exact: y and left are close).
template <class T>
struct DistributionBins {
  int64_t left;
  T w_left;
  T w_right;
};

template <class T>
FOCAL_HD DistributionBins<T> DistributionFocalBins(T y, int64_t bins) {
  int64_t left = static_cast<int64_t>(y);  // y ≥ 0 (checked): truncation is floor
  if (left > bins - 2) left = bins - 2;
  const T l = static_cast<T>(left);
  return {left, (l + T(1)) - y, y - l};
}

/// A distribution-focal row's loss and gradient as the per-element pass takes them:
///   ∂ℓ/∂x_j = coef_e·e_j for j ∉ {left, left+1} (SoftmaxFocalGradAt), grad_left and
///   grad_right for the two target bins; already weighted by the row's upstream weight w.
template <class V>
struct DistributionFocalRowGrad {
  V loss;
  V coef_e;
  V grad_left;
  V grad_right;
};

/// §5.5 for one row, from the two target bins' logits, the row maximum m and rest (see Rest):
///   ℓ = -(w_l log S_l + w_r log S_{l+1}),  ∂ℓ/∂x_j = S_j - (w_l [j=l] + w_r [j=l+1])  (w_l + w_r = 1).
template <class Ops, class V>
FOCAL_HD DistributionFocalRowGrad<V> DistributionFocalRow(const Ops& o, V x_left, V x_right, V max, V rest,
                                                          V w_left, V w_right, V w) {
  const V log_normalizer = LogNormalizer(o, rest);
  const V u_left = LogProb(o, x_left, max, log_normalizer);
  const V u_right = LogProb(o, x_right, max, log_normalizer);
  // A bin of weight 0 (y on a bin edge) adds nothing, even where its log S is -∞ (a logit
  // 3.4e38 below the maximum: x - max overflows float32).
  const V zero = o.Zero();
  const V term_left = o.IfThenElseZero(o.Lt(zero, w_left), w_left * u_left);
  const V term_right = o.IfThenElseZero(o.Lt(zero, w_right), w_right * u_right);
  return {o.Neg(term_left + term_right), PerExp(o, w, rest), w * (o.Exp(u_left) - w_left),
          w * (o.Exp(u_right) - w_right)};
}

// ------------------------------------------------------------------------------------------
// §5.0 options shared by several variants.

/// Poly-1's extra term for a sigmoid element with (soft) target t:
///   ℓ = ε_p (1-p_t)^(γ+1),  ∂ℓ/∂x = ε_p (γ+1)(1-p_t)^γ (1-2t) p(1-p),
/// with 1-p_t = p(1-t) + (1-p)t and its log (LogOneMinusPt), as §2's soft form has them.
template <class Ops, class V>
FOCAL_HD LossGrad<V> SigmoidPolyTerm(const Ops& o, const SigmoidParts<V>& s, V t, const Gamma<V>& gamma,
                                     V poly_epsilon) {
  const V one = o.Set(1);
  const V u = one - t;
  const V one_m_pt = s.p * u + s.q * t;
  const V mod = Modulating(o, one_m_pt, [&] { return LogOneMinusPt(o, s, t); }, gamma);
  return {poly_epsilon * mod * one_m_pt, poly_epsilon * (gamma.value + one) * mod * (u - t) * s.p * s.q};
}

/// The class-balanced weight of a class with n > 0 examples (Cui et al. 2019), before the
/// normalisation to Σ α_c = C: (1-β)/(1-β^n), with 1-β^n = -expm1(n log1p(-(1-β))) so that
/// β → 1 and large n keep their digits. `one_m_beta` is 1-β ∈ (0, 1]; β = 0 gives
/// log1p(-1) = -∞ and so the weight 1/1 for every n > 0.
template <class Ops, class V>
FOCAL_HD V ClassBalancedWeight(const Ops& o, V n, V one_m_beta) {
  return one_m_beta / o.Neg(o.Expm1(n * o.Log1p(o.Neg(one_m_beta))));
}
