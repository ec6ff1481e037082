#include "focal/tensor_wire.h"

#include <algorithm>
#include <climits>
#include <cstdint>
#include <memory>
#include <utility>

#include "focal/uninitialized_string.h"
#include "google/protobuf/io/coded_stream.h"
#include "google/protobuf/io/zero_copy_stream.h"
#include "google/protobuf/io/zero_copy_stream_impl_lite.h"
#include "google/protobuf/wire_format_lite.h"

namespace focal::wire {
namespace {

using google::protobuf::io::CodedInputStream;
using google::protobuf::io::CodedOutputStream;
using google::protobuf::io::StringOutputStream;
using WireFormat = google::protobuf::internal::WireFormatLite;

/// The pieces as one stream, each piece handed out where it lies (protobuf reads them in place).
class PiecesInputStream final : public google::protobuf::io::ZeroCopyInputStream {
 public:
  explicit PiecesInputStream(absl::Span<const absl::string_view> pieces) : pieces_(pieces) {}

  bool Next(const void** data, int* size) override {
    for (; index_ < pieces_.size(); ++index_, offset_ = 0) {
      const absl::string_view piece = pieces_[index_];
      if (offset_ == piece.size()) continue;
      const size_t n = std::min(piece.size() - offset_, static_cast<size_t>(INT_MAX));
      *data = piece.data() + offset_;
      *size = static_cast<int>(n);
      offset_ += n;
      position_ += static_cast<int64_t>(n);
      return true;
    }
    return false;
  }
  // Only into what the last Next gave (the stream's contract), so within the current piece.
  void BackUp(int count) override {
    offset_ -= static_cast<size_t>(count);
    position_ -= count;
  }
  bool Skip(int count) override {
    const void* data;
    int size;
    while (count > 0) {
      if (!Next(&data, &size)) return false;
      if (size > count) {
        BackUp(size - count);
        return true;
      }
      count -= size;
    }
    return true;
  }
  int64_t ByteCount() const override { return position_; }

