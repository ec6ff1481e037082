// focal_loadgen: a closed-loop gRPC load generator for FocalServe and its baselines.
//
//   focal_loadgen --target HOST:PORT [--rpc compute|infer|info|echo] [--concurrency N] [--channels K]
//                 [--duration S] [--warmup S] [--shape 64,80] [--variant sigmoid_focal|softmax_focal]
//                 [--targets float|index] [--gradient 0|1] [--reduction mean|sum|none]
//                 [--decode 0|1] [--timeout S] [--seed N]
//
// One request is built up front (random normal float32 logits; float one-hot targets for
// sigmoid_focal, int64 class-index targets for softmax_focal, `--targets` to choose) and sent
// again and again by N worker threads, each with one call in flight, for --duration seconds
// after --warmup seconds. It prints the latency percentiles, requests/s and MB/s (request plus
// response bytes, 10^6 bytes per MB), then one JSON line with the same figures.
//
// Every RPC goes through grpc::GenericStub with the request serialized once into a ByteBuffer,
// whichever the method: `compute` calls /focal.v1.FocalLossService/Compute, `infer` the same
// computation as the Open Inference Protocol's /inference.GRPCInferenceService/ModelInfer
// (raw contents, as tritonclient sends them), `info` /focal.v1.FocalLossService/GetServerInfo, `echo` /focal.bench.Echo/Echo (focal_echo_server,
// the byte-echo ceiling) with the same serialized ComputeRequest. The client does the same work
// per call for all three, so ratios between them measure the servers, not the client. Responses
// are kept as bytes (--decode 1 parses each into its message, as a real client would, and
// reports the server's own queue and compute times from ComputeResponse.timing); one call
// before the run is always parsed and checked, and a failure there ends the run.
//
// Each worker drives its own CompletionQueue from its own thread (what a blocking stub does
// inside), so there is no thread hop per call. Channels use a local subchannel pool, so K
// channels are K TCP connections; by default one per worker.

#include <grpcpp/generic/generic_stub.h>
#include <grpcpp/grpcpp.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cinttypes>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <memory>
#include <mutex>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "focal/v1/focal_loss.grpc.pb.h"
#include "focal/v1/focal_loss.pb.h"
#include "inference/grpc_predict_v2.grpc.pb.h"

