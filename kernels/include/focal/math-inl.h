// The math of every variant, forward and gradient side by side, written once (VARIANTS.md is
// the contract; the section numbers below are its sections). Each function is a template over a
// math-ops policy (focal/math_ops.h): ScalarOps<float> in CUDA kernels, ScalarOps<double> in
// references, Highway vectors in the CPU backend. Arithmetic uses the value type's operators;
// constants go through o.Set so the same expression serves scalars and vectors.
//
// No include guard and no namespace, on purpose: focal/math.h includes it once inside
// focal::math, and the CPU kernels include it again inside each Highway target's namespace, so
// that every SIMD target compiles the formulas with its own instruction set (the way Highway's
// own -inl.h headers work). Include focal/hd.h before it.


template <class V>
struct LossGrad {
  V loss;
  V grad;  ///< ∂loss/∂input, before the upstream weight
};

/// σ(x) and its logs, from one exp and one log1p.
template <class V>
struct SigmoidParts {
  V log_p;  ///< log σ(x) = -softplus(-x)
  V log_q;  ///< log(1-σ(x)) = -softplus(x)
  V p;      ///< σ(x)
  V q;      ///< 1 - σ(x), computed directly: no cancellation as p → 1
};

template <class Ops, class V = typename Ops::V>
FOCAL_HD SigmoidParts<V> Sigmoid(const Ops& o, V x) {
  const V one = o.Set(1);
  const V e = o.Exp(o.Neg(o.Abs(x)));  // e^-|x| ∈ (0, 1]: never overflows
  const V u = one + e;
  const V inv = one / u;
  // log1p(e) as log(u) corrected for the rounding of u = 1 + e (Kahan's log1p), reusing the
  // 1/u that σ needs: exact to the last digits even where e ≪ ε and log(u) is 0.
  const V l = o.LogOneToTwo(u) + (e - (u - one)) * inv;
  const V m = o.Max(x, o.Zero());
  const auto nonneg = o.Le(o.Zero(), x);
  // softplus(-x) = (max(x,0) - x) + l; (m - x) is exact, so log σ(x) keeps its relative
  // accuracy for large x where softplus(x) - x would cancel to 0.
  return {o.Neg((m - x) + l), o.Neg(m + l), o.Select(nonneg, inv, e * inv),
          o.Select(nonneg, e * inv, inv)};
}

/// The focusing parameter as the formulas take it: γ itself and, when γ is a whole number up to
/// 4, that number, so that (1-p)^γ is a product instead of exp(γ·log(1-p)). The common γ = 1, 2
/// then cost a multiply instead of an exp per element.
template <class V>
struct Gamma {
  V value;
  int whole = -1;  ///< γ when it is 0, 1, 2, 3 or 4; -1 otherwise (uniform over a job)
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
/// to 0. A fractional γ is > 0, so γ·log(1-p) never meets 0·(-∞).
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
    default: return o.Exp(gamma.value * log_base());
  }
}

/// log(e^a + e^b); exact when one side is -∞.
template <class Ops, class V>
FOCAL_HD V LogAddExp(const Ops& o, V a, V b) {
  const V hi = o.Max(a, b);
  return hi + o.Log1p(o.Exp(o.Min(a, b) - hi));
}

/// §2 with a hard target. `sign` is 2t-1 (±1), `alpha_t` the weight of this target's class.
template <class Ops, class V>
FOCAL_HD LossGrad<V> SigmoidFocalHard(const Ops& o, V x, V sign, V alpha_t, const Gamma<V>& gamma) {
  // With z = (2t-1)x, p_t = σ(z) and 1-p_t = σ(-z): both logs without cancellation.
  const SigmoidParts<V> s = Sigmoid(o, sign * x);
  const V mod = Modulating(o, s.q, [&] { return s.log_q; }, gamma);  // (1-p_t)^γ
  const V loss = alpha_t * mod * o.Neg(s.log_p);
  // ∂ℓ/∂x = s α_t (1-p_t)^γ (γ p_t log p_t - (1-p_t)): the apex/mmcv form, no (γ-1) power.
  const V grad = sign * alpha_t * mod * (gamma.value * s.p * s.log_p - s.q);
  return {loss, grad};
}

