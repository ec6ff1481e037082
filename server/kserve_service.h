// The Open Inference Protocol (KServe v2) service, on the same port as focal.v1 and over the
// same machinery: admission (auth, draining), the work queue, limits, metrics and the backend
// are the focal.v1 service's (FocalLossServiceImpl), whose in-flight count and drain cover both
// protocols. This layer is thin: protocol metadata, and kserve_codec.h's decode and encode
// around FocalLossServiceImpl's computation.
#pragma once

#include <array>
#include <atomic>
#include <cstdint>

#include <grpcpp/grpcpp.h>

#include "focal/params.h"
#include "inference/grpc_predict_v2.grpc.pb.h"
#include "server/service.h"

namespace focal::server {

using KServeRawService = inference::GRPCInferenceService::WithRawCallbackMethod_ModelInfer<
    inference::GRPCInferenceService::WithRawCallbackMethod_ModelStreamInfer<
        inference::GRPCInferenceService::WithCallbackMethod_ServerLive<
            inference::GRPCInferenceService::WithCallbackMethod_ServerReady<
                inference::GRPCInferenceService::WithCallbackMethod_ModelReady<
                    inference::GRPCInferenceService::WithCallbackMethod_ServerMetadata<
                        inference::GRPCInferenceService::WithCallbackMethod_ModelMetadata<
                            inference::GRPCInferenceService::WithCallbackMethod_ModelStatistics<
                                inference::GRPCInferenceService::WithCallbackMethod_ModelConfig<
                                    inference::GRPCInferenceService::Service>>>>>>>>>;

/// Triton's cumulative statistics of one model (ModelStatistics), updated by every ModelInfer
/// and ModelStreamInfer request for it.
struct KServeModelStats {
  std::atomic<uint64_t> success_count{0}, success_ns{0}, fail_count{0}, fail_ns{0};
  std::atomic<uint64_t> queue_ns{0}, compute_count{0}, compute_ns{0};
  std::atomic<uint64_t> last_inference_ms{0};
};

class KServeServiceImpl final : public KServeRawService {
 public:
  /// `core` serves focal.v1 and outlives this service.
  explicit KServeServiceImpl(const FocalLossServiceImpl* core) : core_(core) {}

  grpc::ServerUnaryReactor* ServerLive(grpc::CallbackServerContext* context, const inference::ServerLiveRequest* request,
                                       inference::ServerLiveResponse* response) override;
  grpc::ServerUnaryReactor* ServerReady(grpc::CallbackServerContext* context,
                                        const inference::ServerReadyRequest* request,
                                        inference::ServerReadyResponse* response) override;
  grpc::ServerUnaryReactor* ModelReady(grpc::CallbackServerContext* context, const inference::ModelReadyRequest* request,
                                       inference::ModelReadyResponse* response) override;
  grpc::ServerUnaryReactor* ServerMetadata(grpc::CallbackServerContext* context,
                                           const inference::ServerMetadataRequest* request,
                                           inference::ServerMetadataResponse* response) override;
  grpc::ServerUnaryReactor* ModelMetadata(grpc::CallbackServerContext* context,
                                          const inference::ModelMetadataRequest* request,
                                          inference::ModelMetadataResponse* response) override;
  grpc::ServerUnaryReactor* ModelConfig(grpc::CallbackServerContext* context, const inference::ModelConfigRequest* request,
                                        inference::ModelConfigResponse* response) override;
  grpc::ServerUnaryReactor* ModelStatistics(grpc::CallbackServerContext* context,
                                            const inference::ModelStatisticsRequest* request,
                                            inference::ModelStatisticsResponse* response) override;
  grpc::ServerUnaryReactor* ModelInfer(grpc::CallbackServerContext* context, const grpc::ByteBuffer* request,
                                       grpc::ByteBuffer* response) override;
  grpc::ServerBidiReactor<grpc::ByteBuffer, grpc::ByteBuffer>* ModelStreamInfer(
      grpc::CallbackServerContext* context) override;

  /// Adds one finished inference of model `variant` to its statistics.
  void RecordInference(int variant, const absl::Status& status, const FocalLossServiceImpl::BatchOutcome* outcome,
                       double seconds) const;

  const FocalLossServiceImpl& core() const { return *core_; }

 private:
  /// A metadata call: admission (`admit`: the probes ServerLive and ServerReady stay open, as
  /// gRPC health does), `answer`, metrics.
  template <class Answer>
  grpc::ServerUnaryReactor* Metadata(grpc::CallbackServerContext* context, const char* method, bool admit,
                                     const Answer& answer, const google::protobuf::MessageLite* response);

  const FocalLossServiceImpl* const core_;
  mutable std::array<KServeModelStats, kNumVariants> stats_;
};

}  // namespace focal::server
