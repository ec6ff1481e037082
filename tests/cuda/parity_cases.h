// The CUDA backend's parity cases against the CPU backend, shared by the test on a real device
// (cuda_backend_test.cc) and the host emulation of the same kernels (emulation/emulation_test.cc):
// every variant × logits dtype × layout × reduction × option, on sizes that are and are not
// multiples of the kernels' 8-element runs, 16-byte vectors and block sizes, C from 1 to 262144,
// empty inputs, ignored rows at extreme logits, non-finite inputs, bad targets; the catalogue's
// variants (VARIANTS.md §5), §5.0's options (Poly-1, FLSD's γ schedule, class-balanced α) in every
// softmax launch shape, and the request's per-item loss weights on every variant.
//
// Tolerances (the targets): the reduced loss within 1e-6 relative; per-item losses and
// gradients within 1e-5 relative, with an absolute floor of 1e-6 × the tensor's largest magnitude
// for elements that are differences of near-equal terms (the focal_cosine gradient is
// coef_x·x + coef_p·p, whose error scales with the row, not with the element). Both backends
// compute in float32 with libraries accurate to 1-2 ulp (CUDA's expf/logf/log1pf, Highway's
// exp/log), and sum in different orders: ~1e-7 relative per item (5e-7 for the CPU's 16-lane
// sums at C = 262144). Narrow outputs add one rounding at each side: a value near a rounding
// boundary may land one ulp of the output dtype apart (2^-10 float16, 2^-7 bfloat16 relative;
// below float16's smallest normal, 2^-14, its ulp is the fixed subnormal spacing 2^-24). float64
// logits compute in double on both: 1e-12. Every device result is computed twice and must repeat
// bit for bit.
#pragma once

#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "kernels/cpu/cpu_backend.h"
#include "tests/unit/test_util.h"

