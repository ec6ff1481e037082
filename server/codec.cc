#include "server/codec.h"

#include "absl/strings/str_cat.h"
#include "focal/status_macros.h"

namespace focal::server {
namespace {

absl::Status Invalid(std::string message) { return absl::InvalidArgumentError(std::move(message)); }

/// A view of a request tensor, at most kMaxRank dimensions.
absl::StatusOr<TensorView> RequestTensor(const v1::Tensor& t, absl::string_view field) {
  if (t.shape_size() > kMaxRank) {
    return Invalid(absl::StrCat(field, ".shape has ", t.shape_size(), " dimensions; at most ", kMaxRank));
  }
  return wire::TensorViewFromProto(t, field);
}

}  // namespace

absl::Status CheckRequestSize(const TensorView& logits, const RequestLimits& limits) {
  ASSIGN_OR_RETURN(const int64_t elements, NumElements(logits.shape, "logits"));
  if (elements > limits.max_elements) {
    return absl::ResourceExhaustedError(absl::StrCat("logits has ", elements, " elements; this server takes at most ",
                                                     limits.max_elements, " per request (--max-elements)"));
  }
  // dim 1 is the class dimension of every class-indexed layout; Evaluate sizes per-class sums
  // from it even when dim 0 is 0, so it is bounded for every variant and every RPC.
  if (logits.shape.size() >= 2 && logits.shape[1] > limits.max_classes) {
    return absl::ResourceExhaustedError(absl::StrCat("logits.shape[1] is ", logits.shape[1],
                                                     " classes; this server takes at most ", limits.max_classes,
                                                     " per request (--max-classes)"));
  }
  return absl::OkStatus();
}

absl::StatusOr<LossJob> DecodeComputeRequest(const v1::ComputeRequest& request, const RequestLimits& limits) {
  LossJob job;
  RETURN_IF_ERROR(wire::RejectUnknownFields(request, ""));
  if (!request.has_loss()) return Invalid("loss is missing; it names the variant and its parameters");
  ASSIGN_OR_RETURN(job.spec, wire::LossSpecFromProto(request.loss(), "loss"));

  if (!request.has_logits()) return Invalid("logits is missing");
  if (!request.has_targets()) return Invalid("targets is missing");
  ASSIGN_OR_RETURN(job.logits, RequestTensor(request.logits(), "logits"));
  ASSIGN_OR_RETURN(job.targets, RequestTensor(request.targets(), "targets"));
  RETURN_IF_ERROR(CheckRequestSize(job.logits, limits));
  if (request.has_num_objects()) {
    ASSIGN_OR_RETURN(job.num_objects, RequestTensor(request.num_objects(), "num_objects"));
  }
  if (request.has_weights()) {
    ASSIGN_OR_RETURN(job.weights, RequestTensor(request.weights(), "weights"));
  }
  if (request.has_scores()) {
    ASSIGN_OR_RETURN(job.scores, RequestTensor(request.scores(), "scores"));
  }
  job.compute_gradient = request.compute_gradient();
  switch (request.grad_output_case()) {
    case v1::ComputeRequest::kGradOutputScalar: job.grad_output = request.grad_output_scalar(); break;
    case v1::ComputeRequest::kGradOutputTensor: {
      ASSIGN_OR_RETURN(job.grad_output, RequestTensor(request.grad_output_tensor(), "grad_output"));
      break;
    }
    case v1::ComputeRequest::GRAD_OUTPUT_NOT_SET: break;
  }
  if (request.gradient_dtype() != v1::DATA_TYPE_UNSPECIFIED) {
    ASSIGN_OR_RETURN(job.output_dtype, wire::DTypeFromProto(request.gradient_dtype(), "gradient_dtype"));
  }
  job.allow_non_finite = request.allow_non_finite();
  return job;
}

void EncodeComputeResponse(LossResult&& result, absl::string_view request_id, int64_t queue_micros,
                           v1::ComputeResponse* response) {
  response->set_request_id(std::string(request_id));
  response->set_loss(result.loss);
  response->set_count(result.count);
  response->set_backend(result.backend);
  if (result.losses) wire::TensorToProto(std::move(*result.losses), response->mutable_losses());
  if (result.gradient) wire::TensorToProto(std::move(*result.gradient), response->mutable_gradient());
  response->mutable_timing()->set_queue_micros(queue_micros);
  response->mutable_timing()->set_compute_micros(result.compute_micros);
}

}  // namespace focal::server
