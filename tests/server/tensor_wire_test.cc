// Tensors on the wire without protobuf's copies (focal/tensor_wire.h, server/wire.h): a message
// read with its tensors' data apart is the message protobuf reads, however its bytes are cut
// into pieces; data that one aligned piece holds is referenced there and the rest is copied
// once; forms left to protobuf say so; an answer sent as slices parses back to the same message
// and carries the result's own buffer, not a copy.
#include <gtest/gtest.h>

#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "focal/tensor_wire.h"
#include "focal/v1/focal_loss.pb.h"
#include "inference/grpc_predict_v2.pb.h"
#include "google/protobuf/util/message_differencer.h"
#include "server/wire.h"

namespace focal::server {
namespace {

using google::protobuf::util::MessageDifferencer;

/// `n` bytes of a fixed pattern (no two tensors alike, so a swap between fields shows).
std::string Pattern(size_t n, uint32_t seed) {
  std::mt19937 gen(seed);
  std::string out(n, '\0');
  for (char& c : out) c = static_cast<char>(gen());
  return out;
}

/// A request with every kind of field: tensors with data, one without, a oneof tensor, an
/// unknown field, and the small fields around them.
v1::ComputeRequest FullRequest(size_t logits_bytes) {
  v1::ComputeRequest r;
  r.set_request_id("r-1");
  r.mutable_loss()->mutable_sigmoid_focal()->set_gamma(2.0);
  r.mutable_logits()->set_dtype(v1::FLOAT32);
  r.mutable_logits()->add_shape(static_cast<int64_t>(logits_bytes / 4));
  r.mutable_logits()->set_data(Pattern(logits_bytes, 1));
  r.mutable_targets()->set_dtype(v1::INT64);
  r.mutable_targets()->add_shape(3);
  r.mutable_targets()->set_data(Pattern(24, 2));
  r.mutable_weights()->set_dtype(v1::FLOAT32);  // a tensor without data
  r.mutable_grad_output_tensor()->set_dtype(v1::FLOAT32);
  r.mutable_grad_output_tensor()->set_data(Pattern(12, 3));
  r.set_compute_gradient(true);
  r.GetReflection()->MutableUnknownFields(&r)->AddVarint(999, 7);
  return r;
}

/// `message` as parsed from `pieces` with its tensors apart, the data put back in place.
bool ParseAndReattach(const std::vector<absl::string_view>& pieces, v1::ComputeRequest* message,
                      wire::DetachedTensorData* detached) {
  if (!wire::ParseDetachingTensorData(pieces, message,
                                      detached)) {
    return false;
  }
  const google::protobuf::Reflection& r = *message->GetReflection();
  for (const int number : wire::TensorFieldNumbers(*v1::ComputeRequest::descriptor())) {
    if (const auto data = detached->Find(number)) {
      const google::protobuf::FieldDescriptor* f = message->GetDescriptor()->FindFieldByNumber(number);
      EXPECT_TRUE(r.HasField(*message, f)) << f->name();
      EXPECT_TRUE(static_cast<const v1::Tensor&>(r.GetMessage(*message, f)).data().empty()) << f->name();
      static_cast<v1::Tensor*>(r.MutableMessage(message, f))->set_data(std::string(*data));
    }
  }
  return true;
}

/// Bytes at an address with the given remainder modulo 64, inside `storage`.
absl::string_view PlaceAt(const std::string& bytes, size_t remainder, std::string* storage) {
  storage->assign(bytes.size() + 128, '\0');
  const auto base = reinterpret_cast<uintptr_t>(storage->data());
  const size_t shift = (remainder + 64 - base % 64) % 64;
  std::memcpy(storage->data() + shift, bytes.data(), bytes.size());
  return absl::string_view(storage->data() + shift, bytes.size());
}

/// Whether one of `bytes`' slices starts at `buffer`: the buffer is sent where it lies, not copied.
bool SliceStartsAt(const grpc::ByteBuffer& bytes, const char* buffer) {
  std::vector<grpc::Slice> slices;
  EXPECT_TRUE(bytes.Dump(&slices).ok());
  for (const grpc::Slice& s : slices) {
    if (reinterpret_cast<const char*>(s.begin()) == buffer) return true;
  }
  return false;
}

TEST(TensorWire, TensorFieldsAreFoundFromTheDescriptor) {
  using R = v1::ComputeRequest;
  EXPECT_EQ(wire::TensorFieldNumbers(*R::descriptor()),
            (std::vector<int>{R::kLogitsFieldNumber, R::kTargetsFieldNumber, R::kNumObjectsFieldNumber,
                              R::kGradOutputTensorFieldNumber, R::kWeightsFieldNumber, R::kScoresFieldNumber}));
  using A = v1::ComputeResponse;
  EXPECT_EQ(wire::TensorFieldNumbers(*A::descriptor()),
            (std::vector<int>{A::kLossesFieldNumber, A::kGradientFieldNumber}));
}

TEST(TensorWire, EveryCutIntoTwoOrThreePiecesParsesAsProtobufDoes) {
  const v1::ComputeRequest sent = FullRequest(64);
  const std::string bytes = sent.SerializeAsString();
  v1::ComputeRequest expected;
  ASSERT_TRUE(expected.ParseFromString(bytes));
  for (size_t a = 0; a <= bytes.size(); ++a) {
    for (size_t b = a; b <= bytes.size(); b += 7) {
      SCOPED_TRACE(testing::Message() << "cut at " << a << " and " << b << " of " << bytes.size());
      const absl::string_view all(bytes);
      const std::vector<absl::string_view> pieces{all.substr(0, a), all.substr(a, b - a), all.substr(b)};
      v1::ComputeRequest got;
      wire::DetachedTensorData detached;
      ASSERT_TRUE(ParseAndReattach(pieces, &got, &detached));
      ASSERT_TRUE(MessageDifferencer::Equals(got, expected)) << got.DebugString();
      EXPECT_EQ(got.GetReflection()->GetUnknownFields(got).field_count(), 1);  // still refused by the codec
    }
  }
}

TEST(TensorWire, DataOneAlignedPieceHoldsIsReferencedInPlace) {
  const v1::ComputeRequest sent = FullRequest(4096);
  const std::string bytes = sent.SerializeAsString();
  const size_t logits_at = bytes.find(sent.logits().data());
  ASSERT_NE(logits_at, std::string::npos);
  for (const size_t remainder : {size_t{0}, size_t{8}, size_t{1}, size_t{4}}) {
    SCOPED_TRACE(testing::Message() << "logits data at address = " << remainder << " mod 64");
    std::string storage;
    // The whole message at an address that puts the logits' data at the wanted remainder.
    const absl::string_view piece = PlaceAt(bytes, (remainder + 64 - logits_at % 64) % 64, &storage);
    v1::ComputeRequest got;
    wire::DetachedTensorData detached;
    ASSERT_TRUE(wire::ParseDetachingTensorData({piece}, &got, &detached));
    const auto logits = detached.Find(v1::ComputeRequest::kLogitsFieldNumber);
    ASSERT_TRUE(logits.has_value());
    EXPECT_EQ(*logits, sent.logits().data());
    const bool aligned = remainder % wire::kInPlaceAlignment == 0;
    EXPECT_EQ(logits->data() == piece.data() + logits_at, aligned);
    // The small tensors: in place where they happen to be aligned, else copied; never lost.
    EXPECT_EQ(detached.in_place_bytes() + detached.gathered_bytes(), 4096u + 24u + 12u);
    EXPECT_EQ(detached.gathered_bytes() >= 4096u, !aligned);
    EXPECT_EQ(*detached.Find(v1::ComputeRequest::kTargetsFieldNumber), sent.targets().data());
    EXPECT_FALSE(detached.Find(v1::ComputeRequest::kWeightsFieldNumber).has_value());  // sent without data
  }
}

TEST(TensorWire, DataAcrossPiecesIsCopiedOnce) {
  const v1::ComputeRequest sent = FullRequest(100000);
  const std::string bytes = sent.SerializeAsString();
  std::vector<absl::string_view> pieces;  // 16 KiB pieces, as HTTP/2 frames cut a message
  for (size_t at = 0; at < bytes.size(); at += 16384) pieces.push_back(absl::string_view(bytes).substr(at, 16384));
  v1::ComputeRequest got;
  wire::DetachedTensorData detached;
  ASSERT_TRUE(ParseAndReattach(pieces, &got, &detached));
  EXPECT_TRUE(MessageDifferencer::Equals(got, sent));
  EXPECT_GE(detached.gathered_bytes(), 100000u);
  EXPECT_LE(detached.gathered_bytes(), 100000u + 24u + 12u);
}

TEST(TensorWire, FormsLeftToProtobufAreSaidSo) {
  const auto parse = [](const std::string& bytes) {
    v1::ComputeRequest got;
    wire::DetachedTensorData detached;
    const bool ok = wire::ParseDetachingTensorData({absl::string_view(bytes)}, &got,
                                                   &detached);
    if (!ok) {
      EXPECT_EQ(got.ByteSizeLong(), 0u);
      EXPECT_FALSE(detached.Find(v1::ComputeRequest::kLogitsFieldNumber).has_value());
    }
    return ok;
  };
  const std::string whole = FullRequest(64).SerializeAsString();
  ASSERT_TRUE(parse(whole));
  // A tensor field twice: protobuf merges the two messages.
  v1::ComputeRequest second;
  second.mutable_logits()->set_data("abcd");
  EXPECT_FALSE(parse(whole + second.SerializeAsString()));
  // A tensor's data twice inside one Tensor: the last wins in protobuf.
  v1::Tensor twice;
  twice.set_data("abcd");
  const std::string inner = twice.SerializeAsString() + twice.SerializeAsString();
  EXPECT_FALSE(parse(std::string("\x1a") + static_cast<char>(inner.size()) + inner));
  // Truncated bytes, a zero tag, a group, and a length beyond the end.
  EXPECT_FALSE(parse(whole.substr(0, whole.size() - 1)));
  EXPECT_FALSE(parse(whole + std::string(1, '\0')));
  EXPECT_FALSE(parse(std::string("\x1b\x1c", 2)));  // field 3 as a group
  EXPECT_FALSE(parse(std::string("\x1a\x05\x1a\x7f", 4)));
  // Tags and lengths as protobuf reads them: at most 5 bytes, within 32 bits (a looser reader
  // took this tag of 6 bytes, which the fuzzer found, for a field protobuf would not read).
  const std::string fixed64(8, '\x01');
  EXPECT_FALSE(parse(whole + "\x99\x99\x99\x99\x99\x3f" + fixed64));
  EXPECT_FALSE(parse(whole + "\x99\x99\x99\x99\x7f" + fixed64));  // 5 bytes, over 32 bits
  EXPECT_FALSE(parse(whole + std::string("\x1a\x80\x80\x80\x80\x80\x00", 7)));  // a 6-byte length
  EXPECT_FALSE(parse(whole + std::string("\x01", 1) + fixed64));  // field number 0
  EXPECT_TRUE(parse(whole + std::string("\xb9\x80\x80\x80\x00", 5) + fixed64));  // 5 bytes, field 7: fine
}

TEST(TensorWire, ATensorALaterMemberOfItsOneofReplacedHasNoData) {
  // grad_output_tensor with data, then grad_output_scalar: protobuf's last member wins.
  v1::ComputeRequest tensor_first, scalar_last;
  tensor_first.mutable_grad_output_tensor()->set_data(Pattern(64, 8));
  scalar_last.set_grad_output_scalar(0.5);
  const std::string bytes = tensor_first.SerializeAsString() + scalar_last.SerializeAsString();
  std::string storage;  // the data aligned, so that it would be referenced in place
  const size_t data_at = bytes.find(tensor_first.grad_output_tensor().data());
  const absl::string_view placed = PlaceAt(bytes, (64 - data_at % 64) % 64, &storage);
  v1::ComputeRequest got;
  wire::DetachedTensorData detached;
  ASSERT_TRUE(wire::ParseDetachingTensorData({placed}, &got, &detached));
  EXPECT_EQ(got.grad_output_case(), v1::ComputeRequest::kGradOutputScalar);
  EXPECT_FALSE(detached.Find(v1::ComputeRequest::kGradOutputTensorFieldNumber).has_value());
  EXPECT_EQ(detached.in_place_bytes() + detached.gathered_bytes(), 0u);  // nothing held for it
  // The other order: the tensor wins, with its data.
  const std::string reversed = scalar_last.SerializeAsString() + tensor_first.SerializeAsString();
  ASSERT_TRUE(ParseAndReattach({absl::string_view(reversed)}, &got, &detached));
  EXPECT_EQ(got.grad_output_tensor().data(), tensor_first.grad_output_tensor().data());
}

TEST(TensorWire, EveryOneByteChangeIsRefusedOrReadAsProtobufReadsIt) {
  const std::string whole = FullRequest(24).SerializeAsString();
  size_t refused = 0, read = 0;
  for (size_t at = 0; at < whole.size(); ++at) {
    for (int value = 0; value < 256; value += 3) {
      std::string changed = whole;
      changed[at] = static_cast<char>(value);
      v1::ComputeRequest reference, got;
      const bool protobuf = reference.ParseFromString(changed);
      wire::DetachedTensorData detached;
      if (!ParseAndReattach({absl::string_view(changed)}, &got, &detached)) {
        ++refused;
        continue;
      }
      ++read;
      ASSERT_TRUE(protobuf) << "byte " << at << " = " << value << ": read what protobuf refuses";
      ASSERT_EQ(got.SerializeAsString(), reference.SerializeAsString()) << "byte " << at << " = " << value;
    }
  }
  EXPECT_GT(read, refused);  // most changes still parse: the comparison above ran
}

TEST(TensorWire, ParseDetachingTensorsGivesParseMessagesErrors) {
  for (const std::string& bytes : {std::string("\x1a\x05\x1a\x7f", 4), std::string("\xff\xff", 2)}) {
    grpc::Slice slice(bytes);
    grpc::ByteBuffer a(&slice, 1), b(&slice, 1);
    v1::ComputeRequest m1, m2;
    wire::ReceivedTensors received;
    const absl::Status detached = ParseDetachingTensors(a, &m1, "message 2 of the stream", 1 << 20, &received);
    const absl::Status whole = ParseMessage(b, &m2, "message 2 of the stream", 1 << 20);
    EXPECT_EQ(detached, whole);
    EXPECT_EQ(detached.code(), absl::StatusCode::kInvalidArgument);
    EXPECT_TRUE(received.slices.empty());
  }
  const std::string big = FullRequest(4096).SerializeAsString();
  grpc::Slice slice(big);
  grpc::ByteBuffer a(&slice, 1), b(&slice, 1);
  v1::ComputeRequest m1, m2;
  wire::ReceivedTensors received;
  EXPECT_EQ(ParseDetachingTensors(a, &m1, "the request", 100, &received), ParseMessage(b, &m2, "the request", 100));
}

TEST(TensorWire, AReceivedRequestIsViewedInItsSlicesAndHeldOrCopiedAndLetGo) {
  const v1::ComputeRequest sent = FullRequest(1 << 16);
  const std::string bytes = sent.SerializeAsString();
  const size_t logits_at = bytes.find(sent.logits().data());
  for (const bool aligned : {true, false}) {
    SCOPED_TRACE(aligned ? "logits data aligned" : "logits data misaligned");
    std::string storage;
    const absl::string_view placed = PlaceAt(bytes, (64 + (aligned ? 0 : 2) - logits_at % 64) % 64, &storage);
    grpc::Slice slice(placed.data(), placed.size(), grpc::Slice::STATIC_SLICE);  // one slice, as a small message arrives
    grpc::ByteBuffer buffer(&slice, 1);
    v1::ComputeRequest got;
    wire::ReceivedTensors received;
    ASSERT_TRUE(ParseDetachingTensors(buffer, &got, "the request", 1 << 20, &received).ok());
    EXPECT_EQ(buffer.Length(), 0u);  // given up by the buffer
    const auto logits = received.data.Find(v1::ComputeRequest::kLogitsFieldNumber);
    ASSERT_TRUE(logits.has_value());
    EXPECT_EQ(*logits, sent.logits().data());
    EXPECT_EQ(logits->data() == placed.data() + logits_at, aligned);
    // Held while a view points into them; let go at once, as ParseMessage does, otherwise.
    EXPECT_EQ(received.slices.size(), received.data.in_place_bytes() > 0 ? 1u : 0u);
    EXPECT_EQ(received.slices.empty(), !aligned && received.data.in_place_bytes() == 0);
  }
}

TEST(TensorWire, AnAnswerSentAsSlicesParsesBackAndCarriesItsOwnBuffer) {
  for (const size_t gradient_bytes : {size_t{0}, size_t{16}, wire::kMinSlicedTensorBytes - 1, wire::kMinSlicedTensorBytes, size_t{1} << 20}) {
    SCOPED_TRACE(testing::Message() << gradient_bytes << " gradient bytes");
    v1::ComputeResponse response;
    response.set_request_id("r-7");
    response.set_loss(0.25);
    response.mutable_gradient()->set_dtype(v1::FLOAT32);
    response.mutable_gradient()->add_shape(static_cast<int64_t>(gradient_bytes / 4));
    response.mutable_gradient()->set_data(Pattern(gradient_bytes, 4));
    response.mutable_losses()->set_dtype(v1::FLOAT32);
    response.mutable_losses()->set_data(Pattern(wire::kMinSlicedTensorBytes * 2, 5));
    response.set_count(9);
    response.mutable_timing()->set_compute_micros(11);
    const v1::ComputeResponse expected = response;
    const char* const gradient_buffer = response.gradient().data().data();
    grpc::ByteBuffer bytes;
    ASSERT_TRUE(SerializeWithTensorSlices(response, 1 << 30, &bytes).ok());
    EXPECT_EQ(bytes.Length(), expected.ByteSizeLong());
    const bool carried = SliceStartsAt(bytes, gradient_buffer);
    EXPECT_EQ(carried, gradient_bytes >= wire::kMinSlicedTensorBytes);
    v1::ComputeResponse back;
    ASSERT_TRUE(ParseMessage(bytes, &back, "the answer", 1 << 30).ok());
    EXPECT_TRUE(MessageDifferencer::Equals(back, expected)) << back.ShortDebugString().substr(0, 200);
  }
}

TEST(TensorWire, RawContentsGoAsSlicesInTheirOrder) {
  inference::ModelInferResponse response;
  response.set_model_name("sigmoid_focal");
  response.add_outputs()->set_name("loss");
  for (const size_t n : {size_t{8}, wire::kMinSlicedTensorBytes * 3, size_t{0}, size_t{100}}) {
    response.add_raw_output_contents(Pattern(n, static_cast<uint32_t>(n)));
  }
  const inference::ModelInferResponse expected = response;
  const char* const large_buffer = response.raw_output_contents(1).data();
  grpc::ByteBuffer bytes;
  ASSERT_TRUE(SerializeWithTensorSlices(response, 1 << 30, &bytes).ok());
  EXPECT_EQ(bytes.Length(), expected.ByteSizeLong());
  EXPECT_TRUE(SliceStartsAt(bytes, large_buffer));
  inference::ModelInferResponse back;
  ASSERT_TRUE(ParseMessage(bytes, &back, "the answer", 1 << 30).ok());
  EXPECT_TRUE(MessageDifferencer::Equals(back, expected));
}

TEST(TensorWire, AnAnswerOverTheLimitIsRefusedWithItsSize) {
  v1::ComputeResponse response;
  response.mutable_gradient()->set_data(Pattern(1 << 16, 6));
  grpc::ByteBuffer bytes;
  const absl::Status status = SerializeWithTensorSlices(response, 1000, &bytes);
  EXPECT_EQ(status.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_NE(status.message().find("--max-message-bytes"), std::string::npos) << status;
}

}  // namespace
}  // namespace focal::server
