#include "server/service.h"

#include <cstdio>
#include <deque>
#include <exception>
#include <memory>
#include <mutex>
#include <optional>
#include <thread>

#include "absl/strings/str_cat.h"
#include "focal/status_macros.h"
#include "server/analyses.h"
#include "server/evaluation.h"
#include "server/wire.h"

// Lifetimes, the rules every reactor below follows:
// - gRPC owns the CallbackServerContext and the request/response buffers it hands a handler; it
//   frees them after the reactor's OnDone. Only reactor callbacks (which gRPC runs before
//   OnDone) touch the context; work on the WorkQueue reads the reactor's CallState instead.
// - Reactors are reference counted: gRPC's reference is dropped in OnDone, and every task
//   queued for the reactor holds one until it has run, so the last of them deletes it.
// - A reactor calls Finish exactly once (finished_), after which it starts no read or write.
// - Nothing is called into another reactor or the response budget with a reactor's lock held.

namespace focal::server {
namespace {

using Clock = FocalLossServiceImpl::Clock;
using BatchOutcome = FocalLossServiceImpl::BatchOutcome;

absl::Status InMessage(const absl::Status& status, absl::string_view what, absl::string_view request_id) {
  return FocalLossServiceImpl::InMessage(status, what, request_id);
}

/// Requests up to this size (~64K float32 logits) compute on the gRPC thread that received them.
constexpr int64_t kInlineRequestBytes = 256 << 10;

double SecondsSince(Clock::time_point t) {
  return std::chrono::duration<double>(Clock::now() - t).count();
}

/// What the reactors with one answer (Compute, Evaluate) keep about their call: its CallState,
/// whether they have answered, and whether the server's shutdown cut them off before that.
struct SingleAnswer {
  explicit SingleAnswer(std::chrono::system_clock::time_point deadline) : state(deadline) {}
  /// For OnCancel: whoever cancelled, nothing more is computed.
  void Cancelled(const FocalLossServiceImpl& service) {
    const CallState::Ender by = service.Canceller();
    if (by == CallState::Ender::kShutdown && !answered) cut_off = true;
    state.Cancel(by);
  }
  CallState state;
  std::atomic<bool> answered{false}, cut_off{false};
};

}  // namespace

absl::Status FocalLossServiceImpl::InMessage(const absl::Status& status, absl::string_view what,
                                             absl::string_view request_id) {
  if (status.ok() || what.empty()) return status;
  return absl::Status(status.code(), absl::StrCat(what, request_id.empty() ? "" : " (request '", Loggable(request_id),
                                                  request_id.empty() ? "" : "')", ": ", status.message()));
}

absl::Status ConcurrencyLimit() {
  return absl::ResourceExhaustedError(
      "the server is at its concurrency limit (--max-concurrent + --max-queue requests); retry with backoff");
}

grpc::Status ToGrpcStatus(const absl::Status& status) {
  if (status.ok()) return grpc::Status::OK;
  const absl::Status capped = CapMessage(status);
  // absl and gRPC share the canonical code numbering.
  return grpc::Status(static_cast<grpc::StatusCode>(capped.code()), std::string(capped.message()));
}

void CallState::Cancel(Ender by) {
  Ender expected = Ender::kNobody;
  ender_.compare_exchange_strong(expected, by);
}

absl::Status CallState::StillWanted() const {
  switch (ender_.load()) {
    case Ender::kNobody: break;
    case Ender::kClient: return absl::CancelledError("the client cancelled the call");
    case Ender::kEarlierFailure: return absl::CancelledError("not computed: an earlier batch of the stream failed");
    case Ender::kShutdown: return absl::CancelledError("cut off by the server's shutdown (--drain-timeout)");
  }
  if (deadline_ <= std::chrono::system_clock::now()) {
    return absl::DeadlineExceededError("the deadline passed before the computation started");
  }
  return absl::OkStatus();
}

FocalLossServiceImpl::FocalLossServiceImpl(ServiceConfig config) : config_(std::move(config)) {}

void FocalLossServiceImpl::CallStarted() const {
  ++calls_started_;
  ++in_flight_;
  config_.metrics->CallStarted();
}

void FocalLossServiceImpl::CallAnswered() const { config_.metrics->CallEnded(); }

void FocalLossServiceImpl::CallEnded(bool cut_off) const {
  if (cut_off) ++cut_off_;
  --in_flight_;
}

void FocalLossServiceImpl::StartDraining() {
  draining_ = true;
  std::lock_guard<std::mutex> lock(streams_mu_);
  for (Drainable* stream : streams_) stream->Drain();
}

void FocalLossServiceImpl::AddDrainable(Drainable* stream) const {
  std::lock_guard<std::mutex> lock(streams_mu_);
  streams_.insert(stream);
  if (draining_) stream->Drain();
}

void FocalLossServiceImpl::RemoveDrainable(Drainable* stream) const {
  std::lock_guard<std::mutex> lock(streams_mu_);
  streams_.erase(stream);
}

void FocalLossServiceImpl::Release(int64_t bytes) const {
  if (bytes == 0) return;
  buffered_bytes_ -= bytes;
  if (buffered_bytes_.load() >= config_.limits.max_buffered_bytes) return;
  std::vector<std::function<void()>> ready;
  {
    std::lock_guard<std::mutex> lock(waiters_mu_);
    ready.swap(waiters_);
  }
  for (auto& resume : ready) resume();
}

void FocalLossServiceImpl::WhenRoom(std::function<void()> resume) const {
  {
    std::lock_guard<std::mutex> lock(waiters_mu_);
    if (buffered_bytes_.load() >= config_.limits.max_buffered_bytes) {
      waiters_.push_back(std::move(resume));
      return;
    }
  }
  resume();
}

absl::Status FocalLossServiceImpl::Admit(grpc::CallbackServerContext* context) const {
  if (draining_) return absl::UnavailableError("the server is shutting down; retry on another replica");
  if (config_.auth_token.empty()) return absl::OkStatus();
  const auto& metadata = context->client_metadata();
  const auto it = metadata.find("authorization");
  if (it == metadata.end()) {
    return absl::UnauthenticatedError("missing 'authorization: Bearer <token>' metadata");
  }
  if (!BearerTokenMatches(absl::string_view(it->second.data(), it->second.size()), config_.auth_token)) {
    return absl::UnauthenticatedError("the bearer token is not valid");
  }
  return absl::OkStatus();
}

BatchOutcome FocalLossServiceImpl::RunBatch(const CallState& call, grpc::ByteBuffer& bytes, absl::string_view what,
                                            Clock::time_point queued_at, const Decoder& decode) const {
  BatchOutcome out;
  out.queue_seconds = SecondsSince(queued_at);
  // The test-only delay wakes up early when the call is cancelled, as a real wait would.
  const Clock::time_point delay_end = Clock::now() + std::chrono::milliseconds(config_.debug_delay_ms);
  while (Clock::now() < delay_end && !call.cancelled()) std::this_thread::sleep_for(std::chrono::milliseconds(5));
  out.status = call.StillWanted();
  if (!out.status.ok()) {
    bytes.Clear();
    return out;
  }
  // Whatever the request or the backend does, the worker thread survives: an exception
  // (bad_alloc on a huge but valid request, say) fails this call alone.
  try {
    absl::StatusOr<LossJob> job = decode(bytes, what, out);
    if (!job.ok()) {
      out.status = job.status();
      return out;
    }
    const Clock::time_point start = Clock::now();
    absl::StatusOr<LossResult> result = config_.backend->Compute(*job);
    out.compute_seconds = SecondsSince(start);
    // A batch is what changes the device memory held (a CUDA pool grows to the largest batch
    // and keeps it), so the gauge is read here, failed batches included.
    config_.metrics->SetDeviceMemoryBytes(static_cast<double>(config_.backend->DeviceMemoryBytes()));
    if (!result.ok()) {
      out.status = InMessage(result.status(), what, out.request_id);
      return out;
    }
    out.elements = static_cast<int64_t>(job->logits.size_bytes / DTypeSize(job->logits.dtype));
    out.result = std::move(*result);
  } catch (const std::exception& e) {
    out.status = InMessage(absl::InternalError(absl::StrCat("the server failed computing it (", e.what(), ")")), what,
                           out.request_id);
  } catch (...) {
    out.status = InMessage(absl::InternalError("the server failed computing it"), what, out.request_id);
  }
  return out;
}

absl::StatusOr<LossJob> FocalLossServiceImpl::DecodeCompute(grpc::ByteBuffer& bytes, absl::string_view what,
                                                           v1::ComputeRequest& request, BatchOutcome& out,
                                                           const std::function<absl::Status(LossJob&)>& edit) const {
  RETURN_IF_ERROR(ParseDetachingTensors(bytes, &request, what.empty() ? "the request" : what,
                                        config_.max_message_bytes, &out.received));
  out.request_id = request.request_id();
  if (request.has_evaluate() && !edit) {
    return InMessage(absl::InvalidArgumentError("evaluate is set; EvaluateOptions are for the Evaluate RPC"), what,
                     out.request_id);
  }
  if (edit && (request.has_gradient_output() || request.has_losses_output())) {
    return InMessage(absl::InvalidArgumentError(absl::StrCat(request.has_gradient_output() ? "gradient_output" : "losses_output",
                                                             " is set; Evaluate answers with sums alone")),
                     what, out.request_id);
  }
  out.shm.registry = config_.shared_memory;
  absl::StatusOr<LossJob> job = DecodeComputeRequest(request, config_.limits, &out.shm, &out.received.data);
  if (!job.ok()) return InMessage(job.status(), what, out.request_id);
  out.variant = VariantName(job->spec.params);
  if (edit) RETURN_IF_ERROR(InMessage(edit(*job), what, out.request_id));
  return job;
}

BatchOutcome FocalLossServiceImpl::RunBatch(const CallState& call, grpc::ByteBuffer& bytes, absl::string_view what,
                                            v1::ComputeRequest& request, Clock::time_point queued_at,
                                            const std::function<absl::Status(LossJob&)>& edit) const {
  return RunBatch(call, bytes, what, queued_at, [&](grpc::ByteBuffer& b, absl::string_view w, BatchOutcome& out) {
    return DecodeCompute(b, w, request, out, edit);
  });
}

absl::Status FocalLossServiceImpl::EncodeAnswer(BatchOutcome& outcome, grpc::ByteBuffer* bytes) const {
  try {
    v1::ComputeResponse response;
    RETURN_IF_ERROR(EncodeComputeResponse(std::move(outcome.result), outcome.request_id,
                                          static_cast<int64_t>(outcome.queue_seconds * 1e6), &response, &outcome.shm));
    outcome.shm = SharedMemoryUse();  // the regions and the request's bytes are let go once the answer is made
    outcome.received = wire::ReceivedTensors();
    return SerializeWithTensorSlices(response, config_.max_message_bytes, bytes);
  } catch (const std::exception& e) {
    return absl::InternalError(absl::StrCat("the server failed encoding the answer (", e.what(), ")"));
  }
}

void FocalLossServiceImpl::Report(absl::string_view method, absl::string_view request_id,
                                  const absl::Status& status, const BatchOutcome* outcome,
                                  Clock::time_point started, int64_t bytes_in, int64_t bytes_out) const {
  const std::string code = absl::StatusCodeToString(status.code());
  CallRecord record;
  record.method = method;
  record.code = code;
  record.latency_seconds = SecondsSince(started);
  record.bytes_in = bytes_in;
  record.bytes_out = bytes_out;
  if (outcome) {
    record.variant = outcome->variant;
    record.queue_seconds = outcome->queue_seconds;
    record.compute_seconds = outcome->compute_seconds;
    if (status.ok()) record.elements = outcome->elements;
  }
  config_.metrics->Record(record);
  if (!status.ok()) {
    const absl::Status capped = CapMessage(status);
    std::fprintf(stderr, "focalserve: request '%s' %.*s failed: %s: %.*s\n", Loggable(request_id).c_str(),
                 static_cast<int>(method.size()), method.data(), code.c_str(),
                 static_cast<int>(capped.message().size()), capped.message().data());
  }
}

// ------------------------------------------------------------------------------------------
// Compute

namespace {

class ComputeReactor final : public grpc::ServerUnaryReactor, public RefCounted {
 public:
  ComputeReactor(const FocalLossServiceImpl* service, grpc::CallbackServerContext* context,
                 const grpc::ByteBuffer* request, grpc::ByteBuffer* response, const char* method,
                 std::unique_ptr<FocalLossServiceImpl::UnaryCodec> codec)
      : service_(service),
        method_(method),
        codec_(std::move(codec)),
        call_(context->deadline()),
        request_bytes_(*request),  // shares the slices: no copy
        response_(response),
        started_(Clock::now()),
        bytes_in_(static_cast<int64_t>(request->Length())) {
    service_->CallStarted();
  }

