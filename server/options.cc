#include "server/options.h"

#include <functional>
#include <map>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"

namespace focal::server {
namespace {

struct Flag {
  const char* help;
  std::function<bool(const std::string&, ServerOptions&)> set;  ///< false: bad value
};

bool ParseInt(const std::string& text, int64_t min, int64_t& out) {
  int64_t v;
  if (!absl::SimpleAtoi(text, &v) || v < min) return false;
  out = v;
  return true;
}

template <typename Int>
std::function<bool(const std::string&, ServerOptions&)> IntFlag(Int ServerOptions::*member, int64_t min) {
  return [member, min](const std::string& text, ServerOptions& o) {
    int64_t v;
    if (!ParseInt(text, min, v)) return false;
    o.*member = static_cast<Int>(v);
    return true;
  };
}

std::function<bool(const std::string&, ServerOptions&)> LimitFlag(int64_t RequestLimits::*member) {
  return [member](const std::string& text, ServerOptions& o) { return ParseInt(text, 1, o.limits.*member); };
}

std::function<bool(const std::string&, ServerOptions&)> KeepaliveFlag(int64_t KeepaliveOptions::*member) {
  return [member](const std::string& text, ServerOptions& o) { return ParseInt(text, 0, o.keepalive.*member); };
}

const std::map<std::string, Flag>& Flags() {
  static const auto* flags = new std::map<std::string, Flag>{
      {"listen", {"host:port to serve gRPC on; port 0 picks a free one (default 127.0.0.1:50051)",
                  [](const std::string& v, ServerOptions& o) { o.listen = v; return !v.empty(); }}},
      {"backend", {"auto | cpu | cuda: auto uses CUDA when a device answers, else the CPU (default auto)",
                   [](const std::string& v, ServerOptions& o) {
                     if (v == "auto") o.backend = BackendChoice::kAuto;
                     else if (v == "cpu") o.backend = BackendChoice::kCpu;
                     else if (v == "cuda") o.backend = BackendChoice::kCuda;
                     else return false;
                     return true;
                   }}},
      {"devices", {"comma-separated CUDA device ordinals to use (default: all)",
                   [](const std::string& v, ServerOptions& o) {
                     o.devices.clear();
                     for (absl::string_view part : absl::StrSplit(v, ',', absl::SkipEmpty())) {
                       int d;
                       if (!absl::SimpleAtoi(part, &d) || d < 0) return false;
                       o.devices.push_back(d);
                     }
                     return true;
                   }}},
      {"cuda-streams", {"requests computed at once per CUDA device, each on its own stream (default 4)",
                        IntFlag(&ServerOptions::cuda_streams, 1)}},
      {"cpu-threads", {"OpenMP threads per request on the CPU backend; 0 = all cores (default 0)",
                       IntFlag(&ServerOptions::cpu_threads, 0)}},
      {"max-message-bytes", {"largest gRPC message, both directions (default 1073741824)",
                             IntFlag(&ServerOptions::max_message_bytes, 1024)}},
      {"max-elements", {"largest logits tensor per request, in elements (default 268435456)",
                        LimitFlag(&RequestLimits::max_elements)}},
      {"max-classes", {"most classes (logits dim 1) per request, for every variant and RPC (default 1048576)",
                       LimitFlag(&RequestLimits::max_classes)}},
      {"max-buffered-bytes", {"computed answers streams may hold for clients that have not read them, all streams "
                              "together; over it streams read no new batches (default 536870912)",
                              LimitFlag(&RequestLimits::max_buffered_bytes)}},
      {"max-concurrent", {"requests computing at once (default 4)", IntFlag(&ServerOptions::max_concurrent, 1)}},
      {"max-queue", {"requests waiting beyond those; more get RESOURCE_EXHAUSTED at once (default 64)",
                     IntFlag(&ServerOptions::max_queue, 0)}},
      {"metrics-listen", {"host:port for Prometheus /metrics; empty disables (default 127.0.0.1:9464)",
                          [](const std::string& v, ServerOptions& o) { o.metrics_listen = v; return true; }}},
      {"tls-cert", {"PEM certificate chain: serve TLS", [](const std::string& v, ServerOptions& o) { o.tls.cert_file = v; return !v.empty(); }}},
      {"tls-key", {"PEM private key for --tls-cert", [](const std::string& v, ServerOptions& o) { o.tls.key_file = v; return !v.empty(); }}},
      {"tls-client-ca", {"PEM CA bundle: require client certificates it signed (mutual TLS)",
                         [](const std::string& v, ServerOptions& o) { o.tls.client_ca_file = v; return !v.empty(); }}},
      {"auth-token-file", {"file holding a bearer token every call must send as 'authorization: Bearer <token>' (health stays open)",
                           [](const std::string& v, ServerOptions& o) { o.auth_token_file = v; return !v.empty(); }}},
      {"shared-memory", {"on: same-host clients may register POSIX shared-memory regions for tensors and results "
                         "(RegisterSharedMemory; the server maps any object its user may open, so only where clients are "
                         "trusted with that) (default off)",
                         [](const std::string& v, ServerOptions& o) {
                           if (v != "on" && v != "off") return false;
                           o.shared_memory = v == "on";
                           return true;
                         }}},
      {"http2-window-bytes", {"fixed HTTP/2 window per stream, bounding what a client that never reads makes the "
                              "transport buffer; 0 = gRPC's BDP-sized windows (faster small calls, no bound) "
                              "(default 4194304)",
                              IntFlag(&ServerOptions::http2_window_bytes, 0)}},
      {"keepalive-time", {"seconds before pinging an idle connection (default 60)", KeepaliveFlag(&KeepaliveOptions::time_seconds)}},
      {"keepalive-timeout", {"seconds to wait for the ping's answer (default 20)", KeepaliveFlag(&KeepaliveOptions::timeout_seconds)}},
      {"max-connection-age", {"seconds after which connections are closed so clients rebalance; 0 = never (default 0)",
                              KeepaliveFlag(&KeepaliveOptions::max_connection_age_seconds)}},
      {"max-connection-age-grace", {"seconds in-flight calls get when a connection ages out (default 30)",
                                    KeepaliveFlag(&KeepaliveOptions::max_connection_age_grace_seconds)}},
      {"drain-grace", {"seconds after SIGTERM during which health is NOT_SERVING but calls are still served, "
                       "so balancers can take this replica out (default 5)",
                       IntFlag(&ServerOptions::drain_grace_seconds, 0)}},
      {"drain-timeout", {"seconds after the grace that accepted calls may take to finish; later ones are cut off "
                         "and the exit code is 1 (default 30)",
                         IntFlag(&ServerOptions::drain_timeout_seconds, 0)}},
      {"trim-idle-ms", {"return freed memory to the OS after this long idle; 0 = never (default 2000)",
                        IntFlag(&ServerOptions::trim_idle_ms, 0)}},
      {"debug-delay-ms", {"TEST ONLY: each computation sleeps this long first (default 0)",
                          IntFlag(&ServerOptions::debug_delay_ms, 0)}},
      {"debug-unhealthy-after", {"TEST ONLY: the backend turns unhealthy after this many computations (default 0: never)",
                                 IntFlag(&ServerOptions::debug_unhealthy_after, 0)}},
  };
  return *flags;
}

}  // namespace

std::string Usage() {
  std::string text = "usage: focalserve [--flag=value ...]\n\nA gRPC service computing focal-loss variants and their gradients.\n\nflags:\n";
  for (const auto& [name, flag] : Flags()) absl::StrAppend(&text, "  --", name, "\n      ", flag.help, "\n");
  absl::StrAppend(&text, "  --help\n      this text\n");
  return text;
}

absl::StatusOr<ServerOptions> ParseFlags(int argc, const char* const* argv) {
  ServerOptions options;
  for (int i = 1; i < argc; ++i) {
    std::string arg = argv[i];
    if (arg == "--help" || arg == "-h") return absl::CancelledError(Usage());
    if (arg.rfind("--", 0) != 0) {
      return absl::InvalidArgumentError(absl::StrCat("unexpected argument '", arg, "'; flags look like --name=value (see --help)"));
    }
    std::string name = arg.substr(2), value;
    const size_t eq = name.find('=');
    if (eq != std::string::npos) {
      value = name.substr(eq + 1);
      name = name.substr(0, eq);
    } else if (i + 1 < argc) {
      value = argv[++i];
    } else {
      return absl::InvalidArgumentError(absl::StrCat("--", name, " needs a value"));
    }
    const auto it = Flags().find(name);
    if (it == Flags().end()) return absl::InvalidArgumentError(absl::StrCat("unknown flag --", name, " (see --help)"));
    if (!it->second.set(value, options)) {
      return absl::InvalidArgumentError(absl::StrCat("--", name, "=", value, " is not valid: ", it->second.help));
    }
  }
  if (options.tls.enabled() != !options.tls.key_file.empty()) {
    return absl::InvalidArgumentError("--tls-cert and --tls-key go together");
  }
  if (!options.tls.client_ca_file.empty() && !options.tls.enabled()) {
    return absl::InvalidArgumentError("--tls-client-ca needs --tls-cert and --tls-key");
  }
  return options;
}

}  // namespace focal::server
