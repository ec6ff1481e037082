// The gRPC service, thin: admission (auth, draining, the work queue), bytes → decode → backend →
// encode → bytes, metrics and one log line per failed call. Callback API throughout, with the
// methods taking raw byte buffers so that a message that does not parse is a clear error and
// the token is checked before anything is parsed; computations run on the WorkQueue.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <set>
#include <string>

#include <grpcpp/grpcpp.h>

#include "focal/backend.h"
#include "focal/v1/focal_loss.grpc.pb.h"
#include "server/codec.h"
#include "server/limits.h"
#include "server/metrics.h"
#include "server/wire.h"
#include "server/work_queue.h"

namespace focal::server {

struct ServiceConfig {
  const Backend* backend = nullptr;
  Metrics* metrics = nullptr;
  WorkQueue* queue = nullptr;
  RequestLimits limits;
  int64_t max_message_bytes = int64_t{1} << 30;  ///< answers larger than this are RESOURCE_EXHAUSTED
  std::string auth_token;  ///< empty: no authentication
  /// Same-host clients' shared memory (--shared-memory); null: refused.
  SharedMemoryRegistry* shared_memory = nullptr;
  int64_t debug_delay_ms = 0;
  v1::ServerInfo info;
};

/// One function maps internal status to gRPC status (and caps its message's length).
grpc::Status ToGrpcStatus(const absl::Status& status);

/// RESOURCE_EXHAUSTED: the work queue is full (--max-concurrent + --max-queue).
absl::Status ConcurrencyLimit();

/// Reactors are reference counted: gRPC's reference is dropped in OnDone, and every task queued
/// for a reactor holds one until it has run, so the last of them deletes it.
class RefCounted {
 public:
  virtual ~RefCounted() = default;
  void Ref() { refs_.fetch_add(1); }
  void Unref() {
    if (refs_.fetch_sub(1) == 1) delete this;
  }

 private:
  std::atomic<int> refs_{1};
};

/// What a computation may ask of its call. Queued work never touches the CallbackServerContext:
/// gRPC frees it after the reactor's OnDone, and a stream can end (a failed batch, a client that
/// cancels) while batches of it still wait for a worker. The reactor owns this and outlives its
/// queued work (reference counted), so the work reads it safely.
class CallState {
 public:
  explicit CallState(std::chrono::system_clock::time_point deadline) : deadline_(deadline) {}
  /// Who ended a call before all its work ran.
  enum class Ender : int { kNobody, kClient, kEarlierFailure, kShutdown };
  /// Nothing more is to be computed for the call (the first ender is kept).
  void Cancel(Ender by);
  /// OK while the call still wants answers; else CANCELLED (saying who) or DEADLINE_EXCEEDED.
  absl::Status StillWanted() const;
  bool cancelled() const { return ender_.load() != Ender::kNobody; }
  Ender ender() const { return ender_.load(); }

 private:
  const std::chrono::system_clock::time_point deadline_;
  std::atomic<Ender> ender_{Ender::kNobody};
};

/// A stream that can be told to finish: it reads nothing more, answers what it has accepted,
/// then ends. Used when the server drains.
class Drainable {
 public:
  virtual ~Drainable() = default;
  virtual void Drain() = 0;
};

using RawService = v1::FocalLossService::WithRawCallbackMethod_Compute<
    v1::FocalLossService::WithRawCallbackMethod_ComputeStream<v1::FocalLossService::WithRawCallbackMethod_Evaluate<
        v1::FocalLossService::WithCallbackMethod_GetServerInfo<v1::FocalLossService::WithCallbackMethod_RegisterSharedMemory<
            v1::FocalLossService::WithCallbackMethod_UnregisterSharedMemory<
                v1::FocalLossService::WithCallbackMethod_ListSharedMemory<v1::FocalLossService::Service>>>>>>>;

class FocalLossServiceImpl final : public RawService {
 public:
  explicit FocalLossServiceImpl(ServiceConfig config);

  /// From now on new calls get UNAVAILABLE, open ComputeStreams finish what they accepted, and
  /// calls already admitted finish.
  void StartDraining();
  /// The server is cutting off what is left (Shutdown's deadline has passed): calls cancelled
  /// from now on were cut off by the server, not by their clients.
  void StartCuttingOff() { cutting_off_ = true; }
  /// Calls admitted and not yet finished.
  int InFlight() const { return in_flight_.load(); }
  /// Calls ever started (a call too short to be seen in flight still counts as activity).
  int64_t CallsStarted() const { return calls_started_.load(); }
  /// Calls that ended without the answer they were owed because the server stopped.
  int CutOff() const { return cut_off_.load(); }