  void Start(grpc::CallbackServerContext* context) {
    if (absl::Status admitted = service_->Admit(context); !admitted.ok()) {
      request_bytes_.Clear();
      Complete(admitted, nullptr);
      return;
    }
    // A small batch computes in microseconds, less than a hand-over to a worker thread costs:
    // it runs here when a slot is free. Large ones go to the workers, keeping gRPC's threads free.
    const auto run = [this] { Run(); };
    // (A request naming shared memory is small however large its tensors: with shared memory on,
    // every call goes to the workers.)
    if (bytes_in_ <= kInlineRequestBytes && service_->config().debug_delay_ms == 0 &&
        service_->config().shared_memory == nullptr && service_->config().queue->TryRunInline(run)) {
      return;
    }
    Ref();
    if (!service_->config().queue->TrySubmit([this] {
          Run();
          Unref();
        })) {
      Unref();
      request_bytes_.Clear();
      Complete(ConcurrencyLimit(), nullptr);
    }
  }

  void OnCancel() override { call_.Cancelled(*service_); }

  void OnDone() override {
    service_->CallEnded(call_.cut_off);
    Unref();
  }

 private:
  void Run() {
    BatchOutcome outcome = service_->RunBatch(
        call_.state, request_bytes_, "", started_,
        [this](grpc::ByteBuffer& bytes, absl::string_view, BatchOutcome& out) { return codec_->Decode(bytes, out); });
    if (outcome.status.ok()) {
      try {
        outcome.status = codec_->Encode(outcome, response_);
      } catch (const std::exception& e) {
        outcome.status = absl::InternalError(absl::StrCat("the server failed encoding the answer (", e.what(), ")"));
      }
    }
    Complete(outcome.status, &outcome);
  }

