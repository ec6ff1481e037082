#include "server/kserve_service.h"

#include <chrono>
#include <exception>
#include <memory>
#include <mutex>

#include "absl/strings/str_cat.h"
#include "focal/status_macros.h"
#include "server/kserve_codec.h"
#include "server/wire.h"

// The reactors follow service.cc's lifetime rules (read them there): gRPC owns the context and
// buffers until OnDone, queued work holds a reference, Finish runs exactly once.

namespace focal::server {
namespace {

using Clock = FocalLossServiceImpl::Clock;
using BatchOutcome = FocalLossServiceImpl::BatchOutcome;

double SecondsSince(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

uint64_t Nanos(double seconds) { return seconds > 0 ? static_cast<uint64_t>(seconds * 1e9) : 0; }

/// Whether the server computes: serving (its health says SERVING: not in the drain's grace),
/// not draining, and its backend healthy.
bool Ready(const FocalLossServiceImpl& core) {
  return core.serving() && !core.draining() && core.config().backend->Healthy();
}

/// One ModelInferRequest: parsed from its bytes, decoded (kserve_codec.h), answered.
class InferCodec final : public FocalLossServiceImpl::UnaryCodec {
 public:
  explicit InferCodec(const KServeServiceImpl* service) : service_(service), started_(Clock::now()) {}

  absl::StatusOr<LossJob> Decode(grpc::ByteBuffer& bytes, BatchOutcome& out) override { return Decode(bytes, "", out); }

  /// `what` names the message in errors ("message 3 of the stream"; "" for a unary call).
  absl::StatusOr<LossJob> Decode(grpc::ByteBuffer& bytes, absl::string_view what, BatchOutcome& out) {
    const ServiceConfig& config = service_->core().config();
    RETURN_IF_ERROR(ParseMessage(bytes, &request_, what.empty() ? "the request" : what, config.max_message_bytes));
    out.request_id = request_.id();
    absl::StatusOr<kserve::InferCall> call = kserve::DecodeInferRequest(request_, config.limits);
    if (!call.ok()) return FocalLossServiceImpl::InMessage(call.status(), what, out.request_id);
    call_ = std::move(*call);
    out.variant = VariantNameAt(call_.variant);
    return call_.job;
  }

  absl::Status Encode(BatchOutcome& outcome, grpc::ByteBuffer* bytes) override {
    inference::ModelInferResponse response;
    RETURN_IF_ERROR(kserve::EncodeInferResponse(std::move(outcome.result), call_, outcome.request_id, &response));
    return SerializeWithTensorSlices(response, service_->core().config().max_message_bytes, bytes);
  }

  void Finished(const absl::Status& status, const BatchOutcome* outcome) override {
    service_->RecordInference(call_.variant, status, outcome, SecondsSince(started_));
  }

  const kserve::InferCall& call() const { return call_; }
  const inference::ModelInferRequest& request() const { return request_; }

 private:
  const KServeServiceImpl* const service_;
  const Clock::time_point started_;
  inference::ModelInferRequest request_;
  kserve::InferCall call_;
};

// ------------------------------------------------------------------------------------------
// ModelStreamInfer, as Triton serves it: requests answered in order, one at a time (the next
// is read once the previous answer is written, so a stream holds one request and one answer at
// most); a request that fails is answered with its error_message and the stream goes on.

class StreamInferReactor final : public grpc::ServerBidiReactor<grpc::ByteBuffer, grpc::ByteBuffer>,
                                 public RefCounted,
                                 public Drainable {
 public:
  StreamInferReactor(const KServeServiceImpl* service, grpc::CallbackServerContext* context)
      : service_(service), core_(service->core()), context_(context), state_(context->deadline()) {
    core_.CallStarted();
    if (absl::Status admitted = core_.Admit(context); !admitted.ok()) {
      core_.Report("ModelStreamInfer", "", admitted, nullptr, Clock::now(), 0, 0);
      std::lock_guard<std::mutex> lock(mu_);
      FinishLocked(admitted);
      return;
    }
    // Without the lock: a server already draining calls Drain from here.
    core_.AddDrainable(this);
    registered_ = true;
    ReadWhenRoom();
  }

  void OnReadDone(bool ok) override {
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (!ok) {
        // The client half-closed (every request it sent is answered: one at a time), or the
        // call failed (cancelled, or a message over gRPC's own limits).
        if (context_->IsCancelled()) {
          state_.Cancel(core_.Canceller());
          FinishLocked(absl::CancelledError("the call was cancelled"));
        } else {
          FinishLocked(absl::OkStatus());
        }
        return;
      }
      if (finished_) return;
      busy_ = true;
      ++received_;
      started_ = Clock::now();
      bytes_in_ = static_cast<int64_t>(bytes_.Length());
      // What the request holds counts against --max-buffered-bytes from the moment it is read:
      // the request until computed, then its answer until written (as ComputeStream's do).
      held_ = bytes_in_;
    }
    core_.Hold(bytes_in_);
    Ref();
    if (!core_.config().queue->TrySubmit([this] {
          Compute();
          Unref();
        })) {
      Unref();
      bytes_.Clear();
      Answer(FocalLossServiceImpl::InMessage(ConcurrencyLimit(), What(), ""), nullptr, nullptr);
    }
  }

  void OnWriteDone(bool ok) override {
    int64_t released = 0;
    bool read = false;
    {
      std::lock_guard<std::mutex> lock(mu_);
      busy_ = false;
      answer_.Clear();
      released = held_;
      held_ = 0;
      if (!ok) {  // the client went away
        state_.Cancel(CallState::Ender::kClient);
        FinishLocked(absl::CancelledError("the client stopped reading"));
      } else {
        ++answered_;
        if (draining_) {
          FinishDrainedLocked();
        } else {
          read = true;
        }
      }
    }
    core_.Release(released);
    if (read) ReadWhenRoom();
  }

  void OnCancel() override {
    const CallState::Ender by = core_.Canceller();
    std::lock_guard<std::mutex> lock(mu_);
    if (by == CallState::Ender::kShutdown && busy_) cut_off_ = true;
    state_.Cancel(by);
  }

  void Drain() override {
    std::lock_guard<std::mutex> lock(mu_);
    draining_ = true;
    if (!busy_) FinishDrainedLocked();
  }

  void OnDone() override {
    if (registered_) core_.RemoveDrainable(this);
    int64_t held;
    {
      std::lock_guard<std::mutex> lock(mu_);
      held = held_;
      held_ = 0;
    }
    core_.Release(held);
    core_.CallEnded(cut_off_);
    Unref();
  }

 private:
  /// "message N of the stream", for errors.
  std::string What() const { return absl::StrCat("message ", received_, " of the stream"); }

  /// Reads the next request once the answers of all streams fit --max-buffered-bytes.
  void ReadWhenRoom() {
    Ref();
    core_.WhenRoom([this] {
      {
        std::lock_guard<std::mutex> lock(mu_);
        if (!finished_ && !draining_) StartRead(&bytes_);
      }
      Unref();
    });
  }

  void Compute() {
    InferCodec codec(service_);
    BatchOutcome outcome = core_.RunBatch(
        state_, bytes_, What(), started_,
        [&codec](grpc::ByteBuffer& bytes, absl::string_view w, BatchOutcome& out) { return codec.Decode(bytes, w, out); });
    Answer(outcome.status, &outcome, &codec);
  }

  /// Answers the request just computed (or refused) with its response or its error message.
  /// Only the stream's one busy request gets here, so answer_ is built without the lock; the
  /// lock covers the hand-over to gRPC.
  void Answer(absl::Status status, BatchOutcome* outcome, InferCodec* codec) {
    inference::ModelStreamInferResponse answer;
    if (status.ok()) {
      try {
        status = kserve::EncodeInferResponse(std::move(outcome->result), codec->call(), outcome->request_id,
                                             answer.mutable_infer_response());
      } catch (const std::exception& e) {
        status = absl::InternalError(absl::StrCat("the server failed encoding the answer (", e.what(), ")"));
      }
    }
    if (status.ok()) status = SerializeMessage(answer, core_.config().max_message_bytes, &answer_);
    if (!status.ok()) {
      // The error in the stream, with the request's id and model so that a client can match it.
      inference::ModelStreamInferResponse failed;
      failed.set_error_message(absl::StrCat(absl::StatusCodeToString(status.code()), ": ", CapMessage(status).message()));
      if (codec) {
        inference::ModelInferResponse* r = failed.mutable_infer_response();
        r->set_id(codec->request().id());
        r->set_model_name(codec->request().model_name());
        r->set_model_version(codec->request().model_version());
      }
      // Small (the message is capped): it fits any --max-message-bytes the flags allow.
      (void)SerializeMessage(failed, core_.config().max_message_bytes, &answer_);
    }
    if (codec) codec->Finished(status, outcome);
    core_.Report("ModelStreamInfer", outcome ? outcome->request_id : "", status, outcome, started_, bytes_in_,
                 status.ok() ? static_cast<int64_t>(answer_.Length()) : 0);
    const int64_t answer_bytes = static_cast<int64_t>(answer_.Length());
    int64_t released = 0;
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (finished_) {
        answer_.Clear();
        released = held_;
        held_ = 0;
      } else {
        // The request's share of the budget becomes the answer's.
        core_.Hold(answer_bytes);
        released = held_;
        held_ = answer_bytes;
        StartWrite(&answer_);
      }
    }
    core_.Release(released);
  }

