#include "focal/client.h"

#include <google/protobuf/util/json_util.h>

#include <grpcpp/grpcpp.h>
#include <grpcpp/impl/client_unary_call.h>

#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <climits>
#include <cstring>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "focal/status_macros.h"
#include "focal/tensor_wire.h"
#include "focal/v1/focal_loss.grpc.pb.h"
#include "focal/wire.h"
#include "grpc/health/v1/health.grpc.pb.h"

namespace focal {
namespace {

using WireServingStatus = grpc::health::v1::HealthCheckResponse;

/// The server's code and message, unchanged (absl and gRPC share the canonical codes).
absl::Status FromGrpc(const grpc::Status& status) {
  if (status.ok()) return absl::OkStatus();
  return absl::Status(static_cast<absl::StatusCode>(status.error_code()), status.error_message());
}

int ClampToInt(int64_t v) { return static_cast<int>(std::min<int64_t>(v, INT_MAX)); }

// ------------------------------------------------------------------------------------------
// ComputeCall → focal.v1.ComputeRequest

v1::SharedMemoryRef RefOf(const SharedTensor& t) {
  v1::SharedMemoryRef ref;
  ref.set_region(t.region);
  ref.set_offset(t.offset);
  ref.set_byte_size(t.ByteSize());
  return ref;
}

/// A tensor message naming shared memory: dtype, shape and the reference, no data.
void SharedTensorToProto(const SharedTensor& t, v1::Tensor* out) {
  out->Clear();
  out->set_dtype(wire::ToProto(t.dtype));
  out->mutable_shape()->Assign(t.shape.begin(), t.shape.end());
  *out->mutable_shared_memory() = RefOf(t);
}

/// Takes `call` by value so that callers who are done with a batch can move its bytes in.
v1::ComputeRequest EncodeRequest(ComputeCall call) {
  v1::ComputeRequest request;
  request.set_request_id(std::move(call.request_id));
  wire::LossSpecToProto(call.loss, request.mutable_loss());
  wire::TensorToProto(std::move(call.logits), request.mutable_logits());
  wire::TensorToProto(std::move(call.targets), request.mutable_targets());
  if (call.num_objects) wire::TensorToProto(std::move(*call.num_objects), request.mutable_num_objects());
  if (call.weights) wire::TensorToProto(std::move(*call.weights), request.mutable_weights());
  if (call.scores) wire::TensorToProto(std::move(*call.scores), request.mutable_scores());
  request.set_compute_gradient(call.compute_gradient);
  if (const double* w = std::get_if<double>(&call.grad_output)) request.set_grad_output_scalar(*w);
  if (HostTensor* w = std::get_if<HostTensor>(&call.grad_output)) {
    wire::TensorToProto(std::move(*w), request.mutable_grad_output_tensor());
  }
  if (call.gradient_dtype) request.set_gradient_dtype(wire::ToProto(*call.gradient_dtype));
  request.set_allow_non_finite(call.allow_non_finite);
  if (call.shared_logits) SharedTensorToProto(*call.shared_logits, request.mutable_logits());
  if (call.shared_targets) SharedTensorToProto(*call.shared_targets, request.mutable_targets());
  if (call.gradient_output) *request.mutable_gradient_output() = RefOf(*call.gradient_output);
  if (call.losses_output) *request.mutable_losses_output() = RefOf(*call.losses_output);
  return request;
}

// ------------------------------------------------------------------------------------------
// Responses → typed outputs

/// What the server sent that this client cannot read is the server's fault, not the caller's.
absl::Status FromServer(const absl::Status& status) {
  return absl::InternalError(absl::StrCat("the server sent an answer this client cannot read: ", status.message()));
}

absl::StatusOr<HostTensor> TensorFromServer(v1::Tensor* t, absl::string_view field) {
  absl::StatusOr<HostTensor> out = wire::TensorFromProto(std::move(*t), field);
  if (!out.ok()) return FromServer(out.status());
  return out;
}

absl::StatusOr<DType> DTypeFromServer(int dtype, absl::string_view field) {
  absl::StatusOr<DType> out = wire::DTypeFromProto(dtype, field);
  if (!out.ok()) return FromServer(out.status());
  return out;
}

absl::StatusOr<ComputeOutput> DecodeResponse(v1::ComputeResponse* response) {
  ComputeOutput out;
  out.request_id = std::move(*response->mutable_request_id());
  out.loss = response->loss();
  out.count = response->count();
  // A result the server wrote into shared memory comes back as its place.
  auto shared = [](const v1::Tensor& t, absl::string_view field) -> absl::StatusOr<SharedTensor> {
    SharedTensor place;
    place.region = t.shared_memory().region();
    place.offset = t.shared_memory().offset();
    ASSIGN_OR_RETURN(place.dtype, DTypeFromServer(t.dtype(), field));
    place.shape.assign(t.shape().begin(), t.shape().end());
    return place;
  };
  if (response->has_losses()) {
    if (response->losses().has_shared_memory()) {
      ASSIGN_OR_RETURN(out.shared_losses, shared(response->losses(), "losses.dtype"));
    } else {
      ASSIGN_OR_RETURN(out.losses, TensorFromServer(response->mutable_losses(), "losses"));
    }
  }
  if (response->has_gradient()) {
    if (response->gradient().has_shared_memory()) {
      ASSIGN_OR_RETURN(out.shared_gradient, shared(response->gradient(), "gradient.dtype"));
    } else {
      ASSIGN_OR_RETURN(out.gradient, TensorFromServer(response->mutable_gradient(), "gradient"));
    }
  }
  out.backend = std::move(*response->mutable_backend());
  out.queue_micros = response->timing().queue_micros();
  out.compute_micros = response->timing().compute_micros();
  return out;
}

/// The calls that carry tensors: requests go out as slices of their tensors' own bytes
/// (wire::SerializeToSlices), where the generated client class would serialize each one into a
/// copy first. These are the calls that class makes itself, through grpc::internal.
struct TensorMethods {
  static std::string Path(const char* method) {
    return absl::StrCat("/", v1::FocalLossService::service_full_name(), "/", method);
  }
  explicit TensorMethods(const std::shared_ptr<grpc::Channel>& channel)
      : compute(compute_path.c_str(), grpc::internal::RpcMethod::NORMAL_RPC, channel),
        compute_stream(stream_path.c_str(), grpc::internal::RpcMethod::BIDI_STREAMING, channel),
        evaluate(evaluate_path.c_str(), grpc::internal::RpcMethod::CLIENT_STREAMING, channel) {}
  TensorMethods(const TensorMethods&) = delete;
  TensorMethods& operator=(const TensorMethods&) = delete;

