// focal::Client: the C++ client of focal.v1.FocalLossService. Typed host tensors in, typed
// results out, errors as absl::Status with the server's own code and message. Load balancing
// (gRPC's round_robin) and retries of UNAVAILABLE and CANCELLED with exponential backoff are gRPC's own,
// configured through the channel's service config; nothing here loops or balances by hand.
#pragma once

#include <cstdint>
#include <functional>
#include <iterator>
#include <memory>
#include <optional>
#include <string>
#include <variant>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "focal/host_tensor.h"
#include "focal/job.h"
#include "focal/params.h"

namespace focal {

/// How to reach the service. Defaults live here and nowhere else.
struct ClientOptions {
  /// A gRPC target: "127.0.0.1:50051", "ipv4:127.0.0.1:5001,127.0.0.1:5002",
  /// "dns:///focalserve.default.svc:50051". Every address it resolves to gets a connection and
  /// calls rotate over the ready ones (round_robin).
  std::string target = "127.0.0.1:50051";
  /// PEM CA bundle that signed the server's certificate; TLS is on when it is set.
  std::string tls_root_certs_pem;
  /// PEM client certificate chain and key, for servers that require client certificates.
  std::string tls_client_cert_pem;
  std::string tls_client_key_pem;
  /// Name the server's certificate must carry when it differs from the target's host (needed
  /// for "ipv4:" address lists behind TLS). Empty: the target's host.
  std::string tls_server_name;
  /// Sent as "authorization: Bearer <token>" on every call when set.
  std::string bearer_token;
  /// Deadline of each unary call (Compute, ServerInfo, Health); InfiniteDuration: none.
  absl::Duration deadline = absl::Seconds(60);
  /// Deadline of a whole ComputeStream or Evaluate call; InfiniteDuration: none.
  absl::Duration stream_deadline = absl::InfiniteDuration();
  /// Largest message either way (the server's default limit too).
  int64_t max_message_bytes = int64_t{1} << 30;
  /// Attempts per call, the first included (gRPC's retryPolicy.maxAttempts, which gRPC caps at
  /// 5). Only UNAVAILABLE and CANCELLED (what a stopping server's transport gives a call it never
  /// started) are retried, and only before the server has answered anything. 1 or
  /// less: no retries.
  int max_retry_attempts = 4;
  /// Backoff of the first retry; each further retry waits up to `backoff_multiplier` times
  /// longer, at most `max_backoff` (gRPC adds the jitter).
  absl::Duration initial_backoff = absl::Milliseconds(50);
  absl::Duration max_backoff = absl::Seconds(2);
  double backoff_multiplier = 2.0;
  /// Request bytes gRPC keeps per call so that it can replay them on a retry; a call whose
  /// requests exceed it is not retried once they are sent (gRPC's per-RPC retry buffer).
  int64_t retry_buffer_bytes = int64_t{64} << 20;
};

/// A tensor's place in a shared-memory region registered with the server (SharedMemoryRegion;
/// docs/shared-memory.md): `region` names it, and the tensor's bytes are at `offset`.
struct SharedTensor {
  std::string region;
  uint64_t offset = 0;
  DType dtype = DType::kFloat32;
  Shape shape;
  uint64_t ByteSize() const;
};

/// One batch to compute: the variant with its parameters, the tensors and the options of
/// focal.v1.ComputeRequest.
struct ComputeCall {
  LossSpec loss;  ///< variant, parameters (defaults of docs/variants.md), reduction, normalizer
  HostTensor logits;
  HostTensor targets;
  std::optional<HostTensor> num_objects;  ///< the variants whose table entry takes num_objects
  /// Per-item loss weights, float, shaped like the NONE losses (every variant): ℓ_i ← w_i ℓ_i.
  std::optional<HostTensor> weights;
  /// quality_focal with class-index targets: the target class's quality, shaped like the targets.
  std::optional<HostTensor> scores;
  bool compute_gradient = false;
  /// Upstream gradient: absent (1), a scalar, or for NONE a tensor shaped like the losses.
  std::variant<std::monostate, double, HostTensor> grad_output;
  /// dtype of the gradient and of NONE's losses; absent: the logits' dtype.
  std::optional<DType> gradient_dtype;
  bool allow_non_finite = false;
  std::string request_id;  ///< echoed back and named in the server's log on failure
  /// Same host (docs/shared-memory.md): the logits and targets read from a registered region
  /// instead of the tensors above (then left empty), and the gradient and NONE's losses written
  /// into one instead of the answer.
  std::optional<SharedTensor> shared_logits, shared_targets;
  std::optional<SharedTensor> gradient_output, losses_output;
};

/// The LossJob a conforming server builds from `call`, viewing `call`'s tensors (so valid while it
/// lives): to validate a call on this side (focal/validate.h) or compute it locally. Shared-memory
/// tensors are not in it.
LossJob JobFor(const ComputeCall& call);

/// What the server answered for one batch.
struct ComputeOutput {
  std::string request_id;
  double loss = 0.0;  ///< the reduced loss; for NONE the sum of the per-item losses before their rounding to `losses`' dtype
  int64_t count = 0;  ///< items counted by the reduction
  std::optional<HostTensor> losses;    ///< NONE only
  std::optional<HostTensor> gradient;  ///< when compute_gradient
  std::string backend;                 ///< "cpu", "cuda:0"
  int64_t queue_micros = 0;
  int64_t compute_micros = 0;
  /// Where the server wrote the gradient and losses when the call named gradient_output and
  /// losses_output (`gradient` and `losses` are then absent).
  std::optional<SharedTensor> shared_gradient, shared_losses;
};

/// Evaluate's analyses to run in the same pass (docs/evaluation.md; softmax_focal and
/// sigmoid_focal on logits with hard targets). Empty: none.
struct EvaluateOptions {
  std::vector<double> gamma_sweep;  ///< γ values, at most 64
  int pt_bins = 0;                  ///< p_t bins of the sweep's loss mass (0: 20)
  int calibration_bins = 0;         ///< confidence bins of the reliability histogram (0: none)
};

/// The γ sweep (focal.v1.GammaSweep): per γ and class the focal terms without α, positives and
/// negatives apart ([K, C], γ-major), and the loss mass by p_t ([K, pt_bins]).
struct SweepOutput {
  std::vector<double> gammas;
  int64_t classes = 0;
  std::vector<double> positive_sums, negative_sums;
  std::vector<int64_t> positive_counts, negative_counts;
  int pt_bins = 0;
  std::vector<double> positive_mass, negative_mass;
};

/// Calibration (focal.v1.Calibration): the reliability histogram and quality metrics.
struct CalibrationOutput {
  int bins = 0;
  std::vector<int64_t> bin_counts, bin_correct;
  std::vector<double> bin_confidence_sums;
  double ece = 0, mce = 0, accuracy = 0, nll = 0, brier = 0;
  int64_t count = 0, correct = 0;
  std::vector<int64_t> class_targets, class_predicted, class_true_positives;
};

/// A whole dataset's totals, summed exactly by the server.
struct EvaluateOutput {
  double total_loss = 0.0;
  int64_t count = 0;
  double mean = 0.0;
  std::vector<double> class_loss_sums;  ///< by target class (sigmoid: by class channel)
  std::vector<int64_t> class_counts;
  int64_t batches = 0;
  std::string backend;
  int64_t queue_micros = 0;
  int64_t compute_micros = 0;
  std::optional<SweepOutput> sweep;              ///< when EvaluateOptions asked for a sweep
  std::optional<CalibrationOutput> calibration;  ///< when EvaluateOptions asked for calibration bins
  /// The wire answer and the first batch's focal.v1.LossSpec, serialized: for EvaluationJson.
  std::string response_bytes, loss_bytes;
};

/// `out` as the report's input: {"loss": LossSpec, "evaluation": EvaluateResponse} in
/// protobuf's JSON mapping with the .proto's field names — what `focalctl eval --json` writes
/// and `python3 -m focalserve.report` reads (focalserve.report.to_json writes the same).
absl::StatusOr<std::string> EvaluationJson(const EvaluateOutput& out);

/// The server's description of itself (focal.v1.ServerInfo).
struct ServerInfoOutput {
  struct Parameter {
    std::string name, type, default_value, description;
  };
  struct Variant {
    std::string name;
    std::vector<Parameter> parameters;
  };
  std::string version;
  std::vector<Variant> variants;
  std::vector<DType> logits_dtypes;
  std::vector<DType> target_dtypes;
  int64_t max_message_bytes = 0;
  int64_t max_elements = 0;
  int64_t max_classes = 0;
  std::string backend;
  std::vector<std::string> devices;
  int max_concurrent_requests = 0;
};

/// grpc.health.v1 serving status.
enum class ServingStatus { kUnknown = 0, kServing = 1, kNotServing = 2, kServiceUnknown = 3 };
/// "SERVING", "NOT_SERVING", ...
const char* ServingStatusName(ServingStatus status);

/// Fills `batch` with the next batch of an evaluation and returns true, or returns false when
/// there is none left. An error abandons the evaluation and is what Evaluate returns.
using BatchSource = std::function<absl::StatusOr<bool>(ComputeCall& batch)>;

/// One ComputeStream call: batches written in, answers read out in the same order. One thread
/// may write while another reads. A failed batch ends the stream with its status, after the
/// answers of the batches before it.
class ComputeStream {
 public:
  ~ComputeStream();  ///< cancels the call when Finish() has not been called
  ComputeStream(const ComputeStream&) = delete;
  ComputeStream& operator=(const ComputeStream&) = delete;

