#include "server/service.h"

#include <cstdio>
#include <deque>
#include <memory>
#include <mutex>
#include <thread>

#include "absl/strings/str_cat.h"
#include "server/exact_sum.h"

namespace focal::server {
namespace {

using Clock = FocalLossServiceImpl::Clock;

/// Requests up to this size (~64K float32 logits) compute on the gRPC thread that received them.
constexpr int64_t kInlineRequestBytes = 256 << 10;

double SecondsSince(Clock::time_point t) {
  return std::chrono::duration<double>(Clock::now() - t).count();
}

/// Cancelled or past its deadline: nothing is computed for it.
absl::Status CheckStillWanted(grpc::CallbackServerContext* context) {
  if (!context->IsCancelled()) return absl::OkStatus();
  if (context->deadline() <= std::chrono::system_clock::now()) {
    return absl::DeadlineExceededError("the deadline passed before the computation started");
  }
  return absl::CancelledError("the client cancelled the call");
}

/// Reference counting shared by the streaming reactors: gRPC holds one reference until
/// OnDone, each queued computation one until it has finished; the last one deletes.
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

}  // namespace

grpc::Status ToGrpcStatus(const absl::Status& status) {
  if (status.ok()) return grpc::Status::OK;
  // absl and gRPC share the canonical code numbering.
  return grpc::Status(static_cast<grpc::StatusCode>(status.code()), std::string(status.message()));
}

FocalLossServiceImpl::FocalLossServiceImpl(ServiceConfig config) : config_(std::move(config)) {}

void FocalLossServiceImpl::CallStarted() const {
  ++in_flight_;
  config_.metrics->CallStarted();
}

void FocalLossServiceImpl::CallEnded() const {
  --in_flight_;
  config_.metrics->CallEnded();
}

absl::Status FocalLossServiceImpl::Admit(grpc::CallbackServerContext* context) const {
  if (draining_) return absl::UnavailableError("the server is shutting down; retry on another replica");
  if (config_.auth_token.empty()) return absl::OkStatus();
  const auto& metadata = context->client_metadata();
  const auto it = metadata.find("authorization");
  if (it == metadata.end()) {
    return absl::UnauthenticatedError("missing 'authorization: Bearer <token>' metadata");
  }
  const absl::string_view value(it->second.data(), it->second.size());
  if (value != absl::StrCat("Bearer ", config_.auth_token)) {
    return absl::UnauthenticatedError("the bearer token is not valid");
  }
  return absl::OkStatus();
}

FocalLossServiceImpl::BatchOutcome FocalLossServiceImpl::RunBatch(
    grpc::CallbackServerContext* context, const v1::ComputeRequest& request, Clock::time_point queued_at,
    const std::function<void(LossJob&)>& edit) const {
  BatchOutcome out;
  out.queue_seconds = SecondsSince(queued_at);
  // The test-only delay wakes up early when the call is cancelled, as a real wait would.
  const Clock::time_point delay_end = Clock::now() + std::chrono::milliseconds(config_.debug_delay_ms);
  while (Clock::now() < delay_end && !context->IsCancelled()) std::this_thread::sleep_for(std::chrono::milliseconds(5));
  out.status = CheckStillWanted(context);
  if (!out.status.ok()) return out;
  absl::StatusOr<LossJob> job = DecodeComputeRequest(request, config_.limits);
  if (!job.ok()) {
    out.status = job.status();
    return out;
  }
  out.variant = VariantName(job->spec.params);
  if (edit) edit(*job);
  const Clock::time_point start = Clock::now();
  absl::StatusOr<LossResult> result = config_.backend->Compute(*job);
  out.compute_seconds = SecondsSince(start);
  if (!result.ok()) {
    out.status = result.status();
    return out;
  }
  out.elements = static_cast<int64_t>(job->logits.size_bytes / DTypeSize(job->logits.dtype));
  out.result = std::move(*result);
  return out;
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
    std::fprintf(stderr, "focalserve: request '%.*s' %.*s failed: %s: %.*s\n", static_cast<int>(request_id.size()),
                 request_id.data(), static_cast<int>(method.size()), method.data(), code.c_str(),
                 static_cast<int>(status.message().size()), status.message().data());
  }
}

