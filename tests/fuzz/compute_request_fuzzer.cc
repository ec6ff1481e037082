// libFuzzer target: one Compute request's bytes through everything the server does with them
// (parse with the tensors' data apart, decode, validate, the CPU backend, encode, serialize as
// slices), with limits that keep each input small. The parse is checked against protobuf's own
// on the same bytes, cut into pieces the way a transport cuts them.
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <vector>

#include "focal/tensor_wire.h"
#include "focal/v1/focal_loss.pb.h"
#include "server/codec.h"
#include "server/wire.h"
#include "tests/fuzz/fuzz_support.h"

namespace {

/// The same message: the same bytes (MessageDifferencer would call two NaN doubles different).
bool SameMessage(const google::protobuf::Message& a, const google::protobuf::Message& b) {
  return a.SerializeAsString() == b.SerializeAsString();
}

/// What protobuf parses from the bytes, and what the detaching reader does with them cut into
/// pieces of `piece` bytes: refused (the server then parses whole: false), or the same message.
bool CheckDetachedParse(const uint8_t* data, size_t size, size_t piece, const focal::v1::ComputeRequest* whole,
                        focal::v1::ComputeRequest* detached_request, focal::wire::DetachedTensorData* detached) {
  using namespace focal;
  std::vector<absl::string_view> pieces;
  for (size_t at = 0; at < size; at += piece) {
    pieces.emplace_back(reinterpret_cast<const char*>(data) + at, std::min(piece, size - at));
  }
  const std::vector<int> fields = wire::TensorFieldNumbers(*v1::ComputeRequest::descriptor());
  if (!wire::ParseDetachingTensorData(pieces, detached_request, detached)) return false;
  if (whole == nullptr) __builtin_trap();  // read apart what protobuf refuses
  v1::ComputeRequest reattached = *detached_request;
  const google::protobuf::Reflection& r = *reattached.GetReflection();
  for (const int number : fields) {
    if (const auto bytes = detached->Find(number)) {
      const auto* f = reattached.GetDescriptor()->FindFieldByNumber(number);
      static_cast<v1::Tensor*>(r.MutableMessage(&reattached, f))->set_data(std::string(*bytes));
    }
  }
  if (!SameMessage(reattached, *whole)) __builtin_trap();
  return true;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace focal;
  v1::ComputeRequest request;
  const bool parsed = request.ParseFromArray(data, static_cast<int>(size));
  v1::ComputeRequest detached_request;
  wire::DetachedTensorData detached;
  CheckDetachedParse(data, size, 1 + size % 13, parsed ? &request : nullptr, &detached_request, &detached);
  const bool apart =
      CheckDetachedParse(data, size, size + 1, parsed ? &request : nullptr, &detached_request, &detached);
  if (!parsed) return 0;  // the service's own parse error
  // Decoded as the server does: from the message read apart when the reader took it apart.
  absl::StatusOr<LossJob> job = apart ? server::DecodeComputeRequest(detached_request, fuzz::SmallLimits(), nullptr,
                                                                     &detached)
                                      : server::DecodeComputeRequest(request, fuzz::SmallLimits());
  if (!job.ok()) {
    fuzz::CheckClientError(job.status());
    return 0;
  }
  absl::StatusOr<LossResult> result = fuzz::Backend().Compute(*job);
  if (!result.ok()) {
    fuzz::CheckClientError(result.status());
    return 0;
  }
  fuzz::CheckResult(*job, *result);
  v1::ComputeResponse response;
  if (!server::EncodeComputeResponse(std::move(*result), request.request_id(), 0, &response).ok()) __builtin_trap();
  const v1::ComputeResponse expected = response;
  grpc::ByteBuffer bytes;
  if (!server::SerializeWithTensorSlices(response, int64_t{1} << 30, &bytes).ok()) __builtin_trap();
  v1::ComputeResponse back;
  if (!server::ParseMessage(bytes, &back, "the answer", int64_t{1} << 30).ok()) __builtin_trap();
  if (!SameMessage(back, expected)) __builtin_trap();
  return 0;
}