  // The paths first: an RpcMethod keeps a pointer to its path.
  const std::string compute_path = Path("Compute"), stream_path = Path("ComputeStream"),
                    evaluate_path = Path("Evaluate");
  const grpc::internal::RpcMethod compute, compute_stream, evaluate;
};

}  // namespace

static_assert(static_cast<int>(ServingStatus::kUnknown) == WireServingStatus::UNKNOWN &&
              static_cast<int>(ServingStatus::kServing) == WireServingStatus::SERVING &&
              static_cast<int>(ServingStatus::kNotServing) == WireServingStatus::NOT_SERVING &&
              static_cast<int>(ServingStatus::kServiceUnknown) == WireServingStatus::SERVICE_UNKNOWN &&
              WireServingStatus::ServingStatus_MAX == WireServingStatus::SERVICE_UNKNOWN);

const char* ServingStatusName(ServingStatus status) {
  const int value = static_cast<int>(status);
  if (!WireServingStatus::ServingStatus_IsValid(value)) return "UNKNOWN";
  // The generated names live in static storage.
  return WireServingStatus::ServingStatus_Name(static_cast<WireServingStatus::ServingStatus>(value)).c_str();
}

// ------------------------------------------------------------------------------------------

struct Client::Impl {
  std::shared_ptr<grpc::Channel> channel;
  std::unique_ptr<v1::FocalLossService::Stub> stub;
  std::unique_ptr<TensorMethods> methods;
  std::unique_ptr<grpc::health::v1::Health::Stub> health;
  std::string authorization;  ///< "Bearer <token>", or empty