// ------------------------------------------------------------------------------------------
// Compute

grpc::ServerUnaryReactor* FocalLossServiceImpl::Compute(grpc::CallbackServerContext* context,
                                                        const v1::ComputeRequest* request,
                                                        v1::ComputeResponse* response) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  const Clock::time_point started = Clock::now();
  const int64_t bytes_in = static_cast<int64_t>(request->ByteSizeLong());
  CallStarted();
  auto finish = [this, reactor, request, started, bytes_in](const absl::Status& status, const BatchOutcome* outcome,
                                                             int64_t bytes_out) {
    Report("Compute", request->request_id(), status, outcome, started, bytes_in, bytes_out);
    CallEnded();
    reactor->Finish(ToGrpcStatus(status));
  };
  if (absl::Status admitted = Admit(context); !admitted.ok()) {
    finish(admitted, nullptr, 0);
    return reactor;
  }
  auto work = [this, context, request, response, started, finish] {
    BatchOutcome outcome = RunBatch(context, *request, started);
    if (!outcome.status.ok()) return finish(outcome.status, &outcome, 0);
    EncodeComputeResponse(std::move(outcome.result), request->request_id(),
                          static_cast<int64_t>(outcome.queue_seconds * 1e6), response);
    finish(absl::OkStatus(), &outcome, static_cast<int64_t>(response->ByteSizeLong()));
  };
  // A small batch computes in microseconds, less than a hand-over to a worker thread costs:
  // it runs here when a slot is free. Large ones go to the workers, keeping gRPC's threads free.
  if (bytes_in <= kInlineRequestBytes && config_.debug_delay_ms == 0 && config_.queue->TryRunInline(work)) {
    return reactor;
  }
  if (!config_.queue->TrySubmit(std::move(work))) {
    finish(absl::ResourceExhaustedError("the server is at its concurrency limit (--max-concurrent + --max-queue "
                                        "requests); retry with backoff"),
           nullptr, 0);
  }
  return reactor;
}

// ------------------------------------------------------------------------------------------
// ComputeStream: batches computed as they arrive (up to kMaxInFlight at once per stream) and
// answered in order. Reading pauses while kMaxInFlight batches are unanswered, so a slow reader
// holds at most that many responses in the server.

