#include "tests/support/server_process.h"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cctype>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>

namespace focal::testing {
namespace {

using Clock = std::chrono::steady_clock;

/// argv as execv wants it; built before fork because the child may only call
/// async-signal-safe functions.
struct Argv {
  explicit Argv(const std::vector<std::string>& args) : strings(args) {
    for (std::string& s : strings) pointers.push_back(s.data());
    pointers.push_back(nullptr);
  }
  std::vector<std::string> strings;
  std::vector<char*> pointers;
};

/// Exit code as a shell reports it: the code, or 128 + signal.
int DecodeWaitStatus(int status) {
  if (WIFEXITED(status)) return WEXITSTATUS(status);
  if (WIFSIGNALED(status)) return 128 + WTERMSIG(status);
  return -1;
}

/// In the child, between fork and exec: close every descriptor above stderr so that the child
/// holds no socket or pipe end of the test process (bounded; only async-signal-safe calls).
void CloseFrom(int first, int limit) {
  for (int fd = first; fd < limit; ++fd) close(fd);
}

int OpenMaxForChild() {
  const long max = sysconf(_SC_OPEN_MAX);
  return static_cast<int>(max <= 0 || max > 65536 ? 65536 : max);
}

/// The token after `marker` in `line`, up to whitespace or , ; ) and without a trailing '/'-path
/// when `strip_path` is set.
std::string TokenAfter(const std::string& line, const std::string& marker, bool strip_path) {
  const size_t at = line.find(marker);
  if (at == std::string::npos) return "";
  size_t begin = at + marker.size();
  size_t end = begin;
  while (end < line.size() && !std::isspace(static_cast<unsigned char>(line[end])) &&
         line[end] != ',' && line[end] != ';' && line[end] != ')' && line[end] != '(') {
    ++end;
  }
  std::string token = line.substr(begin, end - begin);
  if (strip_path) {
    const size_t slash = token.find('/');
    if (slash != std::string::npos) token.resize(slash);
  }
  return token;
}

}  // namespace

std::unique_ptr<ServerProcess> ServerProcess::Start(const std::string& binary,
                                                    const std::vector<std::string>& extra_flags,
                                                    std::string* error, bool metrics,
                                                    std::chrono::milliseconds timeout) {
  std::vector<std::string> args{binary};
  args.insert(args.end(), extra_flags.begin(), extra_flags.end());
  args.push_back("--listen");
  args.push_back("127.0.0.1:0");
  if (metrics) {
    args.push_back("--metrics-listen");
    args.push_back("127.0.0.1:0");
  } else {
    args.push_back("--metrics-listen=");
  }
  Argv argv(args);

  int out_pipe[2], err_pipe[2];
  if (pipe2(out_pipe, O_CLOEXEC) != 0) {
    *error = std::string("pipe2: ") + std::strerror(errno);
    return nullptr;
  }
  if (pipe2(err_pipe, O_CLOEXEC) != 0) {
    *error = std::string("pipe2: ") + std::strerror(errno);
    close(out_pipe[0]);
    close(out_pipe[1]);
    return nullptr;
  }
  const int open_max = OpenMaxForChild();
  const pid_t parent = getpid();
  const pid_t pid = fork();
  if (pid < 0) {
    *error = std::string("fork: ") + std::strerror(errno);
    for (int fd : {out_pipe[0], out_pipe[1], err_pipe[0], err_pipe[1]}) close(fd);
    return nullptr;
  }
  if (pid == 0) {
    // Child: the server must not outlive a crashed test.
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (getppid() != parent) _exit(126);
    const int devnull = open("/dev/null", O_RDONLY);
    if (devnull >= 0) dup2(devnull, STDIN_FILENO);
    dup2(out_pipe[1], STDOUT_FILENO);
    dup2(err_pipe[1], STDERR_FILENO);
    CloseFrom(3, open_max);
    execv(argv.pointers[0], argv.pointers.data());
    const char msg[] = "execv failed\n";
    ssize_t ignored = write(STDERR_FILENO, msg, sizeof msg - 1);
    (void)ignored;
    _exit(127);
  }
  close(out_pipe[1]);
  close(err_pipe[1]);

  std::unique_ptr<ServerProcess> server(new ServerProcess());
  server->pid_ = pid;
  server->stdout_fd_ = out_pipe[0];
  server->stderr_fd_ = err_pipe[0];
  server->drain_ = std::thread([s = server.get()] { s->DrainLoop(); });

  std::string line;
  {
    std::unique_lock<std::mutex> lock(server->mu_);
    const auto deadline = Clock::now() + timeout;
    auto find_line = [&]() -> bool {
      size_t start = 0;
      while (true) {
        const size_t nl = server->stdout_.find('\n', start);
        if (nl == std::string::npos) return false;
        std::string candidate = server->stdout_.substr(start, nl - start);
        if (candidate.find("listening on ") != std::string::npos) {
          line = candidate;
          return true;
        }
        start = nl + 1;
      }
    };
    while (!find_line() && !server->stdout_eof_) {
      if (server->cv_.wait_until(lock, deadline) == std::cv_status::timeout) {
        find_line();
        break;
      }
    }
  }
  if (line.empty()) {
    std::ostringstream why;
    why << "no 'listening on' line from " << binary << " within " << timeout.count()
        << " ms; stdout: [" << server->Stdout() << "] stderr: [" << server->Stderr() << "]";
    *error = why.str();
    return nullptr;  // the destructor kills it
  }
  server->listening_line_ = line;
  server->address_ = TokenAfter(line, "listening on ", /*strip_path=*/false);
  server->metrics_address_ = TokenAfter(line, "metrics http://", /*strip_path=*/true);
  if (server->address_.empty()) {
    *error = "could not parse the address from: " + line;
    return nullptr;
  }
  return server;
}

void ServerProcess::DrainLoop() {
  pollfd fds[2] = {{stdout_fd_, POLLIN, 0}, {stderr_fd_, POLLIN, 0}};
  bool open[2] = {true, true};
  char buffer[4096];
  while (open[0] || open[1]) {
    for (int i = 0; i < 2; ++i) fds[i].fd = open[i] ? (i == 0 ? stdout_fd_ : stderr_fd_) : -1;
    const int ready = poll(fds, 2, 1000);
    if (ready < 0) {
      if (errno == EINTR) continue;
      break;
    }
    for (int i = 0; i < 2; ++i) {
      if (!open[i] || fds[i].revents == 0) continue;
      const ssize_t n = read(fds[i].fd, buffer, sizeof buffer);
      if (n < 0 && errno == EINTR) continue;
      std::lock_guard<std::mutex> lock(mu_);
      if (n <= 0) {
        open[i] = false;
        if (i == 0) stdout_eof_ = true;
        if (!open[0] && !open[1]) output_done_ = true;
      } else {
        (i == 0 ? stdout_ : stderr_).append(buffer, static_cast<size_t>(n));
      }
      cv_.notify_all();
    }
  }
  std::lock_guard<std::mutex> lock(mu_);
  stdout_eof_ = true;
  output_done_ = true;
  cv_.notify_all();
}

ServerProcess::~ServerProcess() {
  if (pid_ > 0 && !exit_code_) {
    kill(pid_, SIGKILL);
    int status = 0;
    while (waitpid(pid_, &status, 0) < 0 && errno == EINTR) {
    }
    exit_code_ = DecodeWaitStatus(status);
  }
  if (drain_.joinable()) drain_.join();
  if (stdout_fd_ >= 0) close(stdout_fd_);
  if (stderr_fd_ >= 0) close(stderr_fd_);
}

bool ServerProcess::Signal(int sig) {
  if (pid_ <= 0 || exit_code_) return false;
  return kill(pid_, sig) == 0;
}

bool ServerProcess::Running() {
  if (exit_code_) return false;
  int status = 0;
  const pid_t r = waitpid(pid_, &status, WNOHANG);
  if (r == pid_) {
    exit_code_ = DecodeWaitStatus(status);
    return false;
  }
  return true;
}

std::optional<int> ServerProcess::WaitForExit(std::chrono::milliseconds timeout) {
  const auto deadline = Clock::now() + timeout;
  while (Running()) {
    if (Clock::now() >= deadline) return std::nullopt;
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  // Everything it wrote is read before its exit is reported, so Stderr() holds its last lines.
  std::unique_lock<std::mutex> lock(mu_);
  cv_.wait_for(lock, std::chrono::seconds(2), [this] { return output_done_; });
  return exit_code_;
}

std::string ServerProcess::Stderr() const {
  std::lock_guard<std::mutex> lock(mu_);
  return stderr_;
}

std::string ServerProcess::Stdout() const {
  std::lock_guard<std::mutex> lock(mu_);
  return stdout_;
}

int RunProgram(const std::vector<std::string>& args, const std::string& log_file,
               std::chrono::milliseconds timeout) {
  if (args.empty()) return -1;
  Argv argv(args);
  const std::string log = log_file.empty() ? "/dev/null" : log_file;
  const int open_max = OpenMaxForChild();
  const pid_t pid = fork();
  if (pid < 0) return -1;
  if (pid == 0) {
    const int devnull = open("/dev/null", O_RDONLY);
    if (devnull >= 0) dup2(devnull, STDIN_FILENO);
    const int out = open(log.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0644);
    if (out >= 0) {
      dup2(out, STDOUT_FILENO);
      dup2(out, STDERR_FILENO);
    }
    CloseFrom(3, open_max);
    execvp(argv.pointers[0], argv.pointers.data());
    _exit(127);
  }
  const auto deadline = Clock::now() + timeout;
  int status = 0;
  while (true) {
    const pid_t r = waitpid(pid, &status, WNOHANG);
    if (r == pid) return DecodeWaitStatus(status);
    if (r < 0 && errno != EINTR) return -1;
    if (Clock::now() >= deadline) {
      kill(pid, SIGKILL);
      waitpid(pid, &status, 0);
      return -1;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
}

TempDir::TempDir() {
  const char* base = std::getenv("TMPDIR");
  std::string pattern = std::string(base && *base ? base : "/tmp") + "/focalserve-it-XXXXXX";
  if (mkdtemp(pattern.data()) != nullptr) path_ = pattern;
}

TempDir::~TempDir() {
  if (path_.empty()) return;
  std::error_code ignored;
  std::filesystem::remove_all(path_, ignored);
}

bool WriteFile(const std::string& path, const std::string& contents) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out << contents;
  return static_cast<bool>(out);
}

std::string ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

}  // namespace focal::testing
