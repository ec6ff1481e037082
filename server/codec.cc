#include "server/codec.h"

#include "absl/strings/str_cat.h"
#include "focal/status_macros.h"

namespace focal::server {
namespace {

absl::Status Invalid(std::string message) { return absl::InvalidArgumentError(std::move(message)); }

absl::StatusOr<TensorView> TensorFromProto(const v1::Tensor& t, absl::string_view field) {
  TensorView view;
  ASSIGN_OR_RETURN(view.dtype, FromProto(t.dtype(), absl::StrCat(field, ".dtype")));
  if (t.shape_size() > kMaxRank) {
    return Invalid(absl::StrCat(field, ".shape has ", t.shape_size(), " dimensions; at most ", kMaxRank));
  }
  view.shape.assign(t.shape().begin(), t.shape().end());
  view.data = t.data().data();  // in place: no copy of the request's bytes
  view.size_bytes = t.data().size();
  return view;
}

absl::StatusOr<VariantParams> ParamsFromProto(const v1::LossSpec& loss) {
  switch (loss.variant_case()) {
    case v1::LossSpec::kSoftmaxFocal: {
      const v1::SoftmaxFocal& m = loss.softmax_focal();
      SoftmaxFocalParams p;
      if (m.has_gamma()) p.gamma = m.gamma();
      p.alpha.assign(m.alpha().begin(), m.alpha().end());
      if (m.has_ignore_index()) p.ignore_index = m.ignore_index();
      if (m.has_label_smoothing()) p.label_smoothing = m.label_smoothing();
      return p;
    }
    case v1::LossSpec::kSigmoidFocal: {
      const v1::SigmoidFocal& m = loss.sigmoid_focal();
      SigmoidFocalParams p;
      if (m.has_gamma()) p.gamma = m.gamma();
      if (m.has_alpha()) p.alpha = m.alpha();
      if (m.has_ignore_index()) p.ignore_index = m.ignore_index();
      if (m.has_label_smoothing()) p.label_smoothing = m.label_smoothing();
      if (m.has_smoothing_classes()) p.smoothing_classes = m.smoothing_classes();
      switch (m.input()) {
        case v1::LOGITS: p.input = SigmoidInput::kLogits; break;
        case v1::PROBABILITIES: p.input = SigmoidInput::kProbabilities; break;
        default: return Invalid(absl::StrCat("loss.sigmoid_focal.input is ", m.input(), "; expected LOGITS or PROBABILITIES"));
      }
      return p;
    }
    case v1::LossSpec::kFocalCosine: {
      const v1::FocalCosine& m = loss.focal_cosine();
      FocalCosineParams p;
      if (m.has_alpha()) p.alpha = m.alpha();
      if (m.has_gamma()) p.gamma = m.gamma();
      if (m.has_xent()) p.xent = m.xent();
      return p;
    }
    case v1::LossSpec::kDynamicFocal: {
      DynamicFocalParams p;
      if (loss.dynamic_focal().has_gamma()) p.gamma = loss.dynamic_focal().gamma();
      return p;
    }
    case v1::LossSpec::VARIANT_NOT_SET:
      break;
  }
  return Invalid("loss.variant is not set; expected one of softmax_focal, sigmoid_focal, focal_cosine, dynamic_focal");
}

}  // namespace

v1::DataType ToProto(DType dtype) { return static_cast<v1::DataType>(static_cast<int>(dtype)); }

absl::StatusOr<DType> FromProto(int dtype, absl::string_view field) {
  // The wire enum's values equal DType's by construction (see focal/dtype.h).
  if (dtype == v1::DATA_TYPE_UNSPECIFIED) return Invalid(absl::StrCat(field, " is not set"));
  if (dtype < static_cast<int>(DType::kFloat32) || dtype > static_cast<int>(DType::kUInt8)) {
    return Invalid(absl::StrCat(field, " is ", dtype, ", not a known DataType"));
  }
  return static_cast<DType>(dtype);
}

absl::StatusOr<LossJob> DecodeComputeRequest(const v1::ComputeRequest& request, const RequestLimits& limits) {
  LossJob job;
  if (!request.has_loss()) return Invalid("loss is missing; it names the variant and its parameters");
  ASSIGN_OR_RETURN(job.spec.params, ParamsFromProto(request.loss()));
  switch (request.loss().reduction()) {
    case v1::MEAN: job.spec.reduction = Reduction::kMean; break;
    case v1::SUM: job.spec.reduction = Reduction::kSum; break;
    case v1::NONE: job.spec.reduction = Reduction::kNone; break;
    default: return Invalid(absl::StrCat("loss.reduction is ", request.loss().reduction(), "; expected MEAN, SUM or NONE"));
  }
  if (request.loss().has_normalizer()) job.spec.normalizer = request.loss().normalizer();

  if (!request.has_logits()) return Invalid("logits is missing");
  if (!request.has_targets()) return Invalid("targets is missing");
  ASSIGN_OR_RETURN(job.logits, TensorFromProto(request.logits(), "logits"));
  ASSIGN_OR_RETURN(job.targets, TensorFromProto(request.targets(), "targets"));
  ASSIGN_OR_RETURN(const int64_t elements, NumElements(job.logits.shape, "logits"));
  if (elements > limits.max_elements) {
    return absl::ResourceExhaustedError(absl::StrCat("logits has ", elements, " elements; this server takes at most ",
                                                     limits.max_elements, " per request (--max-elements)"));
  }
  // dim 1 is the class dimension of every class-indexed layout; Evaluate sizes per-class sums
  // from it even when dim 0 is 0, so it is bounded for every variant and every RPC.
  if (job.logits.shape.size() >= 2 && job.logits.shape[1] > limits.max_classes) {
    return absl::ResourceExhaustedError(absl::StrCat("logits.shape[1] is ", job.logits.shape[1],
                                                     " classes; this server takes at most ", limits.max_classes,
                                                     " per request (--max-classes)"));
  }
  if (request.has_num_objects()) {
    ASSIGN_OR_RETURN(job.num_objects, TensorFromProto(request.num_objects(), "num_objects"));
  }
  job.compute_gradient = request.compute_gradient();
  switch (request.grad_output_case()) {
    case v1::ComputeRequest::kGradOutputScalar: job.grad_output = request.grad_output_scalar(); break;
    case v1::ComputeRequest::kGradOutputTensor: {
      ASSIGN_OR_RETURN(job.grad_output, TensorFromProto(request.grad_output_tensor(), "grad_output"));
      break;
    }
    case v1::ComputeRequest::GRAD_OUTPUT_NOT_SET: break;
  }
  if (request.gradient_dtype() != v1::DATA_TYPE_UNSPECIFIED) {
    ASSIGN_OR_RETURN(job.output_dtype, FromProto(request.gradient_dtype(), "gradient_dtype"));
  }
  job.allow_non_finite = request.allow_non_finite();
  return job;
}

namespace {
void TensorToProto(OwnedTensor&& t, v1::Tensor* out) {
  out->set_dtype(ToProto(t.dtype));
  out->mutable_shape()->Assign(t.shape.begin(), t.shape.end());
  out->set_data(std::move(t.bytes));  // moved, not copied
}
}  // namespace

void EncodeComputeResponse(LossResult&& result, absl::string_view request_id, int64_t queue_micros,
                           v1::ComputeResponse* response) {
  response->set_request_id(std::string(request_id));
  response->set_loss(result.loss);
  response->set_count(result.count);
  response->set_backend(result.backend);
  if (result.losses) TensorToProto(std::move(*result.losses), response->mutable_losses());
  if (result.gradient) TensorToProto(std::move(*result.gradient), response->mutable_gradient());
  response->mutable_timing()->set_queue_micros(queue_micros);
  response->mutable_timing()->set_compute_micros(result.compute_micros);
}

}  // namespace focal::server
