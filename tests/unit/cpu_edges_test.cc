// The edges of docs/variants.md on the CPU backend: extreme logits, 16-bit and 64-bit inputs,
// determinism across thread counts, the invariants between variants, non-finite input, empty
// input.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>

#include "focal/validate.h"
#include "kernels/cpu/cpu_backend.h"
#include "tests/unit/reference.h"
#include "tests/unit/test_util.h"

namespace focal {
namespace {

using testing::HostTensor;
using testing::MakeTensor;
using testing::Real;

absl::StatusOr<LossResult> Compute(const LossJob& job, int threads = 0) {
  CpuBackendOptions options{threads};
  options.poison_outputs = true;  // an element a kernel leaves unwritten reads as NaN
  return CpuBackend(options).Compute(job);
}

LossJob MakeJob(LossSpec spec, const HostTensor& logits, const HostTensor& targets,
                Reduction reduction = Reduction::kMean) {
  LossJob job;
  job.spec = std::move(spec);
  job.spec.reduction = reduction;
  job.logits = logits.view();
  job.targets = targets.view();
  job.compute_gradient = true;
  return job;
}

LossSpec Spec(VariantParams params) {
  LossSpec spec;
  spec.params = std::move(params);
  return spec;
}

LossSpec Softmax(double gamma, double smoothing = 0) {
  SoftmaxFocalParams p;
  p.gamma = gamma;
  p.label_smoothing = smoothing;
  return Spec(p);
}
LossSpec Sigmoid(double gamma, double alpha = 0.25, double smoothing = 0) {
  SigmoidFocalParams p;
  p.gamma = gamma;
  p.alpha = alpha;
  p.label_smoothing = smoothing;
  return Spec(p);
}

const std::vector<double> kExtremes = {88, -88, 100, -100, 1e4, -1e4, 0, 3.5, -3.5, 87.5};

bool AllFinite(const std::vector<double>& v) {
  for (double x : v) {
    if (!std::isfinite(x)) return false;
  }
  return true;
}

// ---------------------------------------------------------------------------------------------

TEST(ExtremeLogits, EveryVariantAndGammaStaysFiniteAndCorrect) {
  const int64_t n = 10, c = 10;
  std::vector<double> x(n * c);
  for (int64_t i = 0; i < n * c; ++i) x[i] = kExtremes[(i * 7 + i / c) % kExtremes.size()];
  const HostTensor logits = MakeTensor(DType::kFloat32, {n, c}, x);
  const HostTensor classes = MakeTensor(DType::kInt64, {n}, testing::RandomClasses(n, c, 3));
  const std::vector<double> hard = testing::RandomClasses(n * c, 2, 4);
  const std::vector<double> soft = testing::RandomUniform(n * c, 0, 1, 5);
  const std::vector<Real> xr(x.begin(), x.end());
  std::vector<int64_t> yi;
  for (double v : testing::Values(classes.view())) yi.push_back(static_cast<int64_t>(v));

  for (double gamma : {0.0, 0.5, 1.0, 2.0, 5.0}) {
    SCOPED_TRACE(gamma);
    struct Case {
      const char* name;
      LossSpec spec;
      HostTensor targets;
      testing::RefLosses ref;
    };
    testing::RefSoftmaxParams sp;
    sp.gamma = gamma;
    testing::RefSoftmaxParams sps = sp;
    sps.smoothing = 0.125;
    testing::RefSigmoidParams gp;
    gp.gamma = gamma;
    testing::RefSigmoidParams gps = gp;
    gps.smoothing = 0.125;
    std::vector<Case> cases;
    cases.push_back({"softmax", Softmax(gamma), classes, testing::RefSoftmaxFocal(xr, n, c, 1, yi, sp)});
    cases.push_back({"softmax smoothed", Softmax(gamma, 0.125), classes,
                     testing::RefSoftmaxFocal(xr, n, c, 1, yi, sps)});
    const std::vector<Real> hr(hard.begin(), hard.end()), sr(soft.begin(), soft.end());
    cases.push_back({"sigmoid hard", Sigmoid(gamma), MakeTensor(DType::kFloat32, {n, c}, hard),
                     testing::RefSigmoidFocal(xr, hr, gp)});
    cases.push_back({"sigmoid soft", Sigmoid(gamma), MakeTensor(DType::kFloat32, {n, c}, soft),
                     testing::RefSigmoidFocal(xr, sr, gp)});
    cases.push_back({"sigmoid smoothed", Sigmoid(gamma, 0.25, 0.125),
                     MakeTensor(DType::kFloat32, {n, c}, hard), testing::RefSigmoidFocal(xr, hr, gps)});
    cases.push_back({"sigmoid index", Sigmoid(gamma), classes,
                     testing::RefSigmoidFocalIndex(xr, n, c, 1, yi, std::nullopt, gp)});
    cases.push_back({"focal_cosine", Spec(FocalCosineParams{1.0, gamma, 0.1}), classes,
                     testing::RefFocalCosine(xr, n, c, yi, 1.0, gamma, 0.1)});
    cases.push_back({"dynamic", Spec(DynamicFocalParams{gamma}), MakeTensor(DType::kFloat32, {n, c}, hard),
                     testing::RefDynamicFocal(xr, hr, n, {}, gamma)});
    for (const Case& k : cases) {
      SCOPED_TRACE(k.name);
      const auto r = Compute(MakeJob(k.spec, logits, k.targets, Reduction::kNone));
      ASSERT_TRUE(r.ok()) << r.status();
      const std::vector<double> items = testing::Values(r->losses->view());
      const std::vector<double> grad = testing::Values(r->gradient->view());
      EXPECT_TRUE(std::isfinite(r->loss));
      EXPECT_TRUE(AllFinite(items));
      EXPECT_TRUE(AllFinite(grad));
      double scale = 0;
      for (Real v : k.ref.items) scale = std::max(scale, static_cast<double>(std::fabs(v)));
      for (size_t i = 0; i < items.size(); ++i) {
        const double want = static_cast<double>(k.ref.items[i]);
        // Per-item tolerance as in cpu_backend_test; logits of 1e4 make losses of 1e4 whose
        // float32 rounding alone is 1e-3 absolute, hence the floor relative to the largest.
        EXPECT_LE(std::fabs(items[i] - want), 1e-5 * std::fabs(want) + 1e-6 * scale)
            << "item " << i << " x=" << x[i] << ": " << items[i] << " want " << want;
      }
    }
  }
}

// focal_star's z = γ(2t-1)x + β overflows float32 to ±∞ for |x| near 3.4e38 and γ > 1: the loss
// is still α_t max(-(x_t + β/γ), 0) + log1p(e^-|z|)/γ with e^-|z| = 0, so 0 or α_t |x_t + β/γ|,
// and the gradient -α_t (2t-1) σ(-z) is 0 or -α_t (2t-1) exactly.
TEST(ExtremeLogits, FocalStarWhoseShiftedLogitOverflows) {
  const std::vector<double> x = {3e38, -3e38, 3.4e38, -3.4e38, 2e38, -2e38, 1e38, -1e38};
  const std::vector<double> t = {1, 1, 0, 0, 1, 0, 0, 1};
  const HostTensor logits = MakeTensor(DType::kFloat32, {8}, x), targets = MakeTensor(DType::kFloat32, {8}, t);
  const std::vector<double> stored = testing::Values(logits.view());  // x as float32 holds it
  for (double gamma : {1.0, 2.0, 4.0})
    for (double beta : {0.0, 1.0}) {
      SCOPED_TRACE("γ " + std::to_string(gamma) + " β " + std::to_string(beta));
      const auto r = Compute(MakeJob(Spec(FocalStarParams{gamma, beta, 0.25, std::nullopt}), logits, targets,
                                     Reduction::kNone));
      ASSERT_TRUE(r.ok()) << r.status();
      const std::vector<double> items = testing::Values(r->losses->view());
      const std::vector<double> grad = testing::Values(r->gradient->view());
      for (size_t i = 0; i < x.size(); ++i) {
        const double alpha_t = t[i] == 1 ? 0.25 : 0.75, sign = 2 * t[i] - 1;
        const double x_t = sign * stored[i];
        // |x_t| ≥ 1e38 dwarfs β/γ ≤ 1: the float32 loss is α_t|x_t| rounded, within 2 ulp.
        const double want = x_t > 0 ? 0 : alpha_t * -x_t;
        EXPECT_LE(std::fabs(items[i] - want), 0x1p-22 * want) << "item " << i;
        EXPECT_EQ(grad[i], x_t > 0 ? 0.0 : -alpha_t * sign) << "item " << i;
      }
    }
}

// ---------------------------------------------------------------------------------------------

struct DTypeCase {
  const char* name;
  LossSpec spec;
  Shape shape;
  bool index_targets;
};

std::vector<DTypeCase> DTypeCases() {
  SoftmaxFocalParams smoothed;
  smoothed.label_smoothing = 0.1;
  smoothed.alpha = {0.5f, 1, 2, 1, 0.25f};
  SigmoidFocalParams probabilities;
  probabilities.input = SigmoidInput::kProbabilities;
  return {
      {"softmax [N,C]", Softmax(2), {9, 5}, true},
      {"softmax smoothed [N,C,H,W]", Spec(smoothed), {3, 5, 3, 7}, true},
      {"sigmoid float", Sigmoid(2), {9, 5}, false},
      {"sigmoid index", Sigmoid(2), {4, 5, 11}, true},
      {"sigmoid probabilities", Spec(probabilities), {9, 5}, false},
      {"focal_cosine", Spec(FocalCosineParams{}), {9, 5}, true},
      {"dynamic", Spec(DynamicFocalParams{}), {9, 5}, false},
  };
}

HostTensor TargetsFor(const DTypeCase& k, bool probabilities) {
  const int64_t n = k.shape[0], c = k.shape[1];
  if (k.index_targets) {
    Shape ts{n};
    ts.insert(ts.end(), k.shape.begin() + 2, k.shape.end());
    int64_t count = 1;
    for (int64_t d : ts) count *= d;
    return MakeTensor(DType::kInt64, ts, testing::RandomClasses(count, c, 8));
  }
  int64_t numel = 1;
  for (int64_t d : k.shape) numel *= d;
  return MakeTensor(DType::kFloat32, k.shape, testing::RandomClasses(numel, 2, 9));
  (void)probabilities;
}

std::vector<double> LogitsFor(const DTypeCase& k) {
  int64_t numel = 1;
  for (int64_t d : k.shape) numel *= d;
  const auto* s = std::get_if<SigmoidFocalParams>(&k.spec.params);
  if (s && s->input == SigmoidInput::kProbabilities) return testing::RandomUniform(numel, 0, 1, 10);
  return testing::RandomNormal(numel, 3, 10);
}

TEST(HalfInputs, ComputeInFloat32AndRoundTheOutputToNearestEven) {
  for (const DTypeCase& k : DTypeCases()) {
    for (DType half : {DType::kFloat16, DType::kBFloat16}) {
      SCOPED_TRACE(::testing::Message() << k.name << " " << DTypeName(half));
      for (Reduction reduction : {Reduction::kMean, Reduction::kNone}) {
        const HostTensor narrow = MakeTensor(half, k.shape, LogitsFor(k));
        // The same values, widened exactly, as float32 logits.
        const HostTensor wide = MakeTensor(DType::kFloat32, k.shape, testing::Values(narrow.view()));
        const HostTensor targets = TargetsFor(k, false);
        LossJob as_half = MakeJob(k.spec, narrow, targets, reduction);
        as_half.output_dtype = DType::kFloat32;
        const LossJob as_float = MakeJob(k.spec, wide, targets, reduction);
        LossJob narrow_out = as_half;
        narrow_out.output_dtype = std::nullopt;  // the logits' dtype
        const auto a = Compute(as_half), b = Compute(as_float), c = Compute(narrow_out);
        ASSERT_TRUE(a.ok() && b.ok() && c.ok()) << a.status() << b.status() << c.status();
        // Widening is exact and the arithmetic is float32 either way: bit-identical.
        EXPECT_EQ(a->loss, b->loss);
        ASSERT_EQ(a->gradient->size_bytes(), b->gradient->size_bytes());
        EXPECT_EQ(std::memcmp(a->gradient->data(), b->gradient->data(), a->gradient->size_bytes()), 0);
        // Narrowed on store: each element is the float32 result rounded to nearest even.
        EXPECT_EQ(c->gradient->dtype, half);
        const auto* wide_grad = static_cast<const float*>(b->gradient->data());
        const auto* half_grad = static_cast<const uint16_t*>(c->gradient->data());
        const size_t n = b->gradient->size_bytes() / 4;
        for (size_t i = 0; i < n; ++i) {
          const uint16_t want = half == DType::kFloat16 ? FloatToHalf(wide_grad[i]) : FloatToBFloat16(wide_grad[i]);
          ASSERT_EQ(half_grad[i], want) << "gradient[" << i << "] of " << wide_grad[i];
        }
        if (reduction == Reduction::kNone) {
          const auto* wide_items = static_cast<const float*>(b->losses->data());
          const auto* half_items = static_cast<const uint16_t*>(c->losses->data());
          for (size_t i = 0; i < b->losses->size_bytes() / 4; ++i) {
            const uint16_t want = half == DType::kFloat16 ? FloatToHalf(wide_items[i]) : FloatToBFloat16(wide_items[i]);
            ASSERT_EQ(half_items[i], want) << "losses[" << i << "]";
          }
        }
      }
    }
  }
}

TEST(Float64Inputs, ComputeInDoubleToNearFullPrecision) {
  // float64 logits compute in double (Highway's f64 transcendentals, ≤ 4 ulp): losses within
  // 1e-12 relative of the long-double reference.
  const int64_t n = 6, c = 7;
  const auto x = testing::RandomNormal(n * c, 3, 12);
  const std::vector<double> y = testing::RandomClasses(n, c, 13);
  const HostTensor logits = MakeTensor(DType::kFloat64, {n, c}, x);
  const HostTensor targets = MakeTensor(DType::kInt64, {n}, y);
  std::vector<int64_t> yi(y.begin(), y.end());
  const std::vector<Real> xr(x.begin(), x.end());
  for (double gamma : {0.0, 0.5, 2.0}) {
    testing::RefSoftmaxParams sp;
    sp.gamma = gamma;
    const auto ref = testing::RefSoftmaxFocal(xr, n, c, 1, yi, sp);
    const auto r = Compute(MakeJob(Softmax(gamma), logits, targets, Reduction::kNone));
    ASSERT_TRUE(r.ok());
    EXPECT_EQ(r->gradient->dtype, DType::kFloat64);
    const auto items = testing::Values(r->losses->view());
    for (size_t i = 0; i < items.size(); ++i) {
      EXPECT_NEAR(items[i], static_cast<double>(ref.items[i]), 1e-12 * std::fabs(static_cast<double>(ref.items[i])));
    }
    const auto t = testing::RandomClasses(n * c, 2, 14);
    testing::RefSigmoidParams gp;
    gp.gamma = gamma;
    const auto sref = testing::RefSigmoidFocal(xr, std::vector<Real>(t.begin(), t.end()), gp);
    const auto s = Compute(MakeJob(Sigmoid(gamma), logits, MakeTensor(DType::kFloat64, {n, c}, t), Reduction::kNone));
    ASSERT_TRUE(s.ok());
    const auto sitems = testing::Values(s->losses->view());
    for (size_t i = 0; i < sitems.size(); ++i) {
      EXPECT_NEAR(sitems[i], static_cast<double>(sref.items[i]), 1e-12 * std::fabs(static_cast<double>(sref.items[i])) + 1e-300);
    }
  }
}

// ---------------------------------------------------------------------------------------------

TEST(Determinism, BitIdenticalForAnyThreadCountAndEveryRun) {
  const HostTensor wide = MakeTensor(DType::kFloat32, {3000, 80}, testing::RandomNormal(240000, 3, 15));
  const HostTensor strided = MakeTensor(DType::kFloat32, {2, 19, 64, 67}, testing::RandomNormal(2 * 19 * 64 * 67, 3, 16));
  const HostTensor classes = MakeTensor(DType::kInt64, {3000}, testing::RandomClasses(3000, 80, 17));
  const HostTensor pixel_classes = MakeTensor(DType::kInt32, {2, 64, 67}, testing::RandomClasses(2 * 64 * 67, 19, 18));
  const HostTensor onehot = MakeTensor(DType::kFloat32, {3000, 80}, testing::RandomClasses(240000, 2, 19));
  const std::vector<LossJob> jobs = {
      MakeJob(Softmax(2), wide, classes), MakeJob(Softmax(2, 0.1), wide, classes),
      MakeJob(Softmax(2), strided, pixel_classes), MakeJob(Sigmoid(2), wide, onehot),
      MakeJob(Sigmoid(2), wide, classes), MakeJob(Spec(FocalCosineParams{}), wide, classes),
  };
  for (size_t j = 0; j < jobs.size(); ++j) {
    SCOPED_TRACE(j);
    const auto one = Compute(jobs[j], 1), two = Compute(jobs[j], 2), again = Compute(jobs[j], 2);
    ASSERT_TRUE(one.ok() && two.ok() && again.ok());
    for (const auto* other : {&two, &again}) {
      EXPECT_EQ(std::memcmp(&one->loss, &(*other)->loss, sizeof(double)), 0)
          << one->loss << " vs " << (*other)->loss;
      EXPECT_EQ(std::memcmp(one->gradient->data(), (*other)->gradient->data(), one->gradient->size_bytes()), 0);
    }
  }
}

// Class-index targets load by dtype (int64, int32, uint8: segmentation masks are often bytes),
// each its own way into the kernels' lanes: the same classes and ignored rows give the same
// bits from each, in rows [N, C] and strided [N, C, H, W] (with one-lane tails: W·H = 63), with
// ignore_index 255 on some rows.
TEST(ClassIndexTargets, EveryIntegerDtypeGivesTheSameBits) {
  struct Layout {
    Shape logits, targets;
  };
  const Layout layouts[] = {{{37, 11}, {37}}, {{3, 19, 7, 9}, {3, 7, 9}}};
  SoftmaxFocalParams softmax;
  softmax.ignore_index = 255;
  SoftmaxFocalParams smoothed = softmax;
  smoothed.label_smoothing = 0.1;
  SigmoidFocalParams sigmoid;
  sigmoid.ignore_index = 255;
  AsymmetricParams asymmetric;
  asymmetric.ignore_index = 255;
  const std::pair<LossSpec, bool> specs[] = {{Spec(softmax), false}, {Spec(smoothed), false},
                                             {Spec(sigmoid), true}, {Spec(asymmetric), true}};
  for (const Layout& layout : layouts) {
    int64_t numel = 1, rows = 1;
    for (int64_t d : layout.logits) numel *= d;
    for (int64_t d : layout.targets) rows *= d;
    const int64_t classes = layout.logits[1];
    const HostTensor logits = MakeTensor(DType::kFloat32, layout.logits, testing::RandomNormal(numel, 3, 31));
    for (const auto& [spec, background] : specs) {
      SCOPED_TRACE(::testing::Message() << VariantName(spec.params) << ", " << layout.logits.size() << "-d logits");
      // Classes in [0, C) (and C, the background, where the variant has one); every 5th ignored.
      std::vector<double> y = testing::RandomClasses(rows, classes + (background ? 1 : 0), 32);
      for (size_t i = 2; i < y.size(); i += 5) y[i] = 255;
      std::vector<LossResult> results;
      for (DType dtype : {DType::kInt64, DType::kInt32, DType::kUInt8}) {
        const HostTensor targets = MakeTensor(dtype, layout.targets, y);
        for (Reduction reduction : {Reduction::kMean, Reduction::kNone}) {
          auto result = Compute(MakeJob(spec, logits, targets, reduction));
          ASSERT_TRUE(result.ok()) << DTypeName(dtype) << ": " << result.status();
          results.push_back(std::move(*result));
        }
      }
      for (size_t k = 2; k < results.size(); ++k) {
        const LossResult& want = results[k % 2];  // int64's result of the same reduction
        const LossResult& got = results[k];
        EXPECT_EQ(std::memcmp(&want.loss, &got.loss, sizeof(double)), 0) << k << ": " << want.loss << " vs " << got.loss;
        ASSERT_EQ(want.gradient->size_bytes(), got.gradient->size_bytes());
        EXPECT_EQ(std::memcmp(want.gradient->data(), got.gradient->data(), want.gradient->size_bytes()), 0) << k;
        if (want.losses) {
          EXPECT_EQ(std::memcmp(want.losses->data(), got.losses->data(), want.losses->size_bytes()), 0) << k;
        }
      }
    }
  }
}

// An element's loss and gradient must not depend on whether it fell in a full SIMD vector or in
// the one-lane tail: Evaluate's sums are bit-identical however a dataset is split, and a
// primitive that differs by lane width would break that (AVX-512's approximate reciprocal, say,
// is good to 2^-14 in full vectors and to 2^-12 in the 128-bit ones of the tails). Nor on its
// neighbours: asymmetric skips a term no lane of the vector needs, quality_focal has a form for
// vectors whose targets are all 0, and an element alone takes those paths where in a vector of
// mixed targets it takes the general one; and the float exp takes a shorter path in vectors
// whose arguments are all above -86, where no result can be subnormal. 1024 logits in full
// vectors, then each alone (one lane); then the same with allow_non_finite and infinite logits
// among them (a skipped term is still 0 where the general form would meet 0·∞); then with
// logits from -80 to -129 among them (e^-|x| on both sides of -86, subnormal and underflowing).
TEST(Determinism, AnElementsResultsDoNotDependOnItsLane) {
  constexpr int64_t kN = 1024;
  const std::vector<double> normal = testing::RandomNormal(kN, 4, 21);
  const std::vector<double> t = testing::RandomClasses(kN, 2, 22);
  AsymmetricParams unclipped;
  unclipped.clip = 0;
  const LossSpec specs[] = {Sigmoid(2),
                            Sigmoid(0.5),
                            Spec(FocalStarParams{}),
                            Spec(AsymmetricParams{}),
                            Spec(unclipped),
                            Spec(QualityFocalParams{}),
                            Spec(VarifocalParams{})};
  auto same = [](double a, double b) { return a == b || (std::isnan(a) && std::isnan(b)); };
  enum class Logits { kNormal, kInfinite, kDeeplyNegative };
  for (Logits kind : {Logits::kNormal, Logits::kInfinite, Logits::kDeeplyNegative}) {
    std::vector<double> x = normal;
    const bool non_finite = kind == Logits::kInfinite;
    for (int64_t i = 0; i < kN; i += 7) {
      if (kind == Logits::kInfinite) x[i] = i % 2 ? INFINITY : -INFINITY;
      if (kind == Logits::kDeeplyNegative) x[i] = -80.0 - static_cast<double>(i % 50) - 0.25;
    }
    const HostTensor all_x = MakeTensor(DType::kFloat32, {kN}, x), all_t = MakeTensor(DType::kFloat32, {kN}, t);
    for (const LossSpec& spec : specs) {
      SCOPED_TRACE(std::string(VariantName(spec.params)) + (kind == Logits::kInfinite         ? " with infinite logits"
                                                            : kind == Logits::kDeeplyNegative ? " with logits below -80"
                                                                                               : ""));
      auto job = [&](const HostTensor& logits, const HostTensor& targets) {
        LossJob j = MakeJob(spec, logits, targets, Reduction::kNone);
        j.allow_non_finite = non_finite;
        return j;
      };
      const auto all = Compute(job(all_x, all_t));
      ASSERT_TRUE(all.ok()) << all.status();
      const std::vector<double> losses = testing::Values(all->losses->view());
      const std::vector<double> grad = testing::Values(all->gradient->view());
      int differing = 0;
      for (int64_t i = 0; i < kN; ++i) {
        const HostTensor one_x = MakeTensor(DType::kFloat32, {1}, {x[i]}), one_t = MakeTensor(DType::kFloat32, {1}, {t[i]});
        const auto one = Compute(job(one_x, one_t));
        ASSERT_TRUE(one.ok()) << one.status();
        const double one_loss = testing::Values(one->losses->view())[0];
        const double one_grad = testing::Values(one->gradient->view())[0];
        if (!(same(one_loss, losses[i]) && same(one_grad, grad[i])) && ++differing <= 3) {
          ADD_FAILURE() << "element " << i << " (x = " << x[i] << ", t = " << t[i] << ") alone: loss " << one_loss
                        << " gradient " << one_grad << "; in vectors: loss " << losses[i] << " gradient " << grad[i];
        }
      }
      EXPECT_EQ(differing, 0) << "elements whose results differ alone";
    }
  }
}

// The strided softmax takes a shorter exp for a vector of positions whose classes all span
// less than the exp's normal range, skips the ignored-lane mask where no lane is ignored, and
// reads a vector's classes again when one is not finite: each position's results must be the
// same whatever its neighbours hold. Each position is computed again in a tensor whose every
// position is a copy of it, so that its vectors are all of one kind.
TEST(Determinism, AStridedPositionsResultsDoNotDependOnItsNeighbours) {
  constexpr int64_t kN = 2, kC = 5, kS = 40;
  const std::vector<double> normal = testing::RandomNormal(static_cast<size_t>(kN * kC * kS), 3, 31);
  const std::vector<double> classes = testing::RandomClasses(static_cast<size_t>(kN * kS), kC, 32);
  std::vector<double> x = normal, y = classes;
  auto at = [](int64_t n, int64_t c, int64_t s) { return static_cast<size_t>((n * kC + c) * kS + s); };
  for (int64_t n = 0; n < kN; ++n) {
    for (int64_t s = 0; s < kS; ++s) {
      switch ((n * kS + s) % 7) {
        case 1: x[at(n, 1, s)] = -100; break;  // e below the normal range
        case 2: x[at(n, 3, s)] = -INFINITY; break;  // a masked class
        case 3: y[static_cast<size_t>(n * kS + s)] = -100; break;  // ignored
        case 4: x[at(n, 0, s)] = std::nan(""); break;
        case 5: x[at(n, 2, s)] = INFINITY; break;
        default: break;
      }
    }
  }
  auto same = [](double a, double b) { return a == b || (std::isnan(a) && std::isnan(b)); };
  for (double smoothing : {0.0, 0.1}) {
    for (double gamma : {2.0, 0.5}) {
      SCOPED_TRACE(::testing::Message() << "ε " << smoothing << " γ " << gamma);
      LossSpec spec = Softmax(gamma, smoothing);
      auto& params = std::get<SoftmaxFocalParams>(spec.params);
      params.ignore_index = -100;
      params.alpha = {0.5, 1, 2, 1, 0.25};
      auto run = [&](const std::vector<double>& logits, const std::vector<double>& targets) {
        const HostTensor logits_tensor = MakeTensor(DType::kFloat32, {kN, kC, kS}, logits);
        const HostTensor targets_tensor = MakeTensor(DType::kInt64, {kN, kS}, targets);
        LossJob job = MakeJob(spec, logits_tensor, targets_tensor, Reduction::kNone);
        job.allow_non_finite = true;
        auto r = Compute(job);
        EXPECT_TRUE(r.ok()) << r.status();
        return std::make_pair(testing::Values(r->losses->view()), testing::Values(r->gradient->view()));
      };
      const auto [losses, grad] = run(x, y);
      int differing = 0;
      for (int64_t n = 0; n < kN; ++n) {
        for (int64_t s = 0; s < kS; ++s) {
          std::vector<double> copies(x.size()), targets(y.size(), y[static_cast<size_t>(n * kS + s)]);
          for (int64_t m = 0; m < kN; ++m) {
            for (int64_t c = 0; c < kC; ++c) {
              for (int64_t t = 0; t < kS; ++t) copies[at(m, c, t)] = x[at(n, c, s)];
            }
          }
          const auto [one_losses, one_grad] = run(copies, targets);
          bool agree = same(one_losses[static_cast<size_t>(n * kS + s)], losses[static_cast<size_t>(n * kS + s)]);
          for (int64_t c = 0; c < kC; ++c) agree = agree && same(one_grad[at(n, c, s)], grad[at(n, c, s)]);
          if (!agree && ++differing <= 3) ADD_FAILURE() << "position n " << n << " s " << s << " differs alone";
        }
      }
      EXPECT_EQ(differing, 0) << "positions whose results differ among copies of themselves";
    }
  }
}

// Float32 gradients of 16 MiB and more are written by streaming stores where their vectors
// fall on aligned addresses, and by cached stores elsewhere: the results, the loss sum
// included, must not depend on where the gradient lies. Each job writes into a buffer at
// offsets of 0 (aligned for every target: streamed), 4, 16 and 32 bytes from a 64-byte
// boundary, and is compared with the same job in a buffer of the backend's own.
TEST(Determinism, ResultsDoNotDependOnTheGradientsAddress) {
  constexpr int64_t kC = 2, kS = (int64_t{1} << 20) + 48;  // 2 x 2 x kS floats: over 16 MiB
  std::vector<double> x = testing::RandomNormal(static_cast<size_t>(2 * kC * kS), 3, 41);
  std::vector<double> y = testing::RandomClasses(static_cast<size_t>(2 * kS), kC, 42);
  for (int64_t s = 5; s < 2 * kS; s += 97) y[static_cast<size_t>(s)] = -100;  // ignored
  for (int64_t s = 11; s < 2 * kC * kS; s += 1013) x[static_cast<size_t>(s)] = std::nan("");
  const std::vector<double> hard = testing::RandomClasses(x.size(), 2, 43);
  LossSpec softmax = Softmax(2);
  std::get<SoftmaxFocalParams>(softmax.params).ignore_index = -100;
  const HostTensor strided_logits = MakeTensor(DType::kFloat32, {2, kC, kS}, x);
  const HostTensor strided_targets = MakeTensor(DType::kInt64, {2, kS}, y);
  const HostTensor flat_logits = MakeTensor(DType::kFloat32, {2 * kC * kS}, x);
  const HostTensor flat_targets = MakeTensor(DType::kFloat32, {2 * kC * kS}, hard);
  struct Case {
    const char* name;
    LossSpec spec;
    const HostTensor& logits;
    const HostTensor& targets;
  };
  const Case cases[] = {{"softmax_focal [N, C, S]", softmax, strided_logits, strided_targets},
                        {"sigmoid_focal", Sigmoid(2), flat_logits, flat_targets}};
  const size_t bytes = x.size() * sizeof(float);
  std::vector<char> storage(bytes + 128);
  char* const aligned = storage.data() + (64 - reinterpret_cast<uintptr_t>(storage.data()) % 64) % 64;
  for (const Case& c : cases) {
    SCOPED_TRACE(c.name);
    auto job = [&](void* into) {
      LossJob j = MakeJob(c.spec, c.logits, c.targets, Reduction::kNone);
      j.allow_non_finite = true;
      j.gradient_into = into;
      j.gradient_into_bytes = into ? bytes : 0;
      return j;
    };
    const auto own = Compute(job(nullptr));
    ASSERT_TRUE(own.ok()) << own.status();
    const std::vector<double> own_losses = testing::Values(own->losses->view());
    const char* const own_grad = static_cast<const char*>(own->gradient->view().data);
    for (size_t offset : {0, 4, 16, 32}) {
      SCOPED_TRACE(::testing::Message() << "gradient at " << offset << " bytes past a 64-byte boundary");
      const auto r = Compute(job(aligned + offset));
      ASSERT_TRUE(r.ok()) << r.status();
      ASSERT_TRUE(r->gradient_in_place);
      EXPECT_EQ(std::memcmp(aligned + offset, own_grad, bytes), 0) << "gradients differ";
      EXPECT_EQ(std::memcmp(&r->loss, &own->loss, sizeof(double)), 0) << r->loss << " against " << own->loss;
      const std::vector<double> losses = testing::Values(r->losses->view());
      int64_t differing = 0;
      for (size_t i = 0; i < losses.size(); ++i) {
        differing += !(losses[i] == own_losses[i] || (std::isnan(losses[i]) && std::isnan(own_losses[i])));
      }
      EXPECT_EQ(differing, 0) << "per-item losses that differ";
    }
  }
}

// The elementwise kernels run a training step's usual job (a reduction with a gradient, no
// per-item weights, NaN not propagated) in a loop compiled without the tests of those options;
// the same job through the general loop (allow_non_finite on finite logits, or weights of 1)
// must give the same bits, for float targets and class indices, rows and strided.
TEST(Determinism, APlainJobsResultsAreTheGeneralLoopsBits) {
  constexpr int64_t kN = 5, kC = 201;  // 1005 elements: whole vectors and a tail on every target
  const size_t count = static_cast<size_t>(kN * kC);
  const std::vector<double> x = testing::RandomNormal(count, 3, 51);
  const std::vector<double> hard = testing::RandomClasses(count, 2, 52);
  std::vector<double> soft = testing::RandomUniform(count, 0, 1, 53);
  for (size_t i = 0; i < count; i += 3) soft[i] = 0;  // quality and IoU targets: mostly 0
  const std::vector<double> classes = testing::RandomClasses(kN, kC + 1, 54);  // C: background
  AsymmetricParams unclipped;
  unclipped.clip = 0;
  const HostTensor row_logits = MakeTensor(DType::kFloat32, {kN, kC}, x);
  const HostTensor strided_logits = MakeTensor(DType::kFloat32, {1, 3, 335}, x);
  const HostTensor hard_targets = MakeTensor(DType::kFloat32, {kN, kC}, hard);
  const HostTensor soft_targets = MakeTensor(DType::kFloat32, {kN, kC}, soft);
  const HostTensor row_classes = MakeTensor(DType::kInt64, {kN}, classes);
  const HostTensor strided_classes =
      MakeTensor(DType::kInt64, {1, 335}, testing::RandomClasses(335, 4, 55));  // 3: background
  struct Case {
    const char* targets_kind;
    LossSpec spec;
    const HostTensor& logits;
    const HostTensor& targets;
  };
  const Case cases[] = {{"hard", Sigmoid(2), row_logits, hard_targets},
                        {"hard", Sigmoid(0.5), row_logits, hard_targets},
                        {"hard", Sigmoid(2, 0.25, 0.1), row_logits, hard_targets},
                        {"hard", Spec(DynamicFocalParams{}), row_logits, hard_targets},
                        {"hard", Spec(FocalStarParams{}), row_logits, hard_targets},
                        {"hard", Spec(AsymmetricParams{}), row_logits, hard_targets},
                        {"soft", Spec(AsymmetricParams{}), row_logits, soft_targets},
                        {"hard", Spec(unclipped), row_logits, hard_targets},
                        {"soft", Spec(QualityFocalParams{}), row_logits, soft_targets},
                        {"soft", Spec(VarifocalParams{}), row_logits, soft_targets},
                        {"class indices", Sigmoid(2), row_logits, row_classes},
                        {"class indices", Spec(FocalStarParams{}), row_logits, row_classes},
                        {"strided class indices", Sigmoid(2), strided_logits, strided_classes},
                        {"strided class indices", Spec(FocalStarParams{}), strided_logits, strided_classes}};
  for (const Case& c : cases) {
    SCOPED_TRACE(std::string(VariantName(c.spec.params)) + ", " + c.targets_kind + " targets");
    for (Reduction reduction : {Reduction::kMean, Reduction::kSum}) {
      const LossJob plain = MakeJob(c.spec, c.logits, c.targets, reduction);
      const auto expected = Compute(plain);
      ASSERT_TRUE(expected.ok()) << expected.status();
      const absl::StatusOr<JobPlan> plan = ValidateJob(plain);
      ASSERT_TRUE(plan.ok()) << plan.status();
      const HostTensor ones =
          MakeTensor(DType::kFloat32, plan->item_shape, std::vector<double>(static_cast<size_t>(plan->num_items), 1.0));
      LossJob non_finite_allowed = plain;
      non_finite_allowed.allow_non_finite = true;
      LossJob weighted = plain;
      weighted.weights = ones.view();
      for (const LossJob& general : {non_finite_allowed, weighted}) {
        SCOPED_TRACE(general.allow_non_finite ? "allow_non_finite" : "weights of 1");
        const auto r = Compute(general);
        ASSERT_TRUE(r.ok()) << r.status();
        EXPECT_EQ(std::memcmp(&r->loss, &expected->loss, sizeof(double)), 0) << r->loss << " against " << expected->loss;
        EXPECT_EQ(std::memcmp(r->gradient->view().data, expected->gradient->view().data, count * sizeof(float)), 0)
            << "gradients differ";
      }
    }
  }
}

TEST(Invariants, ProbabilitiesInputEqualsLogitsInputThroughTheSigmoid) {
  const int64_t n = 8, c = 6;
  // |x| ≤ 4 keeps σ(x) away from the -100 clamp, and 1-σ(x) ≥ 0.018 so that rounding σ(x) to
  // float32 (6e-8 absolute) moves log(1-p) by at most 3.3e-6 relative: tolerance 2e-5.
  const auto x = testing::RandomUniform(n * c, -4, 4, 20);
  std::vector<double> p(x.size());
  for (size_t i = 0; i < x.size(); ++i) p[i] = 1 / (1 + std::exp(-x[i]));
  const HostTensor logits = MakeTensor(DType::kFloat32, {n, c}, x);
  const HostTensor probs = MakeTensor(DType::kFloat32, {n, c}, p);
  const std::vector<double> p_held = testing::Values(probs.view());
  for (bool soft : {false, true}) {
    const HostTensor t = MakeTensor(DType::kFloat32, {n, c}, soft ? testing::RandomUniform(n * c, 0, 1, 21)
                                                                  : testing::RandomClasses(n * c, 2, 21));
    for (double gamma : {0.0, 0.5, 2.0}) {
      SCOPED_TRACE(::testing::Message() << "soft=" << soft << " gamma=" << gamma);
      LossSpec prob_spec = Sigmoid(gamma);
      std::get<SigmoidFocalParams>(prob_spec.params).input = SigmoidInput::kProbabilities;
      const auto a = Compute(MakeJob(Sigmoid(gamma), logits, t, Reduction::kNone));
      const auto b = Compute(MakeJob(prob_spec, probs, t, Reduction::kNone));
      ASSERT_TRUE(a.ok() && b.ok()) << a.status() << b.status();
      const auto la = testing::Values(a->losses->view()), lb = testing::Values(b->losses->view());
      const auto ga = testing::Values(a->gradient->view()), gb = testing::Values(b->gradient->view());
      for (size_t i = 0; i < la.size(); ++i) {
        EXPECT_NEAR(lb[i], la[i], 2e-5 * std::fabs(la[i]) + 1e-7) << i;
        // Chain rule: ∂ℓ/∂x = ∂ℓ/∂p · p(1-p).
        EXPECT_NEAR(gb[i] * p_held[i] * (1 - p_held[i]), ga[i], 2e-5 * std::fabs(ga[i]) + 1e-7) << i;
      }
    }
  }
}

TEST(Invariants, DynamicWithoutNumObjectsIsSigmoidWithoutAlpha) {
  const HostTensor logits = MakeTensor(DType::kFloat32, {7, 9}, testing::RandomNormal(63, 3, 22));
  const HostTensor t = MakeTensor(DType::kFloat32, {7, 9}, testing::RandomClasses(63, 2, 23));
  for (double gamma : {0.0, 0.5, 2.0, 5.0}) {
    for (Reduction reduction : {Reduction::kMean, Reduction::kSum, Reduction::kNone}) {
      const auto a = Compute(MakeJob(Spec(DynamicFocalParams{gamma}), logits, t, reduction));
      const auto b = Compute(MakeJob(Sigmoid(gamma, -1), logits, t, reduction));
      ASSERT_TRUE(a.ok() && b.ok());
      EXPECT_EQ(a->loss, b->loss);
      EXPECT_EQ(a->count, b->count);
      EXPECT_EQ(std::memcmp(a->gradient->data(), b->gradient->data(), a->gradient->size_bytes()), 0);
    }
  }
}

// ---------------------------------------------------------------------------------------------

TEST(NonFinite, RejectedWithTheFirstBadIndexUnlessAllowed) {
  std::vector<double> x = testing::RandomNormal(3 * 4, 1, 24);
  x[1 * 4 + 2] = std::nan("");
  x[2 * 4 + 3] = INFINITY;
  const HostTensor logits = MakeTensor(DType::kFloat32, {3, 4}, x);
  const HostTensor classes = MakeTensor(DType::kInt64, {3}, {0, 1, 2});
  const HostTensor floats = MakeTensor(DType::kFloat32, {3, 4}, std::vector<double>(12, 1.0));
  for (const auto& [spec, targets] : {std::pair{Softmax(2), &classes}, std::pair{Sigmoid(2), &floats},
                                      std::pair{Sigmoid(2), &classes},
                                      std::pair{Spec(FocalCosineParams{}), &classes}}) {
    SCOPED_TRACE(VariantName(spec.params));
    LossJob job = MakeJob(spec, logits, *targets);
    const auto r = Compute(job);
    ASSERT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_NE(r.status().message().find("logits[1, 2] is nan"), std::string::npos) << r.status();
    job.allow_non_finite = true;
    const auto allowed = Compute(job);
    ASSERT_TRUE(allowed.ok()) << allowed.status();
    EXPECT_TRUE(std::isnan(allowed->loss));  // propagates like PyTorch
  }
  // The backend keeps serving after an error.
  const HostTensor good = MakeTensor(DType::kFloat32, {3, 4}, testing::RandomNormal(12, 1, 25));
  EXPECT_TRUE(Compute(MakeJob(Softmax(2), good, classes)).ok());
}

// The same check where the bad logit falls in a full vector of a row's first pass (C = 64 is a
// whole number of vectors on every target; the test above has C = 4, all scalar tail there): a
// NaN, +inf and -inf each rejected in softmax_focal's, distribution_focal's and focal_cosine's
// rows, and allowed with allow_non_finite.
TEST(NonFinite, RejectedInTheFullVectorsOfLongRows) {
  constexpr int64_t kN = 3, kC = 64;
  const HostTensor classes = MakeTensor(DType::kInt64, {kN}, {0, 5, 63});
  const HostTensor distances = MakeTensor(DType::kFloat32, {kN}, {0.5, 10.25, 62.0});
  for (double bad : {std::nan(""), double{INFINITY}, -double{INFINITY}}) {
    std::vector<double> x = testing::RandomNormal(kN * kC, 1, 26);
    x[1 * kC + 37] = bad;
    const HostTensor logits = MakeTensor(DType::kFloat32, {kN, kC}, x);
    for (const auto& [spec, targets] : {std::pair{Softmax(2), &classes},
                                        std::pair{Spec(DistributionFocalParams{}), &distances},
                                        std::pair{Spec(FocalCosineParams{}), &classes}}) {
      SCOPED_TRACE(::testing::Message() << VariantName(spec.params) << " with " << bad);
      LossJob job = MakeJob(spec, logits, *targets);
      const auto r = Compute(job);
      ASSERT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument) << r.status();
      EXPECT_NE(r.status().message().find("logits[1, 37]"), std::string::npos) << r.status();
      job.allow_non_finite = true;
      EXPECT_TRUE(Compute(job).ok());
    }
  }
}

/// docs/variants.md (non-finite input): with allow_non_finite a -inf logit in a softmax row is a masked class. The
/// independent reference is the same row without those classes: equal loss, equal gradient on
/// the classes left, 0 on the masked ones.
TEST(NonFinite, MinusInfinityLogitsAreMaskedClassesInSoftmaxRows) {
  for (const Shape& shape : {Shape{5, 7}, Shape{3, 7, 5}}) {  // [N, C] rows and the strided layout
    for (double gamma : {0.0, 0.5, 2.0}) {
      SCOPED_TRACE(::testing::Message() << "shape rank " << shape.size() << " gamma " << gamma);
      const int64_t N = shape[0], C = shape[1], S = shape.size() > 2 ? shape[2] : 1;
      const std::vector<double> x = testing::RandomNormal(static_cast<size_t>(N * C * S), 2, 31);
      std::vector<double> masked = x;
      const std::vector<int64_t> dropped = {1, 4};  // masked in every position; targets avoid them
      for (int64_t n = 0; n < N; ++n) {
        for (int64_t c : dropped) {
          for (int64_t s = 0; s < S; ++s) masked[(n * C + c) * S + s] = -INFINITY;
        }
      }
      std::vector<double> kept_x;  // the rows without the masked classes: [N, C - 2, S]
      for (int64_t n = 0; n < N; ++n) {
        for (int64_t c = 0; c < C; ++c) {
          if (c == 1 || c == 4) continue;
          for (int64_t s = 0; s < S; ++s) kept_x.push_back(x[(n * C + c) * S + s]);
        }
      }
      const std::vector<int64_t> kept_class = {0, 2, 3, 5, 6};
      std::vector<double> y, kept_y;
      for (int64_t i = 0; i < N * S; ++i) {
        const int64_t k = i % static_cast<int64_t>(kept_class.size());
        y.push_back(static_cast<double>(kept_class[k]));
        kept_y.push_back(static_cast<double>(k));
      }
      Shape ts{N}, kept_shape = shape;
      if (S > 1) ts.push_back(S);
      kept_shape[1] = C - 2;
      const HostTensor logits = MakeTensor(DType::kFloat32, shape, masked);
      const HostTensor kept_logits = MakeTensor(DType::kFloat32, kept_shape, kept_x);
      const HostTensor targets = MakeTensor(DType::kInt64, ts, y), kept_targets = MakeTensor(DType::kInt64, ts, kept_y);
      LossJob job = MakeJob(Softmax(gamma), logits, targets, Reduction::kNone);
      job.allow_non_finite = true;
      const auto got = Compute(job);
      const auto want = Compute(MakeJob(Softmax(gamma), kept_logits, kept_targets, Reduction::kNone));
      ASSERT_TRUE(got.ok() && want.ok()) << got.status() << " / " << want.status();
      const std::vector<double> losses = testing::Values(got->losses->view()), want_losses = testing::Values(want->losses->view());
      for (size_t i = 0; i < losses.size(); ++i) {
        EXPECT_TRUE(std::isfinite(losses[i])) << "losses[" << i << "]";
        // The same float32 terms in the same order except the masked ones, which add e^-inf = 0:
        // the row sums can differ only by the reassociation of the SIMD lanes, a few ulps.
        EXPECT_NEAR(losses[i], want_losses[i], 1e-6 * std::fabs(want_losses[i]) + 1e-7) << "losses[" << i << "]";
      }
      const std::vector<double> grad = testing::Values(got->gradient->view()), want_grad = testing::Values(want->gradient->view());
      size_t k = 0;
      for (int64_t n = 0; n < N; ++n) {
        for (int64_t c = 0; c < C; ++c) {
          for (int64_t s = 0; s < S; ++s) {
            const double g = grad[(n * C + c) * S + s];
            if (c == 1 || c == 4) {
              EXPECT_EQ(g, 0.0) << "masked class " << c << " of row " << n;
              continue;
            }
            const double w = want_grad[k++];
            EXPECT_NEAR(g, w, 1e-6 * std::fabs(w) + 1e-7) << "gradient of class " << c << " row " << n;
          }
        }
      }
    }
  }
  // A row whose target's own logit is -inf has loss +inf (as PyTorch); a row of -inf only, or
  // with a NaN or +inf, is NaN; and with label smoothing every class has a term, so -inf makes
  // the row NaN too.
  const HostTensor logits = MakeTensor(DType::kFloat32, {4, 3},
                                       {-INFINITY, 1, 2, -INFINITY, -INFINITY, -INFINITY, 0, NAN, 1, 0, INFINITY, 1});
  const HostTensor targets = MakeTensor(DType::kInt64, {4}, {0, 1, 2, 0});
  LossJob job = MakeJob(Softmax(2), logits, targets, Reduction::kNone);
  job.allow_non_finite = true;
  const auto r = Compute(job);
  ASSERT_TRUE(r.ok()) << r.status();
  const std::vector<double> losses = testing::Values(r->losses->view());
  EXPECT_EQ(losses[0], INFINITY);
  EXPECT_TRUE(std::isnan(losses[1]) && std::isnan(losses[2]) && std::isnan(losses[3]));
  job.spec = Softmax(2, 0.1);
  job.spec.reduction = Reduction::kNone;
  const HostTensor one_masked = MakeTensor(DType::kFloat32, {1, 3}, {-INFINITY, 1, 2});
  job.logits = one_masked.view();
  const HostTensor one_target = MakeTensor(DType::kInt64, {1}, {1});
  job.targets = one_target.view();
  const auto smoothed = Compute(job);
  ASSERT_TRUE(smoothed.ok()) << smoothed.status();
  EXPECT_TRUE(std::isnan(testing::Values(smoothed->losses->view())[0]));
}

TEST(NonFinite, FloatTargetsAndProbabilitiesOutOfRange) {
  const HostTensor logits = MakeTensor(DType::kFloat32, {2, 3}, {0.1, 0.2, 0.3, 0.4, 0.5, 0.6});
  const HostTensor bad_t = MakeTensor(DType::kFloat32, {2, 3}, {0, 1, 0.5, 1.5, 0, 1});
  auto r = Compute(MakeJob(Sigmoid(2), logits, bad_t));
  ASSERT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(r.status().message().find("targets[1, 0] is 1.5; must be in [0, 1]"), std::string::npos) << r.status();
  r = Compute(MakeJob(Spec(DynamicFocalParams{}), logits, bad_t));
  EXPECT_NE(r.status().message().find("targets[0, 2] is 0.5; must be 0 or 1"), std::string::npos) << r.status();
  const HostTensor bad_p = MakeTensor(DType::kFloat32, {2, 3}, {0.1, 0.2, 1.25, 0.4, 0.5, 0.6});
  LossSpec prob = Sigmoid(2);
  std::get<SigmoidFocalParams>(prob.params).input = SigmoidInput::kProbabilities;
  const HostTensor t = MakeTensor(DType::kFloat32, {2, 3}, {0, 1, 0, 1, 0, 1});
  r = Compute(MakeJob(prob, bad_p, t));
  EXPECT_NE(r.status().message().find("logits[0, 2] is 1.25; input PROBABILITIES must be in [0, 1]"),
            std::string::npos) << r.status();
}

TEST(EmptyInput, EveryVariantReturnsZeroWithCountZero) {
  const HostTensor logits = MakeTensor(DType::kFloat32, {0, 5}, {});
  const HostTensor classes = MakeTensor(DType::kInt64, {0}, {});
  const HostTensor floats = MakeTensor(DType::kFloat32, {0, 5}, {});
  for (const auto& [spec, targets] : {std::pair{Softmax(2), &classes}, std::pair{Sigmoid(2), &floats},
                                      std::pair{Sigmoid(2), &classes},
                                      std::pair{Spec(FocalCosineParams{}), &classes},
                                      std::pair{Spec(DynamicFocalParams{}), &floats}}) {
    for (Reduction reduction : {Reduction::kMean, Reduction::kSum, Reduction::kNone}) {
      const auto r = Compute(MakeJob(spec, logits, *targets, reduction));
      ASSERT_TRUE(r.ok()) << r.status();
      EXPECT_EQ(r->loss, 0.0);
      EXPECT_EQ(r->count, 0);
      EXPECT_EQ(r->gradient->size_bytes(), 0u);
    }
  }
}

TEST(UpstreamGradient, NoneTakesAPerItemTensorOfAnyFloatDtype) {
  const HostTensor logits = MakeTensor(DType::kFloat32, {4, 6}, testing::RandomNormal(24, 2, 26));
  const HostTensor classes = MakeTensor(DType::kInt64, {4}, {0, 5, 2, 3});
  const auto base = Compute(MakeJob(Softmax(2), logits, classes, Reduction::kNone));
  ASSERT_TRUE(base.ok());
  const std::vector<double> w = {0.5, -2, 0, 1.5};
  for (DType dt : {DType::kFloat32, DType::kFloat16, DType::kFloat64}) {
    const HostTensor wt = MakeTensor(dt, {4}, w);
    LossJob job = MakeJob(Softmax(2), logits, classes, Reduction::kNone);
    job.grad_output = wt.view();
    const auto r = Compute(job);
    ASSERT_TRUE(r.ok()) << r.status();
    const auto g = testing::Values(r->gradient->view()), g1 = testing::Values(base->gradient->view());
    for (size_t i = 0; i < g.size(); ++i) EXPECT_FLOAT_EQ(g[i], static_cast<float>(g1[i] * w[i / 6]));
  }
}

}  // namespace
}  // namespace focal