  void Complete(const absl::Status& status, const BatchOutcome* outcome) {
    call_.answered = true;
    codec_->Finished(status, outcome);
    service_->Report(method_, outcome ? outcome->request_id : "", status, outcome, started_, bytes_in_,
                     status.ok() ? static_cast<int64_t>(response_->Length()) : 0);
    if (!status.ok()) response_->Clear();
    service_->CallAnswered();
    Finish(ToGrpcStatus(status));
  }

  const FocalLossServiceImpl* const service_;
  const char* const method_;
  const std::unique_ptr<FocalLossServiceImpl::UnaryCodec> codec_;
  SingleAnswer call_;
  grpc::ByteBuffer request_bytes_;
  grpc::ByteBuffer* const response_;
  const Clock::time_point started_;
  const int64_t bytes_in_;
};

/// focal.v1's Compute: a ComputeRequest in, a ComputeResponse out.
class ComputeCodec final : public FocalLossServiceImpl::UnaryCodec {
 public:
  explicit ComputeCodec(const FocalLossServiceImpl* service) : service_(service) {}
  absl::StatusOr<LossJob> Decode(grpc::ByteBuffer& bytes, BatchOutcome& out) override {
    return service_->DecodeCompute(bytes, "", request_, out);
  }
  absl::Status Encode(BatchOutcome& outcome, grpc::ByteBuffer* bytes) override {
    return service_->EncodeAnswer(outcome, bytes);
  }

