// The real `focalserve` binary as a child process, for integration tests on loopback: started
// with fork/execv (no shell), its stdout read until the "listening on" line, its stderr kept for
// the test to read, signals on request, and SIGKILL in the destructor if it is still running.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <condition_variable>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

namespace focal::testing {

/// One running `focalserve`.
class ServerProcess {
 public:
  /// Starts `binary` with `extra_flags` plus `--listen 127.0.0.1:0` and, when `metrics` is true,
  /// `--metrics-listen 127.0.0.1:0` (else `--metrics-listen=` to disable it). Returns null and
  /// fills `error` when the process cannot start or prints no listening line within `timeout`.
  static std::unique_ptr<ServerProcess> Start(const std::string& binary,
                                              const std::vector<std::string>& extra_flags,
                                              std::string* error, bool metrics = true,
                                              std::chrono::milliseconds timeout = std::chrono::seconds(20));
  ~ServerProcess();
  ServerProcess(const ServerProcess&) = delete;
  ServerProcess& operator=(const ServerProcess&) = delete;

  /// "127.0.0.1:PORT" from the listening line.
  const std::string& address() const { return address_; }
  /// "127.0.0.1:PORT" of the metrics endpoint; empty when metrics are off.
  const std::string& metrics_address() const { return metrics_address_; }
  /// The startup line as printed.
  const std::string& listening_line() const { return listening_line_; }
  pid_t pid() const { return pid_; }

  /// Sends `sig` to the server; false when it has already been reaped.
  bool Signal(int sig);
  /// Waits up to `timeout` for the process to exit (and for what it wrote to be read). Returns its
  /// exit code, or 128 + signal number when a signal ended it, or nullopt when it is still running.
  std::optional<int> WaitForExit(std::chrono::milliseconds timeout);
  /// Whether the process is still running (reaps it when it has exited).
  bool Running();
  /// Everything the server has written to stderr so far.
  std::string Stderr() const;
  /// Everything the server has written to stdout so far.
  std::string Stdout() const;

 private:
  ServerProcess() = default;
  void DrainLoop();  // reads stdout and stderr until both reach EOF

  pid_t pid_ = -1;
  int stdout_fd_ = -1;
  int stderr_fd_ = -1;
  std::optional<int> exit_code_;
  std::string address_, metrics_address_, listening_line_;

  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::string stdout_, stderr_;
  bool stdout_eof_ = false;
  bool output_done_ = false;  ///< both pipes reached EOF
  std::thread drain_;
};

/// Runs `argv` (argv[0] looked up in PATH) to completion with stdout and stderr appended to
/// `log_file` (or discarded when empty). Returns the exit code, or -1 when it could not run or
/// did not finish within `timeout` (it is then killed).
int RunProgram(const std::vector<std::string>& argv, const std::string& log_file = "",
               std::chrono::milliseconds timeout = std::chrono::seconds(30));

/// A fresh directory under $TMPDIR (or /tmp), removed with its contents by the destructor.
class TempDir {
 public:
  TempDir();
  ~TempDir();
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  const std::string& path() const { return path_; }
  /// path()/name
  std::string File(const std::string& name) const { return path_ + "/" + name; }

 private:
  std::string path_;
};

/// Writes `contents` to `path`; false on error.
bool WriteFile(const std::string& path, const std::string& contents);
/// Reads all of `path`; empty on error.
std::string ReadFile(const std::string& path);

}  // namespace focal::testing