namespace {

constexpr size_t kMaxInFlight = 2;

class ComputeStreamReactor final : public grpc::ServerBidiReactor<v1::ComputeRequest, v1::ComputeResponse>,
                                   public RefCounted {
 public:
  ComputeStreamReactor(FocalLossServiceImpl* service, grpc::CallbackServerContext* context)
      : service_(service), context_(context) {
    service_->CallStarted();
    if (absl::Status admitted = service_->Admit(context); !admitted.ok()) {
      service_->Report("ComputeStream", "", admitted, nullptr, Clock::now(), 0, 0);
      std::lock_guard<std::mutex> lock(mu_);
      FinishLocked(admitted);
      return;
    }
    std::lock_guard<std::mutex> lock(mu_);
    StartNewReadLocked();
  }

  void OnReadDone(bool ok) override {
    std::lock_guard<std::mutex> lock(mu_);
    if (!ok) {  // the client has sent its last batch
      reads_done_ = true;
      MaybeWriteLocked();
      return;
    }
    Slot* slot = reading_.get();
    slots_.push_back(std::move(reading_));
    if (finished_) return;
    slot->started = Clock::now();
    slot->bytes_in = static_cast<int64_t>(slot->request.ByteSizeLong());
    Ref();
    const bool queued = service_->config().queue->TrySubmit([this, slot] { Compute(slot); });
    if (!queued) {
      Unref();
      slot->status = absl::ResourceExhaustedError("the server is at its concurrency limit; retry with backoff");
      slot->ready = true;
    }
    if (slots_.size() < kMaxInFlight) {
      StartNewReadLocked();
    } else {
      read_paused_ = true;
    }
    MaybeWriteLocked();
  }

  void OnWriteDone(bool ok) override {
    std::lock_guard<std::mutex> lock(mu_);
    writing_ = false;
    if (!ok) {  // the client went away
      FinishLocked(absl::CancelledError("the client stopped reading"));
      return;
    }
    slots_.pop_front();
    if (read_paused_ && !reads_done_ && !finished_) {
      read_paused_ = false;
      StartNewReadLocked();
    }
    MaybeWriteLocked();
  }

  void OnDone() override {
    service_->CallEnded();
    Unref();
  }

 private:
  struct Slot {
    v1::ComputeRequest request;
    v1::ComputeResponse response;
    absl::Status status;
    bool ready = false;
    Clock::time_point started;
    int64_t bytes_in = 0;
  };

  void Compute(Slot* slot) {
    auto outcome = service_->RunBatch(context_, slot->request, slot->started);
    int64_t bytes_out = 0;
    if (outcome.status.ok()) {
      EncodeComputeResponse(std::move(outcome.result), slot->request.request_id(),
                            static_cast<int64_t>(outcome.queue_seconds * 1e6), &slot->response);
      bytes_out = static_cast<int64_t>(slot->response.ByteSizeLong());
    }
    service_->Report("ComputeStream", slot->request.request_id(), outcome.status, &outcome, slot->started,
                     slot->bytes_in, bytes_out);
    {
      std::lock_guard<std::mutex> lock(mu_);
      slot->status = outcome.status;
      slot->ready = true;
      MaybeWriteLocked();
    }
    Unref();
  }

  void StartNewReadLocked() {
    reading_ = std::make_unique<Slot>();
    StartRead(&reading_->request);
  }

  /// Writes the oldest answer when it is ready; a failed batch ends the stream with its status
  /// (after the answers before it); the stream ends OK once every batch is answered.
  void MaybeWriteLocked() {
    if (finished_ || writing_) return;
    if (slots_.empty()) {
      if (reads_done_) FinishLocked(absl::OkStatus());
      return;
    }
    Slot* front = slots_.front().get();
    if (!front->ready) return;
    if (!front->status.ok()) {
      FinishLocked(front->status);
      return;
    }
    writing_ = true;
    StartWrite(&front->response);
  }

  void FinishLocked(const absl::Status& status) {
    if (finished_) return;
    finished_ = true;
    Finish(ToGrpcStatus(status));
  }

  FocalLossServiceImpl* const service_;
  grpc::CallbackServerContext* const context_;
  std::mutex mu_;
  std::unique_ptr<Slot> reading_;
  std::deque<std::unique_ptr<Slot>> slots_;  ///< read, not yet answered, in order
  bool reads_done_ = false, read_paused_ = false, writing_ = false, finished_ = false;
};

}  // namespace

grpc::ServerBidiReactor<v1::ComputeRequest, v1::ComputeResponse>* FocalLossServiceImpl::ComputeStream(
    grpc::CallbackServerContext* context) {
  return new ComputeStreamReactor(this, context);
}

// ------------------------------------------------------------------------------------------
// Evaluate: one batch at a time (the next is read once the previous is accumulated), per-item
// losses summed exactly, overall and per class.

namespace {

/// Exact sums over a whole evaluation.
struct EvaluationTotals {
  ExactSum total;
  int64_t count = 0;
  std::vector<ExactSum> class_sums;
  std::vector<int64_t> class_counts;
  int64_t batches = 0;
  int64_t compute_micros = 0, queue_micros = 0;