 private:
  const FocalLossServiceImpl* const service_;
  v1::ComputeRequest request_;
};

}  // namespace

grpc::ServerUnaryReactor* FocalLossServiceImpl::ServeUnary(grpc::CallbackServerContext* context,
                                                           const grpc::ByteBuffer* request, grpc::ByteBuffer* response,
                                                           const char* method, std::unique_ptr<UnaryCodec> codec) const {
  auto* reactor = new ComputeReactor(this, context, request, response, method, std::move(codec));
  reactor->Start(context);
  return reactor;
}

grpc::ServerUnaryReactor* FocalLossServiceImpl::Compute(grpc::CallbackServerContext* context,
                                                        const grpc::ByteBuffer* request, grpc::ByteBuffer* response) {
  return ServeUnary(context, request, response, "Compute", std::make_unique<ComputeCodec>(this));
}

// ------------------------------------------------------------------------------------------
// ComputeStream: batches computed as they arrive (up to kMaxInFlight at once per stream) and
// answered in order. Reading pauses while kMaxInFlight batches are unanswered, and while the
// answers of all streams together that clients have not read exceed --max-buffered-bytes, so
// slow readers hold bounded memory however many there are.

namespace {

constexpr size_t kMaxInFlight = 2;

class ComputeStreamReactor final : public grpc::ServerBidiReactor<grpc::ByteBuffer, grpc::ByteBuffer>,
                                   public RefCounted,
                                   public Drainable {
 public:
  ComputeStreamReactor(const FocalLossServiceImpl* service, grpc::CallbackServerContext* context)
      : service_(service), context_(context), state_(context->deadline()), started_(Clock::now()) {
    service_->CallStarted();
    if (absl::Status admitted = service_->Admit(context); !admitted.ok()) {
      service_->Report("ComputeStream", "", admitted, nullptr, started_, 0, 0);
      std::lock_guard<std::mutex> lock(mu_);
      FinishLocked(admitted);
      return;
    }
    service_->AddDrainable(this);
    registered_ = true;
    bool read;
    {
      std::lock_guard<std::mutex> lock(mu_);
      read = ClaimReadLocked();
    }
    if (read) ReadWhenRoom();
  }

  void OnReadDone(bool ok) override {
    bool read;
    {
      std::lock_guard<std::mutex> lock(mu_);
      reading_now_ = false;
      std::unique_ptr<Slot> slot = std::move(reading_);
      if (!ok) {
        // The client half-closed, or the call failed (cancelled, or a message over the size
        // limit): only the first is the end of the batches.
        if (context_->IsCancelled()) {
          state_.Cancel(service_->Canceller());
          FinishLocked(absl::CancelledError("the call was cancelled before all its batches were read"));
        }
        reads_done_ = true;
        MaybeWriteLocked();
        return;
      }
      if (finished_) return;
      ++received_;
      slot->what = absl::StrCat("message ", received_, " of the stream");
      slot->started = Clock::now();
      slot->bytes_in = static_cast<int64_t>(slot->bytes.Length());
      // What a batch holds counts against the budget from the moment it is read: its request
      // until computed, then its answer until written.
      slot->held = slot->bytes_in;
      held_ += slot->held;
      service_->Hold(slot->held);
      Slot* s = slot.get();
      slots_.push_back(std::move(slot));
      Ref();
      if (!service_->config().queue->TrySubmit([this, s] { Compute(s); })) {
        Unref();
        s->bytes.Clear();
        s->status = InMessage(ConcurrencyLimit(), s->what, "");
        s->ready = true;
      }
      read = ClaimReadLocked();
      MaybeWriteLocked();
    }
    if (read) ReadWhenRoom();
  }

  void OnWriteDone(bool ok) override {
    bool read = false;
    int64_t released = 0;
    {
      std::lock_guard<std::mutex> lock(mu_);
      writing_ = false;
      if (!ok) {  // the client went away
        state_.Cancel(CallState::Ender::kClient);
        FinishLocked(absl::CancelledError("the client stopped reading"));
        return;
      }
      released = slots_.front()->held;
      held_ -= released;
      ++answered_;
      slots_.pop_front();
      read = ClaimReadLocked();
      MaybeWriteLocked();
    }
    service_->Release(released);
    if (read) ReadWhenRoom();
  }

  void OnCancel() override {
    const CallState::Ender by = service_->Canceller();
    std::lock_guard<std::mutex> lock(mu_);
    if (by == CallState::Ender::kShutdown && (!finished_ || !slots_.empty())) cut_off_ = true;
    state_.Cancel(by);
  }

  void Drain() override {
    std::lock_guard<std::mutex> lock(mu_);
    draining_ = true;
    MaybeWriteLocked();
  }

  void OnDone() override {
    if (registered_) service_->RemoveDrainable(this);
    int64_t held;
    {
      std::lock_guard<std::mutex> lock(mu_);
      held = held_;
      held_ = 0;
    }
    service_->Release(held);
    service_->CallEnded(cut_off_);
    Unref();
  }

 private:
  struct Slot {
    grpc::ByteBuffer bytes;   ///< as received; cleared once parsed
    v1::ComputeRequest request;
    grpc::ByteBuffer answer;  ///< the serialized ComputeResponse
    absl::Status status;
    std::string what;
    bool ready = false;
    int64_t held = 0;  ///< bytes of `answer` counted against the response budget
    Clock::time_point started;
    int64_t bytes_in = 0;
  };

  void Compute(Slot* slot) {
    BatchOutcome outcome = service_->RunBatch(state_, slot->bytes, slot->what, slot->request, slot->started);
    // A batch skipped because an earlier one failed is not a failure of its own: the stream
    // reports that one.
    const bool skipped = outcome.compute_seconds < 0 && state_.ender() == CallState::Ender::kEarlierFailure;
    if (outcome.status.ok()) outcome.status = service_->EncodeAnswer(outcome, &slot->answer);
    slot->request.Clear();  // the answer is made: the parsed request is no longer needed
    const int64_t bytes_out = outcome.status.ok() ? static_cast<int64_t>(slot->answer.Length()) : 0;
    if (!skipped) {
      service_->Report("ComputeStream", outcome.request_id, outcome.status, &outcome, slot->started, slot->bytes_in,
                       bytes_out);
    }
    int64_t released = 0;
    {
      std::lock_guard<std::mutex> lock(mu_);
      slot->status = outcome.status;
      slot->ready = true;
      if (!outcome.status.ok()) {
        state_.Cancel(CallState::Ender::kEarlierFailure);  // batches behind a failed one are not computed
      } else if (finished_) {
        slot->answer.Clear();  // nobody will read it
      }
      // The request's share becomes the answer's (none when there is nothing to write).
      const int64_t answer = outcome.status.ok() && !finished_ ? bytes_out : 0;
      if (!finished_) {
        service_->Hold(answer);
        released = slot->held;
        held_ += answer - slot->held;
        slot->held = answer;
      }
      MaybeWriteLocked();
    }
    service_->Release(released);
    Unref();
  }

  /// Whether to read the next batch now (then reading_now_ is set and the caller, without the
  /// lock, waits for room in the response budget and reads).
  bool ClaimReadLocked() {
    if (finished_ || reads_done_ || draining_ || reading_now_ || slots_.size() >= kMaxInFlight) return false;
    reading_now_ = true;
    return true;
  }

  void ReadWhenRoom() {
    Ref();
    service_->WhenRoom([this] {
      {
        std::lock_guard<std::mutex> lock(mu_);
        if (!finished_ && !draining_) {
          reading_ = std::make_unique<Slot>();
          StartRead(&reading_->bytes);
        } else {
          reading_now_ = false;
        }
      }
      Unref();
    });
  }

  /// Writes the oldest answer when it is ready; a failed batch ends the stream with its status
  /// (after the answers before it); the stream ends OK once every batch is answered. Draining,
  /// it ends as soon as every batch read has been answered.
  void MaybeWriteLocked() {
    if (finished_ || writing_) return;
    if (slots_.empty()) {
      if (reads_done_) {
        FinishLocked(absl::OkStatus());
      } else if (draining_) {
        FinishLocked(absl::UnavailableError(absl::StrCat(
            "the server is shutting down: all ", answered_,
            " batches it read from this stream were answered; send the rest to another replica")));
      }
      return;
    }
    Slot* front = slots_.front().get();
    if (!front->ready) return;
    if (!front->status.ok()) {
      FinishLocked(front->status);
      return;
    }
    writing_ = true;
    StartWrite(&front->answer);
  }

  void FinishLocked(const absl::Status& status) {
    if (finished_) return;
    finished_ = true;
    service_->CallAnswered();
    Finish(ToGrpcStatus(status));
  }

  const FocalLossServiceImpl* const service_;
  grpc::CallbackServerContext* const context_;  ///< only in reactor callbacks (see the top)
  CallState state_;
  const Clock::time_point started_;
  bool registered_ = false;
  std::atomic<bool> cut_off_{false};
  std::mutex mu_;
  std::unique_ptr<Slot> reading_;
  std::deque<std::unique_ptr<Slot>> slots_;  ///< read, not yet answered, in order
  int64_t received_ = 0, answered_ = 0, held_ = 0;
  bool reads_done_ = false, reading_now_ = false, writing_ = false, finished_ = false, draining_ = false;
};

}  // namespace

grpc::ServerBidiReactor<grpc::ByteBuffer, grpc::ByteBuffer>* FocalLossServiceImpl::ComputeStream(
    grpc::CallbackServerContext* context) {
  return new ComputeStreamReactor(this, context);
}

// ------------------------------------------------------------------------------------------
// Evaluate: one batch at a time (the next is read once the previous is accumulated), per-item
// losses summed exactly, overall and per class.

namespace {

class EvaluateReactor final : public grpc::ServerReadReactor<grpc::ByteBuffer>, public RefCounted {
 public:
  EvaluateReactor(const FocalLossServiceImpl* service, grpc::CallbackServerContext* context,
                  grpc::ByteBuffer* response)
      : service_(service), context_(context), call_(context->deadline()), response_(response), started_(Clock::now()) {
    service_->CallStarted();
    if (absl::Status admitted = service_->Admit(context); !admitted.ok()) {
      Complete(admitted);
      return;
    }
    StartRead(&bytes_);
  }

