// libFuzzer target: one KServe v2 ModelInfer request's bytes through everything the server does
// with them (parse, the Open Inference Protocol decode, validate, the CPU backend, encode), with
// the limits of the other targets. Decoding may also answer NOT_FOUND (a model the server does
// not have); every other failure must be one a client is given for its own input.
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>

#include "inference/grpc_predict_v2.pb.h"
#include "server/kserve_codec.h"
#include "tests/fuzz/fuzz_support.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace focal;
  inference::ModelInferRequest request;
  if (!request.ParseFromArray(data, static_cast<int>(size))) return 0;  // the service's own parse error
  absl::StatusOr<server::kserve::InferCall> call = server::kserve::DecodeInferRequest(request, fuzz::SmallLimits());
  if (!call.ok()) {
    if (call.status().code() != absl::StatusCode::kNotFound) fuzz::CheckClientError(call.status());
    return 0;
  }
  absl::StatusOr<LossResult> result = fuzz::Backend().Compute(call->job);
  if (!result.ok()) {
    fuzz::CheckClientError(result.status());
    return 0;
  }
  fuzz::CheckResult(call->job, *result);
  inference::ModelInferResponse response;
  const absl::Status encoded = server::kserve::EncodeInferResponse(std::move(*result), *call, request.id(), &response);
  if (!encoded.ok() || response.outputs_size() != static_cast<int>(call->outputs.size())) {
    std::fprintf(stderr, "a computed answer did not encode: %s\n", encoded.ToString().c_str());
    std::abort();
  }
  return 0;
}