namespace focal {
namespace {

// Ignored rows contribute 0 to the loss and the gradient whatever their logits hold: rows far
// below 0 (where a dummy target logit of 0 would make log p_y > 0 and (1-p)^γ NaN), and rows
// with a NaN under allow_non_finite. In every softmax path: [N, C], label-smoothed, strided.
TEST(IgnoredRows, ContributeZeroWhateverTheirLogits) {
  for (const Shape& shape : {Shape{4, 5}, Shape{4, 5, 3}}) {
    for (double smoothing : {0.0, 0.1}) {
      for (double gamma : {0.5, 1.5, 2.0}) {
        for (double low : {-3.0, -100.0, -1e4}) {
          for (bool with_nan : {false, true}) {
            SCOPED_TRACE(::testing::Message() << "shape rank " << shape.size() << " ε " << smoothing << " γ " << gamma
                                            << " logits " << low << (with_nan ? " with NaN" : ""));
            const int64_t C = shape[1], S = shape.size() > 2 ? shape[2] : 1, N = shape[0];
            std::vector<double> x = testing::RandomNormal(static_cast<size_t>(N * C * S), 2, 11);
            // Row (position) 0 of n = 1 is ignored and far below 0; it holds a NaN when asked.
            for (int64_t c = 0; c < C; ++c) x[(1 * C + c) * S] = low;
            if (with_nan) x[(1 * C + 2) * S] = std::nan("");
            Shape ts{N};
            if (S > 1) ts.push_back(S);
            std::vector<double> y = testing::RandomClasses(static_cast<size_t>(N * S), C, 12);
            y[1 * S] = -100;
            const HostTensor logits = MakeTensor(DType::kFloat32, shape, x);
            const HostTensor targets = MakeTensor(DType::kInt64, ts, y);
            LossSpec spec = Softmax(gamma, smoothing);
            std::get<SoftmaxFocalParams>(spec.params).ignore_index = -100;
            LossJob job = MakeJob(spec, logits, targets, Reduction::kNone);
            job.allow_non_finite = with_nan;
            const auto r = Compute(job);
            ASSERT_TRUE(r.ok()) << r.status();
            const std::vector<double> losses = testing::Values(r->losses->view());
            const std::vector<double> grad = testing::Values(r->gradient->view());
            EXPECT_EQ(losses[1 * S], 0.0);
            EXPECT_TRUE(AllFinite(losses));
            for (int64_t c = 0; c < C; ++c) EXPECT_EQ(grad[(1 * C + c) * S], 0.0) << "class " << c;
            EXPECT_TRUE(AllFinite(grad));
            EXPECT_TRUE(std::isfinite(r->loss));
          }
        }
      }
    }
  }
}

// Under allow_non_finite a NaN upstream weight makes that item's gradient NaN, never its loss.
TEST(UpstreamWeights, NaNWeightLeavesTheLossAlone) {
  const HostTensor logits = MakeTensor(DType::kFloat32, {3, 6}, testing::RandomNormal(18, 2, 13));
  const HostTensor targets = MakeTensor(DType::kInt64, {3}, {1, 4, 0});
  const HostTensor weights = MakeTensor(DType::kFloat32, {3}, {std::nan(""), 1, 2});
  for (const LossSpec& spec : {Softmax(2), Spec(FocalCosineParams{})}) {
    LossJob job = MakeJob(spec, logits, targets, Reduction::kNone);
    job.allow_non_finite = true;
    job.grad_output = weights.view();
    const auto r = Compute(job);
    ASSERT_TRUE(r.ok()) << r.status();
    EXPECT_TRUE(AllFinite(testing::Values(r->losses->view()))) << VariantName(spec.params);
    EXPECT_TRUE(std::isnan(testing::Values(r->gradient->view())[0])) << VariantName(spec.params);
  }
}

}  // namespace
}  // namespace focal

namespace focal {
namespace {

// A confident row's normaliser keeps every small term, also those of the SIMD tail (C not a
// multiple of the vector width): log p_y = -log1p((C-1)e^-30) exactly to float precision.
TEST(ConfidentRows, KeepTheSmallTermsOfTheirTail) {
  for (int64_t C : {17, 33, 100}) {
    std::vector<double> x(static_cast<size_t>(C), -10.0);
    x[0] = 20;
    const HostTensor logits = MakeTensor(DType::kFloat32, {1, C}, x);
    const HostTensor targets = MakeTensor(DType::kInt64, {1}, {0});
    const auto r = Compute(MakeJob(Softmax(0), logits, targets, Reduction::kSum));
    ASSERT_TRUE(r.ok()) << r.status();
    const long double expected = std::log1p(static_cast<long double>(C - 1) * std::exp(-30.0L));
    EXPECT_NEAR(r->loss / static_cast<double>(expected), 1.0, 1e-6) << "C " << C;
  }
}

}  // namespace
}  // namespace focal
