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
  std::optional<HostTensor> weights;  ///< the request's per-item loss weights
  std::optional<HostTensor> scores;   ///< quality_focal's per-row scores
  /// The reference's per-item losses, before `weights` (CheckProblem applies them).
  std::function<RefLosses(const std::vector<Real>&)> reference;
  /// MEAN divides by at least this many (quality_focal's positives: 1).
  int64_t min_mean_count = 0;
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
  if (problem.weights) job.weights = problem.weights->view();
  if (problem.scores) job.scores = problem.scores->view();
  job.compute_gradient = true;
  job.output_dtype = DType::kFloat32;

  // The request's loss weights scale each reference item: ℓ_i ← w_i ℓ_i, value and gradient.
  const std::vector<double> loss_weights = problem.weights ? testing::Values(problem.weights->view())
                                                           : std::vector<double>{};
  auto reference = [&](const std::vector<Real>& xs) {
    RefLosses l = problem.reference(xs);
    for (size_t i = 0; i < loss_weights.size(); ++i) l.items[i] *= loss_weights[i];
    return l;
  };
  auto mean_denominator = [&](const RefLosses& l) {
    return normalizer ? static_cast<Real>(*normalizer)
                      : static_cast<Real>(std::max<int64_t>(l.count, problem.min_mean_count));
  };
  const RefLosses ref = reference(AsReal(x));
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

  // Outputs pre-filled with NaN: an element a kernel leaves unwritten fails the comparison.
  CpuBackendOptions options;
  options.poison_outputs = true;
  const absl::StatusOr<LossResult> result = CpuBackend(options).Compute(job);
  ASSERT_TRUE(result.ok()) << result.status();
  ErrorStats& stats = Stats()[problem.variant];
  ++stats.cases;

  EXPECT_EQ(result->count, ref.count);
  const Real sum = testing::Weighted(ref, {});
  Real want = sum;
  if (reduction == Reduction::kMean) {
    const Real d = mean_denominator(ref);
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
    const RefLosses l = reference(xs);
    if (reduction == Reduction::kNone) return testing::Weighted(l, weights);
    Real s = testing::Weighted(l, {});
    if (reduction == Reduction::kMean) {
      const Real d = mean_denominator(l);
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

// ---------------------------------------------------------------------------------------------
// §5 the catalogue's elementwise variants: float targets and class-index targets.

using Element = std::function<Real(Real, Real)>;

/// An elementwise variant over float targets: `targets` says how they are drawn.
enum class Draw { kHard, kSoft, kQuality };

std::vector<double> DrawTargets(Draw draw, int64_t numel, uint32_t seed) {
  switch (draw) {
    case Draw::kHard: return testing::RandomClasses(numel, 2, seed);
    case Draw::kSoft: return testing::RandomUniform(numel, 0, 1, seed);
    case Draw::kQuality: {
      // Mostly 0 (negatives), a third positive qualities in (0, 1], a few exactly 1.
      std::vector<double> q = testing::RandomUniform(numel, 0, 1, seed);
      const std::vector<double> pick = testing::RandomClasses(numel, 3, seed + 7);
      for (int64_t i = 0; i < numel; ++i) q[i] = pick[i] == 0 ? (i % 11 == 0 ? 1.0 : q[i]) : 0.0;
      return q;
    }
  }
  return {};
}

Problem ElementFloatProblem(const char* variant, VariantParams params, Element element, Shape shape, Draw draw,
                            uint32_t seed, double scale = 3.0) {
  int64_t numel = 1;
  for (int64_t d : shape) numel *= d;
  Problem p;
  p.variant = variant;
  p.spec.params = std::move(params);
  const std::vector<double> t = DrawTargets(draw, numel, seed + 1);
  p.logits = MakeTensor(DType::kFloat32, shape, testing::RandomNormal(numel, scale, seed));
  p.targets = MakeTensor(DType::kFloat32, shape, t);
  const std::vector<Real> tr(t.begin(), t.end());
  p.reference = [=](const std::vector<Real>& xs) { return testing::RefElementwise(element, xs, tr); };
  return p;
}

Problem ElementIndexProblem(const char* variant, VariantParams params, Element element, Shape shape,
                            std::optional<int64_t> ignore, bool scores, uint32_t seed) {
  const auto layout = ClassLayout(shape);
  const int64_t n = std::get<0>(layout), c = std::get<1>(layout), s = std::get<2>(layout);
  Problem p;
  p.variant = variant;
  p.spec.params = std::move(params);
  std::vector<double> y = testing::RandomClasses(n * s, c + 1, seed + 2);  // c = background
  if (ignore) {
    for (size_t i = 1; i < y.size(); i += 4) y[i] = static_cast<double>(*ignore);
  }
  Shape target_shape{n};
  target_shape.insert(target_shape.end(), shape.begin() + 2, shape.end());
  p.logits = MakeTensor(DType::kFloat32, shape, testing::RandomNormal(n * c * s, 3, seed));
  p.targets = MakeTensor(DType::kInt64, target_shape, y);
  std::vector<Real> score_values;
  if (scores) {
    std::vector<double> q = testing::RandomUniform(n * s, 0, 1, seed + 3);
    q[0] = 1.0;
    p.scores = MakeTensor(DType::kFloat32, target_shape, q);
    score_values.assign(q.begin(), q.end());
  }
  const std::vector<int64_t> yi(y.begin(), y.end());
  p.reference = [=](const std::vector<Real>& xs) {
    return testing::RefElementwiseIndex(element, xs, n, c, s, yi, ignore, score_values);
  };
  return p;
}

/// quality_focal's count: the positives (rows with a target class, elements with y > 0).
void CountPositives(Problem& p) {
  p.min_mean_count = 1;
  const auto base = p.reference;
  const bool index = IsInteger(p.targets.dtype);
  const std::vector<double> t = testing::Values(p.targets.view());
  const int64_t classes = p.logits.shape[1];
  const std::optional<int64_t> ignore = IgnoreIndex(p.spec.params);
  int64_t positives = 0;
  for (double v : t) {
    if (index) {
      positives += v < classes && !(ignore && v == *ignore);
    } else {
      positives += v > 0;
    }
  }
  p.reference = [=](const std::vector<Real>& xs) {
    RefLosses l = base(xs);
    l.count = positives;
    return l;
  };
}

TEST(Asymmetric, FloatTargetsMatchReferenceAndFiniteDifferences) {
  for (double gamma_neg : {0.0, 0.5, 1.0, 4.0}) {
    for (double gamma_pos : {0.0, 1.0, 2.0}) {
      for (double clip : {0.0, 0.05, 0.5}) {
        SCOPED_TRACE(::testing::Message() << "γ+ " << gamma_pos << " γ- " << gamma_neg << " m " << clip);
        const AsymmetricParams params{gamma_pos, gamma_neg, clip, std::nullopt};
        const Element element = [=](Real x, Real t) { return testing::RefAsymmetric(x, t, gamma_pos, gamma_neg, clip); };
        CheckAllReductions(ElementFloatProblem("asymmetric", params, element, {5, 7}, Draw::kHard, 201));
        CheckAllReductions(ElementFloatProblem("asymmetric", params, element, {3, 2, 5}, Draw::kSoft, 202));
      }
    }
  }
}

TEST(Asymmetric, IndexTargetsWithBackgroundAndIgnoredRows) {
  const AsymmetricParams params{0.0, 4.0, 0.05, 255};
  const Element element = [](Real x, Real t) { return testing::RefAsymmetric(x, t, 0, 4, 0.05L); };
  CheckAllReductions(ElementIndexProblem("asymmetric", params, element, {6, 5}, 255, false, 211));
  CheckAllReductions(ElementIndexProblem("asymmetric", params, element, {2, 4, 3, 3}, 255, false, 212));
  AsymmetricParams no_ignore = params;
  no_ignore.ignore_index.reset();
  CheckAllReductions(ElementIndexProblem("asymmetric", no_ignore, element, {4, 19}, std::nullopt, false, 213));
}

// A clip below float32's normal range, at logits where 1-p underflows: 1 - p_m = (1-p) + m is
// then subnormal, which the log's general path takes. And a clip that rounds to 0 in float32,
// where float32 logits compute: the kernels run the unclipped form, bit for bit (float64 logits
// compute in double, where the clip is kept).
TEST(Asymmetric, ClipsBelowFloatRange) {
  const CpuBackend backend;
  const std::vector<double> x = {1e4, 200, 100, 30, 0, -30, -100, -1e4};
  const Shape shape{2, 4};
  const HostTensor logits = MakeTensor(DType::kFloat32, shape, x);
  const HostTensor targets = MakeTensor(DType::kFloat32, shape, std::vector<double>(x.size(), 0.0));
  auto run = [&](double clip) {
    LossJob job;
    job.spec.params = AsymmetricParams{0, 4, clip, std::nullopt};
    job.spec.reduction = Reduction::kNone;
    job.logits = logits.view();
    job.targets = targets.view();
    job.compute_gradient = true;
    job.output_dtype = DType::kFloat32;
    auto result = backend.Compute(job);
    EXPECT_TRUE(result.ok()) << result.status();
    return std::make_pair(testing::Values(result->losses->view()), testing::Values(result->gradient->view()));
  };
  const auto [loss_tiny, grad_tiny] = run(1e-40);
  const double m = static_cast<double>(1e-40f);  // the clip as float32 holds it
  for (size_t i = 0; i < x.size(); ++i) {
    SCOPED_TRACE(::testing::Message() << "x = " << x[i]);
    EXPECT_TRUE(std::isfinite(loss_tiny[i]) && std::isfinite(grad_tiny[i]));
    EXPECT_GE(grad_tiny[i], 0);  // ∂ℓ/∂x of a negative's term is p q (...) ≥ 0
    EXPECT_LE(grad_tiny[i], 1);
  }
  // Where 1-p is 0 in float32 (x = 200, 1e4): 1 - p_m = m, ℓ = (1-m)^4 (-log m) = -log m,
  // within the log's 1.5 ulp and the rounding of the output.
  for (size_t i : {0, 1}) EXPECT_NEAR(loss_tiny[i], -std::log(m), 3 * 92 * 0x1p-24) << "x = " << x[i];
  const auto [loss_none, grad_none] = run(0);
  const auto [loss_rounded, grad_rounded] = run(1e-300);
  EXPECT_EQ(loss_rounded, loss_none);
  EXPECT_EQ(grad_rounded, grad_none);
}

TEST(QualityFocal, FloatQualityTargets) {
  for (double beta : {1.0, 1.5, 2.0, 3.0}) {
    SCOPED_TRACE(::testing::Message() << "β " << beta);
    const Element element = [=](Real x, Real y) { return testing::RefQualityFocal(x, y, beta); };
    for (Draw draw : {Draw::kQuality, Draw::kSoft}) {
      Problem p = ElementFloatProblem("quality_focal", QualityFocalParams{beta, std::nullopt}, element, {6, 7}, draw,
                                      221);
      CountPositives(p);
      CheckAllReductions(p);
    }
  }
  // No positive at all: MEAN divides by 1, not by 0.
  Problem none = ElementFloatProblem("quality_focal", QualityFocalParams{}, [](Real x, Real y) {
    return testing::RefQualityFocal(x, y, 2);
  }, {3, 4}, Draw::kHard, 222);
  none.targets = MakeTensor(DType::kFloat32, {3, 4}, std::vector<double>(12, 0.0));
  none.reference = [](const std::vector<Real>& xs) {
    return testing::RefElementwise([](Real x, Real y) { return testing::RefQualityFocal(x, y, 2); }, xs,
                                   std::vector<Real>(12, 0));
  };
  CountPositives(none);
  CheckAllReductions(none);
}

TEST(QualityFocal, IndexTargetsWithScores) {
  for (double beta : {1.0, 2.0}) {
    const Element element = [=](Real x, Real y) { return testing::RefQualityFocal(x, y, beta); };
    for (const Shape& shape : {Shape{6, 5}, Shape{2, 4, 3, 3}, Shape{3, 17}}) {
      Problem p = ElementIndexProblem("quality_focal", QualityFocalParams{beta, -1}, element, shape, -1, true, 231);
      CountPositives(p);
      CheckAllReductions(p);
    }
  }
}

TEST(Varifocal, IouWeightedAndNot) {
  for (double gamma : {0.0, 0.5, 1.0, 2.0}) {
    for (bool iou_weighted : {true, false}) {
      SCOPED_TRACE(::testing::Message() << "γ " << gamma << " iou_weighted " << iou_weighted);
      const Element element = [=](Real x, Real q) { return testing::RefVarifocal(x, q, 0.75L, gamma, iou_weighted); };
      CheckAllReductions(ElementFloatProblem("varifocal", VarifocalParams{0.75, gamma, iou_weighted}, element, {6, 7},
                                             Draw::kQuality, 241));
      CheckAllReductions(ElementFloatProblem("varifocal", VarifocalParams{0.75, gamma, iou_weighted}, element,
                                             {2, 3, 2, 3}, Draw::kQuality, 242));
    }
  }
}

TEST(FocalStar, HardFloatAndIndexTargets) {
  for (double gamma : {0.5, 1.0, 2.0}) {
    for (double beta : {0.0, 1.0}) {
      for (double alpha : {-1.0, 0.25}) {
        SCOPED_TRACE(::testing::Message() << "γ " << gamma << " β " << beta << " α " << alpha);
        const FocalStarParams params{gamma, beta, alpha, std::nullopt};
        const Element element = [=](Real x, Real t) { return testing::RefFocalStar(x, t, gamma, beta, alpha); };
        CheckAllReductions(ElementFloatProblem("focal_star", params, element, {5, 7}, Draw::kHard, 251));
        FocalStarParams ignoring = params;
        ignoring.ignore_index = 9;
        CheckAllReductions(ElementIndexProblem("focal_star", ignoring, element, {2, 3, 5}, 9, false, 252));
      }
    }
  }
}

TEST(Catalogue, LogitsFarOutKeepTheirValuesAndGradients) {
  // ±30, ±100 and ±1e4: saturated sigmoids, where p or 1-p underflow in float32.
  const std::vector<double> far = {-1e4, -100, -30, -5, 0, 5, 30, 100, 1e4, -1e4, -100, -30, 30, 100, 1e4, 0};
  const Shape shape{4, 4};
  struct Entry {
    const char* variant;
    VariantParams params;
    Element element;
    Draw draw;
  };
  const std::vector<Entry> entries = {
      {"asymmetric", AsymmetricParams{1, 4, 0.05, std::nullopt},
       [](Real x, Real t) { return testing::RefAsymmetric(x, t, 1, 4, 0.05L); }, Draw::kSoft},
      {"asymmetric", AsymmetricParams{0, 0.5, 0, std::nullopt},
       [](Real x, Real t) { return testing::RefAsymmetric(x, t, 0, 0.5L, 0); }, Draw::kHard},
      // A clip so small that p - m rounds to 1 in float32 from x ≈ 17 on.
      {"asymmetric", AsymmetricParams{0, 4, 1e-8, std::nullopt},
       [](Real x, Real t) { return testing::RefAsymmetric(x, t, 0, 4, 1e-8L); }, Draw::kSoft},
      {"asymmetric", AsymmetricParams{1, 0.5, 3e-8, std::nullopt},
       [](Real x, Real t) { return testing::RefAsymmetric(x, t, 1, 0.5L, 3e-8L); }, Draw::kSoft},
      {"quality_focal", QualityFocalParams{2, std::nullopt},
       [](Real x, Real y) { return testing::RefQualityFocal(x, y, 2); }, Draw::kQuality},
      {"varifocal", VarifocalParams{0.75, 0.5, true},
       [](Real x, Real q) { return testing::RefVarifocal(x, q, 0.75L, 0.5L, true); }, Draw::kQuality},
      {"focal_star", FocalStarParams{2, 1, 0.25, std::nullopt},
       [](Real x, Real t) { return testing::RefFocalStar(x, t, 2, 1, 0.25L); }, Draw::kHard},
  };
  for (size_t k = 0; k < entries.size(); ++k) {
    const Entry& e = entries[k];
    SCOPED_TRACE(::testing::Message() << "entry " << k << ": " << e.variant);
    Problem p = ElementFloatProblem(e.variant, e.params, e.element, shape, e.draw, 261);
    p.logits = MakeTensor(DType::kFloat32, shape, far);
    if (std::string(e.variant) == "quality_focal") CountPositives(p);
    CheckAllReductions(p);
  }
}

// ---------------------------------------------------------------------------------------------
// §5.5 distribution_focal

Problem DistributionProblem(Shape shape, uint32_t seed) {
  const auto layout = ClassLayout(shape);
  const int64_t n = std::get<0>(layout), b = std::get<1>(layout), s = std::get<2>(layout);
  Problem p;
  p.variant = "distribution_focal";
  p.spec.params = DistributionFocalParams{};
  std::vector<double> y = testing::RandomUniform(n * s, 0, static_cast<double>(b - 1), seed + 1);
  // The edges: 0, B-1 (the last bin pair), whole numbers (a bin edge: all weight on one bin).
  const double edges[] = {0.0, static_cast<double>(b - 1), 1.0, static_cast<double>(b - 2), std::floor(b / 2.0)};
  for (size_t i = 0; i < y.size() && i < 5; ++i) y[i] = edges[i];
  Shape target_shape{n};
  target_shape.insert(target_shape.end(), shape.begin() + 2, shape.end());
  p.logits = MakeTensor(DType::kFloat32, shape, testing::RandomNormal(n * b * s, 3, seed));
  p.targets = MakeTensor(DType::kFloat32, target_shape, y);
  const std::vector<Real> yr(y.begin(), y.end());
  p.reference = [=](const std::vector<Real>& xs) { return testing::RefDistributionFocal(xs, n, b, s, yr); };
  return p;
}

TEST(DistributionFocal, RowsAndStridedLayouts) {
  for (const Shape& shape : {Shape{7, 2}, Shape{9, 17}, Shape{5, 80}, Shape{2, 17, 3, 5}, Shape{3, 5, 33}}) {
    SCOPED_TRACE(::testing::Message() << "shape " << shape.size() << "-d, B " << shape[1]);
    CheckAllReductions(DistributionProblem(shape, 271));
  }
}

// ---------------------------------------------------------------------------------------------
// §5.0 weights: every variant's items scaled, zeros included.

/// Per-item weights for `p` (shaped like its NONE losses), some of them 0.
void AddWeights(Problem& p, uint32_t seed) {
  LossJob job;
  job.spec = p.spec;
  job.logits = p.logits.view();
  job.targets = p.targets.view();
  if (p.num_objects) job.num_objects = p.num_objects->view();
  if (p.scores) job.scores = p.scores->view();
  const absl::StatusOr<JobPlan> plan = ValidateJob(job);
  ASSERT_TRUE(plan.ok()) << plan.status();
  std::vector<double> w = testing::RandomUniform(plan->num_items, 0, 3, seed);
  for (size_t i = 0; i < w.size(); i += 3) w[i] = 0;
  p.weights = MakeTensor(DType::kFloat32, plan->item_shape, w);
}

TEST(Weights, ScaleEveryVariantsItemsInValueAndGradient) {
  std::vector<Problem> problems = {
      SoftmaxProblem({6, 5}, 2.0, true, 0.0, std::optional<int64_t>(-1), 281),
      SoftmaxProblem({6, 5}, 2.0, false, 0.1, std::nullopt, 282),
      SoftmaxProblem({2, 4, 3, 3}, 2.0, false, 0.0, std::nullopt, 283),
      SigmoidFloatProblem({5, 7}, 2.0, 0.25, 0.0, 2, true, false, 284),
      SigmoidIndexProblem({2, 3, 5}, 2.0, 0.25, 0.0, 2, 7, 285),
      FocalCosineProblem(6, 5, 1.0, 2.0, 0.1, 286),
      DynamicProblem({5, 7}, 2.0, true, 287),
      ElementFloatProblem("asymmetric", AsymmetricParams{}, [](Real x, Real t) {
        return testing::RefAsymmetric(x, t, 0, 4, 0.05L);
      }, {5, 7}, Draw::kSoft, 288),
      ElementFloatProblem("varifocal", VarifocalParams{}, [](Real x, Real q) {
        return testing::RefVarifocal(x, q, 0.75L, 2, true);
      }, {5, 7}, Draw::kQuality, 289),
      ElementIndexProblem("focal_star", FocalStarParams{}, [](Real x, Real t) {
        return testing::RefFocalStar(x, t, 1, 0, -1);
      }, {4, 6}, std::nullopt, false, 290),
      DistributionProblem({9, 17}, 291),
      DistributionProblem({2, 5, 7}, 292),
  };
  Problem quality = ElementIndexProblem("quality_focal", QualityFocalParams{}, [](Real x, Real y) {
    return testing::RefQualityFocal(x, y, 2);
  }, {5, 6}, std::nullopt, true, 293);
  CountPositives(quality);
  problems.push_back(quality);
  for (Problem& p : problems) {
    SCOPED_TRACE(p.variant);
    AddWeights(p, 299);
    CheckAllReductions(p);
    CheckProblem(p, Reduction::kMean, 2.5);
  }
}

// ---------------------------------------------------------------------------------------------
// §5.0 options of softmax_focal and sigmoid_focal: Poly-1, class-balanced α, FLSD.

struct SoftmaxOptions {
  double poly_epsilon = 0;
  std::vector<std::pair<double, double>> schedule;
  std::vector<double> class_counts;
  double beta = 0.9999;
  std::optional<int64_t> ignore_index;  ///< every fourth row gets it
};

/// The class-balanced α written plainly: (1-β)/(1-β^n) with pow, the largest for n = 0,
/// normalised to sum C.
std::vector<double> PlainClassBalancedAlpha(const std::vector<double>& counts, double beta) {
  std::vector<Real> w(counts.size(), 0);
  Real largest = 0;
  for (size_t c = 0; c < counts.size(); ++c) {
    if (counts[c] > 0) w[c] = (1 - static_cast<Real>(beta)) / (1 - std::pow(static_cast<Real>(beta), counts[c]));
    largest = std::max(largest, w[c]);
  }
  Real sum = 0;
  for (size_t c = 0; c < counts.size(); ++c) {
    if (counts[c] == 0) w[c] = largest > 0 ? largest : 1;
    sum += w[c];
  }
  std::vector<double> alpha;
  for (Real v : w) alpha.push_back(static_cast<double>(v * counts.size() / sum));
  return alpha;
}

Problem SoftmaxOptionsProblem(Shape shape, double gamma, const SoftmaxOptions& options, uint32_t seed) {
  const auto layout = ClassLayout(shape);
  const int64_t n = std::get<0>(layout), c = std::get<1>(layout), s = std::get<2>(layout);
  Problem p;
  p.variant = "softmax_focal";
  SoftmaxFocalParams params;
  params.gamma = gamma;
  params.poly_epsilon = options.poly_epsilon;
  params.class_counts = options.class_counts;
  params.class_balance_beta = options.beta;
  params.ignore_index = options.ignore_index;
  testing::RefSoftmaxParams ref_params;
  ref_params.ignore_index = options.ignore_index;
  ref_params.gamma = gamma;
  ref_params.poly_epsilon = options.poly_epsilon;
  ref_params.schedule = options.schedule;
  for (const auto& [threshold, step_gamma] : options.schedule) params.gamma_schedule.push_back({threshold, step_gamma});
  if (!options.class_counts.empty()) ref_params.alpha = PlainClassBalancedAlpha(options.class_counts, options.beta);
  p.spec.params = params;
  const std::vector<double> x = testing::RandomNormal(n * c * s, 3, seed);
  std::vector<double> y = testing::RandomClasses(n * s, c, seed + 2);
  // FLSD's γ is piecewise constant in p_y: keep every row 0.02 away from each threshold, so the
  // float32 pass and the long-double reference choose the same γ and the central differences do
  // not straddle a jump. Rows fall on both sides of every threshold (checked below).
  std::vector<int> below(options.schedule.size(), 0), above(options.schedule.size(), 0);
  for (int64_t i = 0; i < n; ++i) {
    for (int64_t j = 0; j < s; ++j) {
      auto p_y = [&](int64_t target) {
        Real m = -INFINITY, z = 0;
        for (int64_t k = 0; k < c; ++k) m = std::max<Real>(m, x[(i * c + k) * s + j]);
        for (int64_t k = 0; k < c; ++k) z += std::exp(x[(i * c + k) * s + j] - m);
        return std::exp(x[(i * c + target) * s + j] - m) / z;
      };
      auto near = [&](int64_t target) {
        for (const auto& step : options.schedule) {
          if (std::fabs(p_y(target) - step.first) < 0.02) return true;
        }
        return false;
      };
      double& target = y[i * s + j];
      if (options.ignore_index && (i * s + j) % 4 == 1) {
        target = static_cast<double>(*options.ignore_index);
        continue;
      }
      for (int64_t tries = 0; near(static_cast<int64_t>(target)) && tries < c; ++tries) {
        target = static_cast<double>((static_cast<int64_t>(target) + 1) % c);
      }
      for (size_t k = 0; k < options.schedule.size(); ++k) {
        (p_y(static_cast<int64_t>(target)) < options.schedule[k].first ? below : above)[k]++;
      }
    }
  }
  for (size_t k = 0; k < options.schedule.size(); ++k) {
    EXPECT_GT(below[k], 0) << "no row below threshold " << options.schedule[k].first;
    EXPECT_GT(above[k], 0) << "no row above threshold " << options.schedule[k].first;
  }
  Shape target_shape{n};
  target_shape.insert(target_shape.end(), shape.begin() + 2, shape.end());
  const std::vector<int64_t> yi(y.begin(), y.end());
  p.logits = MakeTensor(DType::kFloat32, shape, x);
  p.targets = MakeTensor(DType::kInt64, target_shape, y);
  p.reference = [=](const std::vector<Real>& xs) { return testing::RefSoftmaxFocal(xs, n, c, s, yi, ref_params); };
  return p;
}

TEST(SoftmaxFocalOptions, PolyOne) {
  for (double gamma : {0.0, 0.5, 1.0, 2.0}) {
    for (double epsilon : {-1.0, 1.0, 2.5}) {
      SCOPED_TRACE(::testing::Message() << "γ " << gamma << " ε_p " << epsilon);
      SoftmaxOptions options;
      options.poly_epsilon = epsilon;
      CheckAllReductions(SoftmaxOptionsProblem({7, 5}, gamma, options, 301));
      CheckAllReductions(SoftmaxOptionsProblem({2, 4, 3, 5}, gamma, options, 302));
      // Ignored rows contribute nothing, Poly-1's term included (it is not α-weighted).
      options.ignore_index = -1;
      CheckAllReductions(SoftmaxOptionsProblem({9, 5}, gamma, options, 303));
      CheckAllReductions(SoftmaxOptionsProblem({2, 4, 3, 5}, gamma, options, 304));
    }
  }
}

TEST(SoftmaxFocalOptions, GammaScheduleRowsOnBothSidesOfEachThreshold) {
  // FLSD-53 (γ 5 below p_y 0.2, else 3) and a three-step schedule.
  const std::vector<std::vector<std::pair<double, double>>> schedules = {{{0.2, 5.0}},
                                                                          {{0.1, 0.5}, {0.4, 4.0}, {0.8, 1.0}}};
  for (const auto& schedule : schedules) {
    SoftmaxOptions options;
    options.schedule = schedule;
    CheckAllReductions(SoftmaxOptionsProblem({40, 5}, 3.0, options, 311));
    CheckAllReductions(SoftmaxOptionsProblem({3, 4, 4, 5}, 3.0, options, 312));
    options.poly_epsilon = 1;  // with Poly-1: the term takes the row's γ
    CheckAllReductions(SoftmaxOptionsProblem({40, 5}, 2.0, options, 313));
  }
}

TEST(SoftmaxFocalOptions, ClassBalancedAlpha) {
  for (double beta : {0.0, 0.9, 0.9999, 0.999999}) {
    SCOPED_TRACE(::testing::Message() << "β " << beta);
    SoftmaxOptions options;
    options.class_counts = {1000, 10, 0, 1, 250000};
    options.beta = beta;
    CheckAllReductions(SoftmaxOptionsProblem({8, 5}, 2.0, options, 321));
    CheckAllReductions(SoftmaxOptionsProblem({2, 5, 3, 3}, 2.0, options, 322));
  }
  // No class seen at all: every α is 1.
  SoftmaxOptions unseen;
  unseen.class_counts = {0, 0, 0};
  CheckAllReductions(SoftmaxOptionsProblem({6, 3}, 2.0, unseen, 323));
}

TEST(SigmoidFocalOptions, PolyOne) {
  for (double gamma : {0.0, 0.5, 2.0}) {
    for (double epsilon : {-1.0, 1.0}) {
      SCOPED_TRACE(::testing::Message() << "γ " << gamma << " ε_p " << epsilon);
      for (bool soft : {false, true}) {
        Problem p = SigmoidFloatProblem({5, 7}, gamma, 0.25, soft ? 0.1 : 0.0, 2, soft, false, 331);
        std::get<SigmoidFocalParams>(p.spec.params).poly_epsilon = epsilon;
        const std::vector<double> t = testing::Values(p.targets.view());
        const std::vector<Real> tr(t.begin(), t.end());
        testing::RefSigmoidParams rp{gamma, 0.25, soft ? 0.1 : 0.0, 2, false, epsilon};
        p.reference = [=](const std::vector<Real>& xs) { return testing::RefSigmoidFocal(xs, tr, rp); };
        CheckAllReductions(p);
      }
      Problem index = SigmoidIndexProblem({2, 4, 3, 3}, gamma, 0.25, 0.0, 2, 255, 332);
      std::get<SigmoidFocalParams>(index.spec.params).poly_epsilon = epsilon;
      const auto layout = ClassLayout(index.logits.shape);
      const std::vector<double> y = testing::Values(index.targets.view());
      const std::vector<int64_t> yi(y.begin(), y.end());
      testing::RefSigmoidParams rp{gamma, 0.25, 0.0, 2, false, epsilon};
      index.reference = [=](const std::vector<Real>& xs) {
        return testing::RefSigmoidFocalIndex(xs, std::get<0>(layout), std::get<1>(layout), std::get<2>(layout), yi,
                                             std::optional<int64_t>(255), rp);
      };
      CheckAllReductions(index);
    }
  }
}

TEST(Normalizer, ReplacesTheMeanDenominator) {
  CheckProblem(SigmoidFloatProblem({4, 5}, 2.0, 0.25, 0.0, 2, false, false, 101), Reduction::kMean, 3.0);
  CheckProblem(SoftmaxProblem({4, 5}, 2.0, false, 0.0, std::nullopt, 102), Reduction::kMean, 2.5);
}

}  // namespace
}  // namespace focal
