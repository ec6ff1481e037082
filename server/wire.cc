#include "server/wire.h"

#include <grpcpp/support/proto_buffer_reader.h>
#include <grpcpp/impl/codegen/proto_utils.h>
#include <grpcpp/support/proto_buffer_writer.h>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "focal/status_macros.h"
#include "server/limits.h"

namespace focal::server {

absl::Status ParseMessage(grpc::ByteBuffer& bytes, google::protobuf::MessageLite* message, absl::string_view what,
                          int64_t max_bytes) {
  const size_t length = bytes.Length();
  if (static_cast<int64_t>(length) > max_bytes) {
    bytes.Clear();
    return absl::ResourceExhaustedError(absl::StrCat(what, " is ", length, " bytes; this server takes at most ",
                                                     max_bytes, " (--max-message-bytes)"));
  }
  bool parsed = false;
  {
    grpc::ProtoBufferReader reader(&bytes);
    parsed = message->ParseFromZeroCopyStream(&reader);
  }
  bytes.Clear();  // the parsed message holds its own copy: the wire bytes are freed now
  if (parsed) return absl::OkStatus();
  return absl::InvalidArgumentError(absl::StrCat(what, " (", length, " bytes) is not a valid ",
                                                 message->GetTypeName(), ": the bytes do not parse"));
}

namespace {

/// SerializeMessage's and SerializeWithTensorSlices' refusal of an answer over the limit.
absl::Status CheckAnswerSize(size_t size, int64_t max_bytes) {
  if (static_cast<int64_t>(size) <= max_bytes) return absl::OkStatus();
  return absl::ResourceExhaustedError(absl::StrCat("the answer would be ", size, " bytes; this server sends at most ",
                                                   max_bytes, " (--max-message-bytes): split the batch"));
}

}  // namespace

absl::Status ParseDetachingTensors(grpc::ByteBuffer& bytes, google::protobuf::Message* message, absl::string_view what,
                                   int64_t max_bytes, wire::ReceivedTensors* received) {
  if (static_cast<int64_t>(bytes.Length()) <= max_bytes && wire::ParseFromSlices(bytes, message, received)) {
    bytes.Clear();  // the slices the views need are held by `received`
    return absl::OkStatus();
  }
  return ParseMessage(bytes, message, what, max_bytes);
}

absl::Status SerializeWithTensorSlices(google::protobuf::Message& message, int64_t max_bytes, grpc::ByteBuffer* bytes) {
  RETURN_IF_ERROR(CheckAnswerSize(message.ByteSizeLong(), max_bytes));
  *bytes = wire::SerializeToSlices(message);
  return absl::OkStatus();
}

absl::Status SerializeMessage(const google::protobuf::MessageLite& message, int64_t max_bytes, grpc::ByteBuffer* bytes) {
  RETURN_IF_ERROR(CheckAnswerSize(message.ByteSizeLong(), max_bytes));
  bool own_buffer = false;
  const grpc::Status status = grpc::SerializationTraits<google::protobuf::MessageLite>::Serialize(message, bytes, &own_buffer);
  if (!status.ok()) return absl::InternalError(absl::StrCat("serializing the answer failed: ", status.error_message()));
  return absl::OkStatus();
}

std::string Loggable(absl::string_view text) {
  std::string out;
  for (const char c : text) {
    if (out.size() >= kMaxLoggedRequestIdBytes) {
      absl::StrAppend(&out, "...(", text.size(), " bytes)");
      break;
    }
    const auto u = static_cast<unsigned char>(c);
    if (u >= 0x20 && u < 0x7f && c != '\\' && c != '\'') {
      out.push_back(c);
    } else {
      absl::StrAppendFormat(&out, "\\x%02x", u);
    }
  }
  return out;
}

absl::Status CapMessage(const absl::Status& status) {
  if (status.message().size() <= kMaxErrorMessageBytes) return status;
  constexpr absl::string_view kCut = " ...(cut)";
  return absl::Status(status.code(),
                      absl::StrCat(status.message().substr(0, kMaxErrorMessageBytes - kCut.size()), kCut));
}

bool BearerTokenMatches(absl::string_view header, absl::string_view token) {
  constexpr absl::string_view kScheme = "bearer ";
  if (header.size() < kScheme.size() || !absl::EqualsIgnoreCase(header.substr(0, kScheme.size()), kScheme)) {
    return false;
  }
  const absl::string_view sent = header.substr(kScheme.size());
  // Every byte of the configured token is compared whatever the client sent, so the time taken
  // tells nothing about how much of a guess was right.
  unsigned char diff = sent.size() == token.size() ? 0 : 1;
  for (size_t i = 0; i < token.size(); ++i) {
    const unsigned char s = i < sent.size() ? static_cast<unsigned char>(sent[i]) : 0;
    diff |= static_cast<unsigned char>(s ^ static_cast<unsigned char>(token[i]));
  }
  return diff == 0;
}

}  // namespace focal::server
