// The formulas of focal/math-inl.h under ScalarOps<double>, one function (or one row assembled
// from them as the kernels assemble it) at a time, against plainly written long-double
// references of VARIANTS.md and, for gradients, central finite differences of those references.
// Deterministic: fixed grids, and rows whose logits come from a fixed formula.
//
// Tolerances, from the arithmetic. Every function is a short chain of double operations, each
// rounding by at most u = 2^-53, and of glibc's exp/log/log1p/expm1, each within 1 ulp. A chain
// of n steps without cancellation (the formulas are written to have none) is within n·u,
// relatively, to first order. What grows beyond that is an exponential of an argument that
// carries an absolute error δ: its result carries δ relatively. Hence the terms that appear in
// the bounds below:
//   - (1-p)^γ = exp(γ log(1-p)) carries (2 + γ|log(1-p)|)·u;
//   - log-softmax log p_c = (x_c - m) - log1p(rest), rest a sum of C exps, carries
//     (C + 3)·u relatively (no cancellation: both parts are ≤ 0), and e^(x_c - m) carries
//     (1 + |x_c - m|)·u;
//   - the sigmoid's logs carry ~4u relatively, exponents built from them (|x| + |log t|)·u.
// Each test counts its steps that way and allows kSafety = 8 times the count.
// Results below double's normal range (2^-1022) lose their relative accuracy to underflow:
// every bound has an absolute floor of 1e-300.
// Finite differences use the 5-point stencil in long double (ε_ld = 2^-64) with step
// h ≈ 1e-4 · scale (scale 1 for logits, the row's size for rows below ‖x‖ = 1e-12, min(p, 1-p)
// for probabilities): rounding error ≤ 3 ε_ld max|f| / h ≈ 3e-15 · max|f| / scale, truncation
// h⁴ |f⁽⁵⁾| / 30 ≈ 3e-18 · scale⁴ |f⁽⁵⁾|, far below the first for these smooth functions on
// the grids here. kFdSlack · max|f| / scale covers both.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <functional>
#include <string>
#include <vector>

#include "focal/math.h"
#include "focal/math_ops.h"