namespace focal::cuda::parity {

using focal::testing::HostTensor;
using focal::testing::MakeTensor;
using focal::testing::RandomClasses;
using focal::testing::RandomNormal;
using focal::testing::RandomUniform;
using focal::testing::Values;

/// kHard: {0, 1} floats shaped like the logits; kSoft: [0, 1] floats with some exact 0s and 1s;
/// kSparse: mostly 0, the rest in (0, 1] (quality and IoU scores); kPerRow: one float per row
/// [N, d...] in [0, C-1], exactly 0, C-1, C-2 and integers among fractional ones
/// (distribution_focal's distances).
enum class Targets { kIndex, kHard, kSoft, kSparse, kPerRow };

/// One comparison: what to build and how to ask for it.
struct Case {
  std::string name;
  VariantParams params;
  Shape shape;
  DType logits_dtype = DType::kFloat32;
  Targets targets = Targets::kIndex;
  DType targets_dtype = DType::kInt64;
  Reduction reduction = Reduction::kMean;
  bool gradient = true;
  std::optional<DType> output_dtype;
  bool item_weights = false;      ///< NONE with an upstream gradient tensor
  bool num_objects = false;       ///< dynamic_focal's α_n
  bool background = false;        ///< sigmoid index targets include the background value C
  std::optional<int64_t> ignore;  ///< class-index targets equal to this are ignored
  double logit_scale = 3;
  /// quality_focal with class-index targets: the request's per-position scores in this dtype.
  std::optional<DType> scores;
  bool loss_weights = false;  ///< the request's per-item loss weights in [0, 2], some exactly 0
};

inline Case MakeCase(std::string name, VariantParams params, Shape shape, DType logits_dtype = DType::kFloat32,
              Targets targets = Targets::kIndex, DType targets_dtype = DType::kInt64) {
  Case k;
  k.name = std::move(name);
  k.params = std::move(params);
  k.shape = std::move(shape);
  k.logits_dtype = logits_dtype;
  k.targets = targets;
  k.targets_dtype = targets_dtype;
  return k;
}

/// How far every counted row's p_y stays from each threshold of a γ schedule (FLSD).
inline constexpr double kScheduleMargin = 1e-5;

/// FLSD's γ is piecewise constant in p_y, and the backends compute p_y in float32 (double for
/// float64 logits) with different summation orders, ~1e-7 apart: a row whose p_y were within
/// ~1e-6 of a threshold could take one γ on the CPU and the other on the device. So the cases
/// keep every counted row at least kScheduleMargin away: p_y is computed in double from the
/// logits as the tensor holds them (rounded to its dtype), and a row too near a threshold moves
/// its target to the next class until it is not. Deterministic: it depends on the data alone.
/// Returns the number of rows moved.
inline int KeepRowsOffScheduleThresholds(const std::vector<GammaStep>& schedule, const std::vector<double>& x,
                                         int64_t N, int64_t C, int64_t S, std::optional<int64_t> ignore,
                                         std::vector<double>& y) {
  int moved = 0;
  for (int64_t n = 0; n < N; ++n) {
    for (int64_t s = 0; s < S; ++s) {
      double& target = y[static_cast<size_t>(n * S + s)];
      if (ignore && target == static_cast<double>(*ignore)) continue;
      auto at = [&](int64_t c) { return x[static_cast<size_t>((n * C + c) * S + s)]; };
      double m = -INFINITY, z = 0;
      for (int64_t c = 0; c < C; ++c) m = std::max(m, at(c));
      for (int64_t c = 0; c < C; ++c) z += std::exp(at(c) - m);
      auto near = [&](int64_t c) {
        const double p_y = std::exp(at(c) - m) / z;
        for (const GammaStep& step : schedule) {
          if (std::fabs(p_y - step.threshold) < kScheduleMargin) return true;
        }
        return false;
      };
      int64_t tries = 0;
      for (; near(static_cast<int64_t>(target)) && tries < C; ++tries) {
        target = static_cast<double>((static_cast<int64_t>(target) + 1) % C);
      }
      if (tries == C) ADD_FAILURE() << "row " << n << "," << s << ": every class's p_y is near a threshold";
      moved += tries > 0;
    }
  }
  return moved;
}

/// The tensors of a case, owned.
struct Inputs {
  HostTensor logits, targets, weights, objects, scores, loss_weights;
  LossJob job;
};

inline std::unique_ptr<Inputs> Build(const Case& k, uint32_t seed) {
  auto in = std::make_unique<Inputs>();
  int64_t n = 1;
  for (int64_t d : k.shape) n *= d;
  std::vector<double> x = RandomNormal(static_cast<size_t>(n), k.logit_scale, seed);
  const auto* sigmoid = std::get_if<SigmoidFocalParams>(&k.params);
  if (sigmoid && sigmoid->input == SigmoidInput::kProbabilities) x = RandomUniform(x.size(), 0, 1, seed);
  in->logits = MakeTensor(k.logits_dtype, k.shape, x);
  // The row shape [N, d...] of class-index and per-row targets.
  Shape ts{k.shape[0]};
  if (k.shape.size() > 1) ts.insert(ts.end(), k.shape.begin() + 2, k.shape.end());
  int64_t rows = 1;
  for (int64_t d : ts) rows *= d;
  if (k.targets == Targets::kIndex) {
    const int64_t C = k.shape[1];
    std::vector<double> y = RandomClasses(static_cast<size_t>(rows), C + (k.background ? 1 : 0), seed + 1);
    if (k.ignore) {
      for (size_t i = 0; i < y.size(); i += 5) y[i] = static_cast<double>(*k.ignore);
    }
    const auto* softmax = std::get_if<SoftmaxFocalParams>(&k.params);
    if (softmax && !softmax->gamma_schedule.empty() && rows > 0) {
      KeepRowsOffScheduleThresholds(softmax->gamma_schedule, Values(in->logits.view()), k.shape[0], C,
                                    rows / k.shape[0], k.ignore, y);
    }
    in->targets = MakeTensor(k.targets_dtype, ts, y);
  } else if (k.targets == Targets::kPerRow) {
    const double last = static_cast<double>(k.shape[1] - 1);
    std::vector<double> y = RandomUniform(static_cast<size_t>(rows), 0, last, seed + 1);
    for (size_t i = 0; i < y.size(); ++i) {
      if (i % 9 == 0) y[i] = 0;
      if (i % 9 == 1) y[i] = last;                      // the last bin: left = B-2, w_right = 1
      if (i % 9 == 2) y[i] = std::max(last - 1, 0.0);  // left = B-2, w_left = 1
      if (i % 9 == 3) y[i] = std::round(y[i]);
    }
    in->targets = MakeTensor(k.targets_dtype, ts, y);
  } else {
    std::vector<double> t = RandomUniform(static_cast<size_t>(n), 0, 1, seed + 1);
    if (k.targets == Targets::kHard) {
      for (double& v : t) v = v < 0.3 ? 1 : 0;
    } else if (k.targets == Targets::kSparse) {
      for (size_t i = 0; i < t.size(); ++i) t[i] = i % 11 == 0 ? 1.0 : t[i] < 0.7 ? 0.0 : (t[i] - 0.7) / 0.3;
    } else {
      for (size_t i = 0; i < t.size(); i += 7) t[i] = std::round(t[i]);  // exact 0/1 among soft ones
    }
    in->targets = MakeTensor(k.targets_dtype, k.shape, t);
  }
  LossJob& job = in->job;
  job.spec.params = k.params;
  job.spec.reduction = k.reduction;
  job.logits = in->logits.view();
  job.targets = in->targets.view();
  job.compute_gradient = k.gradient;
  job.output_dtype = k.output_dtype;
  // NONE's items: one per row or one per logit, as the variant's table entry says.
  const Shape item_shape = FactsOf(k.params).items == Items::kRows ? ts : k.shape;
  const size_t items = static_cast<size_t>(FactsOf(k.params).items == Items::kRows ? rows : n);
  if (k.item_weights) {
    in->weights = MakeTensor(DType::kFloat32, item_shape, RandomUniform(items, -2, 2, seed + 2));
    job.grad_output = in->weights.view();
  } else if (k.reduction != Reduction::kNone) {
    job.grad_output = 0.75;
  }
  if (k.loss_weights) {
    std::vector<double> w = RandomUniform(items, 0, 2, seed + 4);
    for (size_t i = 0; i < w.size(); i += 6) w[i] = 0;  // a zero weight: no loss, no gradient
    in->loss_weights = MakeTensor(DType::kFloat32, item_shape, w);
    job.weights = in->loss_weights.view();
  }
  if (k.scores) {
    std::vector<double> q = RandomUniform(static_cast<size_t>(rows), 0, 1, seed + 5);
    for (size_t i = 0; i < q.size(); i += 7) q[i] = i % 2 ? 1 : 0;  // exact 0 and 1 among them
    in->scores = MakeTensor(*k.scores, ts, q);
    job.scores = in->scores.view();
  }
  if (k.num_objects) {
    std::vector<double> counts = RandomUniform(static_cast<size_t>(k.shape[0]), 0, 6, seed + 3);
    for (double& c : counts) c = std::floor(c);
    counts[0] = 3;  // a positive mean
    in->objects = MakeTensor(DType::kFloat32, {k.shape[0]}, counts);
    job.num_objects = in->objects.view();
  }
  return in;
}

/// Relative tolerance of an output of `dtype` from logits of `logits_dtype`.
inline double Tolerance(DType dtype, DType logits_dtype) {
  switch (dtype) {
    case DType::kFloat16: return std::ldexp(1.0, -10);
    case DType::kBFloat16: return std::ldexp(1.0, -7);
    default: return logits_dtype == DType::kFloat64 && dtype == DType::kFloat64 ? 1e-12 : 1e-5;
  }
}

/// One ulp of `dtype` in its subnormal range, the absolute floor of its rounding: 2^-24 for
/// float16; bfloat16's (2^-133) and the wide dtypes' are below every other term.
inline double SubnormalSpacing(DType dtype) { return dtype == DType::kFloat16 ? std::ldexp(1.0, -24) : 0.0; }

inline void ExpectTensorsClose(const OwnedTensor& gpu, const OwnedTensor& cpu, DType logits_dtype, const char* what) {
  ASSERT_EQ(gpu.dtype, cpu.dtype) << what;
  ASSERT_EQ(gpu.shape, cpu.shape) << what;
  const std::vector<double> g = Values(gpu.view()), c = Values(cpu.view());
  double scale = 0;
  for (double v : c) {
    if (std::isfinite(v)) scale = std::max(scale, std::fabs(v));
  }
  const double rel = Tolerance(gpu.dtype, logits_dtype);
  const double subnormal = SubnormalSpacing(gpu.dtype);
  int reported = 0;
  for (size_t i = 0; i < c.size() && reported < 5; ++i) {
    // Equal values pass, infinities included (a float16 gradient past 65504 is inf on both).
    const bool ok = std::isnan(c[i]) ? std::isnan(g[i])
                                     : g[i] == c[i] || std::fabs(g[i] - c[i]) <= std::max(rel * std::fabs(c[i]), subnormal) +
                                                                                rel * 0.1 * scale;
    if (!ok) {
      ADD_FAILURE() << what << "[" << i << "]: cuda " << g[i] << " cpu " << c[i] << " (scale " << scale << ")";
      ++reported;
    }
  }
}

/// A job over tensors the caller owns, with the gradient asked for.
inline LossJob GradientJob(VariantParams params, Reduction reduction, const HostTensor& logits,
                           const HostTensor& targets) {
  LossJob job;
  job.spec.params = std::move(params);
  job.spec.reduction = reduction;
  job.logits = logits.view();
  job.targets = targets.view();
  job.compute_gradient = true;
  return job;
}

/// The device under test: a backend's Compute, or the emulated kernels.
using DeviceCompute = std::function<absl::StatusOr<LossResult>(const LossJob&)>;

/// The scale of a reduced loss's rounding: |loss| itself, except where Poly-1's ε_p < 0 subtracts
/// its term ε_p Σ(1-p_t)^(γ+1) from the focal sum F, so that the loss can be much smaller than
/// its parts. Each item's error is then relative to its parts, and the sum's to F + |ε_p| G, with
/// G the poly sum: F from the CPU backend with ε_p = 0, |ε_p G| = |loss - F|.
inline double ReducedLossScale(const LossJob& job, double loss) {
  auto with_parts = [&](auto params) -> double {
    if (!(params.poly_epsilon < 0)) return std::fabs(loss);
    params.poly_epsilon = 0;
    LossJob focal_only = job;
    focal_only.spec.params = params;
    const auto focal = CpuBackend().Compute(focal_only);
    if (!focal.ok()) return std::fabs(loss);
    return std::fabs(focal->loss) + std::fabs(loss - focal->loss);  // F + |ε_p G|
  };
  if (const auto* p = std::get_if<SigmoidFocalParams>(&job.spec.params)) return with_parts(*p);
  if (const auto* p = std::get_if<SoftmaxFocalParams>(&job.spec.params)) return with_parts(*p);
  return std::fabs(loss);
}

/// Runs `job` on the CPU backend and twice on `device`, and compares: the same status, count,
/// values within the tolerances above, and bit-identical repeats. `expect_ok`: the job is valid
/// (a case that both backends reject would pass without comparing anything).
inline void CompareJob(const DeviceCompute& device, const LossJob& job, const std::string& backend_prefix,
                       bool expect_ok = false) {
  const DType logits_dtype = job.logits.dtype;
  CpuBackendOptions poisoned;
  poisoned.poison_outputs = true;  // an element the CPU kernels leave unwritten reads as NaN
  const auto cpu = CpuBackend(poisoned).Compute(job);
  if (expect_ok) {
    ASSERT_TRUE(cpu.ok()) << "cpu: " << cpu.status();
  }
  const auto dev = device(job);
  ASSERT_EQ(dev.ok(), cpu.ok()) << "device: " << dev.status() << " cpu: " << cpu.status();
  if (!cpu.ok()) {
    EXPECT_EQ(dev.status(), cpu.status());  // the same field and first bad index in the message
    return;
  }
  EXPECT_EQ(dev->count, cpu->count);
  const double loss_tol = logits_dtype == DType::kFloat64 ? 1e-12 : 1e-6;
  if (std::isnan(cpu->loss)) {
    EXPECT_TRUE(std::isnan(dev->loss)) << "reduced loss " << dev->loss;
  } else {
    EXPECT_NEAR(dev->loss, cpu->loss, loss_tol * ReducedLossScale(job, cpu->loss) + 1e-30) << "reduced loss";
  }
  EXPECT_EQ(dev->losses.has_value(), cpu->losses.has_value());
  if (dev->losses && cpu->losses) ExpectTensorsClose(*dev->losses, *cpu->losses, logits_dtype, "losses");
  EXPECT_EQ(dev->gradient.has_value(), cpu->gradient.has_value());
  if (dev->gradient && cpu->gradient) ExpectTensorsClose(*dev->gradient, *cpu->gradient, logits_dtype, "gradient");
  EXPECT_EQ(dev->backend.rfind(backend_prefix, 0), 0u) << dev->backend;
  const auto again = device(job);
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_EQ(std::memcmp(&again->loss, &dev->loss, sizeof(double)), 0) << "loss differs between runs";
  if (dev->gradient) {
    EXPECT_EQ(again->gradient->bytes, dev->gradient->bytes) << "gradient differs between runs";
  }
  if (dev->losses) {
    EXPECT_EQ(again->losses->bytes, dev->losses->bytes) << "losses differ between runs";
  }
}

inline void CompareCase(const DeviceCompute& device, const Case& k, const std::string& backend_prefix,
                        uint32_t seed = 7) {
  SCOPED_TRACE(k.name);
  const auto in = Build(k, seed);
  CompareJob(device, in->job, backend_prefix, /*expect_ok=*/true);
}

constexpr DType kLogitsDTypes[] = {DType::kFloat32, DType::kFloat16, DType::kBFloat16, DType::kFloat64};
constexpr Reduction kReductions[] = {Reduction::kMean, Reduction::kSum, Reduction::kNone};

inline std::string Describe(const Shape& s) { return absl::StrCat("[", absl::StrJoin(s, ","), "]"); }

/// Reduction, gradient, output dtype and upstream weights cycled by `i`, so that every
/// combination appears across a family without a full product.
inline void Vary(Case& k, int i) {
  k.reduction = kReductions[i % 3];
  k.gradient = i % 4 != 3;
  if (i % 5 == 1) k.output_dtype = DType::kFloat32;
  k.item_weights = k.reduction == Reduction::kNone && i % 2 == 0;
  k.name = absl::StrCat(k.name, " ", DTypeName(k.logits_dtype), " ", Describe(k.shape), " reduction ",
                        static_cast<int>(k.reduction), k.gradient ? " grad" : " no-grad",
                        k.output_dtype ? " out f32" : "", k.item_weights ? " weights" : "",
                        k.loss_weights ? " loss-weights" : "", k.scores ? " scores" : "");
}

/// [N, C] softmax_focal, C from 1 to 4099 (warp rows and block rows), with N·C about `budget`.
inline std::vector<Case> SoftmaxRowCases(int64_t budget) {
  std::vector<Case> cases;
  int i = 0;
  for (DType dt : kLogitsDTypes) {
    for (int64_t C : {1, 2, 3, 7, 8, 80, 81, 1000, 2048, 2049, 4099}) {
      const int64_t N = std::max<int64_t>(3, std::min<int64_t>(257, budget / C));
      for (int option = 0; option < 4; ++option) {
        SoftmaxFocalParams p;
        p.gamma = option == 2 ? 0.5 : 2.0;
        if (option & 1) p.label_smoothing = 0.1;
        if (option >= 2) {
          p.alpha = std::vector<double>(static_cast<size_t>(C));
          for (int64_t c = 0; c < C; ++c) p.alpha[c] = 0.25 + 0.5 * static_cast<double>(c % 3);
          p.ignore_index = -100;
        }
        Case k = MakeCase(absl::StrCat("softmax option ", option), p, {N, C}, dt);
        if (option >= 2) k.ignore = -100;
        k.targets_dtype = option == 1 && C <= 255 ? DType::kUInt8 : option == 3 ? DType::kInt32 : DType::kInt64;
        Vary(k, i++);
        cases.push_back(k);
      }
    }
  }
  return cases;
}

/// [N, C, d...] softmax_focal read in place at stride S.
inline std::vector<Case> SoftmaxStridedCases() {
  std::vector<Case> cases;
  int i = 0;
  for (DType dt : kLogitsDTypes) {
    for (const Shape& shape : {Shape{3, 5, 7}, Shape{2, 19, 33, 17}, Shape{4, 2, 300}, Shape{1, 1000, 3}}) {
      for (int option = 0; option < 3; ++option) {
        SoftmaxFocalParams p;
        if (option == 1) p.label_smoothing = 0.2;
        if (option == 2) p.ignore_index = 255, p.gamma = 1.0;
        Case k = MakeCase(absl::StrCat("softmax strided option ", option), p, shape, dt);
        if (option == 2) k.ignore = 255, k.targets_dtype = DType::kInt32;
        Vary(k, i++);
        cases.push_back(k);
      }
    }
  }
  return cases;
}

/// Block-per-row rows up to C = 262144 (a language-model vocabulary and more).
inline std::vector<Case> SoftmaxLargeClassCases() {
  std::vector<Case> cases;
  int i = 0;
  for (DType dt : {DType::kFloat32, DType::kBFloat16}) {
    for (int64_t C : {131072, 262144, 262143}) {
      for (bool smooth : {false, true}) {
        SoftmaxFocalParams p;
        if (smooth) p.label_smoothing = 0.1;
        Case k = MakeCase(smooth ? "softmax large C smoothed" : "softmax large C", p, {3, C}, dt);
        k.logit_scale = 6;
        Vary(k, i++);
        cases.push_back(k);
      }
    }
  }
  return cases;
}

inline std::vector<Case> SigmoidFloatTargetCases() {
  std::vector<Case> cases;
  int i = 0;
  for (DType dt : kLogitsDTypes) {
    for (const Shape& shape : {Shape{1}, Shape{7}, Shape{8}, Shape{9}, Shape{33, 5}, Shape{1000, 80}, Shape{3, 19, 7, 9}}) {
      for (int option = 0; option < 5; ++option) {
        SigmoidFocalParams p;
        Case k = MakeCase(absl::StrCat("sigmoid option ", option), p, shape, dt, Targets::kHard, DType::kFloat32);
        if (option == 1) k.targets = Targets::kSoft;
        if (option == 2) p.label_smoothing = 0.1, p.smoothing_classes = 4, p.gamma = 1.5;
        if (option == 3) p.alpha = -1, p.gamma = 0, k.targets_dtype = dt;  // targets in the logits' dtype
        if (option == 4) p.input = SigmoidInput::kProbabilities, k.targets = Targets::kSoft, k.targets_dtype = DType::kFloat64;
        k.params = p;
        Vary(k, i++);
        cases.push_back(k);
      }
    }
  }
  return cases;
}

inline std::vector<Case> SigmoidIndexTargetCases() {
  std::vector<Case> cases;
  int i = 0;
  for (DType dt : kLogitsDTypes) {
    for (const Shape& shape : {Shape{5, 3}, Shape{33, 80}, Shape{2, 7, 5, 3}, Shape{64, 1}}) {
      for (int option = 0; option < 3; ++option) {
        SigmoidFocalParams p;
        Case k = MakeCase(absl::StrCat("sigmoid index option ", option), p, shape, dt, Targets::kIndex, DType::kInt64);
        k.background = true;
        if (option == 1) p.ignore_index = -1, k.ignore = -1, k.targets_dtype = DType::kInt32;
        if (option == 2) p.label_smoothing = 0.05, p.gamma = 0.5;
        k.params = p;
        Vary(k, i++);
        cases.push_back(k);
      }
    }
  }
  return cases;
}

inline std::vector<Case> DynamicFocalCases() {
  std::vector<Case> cases;
  int i = 0;
  for (DType dt : kLogitsDTypes) {
    for (const Shape& shape : {Shape{5, 17}, Shape{4, 3, 11}, Shape{9, 1}, Shape{2, 4096}}) {
      for (bool objects : {false, true}) {
        Case k = MakeCase(objects ? "dynamic with num_objects" : "dynamic", DynamicFocalParams{}, shape, dt,
                          Targets::kHard, DType::kFloat32);
        k.num_objects = objects;
        Vary(k, i++);
        cases.push_back(k);
      }
    }
  }
  return cases;
}

/// [N, C] focal_cosine, C from 1 to 5000, N·C about `budget`.
inline std::vector<Case> FocalCosineCases(int64_t budget) {
  std::vector<Case> cases;
  int i = 0;
  for (DType dt : kLogitsDTypes) {
    for (int64_t C : {1, 2, 3, 8, 80, 1000, 2049, 5000}) {
      const int64_t N = std::max<int64_t>(2, std::min<int64_t>(129, budget / C));
      FocalCosineParams p;
      p.gamma = i % 2 ? 2.0 : 0.7;
      Case k = MakeCase("focal_cosine", p, {N, C}, dt);
      Vary(k, i++);
      cases.push_back(k);
    }
  }
  return cases;
}

// ------------------------------------------------------------------------------------------
// The catalogue's variants (VARIANTS.md §5). The elementwise ones run sigmoid_focal's kernel
// with another formula: float targets on sizes that are and are not multiples of the 8-element
// runs, class-index targets with background C (and ignored rows) in [N, C] and [N, C, S].

/// Shapes of the elementwise variants' float targets and of their class-index targets.
inline const std::vector<Shape>& ElementwiseFloatShapes() {
  static const std::vector<Shape> shapes{Shape{7}, Shape{9}, Shape{33, 5}, Shape{300, 80}, Shape{3, 19, 7, 9}};
  return shapes;
}
inline const std::vector<Shape>& ElementwiseIndexShapes() {
  static const std::vector<Shape> shapes{Shape{5, 3}, Shape{33, 80}, Shape{2, 7, 5, 3}, Shape{64, 1}};
  return shapes;
}

// ------------------------------------------------------------------------------------------
// §5.0's options (VARIANTS.md): softmax_focal's Poly-1, FLSD γ schedule and class-balanced α,
// and sigmoid_focal's Poly-1.

/// FLSD-53 (γ 5 below p_y 0.2, else the fixed 3) and a three-step schedule, as the CPU tests use.
inline std::vector<GammaStep> Flsd53() { return {{0.2, 5.0}}; }
inline std::vector<GammaStep> ThreeStepSchedule() { return {{0.1, 0.5}, {0.4, 4.0}, {0.8, 1.0}}; }

/// Examples per class for class_counts: zeros (every fifth class from the second, and all of
/// them at C = 1: no class seen, α all ones), ones, and counts up to 1e9 (β^n_c underflows).
inline std::vector<double> ClassCountsWithZeros(int64_t C) {
  std::vector<double> counts(static_cast<size_t>(C));
  for (int64_t c = 0; c < C; ++c) {
    counts[c] = c % 5 == 1 || C == 1 ? 0 : c % 5 == 3 ? 1e9 : static_cast<double>((c * 7919) % 100000 + 1);
  }
  return counts;
}

inline constexpr int kSoftmaxOptions = 9;

/// softmax_focal option `option` for C classes, named in `name`; `ignore`: its rows with target
/// -100 are ignored.
inline SoftmaxFocalParams SoftmaxOptionParams(int option, int64_t C, std::string& name, bool& ignore) {
  SoftmaxFocalParams p;
  ignore = false;
  auto per_class_alpha = [&] {
    p.alpha.resize(static_cast<size_t>(C));
    for (int64_t c = 0; c < C; ++c) p.alpha[c] = 0.25 + 0.5 * static_cast<double>(c % 3);
  };
  switch (option) {
    case 0: name = "poly -1 γ 2", p.poly_epsilon = -1; break;
    case 1: name = "poly 0.5 γ 0 alpha", p.poly_epsilon = 0.5, p.gamma = 0, per_class_alpha(), ignore = true; break;
    case 2: name = "poly 2 γ 1.5", p.poly_epsilon = 2, p.gamma = 1.5, ignore = true; break;
    case 3: name = "FLSD-53", p.gamma = 3, p.gamma_schedule = Flsd53(); break;
    case 4:
      name = "3-step alpha";
      p.gamma = 3, p.gamma_schedule = ThreeStepSchedule(), per_class_alpha(), ignore = true;
      break;
    case 5:
      name = "3-step poly -1";
      p.gamma = 3, p.gamma_schedule = ThreeStepSchedule(), p.poly_epsilon = -1, ignore = true;
      break;
    case 6:
      name = "counts β 0.9";
      p.class_counts = ClassCountsWithZeros(C), p.class_balance_beta = 0.9, ignore = true;
      break;
    case 7:
      name = "counts β 0.9999 FLSD-53 poly 0.5";
      p.class_counts = ClassCountsWithZeros(C), p.class_balance_beta = 0.9999;
      p.gamma = 3, p.gamma_schedule = Flsd53(), p.poly_epsilon = 0.5;
      break;
    default:  // α of every class under label smoothing
      name = "counts β 0.9999 smoothed";
      p.class_counts = ClassCountsWithZeros(C), p.class_balance_beta = 0.9999, p.label_smoothing = 0.1, ignore = true;
      break;
  }
  if (ignore) p.ignore_index = -100;
  return p;
}

/// §5.0's softmax_focal options in every launch shape of the CUDA planner: warp rows (C 1 to
/// 1000, N·C about `budget`), block rows (C 4099), the strided [N, C, S] layout; every logits
/// dtype, every reduction, ignored rows, with and without the request's per-item loss weights.
inline std::vector<Case> SoftmaxOptionCases(int64_t budget) {
  std::vector<Case> cases;
  std::vector<Shape> shapes;
  for (int64_t C : {1, 3, 8, 80, 1000, 4099}) {
    shapes.push_back({std::max<int64_t>(3, std::min<int64_t>(257, budget / C)), C});
  }
  for (const Shape& strided : {Shape{3, 5, 7}, Shape{2, 19, 33, 17}, Shape{4, 2, 300}}) shapes.push_back(strided);
  int i = 0;
  for (DType dt : kLogitsDTypes) {
    for (size_t s = 0; s < shapes.size(); ++s) {
      const Shape& shape = shapes[s];
      for (int option = 0; option < kSoftmaxOptions; ++option) {
        std::string name;
        bool ignore = false;
        const SoftmaxFocalParams p = SoftmaxOptionParams(option, shape[1], name, ignore);
        Case k = MakeCase(absl::StrCat("softmax ", name), p, shape, dt);
        if (ignore) k.ignore = -100;
        k.targets_dtype = !ignore && shape[1] <= 255 && i % 3 == 0 ? DType::kUInt8
                          : i % 2                                 ? DType::kInt32
                                                                  : DType::kInt64;
        if (shape[1] == 4099) k.logit_scale = 6;  // p_y spread wider than 1/C
        k.loss_weights = i % 7 % 2 == 0;
        Vary(k, static_cast<int>(s) + i++);  // + s: each option meets every reduction (9 options ≡ 0 mod 3)
        cases.push_back(k);
      }
    }
  }
  return cases;
}

/// The generator's promise for the schedule cases: every counted row's p_y (from the tensors as
/// built) at least kScheduleMargin from each threshold, and rows on both sides of every
/// threshold across the family; and a row on a threshold moves to the next class that is not.
inline void CheckScheduleRowsStayOffThresholds(const std::vector<Case>& cases) {
  {
    // p = (0.2, 0.8, ~0): class 0 sits on FLSD-53's threshold.
    const std::vector<double> x{std::log(0.2), std::log(0.8), -30};
    std::vector<double> y{0};
    EXPECT_EQ(KeepRowsOffScheduleThresholds(Flsd53(), x, 1, 3, 1, std::nullopt, y), 1);
    EXPECT_EQ(y[0], 1);
    // p = (0.4, 0.1, 0.5): classes 0 and 1 sit on the three-step's thresholds.
    const std::vector<double> x3{std::log(0.4), std::log(0.1), std::log(0.5)};
    y = {0};
    EXPECT_EQ(KeepRowsOffScheduleThresholds(ThreeStepSchedule(), x3, 1, 3, 1, std::nullopt, y), 1);
    EXPECT_EQ(y[0], 2);
    y = {-100};
    EXPECT_EQ(KeepRowsOffScheduleThresholds(Flsd53(), x, 1, 3, 1, -100, y), 0);  // ignored: left alone
  }
  std::vector<std::pair<double, std::pair<int, int>>> sides;  // threshold: rows below, above
  for (const Case& k : cases) {
    const auto* p = std::get_if<SoftmaxFocalParams>(&k.params);
    if (!p || p->gamma_schedule.empty()) continue;
    SCOPED_TRACE(k.name);
    const auto in = Build(k, 7);
    const std::vector<double> x = Values(in->logits.view()), y = Values(in->targets.view());
    const int64_t N = k.shape[0], C = k.shape[1], S = N ? static_cast<int64_t>(y.size()) / N : 0;
    for (int64_t r = 0; r < N * S; ++r) {
      if (k.ignore && y[r] == static_cast<double>(*k.ignore)) continue;
      const int64_t n = r / S, s = r % S;
      double m = -INFINITY, z = 0;
      for (int64_t c = 0; c < C; ++c) m = std::max(m, x[(n * C + c) * S + s]);
      for (int64_t c = 0; c < C; ++c) z += std::exp(x[(n * C + c) * S + s] - m);
      const double p_y = std::exp(x[(n * C + static_cast<int64_t>(y[r])) * S + s] - m) / z;
      for (const GammaStep& step : p->gamma_schedule) {
        EXPECT_GE(std::fabs(p_y - step.threshold), kScheduleMargin) << "row " << r;
        auto it = std::find_if(sides.begin(), sides.end(), [&](const auto& e) { return e.first == step.threshold; });
        if (it == sides.end()) it = sides.insert(sides.end(), {step.threshold, {0, 0}});
        (p_y < step.threshold ? it->second.first : it->second.second)++;
      }
    }
  }
  for (const auto& [threshold, counts] : sides) {
    EXPECT_GT(counts.first, 0) << "no row below threshold " << threshold;
    EXPECT_GT(counts.second, 0) << "no row above threshold " << threshold;
  }
  EXPECT_FALSE(sides.empty());
}

/// §5.0's sigmoid_focal Poly-1, ε_p -1, 0.5 and 2: float hard and soft targets (in float32 and
/// in the logits' dtype), label smoothing, α off, γ 0, 0.5, 1.5 and 2; class-index targets with
/// background, ignored rows and smoothing. Every logits dtype and reduction, with and without
/// the request's per-item loss weights.
inline std::vector<Case> SigmoidPolyCases() {
  std::vector<Case> cases;
  int i = 0;
  for (DType dt : kLogitsDTypes) {
    for (const Shape& shape : ElementwiseFloatShapes()) {
      for (int option = 0; option < 5; ++option) {
        SigmoidFocalParams p;
        Case k = MakeCase(absl::StrCat("sigmoid poly option ", option), p, shape, dt, Targets::kHard, DType::kFloat32);
        if (option == 0) p.poly_epsilon = -1;
        if (option == 1) p.poly_epsilon = 0.5, p.gamma = 0.5, k.targets = Targets::kSoft;
        if (option == 2) {
          p.poly_epsilon = 2, p.gamma = 1.5, p.label_smoothing = 0.1, p.smoothing_classes = 4;
          k.targets = Targets::kSoft;
        }
        if (option == 3) p.poly_epsilon = -1, p.gamma = 0, p.alpha = -1, p.label_smoothing = 0.2;
        if (option == 4) p.poly_epsilon = 2, k.targets = Targets::kSoft, k.targets_dtype = dt;
        k.params = p;
        k.loss_weights = i % 7 % 2 == 0;
        Vary(k, i++);
        cases.push_back(k);
      }
    }
    for (const Shape& shape : ElementwiseIndexShapes()) {
      for (int option = 0; option < 3; ++option) {
        SigmoidFocalParams p;
        Case k = MakeCase(absl::StrCat("sigmoid poly index option ", option), p, shape, dt);
        k.background = true;
        if (option == 0) p.poly_epsilon = 0.5;
        if (option == 1) p.poly_epsilon = -1, p.ignore_index = -1, k.ignore = -1, k.targets_dtype = DType::kInt32;
        if (option == 2) p.poly_epsilon = 2, p.label_smoothing = 0.05, p.gamma = 0.5;
        k.params = p;
        k.loss_weights = i % 7 % 2 == 0;
        Vary(k, i++);
        cases.push_back(k);
      }
    }
  }
  return cases;
}

/// §5.0's rules: Poly-1 or a γ schedule with softmax label smoothing, class_counts with alpha,
/// and sigmoid Poly-1 on probabilities are rejected, with the CPU's message.
inline void CheckRejectedOptionCombinations(const DeviceCompute& device, const std::string& backend_prefix) {
  SoftmaxFocalParams poly_smoothed;
  poly_smoothed.poly_epsilon = 0.5, poly_smoothed.label_smoothing = 0.1;
  SoftmaxFocalParams schedule_smoothed;
  schedule_smoothed.gamma_schedule = Flsd53(), schedule_smoothed.label_smoothing = 0.1;
  SoftmaxFocalParams counts_and_alpha;
  counts_and_alpha.class_counts = ClassCountsWithZeros(9), counts_and_alpha.alpha = std::vector<double>(9, 1.0);
  SigmoidFocalParams poly_probabilities;
  poly_probabilities.poly_epsilon = 0.5, poly_probabilities.input = SigmoidInput::kProbabilities;
  for (const VariantParams& params : {VariantParams{poly_smoothed}, VariantParams{schedule_smoothed},
                                      VariantParams{counts_and_alpha}, VariantParams{poly_probabilities}}) {
    const bool sigmoid = std::holds_alternative<SigmoidFocalParams>(params);
    Case k = MakeCase("rejected option combination", params, {10, 9}, DType::kFloat32,
                      sigmoid ? Targets::kSoft : Targets::kIndex, sigmoid ? DType::kFloat32 : DType::kInt64);
    const auto in = Build(k, 9);
    SCOPED_TRACE(k.name);
    ASSERT_FALSE(CpuBackend().Compute(in->job).ok());
    CompareJob(device, in->job, backend_prefix);
  }
}

/// §5.1 asymmetric: soft float targets and class indices (background, ignore_index), clip 0 and
/// 0.05, γ- 0.5 (below 1: log1p(-p_m)/p_m's limit) and 4, γ+ 0 and 1.
inline std::vector<Case> AsymmetricCases() {
  std::vector<Case> cases;
  int i = 0;
  for (DType dt : kLogitsDTypes) {
    for (int option = 0; option < 4; ++option) {
      AsymmetricParams p;
      p.clip = option % 2 ? 0.0 : 0.05;
      p.gamma_neg = option < 2 ? 4.0 : 0.5;
      p.gamma_pos = option == 3 ? 1.0 : 0.0;
      for (const Shape& shape : ElementwiseFloatShapes()) {
        Case k = MakeCase(absl::StrCat("asymmetric soft option ", option), p, shape, dt, Targets::kSoft,
                          option == 2 ? DType::kFloat64 : DType::kFloat32);
        Vary(k, i++);
        cases.push_back(k);
      }
      for (const Shape& shape : ElementwiseIndexShapes()) {
        AsymmetricParams q = p;
        if (option % 2) q.ignore_index = -1;
        Case k = MakeCase(absl::StrCat("asymmetric index option ", option), q, shape, dt, Targets::kIndex,
                          option % 2 ? DType::kInt32 : DType::kInt64);
        k.background = true;
        if (option % 2) k.ignore = -1;
        Vary(k, i++);
        cases.push_back(k);
      }
    }
  }
  return cases;
}

/// §5.2 quality_focal: sparse float quality targets, and class indices with the request's
/// scores (background rows, ignored rows); β 1 (the sign(d)|d|^0 edge), 1.5 and 2.
inline std::vector<Case> QualityFocalCases() {
  std::vector<Case> cases;
  int i = 0;
  for (DType dt : kLogitsDTypes) {
    for (double beta : {2.0, 1.0, 1.5}) {
      QualityFocalParams p;
      p.beta = beta;
      for (const Shape& shape : ElementwiseFloatShapes()) {
        Case k = MakeCase(absl::StrCat("quality_focal float beta ", beta), p, shape, dt, Targets::kSparse,
                          beta == 1.5 ? dt : DType::kFloat32);
        Vary(k, i++);
        cases.push_back(k);
      }
      for (const Shape& shape : ElementwiseIndexShapes()) {
        QualityFocalParams q = p;
        if (beta == 1.0) q.ignore_index = 255;
        Case k = MakeCase(absl::StrCat("quality_focal index beta ", beta), q, shape, dt, Targets::kIndex,
                          beta == 1.0 ? DType::kInt32 : DType::kInt64);
        k.background = true;
        if (beta == 1.0) k.ignore = 255;
        k.scores = beta == 1.5 ? DType::kFloat16 : beta == 1.0 ? DType::kFloat64 : DType::kFloat32;
        Vary(k, i++);
        cases.push_back(k);
      }
    }
  }
  return cases;
}

/// §5.3 varifocal: sparse IoU targets, iou_weighted true and false, γ 2 and 0.5 (p^γ in log
/// space), α 0.75 and 0.25.
inline std::vector<Case> VarifocalCases() {
  std::vector<Case> cases;
  int i = 0;
  for (DType dt : kLogitsDTypes) {
    for (int option = 0; option < 4; ++option) {
      VarifocalParams p;
      p.iou_weighted = option % 2 == 0;
      p.gamma = option < 2 ? 2.0 : 0.5;
      if (option == 3) p.alpha = 0.25;
      for (const Shape& shape : ElementwiseFloatShapes()) {
        Case k = MakeCase(absl::StrCat("varifocal option ", option), p, shape, dt, Targets::kSparse,
                          option == 2 ? DType::kBFloat16 : DType::kFloat32);
        Vary(k, i++);
        cases.push_back(k);
      }
    }
  }
  return cases;
}

/// §5.4 focal_star: hard float targets and class indices (background, ignore_index); α -1 (off)
/// and 0.25, γ 0.5 and 2, β 0 and 1.
inline std::vector<Case> FocalStarCases() {
  std::vector<Case> cases;
  int i = 0;
  for (DType dt : kLogitsDTypes) {
    for (int option = 0; option < 4; ++option) {
      FocalStarParams p;
      p.alpha = option % 2 ? 0.25 : -1.0;
      p.gamma = option < 2 ? 2.0 : 0.5;
      p.beta = option == 1 || option == 2 ? 1.0 : 0.0;
      for (const Shape& shape : ElementwiseFloatShapes()) {
        Case k = MakeCase(absl::StrCat("focal_star hard option ", option), p, shape, dt, Targets::kHard,
                          option == 3 ? DType::kFloat16 : DType::kFloat32);
        Vary(k, i++);
        cases.push_back(k);
      }
      for (const Shape& shape : ElementwiseIndexShapes()) {
        FocalStarParams q = p;
        if (option >= 2) q.ignore_index = -100;
        Case k = MakeCase(absl::StrCat("focal_star index option ", option), q, shape, dt);
        k.background = true;
        if (option >= 2) k.ignore = -100;
        Vary(k, i++);
        cases.push_back(k);
      }
    }
  }
  return cases;
}

/// §5.5 distribution_focal: [N, B] rows with B = 2, 17 (GFL's reg_max 16), 80 in warp rows and
/// 4099 in block rows, and the strided [N, B, S] layout; distances at 0, B-1, B-2, on integers
/// and fractional, in float32, float64 and float16.
inline std::vector<Case> DistributionFocalCases() {
  std::vector<Case> cases;
  int i = 0;
  for (DType dt : kLogitsDTypes) {
    for (const Shape& shape : {Shape{300, 2}, Shape{97, 17}, Shape{64, 80}, Shape{5, 4099}, Shape{3, 17, 7},
                               Shape{2, 5, 33, 3}, Shape{4, 2, 300}}) {
      const DType targets_dtype = i % 5 == 2 ? DType::kFloat64 : i % 5 == 4 ? DType::kFloat16 : DType::kFloat32;
      Case k = MakeCase("distribution_focal", DistributionFocalParams{}, shape, dt, Targets::kPerRow, targets_dtype);
      Vary(k, i++);
      cases.push_back(k);
    }
  }
  return cases;
}

/// §5.0 `weights`: per-item loss weights (some exactly 0) on one case of every variant and row
/// shape, in every reduction, with NONE's upstream tensor on top of them for some.
inline std::vector<Case> LossWeightCases() {
  std::vector<Case> cases;
  SoftmaxFocalParams ignoring;
  ignoring.ignore_index = -100;
  SoftmaxFocalParams smoothed;
  smoothed.label_smoothing = 0.1;
  SigmoidFocalParams sigmoid_ignoring;
  sigmoid_ignoring.ignore_index = -1;
  QualityFocalParams quality;
  quality.beta = 1.5;
  FocalStarParams star;
  star.alpha = 0.25;
  std::vector<Case> base{
      MakeCase("weights softmax", ignoring, {57, 80}),
      MakeCase("weights softmax smoothed", smoothed, {33, 7}),
      MakeCase("weights softmax block rows", SoftmaxFocalParams{}, {3, 3000}),
      MakeCase("weights softmax strided", ignoring, {3, 5, 7}),
      MakeCase("weights sigmoid", SigmoidFocalParams{}, {33, 5}, DType::kFloat32, Targets::kSoft, DType::kFloat32),
      MakeCase("weights sigmoid index", sigmoid_ignoring, {2, 7, 5, 3}, DType::kFloat32, Targets::kIndex,
               DType::kInt32),
      MakeCase("weights dynamic", DynamicFocalParams{}, {4, 3, 11}, DType::kFloat32, Targets::kHard, DType::kFloat32),
      MakeCase("weights focal_cosine", FocalCosineParams{}, {41, 80}),
      MakeCase("weights asymmetric", AsymmetricParams{}, {33, 80}, DType::kFloat32, Targets::kSoft, DType::kFloat32),
      MakeCase("weights asymmetric index", AsymmetricParams{}, {33, 80}),
      MakeCase("weights quality_focal", quality, {3, 19, 7, 9}, DType::kFloat32, Targets::kSparse, DType::kFloat32),
      MakeCase("weights quality_focal index", quality, {33, 80}),
      MakeCase("weights varifocal", VarifocalParams{}, {33, 80}, DType::kFloat32, Targets::kSparse, DType::kFloat32),
      MakeCase("weights focal_star", star, {33, 5}, DType::kFloat32, Targets::kHard, DType::kFloat32),
      MakeCase("weights focal_star index", star, {2, 7, 5, 3}),
      MakeCase("weights distribution_focal", DistributionFocalParams{}, {97, 17}, DType::kFloat32, Targets::kPerRow,
               DType::kFloat32),
      MakeCase("weights distribution_focal strided", DistributionFocalParams{}, {3, 17, 7}, DType::kFloat32,
               Targets::kPerRow, DType::kFloat32),
  };
  int i = 0;
  for (const DType dt : {DType::kFloat32, DType::kBFloat16}) {
    for (Case k : base) {
      k.logits_dtype = dt;
      k.loss_weights = true;
      const auto& facts = FactsOf(k.params);
      if (k.targets == Targets::kIndex && facts.items == Items::kElements) k.background = true;
      if (std::holds_alternative<SoftmaxFocalParams>(k.params) && IgnoreIndex(k.params)) k.ignore = -100;
      if (std::holds_alternative<SigmoidFocalParams>(k.params)) k.ignore = -1;
      if (std::holds_alternative<QualityFocalParams>(k.params) && k.targets == Targets::kIndex) {
        k.scores = DType::kFloat32;
      }
      for (int r = 0; r < 3; ++r) {
        Case v = k;
        Vary(v, i++);
        cases.push_back(v);
      }
    }
  }
  return cases;
}

inline std::vector<Case> EmptyCases() {
  std::vector<Case> cases;
  int i = 0;
  for (Case k : {MakeCase("softmax empty", SoftmaxFocalParams{}, {0, 80}),
                 MakeCase("softmax strided empty", SoftmaxFocalParams{}, {0, 3, 4}),
                 MakeCase("sigmoid empty", SigmoidFocalParams{}, {0}, DType::kFloat32, Targets::kHard, DType::kFloat32),
                 MakeCase("focal_cosine empty", FocalCosineParams{}, {0, 5}),
                 MakeCase("asymmetric empty", AsymmetricParams{}, {0, 4}, DType::kFloat32, Targets::kSoft,
                          DType::kFloat32),
                 MakeCase("distribution_focal empty", DistributionFocalParams{}, {0, 17}, DType::kFloat32,
                          Targets::kPerRow, DType::kFloat32),
                 MakeCase("distribution_focal strided empty", DistributionFocalParams{}, {2, 17, 0},
                          DType::kFloat32, Targets::kPerRow, DType::kFloat32)}) {
    for (Reduction r : kReductions) {
      k.reduction = r;
      k.name += absl::StrCat(" ", i++);
      cases.push_back(k);
    }
  }
  return cases;
}

/// A NaN and an infinity in the logits: rejected with the CPU's message (the same first bad
/// index), or, with allow_non_finite, NaN exactly where the CPU has NaN.
inline void CheckNonFiniteInputs(const DeviceCompute& device, const std::string& backend_prefix) {
  for (bool allow : {false, true}) {
    for (int variant = 0; variant < 8; ++variant) {
      Case k = MakeCase("non-finite", SoftmaxFocalParams{}, {17, 9});
      if (variant == 1) k.params = SigmoidFocalParams{}, k.targets = Targets::kHard, k.targets_dtype = DType::kFloat32;
      if (variant == 2) k.params = FocalCosineParams{};
      if (variant == 3) k.params = AsymmetricParams{}, k.targets = Targets::kSoft, k.targets_dtype = DType::kFloat32;
      if (variant == 4) k.params = QualityFocalParams{}, k.targets = Targets::kSparse, k.targets_dtype = DType::kFloat32;
      if (variant == 5) k.params = VarifocalParams{}, k.targets = Targets::kSparse, k.targets_dtype = DType::kFloat32;
      if (variant == 6) k.params = FocalStarParams{}, k.background = true;  // class-index targets
      if (variant == 7) k.params = DistributionFocalParams{}, k.targets = Targets::kPerRow, k.targets_dtype = DType::kFloat32;
      k.reduction = Reduction::kNone;
      SCOPED_TRACE(absl::StrCat("non-finite variant ", variant, allow ? " allowed" : " rejected"));
      auto in = Build(k, 3);
      float* x = reinterpret_cast<float*>(in->logits.bytes.data());
      x[20] = std::nanf("");
      x[100] = INFINITY;
      in->job.allow_non_finite = allow;
      if (!allow) {
        CompareJob(device, in->job, backend_prefix);
        continue;
      }
      const auto cpu = CpuBackend().Compute(in->job);
      const auto dev = device(in->job);
      ASSERT_TRUE(cpu.ok() && dev.ok()) << dev.status() << " / " << cpu.status();
      const std::vector<double> d = Values(dev->losses->view()), c = Values(cpu->losses->view());
      for (size_t j = 0; j < c.size(); ++j) {
        EXPECT_EQ(std::isnan(d[j]), std::isnan(c[j])) << "losses[" << j << "]: device " << d[j] << " cpu " << c[j];
      }
    }
  }
}

/// Ignored rows far below 0 (a dummy x_y of 0 would give log p_y > 0) and, under
/// allow_non_finite, a NaN in an ignored row: loss 0 and gradient 0 in every softmax path.
inline void CheckIgnoredRows(const DeviceCompute& device, const std::string& backend_prefix) {
  for (const Shape& shape : {Shape{40, 5}, Shape{4, 5, 30}, Shape{6, 3000}}) {
    for (double smoothing : {0.0, 0.1}) {
      for (double gamma : {0.5, 2.0}) {
        for (bool with_nan : {false, true}) {
          SCOPED_TRACE(absl::StrCat("ignored rows ", Describe(shape), " smoothing ", smoothing, " gamma ", gamma,
                                    with_nan ? " NaN" : ""));
          const int64_t N = shape[0], C = shape[1], S = shape.size() > 2 ? shape[2] : 1;
          std::vector<double> x = RandomNormal(static_cast<size_t>(N * C * S), 2, 11);
          for (int64_t c = 0; c < C; ++c) x[(1 * C + c) * S] = -100;
          if (with_nan) x[(1 * C + 2) * S] = std::nan("");
          Shape ts{N};
          if (S > 1) ts.push_back(S);
          std::vector<double> y = RandomClasses(static_cast<size_t>(N * S), C, 12);
          y[1 * S] = -100;
          const HostTensor logits = MakeTensor(DType::kFloat32, shape, x);
          const HostTensor targets = MakeTensor(DType::kInt64, ts, y);
          SoftmaxFocalParams p;
          p.gamma = gamma;
          p.label_smoothing = smoothing;
          p.ignore_index = -100;
          LossJob job = GradientJob(p, Reduction::kNone, logits, targets);
          job.allow_non_finite = with_nan;
          CompareJob(device, job, backend_prefix);
        }
      }
    }
  }
}

/// allow_non_finite with -inf logits in counted softmax rows (VARIANTS.md §5.6): masked classes,
/// probability 0 and gradient 0, the rows finite, in every softmax path.
inline void CheckMaskedClasses(const DeviceCompute& device, const std::string& backend_prefix) {
  for (const Shape& shape : {Shape{40, 5}, Shape{4, 5, 30}, Shape{6, 3000}}) {
    for (double gamma : {0.0, 0.5, 2.0}) {
      SCOPED_TRACE(absl::StrCat("masked classes ", Describe(shape), " gamma ", gamma));
      const int64_t N = shape[0], C = shape[1], S = shape.size() > 2 ? shape[2] : 1;
      std::vector<double> x = RandomNormal(static_cast<size_t>(N * C * S), 2, 13);
      std::vector<double> y = RandomClasses(static_cast<size_t>(N * S), C, 14);
      for (int64_t n = 0; n < N; n += 2) {  // every other row: two masked classes, not the target
        const int64_t target = static_cast<int64_t>(y[n * S]);
        x[(n * C + (target + 1) % C) * S] = -INFINITY;
        x[(n * C + (target + 3) % C) * S] = -INFINITY;
      }
      Shape ts{N};
      if (S > 1) ts.push_back(S);
      SoftmaxFocalParams p;
      p.gamma = gamma;
      const HostTensor logits = MakeTensor(DType::kFloat32, shape, x), targets = MakeTensor(DType::kInt64, ts, y);
      LossJob job = GradientJob(p, Reduction::kNone, logits, targets);
      job.allow_non_finite = true;
      CompareJob(device, job, backend_prefix);
    }
  }
}

/// Float targets out of range (and non-binary ones for dynamic_focal) get the CPU's error.
inline void CheckBadTargets(const DeviceCompute& device, const std::string& backend_prefix) {
  Case k = MakeCase("sigmoid bad target", SigmoidFocalParams{}, {10, 9}, DType::kFloat32, Targets::kSoft, DType::kFloat32);
  auto in = Build(k, 5);
  reinterpret_cast<float*>(in->targets.bytes.data())[41] = 1.5f;
  CompareJob(device, in->job, backend_prefix);
  Case d = MakeCase("dynamic soft target", DynamicFocalParams{}, {10, 9}, DType::kFloat32, Targets::kSoft, DType::kFloat32);
  auto din = Build(d, 6);
  CompareJob(device, din->job, backend_prefix);
  // The catalogue's elementwise variants: out of [0, 1], and focal_star's non-binary targets.
  const std::pair<VariantParams, float> out_of_range[] = {
      {AsymmetricParams{}, 1.5f}, {QualityFocalParams{}, -0.25f}, {VarifocalParams{}, 1.0625f}, {FocalStarParams{}, 0.5f}};
  for (const auto& [params, value] : out_of_range) {
    SCOPED_TRACE(absl::StrCat(VariantName(params), " target ", value));
    Case e = MakeCase("bad target", params, {10, 9}, DType::kFloat32, Targets::kHard, DType::kFloat32);
    auto ein = Build(e, 8);
    reinterpret_cast<float*>(ein->targets.bytes.data())[77] = value;
    CompareJob(device, ein->job, backend_prefix);
  }
}

/// distribution_focal's edges in every row shape: distances outside [0, B-1] or NaN rejected
/// like the CPU; with allow_non_finite, -inf logits away from the target bins are masked bins
/// (finite rows), and rows with NaN, +inf or only -inf logits are NaN.
inline void CheckDistributionFocalEdges(const DeviceCompute& device, const std::string& backend_prefix) {
  for (const Shape& shape : {Shape{40, 17}, Shape{4, 17, 30}, Shape{6, 3000}}) {
    const int64_t N = shape[0], B = shape[1], S = shape.size() > 2 ? shape[2] : 1;
    Shape ts{N};
    if (S > 1) ts.push_back(S);
    const std::vector<double> y0 = RandomUniform(static_cast<size_t>(N * S), 0, static_cast<double>(B - 1), 21);
    const std::vector<double> x0 = RandomNormal(static_cast<size_t>(N * B * S), 2, 22);
    auto at = [&](int64_t p, int64_t b) { return static_cast<size_t>(((p / S) * B + b) * S + p % S); };
    for (double bad : {static_cast<double>(B - 1) + 0.25, -0.5, std::nan("")}) {
      SCOPED_TRACE(absl::StrCat("distribution_focal ", Describe(shape), " target ", bad));
      std::vector<double> y = y0;
      y[3] = bad;
      const HostTensor logits = MakeTensor(DType::kFloat32, shape, x0), targets = MakeTensor(DType::kFloat32, ts, y);
      CompareJob(device, GradientJob(DistributionFocalParams{}, Reduction::kSum, logits, targets), backend_prefix);
    }
    for (bool poisoned : {false, true}) {
      std::vector<double> x = x0;
      for (int64_t p = 0; p < N * S; p += 2) {  // two masked bins, never one of the target's two
        const int64_t left = static_cast<int64_t>(y0[static_cast<size_t>(p)]);
        x[at(p, (left + 5) % B)] = -INFINITY;
        x[at(p, (left + 9) % B)] = -INFINITY;
      }
      if (poisoned) {
        x[at(1, 2)] = std::nan("");
        x[at(3, 0)] = INFINITY;
        for (int64_t b = 0; b < B; ++b) x[at(5, b)] = -INFINITY;
      }
      const HostTensor logits = MakeTensor(DType::kFloat32, shape, x), targets = MakeTensor(DType::kFloat32, ts, y0);
      for (bool allow : {false, true}) {
        SCOPED_TRACE(absl::StrCat("distribution_focal ", Describe(shape), poisoned ? " NaN/+inf rows" : " masked bins",
                                  allow ? " allowed" : " rejected"));
        LossJob job = GradientJob(DistributionFocalParams{}, Reduction::kNone, logits, targets);
        job.allow_non_finite = allow;
        CompareJob(device, job, backend_prefix, /*expect_ok=*/allow);
      }
    }
  }
}

}  // namespace focal::cuda::parity
