// focalserve's options: one plain struct, its defaults here and nowhere else, filled from flags.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "server/limits.h"

namespace focal::server {

enum class BackendChoice { kAuto, kCpu, kCuda };

struct TlsOptions {
  std::string cert_file;       ///< PEM server certificate chain; TLS is on when set
  std::string key_file;        ///< PEM private key
  std::string client_ca_file;  ///< PEM CA bundle; when set, clients must present a certificate it signed
  bool enabled() const { return !cert_file.empty(); }
};

struct KeepaliveOptions {
  int64_t time_seconds = 60;     ///< ping an idle connection after this long
  int64_t timeout_seconds = 20;  ///< drop it when the ping is not answered in this long
  /// Close connections after this long (0: never), so clients behind a load balancer re-resolve
  /// and spread onto new replicas; in-flight calls get `max_connection_age_grace_seconds`.
  int64_t max_connection_age_seconds = 0;
  int64_t max_connection_age_grace_seconds = 30;
};

struct ServerOptions {
  std::string listen = "127.0.0.1:50051";  ///< port 0 picks a free port, printed at start
  BackendChoice backend = BackendChoice::kAuto;
  std::vector<int> devices;  ///< CUDA ordinals to use; empty: all
  int cuda_streams = 4;      ///< concurrent requests per CUDA device
  int cpu_threads = 0;       ///< OpenMP threads per request; 0: all cores
  int64_t max_message_bytes = int64_t{1} << 30;  ///< both directions
  RequestLimits limits;  ///< sizes a request may have (server/limits.h)
  int max_concurrent = 4;   ///< requests computing at once
  int max_queue = 64;       ///< requests waiting beyond those; more get RESOURCE_EXHAUSTED at once
  std::string metrics_listen = "127.0.0.1:9464";  ///< Prometheus /metrics; empty disables
  TlsOptions tls;
  std::string auth_token_file;  ///< bearer token required on every call but health
  /// Same-host clients may register POSIX shared-memory regions (RegisterSharedMemory). Off by
  /// default: the server then maps any shared-memory object its user may open, at a client's word.
  bool shared_memory = false;
  KeepaliveOptions keepalive;
  /// Fixed HTTP/2 window per stream (at 4 MiB a 1 ms round trip still carries 4 GB/s), which
  /// bounds what a client that never reads makes the transport buffer; 0: gRPC sizes windows by
  /// BDP probing (lower latency for small calls, no bound per stream).
  int64_t http2_window_bytes = int64_t{4} << 20;
  /// SIGTERM: health turns NOT_SERVING at once and calls are still served this long, so that
  /// balancers and Kubernetes endpoints stop sending here before the server stops accepting.
  int64_t drain_grace_seconds = 5;
  /// Then: GOAWAY to every client, open streams finish what they accepted, and calls still
  /// running after this long are cut off (the exit code then says so).
  int64_t drain_timeout_seconds = 30;
  /// Memory freed after a burst goes back to the OS once the server has been idle this long
  /// (0: never); during bursts freed pages stay mapped for reuse.
  int64_t trim_idle_ms = 2000;
  int64_t debug_delay_ms = 0;          ///< test only: each computation sleeps this long first
  /// Test only: the backend reports itself unhealthy after this many computations (0: never),
  /// as a CUDA backend does after a sticky device error.
  int64_t debug_unhealthy_after = 0;
};

/// Parses `--name=value` / `--name value` flags. `--help` yields a status whose message is the
/// usage text (code CANCELLED, so callers print it and exit 0); bad flags are INVALID_ARGUMENT
/// naming the flag.
absl::StatusOr<ServerOptions> ParseFlags(int argc, const char* const* argv);

/// The usage text, with every flag and its default.
std::string Usage();

}  // namespace focal::server
