// Every validation error: INVALID_ARGUMENT with a message that names the field and the problem.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <limits>

#include "focal/validate.h"
#include "kernels/cpu/cpu_backend.h"
#include "tests/unit/test_util.h"

namespace focal {
namespace {

using testing::HostTensor;
using testing::MakeTensor;

/// A valid softmax_focal job that each case breaks in one way.
struct Fixture {
  HostTensor logits = MakeTensor(DType::kFloat32, {3, 5}, testing::RandomNormal(15, 1, 1));
  HostTensor targets = MakeTensor(DType::kInt64, {3}, {0, 4, 2});
  HostTensor float_targets = MakeTensor(DType::kFloat32, {3, 5}, std::vector<double>(15, 0.0));
  LossJob Job(VariantParams params = SoftmaxFocalParams{}) const {
    LossJob job;
    job.spec.params = std::move(params);
    job.logits = logits.view();
    job.targets = targets.view();
    job.compute_gradient = true;
    return job;
  }
};

void ExpectInvalid(const LossJob& job, const std::string& fragment) {
  const absl::StatusOr<JobPlan> plan = ValidateJob(job);
  absl::Status status = plan.status();
  if (plan.ok()) status = CpuBackend().Compute(job).status();  // value checks run in the pass
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << status;
  EXPECT_NE(status.message().find(fragment), std::string::npos)
      << "message \"" << status.message() << "\" lacks \"" << fragment << "\"";
}

TEST(Validate, AcceptsTheFixture) {
  Fixture f;
  EXPECT_TRUE(ValidateJob(f.Job()).ok());
  EXPECT_TRUE(CpuBackend().Compute(f.Job()).ok());
}

TEST(Validate, Tensors) {
  Fixture f;
  HostTensor int_logits = MakeTensor(DType::kInt32, {3, 5}, std::vector<double>(15, 1));
  LossJob job = f.Job();
  job.logits = int_logits.view();
  ExpectInvalid(job, "logits.dtype is int32; expected float32");

  job = f.Job();
  job.logits.size_bytes -= 4;
  ExpectInvalid(job, "logits.data has 56 bytes; shape [3, 5] of float32 needs 60");

  job = f.Job();
  job.logits.shape = {3, -5};
  ExpectInvalid(job, "logits.shape[1] is -5");

  job = f.Job();
  job.logits.shape = {1LL << 40, 1LL << 40};
  ExpectInvalid(job, "logits.shape overflows int64");

  job = f.Job();
  job.logits.data = nullptr;
  ExpectInvalid(job, "logits.data is missing");

  job = f.Job();
  job.targets.size_bytes = 16;
  ExpectInvalid(job, "targets.data has 16 bytes");
}

TEST(Validate, SoftmaxFocal) {
  Fixture f;
  LossJob job = f.Job();
  job.targets = f.float_targets.view();
  ExpectInvalid(job, "targets.dtype is float32; class-index targets must be int32, int64 or uint8");

  HostTensor wrong_shape = MakeTensor(DType::kInt64, {4}, {0, 1, 2, 3});
  job = f.Job();
  job.targets = wrong_shape.view();
  ExpectInvalid(job, "targets.shape is [4]; logits [3, 5] need targets [3]");

  HostTensor flat = MakeTensor(DType::kFloat32, {5}, std::vector<double>(5, 0));
  job = f.Job();
  job.logits = flat.view();
  ExpectInvalid(job, "logits.shape is [5]; class-index targets need logits [N, C, d1..dk]");

  HostTensor out_of_range = MakeTensor(DType::kInt64, {3}, {0, 7, 2});
  job = f.Job();
  job.targets = out_of_range.view();
  ExpectInvalid(job, "targets[1] is 7; must be in [0, 4]");

  HostTensor negative = MakeTensor(DType::kInt32, {3}, {0, 1, -3});
  SoftmaxFocalParams ignoring;
  ignoring.ignore_index = -100;
  job = f.Job(ignoring);
  job.targets = negative.view();
  ExpectInvalid(job, "targets[2] is -3; must be in [0, 4] or ignore_index -100");

  SoftmaxFocalParams p;
  p.alpha = {1, 1, 1};
  ExpectInvalid(f.Job(p), "loss.alpha has 3 values; logits have 5 classes");
  p.alpha = {1, -1, 1, 1, 1};
  ExpectInvalid(f.Job(p), "loss.alpha[1] is -1; must be in [0, 10000]");
  p = {};
  p.gamma = -0.5;
  ExpectInvalid(f.Job(p), "loss.gamma is -0.5; must be in [0, 1000]");
  p.gamma = std::numeric_limits<double>::quiet_NaN();
  ExpectInvalid(f.Job(p), "loss.gamma is nan");
  p = {};
  p.label_smoothing = 1.0;
  ExpectInvalid(f.Job(p), "loss.label_smoothing is 1; must be in [0, 1)");
  p.label_smoothing = -0.1;
  ExpectInvalid(f.Job(p), "loss.label_smoothing is -0.1");
}

TEST(Validate, SigmoidFocal) {
  Fixture f;
  SigmoidFocalParams p;
  p.alpha = 1.5;
  LossJob job = f.Job(p);
  job.targets = f.float_targets.view();
  ExpectInvalid(job, "loss.alpha is 1.5; must be in [0, 1], or negative to disable");

  p = {};
  p.smoothing_classes = 1;
  ExpectInvalid(f.Job(p), "loss.smoothing_classes is 1; must be >= 2");

  HostTensor other_shape = MakeTensor(DType::kFloat32, {3, 4}, std::vector<double>(12, 0));
  job = f.Job(SigmoidFocalParams{});
  job.targets = other_shape.view();
  ExpectInvalid(job, "targets.shape is [3, 4]; must equal logits.shape [3, 5]");

  p = {};
  p.ignore_index = -1;
  job = f.Job(p);
  job.targets = f.float_targets.view();
  ExpectInvalid(job, "loss.ignore_index needs class-index targets");

  HostTensor beyond_background = MakeTensor(DType::kInt64, {3}, {0, 6, 5});
  job = f.Job(SigmoidFocalParams{});
  job.targets = beyond_background.view();
  ExpectInvalid(job, "targets[1] is 6; must be in [0, 5]");  // 5 = C is the background
}

TEST(Validate, FocalCosineAndDynamicFocal) {
  Fixture f;
  HostTensor cube = MakeTensor(DType::kFloat32, {3, 5, 2}, std::vector<double>(30, 1));
  HostTensor cube_targets = MakeTensor(DType::kInt64, {3, 2}, std::vector<double>(6, 1));
  LossJob job = f.Job(FocalCosineParams{});
  job.logits = cube.view();
  job.targets = cube_targets.view();
  ExpectInvalid(job, "focal_cosine needs logits [N, C]");
  ExpectInvalid(f.Job(FocalCosineParams{1, 2, -1}), "loss.xent is -1");

  HostTensor counts_wrong = MakeTensor(DType::kFloat32, {2}, {1, 2});
  job = f.Job(DynamicFocalParams{});
  job.targets = f.float_targets.view();
  job.num_objects = counts_wrong.view();
  ExpectInvalid(job, "num_objects.shape is [2]; must be [3]");

  HostTensor counts_negative = MakeTensor(DType::kFloat32, {3}, {1, -2, 1});
  job.num_objects = counts_negative.view();
  ExpectInvalid(job, "num_objects[1] is -2; must be finite and >= 0");

  HostTensor counts_zero = MakeTensor(DType::kFloat32, {3}, {0, 0, 0});
  job.num_objects = counts_zero.view();
  ExpectInvalid(job, "num_objects has mean 0");

  job = f.Job();
  job.num_objects = counts_zero.view();
  ExpectInvalid(job, "num_objects is only used by dynamic_focal");
}

TEST(Validate, GradientOutputAndNormalizer) {
  Fixture f;
  LossJob job = f.Job();
  job.output_dtype = DType::kFloat16;
  ExpectInvalid(job, "gradient_dtype is float16; must be the logits' dtype (float32) or float32");

  HostTensor per_item = MakeTensor(DType::kFloat32, {3}, {1, 2, 3});
  job = f.Job();
  job.grad_output = per_item.view();
  ExpectInvalid(job, "grad_output.shape is [3]; a reduced loss takes a scalar upstream gradient");

  HostTensor wrong_items = MakeTensor(DType::kFloat32, {3, 5}, std::vector<double>(15, 1));
  job = f.Job();
  job.spec.reduction = Reduction::kNone;
  job.grad_output = wrong_items.view();
  ExpectInvalid(job, "grad_output.shape is [3, 5]; reduction NONE needs the per-item loss shape [3]");

  HostTensor nan_items = MakeTensor(DType::kFloat32, {3}, {1, std::nan(""), 3});
  job.grad_output = nan_items.view();
  ExpectInvalid(job, "grad_output[1] is not finite");

  job = f.Job();
  job.grad_output = std::numeric_limits<double>::infinity();
  ExpectInvalid(job, "grad_output is inf; must be finite");

  job = f.Job();
  job.spec.normalizer = 0.0;
  ExpectInvalid(job, "loss.normalizer is 0; must be in [1e-06, 1e+15]");
}

}  // namespace
}  // namespace focal