  /// Adds one batch's per-item losses. Items are attributed to a class: the target class of
  /// the row for softmax_focal and focal_cosine; the class channel (dim 1) for sigmoid_focal
  /// and dynamic_focal, whose items are single logits. Ignored items add nothing.
  void Add(const LossJob& job, const LossResult& result) {
    ++batches;
    count += result.count;
    const Shape& shape = job.logits.shape;
    const int64_t channels = shape.size() >= 2 ? shape[1] : 1;
    if (static_cast<int64_t>(class_sums.size()) < channels) {
      class_sums.resize(channels);
      class_counts.resize(channels, 0);
    }
    const TensorView losses = result.losses->view();
    if (losses.dtype == DType::kFloat32) {
      // Float32 losses (every logits dtype but float64) go through integer buckets, ~10x
      // cheaper per item than ExactSum; per class too while that stays small in memory.
      ExactFloat32Sum batch_total;
      if (channels <= kBucketedClasses) {
        std::vector<ExactFloat32Sum> batch_classes(channels);
        ForEachItem(job, losses, [&](int64_t cls, double loss) {
          batch_total.Add(static_cast<float>(loss));
          batch_classes[cls].Add(static_cast<float>(loss));
          ++class_counts[cls];
        });
        for (int64_t c = 0; c < channels; ++c) batch_classes[c].AddTo(class_sums[c]);
      } else {
        ForEachItem(job, losses, [&](int64_t cls, double loss) {
          batch_total.Add(static_cast<float>(loss));
          class_sums[cls].Add(loss);
          ++class_counts[cls];
        });
      }
      batch_total.AddTo(total);
    } else {
      ForEachItem(job, losses, [&](int64_t cls, double loss) {
        total.Add(loss);
        class_sums[cls].Add(loss);
        ++class_counts[cls];
      });
    }
  }

  /// Up to this many classes, per-class sums use ExactFloat32Sum (2 KB each).
  static constexpr int64_t kBucketedClasses = 1024;

  /// f(class, loss) for every item that counts, in order; no division per item.
  template <class F>
  static void ForEachItem(const LossJob& job, const TensorView& losses, const F& f) {
    const Shape& shape = job.logits.shape;
    const int64_t channels = shape.size() >= 2 ? shape[1] : 1;
    const int64_t rows = shape.empty() ? 1 : shape[0];
    int64_t inner = 1;
    for (size_t d = 2; d < shape.size(); ++d) inner *= shape[d];
    std::optional<int64_t> ignore;
    if (const auto* p = std::get_if<SoftmaxFocalParams>(&job.spec.params)) ignore = p->ignore_index;
    if (const auto* p = std::get_if<SigmoidFocalParams>(&job.spec.params)) ignore = p->ignore_index;
    auto loss_at = [&](int64_t i) {
      return losses.dtype == DType::kFloat32 ? static_cast<double>(losses.As<float>()[i]) : losses.As<double>()[i];
    };
    const bool per_row = std::holds_alternative<SoftmaxFocalParams>(job.spec.params) ||
                         std::holds_alternative<FocalCosineParams>(job.spec.params);
    if (per_row) {  // items are positions [N, S]; class = target
      const int64_t items = rows * inner;
      for (int64_t i = 0; i < items; ++i) {
        const int64_t cls = LoadAsInt64(job.targets, i);
        if (ignore && cls == *ignore) continue;
        f(cls, loss_at(i));
      }
      return;
    }
    // Items are logits [N, C, S]; class = channel c. With class-index targets a row (n, s) can
    // be ignored as a whole.
    const bool index_targets = IsInteger(job.targets.dtype);
    if (shape.empty()) {
      f(0, loss_at(0));
      return;
    }
    for (int64_t n = 0; n < rows; ++n) {
      for (int64_t c = 0; c < channels; ++c) {
        const int64_t base = (n * channels + c) * inner;
        for (int64_t s = 0; s < inner; ++s) {
          if (index_targets && ignore && LoadAsInt64(job.targets, n * inner + s) == *ignore) continue;
          f(c, loss_at(base + s));
        }
      }
    }
  }
};

class EvaluateReactor final : public grpc::ServerReadReactor<v1::ComputeRequest>, public RefCounted {
 public:
  EvaluateReactor(FocalLossServiceImpl* service, grpc::CallbackServerContext* context,
                  v1::EvaluateResponse* response)
      : service_(service), context_(context), response_(response), started_(Clock::now()) {
    service_->CallStarted();
    if (absl::Status admitted = service_->Admit(context); !admitted.ok()) {
      Complete(admitted);
      return;
    }
    StartRead(&request_);
  }