  void FinishDrainedLocked() {
    FinishLocked(absl::UnavailableError(
        absl::StrCat("the server is shutting down: all ", answered_,
                     " requests it read from this stream were answered; send the rest to another replica")));
  }

  void FinishLocked(const absl::Status& status) {
    if (finished_) return;
    finished_ = true;
    core_.CallAnswered();
    Finish(ToGrpcStatus(status));
  }

  const KServeServiceImpl* const service_;
  const FocalLossServiceImpl& core_;
  grpc::CallbackServerContext* const context_;  ///< only in reactor callbacks
  CallState state_;
  bool registered_ = false;
  std::atomic<bool> cut_off_{false};
  std::mutex mu_;
  grpc::ByteBuffer bytes_;   ///< the request being read or computed
  grpc::ByteBuffer answer_;  ///< the answer being written
  Clock::time_point started_;
  int64_t received_ = 0, answered_ = 0, bytes_in_ = 0;
  int64_t held_ = 0;  ///< bytes counted against --max-buffered-bytes: the request, then its answer
  bool busy_ = false, finished_ = false, draining_ = false;
};

}  // namespace

template <class Answer>
grpc::ServerUnaryReactor* KServeServiceImpl::Metadata(grpc::CallbackServerContext* context, const char* method,
                                                      bool admit, const Answer& answer,
                                                      const google::protobuf::MessageLite* response) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  const Clock::time_point started = Clock::now();
  core_->CallStarted();
  absl::Status status = admit ? core_->Admit(context) : absl::OkStatus();
  if (status.ok()) status = answer();
  core_->Report(method, "", status, nullptr, started, 0,
                status.ok() ? static_cast<int64_t>(response->ByteSizeLong()) : 0);
  core_->CallAnswered();
  core_->CallEnded(false);
  reactor->Finish(ToGrpcStatus(status));
  return reactor;
}

