// A request's protobuf <-> LossJob/LossResult as pure functions: no gRPC in here, and no protobuf
// type below this layer. The LossSpec, tensor and enum conversions are focal/wire.h's (shared
// with the clients); what is here is the request as a whole and this server's limits. Tensor
// bytes are read in place from the request and moved into the response.
#pragma once

#include <cstdint>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "focal/job.h"
#include "focal/tensor_wire.h"
#include "focal/v1/focal_loss.pb.h"
#include "focal/wire.h"
#include "server/limits.h"
#include "server/shared_memory.h"

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

/// A request's use of shared memory (server/shared_memory.h): the registry that resolves its
/// references (none: a reference is refused), the regions its tensors are read from, held
/// mapped until the answer is made, and where its results go.
struct SharedMemoryUse {
  const SharedMemoryRegistry* registry = nullptr;
  std::vector<SharedMemorySpan> inputs;
  SharedMemorySpan gradient, losses;  ///< region null: into the response
  v1::SharedMemoryRef gradient_ref, losses_ref;
  /// The targets, copied out of shared memory: class indices are validated once and then used
  /// as indices, so they must not change under the server (the client could, any time).
  std::vector<uint64_t> private_targets;
};

/// With `shm`, tensors may be shared-memory references and results may go to shared memory;
/// the views then point into the mapped regions, which `shm` holds. With `detached`, a tensor
/// whose data it holds (focal/tensor_wire.h: read apart from `request`) is viewed there, and it
/// must outlive the job too.
absl::StatusOr<LossJob> DecodeComputeRequest(const v1::ComputeRequest& request, const RequestLimits& limits,
                                             SharedMemoryUse* shm = nullptr,
                                             const wire::DetachedTensorData* detached = nullptr);

/// Fills `response` from a result, moving its tensors' bytes in (no copy); `queue_micros` is
/// the time the request waited for a slot. Results that `shm` sends to shared memory are
/// copied there (INVALID_ARGUMENT when a reference's byte_size is not the result's), and a
/// region the client shrank while the request used it is FAILED_PRECONDITION.
absl::Status EncodeComputeResponse(LossResult&& result, absl::string_view request_id, int64_t queue_micros,
                                   v1::ComputeResponse* response, const SharedMemoryUse* shm = nullptr);

/// FAILED_PRECONDITION when a region `shm` used shrank under its mapping (its object was
/// truncated): what was read there was zeros, what was written was lost.
absl::Status SharedMemoryIntact(const SharedMemoryUse& shm);

/// Wire dtype of a core dtype: the wire library's, named here for the server's other encoders.
using wire::ToProto;

}  // namespace focal::server
