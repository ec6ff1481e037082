// A request's protobuf <-> LossJob/LossResult as pure functions: no gRPC in here, and no protobuf
// type below this layer. The LossSpec, tensor and enum conversions are focal/wire.h's (shared
// with the clients); what is here is the request as a whole and this server's limits. Tensor
// bytes are read in place from the request and moved into the response.
#pragma once

#include <cstdint>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "focal/job.h"
#include "focal/v1/focal_loss.pb.h"
#include "focal/wire.h"
#include "server/limits.h"

namespace focal::server {

/// Decodes a request into a LossJob whose tensors are views into `request`'s bytes, which must
/// outlive the job. Wire-level problems (missing tensors, unknown dtype, variant or reduction,
/// a field this server's proto does not define) are INVALID_ARGUMENT naming the field; a tensor of more than kMaxRank dimensions is
/// INVALID_ARGUMENT; more logits elements or classes than `limits` allow is RESOURCE_EXHAUSTED,
/// for every variant, before anything is sized from the shape. Shapes,
/// byte lengths, values and parameters are checked by ValidateJob, shared by every backend.
/// RESOURCE_EXHAUSTED when `logits` has more elements, or more classes (dim 1), than `limits`
/// allow: every protocol's decoder checks it before anything is sized from the shape.
absl::Status CheckRequestSize(const TensorView& logits, const RequestLimits& limits);

absl::StatusOr<LossJob> DecodeComputeRequest(const v1::ComputeRequest& request, const RequestLimits& limits);

/// Fills `response` from a result, moving its tensors' bytes in (no copy); `queue_micros` is
/// the time the request waited for a slot.
void EncodeComputeResponse(LossResult&& result, absl::string_view request_id,
                           int64_t queue_micros, v1::ComputeResponse* response);

/// Wire dtype of a core dtype: the wire library's, named here for the server's other encoders.
using wire::ToProto;

}  // namespace focal::server
