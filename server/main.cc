// focalserve: flags → options → backend → gRPC server; SIGTERM/SIGINT drain it and exit 0.
#include <grpcpp/ext/proto_server_reflection_plugin.h>
#include <grpcpp/grpcpp.h>
#include <grpcpp/health_check_service_interface.h>
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
#include "server/service.h"
#include "server/work_queue.h"

namespace focal::server {
namespace {

constexpr const char* kServiceName = "focal.v1.FocalLossService";

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
  config.limits.max_elements = options.max_elements;
  config.auth_token = token;
  config.debug_delay_ms = options.debug_delay_ms;
  config.info = BuildServerInfo(options, backend->backend->Name(), backend->devices);
  FocalLossServiceImpl service(std::move(config));

  grpc::EnableDefaultHealthCheckService(true);
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  grpc::ServerBuilder builder;
  int port = 0;
  builder.AddListeningPort(options.listen, *credentials, &port);
  builder.RegisterService(&service);
  const int message_limit = static_cast<int>(std::min<int64_t>(options.max_message_bytes, INT_MAX));
  builder.SetMaxReceiveMessageSize(message_limit);
  builder.SetMaxSendMessageSize(message_limit);
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
  health->SetServingStatus("", true);
  health->SetServingStatus(kServiceName, true);

  const std::string address = absl::StrCat(options.listen.substr(0, options.listen.rfind(':')), ":", port);
  std::printf("focalserve %s listening on %s | backend %s | devices %s | metrics %s | limits: message %lld B, "
              "%lld elements, %d concurrent + %d queued | tls %s | auth %s\n",
              FOCALSERVE_VERSION, address.c_str(), backend->why.c_str(),
              backend->devices.empty() ? "none" : absl::StrJoin(backend->devices, ", ").c_str(),
              (*metrics)->address().empty() ? "off" : absl::StrCat("http://", (*metrics)->address(), "/metrics").c_str(),
              static_cast<long long>(options.max_message_bytes), static_cast<long long>(options.max_elements),
              options.max_concurrent, options.max_queue,
              !options.tls.enabled() ? "off" : options.tls.client_ca_file.empty() ? "on" : "on, client certificates required",
              token.empty() ? "off" : "bearer token");
  std::fflush(stdout);

  // Wait for a stop signal, checking the backend's health each second: a CUDA device that lost
  // its context turns the health service NOT_SERVING so that balancers route around this replica.
  int signal_number = 0;
  bool reported_unhealthy = false;
  const timespec one_second{1, 0};
  while ((signal_number = sigtimedwait(&stop_signals, nullptr, &one_second)) < 0) {
    if (!reported_unhealthy && !backend->backend->Healthy()) {
      reported_unhealthy = true;
      std::fprintf(stderr, "focalserve: backend %s is unhealthy; health NOT_SERVING\n", backend->backend->Name().c_str());
      health->SetServingStatus("", false);
      health->SetServingStatus(kServiceName, false);
    }
  }
  std::fprintf(stderr, "focalserve: %s: draining (up to %llds), health NOT_SERVING\n", strsignal(signal_number),
               static_cast<long long>(options.drain_timeout_seconds));
  health->SetServingStatus("", false);
  health->SetServingStatus(kServiceName, false);
  service.StartDraining();  // calls that arrive from now on get UNAVAILABLE
  // Let the calls in flight finish, up to the drain deadline...
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(options.drain_timeout_seconds);
  while (service.InFlight() > 0 && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  // ...then stop at once: Shutdown cancels what is left and closes idle connections. A
  // computation cannot be interrupted half-way, so if one outlives the deadline the process
  // exits without waiting for it (its client sees the connection close).
  const int unfinished = service.InFlight();
  std::thread stopper([&server] { server->Shutdown(std::chrono::system_clock::now()); });
  stopper.detach();
  const auto give_up = std::chrono::steady_clock::now() + std::chrono::seconds(2);
  while (service.InFlight() > 0 && std::chrono::steady_clock::now() < give_up) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  std::fprintf(stderr, "focalserve: stopped%s\n",
               unfinished > 0 ? absl::StrCat(" (", unfinished, " call(s) cut off at the drain deadline)").c_str() : "");
  std::fflush(stdout);
  std::fflush(stderr);
  // Exit without running destructors: the metrics HTTP server and gRPC take seconds to stop
  // and there is nothing left to flush.
  std::_Exit(0);
}

}  // namespace
}  // namespace focal::server

int main(int argc, char** argv) { return focal::server::Run(argc, argv); }