namespace {

using Clock = std::chrono::steady_clock;

constexpr int kMaxMessageBytes = 1 << 30;
constexpr char kEchoMethod[] = "/focal.bench.Echo/Echo";

enum class Rpc { kCompute, kInfer, kInfo, kEcho };

struct LoadgenOptions {
  std::string target;
  Rpc rpc = Rpc::kCompute;
  std::string rpc_name = "compute";
  int concurrency = 1;
  int channels = 0;  // 0: one per worker
  double duration_s = 10.0;
  double warmup_s = 1.0;
  std::vector<int64_t> shape{64, 80};
  std::string variant = "sigmoid_focal";
  std::string targets;  // "float" or "index"; empty: the variant's usual kind
  bool gradient = false;
  std::string reduction = "mean";
  bool decode = false;
  double timeout_s = 120.0;
  uint64_t seed = 1;
};

[[noreturn]] void Usage(const std::string& error) {
  std::fprintf(stderr,
               "focal_loadgen: %s\n"
               "usage: focal_loadgen --target HOST:PORT [--rpc compute|infer|info|echo] "
               "[--concurrency N] [--channels K] [--duration S] [--warmup S] [--shape 64,80] "
               "[--variant sigmoid_focal|softmax_focal] [--targets float|index] "
               "[--gradient 0|1] [--reduction mean|sum|none] [--decode 0|1] [--timeout S] "
               "[--seed N]\n",
               error.c_str());
  std::exit(2);
}

double ParseDouble(const std::string& flag, const std::string& value) {
  char* end = nullptr;
  double v = std::strtod(value.c_str(), &end);
  if (value.empty() || *end != '\0' || !std::isfinite(v) || v < 0) {
    Usage(flag + " wants a non-negative number, got '" + value + "'");
  }
  return v;
}

int64_t ParseInt(const std::string& flag, const std::string& value, int64_t min) {
  char* end = nullptr;
  long long v = std::strtoll(value.c_str(), &end, 10);
  if (value.empty() || *end != '\0' || v < min) {
    Usage(flag + " wants an integer >= " + std::to_string(min) + ", got '" + value + "'");
  }
  return v;
}

bool ParseBool(const std::string& flag, const std::string& value) {
  if (value == "1" || value == "true") return true;
  if (value == "0" || value == "false") return false;
  Usage(flag + " wants 0 or 1, got '" + value + "'");
}

// "64,80" or "64x80".
std::vector<int64_t> ParseShape(const std::string& value) {
  std::vector<int64_t> shape;
  size_t start = 0;
  while (start <= value.size()) {
    size_t end = value.find_first_of(",x", start);
    if (end == std::string::npos) end = value.size();
    shape.push_back(ParseInt("--shape", value.substr(start, end - start), 1));
    start = end + 1;
  }
  if (shape.size() < 2) Usage("--shape wants at least two dimensions [N, C, ...]");
  return shape;
}

LoadgenOptions ParseFlags(int argc, char** argv) {
  LoadgenOptions o;
  for (int i = 1; i < argc; ++i) {
    std::string flag = argv[i];
    std::string value;
    size_t eq = flag.find('=');
    if (eq != std::string::npos) {
      value = flag.substr(eq + 1);
      flag = flag.substr(0, eq);
    } else if (flag == "--help" || flag == "-h") {
      Usage("help");
    } else if (i + 1 < argc) {
      value = argv[++i];
    } else {
      Usage("missing value for " + flag);
    }
    if (flag == "--target") {
      o.target = value;
    } else if (flag == "--rpc") {
      o.rpc_name = value;
      if (value == "compute") {
        o.rpc = Rpc::kCompute;
      } else if (value == "infer") {
        o.rpc = Rpc::kInfer;
      } else if (value == "info") {
        o.rpc = Rpc::kInfo;
      } else if (value == "echo") {
        o.rpc = Rpc::kEcho;
      } else {
        Usage("--rpc wants compute, infer, info or echo, got '" + value + "'");
      }
    } else if (flag == "--concurrency") {
      o.concurrency = static_cast<int>(ParseInt(flag, value, 1));
    } else if (flag == "--channels") {
      o.channels = static_cast<int>(ParseInt(flag, value, 0));
    } else if (flag == "--duration") {
      o.duration_s = ParseDouble(flag, value);
    } else if (flag == "--warmup") {
      o.warmup_s = ParseDouble(flag, value);
    } else if (flag == "--shape") {
      o.shape = ParseShape(value);
    } else if (flag == "--variant") {
      if (value != "sigmoid_focal" && value != "softmax_focal") {
        Usage("--variant wants sigmoid_focal or softmax_focal, got '" + value + "'");
      }
      o.variant = value;
    } else if (flag == "--targets") {
      if (value != "float" && value != "index") {
        Usage("--targets wants float or index, got '" + value + "'");
      }
      o.targets = value;
    } else if (flag == "--gradient") {
      o.gradient = ParseBool(flag, value);
    } else if (flag == "--reduction") {
      if (value != "mean" && value != "sum" && value != "none") {
        Usage("--reduction wants mean, sum or none, got '" + value + "'");
      }
      o.reduction = value;
    } else if (flag == "--decode") {
      o.decode = ParseBool(flag, value);
    } else if (flag == "--timeout") {
      o.timeout_s = ParseDouble(flag, value);
    } else if (flag == "--seed") {
      o.seed = static_cast<uint64_t>(ParseInt(flag, value, 0));
    } else {
      Usage("unknown flag " + flag);
    }
  }
  if (o.target.empty()) Usage("--target is required");
  if (o.duration_s <= 0) Usage("--duration must be positive");
  if (o.targets.empty()) o.targets = o.variant == "softmax_focal" ? "index" : "float";
  if (o.variant == "softmax_focal" && o.targets == "float") {
    Usage("softmax_focal takes class-index targets only");
  }
  if (o.channels == 0 || o.channels > o.concurrency) o.channels = o.concurrency;
  return o;
}

// Random normal logits; targets drawn uniformly from the C classes of dim 1.
focal::v1::ComputeRequest BuildComputeRequest(const LoadgenOptions& o) {
  focal::v1::ComputeRequest request;
  request.set_request_id("focal_loadgen");
  focal::v1::LossSpec* loss = request.mutable_loss();
  if (o.variant == "sigmoid_focal") {
    loss->mutable_sigmoid_focal();  // every parameter at its default: gamma 2, alpha 0.25
  } else {
    loss->mutable_softmax_focal();  // gamma 2, no alpha
  }
  loss->set_reduction(o.reduction == "mean"  ? focal::v1::MEAN
                      : o.reduction == "sum" ? focal::v1::SUM
                                             : focal::v1::NONE);
  request.set_compute_gradient(o.gradient);

  const int64_t n = o.shape[0];
  const int64_t c = o.shape[1];
  int64_t inner = 1;  // d1 * ... * dk
  for (size_t i = 2; i < o.shape.size(); ++i) inner *= o.shape[i];
  const int64_t numel = n * c * inner;
  const int64_t positions = n * inner;

  std::mt19937_64 rng(o.seed);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::uniform_int_distribution<int64_t> klass(0, c - 1);

  focal::v1::Tensor* logits = request.mutable_logits();
  logits->set_dtype(focal::v1::FLOAT32);
  for (int64_t d : o.shape) logits->add_shape(d);
  std::string* logit_bytes = logits->mutable_data();
  logit_bytes->resize(static_cast<size_t>(numel) * sizeof(float));
  {
    std::vector<float> values(static_cast<size_t>(numel));
    for (float& v : values) v = normal(rng);
    std::memcpy(logit_bytes->data(), values.data(), logit_bytes->size());
  }

  std::vector<int64_t> classes(static_cast<size_t>(positions));
  for (int64_t& k : classes) k = klass(rng);

  focal::v1::Tensor* targets = request.mutable_targets();
  if (o.targets == "index") {
    targets->set_dtype(focal::v1::INT64);
    targets->add_shape(n);
    for (size_t i = 2; i < o.shape.size(); ++i) targets->add_shape(o.shape[i]);
    targets->mutable_data()->assign(reinterpret_cast<const char*>(classes.data()),
                                    classes.size() * sizeof(int64_t));
  } else {
    targets->set_dtype(focal::v1::FLOAT32);
    for (int64_t d : o.shape) targets->add_shape(d);
    std::vector<float> one_hot(static_cast<size_t>(numel), 0.0f);
    for (int64_t row = 0; row < n; ++row) {
      for (int64_t j = 0; j < inner; ++j) {
        int64_t k = classes[static_cast<size_t>(row * inner + j)];
        one_hot[static_cast<size_t>((row * c + k) * inner + j)] = 1.0f;
      }
    }
    targets->mutable_data()->assign(reinterpret_cast<const char*>(one_hot.data()),
                                    one_hot.size() * sizeof(float));
  }
  return request;
}

/// The same computation as a KServe v2 ModelInferRequest (docs/kserve.md): the model named as
/// the variant, the tensors' bytes as raw contents, the reduction as a parameter, and only the
/// loss and count asked for when no gradient is.
inference::ModelInferRequest BuildInferRequest(const LoadgenOptions& o, const focal::v1::ComputeRequest& compute) {
  inference::ModelInferRequest request;
  request.set_model_name(o.variant);
  request.set_id(compute.request_id());
  (*request.mutable_parameters())["reduction"].set_string_param(o.reduction);
  auto add = [&](const char* name, const focal::v1::Tensor& t) {
    auto* in = request.add_inputs();
    in->set_name(name);
    in->set_datatype(t.dtype() == focal::v1::FLOAT32 ? "FP32" : "INT64");
    for (int64_t d : t.shape()) in->add_shape(d);
    request.add_raw_input_contents(t.data());
  };
  add("logits", compute.logits());
  add("targets", compute.targets());
  if (!o.gradient) {
    request.add_outputs()->set_name("loss");
    request.add_outputs()->set_name("count");
  }
  return request;
}

std::string MethodFor(Rpc rpc) {
  const std::string service = std::string("/") + focal::v1::FocalLossService::service_full_name();
  switch (rpc) {
    case Rpc::kCompute:
      return service + "/Compute";
    case Rpc::kInfer:
      return std::string("/") + inference::GRPCInferenceService::service_full_name() + "/ModelInfer";
    case Rpc::kInfo:
      return service + "/GetServerInfo";
    case Rpc::kEcho:
      return kEchoMethod;
  }
  return {};
}

template <typename Message>
grpc::ByteBuffer Serialize(const Message& message) {
  grpc::ByteBuffer buffer;
  bool own_buffer = false;
  grpc::Status status =
      grpc::SerializationTraits<Message>::Serialize(message, &buffer, &own_buffer);
  if (!status.ok()) {
    std::fprintf(stderr, "focal_loadgen: cannot serialize the request: %s\n",
                 status.error_message().c_str());
    std::exit(1);
  }
  return buffer;
}

template <typename Message>
bool Parse(grpc::ByteBuffer* buffer, Message* message) {
  return grpc::SerializationTraits<Message>::Deserialize(buffer, message).ok();
}

std::string Flatten(const grpc::ByteBuffer& buffer) {
  std::vector<grpc::Slice> slices;
  std::string bytes;
  if (!buffer.Dump(&slices).ok()) return bytes;
  bytes.reserve(buffer.Length());
  for (const grpc::Slice& s : slices) {
    bytes.append(reinterpret_cast<const char*>(s.begin()), s.size());
  }
  return bytes;
}

std::shared_ptr<grpc::Channel> MakeChannel(const std::string& target, int index) {
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(kMaxMessageBytes);
  args.SetMaxSendMessageSize(kMaxMessageBytes);
  // A local pool gives every channel its own connection instead of one shared subchannel.
  args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);
  args.SetInt("focal.loadgen.channel", index);
  return grpc::CreateCustomChannel(target, grpc::InsecureChannelCredentials(), args);
}