  void OnReadDone(bool ok) override {
    if (!ok) {  // the last batch has been read
      response_->set_total_loss(totals_.total.Value());
      response_->set_count(totals_.count);
      response_->set_mean(totals_.count > 0 ? response_->total_loss() / static_cast<double>(totals_.count) : 0.0);
      for (size_t c = 0; c < totals_.class_sums.size(); ++c) {
        response_->add_class_loss_sums(totals_.class_sums[c].Value());
        response_->add_class_counts(totals_.class_counts[c]);
      }
      response_->set_batches(totals_.batches);
      response_->mutable_timing()->set_compute_micros(totals_.compute_micros);
      response_->mutable_timing()->set_queue_micros(totals_.queue_micros);
      response_->set_backend(service_->config().backend->Name());
      Complete(absl::OkStatus());
      return;
    }
    bytes_in_ += static_cast<int64_t>(request_.ByteSizeLong());
    Ref();
    const Clock::time_point queued_at = Clock::now();
    const bool queued = service_->config().queue->TrySubmit([this, queued_at] {
      Accumulate(queued_at);
      Unref();
    });
    if (!queued) {
      Unref();
      Complete(absl::ResourceExhaustedError("the server is at its concurrency limit; retry with backoff"));
    }
  }

  void OnDone() override {
    service_->CallEnded();
    Unref();
  }

 private:
  void Accumulate(Clock::time_point queued_at) {
    LossJob job;
    const auto outcome = service_->RunBatch(context_, request_, queued_at, [&job](LossJob& j) {
      j.spec.reduction = Reduction::kNone;  // per-item losses, summed exactly here
      j.spec.normalizer.reset();
      j.compute_gradient = false;
      j.grad_output = std::monostate{};
      j.output_dtype = j.logits.dtype == DType::kFloat64 ? DType::kFloat64 : DType::kFloat32;
      job = j;
    });
    if (!outcome.status.ok()) {
      Complete(absl::Status(outcome.status.code(), absl::StrCat("batch ", totals_.batches, " (request '",
                                                               request_.request_id(), "'): ", outcome.status.message())));
      return;
    }
    if (!variant_.empty() && outcome.variant != variant_) {
      Complete(absl::InvalidArgumentError(absl::StrCat("batch ", totals_.batches, " (request '", request_.request_id(),
                                                       "'): loss.variant is ", outcome.variant,
                                                       ", but the evaluation started with ", variant_,
                                                       "; one Evaluate call evaluates one loss")));
      return;
    }
    variant_ = outcome.variant;
    elements_ += outcome.elements;
    totals_.compute_micros += outcome.result.compute_micros;
    totals_.queue_micros += static_cast<int64_t>(outcome.queue_seconds * 1e6);
    totals_.Add(job, outcome.result);
    StartRead(&request_);  // the next batch, only now: one batch in memory at a time
  }

  void Complete(const absl::Status& status) {
    BatchOutcome outcome;
    outcome.variant = variant_;
    outcome.elements = elements_;
    service_->Report("Evaluate", request_.request_id(), status, &outcome, started_, bytes_in_,
                     status.ok() ? static_cast<int64_t>(response_->ByteSizeLong()) : 0);
    Finish(ToGrpcStatus(status));
  }

  using BatchOutcome = FocalLossServiceImpl::BatchOutcome;
  FocalLossServiceImpl* const service_;
  grpc::CallbackServerContext* const context_;
  v1::EvaluateResponse* const response_;
  const Clock::time_point started_;
  v1::ComputeRequest request_;
  EvaluationTotals totals_;
  std::string variant_;
  int64_t elements_ = 0, bytes_in_ = 0;
};

}  // namespace

grpc::ServerReadReactor<v1::ComputeRequest>* FocalLossServiceImpl::Evaluate(grpc::CallbackServerContext* context,
                                                                             v1::EvaluateResponse* response) {
  return new EvaluateReactor(this, context, response);
}

// ------------------------------------------------------------------------------------------

grpc::ServerUnaryReactor* FocalLossServiceImpl::GetServerInfo(grpc::CallbackServerContext* context,
                                                              const v1::GetServerInfoRequest* /*request*/,
                                                              v1::ServerInfo* response) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  const Clock::time_point started = Clock::now();
  absl::Status status = Admit(context);
  if (status.ok()) *response = config_.info;
  Report("GetServerInfo", "", status, nullptr, started, 0, status.ok() ? static_cast<int64_t>(response->ByteSizeLong()) : 0);
  reactor->Finish(ToGrpcStatus(status));
  return reactor;
}

}  // namespace focal::server