  grpc::ServerUnaryReactor* Compute(grpc::CallbackServerContext* context, const grpc::ByteBuffer* request,
                                    grpc::ByteBuffer* response) override;
  grpc::ServerBidiReactor<grpc::ByteBuffer, grpc::ByteBuffer>* ComputeStream(
      grpc::CallbackServerContext* context) override;
  grpc::ServerReadReactor<grpc::ByteBuffer>* Evaluate(grpc::CallbackServerContext* context,
                                                      grpc::ByteBuffer* response) override;
  grpc::ServerUnaryReactor* GetServerInfo(grpc::CallbackServerContext* context,
                                          const v1::GetServerInfoRequest* request,
                                          v1::ServerInfo* response) override;
  grpc::ServerWriteReactor<v1::SharedMemoryRegion>* RegisterSharedMemory(
      grpc::CallbackServerContext* context, const v1::RegisterSharedMemoryRequest* request) override;
  grpc::ServerUnaryReactor* UnregisterSharedMemory(grpc::CallbackServerContext* context,
                                                   const v1::UnregisterSharedMemoryRequest* request,
                                                   v1::UnregisterSharedMemoryResponse* response) override;
  grpc::ServerUnaryReactor* ListSharedMemory(grpc::CallbackServerContext* context,
                                             const v1::ListSharedMemoryRequest* request,
                                             v1::ListSharedMemoryResponse* response) override;

  // Shared by the reactors (public so that they need not be friends).
  using Clock = std::chrono::steady_clock;

  /// Authentication and draining, before anything is parsed or queued.
  absl::Status Admit(grpc::CallbackServerContext* context) const;
  /// A small unary call answered on gRPC's thread: admitted, then `answer` fills `response`,
  /// then reported and finished.
  grpc::ServerUnaryReactor* AnswerAtOnce(grpc::CallbackServerContext* context, const char* method,
                                         const std::function<absl::Status()>& answer,
                                         const google::protobuf::Message& response) const;
  /// Bookkeeping of one call: its start; its answer (just before Finish: from then on the
  /// client may see it, so metrics no longer count it in flight); and its end, at OnDone, after
  /// which gRPC frees it (drain waits for that; `cut_off` when the server's shutdown ended it
  /// before its answer).
  void CallStarted() const;
  void CallAnswered() const;
  void CallEnded(bool cut_off) const;
  /// Who cancelled a call that gRPC reports cancelled: the server while it cuts off, else the client.
  CallState::Ender Canceller() const {
    return cutting_off_ ? CallState::Ender::kShutdown : CallState::Ender::kClient;
  }

  /// What computing one request reports, for the response and the metrics.
  struct BatchOutcome {
    absl::Status status;
    std::string request_id;
    LossResult result;
    std::string variant;
    int64_t elements = 0;
    double queue_seconds = -1, compute_seconds = -1;
    SharedMemoryUse shm;  ///< the shared memory the request reads and writes, held until its answer
    wire::ReceivedTensors received;  ///< the request's tensor bytes, which the job's views point into
  };
  /// A protocol's decoder: parses `bytes` into its request (which the job's views point into, so
  /// it must outlive the computation), sets `out.request_id` and `out.variant` once known, and
  /// returns the job; `what` names the message in errors.
  using Decoder = std::function<absl::StatusOr<LossJob>(grpc::ByteBuffer& bytes, absl::string_view what,
                                                        BatchOutcome& out)>;
  /// On a worker: checks that the call still wants it, decodes `bytes` with `decode` and
  /// computes. Every protocol's computations go through here. Never throws: an exception is
  /// INTERNAL.
  BatchOutcome RunBatch(const CallState& call, grpc::ByteBuffer& bytes, absl::string_view what,
                        Clock::time_point queued_at, const Decoder& decode) const;
  /// RunBatch of a focal.v1 ComputeRequest, parsed into `request`. `edit` may check and change
  /// the job first (Evaluate asks for per-item losses).
  BatchOutcome RunBatch(const CallState& call, grpc::ByteBuffer& bytes, absl::string_view what,
                        v1::ComputeRequest& request, Clock::time_point queued_at,
                        const std::function<absl::Status(LossJob&)>& edit = {}) const;
  /// RunBatch's Decoder for focal.v1: parses `bytes` into `request` and decodes it; `edit` is
  /// Evaluate's, which may check and change the job (it asks for per-item losses): only with it
  /// may a request carry EvaluateOptions.
  absl::StatusOr<LossJob> DecodeCompute(grpc::ByteBuffer& bytes, absl::string_view what, v1::ComputeRequest& request,
                                        BatchOutcome& out, const std::function<absl::Status(LossJob&)>& edit = {}) const;
  /// `status` prefixed with where it happened: "message 3 of the stream (request 'id'): ...";
  /// a unary call's errors (`what` empty) are the message alone.
  static absl::Status InMessage(const absl::Status& status, absl::string_view what, absl::string_view request_id);
  /// Encodes a computed batch's answer into `bytes`, within the message size limit.
  absl::Status EncodeAnswer(BatchOutcome& outcome, grpc::ByteBuffer* bytes) const;

