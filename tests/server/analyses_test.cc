// Evaluate's analyses (server/analyses.h) against references written plainly here in long
// double: the γ sweep's sums per class and side and its p_t mass, α recombined against the
// backend's own loss, calibration (reliability histogram, ECE, MCE, accuracy, NLL, Brier, the
// per-class counts), split-independence, and every refusal.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <string>
#include <vector>

#include "kernels/cpu/analysis_kernels.h"
#include "kernels/cpu/cpu_backend.h"
#include "server/analyses.h"
#include "tests/unit/test_util.h"

namespace focal::server {
namespace {

using testing::MakeTensor;
using LD = long double;

/// A batch: its tensors and the job viewing them.
struct Batch {
  HostTensor logits, targets;
  LossJob job;
};

Batch MakeBatch(VariantParams params, DType logits_dtype, Shape shape, const std::vector<double>& x,
                DType targets_dtype, Shape target_shape, const std::vector<double>& t) {
  Batch b{MakeTensor(logits_dtype, std::move(shape), x), MakeTensor(targets_dtype, std::move(target_shape), t), {}};
  b.job.spec.params = std::move(params);
  b.job.spec.reduction = Reduction::kNone;
  b.job.logits = b.logits.view();
  b.job.targets = b.targets.view();
  return b;
}

std::vector<double> Binary(size_t n, uint32_t seed) {
  std::vector<double> t = testing::RandomUniform(n, 0, 1, seed);
  for (double& v : t) v = v < 0.3 ? 1.0 : 0.0;
  return t;
}

v1::EvaluateOptions Options(std::vector<double> gammas, int calibration_bins, int pt_bins = 0) {
  v1::EvaluateOptions o;
  for (double g : gammas) o.add_gamma_sweep(g);
  o.set_calibration_bins(calibration_bins);
  o.set_pt_bins(pt_bins);
  return o;
}

v1::EvaluateResponse Analyse(const v1::EvaluateOptions& options, const std::vector<const Batch*>& batches,
                             int threads = 0) {
  EvaluationAnalyses analyses(threads);
  for (const Batch* b : batches) {
    EXPECT_TRUE(analyses.Check(options, b->job).ok());
    EXPECT_TRUE(analyses.Add(b->job).ok());
  }
  v1::EvaluateResponse response;
  analyses.ToResponse(&response);
  return response;
}

LD Sigmoid(LD x) { return 1 / (1 + std::exp(-x)); }

/// One term of the sweep as the contract defines it: (1-p)^γ · (-log p), with 0^0 = 1.
LD Term(LD p, LD gamma) { return (gamma == 0 ? 1 : std::pow(1 - p, gamma)) * -std::log(p); }

/// float64 logits: each term is computed in double, rounded once to float32 (half an ulp, 2^-24
/// relative), and the sum of these positive terms is exact: the sum's relative error is at most
/// 2^-24, plus the double-precision evaluation of each term (~1e-15). 2^-23 leaves a factor of
/// two.
constexpr double kSumRtol = 1.0 / (1 << 23);

/// float32 (and 16-bit) logits: each term is computed in float32, as the kernels compute, then
/// summed exactly, so a sum of positive terms keeps the worst term's relative error. With
/// ε = 2^-24: -log p_t is within (4 + 2C)ε (math::Sigmoid's exp, log and division; a softmax
/// row's sum of C exps adds 2Cε, C = 1 for sigmoid items); (1-p_t)^γ within γ(4 + 2C)·max(1, L)ε,
/// L = max |log(1-p_t)| (the error of log(1-p_t), times γ in the exponent; a whole γ's product
/// of 1-p_t factors is within that too); the product and the rounding add 4ε. Twice the bound.
double Float32TermRtol(double gamma, LD log_q_max, int64_t classes = 1) {
  const double l = std::max(1.0, static_cast<double>(log_q_max));
  return 2 * ((4 + 2 * static_cast<double>(classes)) * (1 + gamma * l) + 4) / (1 << 24);
}

/// The float32 items' probabilities differ from the exact ones by a few ulps: a bin count is
/// exact only for data whose probabilities lie clear of the bin edges, which this checks.
void ExpectClearOfBinEdges(LD p, int bins) {
  const LD scaled = p * bins;
  EXPECT_GT(std::abs(scaled - std::round(scaled)), 1e-5L) << "p " << static_cast<double>(p)
                                                          << " lies on a bin edge: choose other test data";
}

/// `terms` bounds the terms summed: one below float32's normal range (2^-126: confident items
/// at a large γ) keeps no relative accuracy when rounded to float32, but is off by less than
/// 2^-126 absolutely, however it was computed.
void ExpectNear(double got, LD want, double rtol, const std::string& what, int64_t terms = 0) {
  const LD atol = static_cast<LD>(terms) * std::ldexp(1.0L, -126) + 1e-300;
  EXPECT_LE(std::abs(static_cast<LD>(got) - want), rtol * std::abs(want) + atol)
      << what << ": " << got << " vs " << static_cast<double>(want);
}

TEST(Analyses, SigmoidSweepMatchesThePlainDefinitionPerClassSideAndPtBin) {
  const int64_t N = 37, C = 5;
  const std::vector<double> x = testing::RandomNormal(N * C, 3, 11), t = Binary(N * C, 12);
  const std::vector<double> gammas = {0, 0.5, 1, 2, 3.7};
  const int B = 8;
  // float64 logits compute in double, the others in float32 (of the logits as float32).
  for (const DType dtype : {DType::kFloat64, DType::kFloat32}) {
    SCOPED_TRACE(DTypeName(dtype));
    const Batch b = MakeBatch(SigmoidFocalParams{}, dtype, {N, C}, x, DType::kFloat32, {N, C}, t);
    const v1::EvaluateResponse r = Analyse(Options(gammas, 0, B), {&b});
    ASSERT_TRUE(r.has_sweep());
    const v1::GammaSweep& s = r.sweep();
    ASSERT_EQ(s.positive_sums_size(), static_cast<int>(gammas.size() * C));
    ASSERT_EQ(s.positive_mass_size(), static_cast<int>(gammas.size() * B));
    EXPECT_EQ(s.classes(), C);
    EXPECT_EQ(s.pt_bins(), B);
    auto logit = [&](int64_t i) { return dtype == DType::kFloat64 ? static_cast<LD>(x[i]) : static_cast<float>(x[i]); };
    LD log_q_max = 0;
    for (int64_t i = 0; i < N * C; ++i) {
      const LD p = Sigmoid(t[i] == 1 ? logit(i) : -logit(i));
      log_q_max = std::max(log_q_max, -std::log1p(-p));
      ExpectClearOfBinEdges(p, B);
    }
    for (size_t k = 0; k < gammas.size(); ++k) {
      const double rtol = dtype == DType::kFloat64 ? kSumRtol : Float32TermRtol(gammas[k], log_q_max);
      std::vector<LD> pos(C, 0), neg(C, 0), pos_mass(B, 0), neg_mass(B, 0);
      std::vector<int64_t> pos_n(C, 0), neg_n(C, 0);
      for (int64_t i = 0; i < N * C; ++i) {
        const int64_t c = i % C;
        const bool positive = t[i] == 1;
        const LD p = Sigmoid(positive ? logit(i) : -logit(i));
        const LD term = Term(p, gammas[k]);
        (positive ? pos : neg)[c] += term;
        (positive ? pos_n : neg_n)[c] += 1;
        const int bin = std::min<int>(B - 1, static_cast<int>(std::floor(p * B)));
        (positive ? pos_mass : neg_mass)[bin] += term;
      }
      for (int64_t c = 0; c < C; ++c) {
        ExpectNear(s.positive_sums(static_cast<int>(k * C + c)), pos[c], rtol, "S+", N * C);
        ExpectNear(s.negative_sums(static_cast<int>(k * C + c)), neg[c], rtol, "S-", N * C);
        if (k == 0) {
          EXPECT_EQ(s.positive_counts(static_cast<int>(c)), pos_n[c]);
          EXPECT_EQ(s.negative_counts(static_cast<int>(c)), neg_n[c]);
        }
      }
      for (int bin = 0; bin < B; ++bin) {
        ExpectNear(s.positive_mass(static_cast<int>(k * B + bin)), pos_mass[bin], rtol, "mass+", N * C);
        ExpectNear(s.negative_mass(static_cast<int>(k * B + bin)), neg_mass[bin], rtol, "mass-", N * C);
      }
    }
  }
}

TEST(Analyses, AnyAlphaRecombinesToTheBackendsLoss) {
  // sigmoid_focal's loss at (γ, α) is α S⁺(γ) + (1-α) S⁻(γ), summed over classes; softmax_focal's
  // is Σ_c α_c S_c(γ). The backend computes each item in float32 through the variant's own
  // formulas, so the two differ by the float32 arithmetic of those formulas: the project's
  // tolerance for float32 results (2e-5, tests/python/helpers.py) bounds it.
  const CpuBackend backend(CpuBackendOptions{1});
  // The backend's SUM of `job` with the loss `params`.
  auto summed = [&backend](LossJob job, VariantParams params) {
    job.spec.reduction = Reduction::kSum;
    job.spec.params = std::move(params);
    const auto direct = backend.Compute(job);
    EXPECT_TRUE(direct.ok()) << direct.status();
    return direct.ok() ? direct->loss : 0.0;
  };
  const int64_t N = 40, C = 6;
  const std::vector<double> x = testing::RandomNormal(N * C, 2.5, 21), t = Binary(N * C, 22);
  const std::vector<double> gammas = {0, 1, 2, 4.5};
  const Batch sig = MakeBatch(SigmoidFocalParams{}, DType::kFloat32, {N, C}, x, DType::kFloat32, {N, C}, t);
  const v1::GammaSweep s = Analyse(Options(gammas, 0), {&sig}).sweep();
  for (size_t k = 0; k < gammas.size(); ++k) {
    for (double alpha : {0.25, 0.5, 0.9, -1.0}) {
      LD recombined = 0;
      for (int64_t c = 0; c < C; ++c) {
        const double a = alpha < 0 ? 1 : alpha, b = alpha < 0 ? 1 : 1 - alpha;
        recombined += a * static_cast<LD>(s.positive_sums(static_cast<int>(k * C + c))) +
                      b * static_cast<LD>(s.negative_sums(static_cast<int>(k * C + c)));
      }
      SigmoidFocalParams p;
      p.gamma = gammas[k];
      p.alpha = alpha;
      ExpectNear(summed(sig.job, p), recombined, 2e-5, "sigmoid α=" + std::to_string(alpha) + " γ=" + std::to_string(gammas[k]));
    }
  }
  const std::vector<double> y = testing::RandomClasses(N, C, 23);
  const Batch soft = MakeBatch(SoftmaxFocalParams{}, DType::kFloat32, {N, C}, x, DType::kInt64, {N}, y);
  const v1::GammaSweep r = Analyse(Options(gammas, 0), {&soft}).sweep();
  EXPECT_EQ(r.negative_sums_size(), 0);
  const std::vector<double> alpha = {0.5, 1, 2, 0.25, 3, 1.5};
  for (size_t k = 0; k < gammas.size(); ++k) {
    LD recombined = 0;
    for (int64_t c = 0; c < C; ++c) recombined += alpha[c] * static_cast<LD>(r.positive_sums(static_cast<int>(k * C + c)));
    SoftmaxFocalParams p;
    p.gamma = gammas[k];
    p.alpha = alpha;
    ExpectNear(summed(soft.job, p), recombined, 2e-5, "softmax γ=" + std::to_string(gammas[k]));
  }
}

TEST(Analyses, SoftmaxCalibrationMatchesAPlainReference) {
  const int64_t N = 300, C = 4, S = 2;  // [N, C, S]: rows are (n, s)
  const std::vector<double> x = testing::RandomNormal(N * C * S, 2, 31);
  std::vector<double> y = testing::RandomClasses(N * S, C, 32);
  for (size_t i = 0; i < y.size(); i += 7) y[i] = -100;  // ignored
  SoftmaxFocalParams params;
  params.ignore_index = -100;
  const Batch b = MakeBatch(params, DType::kFloat64, {N, C, S}, x, DType::kInt64, {N, S}, y);
  const int B = 10;
  const v1::Calibration cal = Analyse(Options({}, B), {&b}).calibration();
  std::vector<int64_t> counts(B, 0), correct(B, 0), targets(C, 0), predicted(C, 0), tp(C, 0);
  std::vector<LD> confidence(B, 0);
  LD nll = 0, brier = 0;
  int64_t n_items = 0, n_correct = 0;
  for (int64_t n = 0; n < N; ++n) {
    for (int64_t s = 0; s < S; ++s) {
      const int64_t target = static_cast<int64_t>(y[n * S + s]);
      if (target == -100) continue;
      std::vector<LD> p(C);
      LD z = 0;
      for (int64_t c = 0; c < C; ++c) z += p[c] = std::exp(static_cast<LD>(x[(n * C + c) * S + s]));
      int64_t argmax = 0;
      for (int64_t c = 0; c < C; ++c) {
        p[c] /= z;
        if (p[c] > p[argmax]) argmax = c;
      }
      const int bin = std::min<int>(B - 1, static_cast<int>(std::floor(p[argmax] * B)));
      ++counts[bin];
      confidence[bin] += p[argmax];
      correct[bin] += argmax == target;
      n_correct += argmax == target;
      ++n_items;
      nll += -std::log(p[target]);
      for (int64_t c = 0; c < C; ++c) brier += (p[c] - (c == target)) * (p[c] - (c == target));
      ++targets[target];
      ++predicted[argmax];
      tp[target] += argmax == target;
    }
  }
  EXPECT_EQ(cal.bins(), B);
  EXPECT_EQ(cal.count(), n_items);
  EXPECT_EQ(cal.correct(), n_correct);
  EXPECT_DOUBLE_EQ(cal.accuracy(), static_cast<double>(n_correct) / n_items);
  LD ece = 0, mce = 0;
  for (int b2 = 0; b2 < B; ++b2) {
    EXPECT_EQ(cal.bin_counts(b2), counts[b2]);
    EXPECT_EQ(cal.bin_correct(b2), correct[b2]);
    ExpectNear(cal.bin_confidence_sums(b2), confidence[b2], kSumRtol, "confidence");
    if (counts[b2] == 0) continue;
    const LD gap = std::abs(static_cast<LD>(correct[b2]) / counts[b2] - confidence[b2] / counts[b2]);
    ece += static_cast<LD>(counts[b2]) / n_items * gap;
    mce = std::max(mce, gap);
  }
  // ECE and MCE from exact counts and confidence sums good to 2^-24: differences of rates near
  // each other lose that relative accuracy, so compare absolutely at 1e-6.
  EXPECT_NEAR(cal.ece(), static_cast<double>(ece), 1e-6);
  EXPECT_NEAR(cal.mce(), static_cast<double>(mce), 1e-6);
  ExpectNear(cal.nll(), nll / n_items, kSumRtol, "nll");
  // Brier terms are sums of squares computed as Σp² - 2p_y + 1: cancellation near p_y = 1
  // costs digits relative to the term, not to the mean, so 1e-6 relative to the mean.
  ExpectNear(cal.brier(), brier / n_items, 1e-6, "brier");
  for (int64_t c = 0; c < C; ++c) {
    EXPECT_EQ(cal.class_targets(static_cast<int>(c)), targets[c]);
    EXPECT_EQ(cal.class_predicted(static_cast<int>(c)), predicted[c]);
    EXPECT_EQ(cal.class_true_positives(static_cast<int>(c)), tp[c]);
  }
}

TEST(Analyses, SigmoidCalibrationWithClassIndexTargetsMatchesAPlainReference) {
  const int64_t N = 120, C = 3;
  const std::vector<double> x = testing::RandomNormal(N * C, 2, 41);
  std::vector<double> y = testing::RandomClasses(N, C + 1, 42);  // C: background
  for (size_t i = 0; i < y.size(); i += 9) y[i] = -1;              // ignored rows
  SigmoidFocalParams params;
  params.ignore_index = -1;
  const Batch b = MakeBatch(params, DType::kFloat32, {N, C}, x, DType::kInt32, {N}, y);
  const int B = 15;
  const v1::EvaluateResponse r = Analyse(Options({2}, B), {&b});
  const v1::Calibration& cal = r.calibration();
  std::vector<int64_t> counts(B, 0), positives(B, 0), targets(C, 0), predicted(C, 0), tp(C, 0);
  LD nll = 0, brier = 0;
  int64_t items = 0, right = 0;
  for (int64_t n = 0; n < N; ++n) {
    if (y[n] == -1) continue;
    for (int64_t c = 0; c < C; ++c) {
      const LD p = Sigmoid(static_cast<float>(x[n * C + c]));
      ExpectClearOfBinEdges(p, B);
      const bool t = y[n] == c;
      const int bin = std::min<int>(B - 1, static_cast<int>(std::floor(p * B)));
      ++counts[bin];
      positives[bin] += t;
      ++items;
      right += (p >= 0.5) == t;
      nll += -std::log(t ? p : 1 - p);
      brier += (p - t) * (p - t);
      targets[c] += t;
      predicted[c] += p >= 0.5;
      tp[c] += t && p >= 0.5;
    }
  }
  EXPECT_EQ(cal.count(), items);
  EXPECT_EQ(cal.correct(), right);
  for (int b2 = 0; b2 < B; ++b2) {
    EXPECT_EQ(cal.bin_counts(b2), counts[b2]);
    EXPECT_EQ(cal.bin_correct(b2), positives[b2]);
  }
  // float32 logits: NLL's terms are γ = 0 focal terms; Brier's (1 - p_t)² doubles 1 - p_t's error.
  ExpectNear(cal.nll(), nll / items, Float32TermRtol(0, 0), "nll");
  ExpectNear(cal.brier(), brier / items, 2 * Float32TermRtol(0, 0), "brier");
  for (int64_t c = 0; c < C; ++c) {
    EXPECT_EQ(cal.class_targets(static_cast<int>(c)), targets[c]);
    EXPECT_EQ(cal.class_predicted(static_cast<int>(c)), predicted[c]);
    EXPECT_EQ(cal.class_true_positives(static_cast<int>(c)), tp[c]);
  }
  // Ignored rows count on neither side of the sweep.
  int64_t sides = 0;
  for (int64_t c = 0; c < C; ++c) sides += r.sweep().positive_counts(static_cast<int>(c)) + r.sweep().negative_counts(static_cast<int>(c));
  EXPECT_EQ(sides, items);
}

TEST(Analyses, TheSameDatasetInOneBatchOrThirtySevenGivesBitIdenticalAnswers) {
  const int64_t N = 370, C = 7;
  const std::vector<double> x = testing::RandomNormal(N * C, 3, 51), y = testing::RandomClasses(N, C, 52);
  const v1::EvaluateOptions options = Options({0, 0.5, 2, 5}, 15, 20);
  const Batch whole = MakeBatch(SoftmaxFocalParams{}, DType::kFloat32, {N, C}, x, DType::kInt64, {N}, y);
  std::vector<Batch> parts;
  for (int64_t i = 0; i < 37; ++i) {
    const int64_t rows = N / 37;
    parts.push_back(MakeBatch(SoftmaxFocalParams{}, DType::kFloat32, {rows, C},
                              std::vector<double>(x.begin() + i * rows * C, x.begin() + (i + 1) * rows * C),
                              DType::kInt64, {rows}, std::vector<double>(y.begin() + i * rows, y.begin() + (i + 1) * rows)));
  }
  std::vector<const Batch*> pointers;
  for (const Batch& p : parts) pointers.push_back(&p);
  const v1::EvaluateResponse one = Analyse(options, {&whole}), many = Analyse(options, pointers);
  EXPECT_EQ(one.SerializeAsString(), many.SerializeAsString());
  EXPECT_GT(one.sweep().positive_sums(3), 0);
  EXPECT_GT(one.calibration().count(), 0);
}

TEST(Analyses, ManyThreadsGiveTheAnswerOfOne) {
  // 2048 rows × 16 classes × 8 γ is work for 4 threads (one per 2^16 terms); the rows are shared
  // out, each thread sums into buckets of its own, and exact sums make the order irrelevant.
  const int64_t N = 2048, C = 16;
  const std::vector<double> x = testing::RandomNormal(N * C, 3, 61), t = Binary(N * C, 62);
  const std::vector<double> y = testing::RandomClasses(N, C, 63);
  const Batch sig = MakeBatch(SigmoidFocalParams{}, DType::kFloat32, {N, C}, x, DType::kFloat32, {N, C}, t);
  const Batch soft = MakeBatch(SoftmaxFocalParams{}, DType::kBFloat16, {N, C}, x, DType::kInt64, {N}, y);
  const v1::EvaluateOptions options = Options({0, 0.25, 0.5, 1, 2, 3, 4, 5}, 15, 20);
  for (const Batch* b : {&sig, &soft}) {
    const v1::EvaluateResponse one = Analyse(options, {b}, 1), four = Analyse(options, {b}, 4);
    EXPECT_EQ(one.SerializeAsString(), four.SerializeAsString());
    EXPECT_GT(one.calibration().count(), 0);
  }
}

TEST(Analyses, SweepsTooLargeForBucketsSumTheSameIntoExactSums) {
  // 64 γ × 300 classes = 19,200 cells: past BatchSums::kBucketed, the terms go straight into the
  // ExactSums (one thread); the first 4 γ's cells equal a bucketed 4-γ sweep of the same data.
  const int64_t N = 30, C = 300;
  static_assert(64 * C > BatchSums::kBucketed && 4 * C <= BatchSums::kBucketed);
  const std::vector<double> x = testing::RandomNormal(N * C, 3, 71), t = Binary(N * C, 72);
  const Batch b = MakeBatch(SigmoidFocalParams{}, DType::kFloat32, {N, C}, x, DType::kFloat32, {N, C}, t);
  std::vector<double> gammas = {0, 0.5, 2, 7};
  for (int k = 4; k < 64; ++k) gammas.push_back(0.1 * k);
  const v1::GammaSweep big = Analyse(Options(gammas, 0), {&b}).sweep();
  const v1::GammaSweep small = Analyse(Options({0, 0.5, 2, 7}, 0), {&b}).sweep();
  for (int i = 0; i < 4 * C; ++i) {
    EXPECT_EQ(big.positive_sums(i), small.positive_sums(i)) << i;
    EXPECT_EQ(big.negative_sums(i), small.negative_sums(i)) << i;
  }
}

TEST(Analyses, BucketPlacesSplitEveryFloatAsExactFloat32SumDoes) {
  // Every exponent (subnormals, normals, the largest), both signs, zero: the vector split into
  // bucket places and shifted mantissas is ExactFloat32Sum::PlaceOf, lane for lane.
  std::vector<float> terms;
  for (uint32_t e = 0; e < 255; ++e) {
    for (uint32_t fraction : {0u, 1u, 0x2aaaaau, 0x7fffffu}) {
      for (uint32_t sign : {0u, 1u}) {
        const uint32_t bits = sign << 31 | e << 23 | fraction;
        float v;
        std::memcpy(&v, &bits, sizeof v);
        terms.push_back(v);
      }
    }
  }
  const int64_t n = static_cast<int64_t>(terms.size());
  std::vector<uint32_t> base_a(terms.size()), base_b(terms.size()), places_a(terms.size()), places_b(terms.size());
  for (size_t j = 0; j < terms.size(); ++j) base_a[j] = static_cast<uint32_t>(j % 7), base_b[j] = static_cast<uint32_t>(j % 3);
  std::vector<int32_t> mantissas(terms.size());
  ASSERT_TRUE(cpu::analysis::BucketPlaces(terms.data(), n, ExactFloat32Sum::kExponentsPerBucketLog2,
                                          {base_a.data(), 10, 17, places_a.data()}, {base_b.data(), 2, 5, places_b.data()},
                                          mantissas.data()));
  for (size_t j = 0; j < terms.size(); ++j) {
    uint32_t bits;
    std::memcpy(&bits, &terms[j], sizeof bits);
    const ExactFloat32Sum::Place place = ExactFloat32Sum::PlaceOf(bits);
    EXPECT_EQ(mantissas[j], place.mantissa) << terms[j];
    EXPECT_EQ(places_a[j], place.bucket * 17 + base_a[j] + 10) << terms[j];
    EXPECT_EQ(places_b[j], place.bucket * 5 + base_b[j] + 2) << terms[j];
  }
  for (float bad : {HUGE_VALF, -HUGE_VALF, std::nanf("")}) {
    std::vector<float> with_bad = terms;
    with_bad[13] = bad;
    EXPECT_FALSE(cpu::analysis::BucketPlaces(with_bad.data(), n, ExactFloat32Sum::kExponentsPerBucketLog2,
                                             {base_a.data(), 0, 17, places_a.data()},
                                             {base_b.data(), 0, 5, places_b.data()}, mantissas.data()));
  }
}

TEST(Analyses, SigmoidSidesFindTheFirstTargetNeitherZeroNorOne) {
  for (const int64_t n : {int64_t{1}, int64_t{7}, int64_t{37}}) {  // a partial vector, whole ones and a tail
    std::vector<float> t(static_cast<size_t>(n));
    for (int64_t i = 0; i < n; ++i) t[static_cast<size_t>(i)] = i % 3 == 0 ? 1.0f : 0.0f;
    std::vector<float> sign(t.size());
    std::vector<double> sign64(t.size());
    std::vector<uint8_t> positive(t.size());
    EXPECT_EQ(cpu::analysis::SigmoidSides(t.data(), n, sign.data(), positive.data()), -1);
    for (int64_t i = 0; i < n; ++i) {
      EXPECT_EQ(positive[static_cast<size_t>(i)], i % 3 == 0);
      EXPECT_EQ(sign[static_cast<size_t>(i)], i % 3 == 0 ? 1.0f : -1.0f);
    }
    t.back() = 0.5f;
    if (n > 3) t[3] = std::nanf("");
    const int64_t first = n > 3 ? 3 : n - 1;
    EXPECT_EQ(cpu::analysis::SigmoidSides(t.data(), n, sign.data(), positive.data()), first);
    EXPECT_EQ(cpu::analysis::SigmoidSides(t.data(), n, sign64.data(), positive.data()), first);
  }
}

TEST(Analyses, RefusalsNameTheFieldAndTheReason) {
  const Batch b = MakeBatch(SigmoidFocalParams{}, DType::kFloat32, {2, 2}, {1, -1, 2, 0}, DType::kFloat32, {2, 2},
                            {1, 0, 0, 1});
  auto refused = [](const v1::EvaluateOptions& options, const LossJob& job, const std::string& fragment,
                    absl::StatusCode code = absl::StatusCode::kInvalidArgument) {
    EvaluationAnalyses analyses;
    const absl::Status status = analyses.Check(options, job);
    EXPECT_EQ(status.code(), code) << status;
    EXPECT_NE(status.message().find(fragment), std::string::npos) << status;
  };
  refused(Options({1, -1}, 0), b.job, "evaluate.gamma_sweep[1] is -1; must be in [0, 1000]");
  refused(Options({NAN}, 0), b.job, "evaluate.gamma_sweep[0] is nan");
  refused(Options({1001}, 0), b.job, "evaluate.gamma_sweep[0] is 1001");
  refused(Options(std::vector<double>(65, 1.0), 0), b.job, "evaluate.gamma_sweep has 65 values; at most 64");
  refused(Options({}, 0, 10), b.job, "evaluate.pt_bins is set without evaluate.gamma_sweep");
  refused(Options({1}, 0, 1001), b.job, "evaluate.pt_bins is 1001; must be in [1, 1000]");
  refused(Options({}, -1), b.job, "evaluate.calibration_bins is -1");
  refused(Options({}, 1001), b.job, "evaluate.calibration_bins is 1001");
  LossJob cosine = b.job;
  cosine.spec.params = FocalCosineParams{};
  refused(Options({1}, 0), cosine, "evaluate.gamma_sweep is set for focal_cosine; the analyses are defined for "
                                   "softmax_focal and sigmoid_focal");
  refused(Options({}, 15), cosine, "evaluate.calibration_bins is set for focal_cosine");
  LossJob smoothed = b.job;
  SigmoidFocalParams smoothing;
  smoothing.label_smoothing = 0.1;
  smoothed.spec.params = smoothing;
  refused(Options({1}, 0), smoothed, "evaluate.gamma_sweep is set with label_smoothing");
  EvaluationAnalyses calibration_only;  // calibration does not need the decomposition
  EXPECT_TRUE(calibration_only.Check(Options({}, 15), smoothed).ok());
  LossJob probabilities = b.job;
  SigmoidFocalParams input_p;
  input_p.input = SigmoidInput::kProbabilities;
  probabilities.spec.params = input_p;
  refused(Options({}, 15), probabilities, "input PROBABILITIES; it takes logits");
  SoftmaxFocalParams scheduled;
  scheduled.gamma_schedule = {{0.2, 5}};
  LossJob schedule = b.job;
  schedule.spec.params = scheduled;
  refused(Options({1}, 0), schedule, "a gamma_schedule sets γ per row");
  SoftmaxFocalParams poly, counted, smoothed_rows;
  poly.poly_epsilon = 1;
  counted.class_counts = {10, 20};
  smoothed_rows.label_smoothing = 0.1;
  for (const auto& [params, reason] : {std::pair<SoftmaxFocalParams, const char*>{poly, "Poly-1's term is not a focal term"},
                                       {counted, "class_counts sets α"},
                                       {smoothed_rows, "label_smoothing spreads each row's loss"}}) {
    LossJob job = b.job;
    job.spec.params = params;
    refused(Options({1}, 0), job, reason);
  }
  LossJob non_finite = b.job;
  non_finite.allow_non_finite = true;
  refused(Options({}, 15), non_finite, "evaluate.calibration_bins is set with allow_non_finite; the analyses need finite");
  const HostTensor weights = MakeTensor(DType::kFloat32, {2, 2}, {1, 1, 1, 1});
  LossJob weighted = b.job;
  weighted.weights = weights.view();
  refused(Options({1}, 0), weighted, "evaluate.gamma_sweep is set with weights; the analyses count every item once");
  const Batch wide = MakeBatch(SigmoidFocalParams{}, DType::kFloat32, {1, 17000}, std::vector<double>(17000, 0),
                               DType::kFloat32, {1, 17000}, std::vector<double>(17000, 0));
  refused(Options(std::vector<double>(64, 1.0), 0), wide.job, "at most 1048576 values × classes",
          absl::StatusCode::kResourceExhausted);

  EvaluationAnalyses analyses;
  ASSERT_TRUE(analyses.Check(Options({1}, 0), b.job).ok());
  LossJob other_variant = b.job;
  other_variant.spec.params = SoftmaxFocalParams{};
  EXPECT_NE(analyses.Check(Options({1}, 0), other_variant).message().find("but the evaluation started with sigmoid_focal"),
            std::string::npos);
  EXPECT_NE(analyses.Check(Options({2}, 0), b.job).message().find("evaluate differs from the first batch's"),
            std::string::npos);
  const Batch three = MakeBatch(SigmoidFocalParams{}, DType::kFloat32, {1, 3}, {1, 2, 3}, DType::kFloat32, {1, 3},
                                {0, 1, 0});
  EXPECT_NE(analyses.Check(Options({1}, 0), three.job).message().find("logits.shape[1] is 3, but the evaluation "
                                                                       "started with 2 classes"),
            std::string::npos);
  const Batch soft = MakeBatch(SigmoidFocalParams{}, DType::kFloat32, {2, 2}, {1, -1, 2, 0}, DType::kFloat32, {2, 2},
                               {1, 0, 0.5, 1});
  EvaluationAnalyses soft_targets;
  ASSERT_TRUE(soft_targets.Check(Options({1}, 0), soft.job).ok());
  const absl::Status added = soft_targets.Add(soft.job);
  EXPECT_NE(added.message().find("targets element 2 is 0.5; the sweep and calibration need targets of 0 or 1"),
            std::string::npos)
      << added;
  // A float64 target a hair from 1 is not 1, though float32 would round it there.
  const Batch near_one = MakeBatch(SigmoidFocalParams{}, DType::kFloat32, {2, 2}, {1, -1, 2, 0}, DType::kFloat64,
                                   {2, 2}, {1, 0, 0, 1 - 1e-9});
  EvaluationAnalyses near;
  ASSERT_TRUE(near.Check(Options({1}, 0), near_one.job).ok());
  EXPECT_NE(near.Add(near_one.job).message().find("targets element 3 is 0.99999999900000003"), std::string::npos);
}

}  // namespace
}  // namespace focal::server
