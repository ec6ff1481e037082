#include "focal/validate.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <string>
#include <type_traits>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "focal/math.h"
#include "focal/math_ops.h"
#include "focal/status_macros.h"
#include "focal/variant_text.h"

namespace focal {
namespace {

absl::Status Invalid(std::string message) { return absl::InvalidArgumentError(std::move(message)); }

std::string ShapeString(const Shape& shape) { return absl::StrCat("[", absl::StrJoin(shape, ", "), "]"); }

/// Position of flat index `i` in `shape`, written like "[3, 1, 7]" so a person can find it.
std::string IndexString(const Shape& shape, int64_t i) {
  Shape index(shape.size());
  for (size_t d = shape.size(); d-- > 0;) {
    const int64_t extent = shape[d] == 0 ? 1 : shape[d];
    index[d] = i % extent;
    i /= extent;
  }
  return ShapeString(index);
}

/// Checks dtype class and byte length; returns the element count.
absl::StatusOr<int64_t> CheckTensor(const TensorView& t, absl::string_view field, bool floating) {
  if (floating && !IsFloating(t.dtype)) {
    return Invalid(absl::StrCat(field, ".dtype is ", DTypeName(t.dtype),
                                "; expected float32, float64, float16 or bfloat16"));
  }
  ASSIGN_OR_RETURN(const int64_t n, NumElements(t.shape, field));
  const size_t elem = DTypeSize(t.dtype);
  if (static_cast<uint64_t>(n) > std::numeric_limits<size_t>::max() / elem ||
      t.size_bytes != static_cast<size_t>(n) * elem) {
    return Invalid(absl::StrCat(field, ".data has ", t.size_bytes, " bytes; shape ",
                                ShapeString(t.shape), " of ", DTypeName(t.dtype), " needs ",
                                static_cast<uint64_t>(n) * elem));
  }
  if (n > 0 && t.data == nullptr) return Invalid(absl::StrCat(field, ".data is missing"));
  return n;
}

/// A γ schedule: at most kMaxGammaSteps steps, thresholds increasing in (0, 1], γ in range.
absl::Status CheckGammaSchedule(const std::vector<GammaStep>& steps, const char* name) {
  if (steps.size() > static_cast<size_t>(ParameterLimits::kMaxGammaSteps)) {
    return Invalid(absl::StrCat("loss.", name, " has ", steps.size(), " steps; at most ",
                                ParameterLimits::kMaxGammaSteps));
  }
  for (size_t i = 0; i < steps.size(); ++i) {
    const GammaStep& s = steps[i];
    const double low = i == 0 ? 0.0 : steps[i - 1].threshold;
    if (!(s.threshold > low && s.threshold <= 1)) {
      return Invalid(absl::StrCat("loss.", name, "[", i, "].threshold is ", s.threshold, "; thresholds must increase ",
                                  i == 0 ? "from above 0" : absl::StrCat("(above ", low, ")"), " up to at most 1"));
    }
    if (!kGammaRange.Contains(s.gamma)) {
      return Invalid(absl::StrCat("loss.", name, "[", i, "].gamma is ", s.gamma, "; must be in [0, ",
                                  ParameterLimits::kMaxGamma, "]"));
    }
  }
  return absl::OkStatus();
}

/// "in [0, 1)", or the parameter's own rule.
std::string RuleText(const char* rule, const Range& r) {
  if (rule) return rule;
  return absl::StrCat("in [", r.low, ", ", r.high, r.high_open ? ")" : "]");
}

/// Every parameter of `p` within the range its table entry gives (per-class lists element by
/// element; their length is checked against the logits' classes once the layout is known).
template <class P>
absl::Status CheckParameters(const P& p) {
  absl::Status status;
  ForEachParam<P>([&](const auto& param) {
    using T = typename std::decay_t<decltype(param)>::Type;
    if (!status.ok()) return;
    const T& value = p.*param.member;
    auto check = [&](double v, const std::string& name) {
      if (!param.range.Contains(v)) {
        status = Invalid(absl::StrCat(name, " is ", v, "; must be ", RuleText(param.rule, param.range)));
      }
    };
    if constexpr (std::is_same_v<T, double> || std::is_same_v<T, int64_t>) {
      check(static_cast<double>(value), absl::StrCat("loss.", param.name));
    } else if constexpr (std::is_same_v<T, std::vector<double>>) {
      for (size_t i = 0; i < value.size() && status.ok(); ++i) {
        check(value[i], absl::StrCat("loss.", param.name, "[", i, "]"));
      }
    } else if constexpr (std::is_same_v<T, std::vector<GammaStep>>) {
      status = CheckGammaSchedule(value, param.name);
    }
  });
  return status;
}

/// The option rules that involve two parameters of one variant (VARIANTS.md §5.0).
absl::Status CheckCombinations(const SoftmaxFocalParams& p) {
  for (size_t c = 0; c < p.class_counts.size(); ++c) {
    // Counts of examples: a fraction below ~1e-300 would make 1-β^n round to 0 (α = ∞).
    if (p.class_counts[c] != std::floor(p.class_counts[c])) {
      return Invalid(absl::StrCat("loss.class_counts[", c, "] is ", p.class_counts[c], "; must be a whole number"));
    }
  }
  if (!p.class_counts.empty() && !p.alpha.empty()) {
    return Invalid("loss.class_counts and loss.alpha are both set; class_counts derives α (send one)");
  }
  if (p.label_smoothing > 0 && p.poly_epsilon != 0) {
    return Invalid("loss.poly_epsilon is set with loss.label_smoothing; Poly-1 is not combined with label smoothing");
  }
  if (p.label_smoothing > 0 && !p.gamma_schedule.empty()) {
    return Invalid("loss.gamma_schedule is set with loss.label_smoothing; a schedule is not combined with label "
                   "smoothing");
  }
  return absl::OkStatus();
}

absl::Status CheckCombinations(const SigmoidFocalParams& p) {
  if (p.poly_epsilon != 0 && p.input == SigmoidInput::kProbabilities) {
    return Invalid("loss.poly_epsilon is set with input PROBABILITIES; Poly-1 takes logits");
  }
  return absl::OkStatus();
}

template <class P>
absl::Status CheckCombinations(const P&) {
  return absl::OkStatus();
}

/// softmax_focal's class-balanced α (Cui et al. 2019) from class_counts: (1-β)/(1-β^n_c) for
/// n_c > 0, the largest of those for n_c = 0, normalised to Σ_c α_c = C.
std::vector<double> ClassBalancedAlpha(const std::vector<double>& counts, double beta) {
  std::vector<double> alpha(counts.size(), 0.0);
  double largest = 0;
  for (size_t c = 0; c < counts.size(); ++c) {
    if (counts[c] > 0) {
      alpha[c] = math::ClassBalancedWeight(ScalarOps<double>{}, counts[c], 1 - beta);
      largest = std::max(largest, alpha[c]);
    }
  }
  double sum = 0;
  for (size_t c = 0; c < counts.size(); ++c) {
    if (!(counts[c] > 0)) alpha[c] = largest > 0 ? largest : 1.0;  // no class seen: all equal
    sum += alpha[c];
  }
  for (double& a : alpha) a *= static_cast<double>(counts.size()) / sum;
  return alpha;
}

/// Per-class lists hold one value per class, or none (all ones).
template <class P>
absl::Status CheckClassLists(const P& p, int64_t classes) {
  absl::Status status;
  ForEachParam<P>([&](const auto& param) {
    using T = typename std::decay_t<decltype(param)>::Type;
    if constexpr (std::is_same_v<T, std::vector<double>>) {
      const T& value = p.*param.member;
      if (status.ok() && !value.empty() && static_cast<int64_t>(value.size()) != classes) {
        status = Invalid(absl::StrCat("loss.", param.name, " has ", value.size(), " values; logits have ", classes,
                                      " classes (one value per class)"));
      }
    }
  });
  return status;
}

absl::Status CheckGradOutput(double w, std::string name) {
  if (std::isnan(w) || std::fabs(w) <= ParameterLimits::kMaxGradOutput) return absl::OkStatus();
  if (std::isinf(w)) return Invalid(absl::StrCat(name, " is ", w, "; must be finite"));
  return Invalid(absl::StrCat(name, " is ", w, "; |grad_output| must be at most ", ParameterLimits::kMaxGradOutput));
}

/// Logits [N, C, d1..dk] with one target per row [N, d1..dk] (class indices, or
/// distribution_focal's float distances): fills the class layout.
absl::Status CheckClassLayout(const LossJob& job, bool float_targets, JobPlan& plan) {
  const Shape& ls = job.logits.shape;
  if (ls.size() < 2) {
    return Invalid(absl::StrCat("logits.shape is ", ShapeString(ls), "; ",
                                float_targets ? "targets per row need" : "class-index targets need",
                                " logits [N, C, d1..dk]"));
  }
  if (float_targets && !IsFloating(job.targets.dtype)) {
    return Invalid(absl::StrCat("targets.dtype is ", DTypeName(job.targets.dtype), "; ",
                                VariantName(job.spec.params), " needs float targets, one per row"));
  }
  if (!float_targets && !IsInteger(job.targets.dtype)) {
    return Invalid(absl::StrCat("targets.dtype is ", DTypeName(job.targets.dtype),
                                "; class-index targets must be int32, int64 or uint8"));
  }
  Shape expected{ls[0]};
  expected.insert(expected.end(), ls.begin() + 2, ls.end());
  if (job.targets.shape != expected) {
    return Invalid(absl::StrCat("targets.shape is ", ShapeString(job.targets.shape), "; logits ",
                                ShapeString(ls), " need targets ", ShapeString(expected)));
  }
  if (ls[1] > std::numeric_limits<int32_t>::max() - 1) {
    return Invalid(absl::StrCat("logits.shape[1] is ", ls[1], "; at most 2^31 - 2 classes"));
  }
  plan.index_targets = true;
  plan.batch = ls[0];
  plan.classes = ls[1];
  plan.inner = 1;
  for (size_t d = 2; d < ls.size(); ++d) plan.inner *= ls[d];
  plan.item_shape = expected;
  return absl::OkStatus();
}

/// The rows of class-index targets that count: not ignored, and of those the positive ones
/// (a target class, not the background value C).
struct TargetRows {
  int64_t counted = 0;
  int64_t positive = 0;
};

/// Scans class-index targets: each in [0, max_class] or equal to ignore_index; `classes` is C
/// (a value C, where allowed, is the background).
absl::StatusOr<TargetRows> ScanClassTargets(const TensorView& targets, int64_t n, int64_t max_class,
                                            int64_t classes, std::optional<int64_t> ignore_index) {
  TargetRows rows;
  auto scan = [&](const auto* y) -> absl::Status {
    for (int64_t i = 0; i < n; ++i) {
      const int64_t v = static_cast<int64_t>(y[i]);
      if (ignore_index && v == *ignore_index) continue;
      if (v < 0 || v > max_class) {
        return Invalid(absl::StrCat("targets", IndexString(targets.shape, i), " is ", v,
                                    "; must be in [0, ", max_class, "]",
                                    ignore_index ? absl::StrCat(" or ignore_index ", *ignore_index) : ""));
      }
      ++rows.counted;
      rows.positive += v < classes;
    }
    return absl::OkStatus();
  };
  switch (targets.dtype) {
    case DType::kInt32: RETURN_IF_ERROR(scan(targets.As<int32_t>())); break;
    case DType::kInt64: RETURN_IF_ERROR(scan(targets.As<int64_t>())); break;
    case DType::kUInt8: RETURN_IF_ERROR(scan(targets.As<uint8_t>())); break;
    default: return Invalid("targets.dtype must be an integer type");
  }
  return rows;
}

/// The elements above 0 among a float tensor's first `n`: quality_focal's positives, which its
/// MEAN divides by. This reads every target before the pass does (which needs the count for the
/// gradient's scale), so it runs on every core, a vectorized loop per block; an integer sum is the
/// same in any order.
int64_t CountPositives(const TensorView& targets, int64_t n) {
  constexpr int64_t kBlock = int64_t{1} << 16;
  const int64_t blocks = (n + kBlock - 1) / kBlock;
  int64_t positives = 0;
#pragma omp parallel for schedule(static) reduction(+ : positives) if (blocks > 1)
  for (int64_t b = 0; b < blocks; ++b) {
    positives += CountValues(targets, b * kBlock, std::min(n, (b + 1) * kBlock), [](auto y) { return y > 0; });
  }
  return positives;
}

/// Float targets shaped like the logits (values are checked during the compute pass).
absl::Status CheckFloatTargets(const LossJob& job, JobPlan& plan) {
  if (!IsFloating(job.targets.dtype)) {
    return Invalid(absl::StrCat("targets.dtype is ", DTypeName(job.targets.dtype),
                                "; this variant needs float targets shaped like the logits"));
  }
  if (job.targets.shape != job.logits.shape) {
    return Invalid(absl::StrCat("targets.shape is ", ShapeString(job.targets.shape),
                                "; must equal logits.shape ", ShapeString(job.logits.shape)));
  }
  plan.item_shape = job.logits.shape;
  plan.count = plan.num_elements;
  if (FactsOf(job.spec.params).mean_over == MeanOver::kPositives) {
    // The positives are the elements with a target above 0 (out-of-range ones fail in the pass).
    plan.count = CountPositives(job.targets, plan.num_elements);
  }
  return absl::OkStatus();
}

/// The targets of the row variants with float targets (distribution_focal): each in [0, B-1].
absl::Status CheckDistances(const LossJob& job, int64_t n) {
  const double high = static_cast<double>(job.logits.shape[1] - 1);
  const int64_t bad = FindFirstValue(job.targets, n, [&](double y) { return !(y >= 0 && y <= high); });
  if (bad < 0) return absl::OkStatus();
  return Invalid(absl::StrCat("targets", IndexString(job.targets.shape, bad), " is ", LoadAsDouble(job.targets, bad),
                              "; must be in [0, ", high, "] (a distance in bins)"));
}

/// A float tensor shaped `shape` whose every value satisfies `ok` (else the first bad one is
/// named with `rule`).
template <class F>
absl::Status CheckFloatInput(const TensorView& t, absl::string_view field, const Shape& shape,
                             absl::string_view shape_rule, const F& ok, absl::string_view rule) {
  ASSIGN_OR_RETURN(const int64_t n, CheckTensor(t, field, /*floating=*/true));
  if (t.shape != shape) {
    return Invalid(absl::StrCat(field, ".shape is ", ShapeString(t.shape), "; must be ", ShapeString(shape), " (",
                                shape_rule, ")"));
  }
  const int64_t bad = FindFirstValue(t, n, [&](double v) { return !ok(v); });
  if (bad >= 0) {
    return Invalid(absl::StrCat(field, IndexString(t.shape, bad), " is ", LoadAsDouble(t, bad), "; must be ", rule));
  }
  return absl::OkStatus();
}

/// The request's per-item weights (every variant) and scores (quality_focal with class-index
/// targets), once the layout is known.
absl::Status CheckItemInputs(const LossJob& job, const JobPlan& plan) {
  const VariantFacts& facts = FactsOf(job.spec.params);
  if (job.weights) {
    RETURN_IF_ERROR(CheckFloatInput(
        *job.weights, "weights", plan.item_shape, "one weight per item: the shape of the NONE losses",
        [](double w) { return std::isfinite(w) && w >= 0 && w <= ParameterLimits::kMaxWeight; },
        absl::StrCat("finite, >= 0 and at most ", ParameterLimits::kMaxWeight)));
  }
  if (job.scores && !facts.scores) {
    return Invalid(absl::StrCat("scores is only used by ", ScoresVariants(), " (with class-index targets)"));
  }
  if (facts.scores && plan.index_targets != job.scores.has_value()) {
    return Invalid(plan.index_targets
                       ? absl::StrCat("scores is missing; ", facts.name,
                                      " with class-index targets needs the target class's quality, shaped like the targets")
                       : absl::StrCat("scores is set, but the targets are float quality scores already; ",
                                      "scores goes with class-index targets"));
  }
  if (job.scores) {
    RETURN_IF_ERROR(CheckFloatInput(
        *job.scores, "scores", job.targets.shape, "one quality score per row: the shape of the targets",
        [](double q) { return q >= 0 && q <= 1; }, "in [0, 1]"));
  }
  return absl::OkStatus();
}

/// num_objects → the per-row weights α_n = num_objects_n / mean (docs/variants.md §4).
absl::Status PlanRowWeights(const LossJob& job, JobPlan& plan) {
  plan.batch = job.logits.shape[0];
  plan.inner = plan.batch == 0 ? 0 : plan.num_elements / plan.batch;
  if (!job.num_objects) return absl::OkStatus();
  const TensorView& no = *job.num_objects;
  ASSIGN_OR_RETURN(const int64_t n, CheckTensor(no, "num_objects", /*floating=*/true));
  if (no.shape != Shape{plan.batch}) {
    return Invalid(absl::StrCat("num_objects.shape is ", ShapeString(no.shape), "; must be [",
                                plan.batch, "] (one count per row of the logits)"));
  }
  double sum = 0;
  for (int64_t i = 0; i < n; ++i) {
    const double v = LoadAsDouble(no, i);
    if (!std::isfinite(v) || v < 0) {
      return Invalid(absl::StrCat("num_objects[", i, "] is ", v, "; must be finite and >= 0"));
    }
    sum += v;
  }
  if (!std::isfinite(sum)) return Invalid("num_objects sums to more than float64 can hold; α_n needs its mean");
  if (n > 0 && !(sum > 0)) return Invalid("num_objects has mean 0; α_n = num_objects / mean needs a positive mean");
  const double mean = n == 0 ? 1.0 : sum / static_cast<double>(n);
  plan.row_alpha.resize(n);
  for (int64_t i = 0; i < n; ++i) plan.row_alpha[i] = static_cast<float>(math::ObjectsWeight(LoadAsDouble(no, i), mean));
  return absl::OkStatus();
}

/// The layout, items and count of any variant, from its table entry.
template <class P>
absl::Status PlanVariant(const LossJob& job, const P& p, JobPlan& plan) {
  const VariantFacts& facts = Variant<P>::kFacts;
  RETURN_IF_ERROR(CheckParameters(p));
  RETURN_IF_ERROR(CheckCombinations(p));
  const int rank = static_cast<int>(job.logits.shape.size());
  if (rank < facts.min_rank || rank > facts.max_rank) {
    return Invalid(absl::StrCat("logits.shape is ", ShapeString(job.logits.shape), "; ", facts.name,
                                " needs logits ", facts.logits_shape));
  }
  const bool float_rows = facts.targets == Targets::kFloatPerRow;
  const bool index_targets = facts.targets == Targets::kClassIndex ||
                             (facts.targets == Targets::kClassIndexOrFloat && IsInteger(job.targets.dtype));
  const std::optional<int64_t> ignore_index = IgnoreIndexOf(p);
  if (!index_targets && !float_rows) {
    if (ignore_index) {
      return Invalid("loss.ignore_index needs class-index targets; float targets cannot be ignored");
    }
    RETURN_IF_ERROR(CheckFloatTargets(job, plan));
    if (facts.num_objects) RETURN_IF_ERROR(PlanRowWeights(job, plan));
    return absl::OkStatus();
  }
  RETURN_IF_ERROR(CheckClassLayout(job, float_rows, plan));
  if (float_rows) {
    // distribution_focal: the bins are dim 1; every row counts (targets are checked in the pass).
    plan.index_targets = false;
    if (plan.classes < 2 || plan.classes > ParameterLimits::kMaxDistributionBins) {
      return Invalid(absl::StrCat("logits.shape[1] is ", plan.classes, "; ", facts.name, " needs B >= 2 bins (a ",
                                  "distance between two of them) and at most 2^24 (bin indices exact in float32)"));
    }
    plan.count = plan.batch * plan.inner;
    // The distances, in float64 as sent: the kernels compare them in their compute type, where
    // a float64 target just above B-1 could round into range.
    return CheckDistances(job, plan.count);
  }
  RETURN_IF_ERROR(CheckClassLists(p, plan.classes));
  if constexpr (std::is_same_v<P, SoftmaxFocalParams>) {
    if (!p.class_counts.empty()) plan.class_alpha = ClassBalancedAlpha(p.class_counts, p.class_balance_beta);
  }
  const int64_t max_class = plan.classes - (facts.background_target ? 0 : 1);
  ASSIGN_OR_RETURN(const TargetRows rows,
                   ScanClassTargets(job.targets, plan.batch * plan.inner, max_class, plan.classes, ignore_index));
  if (facts.mean_over == MeanOver::kPositives) {
    plan.count = rows.positive;
  } else if (facts.items == Items::kRows) {
    plan.count = rows.counted;
  } else {
    plan.count = rows.counted * plan.classes;
  }
  if (facts.items == Items::kElements) plan.item_shape = job.logits.shape;  // NONE is per element, as torchvision
  return absl::OkStatus();
}

absl::Status PlanGradient(const LossJob& job, JobPlan& plan) {
  if (job.output_dtype && *job.output_dtype != job.logits.dtype &&
      *job.output_dtype != DType::kFloat32) {
    return Invalid(absl::StrCat("gradient_dtype is ", DTypeName(*job.output_dtype),
                                "; must be the logits' dtype (", DTypeName(job.logits.dtype),
                                ") or float32"));
  }
  plan.output_dtype = job.output_dtype.value_or(job.logits.dtype);
  const Reduction reduction = job.spec.reduction;
  double w = 1.0;
  if (const double* scalar = std::get_if<double>(&job.grad_output)) {
    w = *scalar;
    if (!job.allow_non_finite && !std::isfinite(w)) {
      return Invalid(absl::StrCat("grad_output is ", w, "; must be finite"));
    }
    RETURN_IF_ERROR(CheckGradOutput(w, "grad_output"));
  } else if (const TensorView* t = std::get_if<TensorView>(&job.grad_output)) {
    ASSIGN_OR_RETURN(const int64_t n, CheckTensor(*t, "grad_output", /*floating=*/true));
    if (reduction == Reduction::kNone) {
      if (t->shape != plan.item_shape) {
        return Invalid(absl::StrCat("grad_output.shape is ", ShapeString(t->shape),
                                    "; reduction NONE needs the per-item loss shape ",
                                    ShapeString(plan.item_shape)));
      }
    } else if (n != 1) {
      return Invalid(absl::StrCat("grad_output.shape is ", ShapeString(t->shape),
                                  "; a reduced loss takes a scalar upstream gradient"));
    }
    for (int64_t i = 0; i < n; ++i) {
      const double v = LoadAsDouble(*t, i);
      if (!job.allow_non_finite && !std::isfinite(v)) {
        return Invalid(absl::StrCat("grad_output", IndexString(t->shape, i), " is not finite"));
      }
      RETURN_IF_ERROR(CheckGradOutput(v, absl::StrCat("grad_output", IndexString(t->shape, i))));
    }
    if (reduction != Reduction::kNone) w = LoadAsDouble(*t, 0);
  }
  if (job.spec.normalizer) {
    const double d = *job.spec.normalizer;
    if (!(d >= ParameterLimits::kMinNormalizer && d <= ParameterLimits::kMaxNormalizer)) {
      return Invalid(absl::StrCat("loss.normalizer is ", d, "; must be in [", ParameterLimits::kMinNormalizer, ", ",
                                  ParameterLimits::kMaxNormalizer, "]"));
    }
  }
  plan.grad_scale = reduction == Reduction::kMean ? DivideByMeanDenominator(w, job.spec, plan.count) : w;
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<JobPlan> ValidateJob(const LossJob& job) {
  JobPlan plan;
  ASSIGN_OR_RETURN(plan.num_elements, CheckTensor(job.logits, "logits", /*floating=*/true));
  ASSIGN_OR_RETURN(const int64_t num_targets,
                   CheckTensor(job.targets, "targets", /*floating=*/false));
  (void)num_targets;
  if (job.num_objects && !FactsOf(job.spec.params).num_objects) {
    return Invalid(absl::StrCat("num_objects is only used by ", NumObjectsVariants()));
  }
  RETURN_IF_ERROR(std::visit([&](const auto& p) { return PlanVariant(job, p, plan); }, job.spec.params));
  ASSIGN_OR_RETURN(plan.num_items, NumElements(plan.item_shape, "losses"));
  RETURN_IF_ERROR(CheckItemInputs(job, plan));
  RETURN_IF_ERROR(PlanGradient(job, plan));
  return plan;
}

absl::Status FindInvalidValue(const LossJob& job) {
  const bool probabilities = TakesProbabilities(job.spec.params);
  const int64_t n = static_cast<int64_t>(job.logits.size_bytes / DTypeSize(job.logits.dtype));
  for (int64_t i = 0; i < n; ++i) {
    const double x = LoadAsDouble(job.logits, i);
    if (std::isnan(x) && job.allow_non_finite) continue;
    if (probabilities && !(x >= 0 && x <= 1)) {
      return Invalid(absl::StrCat("logits", IndexString(job.logits.shape, i), " is ", x,
                                  "; input PROBABILITIES must be in [0, 1]"));
    }
    if (!job.allow_non_finite && !std::isfinite(x)) {
      return Invalid(absl::StrCat("logits", IndexString(job.logits.shape, i), " is ", x,
                                  "; inputs must be finite (set allow_non_finite to propagate)"));
    }
  }
  if (IsFloating(job.targets.dtype)) {
    const VariantFacts& facts = FactsOf(job.spec.params);
    const bool binary = facts.binary_targets;
    const int64_t m = static_cast<int64_t>(job.targets.size_bytes / DTypeSize(job.targets.dtype));
    if (facts.targets == Targets::kFloatPerRow) return CheckDistances(job, m);
    const int64_t i = FindFirstValue(job.targets, m, [&](double t) {
      return binary ? !(t == 0 || t == 1) : !(t >= 0 && t <= 1);
    });
    if (i >= 0) {
      return Invalid(absl::StrCat("targets", IndexString(job.targets.shape, i), " is ", LoadAsDouble(job.targets, i),
                                  binary ? "; must be 0 or 1" : "; must be in [0, 1]"));
    }
  }
  return absl::OkStatus();
}

}  // namespace focal
