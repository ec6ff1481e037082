// The parameters of every variant, with the defaults of VARIANTS.md, in this one place.
#pragma once

#include <cstdint>
#include <optional>
#include <variant>
#include <vector>

namespace focal {

enum class Reduction : uint8_t { kMean, kSum, kNone };

/// How large a parameter may be so that float32 kernels carry it. The worst product is
/// focal_cosine's: α·xent (1e8) times grad_output over the smallest normalizer (1e14) times the
/// normalisation's 1/max(‖x‖, 1e-12) of an all-zero row (1e12) is 1e34, below float32's
/// 3.4e38; every other variant has less. Beyond γ = 1000, (1-p_t)^γ is below 1e-40 for every
/// p_t ≥ 0.1: nothing is left to focus on.
struct ParameterLimits {
  static constexpr double kMaxGamma = 1000;
  /// α (per class or scalar) and xent: weights of a loss term.
  static constexpr double kMaxWeight = 1e4;
  /// |grad_output|, scalar or per item (mixed-precision loss scales stay near 2^16-2^24).
  static constexpr double kMaxGradOutput = 1e8;
  /// The MEAN denominator a request may set (RetinaNet's number of positives, say).
  static constexpr double kMinNormalizer = 1e-6;
  static constexpr double kMaxNormalizer = 1e15;
};

/// What sigmoid_focal's input tensor holds.
enum class SigmoidInput : uint8_t { kLogits, kProbabilities };

/// §1: multi-class focal loss over a softmax of the class dimension (dim 1).
struct SoftmaxFocalParams {
  static constexpr const char* kName = "softmax_focal";
  double gamma = 2.0;
  std::vector<float> alpha;  ///< per-class weights; empty means all ones
  std::optional<int64_t> ignore_index;
  double label_smoothing = 0.0;
};

/// §2: binary / multi-label focal loss (RetinaNet, torchvision).
struct SigmoidFocalParams {
  static constexpr const char* kName = "sigmoid_focal";
  double gamma = 2.0;
  double alpha = 0.25;  ///< negative disables the α weighting, as in torchvision
  std::optional<int64_t> ignore_index;  ///< only with class-index targets
  double label_smoothing = 0.0;
  int64_t smoothing_classes = 2;
  SigmoidInput input = SigmoidInput::kLogits;
};

/// §3: Focal Cosine Loss (Kim et al. 2020).
struct FocalCosineParams {
  static constexpr const char* kName = "focal_cosine";
  double alpha = 1.0;
  double gamma = 2.0;
  double xent = 0.1;
};

/// §4: focal loss with a dynamic number of objects (FL-DoN).
struct DynamicFocalParams {
  static constexpr const char* kName = "dynamic_focal";
  double gamma = 2.0;
};

using VariantParams =
    std::variant<SoftmaxFocalParams, SigmoidFocalParams, FocalCosineParams, DynamicFocalParams>;

/// Name of the variant held by `params`, as the wire API spells it.
const char* VariantName(const VariantParams& params);

/// A loss: which variant with which parameters, and how to reduce it.
struct LossSpec {
  VariantParams params = SoftmaxFocalParams{};
  Reduction reduction = Reduction::kMean;
  std::optional<double> normalizer;  ///< replaces MEAN's count when set (RetinaNet's num_pos)
};

}  // namespace focal
