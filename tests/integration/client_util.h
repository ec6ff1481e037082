// Client-side helpers for the integration tests: channels, proto <-> core conversions (the
// test's own small codec, so a response can be compared with CpuBackend run in-process),
// hand-encoded health and reflection calls, and a minimal HTTP client with a Prometheus text
// parser for /metrics.
#pragma once

#include <grpcpp/grpcpp.h>

#include <chrono>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

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

v1::Tensor ToProto(const HostTensor& t);
/// A view of a proto tensor's bytes (valid while the proto lives).
TensorView View(const v1::Tensor& t);
/// The proto's LossSpec with the defaults of VARIANTS.md for absent fields.
LossSpec SpecFromProto(const v1::LossSpec& spec);
/// The LossJob a conforming server builds from `request` (views into `request`). Written
/// from the proto's contract independently of server/codec.cc, on purpose: the end-to-end
/// comparison would not see a codec bug if both sides decoded with the codec.
LossJob JobFromRequest(const v1::ComputeRequest& request);

/// Status of grpc.health.v1.Health/Check for `service`: `*serving` receives the response's
/// ServingStatus (1 SERVING, 2 NOT_SERVING, ...). Request and response are encoded by hand.
grpc::Status HealthCheck(grpc::Channel* channel, const std::string& service, int* serving,
                         std::chrono::milliseconds timeout = std::chrono::seconds(3));

/// The services that server reflection lists (v1alpha, then v1), or an error status.
grpc::Status ReflectionListServices(grpc::Channel* channel, std::vector<std::string>* services);

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

}  // namespace focal::testing
