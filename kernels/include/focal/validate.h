// Host-side validation of a LossJob, shared by every backend: nothing is launched before it
// passes. It also derives the layout and the reduction's denominator that kernels need.
#pragma once

#include <cstdint>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "focal/job.h"

namespace focal {

/// How a validated job's tensors are laid out and reduced.
struct JobPlan {
  int64_t num_elements = 0;  ///< logits
  /// Class layout [N, C, S] with S = d1·…·dk (class-indexed variants and index targets).
  int64_t batch = 0, classes = 0, inner = 1;
  bool index_targets = false;  ///< targets are class indices, not float
  Shape item_shape;            ///< shape of NONE's per-item losses
  int64_t num_items = 0;
  int64_t count = 0;           ///< items the reduction counts
  DType output_dtype = DType::kFloat32;
  /// Scalar weight of every item's gradient: upstream w times the reduction's own scale
  /// (1/D for MEAN). With a NONE grad_output tensor, each item is further weighted by it.
  double grad_scale = 1.0;
  /// dynamic_focal: α_n per row from num_objects; empty means a_t = 1.
  std::vector<float> row_alpha;
  /// softmax_focal's class-balanced α from class_counts; empty means the request's alpha.
  std::vector<double> class_alpha;
};

/// Checks shapes, dtypes, byte lengths, parameters and class-index targets; the returned plan
/// is what the kernels run on. Errors are INVALID_ARGUMENT naming the field and first bad index.
/// Floating-point inputs are checked for finiteness and range inside the compute pass; a
/// backend that sees a bad value there calls FindInvalidValue for the message.
absl::StatusOr<JobPlan> ValidateJob(const LossJob& job);

/// Scans the logits (finite, or in [0,1] for probabilities) and float targets (in [0,1], or
/// {0,1} for dynamic_focal) and returns INVALID_ARGUMENT for the first bad value, or OK.
absl::Status FindInvalidValue(const LossJob& job);

}  // namespace focal