  void OnReadDone(bool ok) override {
    if (!ok) {
      // The client half-closed after its last batch, or the call failed (cancelled, or a
      // message over the size limit): only the first has totals to answer with.
      if (context_->IsCancelled()) {
        call_.state.Cancel(service_->Canceller());
        Complete(absl::CancelledError(absl::StrCat("the call was cancelled after ", totals_.batches(), " batches")));
        return;
      }
      Complete(Answer());
      return;
    }
    bytes_in_ += static_cast<int64_t>(bytes_.Length());
    Ref();
    const Clock::time_point queued_at = Clock::now();
    const bool queued = service_->config().queue->TrySubmit([this, queued_at] {
      Accumulate(queued_at);
      Unref();
    });
    if (!queued) {
      Unref();
      Complete(ConcurrencyLimit());
    }
  }

  void OnCancel() override { call_.Cancelled(*service_); }

  void OnDone() override {
    service_->CallEnded(call_.cut_off);
    Unref();
  }

 private:
  absl::Status Answer() {
    v1::EvaluateResponse response = totals_.ToResponse();
    analyses_.ToResponse(&response);
    response.set_backend(service_->config().backend->Name());
    return SerializeMessage(response, service_->config().max_message_bytes, response_);
  }

  void Accumulate(Clock::time_point queued_at) {
    LossJob job;
    const std::string what = absl::StrCat("message ", totals_.batches() + 1, " of the evaluation");
    auto outcome = service_->RunBatch(call_.state, bytes_, what, request_, queued_at, [&](LossJob& j) {
      RETURN_IF_ERROR(PrepareForEvaluation(j));
      RETURN_IF_ERROR(analyses_.Check(request_.evaluate(), j));
      job = j;
      return absl::OkStatus();
    });
    if (!outcome.status.ok()) {
      Complete(outcome.status);
      return;
    }
    elements_ += outcome.elements;
    totals_.AddTiming(outcome.result.compute_micros, static_cast<int64_t>(outcome.queue_seconds * 1e6));
    absl::Status added;
    try {
      added = InMessage(totals_.Add(job, outcome.result), what, outcome.request_id);
      if (added.ok()) added = InMessage(analyses_.Add(job), what, outcome.request_id);
      if (added.ok()) added = InMessage(SharedMemoryIntact(outcome.shm), what, outcome.request_id);
    } catch (const std::exception& e) {
      added = InMessage(absl::InternalError(absl::StrCat("the server failed accumulating it (", e.what(), ")")), what,
                        outcome.request_id);
    }
    if (!added.ok()) {
      Complete(added);
      return;
    }
    request_.Clear();
    StartRead(&bytes_);  // the next batch, only now: one batch in memory at a time
  }