/// §2 with a soft target t ∈ [0,1] (after label smoothing). α_t = alpha_pos·t + alpha_neg·(1-t).
template <class Ops, class V>
FOCAL_HD LossGrad<V> SigmoidFocalSoft(const Ops& o, V x, V t, V alpha_pos, V alpha_neg,
                                      const Gamma<V>& gamma) {
  const V one = o.Set(1);
  const SigmoidParts<V> s = Sigmoid(o, x);
  const V u = one - t;
  const V alpha_t = alpha_pos * t + alpha_neg * u;
  const V ce = o.Neg(t * s.log_p + u * s.log_q);  // two non-negative terms: no cancellation
  // log(1-p_t) = log(p(1-t) + (1-p)t) in log space: finite even where a 0/1 target saturates p.
  const V log_1m_pt = LogAddExp(o, s.log_p + o.Log1p(o.Neg(t)), s.log_q + o.Log(t));
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

/// log-softmax of one class: log p = (x - m) - log(1 + rest), with m the row maximum and
/// rest = Σ_j e^(x_j - m) - 1 accumulated without the maximum's own 1 (RestTerm, TieTerm).
/// Subtracting m first and taking log1p of rest keeps log p of a confident row (p → 1) accurate
/// to the last digits; x - (m + log Σ) would round the small normaliser away.
template <class Ops, class V>
FOCAL_HD V LogProb(const Ops& o, V x, V max, V log_normalizer) {
  return (x - max) - log_normalizer;
}

/// log(1 + rest): the log-normaliser of LogProb.
template <class Ops, class V>
FOCAL_HD V LogNormalizer(const Ops& o, V rest) {
  return o.Log1p(rest);
}

/// One class's term of `rest` for LogSumExp: e^(x - m) for classes below the maximum, 0 for
/// those equal to it. Those are counted apart (TieTerm), so rest = Σ RestTerm + Σ TieTerm - 1
/// carries no rounding from adding small terms to 1.
template <class Ops, class V>
FOCAL_HD V RestTerm(const Ops& o, V x, V max) {
  return o.Select(o.Eq(x, max), o.Zero(), o.Exp(x - max));
}
template <class Ops, class V>
FOCAL_HD V TieTerm(const Ops& o, V x, V max) {
  return o.Select(o.Eq(x, max), o.Set(1), o.Zero());
}

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

/// Per-row coefficients of §3's gradient:
///   ∂ℓ/∂x_j = coef_x·x_j + coef_p·(p_j - [j=y]) + [j=y]·coef_target,
/// with p_j the softmax of the normalised logits z. For j = y, p_y - 1 is best taken as
/// expm1(log p_y): it keeps its digits when p_y → 1.
template <class V>
struct FocalCosineRow {
  V loss;
  V coef_x, coef_p, coef_target;
};

/// The normalisation of §3: z = x·z_scale with z_scale = 1 / max(‖x‖, 1e-12) (F.normalize).
template <class Ops, class V>
FOCAL_HD V CosineZScale(const Ops& o, V sum_squares) {
  return o.Set(1) / o.Max(o.Sqrt(sum_squares), o.Set(1e-12));
}

/// §3 for one row, from ‖x‖², the target logit x_y, and the softmax sums of z = x·z_scale
/// about its maximum z_max: `rest` as for LogSumExp and tz = Σ z_j e^(z_j - z_max).
/// `w` is the upstream weight of this row. Returns the log-normaliser of z in `log_norm_out`
/// for the per-element pass (p_j = exp(LogProb(z_j, z_max, log_norm))).
template <class Ops, class V>
FOCAL_HD FocalCosineRow<V> FocalCosine(const Ops& o, V sum_squares, V x_y, V z_max, V rest, V tz,
                                       V alpha, const Gamma<V>& gamma, V xent, V w,
                                       V& log_norm_out) {
  const V one = o.Set(1);
  const V norm = o.Sqrt(sum_squares);
  const V z_scale = CosineZScale(o, sum_squares);
  const V norm_eps = o.Sqrt(sum_squares + o.Set(1e-12));  // cosine_embedding_loss's denominator
  const V cosine = x_y / norm_eps;
  const V z_y = x_y * z_scale;
  const V log_norm = LogNormalizer(o, rest);
  const V s = one + rest;  // Σ e^(z_j - z_max)
  log_norm_out = log_norm;
  const FocalTerm<V> term = SoftmaxFocalTerm(o, LogProb(o, z_y, z_max, log_norm), gamma);
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
  row.coef_p = k * z_scale;
  row.coef_target = o.Neg(w) / norm_eps;
  return row;
}
