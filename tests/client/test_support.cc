#include "tests/client/test_support.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <random>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <thread>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "kernels/cpu/cpu_backend.h"

#ifndef FOCALSERVE_BINARY
#error "FOCALSERVE_BINARY must name the focalserve executable"
#endif

namespace focal::client_test {
namespace {

using Clock = std::chrono::steady_clock;

/// argv for execv, built before fork: the child may only call async-signal-safe functions.
std::vector<char*> Argv(const std::string& binary, const std::vector<std::string>& args) {
  std::vector<char*> argv;
  argv.push_back(const_cast<char*>(binary.c_str()));
  for (const std::string& a : args) argv.push_back(const_cast<char*>(a.c_str()));
  argv.push_back(nullptr);
  return argv;
}

int DecodeWaitStatus(int status) {
  if (WIFEXITED(status)) return WEXITSTATUS(status);
  if (WIFSIGNALED(status)) return 128 + WTERMSIG(status);
  return -1;
}

}  // namespace

// ------------------------------------------------------------------------------------------

absl::StatusOr<std::unique_ptr<ServerProcess>> StartServer(const std::vector<std::string>& extra_flags,
                                                           bool metrics) {
  std::vector<std::string> flags = {"--backend", "cpu"};
  flags.insert(flags.end(), extra_flags.begin(), extra_flags.end());
  std::string error;
  std::unique_ptr<ServerProcess> server = ServerProcess::Start(FOCALSERVE_BINARY, flags, &error, metrics);
  if (!server) return absl::UnavailableError(absl::StrCat("focalserve did not start: ", error));
  return server;
}

RunResult RunProgram(const std::string& binary, const std::vector<std::string>& args, const std::string& cwd,
              std::chrono::milliseconds timeout) {
  RunResult result;
  TempDir dir;
  const std::string out_path = dir.File("stdout"), err_path = dir.File("stderr");
  const int out_fd = open(out_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  const int err_fd = open(err_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  std::vector<char*> argv = Argv(binary, args);
  const pid_t pid = fork();
  if (pid == 0) {
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    const int devnull = open("/dev/null", O_RDONLY);
    dup2(devnull, 0);
    dup2(out_fd, 1);
    dup2(err_fd, 2);
    if (!cwd.empty() && chdir(cwd.c_str()) != 0) _exit(126);
    execv(binary.c_str(), argv.data());
    _exit(127);
  }
  close(out_fd);
  close(err_fd);
  if (pid < 0) return result;
  const Clock::time_point deadline = Clock::now() + timeout;
  for (;;) {
    int status = 0;
    const pid_t r = waitpid(pid, &status, WNOHANG);
    if (r == pid) {
      result.exit_code = DecodeWaitStatus(status);
      break;
    }
    if (Clock::now() >= deadline) {
      kill(pid, SIGKILL);
      waitpid(pid, &status, 0);
      result.exit_code = -1;
      break;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
  result.out = ReadFile(out_path);
  result.err = ReadFile(err_path);
  return result;
}

std::vector<float> Normal(size_t n, uint32_t seed, float stddev) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> dist(0.0f, stddev);
  std::vector<float> v(n);
  for (float& x : v) x = dist(rng);
  return v;
}

std::vector<int64_t> Classes(size_t n, int64_t classes, uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_int_distribution<int64_t> dist(0, classes - 1);
  std::vector<int64_t> v(n);
  for (int64_t& x : v) x = dist(rng);
  return v;
}


absl::StatusOr<LossResult> ComputeLocally(const ComputeCall& call) {
  static const CpuBackend* backend = new CpuBackend();
  return backend->Compute(JobFor(call));
}

bool SameTensor(const OwnedTensor& expected, const HostTensor& actual) {
  return expected.dtype == actual.dtype && expected.shape == actual.shape && expected.size_bytes() == actual.bytes.size() &&
         std::memcmp(expected.data(), actual.bytes.data(), expected.size_bytes()) == 0;
}

// ------------------------------------------------------------------------------------------

absl::StatusOr<std::string> HttpGet(const std::string& address, const std::string& path) {
  const size_t colon = address.rfind(':');
  int port = 0;
  if (colon == std::string::npos || !absl::SimpleAtoi(address.substr(colon + 1), &port)) {
    return absl::InvalidArgumentError(absl::StrCat("bad address ", address));
  }
  const int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return absl::InternalError("socket failed");
  timeval tv{5, 0};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(port));
  inet_pton(AF_INET, address.substr(0, colon).c_str(), &addr.sin_addr);
  if (connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) {
    close(fd);
    return absl::UnavailableError(absl::StrCat("connect to ", address, ": ", std::strerror(errno)));
  }
  const std::string request = absl::StrCat("GET ", path, " HTTP/1.0\r\nHost: ", address, "\r\n\r\n");
  if (send(fd, request.data(), request.size(), MSG_NOSIGNAL) != static_cast<ssize_t>(request.size())) {
    close(fd);
    return absl::UnavailableError("send failed");
  }
  std::string response;
  char buffer[8192];
  for (ssize_t n; (n = recv(fd, buffer, sizeof buffer, 0)) > 0;) response.append(buffer, static_cast<size_t>(n));
  close(fd);
  const size_t body = response.find("\r\n\r\n");
  if (body == std::string::npos) return absl::DataLossError("no HTTP response");
  return response.substr(body + 4);
}

double SumSamples(const std::string& exposition, const std::string& metric, const std::vector<std::string>& labels) {
  double sum = 0;
  for (absl::string_view line : absl::StrSplit(exposition, '\n')) {
    if (line.substr(0, metric.size() + 1) != metric + "{") continue;
    const size_t close = line.find('}');
    if (close == absl::string_view::npos) continue;
    const absl::string_view label_text = line.substr(0, close);
    bool all = true;
    for (const std::string& l : labels) all = all && label_text.find(l) != absl::string_view::npos;
    double v;
    if (all && absl::SimpleAtod(line.substr(close + 1), &v)) sum += v;
  }
  return sum;
}

}  // namespace focal::client_test
