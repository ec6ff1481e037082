// focal_echo_server: a test-only gRPC server whose one method, /focal.bench.Echo/Echo, answers
// with the request's bytes, unchanged and uncopied (the received ByteBuffer is sent back).
//
//   focal_echo_server [--listen HOST:PORT]     (default 127.0.0.1:0; prints `listening on ...`)
//
// It is the ceiling for large requests: gRPC moving the same bytes over the same loopback with
// no decoding, no compute and no encoding. focal_loadgen --rpc echo sends it a serialized
// ComputeRequest. Same 1 GiB message limits as focalserve's benchmarks use. SIGINT or SIGTERM
// stops it.

#include <grpcpp/generic/async_generic_service.h>
#include <grpcpp/grpcpp.h>

#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <string>

namespace {

constexpr int kMaxMessageBytes = 1 << 30;
constexpr char kEchoMethod[] = "/focal.bench.Echo/Echo";

// Reads one message and writes it back with the status; the generic API sees every call as a
// bidi stream, and a unary client sends exactly one message.
class EchoReactor final : public grpc::ServerGenericBidiReactor {
 public:
  EchoReactor() { StartRead(&buffer_); }

  void OnReadDone(bool ok) override {
    if (!ok) {
      Finish(grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "no request message"));
      return;
    }
    StartWriteAndFinish(&buffer_, grpc::WriteOptions(), grpc::Status::OK);
  }

  void OnDone() override { delete this; }

 private:
  grpc::ByteBuffer buffer_;
};

class UnimplementedReactor final : public grpc::ServerGenericBidiReactor {
 public:
  explicit UnimplementedReactor(const std::string& method) {
    Finish(grpc::Status(grpc::StatusCode::UNIMPLEMENTED,
                        "focal_echo_server serves only " + std::string(kEchoMethod) + ", not " +
                            method));
  }
  void OnDone() override { delete this; }
};

class EchoService final : public grpc::CallbackGenericService {
 public:
  grpc::ServerGenericBidiReactor* CreateReactor(
      grpc::GenericCallbackServerContext* context) override {
    if (context->method() == kEchoMethod) return new EchoReactor();
    return new UnimplementedReactor(context->method());
  }
};

[[noreturn]] void Usage(const std::string& error) {
  std::fprintf(stderr, "focal_echo_server: %s\nusage: focal_echo_server [--listen HOST:PORT]\n",
               error.c_str());
  std::exit(2);
}

}  // namespace

int main(int argc, char** argv) {
  std::string listen = "127.0.0.1:0";
  for (int i = 1; i < argc; ++i) {
    std::string flag = argv[i];
    if (flag.rfind("--listen=", 0) == 0) {
      listen = flag.substr(9);
    } else if (flag == "--listen" && i + 1 < argc) {
      listen = argv[++i];
    } else {
      Usage("unknown flag " + flag);
    }
  }
  const size_t colon = listen.rfind(':');
  if (colon == std::string::npos) Usage("--listen wants HOST:PORT, got '" + listen + "'");

  // Block the stop signals before gRPC starts its threads, so only sigwait below sees them.
  sigset_t stop_signals;
  sigemptyset(&stop_signals);
  sigaddset(&stop_signals, SIGINT);
  sigaddset(&stop_signals, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &stop_signals, nullptr);

  EchoService service;
  grpc::ServerBuilder builder;
  int port = 0;
  builder.AddListeningPort(listen, grpc::InsecureServerCredentials(), &port);
  builder.RegisterCallbackGenericService(&service);
  builder.SetMaxReceiveMessageSize(kMaxMessageBytes);
  builder.SetMaxSendMessageSize(kMaxMessageBytes);
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  if (!server || port == 0) {
    std::fprintf(stderr, "focal_echo_server: cannot listen on %s\n", listen.c_str());
    return 1;
  }
  std::printf("focal_echo_server: listening on %s:%d\n", listen.substr(0, colon).c_str(), port);
  std::fflush(stdout);

  int signal_number = 0;
  sigwait(&stop_signals, &signal_number);
  server->Shutdown();
  server->Wait();
  return 0;
}