// One unary call driven from the calling thread (what a blocking stub does inside).
struct CallResult {
  grpc::Status status;
  grpc::ByteBuffer response;
};

class Caller {
 public:
  Caller(std::shared_ptr<grpc::Channel> channel, std::string method, double timeout_s)
      : stub_(std::move(channel)), method_(std::move(method)), timeout_s_(timeout_s) {}
  ~Caller() {
    cq_.Shutdown();
    void* tag;
    bool ok;
    while (cq_.Next(&tag, &ok)) {
    }
  }

  void Call(const grpc::ByteBuffer& request, CallResult* result) {
    grpc::ClientContext context;
    // gRPC takes deadlines on the system clock only.
    context.set_deadline(std::chrono::system_clock::now() +
                         std::chrono::microseconds(static_cast<int64_t>(timeout_s_ * 1e6)));
    result->response.Clear();
    auto rpc = stub_.PrepareUnaryCall(&context, method_, request, &cq_);
    rpc->StartCall();
    rpc->Finish(&result->response, &result->status, this);
    void* tag = nullptr;
    bool ok = false;
    if (!cq_.Next(&tag, &ok) || tag != this || !ok) {
      result->status = grpc::Status(grpc::StatusCode::INTERNAL, "completion queue failed");
    }
  }

 private:
  grpc::GenericStub stub_;
  std::string method_;
  double timeout_s_;
  grpc::CompletionQueue cq_;
};

