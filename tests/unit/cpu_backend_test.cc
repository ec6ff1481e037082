// CpuBackend against the plain float64 references of reference.h: forward values for every
// variant and option, and gradients against central finite differences of those references.
//
// Tolerances. The backend computes in float32 (ε = 6e-8) with Highway's transcendentals (≤ 4
// ulp); a loss goes through ~10 such operations, so per-item losses carry ~1e-6 relative error
// and we allow 1e-5. Reduced losses accumulate in float64, so they keep the per-item relative
// error (allowed: 1e-5; measured and printed at the end, target 1e-6). Gradients: 1e-5 relative
// plus an absolute floor of 1e-6 × the largest gradient of the case, because differences such as
// p_j - [j = y] or p - t lose relative accuracy where they nearly cancel, in float32 as in any
// float32 implementation. The finite differences themselves run in long double (error ~1e-12).
#include <gtest/gtest.h>

#include <cmath>
#include <map>
#include <numeric>
#include <string>

#include "focal/validate.h"
#include "kernels/cpu/cpu_backend.h"
#include "tests/unit/reference.h"
#include "tests/unit/test_util.h"

namespace focal {
namespace {

using testing::HostTensor;
using testing::MakeTensor;
using testing::Real;
using testing::RefLosses;

constexpr double kLossRtol = 1e-5;
constexpr double kGradRtol = 1e-5;
constexpr double kGradAtolScale = 1e-6;

/// Worst relative errors seen per variant, printed once at the end for the closing note.
struct ErrorStats {
  double loss = 0, item = 0, grad = 0;
  int cases = 0;
};
std::map<std::string, ErrorStats>& Stats() {
  static std::map<std::string, ErrorStats> stats;
  return stats;
}

class PrintStats : public ::testing::Environment {
 public:
  void TearDown() override {
    for (const auto& [name, s] : Stats()) {
      printf("[errors] %-14s cases=%4d  worst relative error: reduced loss %.2e, per-item loss %.2e, "
             "gradient vs finite differences %.2e (items and gradients >= 1e-3 of their case's largest)\n",
             name.c_str(), s.cases, s.loss, s.item, s.grad);
    }
  }
};
const auto* const kPrintStats = ::testing::AddGlobalTestEnvironment(new PrintStats);

/// A problem: inputs and the reference per-item losses as a function of the logits.
struct Problem {
  std::string variant;
  LossSpec spec;
  HostTensor logits;
  HostTensor targets;
  std::optional<HostTensor> num_objects;
  std::function<RefLosses(const std::vector<Real>&)> reference;
  /// Indices whose gradient is checked by finite differences (empty: all).
  std::vector<int64_t> fd_indices;
  /// Absolute gradient tolerance where the true gradient is 0 but its terms are not (see use).
  double grad_atol = 0;
};

std::vector<Real> AsReal(const std::vector<double>& v) { return {v.begin(), v.end()}; }

/// N, C and S = d1·…·dk of logits [N, C, d1..dk].
std::tuple<int64_t, int64_t, int64_t> ClassLayout(const Shape& shape) {
  int64_t s = 1;
  for (size_t d = 2; d < shape.size(); ++d) s *= shape[d];
  return {shape[0], shape[1], s};
}

double MaxAbs(const std::vector<Real>& v) {
  double m = 0;
  for (Real x : v) m = std::max(m, static_cast<double>(std::fabs(x)));
  return m;
}

double RelErr(double got, double want, double floor) {
  return std::fabs(got - want) / (std::fabs(want) + floor);
}

/// Runs `problem` with `reduction` and checks loss, count, per-item losses and the gradient.
void CheckProblem(const Problem& problem, Reduction reduction,
                  std::optional<double> normalizer = std::nullopt) {
  SCOPED_TRACE(::testing::Message() << problem.variant << " reduction=" << static_cast<int>(reduction));
  const std::vector<double> x = testing::Values(problem.logits.view());
  LossJob job;
  job.spec = problem.spec;
  job.spec.reduction = reduction;
  job.spec.normalizer = normalizer;
  job.logits = problem.logits.view();
  job.targets = problem.targets.view();
  if (problem.num_objects) job.num_objects = problem.num_objects->view();
  job.compute_gradient = true;
  job.output_dtype = DType::kFloat32;

  const RefLosses ref = problem.reference(AsReal(x));
  std::vector<Real> weights;  // upstream per item (NONE) or the scalar (MEAN/SUM)
  HostTensor weight_tensor;
  Real scalar_w = 0.7L;
  if (reduction == Reduction::kNone) {
    const auto w = testing::RandomUniform(ref.items.size(), -1.5, 1.5, 7);
    weights = AsReal(w);
    ASSERT_TRUE(ValidateJob(job).ok()) << ValidateJob(job).status();
    const JobPlan plan = *ValidateJob(job);
    weight_tensor = MakeTensor(DType::kFloat32, plan.item_shape, w);
    job.grad_output = weight_tensor.view();
  } else {
    job.grad_output = static_cast<double>(scalar_w);
  }

  const absl::StatusOr<LossResult> result = CpuBackend().Compute(job);
  ASSERT_TRUE(result.ok()) << result.status();
  ErrorStats& stats = Stats()[problem.variant];
  ++stats.cases;

  EXPECT_EQ(result->count, ref.count);
  const Real sum = testing::Weighted(ref, {});
  Real want = sum;
  if (reduction == Reduction::kMean) {
    const Real d = normalizer ? static_cast<Real>(*normalizer) : static_cast<Real>(ref.count);
    want = d > 0 ? sum / d : 0;
  }
  const double item_scale = MaxAbs(ref.items);
  const double loss_err = RelErr(result->loss, static_cast<double>(want), 1e-30);
  stats.loss = std::max(stats.loss, loss_err);
  EXPECT_LE(std::fabs(result->loss - static_cast<double>(want)),
            kLossRtol * std::fabs(static_cast<double>(want)) + 1e-7 * item_scale)
      << "loss " << result->loss << " want " << static_cast<double>(want);

  if (reduction == Reduction::kNone) {
    ASSERT_TRUE(result->losses.has_value());
    const std::vector<double> items = testing::Values(result->losses->view());
    ASSERT_EQ(items.size(), ref.items.size());
    for (size_t i = 0; i < items.size(); ++i) {
      const double w = static_cast<double>(ref.items[i]);
      if (std::fabs(w) >= 1e-3 * item_scale) stats.item = std::max(stats.item, RelErr(items[i], w, 0));
      ASSERT_LE(std::fabs(items[i] - w), kLossRtol * std::fabs(w) + 1e-6 * item_scale)
          << "item " << i << ": " << items[i] << " want " << w;
    }
  } else {
    EXPECT_FALSE(result->losses.has_value());
  }

  // Gradient of F(x) = Σ w_i ℓ_i (NONE) or w · reduced (MEAN/SUM), by central differences.
  auto objective = [&](const std::vector<Real>& xs) {
    const RefLosses l = problem.reference(xs);
    if (reduction == Reduction::kNone) return testing::Weighted(l, weights);
    Real s = testing::Weighted(l, {});
    if (reduction == Reduction::kMean) {
      const Real d = normalizer ? static_cast<Real>(*normalizer) : static_cast<Real>(l.count);
      s = d > 0 ? s / d : 0;
    }
    return scalar_w * s;
  };
  ASSERT_TRUE(result->gradient.has_value());
  const std::vector<double> grad = testing::Values(result->gradient->view());
  ASSERT_EQ(grad.size(), x.size());
  std::vector<int64_t> indices = problem.fd_indices;
  if (indices.empty()) {
    indices.resize(x.size());
    std::iota(indices.begin(), indices.end(), 0);
  }
  const std::vector<Real> fd = testing::FiniteDifferences(objective, AsReal(x), indices);
  const double grad_scale = MaxAbs(fd);
  for (size_t k = 0; k < indices.size(); ++k) {
    const int64_t i = indices[k];
    const double want_g = static_cast<double>(fd[k]);
    const double floor = std::max(kGradAtolScale * grad_scale, problem.grad_atol);
    if (std::fabs(want_g) >= std::max(1e-3 * grad_scale, problem.grad_atol) && grad_scale > 0) {
      stats.grad = std::max(stats.grad, RelErr(grad[i], want_g, 0));
    }
    ASSERT_LE(std::fabs(grad[i] - want_g), kGradRtol * std::fabs(want_g) + floor + 1e-30)
        << "gradient[" << i << "] = " << grad[i] << ", finite differences " << want_g
        << " (x = " << x[i] << ")";
  }
}

void CheckAllReductions(const Problem& p) {
  for (Reduction r : {Reduction::kMean, Reduction::kSum, Reduction::kNone}) CheckProblem(p, r);
}

// ---------------------------------------------------------------------------------------------
// softmax_focal

Problem SoftmaxProblem(Shape shape, double gamma, bool with_alpha, double smoothing,
                       std::optional<int64_t> ignore, uint32_t seed, double scale = 3.0) {
  const auto layout = ClassLayout(shape);
  const int64_t n = std::get<0>(layout), c = std::get<1>(layout), s = std::get<2>(layout);
  Problem p;
  p.variant = "softmax_focal";
  SoftmaxFocalParams params;
  params.gamma = gamma;
  params.label_smoothing = smoothing;
  params.ignore_index = ignore;
  testing::RefSoftmaxParams ref_params;
  ref_params.gamma = gamma;
  ref_params.smoothing = smoothing;
  ref_params.ignore_index = ignore;
  if (with_alpha) {
    const auto a = testing::RandomUniform(c, 0.1, 2.0, seed + 1);
    params.alpha.assign(a.begin(), a.end());
    ref_params.alpha = a;
  }
  p.spec.params = params;
  Shape target_shape{n};
  target_shape.insert(target_shape.end(), shape.begin() + 2, shape.end());
  std::vector<double> y = testing::RandomClasses(n * s, c, seed + 2);
  if (ignore) {
    for (size_t i = 0; i < y.size(); i += 3) y[i] = static_cast<double>(*ignore);
  }
  std::vector<int64_t> yi(y.begin(), y.end());
  p.logits = MakeTensor(DType::kFloat32, shape, testing::RandomNormal(n * c * s, scale, seed));
  p.targets = MakeTensor(DType::kInt64, target_shape, y);
  p.reference = [=](const std::vector<Real>& x) { return testing::RefSoftmaxFocal(x, n, c, s, yi, ref_params); };
  return p;
}

class SoftmaxFocalGrid
    : public ::testing::TestWithParam<std::tuple<double, bool, double, bool, bool>> {};

TEST_P(SoftmaxFocalGrid, MatchesReferenceAndFiniteDifferences) {
  const auto [gamma, with_alpha, smoothing, ignore, spatial] = GetParam();
  const Shape shape = spatial ? Shape{3, 5, 2, 3} : Shape{7, 6};
  const Problem p = SoftmaxProblem(shape, gamma, with_alpha, smoothing,
                                   ignore ? std::optional<int64_t>(-100) : std::nullopt, 11);
  CheckAllReductions(p);
}

INSTANTIATE_TEST_SUITE_P(AllOptions, SoftmaxFocalGrid,
                         ::testing::Combine(::testing::Values(0.0, 0.5, 1.0, 2.0, 5.0),
                                            ::testing::Bool(), ::testing::Values(0.0, 0.125),
                                            ::testing::Bool(), ::testing::Bool()));

TEST(SoftmaxFocal, ClassCounts) {
  for (int64_t c : {1, 2, 80, 1000, 32768}) {
    SCOPED_TRACE(c);
    Problem p = SoftmaxProblem({3, c}, 2.0, false, 0.0, std::nullopt, 21);
    // Finite differences on a sample of each row's entries, the targets included.
    for (int64_t row = 0; row < 3; ++row) {
      for (int64_t k = 0; k < std::min<int64_t>(c, 12); ++k) p.fd_indices.push_back(row * c + (k * 7919) % c);
    }
    CheckProblem(p, Reduction::kMean);
    CheckProblem(p, Reduction::kNone);
    Problem smoothed = SoftmaxProblem({2, c}, 0.5, true, 0.125, std::nullopt, 22);
    for (int64_t k = 0; k < std::min<int64_t>(c, 12); ++k) smoothed.fd_indices.push_back((k * 7919) % c);
    CheckProblem(smoothed, Reduction::kSum);
  }
}

TEST(SoftmaxFocal, StridedClassCountsAndOddSizes) {
  // S not a multiple of any vector width, C large enough to stress the strided loop.
  for (const Shape& shape : {Shape{2, 80, 3, 5}, Shape{1, 19, 7, 3}, Shape{2, 3, 1, 33}}) {
    Problem p = SoftmaxProblem(shape, 2.0, true, 0.0, std::optional<int64_t>(255), 31);
    int64_t numel = 1;
    for (int64_t d : shape) numel *= d;
    for (int64_t i = 0; i < numel; i += std::max<int64_t>(1, numel / 60)) p.fd_indices.push_back(i);
    CheckAllReductions(p);
  }
}

TEST(SoftmaxFocal, AllRowsIgnored) {
  for (const Shape& shape : {Shape{4, 5}, Shape{2, 5, 3}}) {
    Problem p = SoftmaxProblem(shape, 2.0, false, 0.0, std::optional<int64_t>(-1), 41);
    std::vector<double> y(p.targets.bytes.size() / 8, -1.0);
    Shape target_shape = p.targets.shape;
    p.targets = MakeTensor(DType::kInt64, target_shape, y);
    std::vector<int64_t> yi(y.begin(), y.end());
    const int64_t n = shape[0], c = shape[1], s = shape.size() > 2 ? shape[2] : 1;
    testing::RefSoftmaxParams rp;
    rp.ignore_index = -1;
    p.reference = [=](const std::vector<Real>& x) { return testing::RefSoftmaxFocal(x, n, c, s, yi, rp); };
    CheckAllReductions(p);
    LossJob job;
    job.spec = p.spec;
    job.logits = p.logits.view();
    job.targets = p.targets.view();
    job.compute_gradient = true;
    const auto r = CpuBackend().Compute(job);
    ASSERT_TRUE(r.ok());
    EXPECT_EQ(r->loss, 0.0);  // MEAN over nothing is 0, not NaN
    EXPECT_EQ(r->count, 0);
    for (double g : testing::Values(r->gradient->view())) EXPECT_EQ(g, 0.0);
  }
}

// ---------------------------------------------------------------------------------------------
// sigmoid_focal

Problem SigmoidFloatProblem(Shape shape, double gamma, double alpha, double smoothing, int64_t k,
                            bool soft, bool probabilities, uint32_t seed) {
  int64_t numel = 1;
  for (int64_t d : shape) numel *= d;
  Problem p;
  p.variant = "sigmoid_focal";
  SigmoidFocalParams params;
  params.gamma = gamma;
  params.alpha = alpha;
  params.label_smoothing = smoothing;
  params.smoothing_classes = k;
  params.input = probabilities ? SigmoidInput::kProbabilities : SigmoidInput::kLogits;
  p.spec.params = params;
  std::vector<double> t = soft ? testing::RandomUniform(numel, 0, 1, seed + 1)
                               : testing::RandomClasses(numel, 2, seed + 1);
  const std::vector<double> x = probabilities ? testing::RandomUniform(numel, 0.02, 0.98, seed)
                                              : testing::RandomNormal(numel, 3, seed);
  p.logits = MakeTensor(DType::kFloat32, shape, x);
  p.targets = MakeTensor(DType::kFloat32, shape, t);
  testing::RefSigmoidParams rp{gamma, alpha, smoothing, k, probabilities};
  const std::vector<Real> tr(t.begin(), t.end());
  p.reference = [=](const std::vector<Real>& xs) { return testing::RefSigmoidFocal(xs, tr, rp); };
  return p;
}

class SigmoidFocalGrid
    : public ::testing::TestWithParam<std::tuple<double, double, double, bool, bool>> {};

TEST_P(SigmoidFocalGrid, FloatTargets) {
  const auto [gamma, alpha, smoothing, soft, probabilities] = GetParam();
  const Problem p = SigmoidFloatProblem({5, 7}, gamma, alpha, smoothing, 2, soft, probabilities, 51);
  CheckAllReductions(p);
}

INSTANTIATE_TEST_SUITE_P(AllOptions, SigmoidFocalGrid,
                         ::testing::Combine(::testing::Values(0.0, 0.5, 1.0, 2.0, 5.0),
                                            ::testing::Values(0.25, -1.0, 0.75),
                                            ::testing::Values(0.0, 0.125), ::testing::Bool(),
                                            ::testing::Bool()));

TEST(SigmoidFocal, SmoothingClassesAndShapes) {
  CheckAllReductions(SigmoidFloatProblem({4, 3, 2, 5}, 2.0, 0.25, 0.25, 5, false, false, 61));
  CheckAllReductions(SigmoidFloatProblem({37}, 1.5, 0.25, 0.0, 2, false, false, 62));
  CheckAllReductions(SigmoidFloatProblem({3, 1}, 0.5, 0.5, 0.0, 2, true, false, 63));
}

Problem SigmoidIndexProblem(Shape shape, double gamma, double alpha, double smoothing, int64_t k,
                            std::optional<int64_t> ignore, uint32_t seed, bool probabilities = false) {
  const auto layout = ClassLayout(shape);
  const int64_t n = std::get<0>(layout), c = std::get<1>(layout), s = std::get<2>(layout);
  Problem p;
  p.variant = "sigmoid_focal";
  SigmoidFocalParams params;
  params.gamma = gamma;
  params.alpha = alpha;
  params.label_smoothing = smoothing;
  params.smoothing_classes = k;
  params.ignore_index = ignore;
  params.input = probabilities ? SigmoidInput::kProbabilities : SigmoidInput::kLogits;
  p.spec.params = params;
  std::vector<double> y = testing::RandomClasses(n * s, c + 1, seed + 2);  // c = background
  if (ignore) {
    for (size_t i = 1; i < y.size(); i += 4) y[i] = static_cast<double>(*ignore);
  }
  Shape target_shape{n};
  target_shape.insert(target_shape.end(), shape.begin() + 2, shape.end());
  const auto x = probabilities ? testing::RandomUniform(n * c * s, 0.02, 0.98, seed)
                               : testing::RandomNormal(n * c * s, 3, seed);
  p.logits = MakeTensor(DType::kFloat32, shape, x);
  p.targets = MakeTensor(DType::kInt32, target_shape, y);
  std::vector<int64_t> yi(y.begin(), y.end());
  testing::RefSigmoidParams rp{gamma, alpha, smoothing, k, probabilities};
  p.reference = [=](const std::vector<Real>& xs) {
    return testing::RefSigmoidFocalIndex(xs, n, c, s, yi, ignore, rp);
  };
  return p;
}

TEST(SigmoidFocal, IndexTargets) {
  for (double gamma : {0.0, 0.5, 2.0}) {
    CheckAllReductions(SigmoidIndexProblem({6, 5}, gamma, 0.25, 0.0, 2, -100, 71));
    CheckAllReductions(SigmoidIndexProblem({2, 4, 3, 3}, gamma, 0.25, 0.0, 2, 255, 72));
    CheckAllReductions(SigmoidIndexProblem({5, 9}, gamma, -1, 0.2, 9, std::nullopt, 73));
    CheckAllReductions(SigmoidIndexProblem({2, 3, 5}, gamma, 0.25, 0.1, 3, 7, 74, true));
  }
}

// ---------------------------------------------------------------------------------------------
// focal_cosine and dynamic_focal

Problem FocalCosineProblem(int64_t n, int64_t c, double alpha, double gamma, double xent, uint32_t seed) {
  Problem p;
  p.variant = "focal_cosine";
  p.spec.params = FocalCosineParams{alpha, gamma, xent};
  const std::vector<double> y = testing::RandomClasses(n, c, seed + 1);
  p.logits = MakeTensor(DType::kFloat32, {n, c}, testing::RandomNormal(n * c, 2, seed));
  p.targets = MakeTensor(DType::kInt64, {n}, y);
  std::vector<int64_t> yi(y.begin(), y.end());
  p.reference = [=](const std::vector<Real>& x) { return testing::RefFocalCosine(x, n, c, yi, alpha, gamma, xent); };
  return p;
}

TEST(FocalCosine, MatchesReferenceAndFiniteDifferences) {
  for (double gamma : {0.0, 0.5, 1.0, 2.0, 5.0}) {
    CheckAllReductions(FocalCosineProblem(6, 5, 1.0, gamma, 0.1, 81));
  }
  // C = 1: cos = x/‖x‖ = ±1 and the softmax is 1, so the gradient is exactly 0, but it is the sum
  // of terms of size ~1/‖x‖ (≈ 0.5 here) that cancel; float32 leaves a few ε of them.
  Problem single = FocalCosineProblem(4, 1, 1.0, 2.0, 0.1, 82);
  single.grad_atol = 1e-6;
  CheckAllReductions(single);
  CheckAllReductions(FocalCosineProblem(4, 2, 0.5, 2.0, 1.0, 83));
  Problem wide = FocalCosineProblem(3, 80, 2.0, 2.0, 0.5, 84);
  CheckAllReductions(wide);
}

Problem DynamicProblem(Shape shape, double gamma, bool with_objects, uint32_t seed) {
  int64_t numel = 1;
  for (int64_t d : shape) numel *= d;
  const int64_t n = shape[0];
  Problem p;
  p.variant = "dynamic_focal";
  p.spec.params = DynamicFocalParams{gamma};
  const std::vector<double> t = testing::RandomClasses(numel, 2, seed + 1);
  p.logits = MakeTensor(DType::kFloat32, shape, testing::RandomNormal(numel, 3, seed));
  p.targets = MakeTensor(DType::kFloat32, shape, t);
  std::vector<Real> objects;
  if (with_objects) {
    std::vector<double> counts = testing::RandomClasses(n, 6, seed + 2);
    counts[0] += 1;  // positive mean
    p.num_objects = MakeTensor(DType::kFloat32, {n}, counts);
    objects.assign(counts.begin(), counts.end());
  }
  const std::vector<Real> tr(t.begin(), t.end());
  p.reference = [=](const std::vector<Real>& x) { return testing::RefDynamicFocal(x, tr, n, objects, gamma); };
  return p;
}

TEST(DynamicFocal, MatchesReferenceAndFiniteDifferences) {
  for (double gamma : {0.0, 0.5, 1.0, 2.0, 5.0}) {
    CheckAllReductions(DynamicProblem({5, 7}, gamma, true, 91));
    CheckAllReductions(DynamicProblem({5, 7}, gamma, false, 92));
  }
  CheckAllReductions(DynamicProblem({3, 2, 3, 3}, 2.0, true, 93));
}

TEST(Normalizer, ReplacesTheMeanDenominator) {
  CheckProblem(SigmoidFloatProblem({4, 5}, 2.0, 0.25, 0.0, 2, false, false, 101), Reduction::kMean, 3.0);
  CheckProblem(SoftmaxProblem({4, 5}, 2.0, false, 0.0, std::nullopt, 102), Reduction::kMean, 2.5);
}

}  // namespace
}  // namespace focal
