// The Open Inference Protocol (KServe v2) <-> LossJob/LossResult as pure functions, the second
// thin codec over the same LossJob -> Backend path as focal.v1's (server/codec.h): no loss logic
// here. Each variant of the table is a model of that name; its parameters are the table's,
// set through focal/variant_text.h; every range and shape is ValidateJob's, so a request says
// the same thing through either protocol and gets bit-identical answers. docs/kserve.md is the
// mapping as users read it.
#pragma once

#include <cstdint>
#include <list>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "focal/job.h"
#include "inference/grpc_predict_v2.pb.h"
#include "server/limits.h"

namespace focal::server::kserve {

/// Every model's one version, and the platform ModelMetadata reports.
inline constexpr const char* kModelVersion = "1";
inline constexpr const char* kPlatform = "focalserve";

/// The protocol's datatype name of a dtype ("FP32", "BF16", "INT64", ...).
const char* DatatypeName(DType dtype);

/// The table index of model `name` at `version` ("" or kModelVersion), or NOT_FOUND naming the
/// models this server has.
absl::StatusOr<int> FindModel(absl::string_view name, absl::string_view version);

/// One input or output of a model as its metadata and configuration describe it.
struct TensorSpec {
  const char* name;
  DType dtype;             ///< the usual one; docs/kserve.md lists every dtype an input takes
  std::vector<int64_t> shape;  ///< -1 for a dimension of any size
  bool optional = false;
};
struct ModelSpec {
  std::vector<TensorSpec> inputs, outputs;
};
/// The inputs and outputs of the model at table index `variant`: the one description that
/// ModelMetadata and ModelConfig report.
ModelSpec DescribeModel(int variant);

/// ModelMetadata of the model at table index `variant`.
inference::ModelMetadataResponse ModelMetadata(int variant);
/// Triton's ModelConfig of the model at table index `variant`.
inference::ModelConfigResponse ModelConfig(int variant);

/// The outputs a model answers with, in their default order.
enum class Output : uint8_t { kLoss, kCount, kLosses, kGradient };

/// A decoded ModelInferRequest: the job (views into the request, or into `converted`), the
/// outputs to answer with in order, and their encoding. The request must stay where it is while
/// the call lives (the views point into its fields); the call itself moves but does not copy
/// (a copy's views would point into the original's `converted`).
struct InferCall {
  InferCall() = default;
  InferCall(InferCall&&) = default;
  InferCall& operator=(InferCall&&) = default;
  InferCall(const InferCall&) = delete;
  InferCall& operator=(const InferCall&) = delete;

  int variant = -1;
  LossJob job;
  std::vector<Output> outputs;
  /// Answer in typed `contents` (every input came that way) rather than raw_output_contents.
  bool typed = false;
  /// Bytes of typed inputs whose contents field is wider than their dtype (UINT8 arrives as
  /// uint32): a list, so that moving the call keeps the views into it valid.
  std::list<std::string> converted;
};

/// Decodes `request`. NOT_FOUND for an unknown model or version; INVALID_ARGUMENT naming the
/// input, output or parameter for everything the protocol or the mapping does not allow;
/// RESOURCE_EXHAUSTED over `limits` (CheckRequestSize), before anything is sized from a shape.
absl::StatusOr<InferCall> DecodeInferRequest(const inference::ModelInferRequest& request, const RequestLimits& limits);

/// Fills `response` from a result: the call's outputs in its order, the tensors' bytes moved
/// into raw_output_contents (or copied into typed contents).
absl::Status EncodeInferResponse(LossResult&& result, const InferCall& call, const std::string& id,
                                 inference::ModelInferResponse* response);

}  // namespace focal::server::kserve
