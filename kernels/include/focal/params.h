// The variant table: every variant's parameters (with the defaults and ranges of
// docs/variants.md) and the facts that validation, the wire codec, server info, metrics,
// Evaluate, focalctl and the clients read, each said once, here. Adding a variant is its math
// (focal/math-inl.h), its entry below, its kernels' dispatch (focal/kernel_args.h and the
// backends) and its tests; nothing else lists variants. Plain C++17, no Abseil: nvcc reads it.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <optional>
#include <string_view>
#include <tuple>
#include <type_traits>
#include <utility>
#include <variant>
#include <vector>

namespace focal {

enum class Reduction : uint8_t { kMean, kSum, kNone };

/// How large a parameter may be so that float32 kernels carry it. The worst product is
/// focal_cosine's: α·xent (1e8) times grad_output over the smallest normalizer (1e14) times the
/// normalisation's 1/max(‖x‖, 1e-12) of an all-zero row (1e12) is 1e34, and a per-item weight
/// (1e4) makes it 1e38, below float32's 3.4e38; every other variant has less (softmax_focal's
/// class-balanced α, at most C, multiplies bounded terms). Beyond γ = 1000, (1-p_t)^γ is below
/// 1e-40 for every p_t ≥ 0.1: nothing is left to focus on. A loss is as large as its logit
/// (softplus(x) ≈ x), so a weighted item's loss at |x| near 3.4e38 is beyond float32 and +inf;
/// its gradient stays finite.
struct ParameterLimits {
  static constexpr double kMaxGamma = 1000;
  /// α (per class or scalar) and xent: weights of a loss term.
  static constexpr double kMaxWeight = 1e4;
  /// |grad_output|, scalar or per item (mixed-precision loss scales stay near 2^16-2^24).
  static constexpr double kMaxGradOutput = 1e8;
  /// The MEAN denominator a request may set (RetinaNet's number of positives, say).
  static constexpr double kMinNormalizer = 1e-6;
  static constexpr double kMaxNormalizer = 1e15;
  /// focal_star divides its loss by γ: from 1e-6 on, log(2)/γ and β/γ stay far inside float32.
  static constexpr double kMinStarGamma = 1e-6;
  /// focal_star's shift β of γ x_t, as large as any logit that still moves a sigmoid.
  static constexpr double kMaxShift = 1e4;
  /// Poly-1's ε_p: at least -1 (the paper's range), and a weight of its term at most.
  static constexpr double kMinPolyEpsilon = -1;
  /// A class's number of examples: integers up to 2^53 are exact in float64.
  static constexpr double kMaxClassCount = 9007199254740992.0;
  /// Steps of a γ schedule (FLSD uses one or two); kernels carry them in their arguments.
  static constexpr int kMaxGammaSteps = 8;
  /// distribution_focal's bins: a bin index must be exact in float32, where its weights are formed.
  static constexpr int64_t kMaxDistributionBins = int64_t{1} << 24;
};

/// One step of softmax_focal's sample-dependent γ (FLSD): rows whose p_y is below `threshold`
/// (and not below an earlier step's) use `gamma`.
struct GammaStep {
  double threshold = 1;
  double gamma = 0;
  constexpr bool operator==(const GammaStep& o) const { return threshold == o.threshold && gamma == o.gamma; }
  constexpr bool operator!=(const GammaStep& o) const { return !(*this == o); }
};

// ------------------------------------------------------------------------------------------
// What a table entry can say.

/// Which targets a variant takes.
enum class Targets : uint8_t {
  kClassIndex,         ///< integer targets [N, d1..dk] for logits [N, C, d1..dk]
  kFloat,              ///< float targets shaped like the logits
  kClassIndexOrFloat,  ///< either; the targets' dtype says which
  kFloatPerRow,        ///< float targets [N, d1..dk] for logits [N, B, d1..dk], one per row
};

/// What MEAN divides by (without a normalizer) and what `count` reports.
enum class MeanOver : uint8_t {
  kItems,      ///< the counted items (rows or elements not ignored)
  kPositives,  ///< the positive items, at least 1: rows with a target class, or elements with a
               ///< target above 0 (GFL's avg_factor)
};

/// What a variant's items are: what NONE returns one loss for, what MEAN counts (the items of
/// rows that are not ignored) and how Evaluate attributes them to classes.
enum class Items : uint8_t {
  kRows,      ///< one per position [N, d1..dk] of the targets; its class is its target
  kElements,  ///< one per logit; its class is its channel along dim 1
};

/// A parameter's admissible values: [low, high], or [low, high) when high_open.
struct Range {
  double low = -std::numeric_limits<double>::infinity();
  double high = std::numeric_limits<double>::infinity();
  bool high_open = false;

