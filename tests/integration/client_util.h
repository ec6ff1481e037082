// Client-side helpers for the integration tests: channels, proto <-> core conversions (the wire
// library's and the server's own decoder, so a response can be compared with CpuBackend run
// in-process), health through gRPC's generated stub, hand-encoded reflection calls, and a
// minimal HTTP client with a Prometheus text parser for /metrics.
#pragma once

#include <grpcpp/grpcpp.h>

#include <chrono>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "focal/job.h"
#include "focal/v1/focal_loss.grpc.pb.h"
#include "tests/unit/test_util.h"

namespace focal::testing {

/// A channel to `address` with no message size limits on the client side and a subchannel
/// pool of its own (so no connection is shared with another test channel).
std::shared_ptr<grpc::Channel> MakeChannel(
    const std::string& address,
    std::shared_ptr<grpc::ChannelCredentials> credentials = grpc::InsecureChannelCredentials(),
    grpc::ChannelArguments args = {});

/// Sets `context`'s deadline `timeout` from now.
void SetTimeout(grpc::ClientContext& context, std::chrono::milliseconds timeout);

/// A copy of `t` as a proto tensor.
v1::Tensor ToProto(const HostTensor& t);
/// A view of a proto tensor's bytes (valid while the proto lives; empty for an unknown dtype).
TensorView View(const v1::Tensor& t);
/// The LossJob the server builds from `request` (views into `request`): the server's own
/// DecodeComputeRequest, without its size limits.
absl::StatusOr<LossJob> JobFromRequest(const v1::ComputeRequest& request);

/// Status of grpc.health.v1.Health/Check for `service` through the generated stub: `*serving`
/// receives the response's ServingStatus (1 SERVING, 2 NOT_SERVING, ...), 0 on an error.
grpc::Status HealthCheck(grpc::Channel* channel, const std::string& service, int* serving,
                         std::chrono::milliseconds timeout = std::chrono::seconds(3));

/// The services that server reflection lists (v1alpha, then v1), or an error status; `token`
/// is sent as a bearer token when set.
grpc::Status ReflectionListServices(grpc::Channel* channel, std::vector<std::string>* services,
                                    const std::string& token = "");

/// Raw calls: message bytes exactly as given, for what no generated stub sends (bytes that do
/// not parse, in the middle of a stream). `metadata` is added to the call.
using Metadata = std::vector<std::pair<std::string, std::string>>;
grpc::Status RawUnary(grpc::Channel* channel, const std::string& method, const std::string& request,
                      std::string* response, const Metadata& metadata = {},
                      std::chrono::milliseconds timeout = std::chrono::seconds(10));
/// A bidi stream (`bidi`) or a client stream of raw messages: writes each, half-closes, and
/// collects every answer (a client stream has one).
grpc::Status RawStream(grpc::Channel* channel, const std::string& method, bool bidi,
                       const std::vector<std::string>& messages, std::vector<std::string>* answers,
                       const Metadata& metadata = {}, std::chrono::milliseconds timeout = std::chrono::seconds(20));

struct HttpResponse {
  int status = 0;
  std::map<std::string, std::string> headers;  ///< names lower-cased
  std::string body;
};
/// GET http://host_port/path over a plain socket; nullopt on a transport error or timeout.
std::optional<HttpResponse> HttpGet(const std::string& host_port, const std::string& path,
                                    std::chrono::milliseconds timeout = std::chrono::seconds(5));

/// One sample of the Prometheus text format.
struct MetricSample {
  std::string name;
  std::map<std::string, std::string> labels;
  double value = 0;
};
std::vector<MetricSample> ParseMetrics(const std::string& text);
/// Sum of the samples named `name` whose labels include every pair of `match`.
double SumMetric(const std::vector<MetricSample>& samples, const std::string& name,
                 const std::map<std::string, std::string>& match = {});
/// Whether any sample is named `name`.
bool HasMetric(const std::vector<MetricSample>& samples, const std::string& name);

using Stub = v1::FocalLossService::Stub;

/// One Compute call with a deadline (and a bearer token when `token` is set).
grpc::Status Compute(Stub& stub, const v1::ComputeRequest& request, v1::ComputeResponse* response,
                     std::chrono::milliseconds timeout = std::chrono::seconds(10), const std::string& token = "");
/// One Evaluate call over `batches`.
grpc::Status Evaluate(Stub& stub, const std::vector<v1::ComputeRequest>& batches, v1::EvaluateResponse* response,
                      const std::string& token = "");
/// "code N: message", for assertion output.
std::string Describe(const grpc::Status& s);

/// Outcome of one of several calls started at once.
struct Outcome {
  grpc::Status status;
  v1::ComputeResponse response;
  std::chrono::milliseconds elapsed{0};
  bool done = false;
};
/// Starts every request at once through the callback API, runs `while_running`, and waits for
/// all of them.
std::vector<Outcome> ComputeConcurrently(Stub& stub, const std::vector<v1::ComputeRequest>& requests,
                                         std::chrono::milliseconds timeout,
                                         const std::function<void()>& while_running = nullptr);

/// One small valid request per kind: "softmax", "sigmoid", "sigmoid_index", "cosine", "dynamic".
std::map<std::string, v1::ComputeRequest> GoodBases();
/// The "softmax" base with `id` as its request_id.
v1::ComputeRequest SmallRequest(const std::string& id);

}  // namespace focal::testing
