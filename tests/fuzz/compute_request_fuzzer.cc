// libFuzzer target: one Compute request's bytes through everything the server does with them
// (parse, decode, validate, the CPU backend, encode), with limits that keep each input small.
#include <cstddef>
#include <cstdint>

#include "focal/v1/focal_loss.pb.h"
#include "server/codec.h"
#include "tests/fuzz/fuzz_support.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace focal;
  v1::ComputeRequest request;
  if (!request.ParseFromArray(data, static_cast<int>(size))) return 0;  // the service's own parse error
  absl::StatusOr<LossJob> job = server::DecodeComputeRequest(request, fuzz::SmallLimits());
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
  return response.ByteSizeLong() > 0 ? 0 : 0;
}
