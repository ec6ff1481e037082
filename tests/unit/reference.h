// Plain float64/long-double references for the tests, written from docs/variants.md directly and
// independent of the production math (no focal/math-inl.h, no shared helpers): if a formula
// there is wrong, these disagree. Gradients come from central finite differences of these.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <functional>
#include <optional>
#include <utility>
#include <vector>

namespace focal::testing {

using Real = long double;

inline Real Softplus(Real z) { return std::max<Real>(z, 0) + std::log1p(std::exp(-std::fabs(z))); }

/// Per-item losses of a variant plus how many items the reduction counts.
struct RefLosses {
  std::vector<Real> items;
  int64_t count = 0;
};

struct RefSoftmaxParams {
  double gamma = 2;
  std::vector<double> alpha;  // empty: ones
  std::optional<int64_t> ignore_index;
  double smoothing = 0;
  double poly_epsilon = 0;                             // §5.0 Poly-1
  std::vector<std::pair<double, double>> schedule;     // §5.0 FLSD (threshold, gamma)
};

/// §1 over logits [N, C, S] (flattened), targets [N, S].
inline RefLosses RefSoftmaxFocal(const std::vector<Real>& x, int64_t n, int64_t c, int64_t s,
                                 const std::vector<int64_t>& y, const RefSoftmaxParams& p) {
  RefLosses out;
  out.items.assign(n * s, 0);
  for (int64_t i = 0; i < n; ++i) {
    for (int64_t j = 0; j < s; ++j) {
      const int64_t target = y[i * s + j];
      if (p.ignore_index && target == *p.ignore_index) continue;
      ++out.count;
      auto at = [&](int64_t k) { return x[(i * c + k) * s + j]; };
      Real m = at(0);
      for (int64_t k = 1; k < c; ++k) m = std::max(m, at(k));
      Real z = 0;
      for (int64_t k = 0; k < c; ++k) z += std::exp(at(k) - m);
      // FLSD: the γ of the first step whose threshold is above p_y, else the fixed one.
      const Real p_y = std::exp(at(target) - m) / z;
      Real gamma = p.gamma;
      for (const auto& [threshold, step_gamma] : p.schedule) {
        if (p_y < threshold) {
          gamma = step_gamma;
          break;
        }
      }
      Real loss = 0;
      for (int64_t k = 0; k < c; ++k) {
        const Real q = (1 - p.smoothing) * (k == target ? 1 : 0) + p.smoothing / c;
        if (q == 0) continue;
        const Real logp = at(k) - m - std::log(z);
        const Real prob = std::exp(logp);
        const Real a = p.alpha.empty() ? 1 : p.alpha[k];
        loss += -q * a * std::pow(1 - prob, gamma) * logp;
      }
      loss += p.poly_epsilon * std::pow(1 - p_y, gamma + 1);  // Poly-1, not α-weighted
      out.items[i * s + j] = loss;
    }
  }
  return out;
}

struct RefSigmoidParams {
  double gamma = 2;
  double alpha = 0.25;
  double smoothing = 0;
  int64_t smoothing_classes = 2;
  bool probabilities = false;
  double poly_epsilon = 0;  // §5.0 Poly-1
};

/// §2 for one element with (unsmoothed) target t.
inline Real RefSigmoidElement(Real x, Real t, const RefSigmoidParams& p) {
  t = (1 - p.smoothing) * t + p.smoothing / p.smoothing_classes;
  Real prob, ce;
  if (p.probabilities) {
    prob = x;
    ce = -(t * std::max<Real>(std::log(prob), -100) + (1 - t) * std::max<Real>(std::log1p(-prob), -100));
  } else {
    prob = 1 / (1 + std::exp(-x));
    ce = t * Softplus(-x) + (1 - t) * Softplus(x);
  }
  const Real pt = prob * t + (1 - prob) * (1 - t);
  const Real at = p.alpha >= 0 ? p.alpha * t + (1 - p.alpha) * (1 - t) : 1;
  return at * std::pow(1 - pt, static_cast<Real>(p.gamma)) * ce +
         p.poly_epsilon * std::pow(1 - pt, static_cast<Real>(p.gamma) + 1);
}

/// §2 with float targets (same shape as x).
inline RefLosses RefSigmoidFocal(const std::vector<Real>& x, const std::vector<Real>& t,
                                 const RefSigmoidParams& p) {
  RefLosses out;
  for (size_t i = 0; i < x.size(); ++i) out.items.push_back(RefSigmoidElement(x[i], t[i], p));
  out.count = static_cast<int64_t>(x.size());
  return out;
}

/// §2 with class-index targets: implicit one-hot over [N, C, S]; y = C is background.
inline RefLosses RefSigmoidFocalIndex(const std::vector<Real>& x, int64_t n, int64_t c, int64_t s,
                                      const std::vector<int64_t>& y,
                                      std::optional<int64_t> ignore_index,
                                      const RefSigmoidParams& p) {
  RefLosses out;
  out.items.assign(x.size(), 0);
  for (int64_t i = 0; i < n; ++i) {
    for (int64_t j = 0; j < s; ++j) {
      const int64_t target = y[i * s + j];
      if (ignore_index && target == *ignore_index) continue;
      out.count += c;
      for (int64_t k = 0; k < c; ++k) {
        const int64_t idx = (i * c + k) * s + j;
        out.items[idx] = RefSigmoidElement(x[idx], k == target ? 1 : 0, p);
      }
    }
  }
  return out;
}

/// §3 over logits [N, C].
inline RefLosses RefFocalCosine(const std::vector<Real>& x, int64_t n, int64_t c,
                                const std::vector<int64_t>& y, double alpha, double gamma,
                                double xent) {
  RefLosses out;
  for (int64_t i = 0; i < n; ++i) {
    Real sq = 0;
    for (int64_t k = 0; k < c; ++k) sq += x[i * c + k] * x[i * c + k];
    const Real cosine = x[i * c + y[i]] / std::sqrt(sq + 1e-12L);
    const Real scale = 1 / std::max<Real>(std::sqrt(sq), 1e-12L);
    Real m = -INFINITY;
    for (int64_t k = 0; k < c; ++k) m = std::max(m, x[i * c + k] * scale);
    Real z = 0;
    for (int64_t k = 0; k < c; ++k) z += std::exp(x[i * c + k] * scale - m);
    const Real ce = -(x[i * c + y[i]] * scale - m - std::log(z));
    const Real pt = std::exp(-ce);
    out.items.push_back((1 - cosine) + xent * alpha * std::pow(1 - pt, static_cast<Real>(gamma)) * ce);
  }
  out.count = n;
  return out;
}

/// §4 over logits [N, R] (R = the rest, flattened) with optional num_objects [N].
inline RefLosses RefDynamicFocal(const std::vector<Real>& x, const std::vector<Real>& t, int64_t n,
                                 const std::vector<Real>& num_objects, double gamma) {
  RefLosses out;
  const int64_t r = n == 0 ? 0 : static_cast<int64_t>(x.size()) / n;
  Real mean = 0;
  for (Real v : num_objects) mean += v;
  if (!num_objects.empty()) mean /= static_cast<Real>(num_objects.size());
  for (int64_t i = 0; i < n; ++i) {
    const Real a = num_objects.empty() ? 1 : num_objects[i] / mean;
    for (int64_t j = 0; j < r; ++j) {
      const Real xv = x[i * r + j], tv = t[i * r + j];
      const Real at = num_objects.empty() ? 1 : tv * a + (1 - tv) * (1 - a);
      const Real logpt = -Softplus(-xv * (2 * tv - 1));
      out.items.push_back(-at * std::pow(1 - std::exp(logpt), static_cast<Real>(gamma)) * logpt);
    }
  }
  out.count = static_cast<int64_t>(x.size());
  return out;
}

// ---------------------------------------------------------------------------------------------
// §5, the catalogue, element by element (targets already expanded to one per logit).

inline Real RefSigma(Real x) { return 1 / (1 + std::exp(-x)); }

/// §5.1: t (1-p)^γ+ (-log p) + (1-t) p_m^γ- (-log(1-p_m)), p_m = max(p - m, 0).
inline Real RefAsymmetric(Real x, Real t, Real gamma_pos, Real gamma_neg, Real clip) {
  const Real p = RefSigma(x);
  const Real positive = std::pow(1 - p, gamma_pos) * Softplus(-x);
  const Real shifted = std::max<Real>(p - clip, 0);
  // -log(1 - p_m): log1p of p_m itself while it is small, the log of 1 - p_m = (1-p) + m above,
  // where p - m rounds to 1 even in long double once 1-p and m are both tiny.
  const Real neg_log = clip == 0 ? Softplus(x) : shifted < 0.5 ? -std::log1p(-shifted) : -std::log(RefSigma(-x) + clip);
  const Real negative = (gamma_neg == 0 ? 1 : std::pow(shifted, gamma_neg)) * neg_log;
  return t * positive + (1 - t) * negative;
}

/// §5.2: |σ(x) - y|^β (softplus(x) - x y).
inline Real RefQualityFocal(Real x, Real y, Real beta) {
  return std::pow(std::fabs(RefSigma(x) - y), beta) * (Softplus(x) - x * y);
}

/// §5.3: q > 0: w⁺ (softplus(x) - x q); q = 0: α p^γ softplus(x).
inline Real RefVarifocal(Real x, Real q, Real alpha, Real gamma, bool iou_weighted) {
  if (q > 0) return (iou_weighted ? q : 1) * (Softplus(x) - x * q);
  return alpha * (gamma == 0 ? 1 : std::pow(RefSigma(x), gamma)) * Softplus(x);
}

/// §5.4: α_t softplus(-(γ x_t + β)) / γ, x_t = (2t-1) x; α < 0: α_t = 1.
inline Real RefFocalStar(Real x, Real t, Real gamma, Real beta, Real alpha) {
  const Real alpha_t = alpha < 0 ? 1 : (t == 1 ? alpha : 1 - alpha);
  return alpha_t * Softplus(-(gamma * (2 * t - 1) * x + beta)) / gamma;
}

/// An elementwise variant over logits [N, C, S] with class-index targets [N, S] (value C =
/// background, `ignore` ignored): t = [c == y] times the row's score (1 without scores).
inline RefLosses RefElementwiseIndex(const std::function<Real(Real, Real)>& element, const std::vector<Real>& x,
                                     int64_t n, int64_t c, int64_t s, const std::vector<int64_t>& y,
                                     std::optional<int64_t> ignore, const std::vector<Real>& scores) {
  RefLosses out;
  out.items.assign(x.size(), 0);
  for (int64_t i = 0; i < n; ++i) {
    for (int64_t j = 0; j < s; ++j) {
      const int64_t target = y[i * s + j];
      if (ignore && target == *ignore) continue;
      out.count += c;
      for (int64_t k = 0; k < c; ++k) {
        const Real value = scores.empty() ? 1 : scores[i * s + j];
        const int64_t at = (i * c + k) * s + j;
        out.items[at] = element(x[at], k == target ? value : 0);
      }
    }
  }
  return out;
}

/// An elementwise variant with float targets shaped like the logits.
inline RefLosses RefElementwise(const std::function<Real(Real, Real)>& element, const std::vector<Real>& x,
                                const std::vector<Real>& t) {
  RefLosses out;
  out.items.resize(x.size());
  for (size_t i = 0; i < x.size(); ++i) out.items[i] = element(x[i], t[i]);
  out.count = static_cast<int64_t>(x.size());
  return out;
}

/// §5.5 over logits [N, B, S], distances y [N, S] in [0, B-1]: i = min(floor(y), B-2),
/// ℓ = -((i+1-y) log S_i + (y-i) log S_{i+1}).
inline RefLosses RefDistributionFocal(const std::vector<Real>& x, int64_t n, int64_t b, int64_t s,
                                      const std::vector<Real>& y) {
  RefLosses out;
  out.items.assign(n * s, 0);
  out.count = n * s;
  for (int64_t i = 0; i < n; ++i) {
    for (int64_t j = 0; j < s; ++j) {
      Real max = -INFINITY;
      for (int64_t k = 0; k < b; ++k) max = std::max(max, x[(i * b + k) * s + j]);
      Real z = 0;
      for (int64_t k = 0; k < b; ++k) z += std::exp(x[(i * b + k) * s + j] - max);
      auto log_s = [&](int64_t k) { return x[(i * b + k) * s + j] - max - std::log(z); };
      const Real d = y[i * s + j];
      const int64_t left = std::min<int64_t>(static_cast<int64_t>(std::floor(d)), b - 2);
      out.items[i * s + j] = -((left + 1 - d) * log_s(left) + (d - left) * log_s(left + 1));
    }
  }
  return out;
}

/// Σ_i w_i ℓ_i for a per-item weight vector (empty = all ones).
inline Real Weighted(const RefLosses& l, const std::vector<Real>& w) {
  Real s = 0;
  for (size_t i = 0; i < l.items.size(); ++i) s += (w.empty() ? 1 : w[i]) * l.items[i];
  return s;
}

/// Central finite differences of f at x for the elements `indices`, step h*max(1, |x_i|).
/// In long double the rounding error is ~1e-19*|f|/h and the truncation error ~h^2 times the
/// third derivative: both far below float32's resolution.
inline std::vector<Real> FiniteDifferences(const std::function<Real(const std::vector<Real>&)>& f,
                                           std::vector<Real> x, const std::vector<int64_t>& indices,
                                           Real h = 1e-6L) {
  std::vector<Real> g(indices.size());
  for (size_t k = 0; k < indices.size(); ++k) {
    const int64_t i = indices[k];
    const Real xi = x[i];
    const Real step = h * std::max<Real>(1, std::fabs(xi));
    x[i] = xi + step;
    const Real up = f(x);
    x[i] = xi - step;
    const Real down = f(x);
    x[i] = xi;
    g[k] = (up - down) / (2 * step);
  }
  return g;
}

}  // namespace focal::testing