grpc::ServerUnaryReactor* KServeServiceImpl::ServerLive(grpc::CallbackServerContext* context,
                                                        const inference::ServerLiveRequest* /*request*/,
                                                        inference::ServerLiveResponse* response) {
  return Metadata(context, "ServerLive", /*admit=*/false, [&] {
    response->set_live(true);
    return absl::OkStatus();
  }, response);
}

grpc::ServerUnaryReactor* KServeServiceImpl::ServerReady(grpc::CallbackServerContext* context,
                                                         const inference::ServerReadyRequest* /*request*/,
                                                         inference::ServerReadyResponse* response) {
  return Metadata(context, "ServerReady", /*admit=*/false, [&] {
    response->set_ready(Ready(*core_));
    return absl::OkStatus();
  }, response);
}

grpc::ServerUnaryReactor* KServeServiceImpl::ModelReady(grpc::CallbackServerContext* context,
                                                        const inference::ModelReadyRequest* request,
                                                        inference::ModelReadyResponse* response) {
  // As Triton answers it: a name or version that is not a model is not ready (OK, ready false).
  return Metadata(context, "ModelReady", /*admit=*/true, [&] {
    response->set_ready(kserve::FindModel(request->name(), request->version()).ok() && Ready(*core_));
    return absl::OkStatus();
  }, response);
}

grpc::ServerUnaryReactor* KServeServiceImpl::ServerMetadata(grpc::CallbackServerContext* context,
                                                            const inference::ServerMetadataRequest* /*request*/,
                                                            inference::ServerMetadataResponse* response) {
  return Metadata(context, "ServerMetadata", /*admit=*/true, [&] {
    response->set_name(kserve::kPlatform);
    response->set_version(core_->config().info.version());
    // Protocol extensions in Triton's names: request parameters, ModelConfig, ModelStatistics.
    for (const char* extension : {"parameters", "model_configuration", "statistics"}) response->add_extensions(extension);
    return absl::OkStatus();
  }, response);
}

