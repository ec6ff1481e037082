#include "focal/client.h"

#include <grpcpp/generic/generic_stub.h>
#include <grpcpp/grpcpp.h>

#include <algorithm>
#include <climits>
#include <future>
#include <thread>
#include <type_traits>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "focal/status_macros.h"
#include "focal/v1/focal_loss.grpc.pb.h"

namespace focal {
namespace {

constexpr const char* kServiceName = "focal.v1.FocalLossService";
constexpr const char* kHealthCheckMethod = "/grpc.health.v1.Health/Check";

/// The server's code and message, unchanged (absl and gRPC share the canonical codes).
absl::Status FromGrpc(const grpc::Status& status) {
  if (status.ok()) return absl::OkStatus();
  return absl::Status(static_cast<absl::StatusCode>(status.error_code()), status.error_message());
}

int ClampToInt(int64_t v) { return static_cast<int>(std::min<int64_t>(v, INT_MAX)); }

// ------------------------------------------------------------------------------------------
// ComputeCall → focal.v1.ComputeRequest

void TensorToProto(HostTensor t, v1::Tensor* out) {
  out->set_dtype(static_cast<v1::DataType>(static_cast<int>(t.dtype)));  // same numbering (dtype.h)
  out->mutable_shape()->Assign(t.shape.begin(), t.shape.end());
  out->set_data(std::move(t.bytes));
}

void SpecToProto(const LossSpec& spec, v1::LossSpec* out) {
  std::visit(
      [out](const auto& p) {
        using P = std::decay_t<decltype(p)>;
        if constexpr (std::is_same_v<P, SoftmaxFocalParams>) {
          v1::SoftmaxFocal* m = out->mutable_softmax_focal();
          m->set_gamma(p.gamma);
          m->mutable_alpha()->Assign(p.alpha.begin(), p.alpha.end());
          if (p.ignore_index) m->set_ignore_index(*p.ignore_index);
          m->set_label_smoothing(p.label_smoothing);
        } else if constexpr (std::is_same_v<P, SigmoidFocalParams>) {
          v1::SigmoidFocal* m = out->mutable_sigmoid_focal();
          m->set_gamma(p.gamma);
          m->set_alpha(p.alpha);
          if (p.ignore_index) m->set_ignore_index(*p.ignore_index);
          m->set_label_smoothing(p.label_smoothing);
          m->set_smoothing_classes(p.smoothing_classes);
          m->set_input(p.input == SigmoidInput::kProbabilities ? v1::PROBABILITIES : v1::LOGITS);
        } else if constexpr (std::is_same_v<P, FocalCosineParams>) {
          v1::FocalCosine* m = out->mutable_focal_cosine();
          m->set_alpha(p.alpha);
          m->set_gamma(p.gamma);
          m->set_xent(p.xent);
        } else {
          static_assert(std::is_same_v<P, DynamicFocalParams>);
          out->mutable_dynamic_focal()->set_gamma(p.gamma);
        }
      },
      spec.params);
  switch (spec.reduction) {
    case Reduction::kMean: out->set_reduction(v1::MEAN); break;
    case Reduction::kSum: out->set_reduction(v1::SUM); break;
    case Reduction::kNone: out->set_reduction(v1::NONE); break;
  }
  if (spec.normalizer) out->set_normalizer(*spec.normalizer);
}

/// Takes `call` by value so that callers who are done with a batch can move its bytes in.
v1::ComputeRequest EncodeRequest(ComputeCall call) {
  v1::ComputeRequest request;
  request.set_request_id(std::move(call.request_id));
  SpecToProto(call.loss, request.mutable_loss());
  TensorToProto(std::move(call.logits), request.mutable_logits());
  TensorToProto(std::move(call.targets), request.mutable_targets());
  if (call.num_objects) TensorToProto(std::move(*call.num_objects), request.mutable_num_objects());
  request.set_compute_gradient(call.compute_gradient);
  if (const double* w = std::get_if<double>(&call.grad_output)) request.set_grad_output_scalar(*w);
  if (HostTensor* w = std::get_if<HostTensor>(&call.grad_output)) {
    TensorToProto(std::move(*w), request.mutable_grad_output_tensor());
  }
  if (call.gradient_dtype) request.set_gradient_dtype(static_cast<v1::DataType>(static_cast<int>(*call.gradient_dtype)));
  request.set_allow_non_finite(call.allow_non_finite);
  return request;
}

// ------------------------------------------------------------------------------------------
// Responses → typed outputs

absl::StatusOr<DType> DTypeFromProto(int dtype, absl::string_view field) {
  if (dtype < static_cast<int>(DType::kFloat32) || dtype > static_cast<int>(DType::kUInt8)) {
    return absl::InternalError(absl::StrCat("the server sent ", field, " with dtype ", dtype,
                                            ", which this client does not know"));
  }
  return static_cast<DType>(dtype);
}

absl::StatusOr<HostTensor> TensorFromProto(v1::Tensor* t, absl::string_view field) {
  HostTensor out;
  ASSIGN_OR_RETURN(out.dtype, DTypeFromProto(t->dtype(), field));
  out.shape.assign(t->shape().begin(), t->shape().end());
  out.bytes = std::move(*t->mutable_data());
  if (!out.SizeMatchesShape()) {
    return absl::InternalError(absl::StrCat("the server sent ", field, " with ", out.bytes.size(),
                                            " bytes, which does not match its shape and dtype"));
  }
  return out;
}

absl::StatusOr<ComputeOutput> DecodeResponse(v1::ComputeResponse* response) {
  ComputeOutput out;
  out.request_id = std::move(*response->mutable_request_id());
  out.loss = response->loss();
  out.count = response->count();
  if (response->has_losses()) {
    ASSIGN_OR_RETURN(out.losses, TensorFromProto(response->mutable_losses(), "losses"));
  }
  if (response->has_gradient()) {
    ASSIGN_OR_RETURN(out.gradient, TensorFromProto(response->mutable_gradient(), "gradient"));
  }
  out.backend = std::move(*response->mutable_backend());
  out.queue_micros = response->timing().queue_micros();
  out.compute_micros = response->timing().compute_micros();
  return out;
}

// ------------------------------------------------------------------------------------------
// grpc.health.v1 by hand: one string field in, one enum field out. Encoding the two messages
// here keeps a second copy of health.proto's descriptors out of programs that link gRPC's own.

std::string EncodeHealthRequest(const std::string& service) {
  std::string out;
  if (service.empty()) return out;
  out.push_back(0x0a);  // field 1, length-delimited
  for (uint64_t n = service.size(); ; n >>= 7) {
    if (n < 0x80) {
      out.push_back(static_cast<char>(n));
      break;
    }
    out.push_back(static_cast<char>((n & 0x7f) | 0x80));
  }
  return out + service;
}

bool ReadVarint(const std::string& in, size_t& at, uint64_t& value) {
  value = 0;
  for (int shift = 0; shift < 64 && at < in.size(); shift += 7) {
    const auto byte = static_cast<unsigned char>(in[at++]);
    value |= uint64_t{byte & 0x7fu} << shift;
    if ((byte & 0x80) == 0) return true;
  }
  return false;
}

absl::StatusOr<ServingStatus> DecodeHealthResponse(const std::string& in) {
  uint64_t status = 0;
  for (size_t at = 0; at < in.size();) {
    uint64_t key = 0, value = 0;
    if (!ReadVarint(in, at, key)) break;
    switch (key & 7) {
      case 0:
        if (!ReadVarint(in, at, value)) return absl::InternalError("malformed health response");
        if (key >> 3 == 1) status = value;
        break;
      case 1: at += 8; break;
      case 2:
        if (!ReadVarint(in, at, value)) return absl::InternalError("malformed health response");
        at += value;
        break;
      case 5: at += 4; break;
      default: return absl::InternalError("malformed health response");
    }
  }
  if (status > 3) return ServingStatus::kUnknown;
  return static_cast<ServingStatus>(status);
}

}  // namespace

const char* ServingStatusName(ServingStatus status) {
  switch (status) {
    case ServingStatus::kUnknown: return "UNKNOWN";
    case ServingStatus::kServing: return "SERVING";
    case ServingStatus::kNotServing: return "NOT_SERVING";
    case ServingStatus::kServiceUnknown: return "SERVICE_UNKNOWN";
  }
  return "UNKNOWN";
}

// ------------------------------------------------------------------------------------------

struct Client::Impl {
  std::shared_ptr<grpc::Channel> channel;
  std::unique_ptr<v1::FocalLossService::Stub> stub;
  std::unique_ptr<grpc::GenericStub> generic;
  std::string authorization;  ///< "Bearer <token>", or empty

