// The flat arguments every backend's kernels run on, derived once from a validated job: plain
// values and pointers (no std:: containers), so the CPU chunks and the CUDA kernels (which take
// it by value) read the same struct. Backends fill in the data pointers: host memory on the CPU,
// device buffers on the GPU.
#pragma once

#include <cstdint>
#include <vector>

#include "focal/dtype.h"
#include "focal/params.h"

namespace focal {

// Declared here, defined in focal/job.h and focal/validate.h: this header stays free of Abseil
// so that nvcc compiles it into the kernels.
struct LossJob;
struct JobPlan;

/// The per-element formula of the elementwise kinds (focal/element_formulas-inl.h).
enum class ElementFormula : uint8_t {
  kSigmoidFocal,  ///< sigmoid_focal and dynamic_focal
  kAsymmetric,
  kQualityFocal,
  kVarifocal,
  kFocalStar,
};

/// Everything a kernel needs, fixed for the whole job.
struct KernelArgs {
  const void* logits = nullptr;
  DType logits_dtype = DType::kFloat32;
  const void* targets = nullptr;
  DType targets_dtype = DType::kFloat32;
  int64_t batch = 0;    ///< N of [N, C, S] (class-indexed kinds)
  int64_t classes = 1;  ///< C of [N, C, S]
  int64_t inner = 1;    ///< S of [N, C, S]; stride of the class dimension
  int64_t num_elements = 0;  ///< logits
  /// Elementwise variants: elements per row, and dynamic_focal's per-row α_n (or null).
  int64_t row_length = 1;
  const float* row_alpha = nullptr;
  double alpha_pos = 1, alpha_neg = 1;  ///< sigmoid α_t weights of positives and negatives
  double gamma = 2;
  double smoothing = 0;        ///< ε
  double smoothing_floor = 0;  ///< ε/K (sigmoid) added to every target after scaling by 1-ε
  bool probabilities = false;
  bool binary_targets = false;  ///< dynamic_focal: float targets must be exactly 0 or 1
  /// Class-index targets equal to ignore_index are ignored rows, only when has_ignore_index:
  /// "no ignore_index" is its own state, never a value a client could send as a target.
  bool has_ignore_index = false;
  int64_t ignore_index = 0;
  const double* class_alpha = nullptr;  ///< softmax per-class α (given or class-balanced), or null for all ones
  /// §5.0 Poly-1 (softmax_focal and sigmoid_focal): ε_p, 0 for none.
  double poly_epsilon = 0;
  /// §5.0 FLSD (softmax_focal): a row uses step_gamma[i] of the first step_threshold[i] above
  /// its p_y, else `gamma`; gamma_steps = 0 for a fixed γ. Inline, so kernels take them by value.
  int gamma_steps = 0;
  double step_threshold[ParameterLimits::kMaxGammaSteps] = {};
  double step_gamma[ParameterLimits::kMaxGammaSteps] = {};
  double cosine_alpha = 1, xent = 0.1;
  /// The catalogue's elementwise variants. `gamma` is asymmetric's γ+, varifocal's and
  /// focal_star's γ; `alpha_pos`/`alpha_neg` are focal_star's α_t weights.
  ElementFormula formula = ElementFormula::kSigmoidFocal;
  double gamma_neg = 0, clip = 0;  ///< asymmetric's γ- and probability margin m
  double beta = 0;                 ///< quality_focal's exponent β; focal_star's shift β
  double negative_weight = 1;      ///< varifocal's α
  bool iou_weighted = true;        ///< varifocal: positives weighted by q
  /// quality_focal with class-index targets: the target class's score per position, or null.
  const void* scores = nullptr;
  DType scores_dtype = DType::kFloat32;
  /// The request's per-item loss weights as float32 (the loss side; item_weights carries them
  /// on the gradient side), or null.
  const float* loss_weights = nullptr;
  /// Gradient weight of every item: upstream w times the reduction's scale.
  double grad_scale = 1;
  /// Per-item gradient weights as float32, or null: NONE's upstream tensor times the request's
  /// loss weights (either alone when only one is sent).
  const float* item_weights = nullptr;
  void* losses = nullptr;               ///< NONE's per-item output, or null
  void* gradient = nullptr;             ///< or null when not requested
  DType output_dtype = DType::kFloat32;
  bool check_inputs = true;    ///< flag non-finite logits (or probabilities outside [0,1])
  bool propagate_nan = false;  ///< allow_non_finite: NaN/Inf inputs give NaN outputs
};

enum class KernelKind : uint8_t {
  kElementwiseFloatTargets,  ///< a.formula elementwise over the logits, float targets alike
  kElementwiseIndexTargets,  ///< a.formula with an implicit one-hot from class indices
  kSoftmaxFocal,
  kFocalCosine,
  kDistributionFocal,  ///< a softmax over the bins of dim 1, float targets [N, S]
};

/// Fills every field of `args` that comes from the job and its plan (parameters, shapes, dtypes,
/// the input pointers of the job's own tensors and of the plan's row α) and returns the kernel
/// kind. Outputs and item weights are left null for the backend to place.
KernelKind MakeKernelArgs(const LossJob& job, const JobPlan& plan, KernelArgs& args);

/// The per-item weights of the gradient as float32 (kernels read them so): NONE's upstream
/// tensor times the request's loss weights, or either alone; the request's own bytes when that
/// is one float32 tensor, else computed once into `storage`. Null when the job has neither.
const float* ItemWeightsAsFloat32(const LossJob& job, std::vector<float>& storage);

/// The request's loss weights as float32: its own bytes when float32, else widened once into
/// `storage`. Null when the job has none.
const float* LossWeightsAsFloat32(const LossJob& job, std::vector<float>& storage);

/// The reported loss from the sum of the per-item losses: the sum for SUM and NONE, divided by
/// the normalizer or the count for MEAN (0 when nothing is counted, never NaN).
double ReducedLoss(const LossJob& job, const JobPlan& plan, double sum);

}  // namespace focal
