// The core's types <-> focal.v1 messages, in one place: the server's codec, the C++ client and
// the tests all convert through here. LossSpec is converted generically over the variant table
// (focal/params.h) by protobuf reflection: a variant is LossSpec's oneof field named as its
// entry, each parameter the field of that name in the variant's message, so adding a variant
// or a parameter to the table and to the .proto needs nothing here.
//
// Per-class lists: a list parameter `x` of the table (std::vector<double>) travels as
// `repeated double x_f64`, at full precision; a `repeated float x` beside it is its older
// float32 form, still read. Encoding writes `x_f64` only; decoding takes either, and both set
// is INVALID_ARGUMENT naming both fields.
#pragma once

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "focal/dtype.h"
#include "focal/params.h"
#include "focal/tensor.h"
#include "focal/v1/focal_loss.pb.h"

namespace focal::wire {

/// The wire DataType of a dtype (the two enums share their numbers: focal/dtype.h).
v1::DataType ToProto(DType dtype);
/// The dtype of a wire DataType value: INVALID_ARGUMENT "<field> is not set" for UNSPECIFIED,
/// "<field> is 42, not a known DataType" for a value the wire does not define.
absl::StatusOr<DType> DTypeFromProto(int dtype, absl::string_view field);

/// The wire Reduction of a reduction.
v1::Reduction ToProto(Reduction reduction);
/// The reduction of a wire value: INVALID_ARGUMENT "<field> is 9; expected MEAN, SUM or NONE".
absl::StatusOr<Reduction> ReductionFromProto(int reduction, absl::string_view field);

/// Fills `out` with `tensor`, moving its bytes in (no copy).
void TensorToProto(HostTensor&& tensor, v1::Tensor* out);
/// Fills `out` with a copy of `tensor`.
void TensorToProto(const HostTensor& tensor, v1::Tensor* out);
/// A view of `tensor`'s bytes in place, valid while `tensor` lives and is not modified. Only
/// the dtype is checked here; shape and byte length are ValidateJob's.
absl::StatusOr<TensorView> TensorViewFromProto(const v1::Tensor& tensor, absl::string_view field);
/// `tensor` as an owned tensor, its bytes moved out (no copy); INVALID_ARGUMENT naming `field`
/// when the dtype is unknown or the bytes do not match the shape.
absl::StatusOr<HostTensor> TensorFromProto(v1::Tensor&& tensor, absl::string_view field);

/// The LossSpec a message says, parameters it leaves absent at the table's defaults. Errors
/// are INVALID_ARGUMENT naming the field (`field` is the message's own name): no variant set
/// ("loss.variant is not set; expected one of softmax_focal, ..."), an enum value the wire
/// does not define ("loss.sigmoid_focal.input is 7; expected LOGITS or PROBABILITIES"), a
/// per-class list sent in both forms. Ranges are ValidateJob's.
absl::StatusOr<LossSpec> LossSpecFromProto(const v1::LossSpec& spec, absl::string_view field = "loss");
/// `spec` as a message: every parameter explicitly (an unset optional one left absent),
/// per-class lists as `x_f64`.
void LossSpecToProto(const LossSpec& spec, v1::LossSpec* out);

/// OK when `message` and every message set inside it hold only fields this build's proto
/// defines; else INVALID_ARGUMENT naming the first unknown field's number and where it is
/// (`field` names `message` itself; "" for a request). Protobuf keeps fields it does not know
/// and the codec never reads them, so a parameter or input a newer client sends would
/// otherwise be dropped without a word: a silently wrong answer.
absl::Status RejectUnknownFields(const google::protobuf::Message& message, absl::string_view field);

/// Whether every entry of the variant table has its wire fields, of the types its parameters
/// need (a test checks it; decoding answers INTERNAL with this status while it does not).
absl::Status CheckTable();

}  // namespace focal::wire