  void Prepare(grpc::ClientContext& context, absl::Duration deadline) const {
    if (deadline != absl::InfiniteDuration()) context.set_deadline(absl::ToChronoTime(absl::Now() + deadline));
    if (!authorization.empty()) context.AddMetadata("authorization", authorization);
  }
};

struct ComputeStream::Impl {
  grpc::ClientContext context;  // declared first: it must outlive the stream
  std::unique_ptr<grpc::ClientReaderWriter<v1::ComputeRequest, v1::ComputeResponse>> stream;
  absl::Status local_error;  ///< a response this client could not decode
  bool finished = false;
};

ComputeStream::ComputeStream(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

ComputeStream::~ComputeStream() {
  if (impl_ && !impl_->finished) impl_->context.TryCancel();
}

bool ComputeStream::Write(const ComputeCall& call) { return impl_->stream->Write(EncodeRequest(call)); }

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
    // UNAVAILABLE only: the server answers it when draining and gRPC when a connection breaks
    // before the server answered; every other code is the server's considered answer.
    absl::StrAppend(
        &config, ", ",
        absl::StrFormat(
            R"("methodConfig": [{"name": [{"service": "%s"}, {"service": "grpc.health.v1.Health"}], )"
            R"("retryPolicy": {"maxAttempts": %d, "initialBackoff": "%.3fs", "maxBackoff": "%.3fs", )"
            R"("backoffMultiplier": %g, "retryableStatusCodes": ["UNAVAILABLE"]}}])",
            kServiceName, options.max_retry_attempts, absl::ToDoubleSeconds(options.initial_backoff),
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
  impl->generic = std::make_unique<grpc::GenericStub>(impl->channel);
  if (!options.bearer_token.empty()) impl->authorization = absl::StrCat("Bearer ", options.bearer_token);
  return std::unique_ptr<Client>(new Client(std::move(options), std::move(impl)));
}

Client::Client(ClientOptions options, std::unique_ptr<Impl> impl)
    : options_(std::move(options)), impl_(std::move(impl)) {}

Client::~Client() = default;

absl::StatusOr<ComputeOutput> Client::Compute(const ComputeCall& call) const { return Compute(ComputeCall(call)); }

absl::StatusOr<ComputeOutput> Client::Compute(ComputeCall&& call) const {
  grpc::ClientContext context;
  impl_->Prepare(context, options_.deadline);
  const v1::ComputeRequest request = EncodeRequest(std::move(call));
  v1::ComputeResponse response;
  RETURN_IF_ERROR(FromGrpc(impl_->stub->Compute(&context, request, &response)));
  return DecodeResponse(&response);
}

std::unique_ptr<ComputeStream> Client::OpenComputeStream() const {
  auto impl = std::make_unique<ComputeStream::Impl>();
  impl_->Prepare(impl->context, options_.stream_deadline);
  impl->stream = impl_->stub->ComputeStream(&impl->context);
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

absl::StatusOr<EvaluateOutput> Client::Evaluate(const BatchSource& next) const {
  grpc::ClientContext context;
  impl_->Prepare(context, options_.stream_deadline);
  v1::EvaluateResponse response;
  std::unique_ptr<grpc::ClientWriter<v1::ComputeRequest>> writer = impl_->stub->Evaluate(&context, &response);
  absl::Status source_error;
  int64_t sent = 0;
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
    if (!writer->Write(EncodeRequest(std::move(batch)))) break;  // the call has ended; Finish says why
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
  return out;
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
    ASSIGN_OR_RETURN(out.logits_dtypes.emplace_back(), DTypeFromProto(t, "logits_dtypes"));
  }
  for (int t : info.target_dtypes()) {
    ASSIGN_OR_RETURN(out.target_dtypes.emplace_back(), DTypeFromProto(t, "target_dtypes"));
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
  grpc::Slice request_slice(EncodeHealthRequest(service));
  const grpc::ByteBuffer request(&request_slice, 1);
  grpc::ByteBuffer response;
  std::promise<grpc::Status> done;
  impl_->generic->UnaryCall(&context, kHealthCheckMethod, grpc::StubOptions(), &request, &response,
                            [&done](grpc::Status status) { done.set_value(std::move(status)); });
  RETURN_IF_ERROR(FromGrpc(done.get_future().get()));
  std::vector<grpc::Slice> slices;
  if (!response.Dump(&slices).ok()) return absl::InternalError("cannot read the health response");
  std::string bytes;
  for (const grpc::Slice& s : slices) bytes.append(reinterpret_cast<const char*>(s.begin()), s.size());
  return DecodeHealthResponse(bytes);
}

}  // namespace focal
