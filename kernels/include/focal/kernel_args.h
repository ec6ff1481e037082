// The flat arguments every backend's kernels run on, derived once from a validated job: plain
// values and pointers (no std:: containers), so the CPU chunks and the CUDA kernels (which take
// it by value) read the same struct. Backends fill in the data pointers: host memory on the CPU,
// device buffers on the GPU.
#pragma once

#include <cstdint>
#include <vector>

#include "focal/dtype.h"

namespace focal {

// Declared here, defined in focal/job.h and focal/validate.h: this header stays free of Abseil
// so that nvcc compiles it into the kernels.
struct LossJob;
struct JobPlan;

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
  const double* class_alpha = nullptr;  ///< softmax per-class α, or null for all ones
  double cosine_alpha = 1, xent = 0.1;
  /// Gradient weight of every item: upstream w times the reduction's scale.
  double grad_scale = 1;
  const float* item_weights = nullptr;  ///< NONE's upstream tensor as float32, per item, or null
  void* losses = nullptr;               ///< NONE's per-item output, or null
  void* gradient = nullptr;             ///< or null when not requested
  DType output_dtype = DType::kFloat32;
  bool check_inputs = true;    ///< flag non-finite logits (or probabilities outside [0,1])
  bool propagate_nan = false;  ///< allow_non_finite: NaN/Inf inputs give NaN outputs
};

enum class KernelKind : uint8_t {
  kSigmoidFloatTargets,  ///< sigmoid_focal and dynamic_focal: elementwise over the logits
  kSigmoidIndexTargets,  ///< sigmoid_focal with an implicit one-hot from class indices
  kSoftmaxFocal,
  kFocalCosine,
};

/// Fills every field of `args` that comes from the job and its plan (parameters, shapes, dtypes,
/// the input pointers of the job's own tensors and of the plan's row α) and returns the kernel
/// kind. Outputs and item weights are left null for the backend to place.
KernelKind MakeKernelArgs(const LossJob& job, const JobPlan& plan, KernelArgs& args);

/// NONE's upstream weight tensor as float32 (kernels read it so): the request's own bytes when
/// they are float32, else widened once into `storage`. Null when the job has none.
const float* ItemWeightsAsFloat32(const LossJob& job, std::vector<float>& storage);

/// The reported loss from the sum of the per-item losses: the sum for SUM and NONE, divided by
/// the normalizer or the count for MEAN (0 when nothing is counted, never NaN).
double ReducedLoss(const LossJob& job, const JobPlan& plan, double sum);

}  // namespace focal
