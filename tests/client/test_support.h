// Support for the client tests: real focalserve processes on loopback (fork/exec, port 0),
// focalctl run as a user runs it, temporary directories, the in-process CpuBackend reference for
// a ComputeCall, and a minimal HTTP GET for a server's /metrics.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "focal/client.h"
#include "focal/job.h"

namespace focal::client_test {

/// One running `focalserve` (FOCALSERVE_BINARY), killed with SIGKILL when destroyed.
class ServerProcess {
 public:
  /// Starts the server with `--listen 127.0.0.1:0 --backend cpu` (the CPU backend, so that
  /// results equal the in-process CpuBackend bit for bit even where a GPU answers), metrics
  /// off unless `metrics`, plus `extra_flags`; waits for its "listening on" line.
  static absl::StatusOr<std::unique_ptr<ServerProcess>> Start(const std::vector<std::string>& extra_flags = {},
                                                              bool metrics = false);
  ~ServerProcess();
  ServerProcess(const ServerProcess&) = delete;
  ServerProcess& operator=(const ServerProcess&) = delete;

  const std::string& address() const { return address_; }                  ///< "127.0.0.1:PORT"
  const std::string& metrics_address() const { return metrics_address_; }  ///< "" when off
  pid_t pid() const { return pid_; }
  /// Sends `signal`; false when the process has already been reaped.
  bool Signal(int signal);
  /// Waits up to `timeout` for the process to end; its exit code (128 + signal when a signal
  /// ended it), or nullopt when it still runs.
  std::optional<int> Wait(std::chrono::milliseconds timeout);
  /// Everything the server wrote to stderr so far (its log of failed calls).
  std::string Stderr() const;

 private:
  ServerProcess() = default;
  pid_t pid_ = -1;
  int stdout_fd_ = -1;
  std::string stderr_path_;
  std::string address_, metrics_address_;
  std::optional<int> exit_code_;
};

/// A program run to completion with its output captured.
struct RunResult {
  int exit_code = -1;  ///< 128 + signal when a signal ended it; -1 when it had to be killed
  std::string out, err;
};
/// Runs `binary args...` (no shell) in `cwd`, with stdin from /dev/null; kills it after
/// `timeout`.
RunResult RunProgram(const std::string& binary, const std::vector<std::string>& args, const std::string& cwd = "",
              std::chrono::milliseconds timeout = std::chrono::seconds(30));

/// A fresh directory under $TMPDIR (or /tmp), removed with its contents when destroyed.
class TempDir {
 public:
  TempDir();
  ~TempDir();
  const std::string& path() const { return path_; }
  std::string File(const std::string& name) const { return path_ + "/" + name; }

 private:
  std::string path_;
};

/// Writes `text` to `path`; false on failure.
bool WriteFile(const std::string& path, const std::string& text);
std::string ReadFile(const std::string& path);

/// The LossJob a conforming server builds from `call` (views into `call`'s tensors).
LossJob JobFor(const ComputeCall& call);
/// `call` computed in this process by focal::CpuBackend.
absl::StatusOr<LossResult> ComputeLocally(const ComputeCall& call);
/// Whether an owned result tensor and a received one hold the same dtype, shape and bytes.
bool SameTensor(const OwnedTensor& expected, const HostTensor& actual);

/// The body of GET http://`address``path` (HTTP/1.0), or an error.
absl::StatusOr<std::string> HttpGet(const std::string& address, const std::string& path);
/// Sum of the Prometheus samples of `metric` whose labels include every `label="value"` pair
/// in `labels`.
double SumSamples(const std::string& exposition, const std::string& metric, const std::vector<std::string>& labels);

}  // namespace focal::client_test