  void Complete(const absl::Status& status) {
    call_.answered = true;
    BatchOutcome outcome;
    outcome.variant = totals_.variant();
    outcome.elements = elements_;
    service_->Report("Evaluate", request_.request_id(), status, &outcome, started_, bytes_in_,
                     status.ok() ? static_cast<int64_t>(response_->Length()) : 0);
    if (!status.ok()) response_->Clear();
    service_->CallAnswered();
    Finish(ToGrpcStatus(status));
  }

  const FocalLossServiceImpl* const service_;
  grpc::CallbackServerContext* const context_;  ///< only in reactor callbacks (see the top)
  SingleAnswer call_;
  grpc::ByteBuffer* const response_;
  const Clock::time_point started_;
  grpc::ByteBuffer bytes_;
  v1::ComputeRequest request_;
  EvaluationTotals totals_;
  EvaluationAnalyses analyses_;
  int64_t elements_ = 0, bytes_in_ = 0;
};

}  // namespace

grpc::ServerReadReactor<grpc::ByteBuffer>* FocalLossServiceImpl::Evaluate(grpc::CallbackServerContext* context,
                                                                          grpc::ByteBuffer* response) {
  return new EvaluateReactor(this, context, response);
}

// ------------------------------------------------------------------------------------------

// ------------------------------------------------------------------------------------------
// Shared memory: a region lives as long as its RegisterSharedMemory call (a lease), which the
// server answers once, when the region is mapped, and keeps open until the client cancels it or
// disconnects, UnregisterSharedMemory removes the region, or the server drains.

namespace {

absl::Status SharedMemoryOff() {
  return absl::FailedPreconditionError(
      "this server takes no shared memory: start focalserve with --shared-memory=on, on the clients' host");
}

class SharedMemoryLease final : public grpc::ServerWriteReactor<v1::SharedMemoryRegion>, public Drainable {
 public:
  SharedMemoryLease(const FocalLossServiceImpl* service, grpc::CallbackServerContext* context,
                    const v1::RegisterSharedMemoryRequest* request)
      : service_(service), started_(FocalLossServiceImpl::Clock::now()), name_(request->name()) {
    service_->CallStarted();
    // Before the registry can call back (another call's Unregister): an end from then on waits
    // for the answer's write, which gRPC takes no Finish before.
    control_->reactor = this;
    control_->writing = true;
    absl::Status status = service_->Admit(context);
    SharedMemoryRegistry* registry = service_->config().shared_memory;
    if (status.ok() && registry == nullptr) status = SharedMemoryOff();
    if (status.ok()) {
      // UnregisterSharedMemory ends the lease with OK; the control block outlives this reactor.
      std::weak_ptr<Control> control = control_;
      absl::StatusOr<std::shared_ptr<SharedMemoryRegion>> region = registry->Register(*request, [control] {
        if (const std::shared_ptr<Control> c = control.lock()) c->End(absl::OkStatus());
      });
      if (region.ok()) {
        region_ = std::move(*region);
      } else {
        status = region.status();
      }
    }
    service_->Report("RegisterSharedMemory", "", status, nullptr, started_, 0, 0);
    if (!status.ok()) {
      {
        std::lock_guard<std::mutex> lock(control_->mu);
        control_->writing = false;  // nothing is written: the refusal finishes at once
      }
      control_->End(status);
      return;
    }
    answer_ = region_->info();
    StartWrite(&answer_);
    service_->AddDrainable(this);  // after the write: a drain now only ends the lease
    registered_ = true;
  }

