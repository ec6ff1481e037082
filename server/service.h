// The gRPC service, thin: admission (auth, draining, the work queue), decode → backend →
// encode, metrics and one log line per failed call. Callback API throughout; computations run
// on the WorkQueue, never on gRPC's threads.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <string>

#include <grpcpp/grpcpp.h>

#include "focal/backend.h"
#include "focal/v1/focal_loss.grpc.pb.h"
#include "server/codec.h"
#include "server/metrics.h"
#include "server/work_queue.h"

namespace focal::server {

struct ServiceConfig {
  const Backend* backend = nullptr;
  Metrics* metrics = nullptr;
  WorkQueue* queue = nullptr;
  CodecLimits limits;
  std::string auth_token;  ///< empty: no authentication
  int64_t debug_delay_ms = 0;
  v1::ServerInfo info;
};

/// One function maps internal status to gRPC status.
grpc::Status ToGrpcStatus(const absl::Status& status);

class FocalLossServiceImpl final : public v1::FocalLossService::CallbackService {
 public:
  explicit FocalLossServiceImpl(ServiceConfig config);

  /// From now on new calls get UNAVAILABLE; calls already admitted finish.
  void StartDraining() { draining_ = true; }
  /// Calls admitted and not yet finished.
  int InFlight() const { return in_flight_.load(); }
  void CallStarted() const;
  void CallEnded() const;

  grpc::ServerUnaryReactor* Compute(grpc::CallbackServerContext* context, const v1::ComputeRequest* request,
                                    v1::ComputeResponse* response) override;
  grpc::ServerBidiReactor<v1::ComputeRequest, v1::ComputeResponse>* ComputeStream(
      grpc::CallbackServerContext* context) override;
  grpc::ServerReadReactor<v1::ComputeRequest>* Evaluate(grpc::CallbackServerContext* context,
                                                        v1::EvaluateResponse* response) override;
  grpc::ServerUnaryReactor* GetServerInfo(grpc::CallbackServerContext* context,
                                          const v1::GetServerInfoRequest* request,
                                          v1::ServerInfo* response) override;

  // Shared by the reactors (public so that they need not be friends).
  using Clock = std::chrono::steady_clock;

  /// Authentication and draining, before anything is queued.
  absl::Status Admit(grpc::CallbackServerContext* context) const;

  /// What computing one request reports, for the response and the metrics.
  struct BatchOutcome {
    absl::Status status;
    LossResult result;
    std::string variant;
    int64_t elements = 0;
    double queue_seconds = -1, compute_seconds = -1;
  };
  /// On a worker: checks the deadline and cancellation, decodes and computes `request`.
  /// `edit` may change the job first (Evaluate asks for per-item losses).
  BatchOutcome RunBatch(grpc::CallbackServerContext* context, const v1::ComputeRequest& request,
                        Clock::time_point queued_at, const std::function<void(LossJob&)>& edit = {}) const;

  /// Metrics and the failure log line for one finished call or stream batch.
  void Report(absl::string_view method, absl::string_view request_id, const absl::Status& status,
              const BatchOutcome* outcome, Clock::time_point started, int64_t bytes_in,
              int64_t bytes_out) const;

  const ServiceConfig& config() const { return config_; }

 private:
  ServiceConfig config_;
  std::atomic<bool> draining_{false};
  mutable std::atomic<int> in_flight_{0};
};

}  // namespace focal::server