  constexpr bool Contains(double v) const { return v >= low && (high_open ? v < high : v <= high); }  // NaN: no
};

/// One parameter: `name` is its docs/variants.md name, the field's name in the variant's wire
/// message, the key of the Python client's keyword argument and, with '-' for '_', focalctl's
/// flag; `member` is where the params struct keeps it.
template <class P, class T>
struct Param {
  using Params = P;
  using Type = T;
  using Member = T P::*;  // an alias: nvcc's host code otherwise parenthesises the declarator
  const char* name;
  Member member;
  const char* description;
  Range range = {};
  /// The range as an error or server info says it, when "in [low, high]" would not do.
  const char* rule = nullptr;
  /// The default as server info says it, when the struct's value does not say it plainly.
  const char* default_text = nullptr;
  /// focalctl's flag, when not the name with dashes (a per-class list is read from a file).
  const char* flag = nullptr;
  /// Names of an enum's values, in value order, as lowercase words (wire: uppercase).
  const char* const* choices = nullptr;
  size_t num_choices = 0;

  constexpr Param In(double low, double high) const { return With([&](Param& p) { p.range = {low, high, false}; }); }
  constexpr Param InHalfOpen(double low, double high) const {
    return With([&](Param& p) { p.range = {low, high, true}; });
  }
  constexpr Param Rule(const char* text) const { return With([&](Param& p) { p.rule = text; }); }
  constexpr Param Default(const char* text) const { return With([&](Param& p) { p.default_text = text; }); }
  constexpr Param Flag(const char* text) const { return With([&](Param& p) { p.flag = text; }); }
  template <size_t N>
  constexpr Param Choices(const char* const (&names)[N]) const {
    return With([&](Param& p) {
      p.choices = names;
      p.num_choices = N;
    });
  }

