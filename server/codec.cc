#include "server/codec.h"

#include <cstring>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "focal/status_macros.h"

namespace focal::server {
namespace {

absl::Status Invalid(std::string message) { return absl::InvalidArgumentError(std::move(message)); }

constexpr absl::string_view kSharedMemoryOff =
    "this server takes no shared memory (start focalserve with --shared-memory, on the clients' host)";

/// A reference of the request resolved into `shm`'s registry.
absl::StatusOr<SharedMemorySpan> ResolveRef(const v1::SharedMemoryRef& ref, absl::string_view field,
                                            const SharedMemoryUse* shm) {
  if (shm == nullptr || shm->registry == nullptr) return Invalid(absl::StrCat(field, " is set, but ", kSharedMemoryOff));
  return shm->registry->Resolve(ref, field);
}

/// A view of a request tensor, at most kMaxRank dimensions: its bytes in place, in the request
/// (its own `data`, or what `detached` read apart for its field) or in a shared-memory region
/// (then held by `shm`).
absl::StatusOr<TensorView> RequestTensor(const v1::Tensor& t, int field_number, absl::string_view field,
                                         SharedMemoryUse* shm, const wire::DetachedTensorData* detached) {
  if (t.shape_size() > kMaxRank) {
    return Invalid(absl::StrCat(field, ".shape has ", t.shape_size(), " dimensions; at most ", kMaxRank));
  }
  ASSIGN_OR_RETURN(TensorView view, wire::TensorViewFromProto(t, field));
  if (detached != nullptr) {
    if (const std::optional<absl::string_view> data = detached->Find(field_number)) {
      view.data = data->data();
      view.size_bytes = data->size();
    }
  }
  if (!t.has_shared_memory()) return view;
  if (view.size_bytes != 0) return Invalid(absl::StrCat(field, ".data and ", field, ".shared_memory are both set"));
  ASSIGN_OR_RETURN(SharedMemorySpan span, ResolveRef(t.shared_memory(), absl::StrCat(field, ".shared_memory"), shm));
  view.data = span.data;
  view.size_bytes = static_cast<size_t>(span.byte_size);
  shm->inputs.push_back(std::move(span));
  return view;
}

/// Whether two spans share a byte of one shared-memory object (regions of one object, or of
/// two names linked to it, are separate mappings of the same bytes).
bool Overlap(const SharedMemorySpan& a, const SharedMemorySpan& b) {
  if (!a.region || !b.region || a.byte_size == 0 || b.byte_size == 0) return false;
  if (a.region->object() != b.region->object()) return false;
  const uint64_t a0 = a.region->info().offset() + static_cast<uint64_t>(a.data - a.region->data());
  const uint64_t b0 = b.region->info().offset() + static_cast<uint64_t>(b.data - b.region->data());
  return a0 < b0 + b.byte_size && b0 < a0 + a.byte_size;
}

/// Outputs that overlap an input or each other: the server would overwrite what it still reads.
absl::Status CheckNoOverlap(const SharedMemoryUse& shm) {
  for (const auto& [output, field] : {std::pair<const SharedMemorySpan*, const char*>{&shm.gradient, "gradient_output"},
                                      {&shm.losses, "losses_output"}}) {
    for (const SharedMemorySpan& input : shm.inputs) {
      if (Overlap(*output, input)) {
        return Invalid(absl::StrCat(field, " overlaps an input tensor's bytes; outputs need room of their own"));
      }
    }
  }
  if (Overlap(shm.gradient, shm.losses)) return Invalid("gradient_output and losses_output overlap; each needs room of its own");
  return absl::OkStatus();
}

absl::Status Broken(const SharedMemoryRegion& region) {
  return absl::FailedPreconditionError(absl::StrCat("shared-memory region '", region.info().name(),
                                                    "' shrank while the request used it (its object was truncated): "
                                                    "register it again"));
}

/// A result's bytes into its shared-memory place (unless the backend wrote them there:
/// `in_place`), and the response's tensor as the reference.
absl::Status ToSharedMemory(HostTensor&& tensor, bool in_place, const SharedMemorySpan& span,
                            const v1::SharedMemoryRef& ref, absl::string_view field, v1::Tensor* out) {
  if (!in_place) {
    if (tensor.bytes.size() != span.byte_size) {
      return Invalid(absl::StrCat(field, ".byte_size is ", span.byte_size, "; the result has ", tensor.bytes.size(),
                                  " bytes (", DTypeName(tensor.dtype), ")"));
    }
    std::memcpy(span.data, tensor.bytes.data(), tensor.bytes.size());
  }
  out->set_dtype(ToProto(tensor.dtype));
  out->mutable_shape()->Assign(tensor.shape.begin(), tensor.shape.end());
  *out->mutable_shared_memory() = ref;
  return absl::OkStatus();
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

absl::StatusOr<LossJob> DecodeComputeRequest(const v1::ComputeRequest& request, const RequestLimits& limits,
                                             SharedMemoryUse* shm, const wire::DetachedTensorData* detached) {
  LossJob job;
  using R = v1::ComputeRequest;
  auto tensor = [shm, detached](const v1::Tensor& t, int field_number, absl::string_view field) {
    return RequestTensor(t, field_number, field, shm, detached);
  };
  RETURN_IF_ERROR(wire::RejectUnknownFields(request, ""));
  if (!request.has_loss()) return Invalid("loss is missing; it names the variant and its parameters");
  ASSIGN_OR_RETURN(job.spec, wire::LossSpecFromProto(request.loss(), "loss"));

  if (!request.has_logits()) return Invalid("logits is missing");
  if (!request.has_targets()) return Invalid("targets is missing");
  ASSIGN_OR_RETURN(job.logits, tensor(request.logits(), R::kLogitsFieldNumber, "logits"));
  ASSIGN_OR_RETURN(job.targets, tensor(request.targets(), R::kTargetsFieldNumber, "targets"));
  RETURN_IF_ERROR(CheckRequestSize(job.logits, limits));
  if (request.targets().has_shared_memory()) {
    // Validated once, then read as indices (and C× smaller than the logits): a private copy,
    // sized by the shape only once the shape is bounded (a byte_size alone could be 2^40).
    ASSIGN_OR_RETURN(const int64_t elements, NumElements(job.targets.shape, "targets"));
    if (elements > limits.max_elements) {
      return absl::ResourceExhaustedError(absl::StrCat("targets has ", elements, " elements; this server takes at most ",
                                                       limits.max_elements, " per request (--max-elements)"));
    }
    const uint64_t bytes = static_cast<uint64_t>(elements) * DTypeSize(job.targets.dtype);
    if (job.targets.size_bytes != bytes) {
      return Invalid(absl::StrCat("targets.shared_memory.byte_size is ", job.targets.size_bytes, "; shape ",
                                  absl::StrJoin(job.targets.shape, ", "), " of ", DTypeName(job.targets.dtype),
                                  " needs ", bytes));
    }
    shm->private_targets.resize((bytes + 7) / 8);  // on the heap and 8-byte aligned, whatever moves
    std::memcpy(shm->private_targets.data(), job.targets.data, bytes);
    job.targets.data = shm->private_targets.data();
  }
  if (request.has_num_objects()) {
    ASSIGN_OR_RETURN(job.num_objects, tensor(request.num_objects(), R::kNumObjectsFieldNumber, "num_objects"));
  }
  if (request.has_weights()) {
    ASSIGN_OR_RETURN(job.weights, tensor(request.weights(), R::kWeightsFieldNumber, "weights"));
  }
  if (request.has_scores()) {
    ASSIGN_OR_RETURN(job.scores, tensor(request.scores(), R::kScoresFieldNumber, "scores"));
  }
  job.compute_gradient = request.compute_gradient();
  switch (request.grad_output_case()) {
    case v1::ComputeRequest::kGradOutputScalar: job.grad_output = request.grad_output_scalar(); break;
    case v1::ComputeRequest::kGradOutputTensor: {
      ASSIGN_OR_RETURN(job.grad_output, tensor(request.grad_output_tensor(), R::kGradOutputTensorFieldNumber, "grad_output"));
      break;
    }
    case v1::ComputeRequest::GRAD_OUTPUT_NOT_SET: break;
  }
  if (request.gradient_dtype() != v1::DATA_TYPE_UNSPECIFIED) {
    ASSIGN_OR_RETURN(job.output_dtype, wire::DTypeFromProto(request.gradient_dtype(), "gradient_dtype"));
  }
  job.allow_non_finite = request.allow_non_finite();
  if (request.has_gradient_output()) {
    if (!job.compute_gradient) return Invalid("gradient_output is set without compute_gradient");
    ASSIGN_OR_RETURN(shm->gradient, ResolveRef(request.gradient_output(), "gradient_output", shm));
    shm->gradient_ref = request.gradient_output();
    // Known before computing: the backend may then write the gradient there itself.
    ASSIGN_OR_RETURN(const int64_t elements, NumElements(job.logits.shape, "logits"));
    const uint64_t bytes = static_cast<uint64_t>(elements) * DTypeSize(job.output_dtype.value_or(job.logits.dtype));
    if (shm->gradient.byte_size != bytes) {
      return Invalid(absl::StrCat("gradient_output.byte_size is ", shm->gradient.byte_size, "; the gradient has ", bytes,
                                  " bytes (", DTypeName(job.output_dtype.value_or(job.logits.dtype)), ")"));
    }
    job.gradient_into = shm->gradient.data;
    job.gradient_into_bytes = static_cast<size_t>(bytes);
  }
  if (request.has_losses_output()) {
    if (job.spec.reduction != Reduction::kNone) return Invalid("losses_output is set, but only reduction NONE has losses");
    ASSIGN_OR_RETURN(shm->losses, ResolveRef(request.losses_output(), "losses_output", shm));
    shm->losses_ref = request.losses_output();
  }
  if (shm != nullptr) RETURN_IF_ERROR(CheckNoOverlap(*shm));
  return job;
}

absl::Status EncodeComputeResponse(LossResult&& result, absl::string_view request_id, int64_t queue_micros,
                                   v1::ComputeResponse* response, const SharedMemoryUse* shm) {
  response->set_request_id(std::string(request_id));
  response->set_loss(result.loss);
  response->set_count(result.count);
  response->set_backend(result.backend);
  // Each result into the answer, or into the shared memory the request named for it.
  auto put = [shm](HostTensor&& tensor, bool in_place, const SharedMemorySpan SharedMemoryUse::*span,
                   const v1::SharedMemoryRef SharedMemoryUse::*ref, const char* field, v1::Tensor* out) {
    if (shm == nullptr || !(shm->*span).region) {
      wire::TensorToProto(std::move(tensor), out);
      return absl::OkStatus();
    }
    return ToSharedMemory(std::move(tensor), in_place, shm->*span, shm->*ref, field, out);
  };
  if (result.losses) {
    RETURN_IF_ERROR(put(std::move(*result.losses), false, &SharedMemoryUse::losses, &SharedMemoryUse::losses_ref,
                        "losses_output", response->mutable_losses()));
  }
  if (result.gradient) {
    RETURN_IF_ERROR(put(std::move(*result.gradient), result.gradient_in_place, &SharedMemoryUse::gradient,
                        &SharedMemoryUse::gradient_ref, "gradient_output", response->mutable_gradient()));
  }
  response->mutable_timing()->set_queue_micros(queue_micros);
  response->mutable_timing()->set_compute_micros(result.compute_micros);
  return shm != nullptr ? SharedMemoryIntact(*shm) : absl::OkStatus();
}

absl::Status SharedMemoryIntact(const SharedMemoryUse& shm) {
  for (const SharedMemorySpan* span : {&shm.gradient, &shm.losses}) {
    if (span->region && span->region->broken()) return Broken(*span->region);
  }
  for (const SharedMemorySpan& span : shm.inputs) {
    if (span.region->broken()) return Broken(*span.region);
  }
  return absl::OkStatus();
}

}  // namespace focal::server
