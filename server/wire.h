// Bytes ↔ protobuf messages for the service, which takes its requests and gives its answers as
// raw gRPC byte buffers. gRPC's own deserializer turns a message that fails to parse into a
// silent end of stream (streams lose the batches after it and finish OK) or a bare
// UNIMPLEMENTED (unary); here every failure is INVALID_ARGUMENT saying which message failed.
// Everything a client sent that ends up in a log line or an error message passes through here.
#pragma once

#include <cstdint>
#include <string>

#include <grpcpp/support/byte_buffer.h>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "focal/tensor_wire.h"
#include "google/protobuf/message.h"
#include "google/protobuf/message_lite.h"

namespace focal::server {

/// Parses `bytes` into `message` and releases the bytes. `what` names the message for the error
/// ("message 3 of the stream"); more than `max_bytes` is RESOURCE_EXHAUSTED. (The size limit is
/// checked here rather than by gRPC, which receives an oversized message whole before it
/// refuses it anyway, and whose refusal the service would neither see, log nor count.)
absl::Status ParseMessage(grpc::ByteBuffer& bytes, google::protobuf::MessageLite* message, absl::string_view what,
                          int64_t max_bytes);

/// ParseMessage without protobuf's copy of the tensors (focal/tensor_wire.h): the data of
/// `message`'s top-level focal.v1.Tensor fields stays in `bytes`' slices, which `received` then
/// holds and its `data` points into, or is gathered once where it spans slices. The errors are
/// ParseMessage's, word for word (a message the reader does not take apart goes to it whole).
absl::Status ParseDetachingTensors(grpc::ByteBuffer& bytes, google::protobuf::Message* message, absl::string_view what,
                                   int64_t max_bytes, wire::ReceivedTensors* received);

/// SerializeMessage without protobuf's copy of the tensors (wire::SerializeToSlices): their data
/// is moved out of `message` into slices that own it.
absl::Status SerializeWithTensorSlices(google::protobuf::Message& message, int64_t max_bytes, grpc::ByteBuffer* bytes);

/// Serializes `message` into `bytes`, or RESOURCE_EXHAUSTED when it is larger than `max_bytes`
/// (gRPC would fail the call with a status the server never sees, and metrics would say OK).
absl::Status SerializeMessage(const google::protobuf::MessageLite& message, int64_t max_bytes, grpc::ByteBuffer* bytes);

/// A client-chosen string as it may appear in a log line or an error message: printable ASCII
/// with everything else escaped (no forged log lines), at most kMaxLoggedRequestIdBytes.
std::string Loggable(absl::string_view text);

/// `status` with its message cut to kMaxErrorMessageBytes, so that it fits the client's metadata.
absl::Status CapMessage(const absl::Status& status);

/// Whether an `authorization` header value carries `token` as a bearer token: the scheme is
/// matched case-insensitively (RFC 6750), the token in time independent of where it differs.
bool BearerTokenMatches(absl::string_view header, absl::string_view token);

}  // namespace focal::server
