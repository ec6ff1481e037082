// Tensor bytes on the wire without protobuf's copies. Protobuf copies a `bytes` field out of the
// received message into a string of its own, and copies it again into the buffer it serializes
// into; for the tensors of a request or an answer (tens of MiB) those copies cost about as much
// as the loss itself. Here a message's top-level focal.v1.Tensor fields are read with their
// `data` apart from the message — in place in the transport's buffers when one buffer holds it
// whole, else gathered once — and a Tensor field is written as a head of a few bytes followed by
// the data, which the transport can then send from where it lies. The core works on pieces of
// bytes; the last two functions apply it to gRPC's byte buffers, for the server (server/wire.h
// adds its limits and errors) and the C++ client.
#pragma once

#include <cstddef>
#include <deque>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include <grpcpp/support/byte_buffer.h>
#include <grpcpp/support/slice.h>

#include "absl/strings/string_view.h"
#include "absl/types/span.h"
#include "focal/v1/focal_loss.pb.h"
#include "google/protobuf/descriptor.h"
#include "google/protobuf/message.h"
#include "google/protobuf/message_lite.h"

namespace focal::wire {

/// The wire field number of focal.v1.Tensor's `data`.
inline constexpr int kTensorDataField = v1::Tensor::kDataFieldNumber;

/// Data is referenced in place only at addresses aligned for every dtype's elements (int64 and
/// float64 are the widest), so that the kernels' typed reads stay aligned; else it is gathered
/// into a string of its own, which malloc aligns.
inline constexpr size_t kInPlaceAlignment = 8;

/// The `data` of a message's top-level Tensor fields, read apart from the message by
/// ParseDetachingTensorData.
class DetachedTensorData {
 public:
  DetachedTensorData() = default;
  // Movable, not copyable: views may point into gathered_, which a move keeps where it is.
  DetachedTensorData(DetachedTensorData&&) = default;
  DetachedTensorData& operator=(DetachedTensorData&&) = default;
  DetachedTensorData(const DetachedTensorData&) = delete;
  DetachedTensorData& operator=(const DetachedTensorData&) = delete;

  /// The data of the Tensor in top-level field `field_number`; nullopt when the bytes gave it
  /// none (the message's own `data` then says what it is: empty, or the whole-parse fallback's).
  std::optional<absl::string_view> Find(int field_number) const;
  /// How many bytes were copied, because no one piece held them whole (tests and benchmarks).
  size_t gathered_bytes() const { return gathered_bytes_; }
  /// How many bytes are referenced in the pieces (0: the pieces may be let go).
  size_t in_place_bytes() const { return in_place_bytes_; }
  void Clear();

 private:
  friend bool ParseDetachingTensorData(absl::Span<const absl::string_view>, google::protobuf::Message*,
                                       DetachedTensorData*);
  struct Entry {
    int field;
    absl::string_view data;
    bool in_place;  ///< pointing into the pieces, not into gathered_
  };
  std::vector<Entry> data_;
  std::deque<std::string> gathered_;  ///< a deque: growing it moves no string (short ones live inline)
  size_t gathered_bytes_ = 0, in_place_bytes_ = 0;
};

/// Parses a message given as the pieces its bytes lie in (in order) into `message`, its
/// top-level focal.v1.Tensor fields (TensorFieldNumbers) read with those tensors'
/// `data` left out of it and given by `detached` instead: pointing into `pieces`, which must
/// then outlive `detached`, where one piece holds a tensor's data whole at an aligned address
/// (kInPlaceAlignment); copied once otherwise.
///
/// false, with `message` and `detached` cleared, when the bytes do not parse, or take a form
/// that this reader leaves to protobuf: a tensor field or its data given twice (protobuf merges
/// them), a group. The caller then parses them whole as before, which gives protobuf's answer.
/// A tensor that a later member of its oneof replaced (protobuf's last one wins) has no data in
/// `detached`, as it has no field in `message`.
bool ParseDetachingTensorData(absl::Span<const absl::string_view> pieces, google::protobuf::Message* message,
                              DetachedTensorData* detached);

/// The numbers of `message`'s singular fields of type focal.v1.Tensor, in declaration order.
std::vector<int> TensorFieldNumbers(const google::protobuf::Descriptor& message);

/// The bytes before a Tensor's data when it is written as top-level field `field_number` of a
/// message: the field's tag and length, `tensor` itself (its own `data` empty) and the data's
/// tag and length. The `data_bytes` bytes of the data follow to complete the field, which may
/// come before or after the message's other fields: protobuf reads fields in any order.
std::string TensorFieldHead(int field_number, const v1::Tensor& tensor, size_t data_bytes);

/// A message's bytes as gRPC received them, held while the views of its tensors' data point
/// into them.
struct ReceivedTensors {
  std::vector<grpc::Slice> slices;  ///< references to gRPC's buffers, not copies
  DetachedTensorData data;
};

/// ParseDetachingTensorData over `bytes`' slices, for `message`'s top-level focal.v1.Tensor
/// fields: `received` holds the slices while a view points into them (none otherwise). false
/// when the bytes are left to protobuf (see above): parse them whole then.
bool ParseFromSlices(const grpc::ByteBuffer& bytes, google::protobuf::Message* message, ReceivedTensors* received);

/// Tensor data smaller than this is serialized with the rest of the message: a slice of its own
/// costs an allocation and a reference count, which a copy of less than a page does not repay.
inline constexpr size_t kMinSlicedTensorBytes = 4096;

/// `message` as gRPC bytes without a copy of its tensors: the data of its top-level
/// focal.v1.Tensor fields, and the entries of its top-level repeated `bytes` fields (KServe's
/// raw contents), at least kMinSlicedTensorBytes each, is moved out of `message` into slices
/// that own it, which gRPC sends from where it lies and frees once sent; the rest is serialized
/// as usual. `message` is left without those fields. The bytes are message.ByteSizeLong() long.
grpc::ByteBuffer SerializeToSlices(google::protobuf::Message& message);

}  // namespace focal::wire