  void Prepare(grpc::ClientContext& context, absl::Duration deadline) const {
    if (deadline != absl::InfiniteDuration()) context.set_deadline(absl::ToChronoTime(absl::Now() + deadline));
    if (!authorization.empty()) context.AddMetadata("authorization", authorization);
  }
};

struct ComputeStream::Impl {
  grpc::ClientContext context;  // declared first: it must outlive the stream
  std::unique_ptr<grpc::ClientReaderWriter<grpc::ByteBuffer, v1::ComputeResponse>> stream;  ///< TensorMethods'
  absl::Status local_error;  ///< a response this client could not decode
  bool finished = false;
};

ComputeStream::ComputeStream(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

ComputeStream::~ComputeStream() {
  if (impl_ && !impl_->finished) impl_->context.TryCancel();
}

bool ComputeStream::Write(const ComputeCall& call) {
  v1::ComputeRequest request = EncodeRequest(call);
  return impl_->stream->Write(wire::SerializeToSlices(request));
}

bool ComputeStream::WritesDone() { return impl_->stream->WritesDone(); }

std::optional<ComputeOutput> ComputeStream::Read() {
  v1::ComputeResponse response;
  if (!impl_->stream->Read(&response)) return std::nullopt;
  absl::StatusOr<ComputeOutput> out = DecodeResponse(&response);
  if (!out.ok()) {
    impl_->local_error = out.status();
    impl_->context.TryCancel();
    return std::nullopt;
  }
  return *std::move(out);
}

absl::Status ComputeStream::Finish() {
  impl_->finished = true;
  const absl::Status status = FromGrpc(impl_->stream->Finish());
  return impl_->local_error.ok() ? status : impl_->local_error;
}

void ComputeStream::Cancel() { impl_->context.TryCancel(); }

// ------------------------------------------------------------------------------------------

std::string Client::ServiceConfigJson(const ClientOptions& options) {
  std::string config = R"({"loadBalancingConfig": [{"round_robin": {}}])";
  if (options.max_retry_attempts > 1) {
    // UNAVAILABLE: the server answers it when draining, and gRPC when a connection breaks
    // before the server answered. CANCELLED: gRPC's answer to a call that reaches a server
    // after its shutdown began, before any handler saw it (a race with the GOAWAY that every
    // busy drain can hit). Both are safe to send again: Compute is a pure function. Every other
    // code is the server's considered answer.
    absl::StrAppend(
        &config, ", ",
        absl::StrFormat(
            R"("methodConfig": [{"name": [{"service": "%s"}, {"service": "%s"}], )"
            R"("retryPolicy": {"maxAttempts": %d, "initialBackoff": "%.3fs", "maxBackoff": "%.3fs", )"
            R"("backoffMultiplier": %g, "retryableStatusCodes": ["UNAVAILABLE", "CANCELLED"]}}])",
            v1::FocalLossService::service_full_name(), grpc::health::v1::Health::service_full_name(),
            options.max_retry_attempts, absl::ToDoubleSeconds(options.initial_backoff),
            absl::ToDoubleSeconds(options.max_backoff), options.backoff_multiplier));
  }
  return config + "}";
}

absl::StatusOr<std::unique_ptr<Client>> Client::Create(ClientOptions options) {
  if (options.target.empty()) return absl::InvalidArgumentError("ClientOptions.target is empty");
  if (options.tls_client_cert_pem.empty() != options.tls_client_key_pem.empty()) {
    return absl::InvalidArgumentError("a TLS client certificate and its key go together");
  }
  if (options.max_message_bytes <= 0) return absl::InvalidArgumentError("ClientOptions.max_message_bytes must be > 0");
  if (options.max_retry_attempts > 1 &&
      (options.initial_backoff < absl::Milliseconds(1) || options.max_backoff < options.initial_backoff ||
       options.backoff_multiplier < 1.0)) {
    return absl::InvalidArgumentError(
        "retries need initial_backoff >= 1ms, max_backoff >= initial_backoff and backoff_multiplier >= 1");
  }
  if (options.deadline <= absl::ZeroDuration() || options.stream_deadline <= absl::ZeroDuration()) {
    return absl::InvalidArgumentError("ClientOptions deadlines must be > 0 (InfiniteDuration for none)");
  }

  std::shared_ptr<grpc::ChannelCredentials> credentials;
  const bool tls = !options.tls_root_certs_pem.empty() || !options.tls_client_cert_pem.empty();
  if (tls) {
    grpc::SslCredentialsOptions ssl;
    ssl.pem_root_certs = options.tls_root_certs_pem;  // empty: gRPC's default roots
    ssl.pem_cert_chain = options.tls_client_cert_pem;
    ssl.pem_private_key = options.tls_client_key_pem;
    credentials = grpc::SslCredentials(ssl);
  } else {
    credentials = grpc::InsecureChannelCredentials();
  }

  grpc::ChannelArguments args;
  args.SetServiceConfigJSON(ServiceConfigJson(options));
  // Ours is the service config: none from DNS TXT records overrides the balancing and retries.
  args.SetInt(GRPC_ARG_SERVICE_CONFIG_DISABLE_RESOLUTION, 1);
  args.SetInt(GRPC_ARG_ENABLE_RETRIES, options.max_retry_attempts > 1 ? 1 : 0);
  args.SetInt(GRPC_ARG_PER_RPC_RETRY_BUFFER_SIZE, ClampToInt(options.retry_buffer_bytes));
  args.SetMaxReceiveMessageSize(ClampToInt(options.max_message_bytes));
  args.SetMaxSendMessageSize(ClampToInt(options.max_message_bytes));
  if (tls && !options.tls_server_name.empty()) args.SetSslTargetNameOverride(options.tls_server_name);

  auto impl = std::make_unique<Impl>();
  impl->channel = grpc::CreateCustomChannel(options.target, credentials, args);
  if (!impl->channel) return absl::InvalidArgumentError(absl::StrCat("cannot make a channel to '", options.target, "'"));
  impl->stub = v1::FocalLossService::NewStub(impl->channel);
  impl->methods = std::make_unique<TensorMethods>(impl->channel);
  impl->health = grpc::health::v1::Health::NewStub(impl->channel);
  if (!options.bearer_token.empty()) impl->authorization = absl::StrCat("Bearer ", options.bearer_token);
  return std::unique_ptr<Client>(new Client(std::move(options), std::move(impl)));
}

Client::Client(ClientOptions options, std::unique_ptr<Impl> impl)
    : options_(std::move(options)), impl_(std::move(impl)) {}

Client::~Client() = default;

// ------------------------------------------------------------------------------------------
// Shared memory

uint64_t SharedTensor::ByteSize() const {
  uint64_t n = DTypeSize(dtype);
  for (int64_t d : shape) n *= static_cast<uint64_t>(std::max<int64_t>(d, 0));
  return n;
}

struct SharedMemoryRegion::Impl {
  std::string name, key;
  uint8_t* data = nullptr;
  uint64_t size = 0;
  std::shared_ptr<grpc::Channel> channel;  ///< kept: the region may outlive its Client
  std::unique_ptr<v1::FocalLossService::Stub> stub;
  std::string authorization;
  grpc::ClientContext lease_context;  // declared before the lease: it must outlive it
  std::unique_ptr<grpc::ClientReader<v1::SharedMemoryRegion>> lease;

  void Authorize(grpc::ClientContext& context) const {
    if (!authorization.empty()) context.AddMetadata("authorization", authorization);
  }
  ~Impl() {
    if (lease) {
      // Unregistering ends the lease with OK; if that fails (the lease has ended already, or the
      // server is gone) the lease is cancelled.
      grpc::ClientContext context;
      Authorize(context);
      context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
      v1::UnregisterSharedMemoryRequest request;
      request.set_name(name);
      v1::UnregisterSharedMemoryResponse response;
      if (!stub->UnregisterSharedMemory(&context, request, &response).ok()) lease_context.TryCancel();
      v1::SharedMemoryRegion ignored;
      while (lease->Read(&ignored)) {
      }
      (void)lease->Finish();
    }
    if (data != nullptr) munmap(data, size);
    if (!key.empty()) shm_unlink(key.c_str());
  }
};

SharedMemoryRegion::SharedMemoryRegion(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
SharedMemoryRegion::~SharedMemoryRegion() = default;
const std::string& SharedMemoryRegion::name() const { return impl_->name; }
uint8_t* SharedMemoryRegion::data() const { return impl_->data; }
uint64_t SharedMemoryRegion::size() const { return impl_->size; }

absl::StatusOr<SharedTensor> SharedMemoryRegion::Place(DType dtype, Shape shape, uint64_t offset) const {
  SharedTensor place{impl_->name, offset, dtype, std::move(shape)};
  for (int64_t d : place.shape) {
    if (d < 0) return absl::InvalidArgumentError("a shared tensor's shape has a negative dimension");
  }
  const uint64_t bytes = place.ByteSize();
  if (offset > impl_->size || bytes > impl_->size - offset) {
    return absl::InvalidArgumentError(absl::StrCat(bytes, " bytes at offset ", offset, " do not fit the region's ",
                                                   impl_->size));
  }
  return place;
}

absl::StatusOr<SharedTensor> SharedMemoryRegion::Put(const HostTensor& tensor, uint64_t offset) {
  if (!tensor.SizeMatchesShape()) return absl::InvalidArgumentError("the tensor's bytes do not match its shape");
  ASSIGN_OR_RETURN(SharedTensor place, Place(tensor.dtype, tensor.shape, offset));
  std::memcpy(impl_->data + offset, tensor.bytes.data(), tensor.bytes.size());
  return place;
}

absl::StatusOr<HostTensor> SharedMemoryRegion::Read(const SharedTensor& place) const {
  if (place.region != impl_->name) {
    return absl::InvalidArgumentError(absl::StrCat("the place is in region '", place.region, "', not '", impl_->name, "'"));
  }
  RETURN_IF_ERROR(Place(place.dtype, place.shape, place.offset).status());
  HostTensor out;
  out.dtype = place.dtype;
  out.shape = place.shape;
  out.bytes.assign(reinterpret_cast<const char*>(impl_->data + place.offset), place.ByteSize());
  return out;
}

absl::StatusOr<std::unique_ptr<SharedMemoryRegion>> Client::CreateSharedMemory(uint64_t bytes, std::string name) const {
  if (bytes == 0) return absl::InvalidArgumentError("a shared-memory region has at least one byte");
  static std::atomic<uint64_t> counter{0};
  auto impl = std::make_unique<SharedMemoryRegion::Impl>();
  const std::string own = absl::StrCat("focal-", getpid(), "-", counter++, "-",
                                       std::chrono::steady_clock::now().time_since_epoch().count() % 1000000007);
  impl->name = name.empty() ? own : std::move(name);
  const std::string key = "/" + own;
  const int fd = shm_open(key.c_str(), O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
  if (fd < 0) return absl::InternalError(absl::StrCat("shm_open ", key, ": ", std::strerror(errno)));
  impl->key = key;  // from here the object is removed with the region
  if (ftruncate(fd, static_cast<off_t>(bytes)) != 0) {
    const int error = errno;
    close(fd);
    return absl::ResourceExhaustedError(absl::StrCat("sizing ", key, " to ", bytes, " bytes: ", std::strerror(error)));
  }
  void* mapping = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  const int map_error = errno;
  close(fd);
  if (mapping == MAP_FAILED) return absl::ResourceExhaustedError(absl::StrCat("mapping ", key, ": ", std::strerror(map_error)));
  impl->data = static_cast<uint8_t*>(mapping);
  impl->size = bytes;
  impl->channel = impl_->channel;
  impl->stub = v1::FocalLossService::NewStub(impl_->channel);
  impl->authorization = impl_->authorization;
  impl->Authorize(impl->lease_context);
  v1::RegisterSharedMemoryRequest request;
  request.set_name(impl->name);
  request.set_key(key);
  request.set_byte_size(bytes);
  impl->lease = impl->stub->RegisterSharedMemory(&impl->lease_context, request);
  v1::SharedMemoryRegion mapped;
  if (!impl->lease->Read(&mapped)) {  // refused: the call's status says why
    const absl::Status status = FromGrpc(impl->lease->Finish());
    impl->lease.reset();
    return status.ok() ? absl::InternalError("the server ended the registration without an answer") : status;
  }
  // Both sides have it mapped: the name can go now, so that nothing is left in /dev/shm if this
  // process dies.
  shm_unlink(impl->key.c_str());
  impl->key.clear();
  return std::unique_ptr<SharedMemoryRegion>(new SharedMemoryRegion(std::move(impl)));
}

absl::StatusOr<std::vector<std::string>> Client::ListSharedMemory() const {
  grpc::ClientContext context;
  impl_->Prepare(context, options_.deadline);
  v1::ListSharedMemoryResponse response;
  RETURN_IF_ERROR(FromGrpc(impl_->stub->ListSharedMemory(&context, v1::ListSharedMemoryRequest(), &response)));
  std::vector<std::string> names;
  for (const v1::SharedMemoryRegion& r : response.regions()) names.push_back(r.name());
  return names;
}

LossJob JobFor(const ComputeCall& call) {
  LossJob job;
  job.spec = call.loss;
  job.logits = call.logits.View();
  job.targets = call.targets.View();
  if (call.num_objects) job.num_objects = call.num_objects->View();
  if (call.weights) job.weights = call.weights->View();
  if (call.scores) job.scores = call.scores->View();
  job.compute_gradient = call.compute_gradient;
  if (const double* w = std::get_if<double>(&call.grad_output)) job.grad_output = *w;
  if (const HostTensor* w = std::get_if<HostTensor>(&call.grad_output)) job.grad_output = w->View();
  job.output_dtype = call.gradient_dtype;
  job.allow_non_finite = call.allow_non_finite;
  return job;
}

absl::StatusOr<ComputeOutput> Client::Compute(const ComputeCall& call) const { return Compute(ComputeCall(call)); }

absl::StatusOr<ComputeOutput> Client::Compute(ComputeCall&& call) const {
  grpc::ClientContext context;
  impl_->Prepare(context, options_.deadline);
  v1::ComputeRequest request = EncodeRequest(std::move(call));
  const grpc::ByteBuffer bytes = wire::SerializeToSlices(request);
  v1::ComputeResponse response;
  RETURN_IF_ERROR(FromGrpc(grpc::internal::BlockingUnaryCall<grpc::ByteBuffer, v1::ComputeResponse>(
      impl_->channel.get(), impl_->methods->compute, &context, bytes, &response)));
  return DecodeResponse(&response);
}

std::unique_ptr<ComputeStream> Client::OpenComputeStream() const {
  auto impl = std::make_unique<ComputeStream::Impl>();
  impl_->Prepare(impl->context, options_.stream_deadline);
  impl->stream.reset(grpc::internal::ClientReaderWriterFactory<grpc::ByteBuffer, v1::ComputeResponse>::Create(
      impl_->channel.get(), impl_->methods->compute_stream, &impl->context));
  return std::unique_ptr<ComputeStream>(new ComputeStream(std::move(impl)));
}

absl::StatusOr<std::vector<ComputeOutput>> Client::ComputeMany(const std::vector<ComputeCall>& calls) const {
  std::unique_ptr<ComputeStream> stream = OpenComputeStream();
  // Writing and reading at once: the server answers while later batches are still in flight,
  // and neither side's flow-control window can fill up and stall the other.
  std::thread writer([&stream, &calls] {
    for (const ComputeCall& call : calls) {
      if (!stream->Write(call)) return;  // the stream has ended: Finish says why
    }
    stream->WritesDone();
  });
  std::vector<ComputeOutput> outputs;
  outputs.reserve(calls.size());
  while (std::optional<ComputeOutput> out = stream->Read()) outputs.push_back(*std::move(out));
  writer.join();
  RETURN_IF_ERROR(stream->Finish());
  if (outputs.size() != calls.size()) {
    return absl::InternalError(absl::StrCat("the server answered ", outputs.size(), " of ", calls.size(),
                                            " batches and ended the stream without an error"));
  }
  return outputs;
}

absl::StatusOr<EvaluateOutput> Client::Evaluate(const BatchSource& next, const EvaluateOptions& options) const {
  v1::EvaluateOptions wire_options;
  for (double g : options.gamma_sweep) wire_options.add_gamma_sweep(g);
  wire_options.set_pt_bins(options.pt_bins);
  wire_options.set_calibration_bins(options.calibration_bins);
  const bool analyses = wire_options.ByteSizeLong() > 0;
  grpc::ClientContext context;
  impl_->Prepare(context, options_.stream_deadline);
  v1::EvaluateResponse response;
  std::unique_ptr<grpc::ClientWriter<grpc::ByteBuffer>> writer(grpc::internal::ClientWriterFactory<grpc::ByteBuffer>::Create(
      impl_->channel.get(), impl_->methods->evaluate, &context, &response));
  absl::Status source_error;
  int64_t sent = 0;
  v1::LossSpec first_loss;
  for (;;) {
    ComputeCall batch;
    absl::StatusOr<bool> more = next(batch);
    if (!more.ok()) {
      source_error = more.status();
      context.TryCancel();
      break;
    }
    if (!*more) {
      writer->WritesDone();
      break;
    }
    // The server reads the next batch only once the previous one is accumulated, so this
    // blocks as flow control fills: at most about one batch is in flight.
    v1::ComputeRequest request = EncodeRequest(std::move(batch));
    if (analyses) *request.mutable_evaluate() = wire_options;
    if (sent == 0) first_loss = request.loss();
    if (!writer->Write(wire::SerializeToSlices(request))) break;  // the call has ended; Finish says why
    ++sent;
  }
  const grpc::Status status = writer->Finish();
  RETURN_IF_ERROR(source_error);
  RETURN_IF_ERROR(FromGrpc(status));
  // Totals over fewer batches than were sent would be a silently wrong answer.
  if (response.batches() != sent) {
    return absl::DataLossError(absl::StrCat("the server accumulated ", response.batches(), " batches but ", sent,
                                            " were sent"));
  }
  EvaluateOutput out;
  out.total_loss = response.total_loss();
  out.count = response.count();
  out.mean = response.mean();
  out.class_loss_sums.assign(response.class_loss_sums().begin(), response.class_loss_sums().end());
  out.class_counts.assign(response.class_counts().begin(), response.class_counts().end());
  out.batches = response.batches();
  out.backend = response.backend();
  out.queue_micros = response.timing().queue_micros();
  out.compute_micros = response.timing().compute_micros();
  auto copy = [](const auto& from, auto& to) { to.assign(from.begin(), from.end()); };
  if (response.has_sweep()) {
    const v1::GammaSweep& w = response.sweep();
    SweepOutput& s = out.sweep.emplace();
    copy(w.gammas(), s.gammas);
    s.classes = w.classes();
    copy(w.positive_sums(), s.positive_sums);
    copy(w.negative_sums(), s.negative_sums);
    copy(w.positive_counts(), s.positive_counts);
    copy(w.negative_counts(), s.negative_counts);
    s.pt_bins = w.pt_bins();
    copy(w.positive_mass(), s.positive_mass);
    copy(w.negative_mass(), s.negative_mass);
  }
  if (response.has_calibration()) {
    const v1::Calibration& w = response.calibration();
    CalibrationOutput& c = out.calibration.emplace();
    c.bins = w.bins();
    copy(w.bin_counts(), c.bin_counts);
    copy(w.bin_correct(), c.bin_correct);
    copy(w.bin_confidence_sums(), c.bin_confidence_sums);
    c.ece = w.ece();
    c.mce = w.mce();
    c.accuracy = w.accuracy();
    c.nll = w.nll();
    c.brier = w.brier();
    c.count = w.count();
    c.correct = w.correct();
    copy(w.class_targets(), c.class_targets);
    copy(w.class_predicted(), c.class_predicted);
    copy(w.class_true_positives(), c.class_true_positives);
  }
  out.response_bytes = response.SerializeAsString();
  out.loss_bytes = first_loss.SerializeAsString();
  return out;
}

absl::StatusOr<std::string> EvaluationJson(const EvaluateOutput& out) {
  v1::EvaluateResponse response;
  v1::LossSpec loss;
  if (!response.ParseFromString(out.response_bytes) || !loss.ParseFromString(out.loss_bytes)) {
    return absl::InvalidArgumentError("the EvaluateOutput holds no answer to convert (not from Client::Evaluate?)");
  }
  google::protobuf::util::JsonPrintOptions options;
  options.preserve_proto_field_names = true;
  std::string response_json, loss_json;
  if (!google::protobuf::util::MessageToJsonString(response, &response_json, options).ok() ||
      !google::protobuf::util::MessageToJsonString(loss, &loss_json, options).ok()) {
    return absl::InternalError("the answer does not convert to JSON");
  }
  return absl::StrCat("{\"loss\": ", loss_json, ",\n \"evaluation\": ", response_json, "}\n");
}

absl::StatusOr<ServerInfoOutput> Client::ServerInfo() const {
  grpc::ClientContext context;
  impl_->Prepare(context, options_.deadline);
  v1::ServerInfo info;
  RETURN_IF_ERROR(FromGrpc(impl_->stub->GetServerInfo(&context, v1::GetServerInfoRequest(), &info)));
  ServerInfoOutput out;
  out.version = info.version();
  for (const v1::VariantInfo& v : info.variants()) {
    ServerInfoOutput::Variant& variant = out.variants.emplace_back();
    variant.name = v.name();
    for (const v1::ParameterInfo& p : v.parameters()) {
      variant.parameters.push_back({p.name(), p.type(), p.default_value(), p.description()});
    }
  }
  for (int t : info.logits_dtypes()) {
    ASSIGN_OR_RETURN(out.logits_dtypes.emplace_back(), DTypeFromServer(t, "logits_dtypes"));
  }
  for (int t : info.target_dtypes()) {
    ASSIGN_OR_RETURN(out.target_dtypes.emplace_back(), DTypeFromServer(t, "target_dtypes"));
  }
  out.max_message_bytes = info.max_message_bytes();
  out.max_elements = info.max_elements();
  out.max_classes = info.max_classes();
  out.backend = info.backend();
  out.devices.assign(info.devices().begin(), info.devices().end());
  out.max_concurrent_requests = info.max_concurrent_requests();
  return out;
}

absl::StatusOr<ServingStatus> Client::Health(const std::string& service) const {
  grpc::ClientContext context;
  impl_->Prepare(context, options_.deadline);
  grpc::health::v1::HealthCheckRequest request;
  request.set_service(service);
  grpc::health::v1::HealthCheckResponse response;
  RETURN_IF_ERROR(FromGrpc(impl_->health->Check(&context, request, &response)));
  // An open enum: a status newer than this client reads as UNKNOWN.
  if (!WireServingStatus::ServingStatus_IsValid(response.status())) return ServingStatus::kUnknown;
  return static_cast<ServingStatus>(response.status());
}

}  // namespace focal