  void OnWriteDone(bool ok) override {
    control_->WriteDone();
    if (!ok) control_->End(absl::CancelledError("the client went away"));
  }
  void OnCancel() override { control_->End(absl::CancelledError("the client cancelled the lease")); }
  void Drain() override { control_->End(absl::UnavailableError("the server is shutting down")); }
  void OnDone() override {
    if (registered_) service_->RemoveDrainable(this);
    if (region_) service_->config().shared_memory->UnregisterIf(name_, region_.get());
    {
      std::lock_guard<std::mutex> lock(control_->mu);
      control_->reactor = nullptr;
    }
    service_->CallEnded(false);
    delete this;
  }

 private:
  /// Finishes the call once, from whichever of the client, the unregistration, the drain or a
  /// refused registration comes first: what the registry's callback reaches, without the
  /// reactor's lifetime.
  /// gRPC takes no Finish while a write is outstanding: an end that comes during the one write
  /// waits for OnWriteDone.
  struct Control {
    std::mutex mu;
    SharedMemoryLease* reactor = nullptr;  ///< null after OnDone
    bool finished = false, writing = false;
    std::optional<absl::Status> pending;  ///< an end that came while writing
    void End(const absl::Status& status) {
      std::lock_guard<std::mutex> lock(mu);
      if (finished || reactor == nullptr) return;
      if (writing) {
        if (!pending) pending = status;
        return;
      }
      FinishLocked(status);
    }
    void WriteDone() {
      std::lock_guard<std::mutex> lock(mu);
      writing = false;
      if (pending && !finished && reactor != nullptr) FinishLocked(*pending);
    }
    void FinishLocked(const absl::Status& status) {
      finished = true;
      reactor->service_->CallAnswered();
      reactor->Finish(ToGrpcStatus(status));
    }
  };