grpc::ServerUnaryReactor* KServeServiceImpl::ModelMetadata(grpc::CallbackServerContext* context,
                                                           const inference::ModelMetadataRequest* request,
                                                           inference::ModelMetadataResponse* response) {
  return Metadata(context, "ModelMetadata", /*admit=*/true, [&]() -> absl::Status {
    ASSIGN_OR_RETURN(const int variant, kserve::FindModel(request->name(), request->version()));
    *response = kserve::ModelMetadata(variant);
    return absl::OkStatus();
  }, response);
}

grpc::ServerUnaryReactor* KServeServiceImpl::ModelConfig(grpc::CallbackServerContext* context,
                                                         const inference::ModelConfigRequest* request,
                                                         inference::ModelConfigResponse* response) {
  return Metadata(context, "ModelConfig", /*admit=*/true, [&]() -> absl::Status {
    ASSIGN_OR_RETURN(const int variant, kserve::FindModel(request->name(), request->version()));
    *response = kserve::ModelConfig(variant);
    return absl::OkStatus();
  }, response);
}

grpc::ServerUnaryReactor* KServeServiceImpl::ModelStatistics(grpc::CallbackServerContext* context,
                                                             const inference::ModelStatisticsRequest* request,
                                                             inference::ModelStatisticsResponse* response) {
  return Metadata(context, "ModelStatistics", /*admit=*/true, [&]() -> absl::Status {
    int first = 0, last = static_cast<int>(kNumVariants) - 1;
    if (!request->name().empty()) {
      ASSIGN_OR_RETURN(first, kserve::FindModel(request->name(), request->version()));
      last = first;
    }
    for (int v = first; v <= last; ++v) {
      const KServeModelStats& s = stats_[static_cast<size_t>(v)];
      inference::ModelStatistics* m = response->add_model_stats();
      m->set_name(VariantNameAt(v));
      m->set_version(kserve::kModelVersion);
      m->set_last_inference(s.last_inference_ms.load());
      m->set_inference_count(s.success_count.load());
      m->set_execution_count(s.compute_count.load());
      inference::InferStatistics* i = m->mutable_inference_stats();
      i->mutable_success()->set_count(s.success_count.load());
      i->mutable_success()->set_ns(s.success_ns.load());
      i->mutable_fail()->set_count(s.fail_count.load());
      i->mutable_fail()->set_ns(s.fail_ns.load());
      i->mutable_queue()->set_count(s.compute_count.load());
      i->mutable_queue()->set_ns(s.queue_ns.load());
      i->mutable_compute_infer()->set_count(s.compute_count.load());
      i->mutable_compute_infer()->set_ns(s.compute_ns.load());
    }
    return absl::OkStatus();
  }, response);
}

void KServeServiceImpl::RecordInference(int variant, const absl::Status& status, const BatchOutcome* outcome,
                                        double seconds) const {
  if (variant < 0 || variant >= static_cast<int>(kNumVariants)) return;  // not a model: nothing to add to
  KServeModelStats& s = stats_[static_cast<size_t>(variant)];
  (status.ok() ? s.success_count : s.fail_count) += 1;
  (status.ok() ? s.success_ns : s.fail_ns) += Nanos(seconds);
  if (outcome && outcome->compute_seconds >= 0) {
    s.compute_count += 1;
    s.compute_ns += Nanos(outcome->compute_seconds);
    s.queue_ns += Nanos(outcome->queue_seconds);
  }
  s.last_inference_ms = static_cast<uint64_t>(
      std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::system_clock::now().time_since_epoch())
          .count());
}

grpc::ServerUnaryReactor* KServeServiceImpl::ModelInfer(grpc::CallbackServerContext* context,
                                                        const grpc::ByteBuffer* request, grpc::ByteBuffer* response) {
  return core_->ServeUnary(context, request, response, "ModelInfer", std::make_unique<InferCodec>(this));
}

grpc::ServerBidiReactor<grpc::ByteBuffer, grpc::ByteBuffer>* KServeServiceImpl::ModelStreamInfer(
    grpc::CallbackServerContext* context) {
  return new StreamInferReactor(this, context);
}

}  // namespace focal::server