// Checks one response before the run, so a wrong server or a rejected request fails fast.
bool CheckFirstResponse(const LoadgenOptions& o, const std::string& request_bytes,
                        CallResult* result) {
  if (!result->status.ok()) {
    std::fprintf(stderr, "focal_loadgen: first call failed: %s: %s\n",
                 MethodFor(o.rpc).c_str(), result->status.error_message().c_str());
    return false;
  }
  switch (o.rpc) {
    case Rpc::kCompute: {
      focal::v1::ComputeResponse response;
      if (!Parse(&result->response, &response)) {
        std::fprintf(stderr, "focal_loadgen: cannot parse the ComputeResponse\n");
        return false;
      }
      std::printf("first response: backend=%s loss=%.9g count=%" PRId64
                  " gradient=%zu bytes losses=%zu bytes queue_us=%" PRId64
                  " compute_us=%" PRId64 "\n",
                  response.backend().c_str(), response.loss(), response.count(),
                  response.gradient().data().size(), response.losses().data().size(),
                  response.timing().queue_micros(), response.timing().compute_micros());
      if (o.gradient && response.gradient().data().empty()) {
        std::fprintf(stderr, "focal_loadgen: asked for a gradient and got none\n");
        return false;
      }
      return true;
    }
    case Rpc::kInfer: {
      inference::ModelInferResponse response;
      if (!Parse(&result->response, &response)) {
        std::fprintf(stderr, "focal_loadgen: cannot parse the ModelInferResponse\n");
        return false;
      }
      bool gradient = false;
      for (const auto& out : response.outputs()) gradient |= out.name() == "gradient";
      std::printf("first response: model=%s outputs=%d raw=%d\n", response.model_name().c_str(),
                  response.outputs_size(), response.raw_output_contents_size());
      if (o.gradient && !gradient) {
        std::fprintf(stderr, "focal_loadgen: asked for a gradient and got none\n");
        return false;
      }
      return true;
    }
    case Rpc::kInfo: {
      focal::v1::ServerInfo info;
      if (!Parse(&result->response, &info)) {
        std::fprintf(stderr, "focal_loadgen: cannot parse the ServerInfo\n");
        return false;
      }
      std::printf("first response: version=%s backend=%s variants=%d\n", info.version().c_str(),
                  info.backend().c_str(), info.variants_size());
      return true;
    }
    case Rpc::kEcho: {
      if (Flatten(result->response) != request_bytes) {
        std::fprintf(stderr, "focal_loadgen: the echo differs from the request\n");
        return false;
      }
      std::printf("first response: echo of %zu bytes, identical\n", request_bytes.size());
      return true;
    }
  }
  return false;
}