  const FocalLossServiceImpl* const service_;
  const FocalLossServiceImpl::Clock::time_point started_;
  const std::string name_;
  std::shared_ptr<Control> control_ = std::make_shared<Control>();
  std::shared_ptr<SharedMemoryRegion> region_;
  v1::SharedMemoryRegion answer_;
  bool registered_ = false;
};

}  // namespace

grpc::ServerWriteReactor<v1::SharedMemoryRegion>* FocalLossServiceImpl::RegisterSharedMemory(
    grpc::CallbackServerContext* context, const v1::RegisterSharedMemoryRequest* request) {
  return new SharedMemoryLease(this, context, request);
}

grpc::ServerUnaryReactor* FocalLossServiceImpl::AnswerAtOnce(grpc::CallbackServerContext* context, const char* method,
                                                             const std::function<absl::Status()>& answer,
                                                             const google::protobuf::Message& response) const {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  const Clock::time_point started = Clock::now();
  CallStarted();
  absl::Status status = Admit(context);
  if (status.ok()) status = answer();
  Report(method, "", status, nullptr, started, 0, status.ok() ? static_cast<int64_t>(response.ByteSizeLong()) : 0);
  CallAnswered();
  CallEnded(false);
  reactor->Finish(ToGrpcStatus(status));
  return reactor;
}

grpc::ServerUnaryReactor* FocalLossServiceImpl::UnregisterSharedMemory(grpc::CallbackServerContext* context,
                                                                       const v1::UnregisterSharedMemoryRequest* request,
                                                                       v1::UnregisterSharedMemoryResponse* response) {
  return AnswerAtOnce(context, "UnregisterSharedMemory", [&] {
    return config_.shared_memory == nullptr ? SharedMemoryOff() : config_.shared_memory->Unregister(request->name());
  }, *response);
}

grpc::ServerUnaryReactor* FocalLossServiceImpl::ListSharedMemory(grpc::CallbackServerContext* context,
                                                                 const v1::ListSharedMemoryRequest* /*request*/,
                                                                 v1::ListSharedMemoryResponse* response) {
  return AnswerAtOnce(context, "ListSharedMemory", [&] {
    if (config_.shared_memory == nullptr) return SharedMemoryOff();
    for (v1::SharedMemoryRegion& region : config_.shared_memory->List()) *response->add_regions() = std::move(region);
    return absl::OkStatus();
  }, *response);
}

grpc::ServerUnaryReactor* FocalLossServiceImpl::GetServerInfo(grpc::CallbackServerContext* context,
                                                              const v1::GetServerInfoRequest* /*request*/,
                                                              v1::ServerInfo* response) {
  return AnswerAtOnce(context, "GetServerInfo", [&] {
    *response = config_.info;
    return absl::OkStatus();
  }, *response);
}

}  // namespace focal::server
