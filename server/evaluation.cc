#include "server/evaluation.h"

#include <algorithm>
#include <optional>
#include <variant>

#include "absl/strings/str_cat.h"
#include "focal/math.h"

namespace focal::server {
namespace {

/// f(class, loss) for every item that counts, in order; no division per item.
template <class F>
void ForEachItem(const LossJob& job, const TensorView& losses, const F& f) {
  const Shape& shape = job.logits.shape;
  const int64_t channels = shape.size() >= 2 ? shape[1] : 1;
  const int64_t rows = shape.empty() ? 1 : shape[0];
  int64_t inner = 1;
  for (size_t d = 2; d < shape.size(); ++d) inner *= shape[d];
  const std::optional<int64_t> ignore = IgnoreIndex(job.spec.params);
  auto loss_at = [&](int64_t i) {
    return losses.dtype == DType::kFloat32 ? static_cast<double>(losses.As<float>()[i]) : losses.As<double>()[i];
  };
  if (FactsOf(job.spec.params).items == Items::kRows) {  // items are positions [N, S]; class = target
    const int64_t items = rows * inner;
    // distribution_focal's float distances: the row's class is its left bin, min(floor(y), B-2).
    const bool distances = IsFloating(job.targets.dtype);
    for (int64_t i = 0; i < items; ++i) {
      const int64_t cls = distances ? math::DistributionFocalBins(LoadAsDouble(job.targets, i), channels).left
                                    : LoadAsInt64(job.targets, i);
      if (ignore && cls == *ignore) continue;
      f(cls, loss_at(i));
    }
    return;
  }
  // Items are logits [N, C, S]; class = channel c. With class-index targets a row (n, s) can
  // be ignored as a whole.
  const bool index_targets = IsInteger(job.targets.dtype);
  if (shape.empty()) {
    f(0, loss_at(0));
    return;
  }
  for (int64_t n = 0; n < rows; ++n) {
    for (int64_t c = 0; c < channels; ++c) {
      const int64_t base = (n * channels + c) * inner;
      for (int64_t s = 0; s < inner; ++s) {
        if (index_targets && ignore && LoadAsInt64(job.targets, n * inner + s) == *ignore) continue;
        f(c, loss_at(base + s));
      }
    }
  }
}

}  // namespace

absl::Status PrepareForEvaluation(LossJob& job) {
  if (!std::holds_alternative<std::monostate>(job.grad_output)) {
    return absl::InvalidArgumentError("grad_output is set; Evaluate computes no gradient");
  }
  if (job.output_dtype) return absl::InvalidArgumentError("gradient_dtype is set; Evaluate computes no gradient");
  if (job.spec.normalizer) {
    return absl::InvalidArgumentError(
        "loss.normalizer is set; Evaluate returns the total and the mean over the counted items, so divide the total "
        "by your normalizer");
  }
  // compute_gradient and the reduction are the two settings a batch made for Compute always has;
  // Evaluate's meaning of them (no gradient, per-item losses summed exactly) replaces them.
  job.compute_gradient = false;
  job.spec.reduction = Reduction::kNone;
  job.output_dtype = job.logits.dtype == DType::kFloat64 ? DType::kFloat64 : DType::kFloat32;
  return absl::OkStatus();
}

absl::Status EvaluationTotals::Add(const LossJob& job, const LossResult& result) {
  const std::string variant = VariantName(job.spec.params);
  if (!variant_.empty() && variant != variant_) {
    return absl::InvalidArgumentError(absl::StrCat("loss.variant is ", variant, ", but the evaluation started with ",
                                                   variant_, "; one Evaluate call evaluates one loss"));
  }
  variant_ = variant;
  spec_ = job.spec;
  ++batches_;
  count_ += result.count;
  const Shape& shape = job.logits.shape;
  const int64_t channels = shape.size() >= 2 ? shape[1] : 1;
  if (static_cast<int64_t>(class_sums_.size()) < channels) {
    class_sums_.resize(channels);
    class_counts_.resize(channels, 0);
  }
  const TensorView losses = result.losses->view();
  if (losses.dtype == DType::kFloat32) {
    // Float32 losses (every logits dtype but float64) go through integer buckets, ~10x
    // cheaper per item than ExactSum; per class too while that stays small in memory.
    ExactFloat32Sum batch_total;
    BatchSums batch_classes(class_sums_, static_cast<size_t>(channels));
    ForEachItem(job, losses, [&](int64_t cls, double loss) {
      batch_total.Add(static_cast<float>(loss));
      batch_classes.Add(static_cast<size_t>(cls), static_cast<float>(loss));
      ++class_counts_[cls];
    });
    batch_classes.Flush();
    batch_total.AddTo(total_);
  } else {
    ForEachItem(job, losses, [&](int64_t cls, double loss) {
      total_.Add(loss);
      class_sums_[cls].Add(loss);
      ++class_counts_[cls];
    });
  }
  return absl::OkStatus();
}

v1::EvaluateResponse EvaluationTotals::ToResponse() const {
  v1::EvaluateResponse response;
  response.set_total_loss(total_.Value());
  response.set_count(count_);
  // As MEAN divides (quality_focal: by at least 1); Evaluate refuses a normalizer.
  response.set_mean(DivideByMeanDenominator(response.total_loss(), spec_, count_));
  for (size_t c = 0; c < class_sums_.size(); ++c) {
    response.add_class_loss_sums(class_sums_[c].Value());
    response.add_class_counts(class_counts_[c]);
  }
  response.set_batches(batches_);
  response.mutable_timing()->set_compute_micros(compute_micros_);
  response.mutable_timing()->set_queue_micros(queue_micros_);
  return response;
}

}  // namespace focal::server
