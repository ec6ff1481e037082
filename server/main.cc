// focalserve: flags → options → backend → gRPC server; SIGTERM/SIGINT drain it (exit 0 when
// nothing accepted was lost, 1 when calls had to be cut off).
#include <grpcpp/ext/proto_server_reflection_plugin.h>
#include <grpcpp/grpcpp.h>
#include <grpcpp/health_check_service_interface.h>
#include <grpcpp/support/server_interceptor.h>
#include <malloc.h>
#include <pthread.h>
#include <signal.h>

#include <climits>
#include <cstdio>
#include <fstream>
#include <sstream>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/strip.h"
#include "focal/host_memory.h"
#include "server/backend_select.h"
#include "server/metrics.h"
#include "server/options.h"
#include "server/server_info.h"
#include "server/kserve_service.h"
#include "server/service.h"
#include "server/wire.h"
#include "server/work_queue.h"

namespace focal::server {
namespace {

constexpr const char* kServiceName = "focal.v1.FocalLossService";
constexpr absl::string_view kReflectionPrefix = "/grpc.reflection.";

/// Puts gRPC's reflection service behind the bearer token: the reflection plugin has no hook of
/// its own, so a reflection call without the token is cancelled as soon as its metadata
/// arrives, before anything is read or answered. (Our own methods check the token themselves
/// and answer UNAUTHENTICATED; health stays open for probes.)
class ReflectionAuth final : public grpc::experimental::Interceptor {
 public:
  ReflectionAuth(grpc::experimental::ServerRpcInfo* info, const std::string* token) : info_(info), token_(token) {}
  void Intercept(grpc::experimental::InterceptorBatchMethods* methods) override {
    if (methods->QueryInterceptionHookPoint(grpc::experimental::InterceptionHookPoints::POST_RECV_INITIAL_METADATA)) {
      bool ok = false;
      const auto* metadata = methods->GetRecvInitialMetadata();
      const auto it = metadata->find("authorization");
      if (it != metadata->end()) {
        ok = BearerTokenMatches(absl::string_view(it->second.data(), it->second.size()), *token_);
      }
      if (!ok) {
        std::fprintf(stderr, "focalserve: reflection call without a valid bearer token: cancelled\n");
        info_->server_context()->TryCancel();
      }
    }
    methods->Proceed();
  }

 private:
  grpc::experimental::ServerRpcInfo* const info_;
  const std::string* const token_;
};

class ReflectionAuthFactory final : public grpc::experimental::ServerInterceptorFactoryInterface {
 public:
  explicit ReflectionAuthFactory(std::string token) : token_(std::move(token)) {}
  grpc::experimental::Interceptor* CreateServerInterceptor(grpc::experimental::ServerRpcInfo* info) override {
    if (absl::string_view(info->method()).substr(0, kReflectionPrefix.size()) != kReflectionPrefix) return nullptr;
    return new ReflectionAuth(info, &token_);
  }

