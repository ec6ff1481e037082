#include "focal/kernel_args.h"

#include "focal/job.h"
#include "focal/math.h"
#include "focal/math_ops.h"
#include "focal/validate.h"

#include <algorithm>
#include <type_traits>
#include <variant>

namespace focal {

KernelKind MakeKernelArgs(const LossJob& job, const JobPlan& plan, KernelArgs& a) {
  a.logits = job.logits.data;
  a.logits_dtype = job.logits.dtype;
  a.targets = job.targets.data;
  a.targets_dtype = job.targets.dtype;
  a.batch = plan.batch;
  a.classes = plan.classes;
  a.inner = plan.inner;
  a.num_elements = plan.num_elements;
  a.grad_scale = plan.grad_scale;
  a.output_dtype = plan.output_dtype;
  const bool probabilities = TakesProbabilities(job.spec.params);
  // Probabilities outside [0, 1] are rejected even with allow_non_finite: they have no loss.
  a.check_inputs = !job.allow_non_finite || probabilities;
  a.propagate_nan = job.allow_non_finite;
  return std::visit(
      [&](const auto& p) -> KernelKind {
        using P = std::decay_t<decltype(p)>;
        if constexpr (std::is_same_v<P, SoftmaxFocalParams>) {
          a.gamma = p.gamma;
          a.smoothing = p.label_smoothing;
          a.has_ignore_index = p.ignore_index.has_value();
          a.ignore_index = p.ignore_index.value_or(0);
          const std::vector<double>& alpha = plan.class_alpha.empty() ? p.alpha : plan.class_alpha;
          a.class_alpha = alpha.empty() ? nullptr : alpha.data();
          a.poly_epsilon = p.poly_epsilon;
          a.gamma_steps = static_cast<int>(p.gamma_schedule.size());  // at most kMaxGammaSteps (validated)
          for (int i = 0; i < a.gamma_steps; ++i) {
            a.step_threshold[i] = p.gamma_schedule[i].threshold;
            a.step_gamma[i] = p.gamma_schedule[i].gamma;
          }
          return KernelKind::kSoftmaxFocal;
        } else if constexpr (std::is_same_v<P, SigmoidFocalParams>) {
          a.gamma = p.gamma;
          const math::ClassWeights<double> weights = math::SigmoidFocalWeights(ScalarOps<double>{}, p.alpha);
          a.alpha_pos = weights.pos;
          a.alpha_neg = weights.neg;
          a.smoothing = p.label_smoothing;
          a.smoothing_floor = math::SmoothingFloor(p.label_smoothing, static_cast<double>(p.smoothing_classes));
          a.probabilities = p.input == SigmoidInput::kProbabilities;
          a.poly_epsilon = p.poly_epsilon;
          a.has_ignore_index = p.ignore_index.has_value();
          a.ignore_index = p.ignore_index.value_or(0);
          return plan.index_targets ? KernelKind::kElementwiseIndexTargets
                                    : KernelKind::kElementwiseFloatTargets;
        } else if constexpr (std::is_same_v<P, FocalCosineParams>) {
          a.gamma = p.gamma;
          a.cosine_alpha = p.alpha;
          a.xent = p.xent;
          return KernelKind::kFocalCosine;
        } else if constexpr (std::is_same_v<P, DynamicFocalParams>) {
          a.gamma = p.gamma;
          a.binary_targets = true;
          a.row_length = std::max<int64_t>(plan.inner, 1);
          a.row_alpha = plan.row_alpha.empty() ? nullptr : plan.row_alpha.data();
          return KernelKind::kElementwiseFloatTargets;
        } else if constexpr (std::is_same_v<P, DistributionFocalParams>) {
          return KernelKind::kDistributionFocal;
        } else {
          // The catalogue's elementwise variants: sigmoid_focal's pass with another formula.
          if constexpr (std::is_same_v<P, AsymmetricParams>) {
            a.formula = ElementFormula::kAsymmetric;
            a.gamma = p.gamma_pos;
            a.gamma_neg = p.gamma_neg;
            a.clip = p.clip;
          } else if constexpr (std::is_same_v<P, QualityFocalParams>) {
            a.formula = ElementFormula::kQualityFocal;
            a.beta = p.beta;
            if (job.scores) {
              a.scores = job.scores->data;
              a.scores_dtype = job.scores->dtype;
            }
          } else if constexpr (std::is_same_v<P, VarifocalParams>) {
            a.formula = ElementFormula::kVarifocal;
            a.gamma = p.gamma;
            a.negative_weight = p.alpha;
            a.iou_weighted = p.iou_weighted;
          } else {
            static_assert(std::is_same_v<P, FocalStarParams>);
            a.formula = ElementFormula::kFocalStar;
            a.gamma = p.gamma;
            a.beta = p.beta;
            const math::ClassWeights<double> weights = math::SigmoidFocalWeights(ScalarOps<double>{}, p.alpha);
            a.alpha_pos = weights.pos;
            a.alpha_neg = weights.neg;
            a.binary_targets = true;
          }
          a.has_ignore_index = IgnoreIndexOf(p).has_value();
          a.ignore_index = IgnoreIndexOf(p).value_or(0);
          return plan.index_targets ? KernelKind::kElementwiseIndexTargets : KernelKind::kElementwiseFloatTargets;
        }
      },
      job.spec.params);
}

namespace {

/// `t` as float32: its own bytes, or widened once into `storage`.
const float* AsFloat32(const TensorView& t, std::vector<float>& storage) {
  if (t.dtype == DType::kFloat32) return t.As<float>();
  const int64_t n = static_cast<int64_t>(t.size_bytes / DTypeSize(t.dtype));
  storage.resize(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) storage[i] = static_cast<float>(LoadAsDouble(t, i));
  return storage.data();
}

}  // namespace

const float* ItemWeightsAsFloat32(const LossJob& job, std::vector<float>& storage) {
  const TensorView* upstream = std::get_if<TensorView>(&job.grad_output);
  if (job.spec.reduction != Reduction::kNone) upstream = nullptr;  // a scalar: in grad_scale
  const TensorView* weights = job.weights ? &*job.weights : nullptr;
  if (!upstream || !weights) {
    if (upstream) return AsFloat32(*upstream, storage);
    return weights ? AsFloat32(*weights, storage) : nullptr;
  }
  // Both: one product per item, in float32 as the kernels would form it.
  const int64_t n = static_cast<int64_t>(weights->size_bytes / DTypeSize(weights->dtype));
  storage.resize(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) {
    storage[i] = static_cast<float>(LoadAsDouble(*upstream, i)) * static_cast<float>(LoadAsDouble(*weights, i));
  }
  return storage.data();
}

const float* LossWeightsAsFloat32(const LossJob& job, std::vector<float>& storage) {
  return job.weights ? AsFloat32(*job.weights, storage) : nullptr;
}

double ReducedLoss(const LossJob& job, const JobPlan& plan, double sum) {
  if (job.spec.reduction != Reduction::kMean) return sum;
  return DivideByMeanDenominator(sum, job.spec, plan.count);
}

}  // namespace focal