 private:
  template <class F>
  constexpr Param With(F&& f) const {
    Param p = *this;
    f(p);
    return p;
  }
};

template <class P, class T>
constexpr Param<P, T> MakeParam(const char* name, T P::*member, const char* description) {
  return Param<P, T>{name, member, description};
}

/// The facts of a variant that are not parameters.
struct VariantFacts {
  const char* name;     ///< the docs/variants.md name; the wire's LossSpec oneof field
  const char* summary;  ///< one line, for help texts and server info
  Targets targets;
  Items items;
  /// The logits a variant takes, as errors say it, and its ranks (class-index targets need 2+).
  const char* logits_shape = "of any shape";
  int min_rank = 0;
  int max_rank = std::numeric_limits<int>::max();
  /// Class-index targets may also be C, a row where no class is positive (sigmoid background).
  bool background_target = false;
  /// Float targets must be exactly 0 or 1.
  bool binary_targets = false;
  /// The request's num_objects tensor (one count per row) is an input of this variant.
  bool num_objects = false;
  /// The request's scores tensor (the target class's quality, one per row) goes with
  /// class-index targets.
  bool scores = false;
  MeanOver mean_over = MeanOver::kItems;
};

/// Specialised once per variant, right below its params struct: `kFacts` and `kParams` (a
/// tuple of Param). The entry is the one place the variant's facts are said.
template <class P>
struct Variant;

// ------------------------------------------------------------------------------------------
// The table.

/// What sigmoid_focal's input tensor holds.
enum class SigmoidInput : uint8_t { kLogits, kProbabilities };

/// §1: multi-class focal loss over a softmax of the class dimension (dim 1).
struct SoftmaxFocalParams {
  double gamma = 2.0;
  std::vector<double> alpha;  ///< per-class weights; empty means all ones
  std::optional<int64_t> ignore_index;
  double label_smoothing = 0.0;
  double poly_epsilon = 0.0;          ///< §5.0 Poly-1
  std::vector<double> class_counts;   ///< §5.0 class-balanced α; empty means none
  double class_balance_beta = 0.9999;
  std::vector<GammaStep> gamma_schedule;  ///< §5.0 FLSD; empty means the fixed gamma
};

/// The ranges every variant shares.
inline constexpr Range kGammaRange{0, ParameterLimits::kMaxGamma};
inline constexpr Range kSmoothingRange{0, 1, /*high_open=*/true};

template <>
struct Variant<SoftmaxFocalParams> {
  using P = SoftmaxFocalParams;
  static constexpr VariantFacts kFacts{"softmax_focal", "multi-class focal loss over a softmax of dim 1",
                                       Targets::kClassIndex, Items::kRows, "[N, C, d1..dk]"};
  static constexpr auto kParams = std::make_tuple(
      MakeParam("gamma", &P::gamma, "focusing parameter γ").In(0, ParameterLimits::kMaxGamma),
      MakeParam("alpha", &P::alpha, "per-class weights α_c, one per class")
          .In(0, ParameterLimits::kMaxWeight)
          .Default("all ones")
          .Flag("class-alpha"),
      MakeParam("ignore_index", &P::ignore_index, "target value whose rows are ignored"),
      MakeParam("label_smoothing", &P::label_smoothing, "target smoothing ε").InHalfOpen(0, 1),
      MakeParam("poly_epsilon", &P::poly_epsilon, "Poly-1's ε_p: adds ε_p (1-p_y)^(γ+1), not α-weighted")
          .In(ParameterLimits::kMinPolyEpsilon, ParameterLimits::kMaxWeight),
      MakeParam("class_counts", &P::class_counts, "examples per class n_c: α_c = (1-β)/(1-β^n_c), normalised to sum C")
          .In(0, ParameterLimits::kMaxClassCount)
          .Rule("a whole number in [0, 2^53]")
          .Default("none"),
      MakeParam("class_balance_beta", &P::class_balance_beta, "β of the class-balanced α (with class_counts)")
          .InHalfOpen(0, 1),
      MakeParam("gamma_schedule", &P::gamma_schedule,
                "(threshold, gamma) steps: a row uses the γ of the first threshold above its p_y (FLSD)")
          .Rule("thresholds increasing in (0, 1], each gamma in [0, 1000], at most 8 steps")
          .Default("none"));
};

/// §2: binary / multi-label focal loss (RetinaNet, torchvision).
struct SigmoidFocalParams {
  double gamma = 2.0;
  double alpha = 0.25;  ///< negative disables the α weighting, as in torchvision
  std::optional<int64_t> ignore_index;  ///< only with class-index targets
  double label_smoothing = 0.0;
  int64_t smoothing_classes = 2;
  SigmoidInput input = SigmoidInput::kLogits;
  double poly_epsilon = 0.0;  ///< §5.0 Poly-1
};

/// The logits of sigmoid_focal and of the catalogue's variants shaped like it: float targets
/// shaped like the logits, or class indices [N, d1..dk] with background C.
inline constexpr const char* kSigmoidShape = "of any shape (class-index targets: [N, C, d1..dk])";

template <>
struct Variant<SigmoidFocalParams> {
  using P = SigmoidFocalParams;
  static constexpr const char* kInputs[] = {"logits", "probabilities"};
  static constexpr VariantFacts kFacts{
      "sigmoid_focal",     "binary / multi-label focal loss over a sigmoid of every logit",
      Targets::kClassIndexOrFloat, Items::kElements, kSigmoidShape,
      0, std::numeric_limits<int>::max(), /*background_target=*/true};
  static constexpr auto kParams = std::make_tuple(
      MakeParam("gamma", &P::gamma, "focusing parameter γ").In(0, ParameterLimits::kMaxGamma),
      MakeParam("alpha", &P::alpha, "weight of positives α; negative disables the weighting")
          .In(-std::numeric_limits<double>::max(), 1)
          .Rule("in [0, 1], or negative to disable the weighting"),
      MakeParam("ignore_index", &P::ignore_index, "with class-index targets: target value whose rows are ignored"),
      MakeParam("label_smoothing", &P::label_smoothing, "target smoothing ε").InHalfOpen(0, 1),
      MakeParam("smoothing_classes", &P::smoothing_classes, "K: targets become (1-ε)t + ε/K")
          .In(2, static_cast<double>(std::numeric_limits<int64_t>::max()))
          .Rule(">= 2"),
      MakeParam("input", &P::input, "what the logits tensor holds").Choices(kInputs),
      MakeParam("poly_epsilon", &P::poly_epsilon, "Poly-1's ε_p: adds ε_p (1-p_t)^(γ+1), not α-weighted")
          .In(ParameterLimits::kMinPolyEpsilon, ParameterLimits::kMaxWeight));
};

/// §3: Focal Cosine Loss (Kim et al. 2020).
struct FocalCosineParams {
  double alpha = 1.0;
  double gamma = 2.0;
  double xent = 0.1;
};

template <>
struct Variant<FocalCosineParams> {
  using P = FocalCosineParams;
  static constexpr VariantFacts kFacts{"focal_cosine", "cosine embedding loss plus a focal cross-entropy term",
                                       Targets::kClassIndex, Items::kRows, "[N, C]", 2, 2};
  static constexpr auto kParams = std::make_tuple(
      MakeParam("alpha", &P::alpha, "weight of the focal term")
          .In(-ParameterLimits::kMaxWeight, ParameterLimits::kMaxWeight),
      MakeParam("gamma", &P::gamma, "focusing parameter γ").In(0, ParameterLimits::kMaxGamma),
      MakeParam("xent", &P::xent, "scale of the focal cross-entropy term").In(0, ParameterLimits::kMaxWeight));
};

/// §4: focal loss with a dynamic number of objects (FL-DoN).
struct DynamicFocalParams {
  double gamma = 2.0;
};

template <>
struct Variant<DynamicFocalParams> {
  using P = DynamicFocalParams;
  static constexpr VariantFacts kFacts{
      "dynamic_focal", "sigmoid focal loss weighted per row by its number of objects", Targets::kFloat,
      Items::kElements, "[N, *]", 1, std::numeric_limits<int>::max(), false, /*binary_targets=*/true,
      /*num_objects=*/true};
  static constexpr auto kParams =
      std::make_tuple(MakeParam("gamma", &P::gamma, "focusing parameter γ").In(0, ParameterLimits::kMaxGamma));
};

/// §5.1: Asymmetric Loss for multi-label classification (Ridnik et al. 2021).
struct AsymmetricParams {
  double gamma_pos = 0.0;
  double gamma_neg = 4.0;
  double clip = 0.05;
  std::optional<int64_t> ignore_index;  ///< only with class-index targets
};

template <>
struct Variant<AsymmetricParams> {
  using P = AsymmetricParams;
  static constexpr VariantFacts kFacts{
      "asymmetric", "asymmetric multi-label loss: focusing and probability shifting of the negatives",
      Targets::kClassIndexOrFloat, Items::kElements, kSigmoidShape, 0, std::numeric_limits<int>::max(),
      /*background_target=*/true};
  static constexpr auto kParams = std::make_tuple(
      MakeParam("gamma_pos", &P::gamma_pos, "focusing parameter γ+ of the positives").In(0, ParameterLimits::kMaxGamma),
      MakeParam("gamma_neg", &P::gamma_neg, "focusing parameter γ- of the negatives").In(0, ParameterLimits::kMaxGamma),
      MakeParam("clip", &P::clip, "probability margin m shifted off the negatives").InHalfOpen(0, 1),
      MakeParam("ignore_index", &P::ignore_index, "with class-index targets: target value whose rows are ignored"));
};

/// §5.2: Quality Focal Loss (GFL, Li et al. 2020).
struct QualityFocalParams {
  double beta = 2.0;
  std::optional<int64_t> ignore_index;  ///< only with class-index targets
};

template <>
struct Variant<QualityFocalParams> {
  using P = QualityFocalParams;
  static constexpr VariantFacts kFacts{
      "quality_focal", "quality focal loss: sigmoid cross-entropy to soft quality scores, focused by |σ(x) - y|^β",
      Targets::kClassIndexOrFloat, Items::kElements, kSigmoidShape, 0, std::numeric_limits<int>::max(),
      /*background_target=*/true, /*binary_targets=*/false, /*num_objects=*/false, /*scores=*/true,
      MeanOver::kPositives};
  static constexpr auto kParams = std::make_tuple(
      MakeParam("beta", &P::beta, "focusing exponent β").In(1, ParameterLimits::kMaxGamma),
      MakeParam("ignore_index", &P::ignore_index, "with class-index targets: target value whose rows are ignored"));
};

/// §5.3: Varifocal Loss (VarifocalNet, Zhang et al. 2021).
struct VarifocalParams {
  double alpha = 0.75;
  double gamma = 2.0;
  bool iou_weighted = true;
};

template <>
struct Variant<VarifocalParams> {
  using P = VarifocalParams;
  static constexpr VariantFacts kFacts{"varifocal",
                                       "varifocal loss: IoU-aware targets, focal down-weighting of the negatives only",
                                       Targets::kFloat, Items::kElements};
  static constexpr auto kParams = std::make_tuple(
      MakeParam("alpha", &P::alpha, "weight α of the negatives").In(0, ParameterLimits::kMaxWeight),
      MakeParam("gamma", &P::gamma, "focusing parameter γ of the negatives").In(0, ParameterLimits::kMaxGamma),
      MakeParam("iou_weighted", &P::iou_weighted, "weight each positive by its target q (else by 1)"));
};

/// §5.4: FL* (Lin et al. 2017, appendix A).
struct FocalStarParams {
  double gamma = 1.0;
  double beta = 0.0;
  double alpha = -1.0;  ///< negative disables the α weighting, as in fvcore
  std::optional<int64_t> ignore_index;  ///< only with class-index targets
};

template <>
struct Variant<FocalStarParams> {
  using P = FocalStarParams;
  static constexpr VariantFacts kFacts{
      "focal_star", "FL*: softplus(-(γ x_t + β)) / γ, the focal loss's appendix alternative",
      Targets::kClassIndexOrFloat, Items::kElements, kSigmoidShape, 0, std::numeric_limits<int>::max(),
      /*background_target=*/true, /*binary_targets=*/true};
  static constexpr auto kParams = std::make_tuple(
      MakeParam("gamma", &P::gamma, "sharpness γ of x_t")
          .In(ParameterLimits::kMinStarGamma, ParameterLimits::kMaxGamma)
          .Rule("in (0, 1000], at least 1e-6 (the loss is divided by γ)"),
      MakeParam("beta", &P::beta, "shift β of γ x_t").In(-ParameterLimits::kMaxShift, ParameterLimits::kMaxShift),
      MakeParam("alpha", &P::alpha, "weight of positives α; negative disables the weighting")
          .In(-std::numeric_limits<double>::max(), 1)
          .Rule("in [0, 1], or negative to disable the weighting"),
      MakeParam("ignore_index", &P::ignore_index, "with class-index targets: target value whose rows are ignored"));
};

/// §5.5: Distribution Focal Loss (GFL, Li et al. 2020). No parameters.
struct DistributionFocalParams {};

template <>
struct Variant<DistributionFocalParams> {
  using P = DistributionFocalParams;
  static constexpr VariantFacts kFacts{
      "distribution_focal", "distribution focal loss: cross-entropy of a softmax over B bins to a distance's two bins",
      Targets::kFloatPerRow, Items::kRows, "[N, B, d1..dk] with B >= 2 bins", 2};
  static constexpr auto kParams = std::make_tuple();
};

/// Every variant, in the order server info and metrics list them.
using VariantParams =
    std::variant<SoftmaxFocalParams, SigmoidFocalParams, FocalCosineParams, DynamicFocalParams, AsymmetricParams,
                 QualityFocalParams, VarifocalParams, FocalStarParams, DistributionFocalParams>;

// ------------------------------------------------------------------------------------------
// Reading the table.

inline constexpr size_t kNumVariants = std::variant_size_v<VariantParams>;

/// A type as a value, to pass variants to generic lambdas.
template <class P>
struct VariantTag {
  using Params = P;
};

namespace internal {
template <class F, size_t... I>
constexpr void ForEachVariant(F& f, std::index_sequence<I...>) {
  (f(VariantTag<std::variant_alternative_t<I, VariantParams>>{}), ...);
}
}  // namespace internal

/// f(VariantTag<P>{}) for every variant, in table order.
template <class F>
constexpr void ForEachVariant(F&& f) {
  internal::ForEachVariant(f, std::make_index_sequence<kNumVariants>{});
}

/// f(param) for every parameter of P, in table order.
template <class P, class F>
constexpr void ForEachParam(F&& f) {
  std::apply([&](const auto&... param) { (f(param), ...); }, Variant<P>::kParams);
}

/// The facts of the variant `params` holds.
inline const VariantFacts& FactsOf(const VariantParams& params) {
  return std::visit([](const auto& p) -> const VariantFacts& { return Variant<std::decay_t<decltype(p)>>::kFacts; },
                    params);
}

/// The variant's name as the wire spells it.
inline const char* VariantName(const VariantParams& params) { return FactsOf(params).name; }

/// The table index of the variant named `name`, or -1.
inline int VariantIndex(std::string_view name) {
  int index = -1, i = 0;
  ForEachVariant([&](auto tag) {
    if (name == Variant<typename decltype(tag)::Params>::kFacts.name) index = i;
    ++i;
  });
  return index;
}

/// The name of the variant at table index `index` (0 <= index < kNumVariants).
inline const char* VariantNameAt(int index) {
  const char* name = "";
  int i = 0;
  ForEachVariant([&](auto tag) {
    if (i++ == index) name = Variant<typename decltype(tag)::Params>::kFacts.name;
  });
  return name;
}

/// The variant named `name` with every parameter at its default, or nullopt.
inline std::optional<VariantParams> DefaultParams(std::string_view name) {
  std::optional<VariantParams> out;
  ForEachVariant([&](auto tag) {
    using P = typename decltype(tag)::Params;
    if (name == Variant<P>::kFacts.name) out = P{};
  });
  return out;
}

/// The ignore_index of a variant that has that parameter, when it is set.
template <class P>
std::optional<int64_t> IgnoreIndexOf(const P& p) {
  std::optional<int64_t> out;
  ForEachParam<P>([&](const auto& param) {
    if constexpr (std::is_same_v<typename std::decay_t<decltype(param)>::Type, std::optional<int64_t>>) {
      if (std::string_view(param.name) == "ignore_index") out = p.*param.member;
    }
  });
  return out;
}

inline std::optional<int64_t> IgnoreIndex(const VariantParams& params) {
  return std::visit([](const auto& p) { return IgnoreIndexOf(p); }, params);
}

/// Whether the input tensor holds probabilities in [0, 1] rather than logits.
inline bool TakesProbabilities(const VariantParams& params) {
  const auto* sigmoid = std::get_if<SigmoidFocalParams>(&params);
  return sigmoid && sigmoid->input == SigmoidInput::kProbabilities;
}

/// A loss: which variant with which parameters, and how to reduce it.
struct LossSpec {
  VariantParams params = SoftmaxFocalParams{};
  Reduction reduction = Reduction::kMean;
  std::optional<double> normalizer;  ///< replaces MEAN's count when set (RetinaNet's num_pos)
};

/// `value` divided by MEAN's denominator: the normalizer when set, else the number of items
/// counted; 0 when that is 0 (nothing counted: MEAN is 0 and so is its gradient, never NaN).
/// Variants whose MEAN is over their positives divide by at least 1 (GFL's avg_factor).
inline double DivideByMeanDenominator(double value, const LossSpec& spec, int64_t count) {
  const bool over_positives = FactsOf(spec.params).mean_over == MeanOver::kPositives;
  const double counted = static_cast<double>(over_positives ? std::max<int64_t>(count, 1) : count);
  const double denominator = spec.normalizer.value_or(counted);
  return denominator > 0 ? value / denominator : 0.0;
}

}  // namespace focal