  /// One protocol's side of a unary computation (focal.v1 Compute, KServe ModelInfer): its
  /// request message, decoded on a worker, and its answer. The reactor owns it for the call.
  class UnaryCodec {
   public:
    virtual ~UnaryCodec() = default;
    /// RunBatch's Decoder: parses `bytes` into the codec's own request and decodes it.
    virtual absl::StatusOr<LossJob> Decode(grpc::ByteBuffer& bytes, BatchOutcome& out) = 0;
    /// The answer of a computed batch, within the message size limit.
    virtual absl::Status Encode(BatchOutcome& outcome, grpc::ByteBuffer* bytes) = 0;
    /// Called once the call's status is known, before the client sees it.
    virtual void Finished(const absl::Status& /*status*/, const BatchOutcome* /*outcome*/) {}
  };
  /// Serves one unary computation: admission, the inline-or-queued run, the answer, metrics
  /// under `method` (a string literal). Every protocol's unary computation goes through here.
  grpc::ServerUnaryReactor* ServeUnary(grpc::CallbackServerContext* context, const grpc::ByteBuffer* request,
                                       grpc::ByteBuffer* response, const char* method,
                                       std::unique_ptr<UnaryCodec> codec) const;

  /// Whether the server drains (KServe's readiness says so).
  bool draining() const { return draining_.load(); }
  /// What health says (main.cc sets both): NOT_SERVING from the signal on, through the drain's
  /// grace, and when the backend turns unhealthy. KServe's readiness follows it.
  void SetServing(bool serving) { serving_ = serving; }
  bool serving() const { return serving_.load(); }

  /// Metrics and the failure log line for one finished call or stream batch.
  void Report(absl::string_view method, absl::string_view request_id, const absl::Status& status,
              const BatchOutcome* outcome, Clock::time_point started, int64_t bytes_in,
              int64_t bytes_out) const;

  /// Bytes of answers computed and not yet taken by their clients, over all streams
  /// (bounded by limits.max_buffered_bytes): Hold when an answer is made, Release once written
  /// or dropped. WhenRoom calls `resume` at once when under the budget, else once it is (from
  /// whichever thread releases); `resume` must not be called with a reactor's lock held.
  void Hold(int64_t bytes) const { buffered_bytes_ += bytes; }
  void Release(int64_t bytes) const;
  void WhenRoom(std::function<void()> resume) const;

  /// Streams register while open so that draining can tell them to finish.
  void AddDrainable(Drainable* stream) const;
  void RemoveDrainable(Drainable* stream) const;

  const ServiceConfig& config() const { return config_; }

 private:
  ServiceConfig config_;
  std::atomic<bool> draining_{false}, cutting_off_{false}, serving_{true};
  mutable std::atomic<int> in_flight_{0}, cut_off_{0};
  mutable std::atomic<int64_t> calls_started_{0};
  mutable std::atomic<int64_t> buffered_bytes_{0};
  mutable std::mutex waiters_mu_;
  mutable std::vector<std::function<void()>> waiters_;
  mutable std::mutex streams_mu_;
  mutable std::set<Drainable*> streams_;
};

}  // namespace focal::server
