// The SIMD sigmoid primitive (math::Sigmoid under the Highway policy, reached through the
// analyses' SigmoidItemParts entry point) on every SIMD target this processor runs, against
// long-double references, in float ulps of the true value.
//
// Bounds, from the arithmetic of kernels/cpu/simd-inl.h (float; u is one ulp):
//   - e = e^-|x|: HwyOps::ExpNonPositive, within 1.005 ulp (scripts/fit_sigmoid_polynomials.py);
//   - 1/(1 + e): the rounding of 1 + e (½), the division's (½), and e's own error, damped by
//     e/(1 + e) ≤ ½: 1.5 ulp;
//   - log1p(e): the polynomial's 1.47 ulp (scripts/fit_sigmoid_polynomials.py) plus e's 1 ulp, damped by
//     e/((1 + e) log1p(e)) ≤ 1: 2.5 ulp;
//   - p or q = e/(1 + e): e (1) + the reciprocal (1.5) + the product (½): 3 ulp; the other
//     one is the reciprocal itself;
//   - log σ(±x) = -(|x| + log1p(e)) or -log1p(e): log1p's 2.5 plus the sum's ½: 3 ulp.
// So each part is allowed 3.5 ulp (first-order sums above, rounded up). float64 inputs compute
// in double with division, Highway's double log and Kahan's correction: the same chain, allowed
// 3.5 ulp of double. Results below float's (or double's) normal range keep only an absolute
// accuracy of the smallest subnormal: the bound there is 2 subnormal steps.
#include <gtest/gtest.h>

#include "absl/strings/ascii.h"
#include "absl/strings/str_split.h"

#include <cfloat>
#include <cmath>
#include <cstdio>
#include <random>
#include <string>
#include <vector>

#include "kernels/cpu/analysis_kernels.h"
#include "focal/math_ops.h"
#include "kernels/cpu/cpu_kernels.h"

