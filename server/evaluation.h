// Evaluate's domain logic, apart from the gRPC plumbing: which fields a batch may set, how each
// variant's items are attributed to classes, and the exact, split-independent sums over a whole
// evaluation. No gRPC here: the service feeds it batches, the fuzzers do too.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "focal/job.h"
#include "focal/v1/focal_loss.pb.h"
#include "server/exact_sum.h"

namespace focal::server {

/// Checks a decoded batch for Evaluate and sets what Evaluate computes: per-item losses (float32,
/// or float64 for float64 logits) and no gradient. The fields that only shape a gradient or the
/// MEAN denominator (grad_output, gradient_dtype, loss.normalizer) have no meaning there and are
/// INVALID_ARGUMENT naming the field; compute_gradient and the reduction, which every batch made
/// for Compute carries, are replaced.
absl::Status PrepareForEvaluation(LossJob& job);

/// Exact sums over a whole evaluation.
class EvaluationTotals {
 public:
  /// Adds one batch's per-item losses (`job` as PrepareForEvaluation left it). Items are
  /// attributed to a class as the variant's table entry says (focal/params.h, Items): a row to
  /// its target class, a single logit to its class channel (dim 1).
  /// Ignored items add nothing. The class dimension must have been bounded (--max-classes).
  /// A batch of another variant than the first is INVALID_ARGUMENT.
  absl::Status Add(const LossJob& job, const LossResult& result);

  int64_t batches() const { return batches_; }
  void AddTiming(int64_t compute_micros, int64_t queue_micros) {
    compute_micros_ += compute_micros;
    queue_micros_ += queue_micros;
  }
  const std::string& variant() const { return variant_; }

  /// The totals as the wire answer (backend left for the caller).
  v1::EvaluateResponse ToResponse() const;

 private:
  ExactSum total_;
  int64_t count_ = 0;
  std::vector<ExactSum> class_sums_;
  std::vector<int64_t> class_counts_;
  int64_t batches_ = 0;
  int64_t compute_micros_ = 0, queue_micros_ = 0;
  std::string variant_;
  LossSpec spec_;  ///< the first batch's: what the mean divides by
};

}  // namespace focal::server
