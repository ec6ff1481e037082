// libFuzzer target: a stream of messages (each a 2-byte little-endian length, then its bytes),
// as Evaluate and ComputeStream take them: every message parsed as the service does (from a gRPC
// byte buffer, failures named by message number), decoded, prepared for Evaluate, its
// EvaluateOptions checked, computed, accumulated into exact totals and analyses (γ sweep,
// calibration), and the answer encoded at the end.
#include <cstddef>
#include <cstdint>
#include <string>

#include <grpcpp/support/byte_buffer.h>

#include "absl/strings/str_cat.h"
#include "focal/v1/focal_loss.pb.h"
#include "server/analyses.h"
#include "server/codec.h"
#include "server/evaluation.h"
#include "server/wire.h"
#include "tests/fuzz/fuzz_support.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace focal;
  server::EvaluationTotals totals;
  server::EvaluationAnalyses analyses(/*max_threads=*/2);
  size_t at = 0;
  for (int message = 1; at + 2 <= size && message <= 16; ++message) {
    const size_t length = std::min<size_t>(data[at] | (data[at + 1] << 8), size - at - 2);
    at += 2;
    grpc::Slice slice(data + at, length);
    grpc::ByteBuffer bytes(&slice, 1);
    at += length;
    v1::ComputeRequest request;
    const std::string what = absl::StrCat("message ", message, " of the evaluation");
    absl::Status status = server::ParseMessage(bytes, &request, what, 1 << 16);
    if (!status.ok()) {
      fuzz::CheckClientError(status);
      if (status.message().find(what) == std::string::npos) std::abort();  // names the message
      break;
    }
    absl::StatusOr<LossJob> job = server::DecodeComputeRequest(request, fuzz::SmallLimits());
    if (!job.ok()) {
      fuzz::CheckClientError(job.status());
      break;
    }
    status = server::PrepareForEvaluation(*job);
    if (status.ok()) status = analyses.Check(request.evaluate(), *job);
    if (!status.ok()) {
      fuzz::CheckClientError(status);
      break;
    }
    absl::StatusOr<LossResult> result = fuzz::Backend().Compute(*job);
    if (!result.ok()) {
      fuzz::CheckClientError(result.status());
      break;
    }
    fuzz::CheckResult(*job, *result);
    status = totals.Add(*job, *result);
    if (status.ok()) status = analyses.Add(*job);
    if (!status.ok()) {
      fuzz::CheckClientError(status);
      break;
    }
  }
  v1::EvaluateResponse response = totals.ToResponse();
  analyses.ToResponse(&response);
  if (response.batches() != totals.batches()) std::abort();
  if (response.has_sweep() && response.sweep().positive_sums_size() !=
                                  response.sweep().gammas_size() * response.sweep().classes()) {
    std::abort();
  }
  return 0;
}