namespace focal {
namespace {

constexpr double kAllowedUlps = 3.5;

template <typename T>
double UlpsOff(T got, long double want) {
  const long double spacing = std::max<long double>(
      std::nextafter(static_cast<T>(std::fabs(want)), std::numeric_limits<T>::infinity()) -
          static_cast<T>(std::fabs(want)),
      std::numeric_limits<T>::denorm_min());
  if (std::fabs(want) < std::numeric_limits<T>::min()) {
    // Below the normal range: absolute, in subnormal steps, allowed 2.
    return static_cast<double>(std::fabs(got - want) / std::numeric_limits<T>::denorm_min()) * kAllowedUlps / 2;
  }
  return static_cast<double>(std::fabs(static_cast<long double>(got) - want) / spacing);
}

/// Logits over [-limit, limit]: a dense grid near 0, where the sigmoid's parts all matter, and a
/// coarser one out to where e^-|x| underflows.
template <typename T>
std::vector<T> Logits(T limit) {
  std::vector<T> x;
  for (T v = -limit; v <= limit; v += (std::fabs(v) < 20 ? T(0.001953125) : T(0.0625))) x.push_back(v);
  for (T v : {T(0), T(-0.0), std::numeric_limits<T>::min(), T(1e-30), T(1e-7), T(-1e-7), T(88.5), T(-88.5)}) {
    x.push_back(v);
  }
  return x;
}

struct Worst {
  double ulps = 0;
  double at = 0;
  void Take(double u, double x) {
    if (u > ulps) ulps = u, at = x;
  }
};

template <typename T>
void CheckOnTarget(const std::string& target, T limit) {
  const std::vector<T> x = Logits(limit);
  const size_t n = x.size();
  const std::vector<T> sign(n, T(1));
  std::vector<T> log_p(n), log_q(n), p(n), q(n);
  cpu::analysis::SigmoidItemParts(x.data(), sign.data(), static_cast<int64_t>(n),
                                  cpu::analysis::ItemParts<T>{log_p.data(), log_q.data(), p.data(), q.data()});
  Worst w_log_p, w_log_q, w_p, w_q;
  for (size_t i = 0; i < n; ++i) {
    const long double xi = x[i];
    // softplus(-x) = log(1 + e^-x), written for each sign without overflow.
    const long double sp_neg = xi >= 0 ? std::log1p(std::exp(-xi)) : -xi + std::log1p(std::exp(xi));
    const long double sp_pos = xi >= 0 ? xi + std::log1p(std::exp(-xi)) : std::log1p(std::exp(xi));
    const long double sig = 1 / (1 + std::exp(-xi)), sig_neg = 1 / (1 + std::exp(xi));
    w_log_p.Take(UlpsOff(log_p[i], -sp_neg), x[i]);
    w_log_q.Take(UlpsOff(log_q[i], -sp_pos), x[i]);
    w_p.Take(UlpsOff(p[i], sig), x[i]);
    w_q.Take(UlpsOff(q[i], sig_neg), x[i]);
  }
  std::printf("[ %s %s ] worst ulps over %zu logits: log p %.2f (x=%g), log q %.2f (x=%g), p %.2f (x=%g), q %.2f (x=%g)\n",
              target.c_str(), sizeof(T) == 4 ? "float" : "double", n, w_log_p.ulps, w_log_p.at, w_log_q.ulps,
              w_log_q.at, w_p.ulps, w_p.at, w_q.ulps, w_q.at);
  EXPECT_LE(w_log_p.ulps, kAllowedUlps) << target << " log p at x=" << w_log_p.at;
  EXPECT_LE(w_log_q.ulps, kAllowedUlps) << target << " log q at x=" << w_log_q.at;
  EXPECT_LE(w_p.ulps, kAllowedUlps) << target << " p at x=" << w_p.at;
  EXPECT_LE(w_q.ulps, kAllowedUlps) << target << " q at x=" << w_q.at;
}

class SimdSigmoid : public ::testing::TestWithParam<const char*> {
 protected:
  void SetUp() override {
    ASSERT_TRUE(cpu::LimitSimdTarget(GetParam()));
    target_ = cpu::SimdTargetName();
  }
  void TearDown() override { cpu::LimitSimdTarget("best"); }
  std::string target_;
};

TEST_P(SimdSigmoid, FloatPartsWithinTheirBound) { CheckOnTarget<float>(target_, 104.0f); }
TEST_P(SimdSigmoid, DoublePartsWithinTheirBound) { CheckOnTarget<double>(target_, 745.0); }

// The logs (HwyOps::Log and LogComplement). Bound in float, from the arithmetic of LogOfParts:
// the polynomial's own error (4e-9 relative, 0.07 ulp), the rounding of f + f²Q (½ ulp of a
// part at most as large as the result: where k = -1 and f → √2 - 1 the two halves of the sum
// are equal), that of f²Q (≤ 0.17|f|: 0.1 ulp) and the sum's final rounding (½): 1.2 ulp, 1.5
// allowed (the fit script measures 0.99 over 4M floats). In double, Highway's log (2 ulp by
// its documentation) and log1p: 2 allowed.
template <typename T>
void CheckLogsOnTarget(const std::string& target) {
  const double allowed = sizeof(T) == 4 ? 1.5 : 2.0;
  std::mt19937 rng(20261202);
  std::vector<T> a, y, w;
  // log a: every binade of the normal range (random mantissas), subnormals, and 1 ± an ulp.
  for (int e = std::numeric_limits<T>::min_exponent - 1; e < std::numeric_limits<T>::max_exponent; ++e) {
    std::uniform_real_distribution<double> mantissa(1, 2);
    for (int i = 0; i < 64; ++i) a.push_back(static_cast<T>(std::ldexp(mantissa(rng), e)));
  }
  for (T v : {std::numeric_limits<T>::denorm_min(), std::numeric_limits<T>::min() / 3, T(1),
              std::nextafter(T(1), T(0)), std::nextafter(T(1), T(2)), T(0.70710677), T(1.4142135)}) {
    a.push_back(v);
  }
  // log(1 - y): y over [0, 1] densely, tiny ones, and both sides of the split.
  std::uniform_real_distribution<double> unit(0, 1);
  for (int i = 0; i < 100000; ++i) y.push_back(static_cast<T>(unit(rng)));
  const T split = static_cast<T>(kLogComplementSplit);
  for (T v : {T(0), T(1e-30), std::numeric_limits<T>::denorm_min(), split, std::nextafter(split, T(0)),
              std::nextafter(split, T(1)), T(0.5), std::nextafter(T(1), T(0))}) {
    y.push_back(v);
  }
  for (T v : y) w.push_back(static_cast<T>(1 - static_cast<long double>(v)));  // the caller's complement
  const size_t n = std::max(a.size(), y.size());
  a.resize(n, T(1));
  y.resize(n, T(0));
  w.resize(n, T(1));
  std::vector<T> log_a(n), log_complement(n);
  cpu::analysis::Logs(a.data(), y.data(), w.data(), static_cast<int64_t>(n), log_a.data(), log_complement.data());
  Worst w_log, w_complement;
  for (size_t i = 0; i < n; ++i) {
    w_log.Take(UlpsOff(log_a[i], std::log(static_cast<long double>(a[i]))), a[i]);
    // Below the split the exact y's log1p, above the log of the complement given.
    const long double want =
        y[i] <= split ? std::log1p(-static_cast<long double>(y[i])) : std::log(static_cast<long double>(w[i]));
    w_complement.Take(UlpsOff(log_complement[i], want), y[i]);
  }
  std::printf("[ %s %s ] worst ulps: log %.2f (a=%g), log(1 - y) %.2f (y=%g) over %zu values\n", target.c_str(),
              sizeof(T) == 4 ? "float" : "double", w_log.ulps, w_log.at, w_complement.ulps, w_complement.at, n);
  EXPECT_LE(w_log.ulps, allowed) << target << " log at a=" << w_log.at;
  EXPECT_LE(w_complement.ulps, allowed) << target << " log(1 - y) at y=" << w_complement.at;

  // The limits, as std::log gives them: the formulas rely on log 0 = -inf.
  const T inf = std::numeric_limits<T>::infinity(), nan = std::numeric_limits<T>::quiet_NaN();
  const std::vector<T> special{T(0), T(-0.0), inf, nan, T(-1), -inf, T(1)};
  std::vector<T> ys{T(1), T(0), T(0.75), nan, T(0.5), T(0.9), T(0)};
  std::vector<T> ws{T(0), T(1), T(0), nan, T(0.5), T(0.1), T(1)};
  std::vector<T> got(special.size()), got_complement(special.size());
  cpu::analysis::Logs(special.data(), ys.data(), ws.data(), static_cast<int64_t>(special.size()), got.data(),
                      got_complement.data());
  EXPECT_EQ(got[0], -inf) << target;
  EXPECT_EQ(got[1], -inf) << target;
  EXPECT_EQ(got[2], inf) << target;
  EXPECT_TRUE(std::isnan(got[3])) << target;
  EXPECT_TRUE(std::isnan(got[4])) << target;
  EXPECT_TRUE(std::isnan(got[5])) << target;
  EXPECT_EQ(got[6], T(0)) << target;
  EXPECT_EQ(got_complement[0], -inf) << target << " log(1 - 1)";
  EXPECT_EQ(got_complement[1], T(0)) << target << " log(1 - 0)";
  EXPECT_EQ(got_complement[2], -inf) << target << " a complement of 0 above the split";
  EXPECT_TRUE(std::isnan(got_complement[3])) << target;
  EXPECT_LE(UlpsOff(got_complement[4], std::log(0.5L)), allowed) << target << " log of the complement 0.5";
}

TEST_P(SimdSigmoid, FloatLogsWithinTheirBound) { CheckLogsOnTarget<float>(target_); }
TEST_P(SimdSigmoid, DoubleLogsWithinTheirBound) { CheckLogsOnTarget<double>(target_); }

// A cap above what this processor has runs its best target again: the printed name says which.
INSTANTIATE_TEST_SUITE_P(EveryTarget, SimdSigmoid, ::testing::Values("avx3", "avx2", "sse4", "scalar"));

TEST(SimdTargets, UnknownNameChangesNothing) {
  const std::string before = cpu::SimdTargetName();
  EXPECT_FALSE(cpu::LimitSimdTarget("avx9000"));
  EXPECT_EQ(cpu::SimdTargetName(), before);
}

TEST(SimdTargets, NamesMatchInAnyCaseAsTheStartLinePrintsThem) {
  ASSERT_TRUE(cpu::LimitSimdTarget("SSE4"));
  const std::string capped = cpu::SimdTargetName();
  EXPECT_TRUE(cpu::LimitSimdTarget("Best"));
  EXPECT_TRUE(capped == "SSE4" || capped == "EMU128" || capped == "SCALAR") << capped;  // no better than the cap
  for (const absl::string_view name : absl::StrSplit(cpu::kSimdTargetNames, ", ")) {
    const std::string upper = absl::AsciiStrToUpper(name);  // "AVX2", as printed
    EXPECT_TRUE(cpu::LimitSimdTarget(std::string_view(upper))) << upper;
  }
  EXPECT_TRUE(cpu::LimitSimdTarget("best"));
}

}  // namespace
}  // namespace focal