namespace focal {
namespace {

// "No ignore_index" is its own state: INT64_MIN is a target like any other, out of range,
// unless the request names it as its ignore_index.
TEST(Validate, Int64MinIsNotAnImplicitIgnoreIndex) {
  constexpr int64_t kMin = std::numeric_limits<int64_t>::min();
  const HostTensor logits = MakeTensor(DType::kFloat32, {3, 5}, testing::RandomNormal(15, 1, 2));
  const HostTensor targets = MakeTensor(DType::kInt64, {3}, {0, 1, 2});
  HostTensor with_min = targets;
  std::memcpy(with_min.bytes.data() + sizeof(int64_t), &kMin, sizeof kMin);
  SigmoidFocalParams sigmoid;
  for (const VariantParams& params : {VariantParams{SoftmaxFocalParams{}}, VariantParams{sigmoid},
                                      VariantParams{FocalCosineParams{}}}) {
    SCOPED_TRACE(VariantName(params));
    LossJob job;
    job.spec.params = params;
    job.logits = logits.view();
    job.targets = with_min.view();
    job.compute_gradient = true;
    ExpectInvalid(job, "targets[1] is -9223372036854775808; must be in [0, ");
  }
  SoftmaxFocalParams named;
  named.ignore_index = kMin;
  LossJob job;
  job.spec.params = named;
  job.logits = logits.view();
  job.targets = with_min.view();
  job.compute_gradient = true;
  const auto result = CpuBackend().Compute(job);
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_EQ(result->count, 2);
  const std::vector<double> grad = testing::Values(result->gradient->view());
  for (int c = 0; c < 5; ++c) EXPECT_EQ(grad[5 + c], 0.0) << "the ignored row has no gradient";
}

// Parameters float32 kernels cannot carry are refused by name (ParameterLimits); at the limits
// every variant still answers finite losses and gradients for logits at ±1e4.
TEST(Validate, ParametersBeyondWhatFloat32CarriesAreRefusedByName) {
  Fixture f;
  const double huge = 1e308, tiny = 5e-324;
  SoftmaxFocalParams softmax;
  softmax.gamma = huge;
  ExpectInvalid(f.Job(softmax), "loss.gamma is 1e+308; must be in [0, 1000]");
  softmax.gamma = 2;
  softmax.alpha = {1, 1, 3e38f, 1, 1};
  ExpectInvalid(f.Job(softmax), "loss.alpha[2] is 3e+38; must be in [0, 10000]");
  FocalCosineParams cosine;
  cosine.alpha = -huge;
  ExpectInvalid(f.Job(cosine), "loss.alpha is -1e+308; must be in [-10000, 10000]");
  cosine.alpha = 1;
  cosine.xent = huge;
  ExpectInvalid(f.Job(cosine), "loss.xent is 1e+308; must be in [0, 10000]");
  DynamicFocalParams dynamic;
  dynamic.gamma = 1001;
  LossJob job = f.Job(dynamic);
  job.targets = f.float_targets.view();
  ExpectInvalid(job, "loss.gamma is 1001; must be in [0, 1000]");
  job = f.Job();
  job.spec.normalizer = tiny;
  ExpectInvalid(job, "loss.normalizer is 4.94066e-324; must be in [1e-06, 1e+15]");
  job = f.Job();
  job.grad_output = huge;
  ExpectInvalid(job, "grad_output is 1e+308; |grad_output| must be at most 1e+08");
  job = f.Job();
  job.spec.reduction = Reduction::kNone;
  const HostTensor upstream = MakeTensor(DType::kFloat64, {3}, {1, -2e8, 1});
  job.grad_output = upstream.view();
  ExpectInvalid(job, "grad_output[1] is -2e+08; |grad_output| must be at most 1e+08");
  const HostTensor num_objects = MakeTensor(DType::kFloat64, {3}, {1e308, 1e308, 1});
  job = f.Job(DynamicFocalParams{});
  job.targets = f.float_targets.view();
  job.num_objects = num_objects.view();
  ExpectInvalid(job, "num_objects sums to more than float64 can hold");

  // Every bound at once, at its limit, with the most extreme logits: finite.
  const HostTensor logits = MakeTensor(DType::kFloat32, {4, 5}, {1e4, -1e4, 0, 88, -88, -1e4, 1e4, 100, -100, 0, 0, 0,
                                                                0, 0, 0, 3, -3, 1e4, -1e4, 50});
  const HostTensor classes = MakeTensor(DType::kInt64, {4}, {1, 0, 4, 2});
  const HostTensor floats = MakeTensor(DType::kFloat32, {4, 5}, std::vector<double>{1, 0, 1, 0, 1, 0, 1, 0, 1, 0,
                                                                                    1, 1, 0, 0, 1, 0, 1, 0, 1, 1});
  SoftmaxFocalParams s;
  s.alpha.assign(5, static_cast<float>(ParameterLimits::kMaxWeight));
  SigmoidFocalParams g;
  FocalCosineParams c;
  c.alpha = -ParameterLimits::kMaxWeight;
  c.xent = ParameterLimits::kMaxWeight;
  for (double gamma : {0.0, 0.5, ParameterLimits::kMaxGamma}) {
    s.gamma = g.gamma = c.gamma = gamma;
    DynamicFocalParams d;
    d.gamma = gamma;
    for (const VariantParams& params : {VariantParams{s}, VariantParams{g}, VariantParams{c}, VariantParams{d}}) {
      SCOPED_TRACE(::testing::Message() << VariantName(params) << " gamma " << gamma);
      LossJob extreme;
      extreme.spec.params = params;
      extreme.spec.normalizer = ParameterLimits::kMinNormalizer;
      extreme.logits = logits.view();
      const bool float_targets = std::holds_alternative<DynamicFocalParams>(params) ||
                                 std::holds_alternative<SigmoidFocalParams>(params);
      extreme.targets = float_targets ? floats.view() : classes.view();
      extreme.compute_gradient = true;
      extreme.grad_output = ParameterLimits::kMaxGradOutput;
      const auto result = CpuBackend().Compute(extreme);
      ASSERT_TRUE(result.ok()) << result.status();
      EXPECT_TRUE(std::isfinite(result->loss)) << result->loss;
      for (double v : testing::Values(result->gradient->view())) ASSERT_TRUE(std::isfinite(v)) << v;
    }
  }
}

TEST(Validate, CatalogueParameters) {
  Fixture f;
  auto float_job = [&](VariantParams params) {
    LossJob job = f.Job(std::move(params));
    job.targets = f.float_targets.view();
    return job;
  };
  AsymmetricParams asl;
  asl.gamma_neg = -1;
  ExpectInvalid(float_job(asl), "loss.gamma_neg is -1; must be in [0, 1000]");
  asl = {};
  asl.gamma_pos = 1e308;
  ExpectInvalid(float_job(asl), "loss.gamma_pos is 1e+308; must be in [0, 1000]");
  asl = {};
  asl.clip = 1;
  ExpectInvalid(float_job(asl), "loss.clip is 1; must be in [0, 1)");
  asl = {};
  asl.ignore_index = 3;
  ExpectInvalid(float_job(asl), "loss.ignore_index needs class-index targets");
  QualityFocalParams qfl;
  qfl.beta = 0.5;
  ExpectInvalid(float_job(qfl), "loss.beta is 0.5; must be in [1, 1000]");
  VarifocalParams vfl;
  vfl.alpha = -0.1;
  ExpectInvalid(float_job(vfl), "loss.alpha is -0.1; must be in [0, 10000]");
  vfl = {};
  vfl.gamma = NAN;
  ExpectInvalid(float_job(vfl), "loss.gamma is nan; must be in [0, 1000]");
  LossJob job = f.Job(VarifocalParams{});  // class-index targets: varifocal takes float ones only
  ExpectInvalid(job, "targets.dtype is int64; this variant needs float targets");
  FocalStarParams star;
  star.gamma = 0;
  ExpectInvalid(float_job(star), "loss.gamma is 0; must be in (0, 1000], at least 1e-6");
  star = {};
  star.beta = 1e5;
  ExpectInvalid(float_job(star), "loss.beta is 100000; must be in [-10000, 10000]");
  star = {};
  star.alpha = 2;
  ExpectInvalid(float_job(star), "loss.alpha is 2; must be in [0, 1], or negative");
  HostTensor soft = MakeTensor(DType::kFloat32, {3, 5}, std::vector<double>(15, 0.5));
  job = f.Job(FocalStarParams{});
  job.targets = soft.view();
  ExpectInvalid(job, "targets[0, 0] is 0.5; must be 0 or 1");
  HostTensor above_one = MakeTensor(DType::kFloat32, {3, 5}, std::vector<double>(15, 1.5));
  for (const VariantParams& params : {VariantParams{AsymmetricParams{}}, VariantParams{QualityFocalParams{}},
                                      VariantParams{VarifocalParams{}}}) {
    job = f.Job(params);
    job.targets = above_one.view();
    ExpectInvalid(job, "targets[0, 0] is 1.5; must be in [0, 1]");
  }
}

TEST(Validate, QualityFocalScores) {
  Fixture f;
  LossJob job = f.Job(QualityFocalParams{});
  ExpectInvalid(job, "scores is missing; quality_focal with class-index targets needs the target class's quality");
  const HostTensor scores = MakeTensor(DType::kFloat32, {3}, {0.5, 1, 0});
  job.scores = scores.view();
  EXPECT_TRUE(ValidateJob(job).ok()) << ValidateJob(job).status();
  const HostTensor long_scores = MakeTensor(DType::kFloat32, {4}, {0.5, 1, 0, 1});
  job.scores = long_scores.view();
  ExpectInvalid(job, "scores.shape is [4]; must be [3] (one quality score per row");
  const HostTensor bad_scores = MakeTensor(DType::kFloat32, {3}, {0.5, 1.25, 0});
  job.scores = bad_scores.view();
  ExpectInvalid(job, "scores[1] is 1.25; must be in [0, 1]");
  const HostTensor nan_scores = MakeTensor(DType::kFloat32, {3}, {0.5, NAN, 0});
  job.scores = nan_scores.view();
  ExpectInvalid(job, "scores[1] is nan; must be in [0, 1]");
  const HostTensor int_scores = MakeTensor(DType::kInt64, {3}, {0, 1, 0});
  job.scores = int_scores.view();
  ExpectInvalid(job, "scores.dtype is int64; expected float32");
  job = f.Job(QualityFocalParams{});
  job.targets = f.float_targets.view();
  job.scores = scores.view();
  ExpectInvalid(job, "scores is set, but the targets are float quality scores already");
  job = f.Job(SoftmaxFocalParams{});
  job.scores = scores.view();
  ExpectInvalid(job, "scores is only used by quality_focal (with class-index targets)");
}

TEST(Validate, Weights) {
  Fixture f;
  LossJob job = f.Job();
  const HostTensor weights = MakeTensor(DType::kFloat32, {3}, {1, 0, 2.5});
  job.weights = weights.view();
  EXPECT_TRUE(CpuBackend().Compute(job).ok());
  const HostTensor per_element = MakeTensor(DType::kFloat32, {3, 5}, std::vector<double>(15, 1));
  job.weights = per_element.view();
  ExpectInvalid(job, "weights.shape is [3, 5]; must be [3] (one weight per item: the shape of the NONE losses)");
  job = f.Job(SigmoidFocalParams{});
  job.targets = f.float_targets.view();
  job.weights = weights.view();
  ExpectInvalid(job, "weights.shape is [3]; must be [3, 5]");
  job.weights = per_element.view();
  EXPECT_TRUE(CpuBackend().Compute(job).ok());
  job = f.Job();
  const HostTensor negative = MakeTensor(DType::kFloat64, {3}, {1, -0.5, 2});
  job.weights = negative.view();
  ExpectInvalid(job, "weights[1] is -0.5; must be finite, >= 0 and at most 10000");
  const HostTensor infinite = MakeTensor(DType::kFloat16, {3}, {1, 1, INFINITY});
  job.weights = infinite.view();
  ExpectInvalid(job, "weights[2] is inf; must be finite");
  const HostTensor nan = MakeTensor(DType::kBFloat16, {3}, {NAN, 1, 1});
  job.weights = nan.view();
  ExpectInvalid(job, "weights[0] is nan; must be finite");
  const HostTensor huge = MakeTensor(DType::kFloat32, {3}, {1, 1, 1e5});
  job.weights = huge.view();
  ExpectInvalid(job, "weights[2] is 100000; must be finite, >= 0 and at most 10000");
  const HostTensor ints = MakeTensor(DType::kInt32, {3}, {1, 1, 1});
  job.weights = ints.view();
  ExpectInvalid(job, "weights.dtype is int32; expected float32");
}

TEST(Validate, DistributionFocal) {
  Fixture f;
  const HostTensor distances = MakeTensor(DType::kFloat32, {3}, {0, 4, 2.5});
  LossJob job = f.Job(DistributionFocalParams{});
  job.targets = distances.view();
  EXPECT_TRUE(CpuBackend().Compute(job).ok()) << CpuBackend().Compute(job).status();
  ExpectInvalid(f.Job(DistributionFocalParams{}), "targets.dtype is int64; distribution_focal needs float targets");
  const HostTensor beyond = MakeTensor(DType::kFloat32, {3}, {0, 4.5, 2});
  job.targets = beyond.view();
  ExpectInvalid(job, "targets[1] is 4.5; must be in [0, 4]");
  const HostTensor negative = MakeTensor(DType::kFloat64, {3}, {0, 1, -0.25});
  job.targets = negative.view();
  ExpectInvalid(job, "targets[2] is -0.25; must be in [0, 4]");
  const HostTensor nan = MakeTensor(DType::kFloat32, {3}, {NAN, 1, 1});
  job.targets = nan.view();
  ExpectInvalid(job, "targets[0] is nan; must be in [0, 4]");
  // A float64 distance just above B-1 that float32 would round into range.
  const HostTensor barely = MakeTensor(DType::kFloat64, {3}, {0, 4.0000001, 1});
  job.targets = barely.view();
  ExpectInvalid(job, "targets[1] is 4; must be in [0, 4]");
  job.targets = f.float_targets.view();
  ExpectInvalid(job, "targets.shape is [3, 5]; logits [3, 5] need targets [3]");
  const int64_t too_many = ParameterLimits::kMaxDistributionBins + 1;
  const HostTensor wide = HostTensor::Allocate(DType::kFloat32, {1, too_many}, too_many);
  const HostTensor one_distance = MakeTensor(DType::kFloat32, {1}, {3});
  job.logits = wide.view();
  job.targets = one_distance.view();
  ExpectInvalid(job, "logits.shape[1] is 16777217; distribution_focal needs B >= 2 bins");
  const HostTensor one_bin = MakeTensor(DType::kFloat32, {3, 1}, {0, 0, 0});
  job.logits = one_bin.view();
  job.targets = distances.view();
  ExpectInvalid(job, "logits.shape[1] is 1; distribution_focal needs B >= 2 bins");
  const HostTensor flat = MakeTensor(DType::kFloat32, {3}, {0, 0, 0});
  job.logits = flat.view();
  ExpectInvalid(job, "logits.shape is [3]; distribution_focal needs logits [N, B, d1..dk] with B >= 2 bins");
}

TEST(Validate, CatalogueIsFiniteAtItsLimits) {
  // Parameters at their bounds with the largest float32 logits: every loss and gradient finite.
  const double big = 3.4e38;
  const HostTensor logits = MakeTensor(DType::kFloat32, {4, 5}, {big, -big, 0, 88, -88, -1e4, 1e4, 100, -100, 0, 0,
                                                                0, 0, 0, 0, 3, -3, 1e4, -1e4, 50});
  const HostTensor hard = MakeTensor(DType::kFloat32, {4, 5}, std::vector<double>{1, 0, 1, 0, 1, 0, 1, 0, 1, 0,
                                                                                  1, 1, 0, 0, 1, 0, 1, 0, 1, 1});
  const HostTensor quality = MakeTensor(DType::kFloat32, {4, 5}, std::vector<double>{1, 0, 0.5, 0, 1, 0, 0.25, 0, 1, 0,
                                                                                     1, 0.75, 0, 0, 1, 0, 1, 0, 1, 1});
  const HostTensor distances = MakeTensor(DType::kFloat32, {4}, {0, 4, 2.5, 3});
  const HostTensor weights = MakeTensor(DType::kFloat32, {4, 5}, std::vector<double>(20, ParameterLimits::kMaxWeight));
  const double max_gamma = ParameterLimits::kMaxGamma;
  const std::vector<std::pair<VariantParams, const HostTensor*>> cases = {
      {AsymmetricParams{max_gamma, max_gamma, 0.999, std::nullopt}, &quality},
      {AsymmetricParams{0, 0.5, 0, std::nullopt}, &quality},
      {QualityFocalParams{max_gamma, std::nullopt}, &quality},
      {QualityFocalParams{1, std::nullopt}, &quality},
      {VarifocalParams{ParameterLimits::kMaxWeight, max_gamma, true}, &quality},
      {VarifocalParams{ParameterLimits::kMaxWeight, 0.5, false}, &quality},
      {FocalStarParams{ParameterLimits::kMinStarGamma, ParameterLimits::kMaxShift, 0.25, std::nullopt}, &hard},
      {FocalStarParams{ParameterLimits::kMinStarGamma, -ParameterLimits::kMaxShift, -1, std::nullopt}, &hard},
      {FocalStarParams{max_gamma, ParameterLimits::kMaxShift, 1, std::nullopt}, &hard},
      {DistributionFocalParams{}, &distances},
      {AsymmetricParams{0, 4, 1e-8, std::nullopt}, &quality},  // p - m rounds to 1 for x ≳ 17
      {AsymmetricParams{1, 0.5, 1e-8, std::nullopt}, &hard},
  };
  for (const auto& [params, targets] : cases) {
    SCOPED_TRACE(VariantName(params));
    for (Reduction reduction : {Reduction::kMean, Reduction::kNone}) {
      LossJob job;
      job.spec.params = params;
      job.spec.reduction = reduction;
      job.logits = logits.view();
      job.targets = targets->view();
      if (!std::holds_alternative<DistributionFocalParams>(params)) job.weights = weights.view();
      job.compute_gradient = true;
      job.grad_output = ParameterLimits::kMaxGradOutput;
      const auto result = CpuBackend().Compute(job);
      ASSERT_TRUE(result.ok()) << result.status();
      EXPECT_TRUE(std::isfinite(result->loss)) << result->loss;
      for (double v : testing::Values(result->gradient->view())) ASSERT_TRUE(std::isfinite(v)) << v;
      if (result->losses) {
        for (double v : testing::Values(result->losses->view())) ASSERT_TRUE(std::isfinite(v)) << v;
      }
    }
  }
}

TEST(Validate, GammaScheduleIsFiniteWithGammaZeroOnSaturatedRows) {
  // γ = 0 beside a schedule: rows at p_y = 1 (1-p_y = 0) take γ = 0, and 0^0 is 1, not NaN.
  const HostTensor logits = MakeTensor(DType::kFloat32, {3, 2}, {1e4, -1e4, -1e4, 1e4, 3, -3});
  const HostTensor classes = MakeTensor(DType::kInt64, {3}, {0, 0, 1});
  const HostTensor single = MakeTensor(DType::kFloat32, {2, 1}, {0, 5});
  const HostTensor zeros = MakeTensor(DType::kInt64, {2}, {0, 0});
  SoftmaxFocalParams p;
  p.gamma = 0;
  p.gamma_schedule = {{0.2, 5}};
  p.poly_epsilon = 1;
  for (const auto& [x, y] : {std::pair{&logits, &classes}, std::pair{&single, &zeros}}) {
    LossJob job;
    job.spec.params = p;
    job.spec.reduction = Reduction::kNone;
    job.logits = x->view();
    job.targets = y->view();
    job.compute_gradient = true;
    const auto result = CpuBackend().Compute(job);
    ASSERT_TRUE(result.ok()) << result.status();
    for (double v : testing::Values(result->losses->view())) EXPECT_TRUE(std::isfinite(v)) << v;
    for (double v : testing::Values(result->gradient->view())) EXPECT_TRUE(std::isfinite(v)) << v;
  }
}

TEST(Validate, SharedOptions) {
  Fixture f;
  SoftmaxFocalParams softmax;
  softmax.poly_epsilon = -1.5;
  ExpectInvalid(f.Job(softmax), "loss.poly_epsilon is -1.5; must be in [-1, 10000]");
  softmax = {};
  softmax.poly_epsilon = 1;
  softmax.label_smoothing = 0.1;
  ExpectInvalid(f.Job(softmax), "loss.poly_epsilon is set with loss.label_smoothing");
  softmax = {};
  softmax.class_counts = {1, 2, 3, 4, 5};
  softmax.alpha = {1, 1, 1, 1, 1};
  ExpectInvalid(f.Job(softmax), "loss.class_counts and loss.alpha are both set");
  softmax.alpha.clear();
  EXPECT_TRUE(CpuBackend().Compute(f.Job(softmax)).ok());
  softmax.class_counts = {1, 2, 3};
  ExpectInvalid(f.Job(softmax), "loss.class_counts has 3 values; logits have 5 classes (one value per class)");
  softmax.class_counts = {1, 2, -3, 4, 5};
  ExpectInvalid(f.Job(softmax), "loss.class_counts[2] is -3; must be a whole number in [0, 2^53]");
  softmax.class_counts = {1, 2, NAN, 4, 5};
  ExpectInvalid(f.Job(softmax), "loss.class_counts[2] is nan");
  softmax.class_counts = {1, 2, 1e-310, 4, 5};  // 1-β^n would round to 0: α = ∞
  ExpectInvalid(f.Job(softmax), "loss.class_counts[2] is 1e-310; must be a whole number");
  softmax.class_counts = {1, 2, 3, 4, 5};
  softmax.class_balance_beta = 1;
  ExpectInvalid(f.Job(softmax), "loss.class_balance_beta is 1; must be in [0, 1)");
  softmax = {};
  softmax.gamma_schedule = {{0.5, 2}, {0.2, 5}};
  ExpectInvalid(f.Job(softmax), "loss.gamma_schedule[1].threshold is 0.2; thresholds must increase (above 0.5)");
  softmax.gamma_schedule = {{0, 2}};
  ExpectInvalid(f.Job(softmax), "loss.gamma_schedule[0].threshold is 0; thresholds must increase from above 0");
  softmax.gamma_schedule = {{1.5, 2}};
  ExpectInvalid(f.Job(softmax), "loss.gamma_schedule[0].threshold is 1.5");
  softmax.gamma_schedule = {{0.2, 1e308}};
  ExpectInvalid(f.Job(softmax), "loss.gamma_schedule[0].gamma is 1e+308; must be in [0, 1000]");
  softmax.gamma_schedule = {{0.2, NAN}};
  ExpectInvalid(f.Job(softmax), "loss.gamma_schedule[0].gamma is nan");
  softmax.gamma_schedule.clear();
  for (int i = 1; i <= 9; ++i) softmax.gamma_schedule.push_back({i / 10.0, 1});
  ExpectInvalid(f.Job(softmax), "loss.gamma_schedule has 9 steps; at most 8");
  softmax.gamma_schedule = {{0.2, 5}};
  softmax.label_smoothing = 0.1;
  ExpectInvalid(f.Job(softmax), "loss.gamma_schedule is set with loss.label_smoothing");
  softmax.label_smoothing = 0;
  EXPECT_TRUE(CpuBackend().Compute(f.Job(softmax)).ok());

  SigmoidFocalParams sigmoid;
  sigmoid.poly_epsilon = 1e5;
  LossJob job = f.Job(sigmoid);
  job.targets = f.float_targets.view();
  ExpectInvalid(job, "loss.poly_epsilon is 100000; must be in [-1, 10000]");
  sigmoid.poly_epsilon = 1;
  sigmoid.input = SigmoidInput::kProbabilities;
  HostTensor probabilities = MakeTensor(DType::kFloat32, {3, 5}, std::vector<double>(15, 0.5));
  job = f.Job(sigmoid);
  job.logits = probabilities.view();
  job.targets = f.float_targets.view();
  ExpectInvalid(job, "loss.poly_epsilon is set with input PROBABILITIES; Poly-1 takes logits");
}

}  // namespace
}  // namespace focal