struct WorkerStats {
  std::vector<double> latencies_ms;  // successful calls completed in the window
  uint64_t ok = 0;
  uint64_t errors = 0;
  uint64_t bytes = 0;  // request + response, successful calls
  std::vector<double> server_queue_us;  // ComputeResponse.timing, with --decode 1
  std::vector<double> server_compute_us;
  Clock::time_point last_done{};
  std::map<int, uint64_t> error_codes;
  std::string first_error;
};

double Percentile(const std::vector<double>& sorted, double q) {
  if (sorted.empty()) return 0.0;
  // Nearest rank.
  size_t rank = static_cast<size_t>(std::ceil(q * static_cast<double>(sorted.size())));
  if (rank == 0) rank = 1;
  return sorted[std::min(rank, sorted.size()) - 1];
}

std::string JsonEscape(const std::string& s) {
  std::string out;
  for (char ch : s) {
    if (ch == '"' || ch == '\\') {
      out += '\\';
      out += ch;
    } else if (static_cast<unsigned char>(ch) < 0x20) {
      char buf[8];
      std::snprintf(buf, sizeof buf, "\\u%04x", static_cast<unsigned>(ch));
      out += buf;
    } else {
      out += ch;
    }
  }
  return out;
}

}  // namespace

int main(int argc, char** argv) {
  const LoadgenOptions o = ParseFlags(argc, argv);

  grpc::ByteBuffer request;
  std::string request_bytes;
  std::string shape_text;
  for (size_t i = 0; i < o.shape.size(); ++i) {
    shape_text += (i ? "," : "") + std::to_string(o.shape[i]);
  }
  if (o.rpc == Rpc::kInfo) {
    request = Serialize(focal::v1::GetServerInfoRequest());
  } else {
    focal::v1::ComputeRequest compute = BuildComputeRequest(o);
    if (o.rpc == Rpc::kInfer) {
      request = Serialize(BuildInferRequest(o, compute));
    } else {
      request_bytes = compute.SerializeAsString();
      request = Serialize(compute);
    }
  }
  const std::string method = MethodFor(o.rpc);
  const size_t request_size = request.Length();

  std::vector<std::shared_ptr<grpc::Channel>> channels;
  for (int i = 0; i < o.channels; ++i) {
    channels.push_back(MakeChannel(o.target, i));
    if (!channels.back()->WaitForConnected(std::chrono::system_clock::now() +
                                           std::chrono::seconds(10))) {
      std::fprintf(stderr, "focal_loadgen: cannot connect to %s\n", o.target.c_str());
      return 1;
    }
  }

  size_t response_size = 0;
  {
    Caller caller(channels[0], method, o.timeout_s);
    CallResult first;
    caller.Call(request, &first);
    response_size = first.response.Length();
    if (!CheckFirstResponse(o, request_bytes, &first)) return 1;
  }
  request_bytes.clear();
  request_bytes.shrink_to_fit();

  std::printf("focal_loadgen: rpc=%s target=%s method=%s concurrency=%d channels=%d "
              "warmup=%.1fs duration=%.1fs\n",
              o.rpc_name.c_str(), o.target.c_str(), method.c_str(), o.concurrency, o.channels,
              o.warmup_s, o.duration_s);
  if (o.rpc != Rpc::kInfo) {
    std::printf("  request: %s [%s] float32, %s targets, gradient=%d, reduction=%s\n",
                o.variant.c_str(), shape_text.c_str(), o.targets.c_str(), o.gradient ? 1 : 0,
                o.reduction.c_str());
  }
  std::printf("  bytes per call: request %zu, response %zu\n", request_size, response_size);
  std::fflush(stdout);

  const Clock::time_point start = Clock::now();
  const Clock::time_point measure_start =
      start + std::chrono::microseconds(static_cast<int64_t>(o.warmup_s * 1e6));
  const Clock::time_point stop =
      measure_start + std::chrono::microseconds(static_cast<int64_t>(o.duration_s * 1e6));

  std::vector<WorkerStats> stats(static_cast<size_t>(o.concurrency));
  std::vector<std::thread> workers;
  for (int w = 0; w < o.concurrency; ++w) {
    workers.emplace_back([&, w] {
      WorkerStats& s = stats[static_cast<size_t>(w)];
      Caller caller(channels[static_cast<size_t>(w % o.channels)], method, o.timeout_s);
      CallResult result;
      focal::v1::ComputeResponse compute_response;
      focal::v1::ServerInfo info_response;
      focal::v1::ComputeRequest echo_response;
      inference::ModelInferResponse infer_response;
      while (true) {
        const Clock::time_point t0 = Clock::now();
        if (t0 >= stop) break;
        caller.Call(request, &result);
        const size_t got = result.response.Length();
        if (result.status.ok() && o.decode) {
          bool parsed = o.rpc == Rpc::kCompute ? Parse(&result.response, &compute_response)
                        : o.rpc == Rpc::kInfer ? Parse(&result.response, &infer_response)
                        : o.rpc == Rpc::kInfo  ? Parse(&result.response, &info_response)
                                               : Parse(&result.response, &echo_response);
          if (!parsed) result.status = grpc::Status(grpc::StatusCode::INTERNAL, "bad response");
        }
        const bool timed = result.status.ok() && o.decode && o.rpc == Rpc::kCompute;
        const Clock::time_point t1 = Clock::now();
        // Count what completes inside the window, including calls begun in the warm-up, so
        // the window is busy from its first instant to its last.
        if (t1 < measure_start) continue;
        s.last_done = std::max(s.last_done, t1);
        if (result.status.ok()) {
          ++s.ok;
          s.bytes += request_size + got;
          s.latencies_ms.push_back(std::chrono::duration<double, std::milli>(t1 - t0).count());
          if (timed) {
            s.server_queue_us.push_back(
                static_cast<double>(compute_response.timing().queue_micros()));
            s.server_compute_us.push_back(
                static_cast<double>(compute_response.timing().compute_micros()));
          }
        } else {
          ++s.errors;
          ++s.error_codes[static_cast<int>(result.status.error_code())];
          if (s.first_error.empty()) {
            s.first_error = std::to_string(static_cast<int>(result.status.error_code())) + ": " +
                            result.status.error_message();
          }
        }
      }
    });
  }
  for (std::thread& t : workers) t.join();

  std::vector<double> latencies, server_queue_us, server_compute_us;
  uint64_t ok = 0, errors = 0, bytes = 0;
  Clock::time_point last_done = measure_start;
  std::map<int, uint64_t> error_codes;
  std::string first_error;
  for (const WorkerStats& s : stats) {
    latencies.insert(latencies.end(), s.latencies_ms.begin(), s.latencies_ms.end());
    server_queue_us.insert(server_queue_us.end(), s.server_queue_us.begin(),
                           s.server_queue_us.end());
    server_compute_us.insert(server_compute_us.end(), s.server_compute_us.begin(),
                             s.server_compute_us.end());
    ok += s.ok;
    errors += s.errors;
    bytes += s.bytes;
    last_done = std::max(last_done, s.last_done);
    for (const auto& [code, count] : s.error_codes) error_codes[code] += count;
    if (first_error.empty()) first_error = s.first_error;
  }
  std::sort(latencies.begin(), latencies.end());
  std::sort(server_queue_us.begin(), server_queue_us.end());
  std::sort(server_compute_us.begin(), server_compute_us.end());
  const double elapsed_s =
      std::max(1e-9, std::chrono::duration<double>(last_done - measure_start).count());
  const double rps = static_cast<double>(ok) / elapsed_s;
  const double mb_per_s = static_cast<double>(bytes) / elapsed_s / 1e6;
  double mean_ms = 0.0;
  for (double l : latencies) mean_ms += l;
  if (!latencies.empty()) mean_ms /= static_cast<double>(latencies.size());
  const double p50 = Percentile(latencies, 0.50);
  const double p90 = Percentile(latencies, 0.90);
  const double p99 = Percentile(latencies, 0.99);
  const double max = latencies.empty() ? 0.0 : latencies.back();

  std::printf("  completed: %" PRIu64 " ok, %" PRIu64 " errors in %.3f s\n", ok, errors,
              elapsed_s);
  if (errors) {
    std::printf("  errors by code:");
    for (const auto& [code, count] : error_codes) std::printf(" %d:%" PRIu64, code, count);
    std::printf("; first: %s\n", first_error.c_str());
  }
  std::printf("  throughput: %.1f requests/s, %.1f MB/s (request+response)\n", rps, mb_per_s);
  std::printf("  latency ms: p50 %.3f  p90 %.3f  p99 %.3f  max %.3f  mean %.3f\n", p50, p90, p99,
              max, mean_ms);
  if (!server_compute_us.empty()) {
    std::printf("  server-reported us: queue p50 %.0f p99 %.0f, compute p50 %.0f p99 %.0f\n",
                Percentile(server_queue_us, 0.5), Percentile(server_queue_us, 0.99),
                Percentile(server_compute_us, 0.5), Percentile(server_compute_us, 0.99));
  }
  std::printf(
      "{\"tool\":\"focal_loadgen\",\"rpc\":\"%s\",\"target\":\"%s\",\"method\":\"%s\","
      "\"variant\":\"%s\",\"shape\":[%s],\"targets\":\"%s\",\"gradient\":%s,"
      "\"reduction\":\"%s\",\"concurrency\":%d,\"channels\":%d,\"warmup_s\":%.3f,"
      "\"duration_s\":%.3f,\"elapsed_s\":%.6f,\"ok\":%" PRIu64 ",\"errors\":%" PRIu64
      ",\"request_bytes\":%zu,\"response_bytes\":%zu,\"rps\":%.3f,\"mb_per_s\":%.3f,"
      "\"bytes_per_s\":%.1f,\"p50_ms\":%.4f,\"p90_ms\":%.4f,\"p99_ms\":%.4f,\"max_ms\":%.4f,"
      "\"mean_ms\":%.4f,\"server_queue_us_p50\":%.0f,\"server_compute_us_p50\":%.0f,"
      "\"decode\":%s,\"first_error\":\"%s\"}\n",
      o.rpc_name.c_str(), JsonEscape(o.target).c_str(), method.c_str(), o.variant.c_str(),
      shape_text.c_str(), o.targets.c_str(), o.gradient ? "true" : "false", o.reduction.c_str(),
      o.concurrency, o.channels, o.warmup_s, o.duration_s, elapsed_s, ok, errors, request_size,
      response_size, rps, mb_per_s, static_cast<double>(bytes) / elapsed_s, p50, p90, p99, max,
      mean_ms, Percentile(server_queue_us, 0.5), Percentile(server_compute_us, 0.5),
      o.decode ? "true" : "false", JsonEscape(first_error).c_str());
  std::fflush(stdout);
  return ok > 0 && errors == 0 ? 0 : 1;
}