 private:
  const std::string token_;
};

absl::StatusOr<std::string> ReadFile(const std::string& path, const char* flag) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::InvalidArgumentError(absl::StrCat("--", flag, "=", path, ": cannot read the file"));
  std::stringstream text;
  text << in.rdbuf();
  return text.str();
}

absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> Credentials(const TlsOptions& tls) {
  if (!tls.enabled()) return grpc::InsecureServerCredentials();
  grpc::SslServerCredentialsOptions ssl;
  absl::StatusOr<std::string> cert = ReadFile(tls.cert_file, "tls-cert");
  if (!cert.ok()) return cert.status();
  absl::StatusOr<std::string> key = ReadFile(tls.key_file, "tls-key");
  if (!key.ok()) return key.status();
  ssl.pem_key_cert_pairs.push_back({*key, *cert});
  if (!tls.client_ca_file.empty()) {
    absl::StatusOr<std::string> ca = ReadFile(tls.client_ca_file, "tls-client-ca");
    if (!ca.ok()) return ca.status();
    ssl.pem_root_certs = *ca;
    ssl.client_certificate_request = GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY;
  }
  return grpc::SslServerCredentials(ssl);
}

int Fail(const absl::Status& status) {
  std::fprintf(stderr, "focalserve: %.*s\n", static_cast<int>(status.message().size()), status.message().data());
  return status.code() == absl::StatusCode::kInvalidArgument ? 2 : 1;
}

int Run(int argc, char** argv) {
  absl::StatusOr<ServerOptions> parsed = ParseFlags(argc, argv);
  if (!parsed.ok()) {
    if (parsed.status().code() == absl::StatusCode::kCancelled) {  // --help
      std::fputs(std::string(parsed.status().message()).c_str(), stdout);
      return 0;
    }
    return Fail(parsed.status());
  }
  const ServerOptions& options = *parsed;

  // SIGTERM and SIGINT are taken by sigwait below: block them before any thread starts so that
  // every thread inherits the mask.
  sigset_t stop_signals;
  sigemptyset(&stop_signals);
  sigaddset(&stop_signals, SIGTERM);
  sigaddset(&stop_signals, SIGINT);
  pthread_sigmask(SIG_BLOCK, &stop_signals, nullptr);

  KeepFreedMemoryInProcess();  // large gradient buffers reuse mapped pages (see host_memory.h)

  absl::StatusOr<SelectedBackend> backend = SelectBackend(options);
  if (!backend.ok()) return Fail(backend.status());
  absl::StatusOr<std::unique_ptr<Metrics>> metrics = Metrics::Start(options.metrics_listen);
  if (!metrics.ok()) return Fail(metrics.status());
  std::string token;
  if (!options.auth_token_file.empty()) {
    absl::StatusOr<std::string> text = ReadFile(options.auth_token_file, "auth-token-file");
    if (!text.ok()) return Fail(text.status());
    token = std::string(absl::StripAsciiWhitespace(*text));
    if (token.empty()) return Fail(absl::InvalidArgumentError("--auth-token-file: the file holds no token"));
  }
  absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> credentials = Credentials(options.tls);
  if (!credentials.ok()) return Fail(credentials.status());

  WorkQueue queue(options.max_concurrent, options.max_queue);
  ServiceConfig config;
  config.backend = backend->backend.get();
  config.metrics = metrics->get();
  config.queue = &queue;
  config.limits = options.limits;
  config.max_message_bytes = options.max_message_bytes;
  config.auth_token = token;
  std::unique_ptr<SharedMemoryRegistry> shared_memory;
  if (options.shared_memory) {
    shared_memory = std::make_unique<SharedMemoryRegistry>();
    config.shared_memory = shared_memory.get();
  }
  config.debug_delay_ms = options.debug_delay_ms;
  config.info = BuildServerInfo(options, backend->backend->Name(), backend->devices);
  FocalLossServiceImpl service(std::move(config));
  // The Open Inference Protocol on the same port, over the same admission, queue and backend.
  KServeServiceImpl kserve_service(&service);

  grpc::EnableDefaultHealthCheckService(true);
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  grpc::ServerBuilder builder;
  int port = 0;
  builder.AddListeningPort(options.listen, *credentials, &port);
  builder.RegisterService(&service);
  builder.RegisterService(&kserve_service);
  if (!token.empty()) {
    std::vector<std::unique_ptr<grpc::experimental::ServerInterceptorFactoryInterface>> interceptors;
    interceptors.push_back(std::make_unique<ReflectionAuthFactory>(token));
    builder.experimental().SetInterceptorCreators(std::move(interceptors));
  }
  // Receiving, gRPC 1.51 takes a message whole before its own size check refuses it (a 200 MB
  // message to a 1 MB limit is read in full: measured) and then fails the call where the service
  // never sees it, so nothing logs or counts it. Its limit protects no memory, then: the service
  // checks --max-message-bytes itself (wire.h), answering with the size and counting the call,
  // and gRPC's receive limit is lifted (the wire format caps a message at 4 GiB either way).
  const int message_limit = static_cast<int>(std::min<int64_t>(options.max_message_bytes, INT_MAX));
  builder.SetMaxReceiveMessageSize(-1);
  builder.SetMaxSendMessageSize(message_limit);
  // What a client may make the transport buffer for it before the service reads: a fixed
  // per-stream HTTP/2 window. gRPC's BDP probing grows windows with the link (about 30 MB per
  // stream that never reads was measured on loopback), so that slow streams could hold
  // gigabytes between them outside --max-buffered-bytes; it also saves ~25 µs per small call
  // there, which is why --http2-window-bytes=0 gives it back.
  if (options.http2_window_bytes > 0) {
    builder.AddChannelArgument(GRPC_ARG_HTTP2_BDP_PROBE, 0);
    builder.AddChannelArgument(GRPC_ARG_HTTP2_STREAM_LOOKAHEAD_BYTES,
                               static_cast<int>(std::min<int64_t>(options.http2_window_bytes, INT_MAX)));
  }
  const KeepaliveOptions& ka = options.keepalive;
  builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_TIME_MS, static_cast<int>(ka.time_seconds * 1000));
  builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_TIMEOUT_MS, static_cast<int>(ka.timeout_seconds * 1000));
  builder.AddChannelArgument(GRPC_ARG_HTTP2_MIN_RECV_PING_INTERVAL_WITHOUT_DATA_MS, 10000);
  if (ka.max_connection_age_seconds > 0) {
    builder.AddChannelArgument(GRPC_ARG_MAX_CONNECTION_AGE_MS, static_cast<int>(ka.max_connection_age_seconds * 1000));
    builder.AddChannelArgument(GRPC_ARG_MAX_CONNECTION_AGE_GRACE_MS,
                               static_cast<int>(ka.max_connection_age_grace_seconds * 1000));
  }
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  if (!server || port == 0) {
    return Fail(absl::UnavailableError(absl::StrCat("cannot listen on ", options.listen, " (in use, or not a local address?)")));
  }
  grpc::HealthCheckServiceInterface* health = server->GetHealthCheckService();
  // Health and the Open Inference Protocol's readiness say the same thing at every moment.
  const auto set_serving = [&](bool serving) {
    health->SetServingStatus("", serving);
    health->SetServingStatus(kServiceName, serving);
    service.SetServing(serving);
  };
  set_serving(true);

  const std::string address = absl::StrCat(options.listen.substr(0, options.listen.rfind(':')), ":", port);
  std::printf("focalserve %s listening on %s | backend %s | devices %s | metrics %s | limits: message %lld B, "
              "%lld elements, %d concurrent + %d queued | tls %s | auth %s\n",
              FOCALSERVE_VERSION, address.c_str(), backend->why.c_str(),
              backend->devices.empty() ? "none" : absl::StrJoin(backend->devices, ", ").c_str(),
              (*metrics)->address().empty() ? "off" : absl::StrCat("http://", (*metrics)->address(), "/metrics").c_str(),
              static_cast<long long>(options.max_message_bytes), static_cast<long long>(options.limits.max_elements),
              options.max_concurrent, options.max_queue,
              !options.tls.enabled() ? "off" : options.tls.client_ca_file.empty() ? "on" : "on, client certificates required",
              token.empty() ? "off" : "bearer token");
  std::fflush(stdout);

  // Wait for a stop signal. Meanwhile, each tick: a CUDA device that lost its context turns the
  // health service NOT_SERVING so that balancers route around this replica; and once the server
  // has been idle for --trim-idle-ms after a burst, the memory freed since goes back to the OS
  // (during bursts it stays mapped: large buffers reuse its pages, see host_memory.h).
  int signal_number = 0;
  bool reported_unhealthy = false, trimmed = true;
  auto last_busy = std::chrono::steady_clock::now();
  int64_t calls_seen = service.CallsStarted();
  const timespec tick{0, 100 * 1000 * 1000};
  while ((signal_number = sigtimedwait(&stop_signals, nullptr, &tick)) < 0) {
    if (!reported_unhealthy && !backend->backend->Healthy()) {
      reported_unhealthy = true;
      std::fprintf(stderr, "focalserve: backend %s is unhealthy; health NOT_SERVING\n", backend->backend->Name().c_str());
      set_serving(false);
    }
    const auto now = std::chrono::steady_clock::now();
    if (service.InFlight() > 0 || service.CallsStarted() != calls_seen) {
      calls_seen = service.CallsStarted();
      last_busy = now;
      trimmed = false;
    } else if (!trimmed && options.trim_idle_ms > 0 && now - last_busy >= std::chrono::milliseconds(options.trim_idle_ms)) {
      malloc_trim(0);
      trimmed = true;
    }
  }

  // Draining, as Kubernetes expects of a pod it stops: health NOT_SERVING at once, and calls
  // still served for --drain-grace while endpoints and balancers take this replica out (a
  // second signal skips the rest of the grace)...
  std::fprintf(stderr,
               "focalserve: %s: health NOT_SERVING; serving on for the %llds grace, then draining for up to %llds\n",
               strsignal(signal_number), static_cast<long long>(options.drain_grace_seconds),
               static_cast<long long>(options.drain_timeout_seconds));
  set_serving(false);
  const timespec grace{static_cast<time_t>(options.drain_grace_seconds), 0};
  if (options.drain_grace_seconds > 0 && sigtimedwait(&stop_signals, nullptr, &grace) > 0) {
    std::fprintf(stderr, "focalserve: second signal: grace cut short\n");
  }
  // ...then new calls are refused with UNAVAILABLE (retryable: clients go to another replica)
  // and open ComputeStreams answer what they have read and end. Once nothing accepted is left,
  // or at the drain deadline, Shutdown sends GOAWAY and stops. (gRPC cancels calls that reach
  // it after Shutdown has begun before any handler sees them, so Shutdown waits for the
  // accepted calls to finish rather than doing the waiting itself.)
  const auto drain_deadline = std::chrono::system_clock::now() + std::chrono::seconds(options.drain_timeout_seconds);
  service.StartDraining();
  while (service.InFlight() > 0 && std::chrono::system_clock::now() < drain_deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  std::thread stopper([&server, drain_deadline] { server->Shutdown(drain_deadline); });
  stopper.detach();
  // Cancellations from just before the deadline on are the shutdown's, not the clients'.
  const auto cut_from = drain_deadline - std::chrono::milliseconds(50);
  while (service.InFlight() > 0 && std::chrono::system_clock::now() < cut_from) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  service.StartCuttingOff();
  // A computation cannot be interrupted half-way: one that outlives the deadline by more than
  // this is abandoned with the process (and counted).
  const auto give_up = std::chrono::steady_clock::now() + std::chrono::seconds(2);
  while (service.InFlight() > 0 && std::chrono::steady_clock::now() < give_up) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  const int lost = service.CutOff() + service.InFlight();
  if (lost > 0) {
    std::fprintf(stderr, "focalserve: stopped; %d call(s) cut off at the drain deadline (--drain-timeout %llds)\n",
                 lost, static_cast<long long>(options.drain_timeout_seconds));
  } else {
    std::fprintf(stderr, "focalserve: stopped; every accepted call was answered\n");
  }
  std::fflush(stdout);
  std::fflush(stderr);
  // Exit without running destructors: the metrics HTTP server and gRPC take seconds to stop
  // and there is nothing left to flush.
  std::_Exit(lost > 0 ? 1 : 0);
}

}  // namespace
}  // namespace focal::server

int main(int argc, char** argv) { return focal::server::Run(argc, argv); }
