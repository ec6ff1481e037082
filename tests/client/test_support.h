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
#include "tests/support/server_process.h"

namespace focal::client_test {

using focal::testing::ReadFile;
using focal::testing::ServerProcess;
using focal::testing::TempDir;
using focal::testing::WriteFile;

/// Starts FOCALSERVE_BINARY with `--backend cpu` (so that results equal the in-process
/// CpuBackend bit for bit even where a GPU answers), metrics off unless `metrics`, plus
/// `extra_flags`, on a free loopback port.
absl::StatusOr<std::unique_ptr<ServerProcess>> StartServer(const std::vector<std::string>& extra_flags = {},
                                                           bool metrics = false);

/// A program run to completion with its output captured.
struct RunResult {
  int exit_code = -1;  ///< 128 + signal when a signal ended it; -1 when it had to be killed
  std::string out, err;
};
/// Runs `binary args...` (no shell) in `cwd`, with stdin from /dev/null; kills it after
/// `timeout`.
RunResult RunProgram(const std::string& binary, const std::vector<std::string>& args, const std::string& cwd = "",
              std::chrono::milliseconds timeout = std::chrono::seconds(30));

/// `n` seeded normal values (mean 0, `stddev`), and `n` seeded classes in [0, classes).
std::vector<float> Normal(size_t n, uint32_t seed, float stddev = 2.0f);
std::vector<int64_t> Classes(size_t n, int64_t classes, uint32_t seed);

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