 private:
  const absl::Span<const absl::string_view> pieces_;
  size_t index_ = 0, offset_ = 0;
  int64_t position_ = 0;
};

/// A 32-bit varint as protobuf's parser reads tags and lengths: at most 5 bytes, its value
/// within 32 bits. (CodedInputStream's own reads take up to 10 bytes and drop the high bits,
/// which would accept bytes that protobuf refuses, and read them differently.)
bool ReadStrictVarint32(CodedInputStream& in, uint32_t* value) {
  const int before = in.CurrentPosition();
  uint64_t v = 0;
  if (!in.ReadVarint64(&v) || in.CurrentPosition() - before > 5 || v > UINT32_MAX) return false;
  *value = static_cast<uint32_t>(v);
  return true;
}

/// The next field's tag. false at the end of the current limit (`*end`) or at a tag protobuf
/// would refuse (field number 0 included).
bool NextTag(CodedInputStream& in, uint32_t* tag, bool* end) {
  *end = in.BytesUntilLimit() == 0;
  if (*end) return false;
  return ReadStrictVarint32(in, tag) && WireFormat::GetTagFieldNumber(*tag) != 0;
}

/// A length read from the wire that fits what is left of the current limit.
bool ReadLength(CodedInputStream& in, int* length) {
  uint32_t n = 0;
  if (!ReadStrictVarint32(in, &n) || n > static_cast<uint32_t>(INT_MAX)) return false;
  const int left = in.BytesUntilLimit();
  if (left >= 0 && static_cast<int>(n) > left) return false;
  *length = static_cast<int>(n);
  return true;
}

/// Copies one field whose tag has been read from `in` to `out`, as protobuf would read it.
bool CopyField(uint32_t tag, CodedInputStream& in, CodedOutputStream& out) {
  switch (WireFormat::GetTagWireType(tag)) {
    case WireFormat::WIRETYPE_VARINT: {
      uint64_t value = 0;
      if (!in.ReadVarint64(&value)) return false;
      out.WriteTag(tag);
      out.WriteVarint64(value);
      return true;
    }
    case WireFormat::WIRETYPE_FIXED64: {
      uint64_t value = 0;
      if (!in.ReadLittleEndian64(&value)) return false;
      out.WriteTag(tag);
      out.WriteLittleEndian64(value);
      return true;
    }
    case WireFormat::WIRETYPE_FIXED32: {
      uint32_t value = 0;
      if (!in.ReadLittleEndian32(&value)) return false;
      out.WriteTag(tag);
      out.WriteLittleEndian32(value);
      return true;
    }
    case WireFormat::WIRETYPE_LENGTH_DELIMITED: {
      int length = 0;
      std::string bytes;
      if (!ReadLength(in, &length) || !in.ReadString(&bytes, length)) return false;
      out.WriteTag(tag);
      out.WriteVarint32(static_cast<uint32_t>(length));
      out.WriteString(bytes);
      return true;
    }
    default:  // groups, which focal.v1 has none of, and wire types no message has
      return false;
  }
}

bool IsLengthDelimited(uint32_t tag) { return WireFormat::GetTagWireType(tag) == WireFormat::WIRETYPE_LENGTH_DELIMITED; }

}  // namespace

std::optional<absl::string_view> DetachedTensorData::Find(int field_number) const {
  for (const Entry& entry : data_) {
    if (entry.field == field_number) return entry.data;
  }
  return std::nullopt;
}

void DetachedTensorData::Clear() {
  data_.clear();
  gathered_.clear();
  gathered_bytes_ = in_place_bytes_ = 0;
}

bool ParseDetachingTensorData(absl::Span<const absl::string_view> pieces, google::protobuf::Message* message,
                              DetachedTensorData* detached) {
  const std::vector<int> tensor_fields = TensorFieldNumbers(*message->GetDescriptor());
  message->Clear();
  detached->Clear();
  size_t total = 0;
  for (const absl::string_view piece : pieces) total += piece.size();
  if (total > static_cast<size_t>(INT_MAX)) return false;  // beyond what protobuf reads at all

  // One Tensor (within its limit): its fields but `data` copied to `head`, its data into `detached`.
  auto read_tensor = [detached](CodedInputStream& in, int field, std::string* head) {
    StringOutputStream head_stream(head);
    CodedOutputStream head_out(&head_stream);
    bool has_data = false;
    for (;;) {
      uint32_t tag = 0;
      bool end = false;
      if (!NextTag(in, &tag, &end)) return end;
      if (static_cast<int>(WireFormat::GetTagFieldNumber(tag)) != kTensorDataField || !IsLengthDelimited(tag)) {
        if (!CopyField(tag, in, head_out)) return false;
        continue;
      }
      int bytes = 0;
      if (has_data || !ReadLength(in, &bytes)) return false;
      has_data = true;
      const void* where = nullptr;
      int available = 0;
      if (bytes == 0) {
        detached->data_.push_back({field, absl::string_view("", 0), false});
      } else if (in.GetDirectBufferPointer(&where, &available) && available >= bytes &&
                 reinterpret_cast<uintptr_t>(where) % kInPlaceAlignment == 0) {
        detached->data_.push_back({field, absl::string_view(static_cast<const char*>(where), bytes), true});
        if (!in.Skip(bytes)) return false;
      } else {
        std::string& copy = detached->gathered_.emplace_back(UninitializedString(static_cast<size_t>(bytes)));
        if (!in.ReadRaw(copy.data(), bytes)) return false;
        detached->data_.push_back({field, copy, false});
      }
    }
  };

  // The message without the tensors' data: a few hundred bytes, which protobuf then parses.
  std::string rest;
  bool read = true;
  {
    PiecesInputStream stream(pieces);
    CodedInputStream in(&stream);
    in.PushLimit(static_cast<int>(total));
    StringOutputStream rest_stream(&rest);
    CodedOutputStream out(&rest_stream);
    std::vector<int> seen;
    while (read) {
      uint32_t tag = 0;
      bool end = false;
      if (!NextTag(in, &tag, &end)) {
        read = end;
        break;
      }
      const int field = static_cast<int>(WireFormat::GetTagFieldNumber(tag));
      const bool tensor = IsLengthDelimited(tag) &&
                          std::find(tensor_fields.begin(), tensor_fields.end(), field) != tensor_fields.end();
      if (!tensor) {
        read = CopyField(tag, in, out);
        continue;
      }
      int length = 0;
      if (std::find(seen.begin(), seen.end(), field) != seen.end() || !ReadLength(in, &length)) {
        read = false;
        break;
      }
      seen.push_back(field);
      const CodedInputStream::Limit limit = in.PushLimit(length);
      std::string head;  // the Tensor's other fields
      read = read_tensor(in, field, &head);
      in.PopLimit(limit);
      if (!read) break;
      out.WriteTag(tag);
      out.WriteVarint32(static_cast<uint32_t>(head.size()));
      out.WriteString(head);
    }
  }
  if (!read || !message->ParseFromString(rest)) {
    message->Clear();
    detached->Clear();
    return false;
  }
  // Data only for the tensors the message has: a later member of a tensor's oneof (a scalar
  // grad_output after a grad_output_tensor) replaced it, and its data went with it.
  const google::protobuf::Reflection& reflection = *message->GetReflection();
  const google::protobuf::Descriptor& descriptor = *message->GetDescriptor();
  auto& entries = detached->data_;
  entries.erase(std::remove_if(entries.begin(), entries.end(),
                               [&](const DetachedTensorData::Entry& e) {
                                 return !reflection.HasField(*message, descriptor.FindFieldByNumber(e.field));
                               }),
                entries.end());
  for (const DetachedTensorData::Entry& e : entries) {
    (e.in_place ? detached->in_place_bytes_ : detached->gathered_bytes_) += e.data.size();
  }
  return true;
}

std::vector<int> TensorFieldNumbers(const google::protobuf::Descriptor& message) {
  std::vector<int> fields;
  for (int i = 0; i < message.field_count(); ++i) {
    const google::protobuf::FieldDescriptor& field = *message.field(i);
    if (!field.is_repeated() && field.message_type() == v1::Tensor::descriptor()) fields.push_back(field.number());
  }
  return fields;
}

std::string TensorFieldHead(int field_number, const v1::Tensor& tensor, size_t data_bytes) {
  const size_t own = tensor.ByteSizeLong();
  const uint32_t data_tag = WireFormat::MakeTag(kTensorDataField, WireFormat::WIRETYPE_LENGTH_DELIMITED);
  const size_t field_bytes = own + CodedOutputStream::VarintSize32(data_tag) +
                             CodedOutputStream::VarintSize64(data_bytes) + data_bytes;
  std::string head;
  {
    StringOutputStream head_stream(&head);
    CodedOutputStream out(&head_stream);
    out.WriteTag(WireFormat::MakeTag(field_number, WireFormat::WIRETYPE_LENGTH_DELIMITED));
    out.WriteVarint64(field_bytes);
    tensor.SerializeWithCachedSizes(&out);
    out.WriteTag(data_tag);
    out.WriteVarint64(data_bytes);
  }
  return head;
}

bool ParseFromSlices(const grpc::ByteBuffer& bytes, google::protobuf::Message* message, ReceivedTensors* received) {
  received->data.Clear();
  received->slices.clear();
  // References to the received slices (a compressed message's are its decompressed ones).
  if (!bytes.Dump(&received->slices).ok()) return false;
  std::vector<absl::string_view> pieces;
  pieces.reserve(received->slices.size());
  for (const grpc::Slice& slice : received->slices) {
    pieces.emplace_back(reinterpret_cast<const char*>(slice.begin()), slice.size());
  }
  const bool parsed =
      ParseDetachingTensorData(pieces, message, &received->data);
  // Where no view points into them, the slices are let go now, as a whole parse lets them go.
  if (!parsed || received->data.in_place_bytes() == 0) received->slices.clear();
  return parsed;
}

grpc::ByteBuffer SerializeToSlices(google::protobuf::Message& message) {
  using google::protobuf::FieldDescriptor;
  // The fields taken out, in the order they are written after the rest: each a head (the bytes
  // up to its data) and the data, which gets a slice of its own when it is large.
  struct Sliced {
    std::string head;
    std::unique_ptr<std::string> data;
  };
  std::vector<Sliced> sliced;
  const google::protobuf::Reflection& reflection = *message.GetReflection();
  const google::protobuf::Descriptor& descriptor = *message.GetDescriptor();
  auto bytes_head = [](int number, size_t size) {
    std::string head;
    StringOutputStream head_stream(&head);
    CodedOutputStream out(&head_stream);
    out.WriteTag(WireFormat::MakeTag(number, WireFormat::WIRETYPE_LENGTH_DELIMITED));
    out.WriteVarint64(size);
    return head;
  };
  for (int i = 0; i < descriptor.field_count(); ++i) {
    const FieldDescriptor* field = descriptor.field(i);
    if (field->message_type() == v1::Tensor::descriptor() && !field->is_repeated()) {
      if (!reflection.HasField(message, field)) continue;
      auto* tensor = static_cast<v1::Tensor*>(reflection.MutableMessage(&message, field));
      if (tensor->data().size() < kMinSlicedTensorBytes) continue;
      auto data = std::make_unique<std::string>(std::move(*tensor->mutable_data()));  // moved: no copy
      tensor->clear_data();
      sliced.push_back({TensorFieldHead(field->number(), *tensor, data->size()), std::move(data)});
      reflection.ClearField(&message, field);
    } else if (field->type() == FieldDescriptor::TYPE_BYTES && field->is_repeated()) {
      // KServe's raw contents. Entries keep their order, so all of them move once one is large.
      const int n = reflection.FieldSize(message, field);
      bool large = false;
      for (int k = 0; k < n && !large; ++k) {
        large = reflection.GetRepeatedStringReference(message, field, k, nullptr).size() >= kMinSlicedTensorBytes;
      }
      if (!large) continue;
      // Deprecated, but the one reflection call whose strings can be moved from: its
      // replacement, MutableRepeatedFieldRef, hands out copies.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wdeprecated-declarations"
      auto* entries = reflection.MutableRepeatedPtrField<std::string>(&message, field);
#pragma GCC diagnostic pop
      for (std::string& entry : *entries) {
        auto data = std::make_unique<std::string>(std::move(entry));
        sliced.push_back({bytes_head(field->number(), data->size()), std::move(data)});
      }
      reflection.ClearField(&message, field);
    }
  }
  std::vector<grpc::Slice> slices;
  slices.reserve(2 * sliced.size() + 1);  // no growth between a release() and its slice's owning it
  std::string rest = message.SerializeAsString();
  for (Sliced& s : sliced) {
    // Each head goes with the bytes before it; large data into a slice that frees it when gRPC
    // is done, small data after its head.
    rest += s.head;
    if (s.data->size() < kMinSlicedTensorBytes) {
      rest += *s.data;
      continue;
    }
    slices.emplace_back(rest);
    rest.clear();
    std::string* data = s.data.release();
    slices.emplace_back(data->data(), data->size(), [](void* owned) { delete static_cast<std::string*>(owned); }, data);
  }
  if (!rest.empty()) slices.emplace_back(rest);
  return grpc::ByteBuffer(slices.data(), slices.size());
}

}  // namespace focal::wire