  /// Sends one batch; false when the stream has ended (read what is left, then Finish()).
  bool Write(const ComputeCall& call);
  /// Declares that no more batches follow.
  bool WritesDone();
  /// The next answer, or nullopt once the stream has ended (Finish() then says why).
  std::optional<ComputeOutput> Read();
  /// The call's final status; call it once, after WritesDone() and after Read() gave nullopt.
  absl::Status Finish();
  /// Asks the server to stop; pending reads and writes end.
  void Cancel();

 private:
  friend class Client;
  struct Impl;
  explicit ComputeStream(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

class Client;

/// A POSIX shared-memory object made for this process and registered with the server (on the
/// same host, started with --shared-memory=on) for as long as this object lives: tensors Put
/// here go to Compute as SharedTensors, and the server writes results into Place-d tensors.
/// The registration is a call the server keeps open, so a process that dies releases it too.
class SharedMemoryRegion {
 public:
  ~SharedMemoryRegion();  ///< unregisters (calls using it finish first), unmaps, removes the object
  SharedMemoryRegion(const SharedMemoryRegion&) = delete;
  SharedMemoryRegion& operator=(const SharedMemoryRegion&) = delete;

  const std::string& name() const;
  uint8_t* data() const;
  uint64_t size() const;
  /// The place of a `dtype` tensor of `shape` at `offset` (INVALID_ARGUMENT if it does not fit).
  absl::StatusOr<SharedTensor> Place(DType dtype, Shape shape, uint64_t offset) const;
  /// Copies `tensor` to `offset` and returns its place.
  absl::StatusOr<SharedTensor> Put(const HostTensor& tensor, uint64_t offset);
  /// The bytes of a place as a tensor (a copy), e.g. a gradient the server wrote.
  absl::StatusOr<HostTensor> Read(const SharedTensor& place) const;

 private:
  friend class Client;
  struct Impl;
  explicit SharedMemoryRegion(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

/// A client of one target (one server, or many behind round_robin). Thread-safe: share one
/// across threads; every call is independent.
class Client {
 public:
  /// Validates `options` and opens a channel (connections are made on first use).
  static absl::StatusOr<std::unique_ptr<Client>> Create(ClientOptions options);
  ~Client();
  Client(const Client&) = delete;
  Client& operator=(const Client&) = delete;

  /// One batch.
  absl::StatusOr<ComputeOutput> Compute(const ComputeCall& call) const;
  /// One batch whose tensors move into the request instead of being copied.
  absl::StatusOr<ComputeOutput> Compute(ComputeCall&& call) const;
  /// Opens a ComputeStream call (always returns a stream; errors come from Finish()).
  std::unique_ptr<ComputeStream> OpenComputeStream() const;
  /// Computes `calls` over one ComputeStream (a writer thread keeps the pipeline full) and
  /// returns the answers in order, or the first error.
  absl::StatusOr<std::vector<ComputeOutput>> ComputeMany(const std::vector<ComputeCall>& calls) const;
  /// Streams every batch `next` produces into one Evaluate call, with `options`' analyses.
  absl::StatusOr<EvaluateOutput> Evaluate(const BatchSource& next, const EvaluateOptions& options = {}) const;
  /// Streams the batches [begin, end) (ComputeCall values) into one Evaluate call.
  template <typename Iterator>
  absl::StatusOr<EvaluateOutput> Evaluate(Iterator begin, Iterator end) const {
    return Evaluate(BatchSource([&begin, end](ComputeCall& batch) -> absl::StatusOr<bool> {
      if (begin == end) return false;
      batch = *begin;
      ++begin;
      return true;
    }));
  }
  /// Variants, dtypes, limits, backend and version.
  absl::StatusOr<ServerInfoOutput> ServerInfo() const;
  /// A new shared-memory object of `bytes` bytes registered with the server under `name`
  /// (default: one of its own). The region holds the channel: it may outlive this client.
  absl::StatusOr<std::unique_ptr<SharedMemoryRegion>> CreateSharedMemory(uint64_t bytes, std::string name = "") const;
  /// The names of the server's registered regions.
  absl::StatusOr<std::vector<std::string>> ListSharedMemory() const;
  /// grpc.health.v1.Health/Check of `service` ("" = the whole server).
  absl::StatusOr<ServingStatus> Health(const std::string& service = "") const;

  const ClientOptions& options() const { return options_; }
  /// The service config JSON the channel was made with (round_robin and the retry policy).
  static std::string ServiceConfigJson(const ClientOptions& options);

 private:
  struct Impl;
  Client(ClientOptions options, std::unique_ptr<Impl> impl);
  ClientOptions options_;
  std::unique_ptr<Impl> impl_;
};

}  // namespace focal