namespace focal {
namespace {

using Real = long double;
using Ops = ScalarOps<double>;
constexpr double kU = 0x1p-53;
constexpr double kSafety = 8;
/// Finite-difference error per unit of max|f| / scale (see the top of the file), with room.
constexpr double kFdSlack = 1e-14;
constexpr double kTiny = 1e-300;

const Ops o;

void ExpectWithin(double got, Real want, double tolerance, const std::string& what) {
  const Real error = std::fabs(static_cast<Real>(got) - want);
  tolerance += kTiny;
  EXPECT_LE(error, tolerance) << what << ": got " << got << ", want " << static_cast<double>(want) << " (error "
                              << static_cast<double>(error) << ", tolerance " << tolerance << ")";
}

void ExpectRow(const std::vector<double>& got, const std::vector<Real>& want, double tolerance,
               const std::string& what) {
  for (size_t c = 0; c < got.size(); ++c) {
    ExpectWithin(got[c], want[c], tolerance, "∂/∂x_" + std::to_string(c) + " " + what);
  }
}

double AbsD(Real v) { return static_cast<double>(std::fabs(v)); }

/// Relative bound of `steps` roundings, with the safety factor.
double Rel(double steps, Real want) { return kSafety * steps * kU * AbsD(want); }

// ---- long-double references, from VARIANTS.md ----------------------------------------------

Real RSoftplus(Real z) { return std::max<Real>(z, 0) + std::log1p(std::exp(-std::fabs(z))); }
Real RSigmoid(Real z) { return z >= 0 ? 1 / (1 + std::exp(-z)) : std::exp(z) / (1 + std::exp(z)); }
Real RPow(Real base, Real gamma) { return gamma == 0 ? 1 : std::pow(base, gamma); }  // 0^0 = 1

/// log_softmax of every class, through the maximum and log1p of the terms below it.
std::vector<Real> RLogSoftmax(const std::vector<Real>& x) {
  const Real m = *std::max_element(x.begin(), x.end());
  Real rest = -1;
  for (Real v : x) rest += v == m ? 1 : 0;
  for (Real v : x) rest += v == m ? 0 : std::exp(v - m);
  std::vector<Real> out;
  for (Real v : x) out.push_back((v - m) - std::log1p(rest));
  return out;
}
Real RLogSoftmax(const std::vector<Real>& x, size_t c) { return RLogSoftmax(x)[c]; }

/// §1: -Σ_c q_c α_c (1-p_c)^γ log p_c, q_c = (1-ε)[c = y] + ε/C.
Real RSoftmaxFocal(const std::vector<Real>& x, size_t y, Real gamma, const std::vector<Real>& alpha, Real eps) {
  Real loss = 0;
  const std::vector<Real> log_ps = RLogSoftmax(x);
  for (size_t c = 0; c < x.size(); ++c) {
    const Real q = (1 - eps) * (c == y ? 1 : 0) + eps / static_cast<Real>(x.size());
    if (q == 0) continue;
    const Real log_p = log_ps[c];
    loss += -q * alpha[c] * RPow(-std::expm1(log_p), gamma) * log_p;
  }
  return loss;
}

/// §2 with logits: α_t (1-p_t)^γ (softplus(x) - x t), each part without cancellation.
Real RSigmoidFocal(Real x, Real t, Real alpha_pos, Real alpha_neg, Real gamma) {
  const Real p = RSigmoid(x), q = RSigmoid(-x);
  const Real ce = t * RSoftplus(-x) + (1 - t) * RSoftplus(x);
  const Real one_m_pt = p * (1 - t) + q * t;
  return (alpha_pos * t + alpha_neg * (1 - t)) * RPow(one_m_pt, gamma) * ce;
}

/// §2 with probabilities, BCELoss's clamp of each log at -100.
Real RSigmoidFocalProbabilities(Real p, Real t, Real alpha_pos, Real alpha_neg, Real gamma) {
  const Real ce = -(t * std::max<Real>(std::log(p), -100) + (1 - t) * std::max<Real>(std::log1p(-p), -100));
  const Real one_m_pt = p * (1 - t) + (1 - p) * t;
  return (alpha_pos * t + alpha_neg * (1 - t)) * RPow(one_m_pt, gamma) * ce;
}

/// §4 for one element: -a_t (1-p_t)^γ log p_t, log p_t = -softplus(-x s), s = 2t - 1.
Real RDynamicFocal(Real x, Real t, Real alpha_n, Real gamma) {
  const Real a_t = t * alpha_n + (1 - t) * (1 - alpha_n);
  const Real log_pt = -RSoftplus(-x * (2 * t - 1));
  return -a_t * RPow(-std::expm1(log_pt), gamma) * log_pt;
}

/// §3 for one row.
Real RFocalCosine(const std::vector<Real>& x, size_t y, Real alpha, Real gamma, Real xent) {
  Real sq = 0;
  for (Real v : x) sq += v * v;
  const Real cosine = x[y] / std::sqrt(sq + 1e-12L);
  const Real scale = 1 / std::max<Real>(std::sqrt(sq), 1e-12L);
  std::vector<Real> z;
  for (Real v : x) z.push_back(v * scale);
  const Real ce = -RLogSoftmax(z, y);
  return (1 - cosine) + xent * alpha * RPow(-std::expm1(-ce), gamma) * ce;
}

/// ∂f/∂x_i for every i, by the 5-point stencil with step ≈ 1e-4 · step_scale[i], rounded to a
/// power of two so that x ± h and x ± 2h are exact (x has double's 53 bits in long double's 64):
/// a step that rounded would err by ε_ld·|x|/h relatively.
std::vector<Real> FiniteDifferences(const std::function<Real(const std::vector<Real>&)>& f, std::vector<Real> x,
                                    const std::vector<Real>& step_scale) {
  std::vector<Real> g(x.size());
  for (size_t i = 0; i < x.size(); ++i) {
    const Real xi = x[i], h = std::exp2(std::round(std::log2(1e-4L * step_scale[i])));
    auto at = [&](Real v) {
      x[i] = v;
      return f(x);
    };
    g[i] = (at(xi - 2 * h) - 8 * at(xi - h) + 8 * at(xi + h) - at(xi + 2 * h)) / (12 * h);
    x[i] = xi;
  }
  return g;
}

std::vector<Real> UnitSteps(const std::vector<Real>& x) { return std::vector<Real>(x.size(), 1); }

std::vector<Real> Widen(const std::vector<double>& x) { return {x.begin(), x.end()}; }

/// A fixed row of C logits of spread `scale`, `kind` 0 plain, 1 confident in class y, 2 two
/// tied maxima, 3 with the target far below the rest.
std::vector<double> MakeRow(int64_t C, size_t y, int kind, double scale) {
  std::vector<double> x(C);
  for (int64_t c = 0; c < C; ++c) x[c] = scale * std::sin(1.7 * static_cast<double>(c) + 0.3 * kind + 0.1);
  if (kind == 1) x[y] = scale * 2 + 25;
  if (kind == 2 && C >= 2) x[y] = x[(y + 1) % C] = scale * 1.5;
  if (kind == 3 && C >= 2) x[y] = -scale * 2 - 20;
  return x;
}

const double kGammas[] = {0, 0.5, 1, 2, 2.5, 4};
const double kLogits[] = {-88, -30, -7.5, -2, -0.5, -1e-3, 0, 1e-3, 0.5, 2, 7.5, 30, 88};

// ---- shared primitives --------------------------------------------------------------------

TEST(MathPrimitives, SigmoidAndItsLogs) {
  for (double x = -700; x <= 700; x += x > -40 && x < 40 ? 0.37 : 23) {
    const math::SigmoidParts<double> s = math::Sigmoid(o, x);
    const std::string at = "x=" + std::to_string(x);
    // e^-|x| (1 ulp), 1 + e, 1/u, Kahan's log1p (log + 3 roundings), the select: ~6 steps each.
    ExpectWithin(s.log_p, -RSoftplus(-x), Rel(6, RSoftplus(-x)), "log p " + at);
    ExpectWithin(s.log_q, -RSoftplus(x), Rel(6, RSoftplus(x)), "log q " + at);
    ExpectWithin(s.p, RSigmoid(x), Rel(4, RSigmoid(x)), "p " + at);
    ExpectWithin(s.q, RSigmoid(-x), Rel(4, RSigmoid(-x)), "q " + at);
  }
}

TEST(MathPrimitives, ModulatingFactorIsAProductOrOneExponential) {
  for (double gamma : {0.0, 1.0, 2.0, 3.0, 4.0, 0.5, 2.5, 7.25}) {
    const math::Gamma<double> g = math::MakeGamma(o, gamma);
    EXPECT_EQ(g.whole, gamma == std::floor(gamma) && gamma <= 4 ? static_cast<int>(gamma) : -1) << gamma;
    for (double base : {0.0, 1e-300, 1e-12, 0.01, 0.3, 0.5, 0.999, 1.0}) {
      bool logged = false;
      const double got = math::Modulating(o, base, [&] { logged = true; return std::log(base); }, g);
      EXPECT_EQ(logged, g.whole < 0) << "the log runs only for a fractional γ";
      const Real want = RPow(base, gamma);  // 0^0 = 1
      // Up to 3 products, or exp(γ·log b): (2 + γ|log b|) steps.
      const double steps = g.whole >= 0 ? 4 : 2 + gamma * std::fabs(std::log(base == 0 ? 1 : base));
      ExpectWithin(got, want, Rel(steps, want), "base " + std::to_string(base) + " γ " + std::to_string(gamma));
    }
  }
}

TEST(MathPrimitives, LogAddExp) {
  for (double a : {-1e4, -50.0, -3.0, 0.0, 1e-8, 2.5, 40.0})
    for (double b : {-static_cast<double>(INFINITY), -700.0, -3.0, 0.0, 2.5, 41.0}) {
      const double got = math::LogAddExp(o, a, b);
      const Real hi = std::max<Real>(a, b), lo = std::min<Real>(a, b);
      const Real want = hi + std::log1p(std::exp(lo - hi));
      // max, one subtraction (its error δ ≤ u|lo - hi| reaches log1p through e^(lo-hi) ≤ 1/e
      // of it), exp, log1p, the sum: absolute (4 + |hi|)·u.
      ExpectWithin(got, want, kSafety * kU * (4 + std::fabs(static_cast<double>(hi))),
                   "a " + std::to_string(a) + " b " + std::to_string(b));
    }
}

TEST(MathPrimitives, LogSoftmaxThroughTheMaximum) {
  for (int64_t C : {1, 2, 3, 10, 100})
    for (int kind = 0; kind < 4; ++kind) {
      const std::vector<double> x = MakeRow(C, static_cast<size_t>(C / 2), kind, 6);
      const double m = *std::max_element(x.begin(), x.end());
      double below = 0, ties = 0;
      for (double v : x) {
        const double e = math::ExpAboutMax(o, v, m);
        EXPECT_EQ(math::RestTermOf(o, v, m, e), math::RestTerm(o, v, m));
        EXPECT_EQ(math::RestTerm(o, v, m), v == m ? 0.0 : std::exp(v - m));
        EXPECT_EQ(math::TieTerm(o, v, m), v == m ? 1.0 : 0.0);
        below += math::RestTerm(o, v, m);
        ties += math::TieTerm(o, v, m);
      }
      const double rest = math::Rest(o, below, ties);
      const double log_norm = math::LogNormalizer(o, rest);
      const std::vector<Real> xr = Widen(x);
      for (size_t c = 0; c < x.size(); ++c) {
        const Real want = RLogSoftmax(xr, c);
        // (C + 3) relatively for log1p(rest) (C exps and sums), one for x - m, one for the difference.
        ExpectWithin(math::LogProb(o, x[c], m, log_norm), want,
                     kSafety * kU * ((C + 5) * AbsD(want) + std::fabs(x[c] - m)),
                     "C " + std::to_string(C) + " kind " + std::to_string(kind) + " class " + std::to_string(c));
      }
      // p_j = e_j / (1 + rest) as PerExp's coefficient times e_j.
      for (size_t c = 0; c < x.size(); ++c) {
        const double p = math::PerExp(o, 1.0, rest) * math::ExpAboutMax(o, x[c], m);
        const Real want = std::exp(RLogSoftmax(xr, c));
        ExpectWithin(p, want, Rel(C + 6 + std::fabs(x[c] - m), want), "p of class " + std::to_string(c));
      }
    }
}

// ---- §1 softmax_focal ---------------------------------------------------------------------

TEST(SoftmaxFocalMath, TermAgainstTheDirectForm) {
  for (double gamma : kGammas) {
    const math::Gamma<double> g = math::MakeGamma(o, gamma);
    for (double u : {-700.0, -40.0, -5.0, -1.0, -0.1, -1e-5, -1e-12, -1e-300, 0.0}) {
      const math::FocalTerm<double> term = math::SoftmaxFocalTerm(o, u, g);
      const Real p = std::exp(static_cast<Real>(u)), one_m_p = -std::expm1(static_cast<Real>(u));
      const Real f = -RPow(one_m_p, gamma) * u;
      // g = (1-p)^γ - γ p (1-p)^(γ-1) log p, the contract's form, with its limit at p = 1.
      const Real g_want = one_m_p == 0 ? (gamma == 0 ? 1 : 0)
                                       : RPow(one_m_p, gamma) - gamma * p * RPow(one_m_p, gamma - 1) * u;
      const double mod_steps = 2 + gamma * std::fabs(std::log(one_m_p == 0 ? 1 : static_cast<double>(one_m_p)));
      const std::string at = "γ " + std::to_string(gamma) + " u " + std::to_string(u);
      ExpectWithin(term.f, f, Rel(mod_steps + 3, f), "f " + at);
      // r = u / (1-p) (2 steps), 1 - γ p r without cancellation (r ≤ -1): 4 more.
      ExpectWithin(term.g, g_want, Rel(mod_steps + 8, g_want), "g " + at);
    }
  }
}

/// The row's gradient as the kernels write it: coef_e·e_j, the target's grad_y.
std::vector<double> SoftmaxRowGradient(const math::SoftmaxRowGrad<double>& rg, const std::vector<double>& x, size_t y) {
  const double m = *std::max_element(x.begin(), x.end());
  std::vector<double> g;
  for (size_t c = 0; c < x.size(); ++c) {
    g.push_back(c == y ? rg.grad_y : math::SoftmaxFocalGradAt(o, rg.coef_e, math::ExpAboutMax(o, x[c], m)));
  }
  return g;
}

/// max, rest of a row as the kernels reduce it.
std::pair<double, double> RowStats(const std::vector<double>& x) {
  const double m = *std::max_element(x.begin(), x.end());
  double below = 0, ties = 0;
  for (double v : x) {
    below += math::RestTermOf(o, v, m, math::ExpAboutMax(o, v, m));
    ties += math::TieTerm(o, v, m);
  }
  return {m, math::Rest(o, below, ties)};
}

TEST(SoftmaxFocalMath, RowLossAndGradientWithoutSmoothing) {
  for (int64_t C : {1, 2, 3, 10, 100})
    for (int kind = 0; kind < 4; ++kind)
      for (double gamma : kGammas)
        for (double alpha_y : {1.0, 0.25})
          for (double w : {1.0, -0.75}) {
            const size_t y = static_cast<size_t>(C - 1) / 2;
            const std::vector<double> x = MakeRow(C, y, kind, 4);
            const auto [m, rest] = RowStats(x);
            const math::SoftmaxRowGrad<double> rg =
                math::SoftmaxFocalRow(o, x[y], m, rest, alpha_y, w, math::MakeGamma(o, gamma));
            std::vector<Real> alpha(C, 0);
            alpha[y] = alpha_y;
            auto loss = [&](const std::vector<Real>& v) { return RSoftmaxFocal(v, y, gamma, alpha, 0); };
            const std::vector<Real> xr = Widen(x);
            const Real want = loss(xr);
            const std::string at = "C " + std::to_string(C) + " kind " + std::to_string(kind) + " γ " +
                                   std::to_string(gamma) + " α " + std::to_string(alpha_y);
            const Real u_y = RLogSoftmax(xr, y);
            const double one_m_py = -std::expm1(static_cast<double>(u_y));
            const double mod_steps = 2 + gamma * std::fabs(std::log(std::max(1e-300, one_m_py)));
            ExpectWithin(rg.loss, want, Rel(C + 8 + mod_steps, want), "loss " + at);
            const std::vector<double> got = SoftmaxRowGradient(rg, x, y);
            std::vector<Real> fd = FiniteDifferences(loss, xr, UnitSteps(xr));
            Real scale = 0, spread = 0;
            for (size_t c = 0; c < fd.size(); ++c) {
              fd[c] *= w;
              scale = std::max(scale, std::fabs(fd[c]));
              spread = std::max<Real>(spread, std::fabs(xr[c] - m));
            }
            // g (mod + 8), /(1 + rest) (C + 2), e_j (1 + |x_j - m|), w·α products: relative to
            // the row's largest element; plus the finite differences' own error.
            const double tol = kSafety * kU * (mod_steps + C + 16 + AbsD(spread)) * AbsD(scale) +
                               kFdSlack * std::max<double>(1, AbsD(want));
            ExpectRow(got, fd, tol, at);
          }
}

TEST(SoftmaxFocalMath, LabelSmoothingWeights) {
  const math::LabelSmoothing<double> s = math::MakeLabelSmoothing(o, 0.1, 7);
  EXPECT_EQ(s.keep, 1 - 0.1);
  EXPECT_EQ(s.uniform, 0.1 / 7);
  EXPECT_EQ(math::SmoothedWeight(o, s, true, 2.0), (0.1 / 7 + 0.9) * 2.0);
  EXPECT_EQ(math::SmoothedWeight(o, s, false, 2.0), (0.1 / 7) * 2.0);
  // In float the constants round from ε in float, as the float kernels take them.
  const ScalarOps<float> of;
  const math::LabelSmoothing<float> sf = math::MakeLabelSmoothing(of, 0.1, 7);
  EXPECT_EQ(sf.keep, 1.0f - 0.1f);
  EXPECT_EQ(sf.uniform, 0.1f / 7.0f);
}

TEST(SoftmaxFocalMath, RowLossAndGradientWithSmoothing) {
  for (int64_t C : {1, 2, 3, 10, 100})
    for (int kind = 0; kind < 4; ++kind)
      for (double gamma : kGammas)
        for (double eps : {0.1, 0.45})
          for (bool with_alpha : {false, true}) {
            const size_t y = static_cast<size_t>(C) / 3;
            const std::vector<double> x = MakeRow(C, y, kind, 4);
            std::vector<double> alpha(C, 1.0);
            if (with_alpha) for (int64_t c = 0; c < C; ++c) alpha[c] = 0.25 + 0.5 * static_cast<double>(c % 4);
            const double w = -1.5;
            const math::Gamma<double> g = math::MakeGamma(o, gamma);
            const math::LabelSmoothing<double> s = math::MakeLabelSmoothing(o, eps, C);
            // As the kernels assemble it: the row's sums ℓ = Σ weight·f, W = Σ weight·g, then
            // each class's gradient.
            const auto [m, rest] = RowStats(x);
            const double log_norm = math::LogNormalizer(o, rest);
            double loss = 0, W = 0;
            for (int64_t c = 0; c < C; ++c) {
              const math::SmoothedClass<double> cls =
                  math::SoftmaxFocalSmoothedClass(o, math::LogProb(o, x[c], m, log_norm), c == static_cast<int64_t>(y),
                                                  alpha[c], s, g);
              loss += cls.weight * cls.term.f;
              W += cls.weight * cls.term.g;
            }
            std::vector<double> got;
            for (int64_t c = 0; c < C; ++c) {
              const double weight = math::SmoothedWeight(o, s, c == static_cast<int64_t>(y), alpha[c]);
              got.push_back(math::SoftmaxFocalSmoothedGrad(o, math::LogProb(o, x[c], m, log_norm), weight, W, w, g));
            }
            const std::vector<Real> xr = Widen(x), ar = Widen(alpha);
            auto ref = [&](const std::vector<Real>& v) { return RSoftmaxFocal(v, y, gamma, ar, eps); };
            const Real want = ref(xr);
            Real spread = 0;
            for (Real v : xr) spread = std::max<Real>(spread, std::fabs(v - m));
            // Each class: log p (C + 5 + |x - m|), its term (mod + 8, mod ≤ 2 + γ·spread), the
            // weight (3), the sum over C classes (C).
            const double steps = 2 * C + 18 + (1 + gamma) * static_cast<double>(spread);
            const std::string at = "C " + std::to_string(C) + " kind " + std::to_string(kind) + " γ " +
                                   std::to_string(gamma) + " ε " + std::to_string(eps);
            ExpectWithin(loss, want, Rel(steps, want), "loss " + at);
            std::vector<Real> fd = FiniteDifferences(ref, xr, UnitSteps(xr));
            Real scale = 0;
            for (Real& v : fd) scale = std::max(scale, std::fabs(v *= w));
            // p_j W - q_j α_j g_j can cancel: bound it by its parts, each below |w|·max(W, qα g).
            const double tol = kSafety * kU * (steps + 4) * std::fabs(w) * std::max(std::fabs(W), 2.0 * 2.0) +
                               kFdSlack * std::max<double>(1, AbsD(want) * std::fabs(w));
            ExpectRow(got, fd, tol, at);
          }
}

// ---- §2 sigmoid_focal ---------------------------------------------------------------------

/// Bound on the sigmoid forms' relative error: logs (~6), the products (~6), exponents built
/// of |x|, log t and γ log(1-p_t).
double SigmoidSteps(double x, double t, double gamma) {
  const Real one_m_pt = RSigmoid(x) * (1 - t) + RSigmoid(-x) * t;
  const double log_t = t > 0 && t < 1 ? std::fabs(std::log(t)) + std::fabs(std::log1p(-t)) : 0;
  return 16 + std::fabs(x) + log_t + (gamma + 1) * std::fabs(std::log(std::max(1e-300, static_cast<double>(one_m_pt))));
}

void CheckSigmoidElement(const math::LossGrad<double>& got, double x, double t, double ap, double an, double gamma,
                         const std::string& what) {
  auto ref = [&](const std::vector<Real>& v) { return RSigmoidFocal(v[0], t, ap, an, gamma); };
  const Real want = ref({x});
  const double steps = SigmoidSteps(x, t, gamma);
  const std::string at = what + " x " + std::to_string(x) + " t " + std::to_string(t) + " γ " + std::to_string(gamma);
  ExpectWithin(got.loss, want, Rel(steps, want), "loss " + at);
  const Real fd = FiniteDifferences(ref, {x}, {1})[0];
  // The gradient's two terms can cancel (soft t): bound by the loss-sized parts, γ(|x|+1)·ℓ.
  const double parts = AbsD(fd) + (1 + gamma) * (1 + std::fabs(x)) * AbsD(want);
  ExpectWithin(got.grad, fd, kSafety * kU * steps * parts + kFdSlack * AbsD(want), "gradient " + at);
}

TEST(SigmoidFocalMath, HardForm) {
  for (double gamma : kGammas)
    for (double x : kLogits)
      for (double t : {0.0, 1.0}) {
        const double ap = 0.25, an = 0.75;
        const auto got = math::SigmoidFocalHard(o, x, t == 1 ? 1.0 : -1.0, t == 1 ? ap : an, math::MakeGamma(o, gamma));
        CheckSigmoidElement(got, x, t, ap, an, gamma, "hard");
      }
}

TEST(SigmoidFocalMath, SoftForm) {
  for (double gamma : kGammas)
    for (double x : kLogits)
      for (double t : {0.0, 1e-4, 0.3, 0.75, 0.999, 1.0}) {
        const auto got = math::SigmoidFocalSoft(o, x, t, 0.25, 0.75, math::MakeGamma(o, gamma));
        CheckSigmoidElement(got, x, t, 0.25, 0.75, gamma, "soft");
      }
}

TEST(SigmoidFocalMath, ProbabilitiesForm) {
  for (double gamma : kGammas)
    for (double p : {1e-6, 0.01, 0.3, 0.5, 0.9, 0.999999})
      for (double t : {0.0, 0.2, 0.8, 1.0}) {
        const auto got = math::SigmoidFocalProbabilities(o, p, t, 0.25, 0.75, math::MakeGamma(o, gamma));
        auto ref = [&](const std::vector<Real>& v) { return RSigmoidFocalProbabilities(v[0], t, 0.25, 0.75, gamma); };
        const Real want = ref({p});
        const std::string at = "p " + std::to_string(p) + " t " + std::to_string(t) + " γ " + std::to_string(gamma);
        const double logs = std::fabs(std::log(p)) + std::fabs(std::log1p(-p));
        const double steps = 16 + (gamma + 1) * logs;
        ExpectWithin(got.loss, want, Rel(steps, want), "loss " + at);
        // The step stays inside (0, 1) and off the clamps: the derivative is wrt p itself.
        const Real fd = FiniteDifferences(ref, {p}, {std::min(p, 1 - p)})[0];
        // dce = (p - t)/(p(1-p)): p - t rounds by u·max(p, t), a cancellation near p = t.
        const double parts = AbsD(fd) + (1 + gamma) * AbsD(want) / (p * (1 - p));
        const double fd_error = kFdSlack * AbsD(want) / std::min(p, 1 - p);
        ExpectWithin(got.grad, fd, kSafety * kU * steps * parts + fd_error, "gradient " + at);
      }
}

TEST(SigmoidFocalMath, ProbabilitiesOfTheSigmoidEqualTheLogitsForm) {
  // σ(x) rounded to double perturbs log(1-p) by u·p/(1-p): for |x| ≤ 8 that is ≤ 3e3·u of a log
  // ≥ 3e-4, so 1e-11 relative is plenty.
  for (double gamma : kGammas)
    for (double x : {-8.0, -2.0, -0.5, 0.0, 0.5, 2.0, 8.0})
      for (double t : {0.0, 0.3, 1.0}) {
        const auto g = math::MakeGamma(o, gamma);
        const double p = math::Sigmoid(o, x).p;
        const double from_p = math::SigmoidFocalProbabilities(o, p, t, 0.25, 0.75, g).loss;
        const double from_x = math::SigmoidFocalSoft(o, x, t, 0.25, 0.75, g).loss;
        EXPECT_NEAR(from_p, from_x, 1e-11 * std::fabs(from_x)) << "x " << x << " t " << t << " γ " << gamma;
      }
}

TEST(SigmoidFocalMath, FormChoiceAndTargetSmoothing) {
  EXPECT_TRUE(math::IsBinaryTarget(o, 0.0));
  EXPECT_TRUE(math::IsBinaryTarget(o, 1.0));
  EXPECT_FALSE(math::IsBinaryTarget(o, 0.5));
  EXPECT_FALSE(math::IsBinaryTarget(o, 1e-300));
  for (double gamma : kGammas)
    for (double x : kLogits)
      for (double t : {0.0, 1.0, 0.3}) {
        const math::Gamma<double> g = math::MakeGamma(o, gamma);
        const bool binary = math::IsBinaryTarget(o, t);
        // No smoothing, logits: the hard form exactly where t is 0/1 (to the bit), else the soft.
        const auto plain = math::MakeSigmoidFocalConsts(o, gamma, 0, 0, false);
        const auto got = math::SigmoidFocal(o, plain, x, t, binary, 0.25, 0.75);
        const auto expected = binary ? math::SigmoidFocalHard(o, x, t == 1 ? 1.0 : -1.0, t == 1 ? 0.25 : 0.75, g)
                                     : math::SigmoidFocalSoft(o, x, t, 0.25, 0.75, g);
        EXPECT_EQ(got.loss, expected.loss);
        EXPECT_EQ(got.grad, expected.grad);
        // The hard form is the soft one's value at t ∈ {0, 1} (the cheaper form, not another loss).
        if (binary) {
          const auto soft = math::SigmoidFocal(o, plain, x, t, false, 0.25, 0.75);
          CheckSigmoidElement(soft, x, t, 0.25, 0.75, gamma, "soft at a hard target");
        }
        // Smoothing: t' = t(1-ε) + ε/K, always the soft form.
        const double eps = 0.1, K = 3;
        const auto smoothed = math::MakeSigmoidFocalConsts(o, gamma, eps, eps / K, false);
        const double t_s = t * (1 - eps) + eps / K;
        const auto s = math::SigmoidFocal(o, smoothed, x, t, binary, 0.25, 0.75);
        const auto soft = math::SigmoidFocalSoft(o, x, t_s, 0.25, 0.75, g);
        EXPECT_EQ(s.loss, soft.loss);
        EXPECT_EQ(s.grad, soft.grad);
        CheckSigmoidElement(s, x, static_cast<double>(t_s), 0.25, 0.75, gamma, "smoothed");
        // Probabilities: the probabilities form of t', whatever t is.
        const double p = 1 / (1 + std::exp(-x / 4));
        const auto probabilities = math::MakeSigmoidFocalConsts(o, gamma, eps, eps / K, true);
        const auto pr = math::SigmoidFocal(o, probabilities, p, t, binary, 0.25, 0.75);
        const auto pw = math::SigmoidFocalProbabilities(o, p, t_s, 0.25, 0.75, g);
        EXPECT_EQ(pr.loss, pw.loss);
        EXPECT_EQ(pr.grad, pw.grad);
      }
}

// ---- §4 dynamic_focal ---------------------------------------------------------------------

TEST(DynamicFocalMath, WeightsOfARowAndItsLoss) {
  for (double alpha_n : {0.0, 0.5, 1.0, 1.75, 3.0}) {
    const math::ClassWeights<double> a = math::DynamicFocalWeights(o, alpha_n);
    EXPECT_EQ(a.pos, alpha_n);
    EXPECT_EQ(a.neg, 1 - alpha_n);  // negative above the mean: the seed's definition
    for (double gamma : kGammas)
      for (double x : kLogits)
        for (double t : {0.0, 1.0}) {
          const auto consts = math::MakeSigmoidFocalConsts(o, gamma, 0, 0, false);
          const auto got = math::SigmoidFocal(o, consts, x, t, true, a.pos, a.neg);
          auto ref = [&](const std::vector<Real>& v) { return RDynamicFocal(v[0], t, alpha_n, gamma); };
          const Real want = ref({x});
          const double steps = SigmoidSteps(x, t, gamma);
          const std::string at = "α_n " + std::to_string(alpha_n) + " x " + std::to_string(x) + " t " + std::to_string(t);
          ExpectWithin(got.loss, want, Rel(steps, want), "loss " + at);
          const Real fd = FiniteDifferences(ref, {x}, {1})[0];
          ExpectWithin(got.grad, fd, Rel(steps, fd) + kFdSlack * AbsD(want), "gradient " + at);
        }
  }
}

// ---- §3 focal_cosine ----------------------------------------------------------------------

TEST(FocalCosineMath, RowLossAndGradient) {
  for (int64_t C : {2, 5, 33})
    for (int kind = 0; kind < 4; ++kind)
      for (double magnitude : {1.0, 1e-13})  // the second below ‖x‖ = 1e-12: F.normalize's floor
        for (double gamma : kGammas) {
          const size_t y = static_cast<size_t>(C) / 2;
          std::vector<double> x = MakeRow(C, y, kind, 3);
          for (double& v : x) v *= magnitude;
          const double alpha = 0.5, xent = 0.7, w = 1.25;
          // As the kernels reduce the row: ‖x‖², the max, then the softmax sums of z.
          double sum_squares = 0;
          for (double v : x) sum_squares += v * v;
          const double z_scale = math::CosineZScale(o, sum_squares);
          EXPECT_EQ(z_scale, 1 / std::max(std::sqrt(sum_squares), 1e-12));
          const double z_max = math::CosineZ(o, *std::max_element(x.begin(), x.end()), z_scale);
          double below = 0, ties = 0, tz = 0;
          for (double v : x) {
            const double z = math::CosineZ(o, v, z_scale);
            const double e = math::ExpAboutMax(o, z, z_max);
            below += math::RestTermOf(o, z, z_max, e);
            ties += math::TieTerm(o, z, z_max);
            tz += z * e;
          }
          const math::FocalCosineRow<double> row = math::FocalCosine(
              o, sum_squares, x[y], z_max, math::Rest(o, below, ties), tz, alpha, math::MakeGamma(o, gamma), xent, w);
          std::vector<double> got;
          for (size_t c = 0; c < x.size(); ++c) {
            const double e = math::ExpAboutMax(o, math::CosineZ(o, x[c], z_scale), z_max);
            got.push_back(c == y ? row.grad_y : math::FocalCosineGradAt(o, row.coef_x, row.coef_e, x[c], e));
          }
          const std::vector<Real> xr = Widen(x);
          auto ref = [&](const std::vector<Real>& v) { return RFocalCosine(v, y, alpha, gamma, xent); };
          const Real want = ref(xr);
          const std::string at = "C " + std::to_string(C) + " kind " + std::to_string(kind) + " |x| " +
                                 std::to_string(magnitude) + " γ " + std::to_string(gamma);
          // z spans at most [-1, 1]: the softmax of z is as in §1 with |z - z_max| ≤ 2; the
          // cosine ~4 steps; (1 - cos) can cancel, so the bound is on its parts (≤ 2).
          const double steps = 2 * C + 24 + 2 * gamma;
          ExpectWithin(row.loss, want, kSafety * kU * steps * (2 + AbsD(want)), "loss " + at);
          std::vector<Real> fd = FiniteDifferences(ref, xr, std::vector<Real>(x.size(), magnitude));
          Real scale = 0;
          for (Real& v : fd) scale = std::max(scale, std::fabs(v *= w));
          // Projection and cosine terms of size ‖∂‖·(1 + xent α) cancel in part: relative to the
          // row's largest element times the terms' count; FD error scales as max|f| / step.
          const double tol = kSafety * kU * (steps + 8) * (1 + xent * alpha) * static_cast<double>(scale) +
                             kFdSlack * std::fabs(w) * (2 + AbsD(want)) / magnitude;
          ExpectRow(got, fd, tol, at);
        }
}

// ---- §5 the catalogue: the elementwise variants ------------------------------------------------

/// §5.1: t (1-p)^γ+ (-log p) + (1-t) p_m^γ- (-log(1-p_m)), p_m = max(p - m, 0).
Real RAsymmetric(Real x, Real t, Real gamma_pos, Real gamma_neg, Real clip) {
  const Real p = RSigmoid(x), q = RSigmoid(-x);
  const Real shifted = std::max<Real>(p - clip, 0);
  const Real neg_log = clip == 0 ? RSoftplus(x) : -std::log1p(-shifted);
  return t * RPow(q, gamma_pos) * RSoftplus(-x) + (1 - t) * RPow(shifted, gamma_neg) * neg_log;
}

/// σ(x) - y, through 1-σ(x) for y ≥ 1/2 (as the long double reference needs it too near 1).
Real RSigmoidMinus(Real x, Real y) { return y >= 0.5L ? (1 - y) - RSigmoid(-x) : RSigmoid(x) - y; }
Real RSoftCrossEntropy(Real x, Real y) { return y * RSoftplus(-x) + (1 - y) * RSoftplus(x); }

/// §5.2: |σ(x) - y|^β (softplus(x) - x y).
Real RQualityFocal(Real x, Real y, Real beta) { return RPow(std::fabs(RSigmoidMinus(x, y)), beta) * RSoftCrossEntropy(x, y); }

/// §5.3: q > 0: w (softplus(x) - x q); q = 0: α p^γ softplus(x).
Real RVarifocal(Real x, Real q, Real alpha, Real gamma, bool iou_weighted) {
  if (q > 0) return (iou_weighted ? q : 1) * RSoftCrossEntropy(x, q);
  return alpha * RPow(RSigmoid(x), gamma) * RSoftplus(x);
}

/// §5.4: α_t softplus(-(γ (2t-1) x + β)) / γ.
Real RFocalStar(Real x, Real t, Real gamma, Real beta, Real alpha_t) {
  return alpha_t * RSoftplus(-(gamma * (2 * t - 1) * x + beta)) / gamma;
}

/// The grids add logits far beyond float's exp range: every result stays finite.
const double kWideLogits[] = {-1e4, -100, -88, -30, -7.5, -2, -0.5, -1e-3, 0, 1e-3, 0.5, 2, 7.5, 30, 88, 100, 1e4};

/// Checks one element against `ref` (a function of x) and its central difference. `steps` counts
/// the roundings of the loss (see the top of the file); `grad_over_loss` bounds the size of the
/// gradient's terms relative to the loss (each variant's formula says how, below), which with
/// |∂ℓ/∂x| bounds the gradient's rounding error.
void CheckElement(const math::LossGrad<double>& got, const std::function<Real(Real)>& ref, double x, double steps,
                  double grad_over_loss, const std::string& at) {
  const Real want = ref(x);
  EXPECT_TRUE(std::isfinite(got.loss) && std::isfinite(got.grad)) << at << ": " << got.loss << " " << got.grad;
  ExpectWithin(got.loss, want, Rel(steps, want), "loss " + at);
  const Real fd = FiniteDifferences([&](const std::vector<Real>& v) { return ref(v[0]); }, {x}, {1})[0];
  const double parts = AbsD(fd) + grad_over_loss * AbsD(want);
  ExpectWithin(got.grad, fd, kSafety * kU * steps * parts + kFdSlack * AbsD(want), "gradient " + at);
}

/// |log b| for a base b of a power, 0 at b = 0 (the power is then 0 or 1 exactly).
double LogMagnitude(Real b) { return b > 0 ? AbsD(std::log(b)) : 0; }

TEST(CatalogueMath, AsymmetricAgainstTheReference) {
  for (double clip : {0.0, 0.05, 0.3})
    for (double gamma_pos : {0.0, 1.0})
      for (double gamma_neg : {0.0, 0.5, 1.0, 2.0, 4.0})
        for (double x : kWideLogits)
          for (double t : {0.0, 0.3, 1.0}) {
            const auto c = math::MakeAsymmetricConsts(o, gamma_pos, gamma_neg, clip);
            const auto got = math::Asymmetric(o, c, x, t);
            const Real p = RSigmoid(x), shifted = std::max<Real>(p - clip, 0);
            // The probability shift p - m cancels near p = m: its rounding u·m over p_m enters
            // p_m's power γ- and its log.
            const double shift = clip > 0 && shifted > 0 ? (gamma_neg + 1) * clip / AbsD(shifted) : 0;
            const double steps = 24 + std::fabs(x) + (gamma_pos + 1) * LogMagnitude(RSigmoid(-x)) +
                                 (gamma_neg + 1) * LogMagnitude(shifted) + shift + (clip > 0 ? LogMagnitude(clip) : 0);
            // ∂L+/∂x = (1-p)^γ+ (γ+ p log p - (1-p)): terms ≤ (γ+ + 1)·L+ / min(1, |log p|)·...;
            // ∂L-/∂x = p(1-p) p_m^γ- [γ- r + 1/(1-p_m)] ≤ (γ- + 1/m)·p·p_m^γ- with r ≤ 1/(1-p_m).
            const double ratio = (gamma_pos + gamma_neg + 2) * (1 + std::fabs(x)) * (clip > 0 ? 1 / clip : 1);
            CheckElement(got, [&](Real v) { return RAsymmetric(v, t, gamma_pos, gamma_neg, clip); }, x,
                         steps, ratio,
                         "asymmetric x " + std::to_string(x) + " t " + std::to_string(t) + " γ+ " +
                             std::to_string(gamma_pos) + " γ- " + std::to_string(gamma_neg) + " m " + std::to_string(clip));
          }
}

TEST(CatalogueMath, AsymmetricEdges) {
  // A clipped negative below the clip contributes nothing, and its gradient is exactly 0.
  const auto clipped = math::MakeAsymmetricConsts(o, 0, 4, 0.05);
  for (double x : {-1e4, -30.0, -3.0}) {
    const auto got = math::Asymmetric(o, clipped, x, 0.0);
    EXPECT_EQ(got.loss, 0) << x;
    EXPECT_EQ(got.grad, 0) << x;
  }
  // γ- < 1 with p_m → 0: the gradient's limit p(1-p)·p_m^γ-·(γ- + 1) → 0, never a negative power.
  const auto sharp = math::MakeAsymmetricConsts(o, 0, 0.5, 0.05);
  const double just_above = std::log(0.05000001 / 0.94999999);  // p a hair above the clip
  const auto got = math::Asymmetric(o, sharp, just_above, 0.0);
  EXPECT_TRUE(std::isfinite(got.grad));
  EXPECT_GT(got.grad, 0);
  EXPECT_LT(got.grad, 1e-3);
  // clip 0 and γ- = γ+ = γ: the negatives are §2's hard form with α = 1 (the same loss).
  for (double gamma : {0.0, 2.0})
    for (double x : kLogits) {
      const auto asl = math::Asymmetric(o, math::MakeAsymmetricConsts(o, gamma, gamma, 0), x, 0.0);
      const auto focal = math::SigmoidFocalHard(o, x, -1.0, 1.0, math::MakeGamma(o, gamma));
      EXPECT_NEAR(asl.loss, focal.loss, 1e-14 * std::fabs(focal.loss) + 1e-300) << x;
      EXPECT_NEAR(asl.grad, focal.grad, 1e-14 * (std::fabs(focal.grad) + std::fabs(focal.loss)) + 1e-300) << x;
    }
}

TEST(CatalogueMath, QualityFocalAgainstTheReference) {
  for (double beta : {1.0, 1.5, 2.0, 3.0})
    for (double x : kWideLogits)
      for (double y : {0.0, 0.3, 0.75, 1.0}) {
        const auto got = math::QualityFocal(o, math::MakeQualityFocalConsts(o, beta), x, y);
        const Real d = RSigmoidMinus(x, y);
        // d = p - y rounds by u·max(p, y): relative to |d| that is max(p, y)/|d| (the grid keeps
        // σ(x) away from y). The soft target's logs: |log y| + |log(1-y)|.
        const double cancel = (beta + 1) * (1 + 1 / std::max(AbsD(d), 1e-300));
        const double log_y = y > 0 && y < 1 ? std::fabs(std::log(y)) + std::fabs(std::log1p(-y)) : 0;
        const double steps = 24 + std::fabs(x) + log_y + (beta + 1) * LogMagnitude(std::fabs(d)) + cancel;
        // ∂ℓ/∂x / ℓ = d/ce + β p (1-p)/|d|: the terms ≤ (1/ce + β/|d|)·ℓ, ce ≥ the soft target's
        // entropy or ≥ e^-|x| for y ∈ {0, 1}; bounded here by (β + 1)(1 + |x|)/|d| and the
        // (1 + |x|) of ce's own derivative.
        const double ratio = (beta + 2) * (1 + std::fabs(x)) / std::max(AbsD(d), 1e-300);
        CheckElement(got, [&](Real v) { return RQualityFocal(v, y, beta); }, x, steps, ratio,
                     "quality_focal x " + std::to_string(x) + " y " + std::to_string(y) + " β " + std::to_string(beta));
      }
}

TEST(CatalogueMath, QualityFocalAtTheTarget) {
  // σ(x) = y exactly (x = 0, y = 1/2): β = 1 gives |d| = 0 and a zero (sub)gradient; β > 1 a
  // zero loss and gradient.
  for (double beta : {1.0, 1.5, 2.0}) {
    const auto got = math::QualityFocal(o, math::MakeQualityFocalConsts(o, beta), 0.0, 0.5);
    EXPECT_EQ(got.loss, 0);
    EXPECT_EQ(got.grad, 0);
  }
}

TEST(CatalogueMath, VarifocalAgainstTheReference) {
  for (bool iou_weighted : {true, false})
    for (double gamma : {0.0, 0.5, 1.0, 2.0, 2.5})
      for (double x : kWideLogits)
        for (double q : {0.0, 0.2, 0.9, 1.0}) {
          const double alpha = 0.75;
          const auto got = math::Varifocal(o, math::MakeVarifocalConsts(o, alpha, gamma, iou_weighted), x, q);
          const Real d = RSigmoidMinus(x, q);
          const double log_q = q > 0 && q < 1 ? std::fabs(std::log(q)) + std::fabs(std::log1p(-q)) : 0;
          const double steps = 24 + std::fabs(x) + log_q + (gamma + 1) * LogMagnitude(RSigmoid(x)) +
                               (q > 0 ? 1 / std::max(AbsD(d), 1e-300) : 0);
          // q > 0: ∂ℓ/∂x = w(p - q), one term of the size of ℓ/ce ≤ (1 + |x|)·ℓ / ce... bounded by
          // (1 + |x|)/|d|; q = 0: α p^γ [γ(1-p) softplus + p] ≤ (γ + 1)(1 + |x|)·ℓ.
          const double ratio = (gamma + 2) * (1 + std::fabs(x)) * (q > 0 ? 1 / std::max(AbsD(d), 1e-300) : 1);
          CheckElement(got, [&](Real v) { return RVarifocal(v, q, alpha, gamma, iou_weighted); }, x, steps, ratio,
                       "varifocal x " + std::to_string(x) + " q " + std::to_string(q) + " γ " + std::to_string(gamma) +
                           (iou_weighted ? " iou" : ""));
        }
}

TEST(CatalogueMath, FocalStarAgainstTheReference) {
  for (double gamma : {0.5, 1.0, 2.0, 4.0})
    for (double beta : {0.0, 1.0, -2.0})
      for (double alpha : {-1.0, 0.25})
        for (double x : kWideLogits)
          for (double t : {0.0, 1.0}) {
            const math::ClassWeights<double> w = math::SigmoidFocalWeights(o, alpha);
            const double alpha_t = t == 1 ? w.pos : w.neg;
            const auto got = math::FocalStar(o, math::MakeFocalStarConsts(o, gamma, beta), x, 2 * t - 1, alpha_t);
            // z = γ x_t + β rounds by u·(γ|x| + |β|) absolutely; softplus carries that.
            const double steps = 24 + gamma * std::fabs(x) + std::fabs(beta);
            // ∂ℓ/∂x = -α_t (2t-1) σ(-z): one term, ≤ γ (1 + |z|)·ℓ... bounded by γ(1 + γ|x| + |β|).
            const double ratio = (gamma + 1) * (1 + gamma * std::fabs(x) + std::fabs(beta));
            CheckElement(got, [&](Real v) { return RFocalStar(v, t, gamma, beta, alpha_t); }, x, steps, ratio,
                         "focal_star x " + std::to_string(x) + " t " + std::to_string(t) + " γ " +
                             std::to_string(gamma) + " β " + std::to_string(beta) + " α " + std::to_string(alpha));
          }
}

// ---- §5.5 distribution_focal and the §5.0 options -------------------------------------------

/// §5.5: -(w_l log S_l + w_r log S_{l+1}), l = min(floor(y), B-2).
Real RDistributionFocal(const std::vector<Real>& x, Real y) {
  const int64_t B = static_cast<int64_t>(x.size());
  const int64_t l = std::min<int64_t>(static_cast<int64_t>(std::floor(y)), B - 2);
  const std::vector<Real> u = RLogSoftmax(x);
  return -(((l + 1) - y) * u[l] + (y - l) * u[l + 1]);
}

TEST(CatalogueMath, DistributionFocalBins) {
  // The edges: 0, an integer inside, a bin edge, B-1 (the last bin's right edge: left = B-2).
  const int64_t B = 16;
  struct Case { double y; int64_t left; double w_left, w_right; };
  for (const Case& c : {Case{0, 0, 1, 0}, Case{3, 3, 1, 0}, Case{3.25, 3, 0.75, 0.25}, Case{14.5, 14, 0.5, 0.5},
                        Case{15, 14, 0, 1}, Case{14.999999, 14, 1e-6, 0.999999}}) {
    const auto bins = math::DistributionFocalBins(c.y, B);
    EXPECT_EQ(bins.left, c.left) << c.y;
    EXPECT_NEAR(bins.w_left, c.w_left, 1e-15) << c.y;
    EXPECT_NEAR(bins.w_right, c.w_right, 1e-15) << c.y;
    EXPECT_EQ(bins.w_left + bins.w_right, 1.0) << c.y;
  }
}

TEST(CatalogueMath, DistributionFocalRow) {
  for (int64_t B : {2, 3, 16, 17})
    for (int kind = 0; kind < 4; ++kind)
      for (double y : {0.0, 0.3, 1.0, 1.5, static_cast<double>(B - 1) - 0.25, static_cast<double>(B - 1)})
        for (double w : {1.0, -0.5}) {
          if (y > B - 1) continue;
          const size_t target = static_cast<size_t>(std::min<double>(y, B - 1));
          const std::vector<double> x = MakeRow(B, target, kind, 3);
          const auto [m, rest] = RowStats(x);
          const auto bins = math::DistributionFocalBins(y, B);
          const size_t l = static_cast<size_t>(bins.left);
          const auto rg = math::DistributionFocalRow(o, x[l], x[l + 1], m, rest, bins.w_left, bins.w_right, w);
          auto loss = [&](const std::vector<Real>& v) { return RDistributionFocal(v, y); };
          const std::vector<Real> xr = Widen(x);
          const Real want = loss(xr);
          const std::string at = "B " + std::to_string(B) + " kind " + std::to_string(kind) + " y " + std::to_string(y);
          Real spread = 0;
          for (Real v : xr) spread = std::max<Real>(spread, std::fabs(v - m));
          // Two log-softmax values (B + 3 steps each, relative, without cancellation: both ≤ 0),
          // weighted and added: no cancellation either.
          ExpectWithin(rg.loss, want, Rel(2 * B + 12, want), "loss " + at);
          std::vector<double> got;
          for (size_t j = 0; j < x.size(); ++j) {
            got.push_back(j == l ? rg.grad_left : j == l + 1 ? rg.grad_right
                                                             : math::SoftmaxFocalGradAt(o, rg.coef_e, math::ExpAboutMax(o, x[j], m)));
          }
          std::vector<Real> fd = FiniteDifferences(loss, xr, UnitSteps(xr));
          for (Real& g : fd) g *= w;
          // S_j (B + 4 + |x_j - m| steps) less a weight ≤ 1: absolute error relative to |w|.
          const double tol = kSafety * kU * (B + 8 + AbsD(spread)) * std::fabs(w) + kFdSlack * std::max<double>(1, AbsD(want));
          ExpectRow(got, fd, tol, at);
        }
}

/// Poly-1's softmax term: ε (1-p_y)^(γ+1) of the row's log-softmax.
Real RSoftmaxPoly(const std::vector<Real>& x, size_t y, Real gamma, Real eps) {
  return eps * RPow(-std::expm1(RLogSoftmax(x, y)), gamma + 1);
}

/// Poly-1's sigmoid term: ε (1-p_t)^(γ+1), 1-p_t = p(1-t) + (1-p)t.
Real RSigmoidPoly(Real x, Real t, Real gamma, Real eps) {
  return eps * RPow(RSigmoid(x) * (1 - t) + RSigmoid(-x) * t, gamma + 1);
}

TEST(CatalogueMath, SoftmaxPolyTerm) {
  for (int64_t C : {2, 10})
    for (int kind = 0; kind < 4; ++kind)
      for (double gamma : kGammas)
        for (double eps : {1.0, -1.0, 2.5}) {
          const size_t y = 1;
          const std::vector<double> x = MakeRow(C, y, kind, 4);
          const auto [m, rest] = RowStats(x);
          const double u = math::LogProb(o, x[y], m, math::LogNormalizer(o, rest));
          const auto term = math::SoftmaxPolyTerm(o, u, math::MakeGamma(o, gamma), eps);
          const std::vector<Real> xr = Widen(x);
          auto ref = [&](const std::vector<Real>& v) { return RSoftmaxPoly(v, y, gamma, eps); };
          const Real want = ref(xr);
          const std::string at = "C " + std::to_string(C) + " kind " + std::to_string(kind) + " γ " +
                                 std::to_string(gamma) + " ε " + std::to_string(eps);
          const double one_m_p = -std::expm1(u);
          const double steps = C + 12 + (gamma + 2) * std::fabs(std::log(std::max(1e-300, one_m_p)));
          ExpectWithin(term.f, want, Rel(steps, want), "loss " + at);
          // ∂f/∂x_j = g (p_j - [j = y]), against the differences of the reference.
          std::vector<Real> fd = FiniteDifferences(ref, xr, UnitSteps(xr));
          const std::vector<Real> log_p = RLogSoftmax(xr);
          Real scale = 0;
          for (Real v : fd) scale = std::max(scale, std::fabs(v));
          for (size_t j = 0; j < x.size(); ++j) {
            const double p_j = std::exp(static_cast<double>(log_p[j]));
            const double got = term.g * (j == y ? -one_m_p : p_j);
            ExpectWithin(got, fd[j], kSafety * kU * (steps + 8) * AbsD(scale) + kFdSlack * std::max<double>(1e-300, AbsD(want)),
                         "∂/∂x_" + std::to_string(j) + " " + at);
          }
        }
}

TEST(CatalogueMath, SigmoidPolyTerm) {
  for (double gamma : kGammas)
    for (double x : kWideLogits)
      for (double t : {0.0, 0.3, 1.0})
        for (double eps : {1.0, -1.0}) {
          const auto got = math::SigmoidPolyTerm(o, math::Sigmoid(o, x), t, math::MakeGamma(o, gamma), eps);
          const Real one_m_pt = RSigmoid(x) * (1 - t) + RSigmoid(-x) * t;
          const double log_t = t > 0 && t < 1 ? std::fabs(std::log(t)) + std::fabs(std::log1p(-t)) : 0;
          const double steps = 24 + std::fabs(x) + log_t + (gamma + 2) * LogMagnitude(one_m_pt);
          // ∂/∂x = ε (γ+1)(1-p_t)^γ (1-2t) p(1-p): one product, ≤ (γ+1)·f·p(1-p)/(1-p_t) ≤ (γ+1)·f.
          CheckElement(got, [&](Real v) { return RSigmoidPoly(v, t, gamma, eps); }, x, steps, gamma + 2,
                       "sigmoid poly x " + std::to_string(x) + " t " + std::to_string(t) + " γ " + std::to_string(gamma));
        }
}

TEST(CatalogueMath, ClassBalancedWeight) {
  // (1-β)/(1-β^n) in long double directly, for β from 0 to 0.99999 and n from 1 to 1e7: within a
  // few roundings (log1p, a product, expm1, a division), relatively.
  for (double beta : {0.0, 0.5, 0.9, 0.999, 0.9999, 0.99999})
    for (double n : {1.0, 2.0, 10.0, 1e3, 1e5, 1e7}) {
      const Real want = (1 - static_cast<Real>(beta)) / (1 - std::pow(static_cast<Real>(beta), static_cast<Real>(n)));
      const double got = math::ClassBalancedWeight(o, n, 1 - beta);
      // n·log β carries n·u·|log β| absolutely into the exp: (1 + n|log β|) relative steps.
      const double steps = 8 + n * std::fabs(std::log1p(-(1 - beta)));
      ExpectWithin(got, want, Rel(steps, want), "β " + std::to_string(beta) + " n " + std::to_string(n));
    }
  // One example: weight 1 whatever β; many: → 1-β.
  EXPECT_DOUBLE_EQ(math::ClassBalancedWeight(o, 1.0, 1 - 0.9999), 1.0);
  EXPECT_NEAR(math::ClassBalancedWeight(o, 1e9, 1 - 0.9999), 1e-4, 1e-16);
}

}  // namespace
}  // namespace focal
