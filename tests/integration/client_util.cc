#include "tests/integration/client_util.h"

#include <arpa/inet.h>
#include <grpcpp/impl/codegen/client_unary_call.h>
#include <grpcpp/impl/codegen/sync_stream.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <condition_variable>
#include <mutex>
#include <thread>
#include <cctype>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <limits>

#include "focal/wire.h"
#include "grpc/health/v1/health.grpc.pb.h"
#include "server/codec.h"

namespace focal::testing {
namespace {

using Clock = std::chrono::steady_clock;

bool GetVarint(const std::string& in, size_t& at, uint64_t* v) {
  *v = 0;
  for (int shift = 0; shift < 64 && at < in.size(); shift += 7) {
    const auto byte = static_cast<unsigned char>(in[at++]);
    *v |= static_cast<uint64_t>(byte & 0x7f) << shift;
    if ((byte & 0x80) == 0) return true;
  }
  return false;
}

grpc::ByteBuffer ToByteBuffer(const std::string& bytes) {
  grpc::Slice slice(bytes);
  return grpc::ByteBuffer(&slice, 1);
}

std::string FromByteBuffer(const grpc::ByteBuffer& buffer) {
  std::vector<grpc::Slice> slices;
  std::string out;
  if (!buffer.Dump(&slices).ok()) return out;
  for (const grpc::Slice& s : slices) out.append(reinterpret_cast<const char*>(s.begin()), s.size());
  return out;
}

/// The length-delimited values of field `number` at the top level of `msg`.
std::vector<std::string> Fields(const std::string& msg, uint64_t number) {
  std::vector<std::string> out;
  size_t at = 0;
  while (at < msg.size()) {
    uint64_t key = 0;
    if (!GetVarint(msg, at, &key)) break;
    const uint64_t wire = key & 7;
    if (wire == 0) {
      uint64_t ignored;
      if (!GetVarint(msg, at, &ignored)) break;
    } else if (wire == 2) {
      uint64_t len = 0;
      if (!GetVarint(msg, at, &len) || len > msg.size() - at) break;
      if (key >> 3 == number) out.push_back(msg.substr(at, len));
      at += len;
    } else if (wire == 1) {
      at += 8;
    } else if (wire == 5) {
      at += 4;
    } else {
      break;
    }
  }
  return out;
}

}  // namespace

std::shared_ptr<grpc::Channel> MakeChannel(const std::string& address,
                                           std::shared_ptr<grpc::ChannelCredentials> credentials,
                                           grpc::ChannelArguments args) {
  args.SetMaxReceiveMessageSize(-1);
  args.SetMaxSendMessageSize(-1);
  args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);
  return grpc::CreateCustomChannel(address, credentials, args);
}

void SetTimeout(grpc::ClientContext& context, std::chrono::milliseconds timeout) {
  context.set_deadline(std::chrono::system_clock::now() + timeout);
}

v1::Tensor ToProto(const HostTensor& t) {
  v1::Tensor p;
  wire::TensorToProto(t, &p);
  return p;
}

TensorView View(const v1::Tensor& t) { return wire::TensorViewFromProto(t, "tensor").value_or(TensorView{}); }

absl::StatusOr<LossJob> JobFromRequest(const v1::ComputeRequest& request) {
  constexpr int64_t kNoLimit = std::numeric_limits<int64_t>::max();
  return server::DecodeComputeRequest(request, server::RequestLimits{kNoLimit, kNoLimit});
}

grpc::Status HealthCheck(grpc::Channel* channel, const std::string& service, int* serving,
                         std::chrono::milliseconds timeout) {
  // The stub shares the caller's channel without owning it.
  const std::shared_ptr<grpc::Channel> unowned(channel, [](grpc::Channel*) {});
  const std::unique_ptr<grpc::health::v1::Health::Stub> stub = grpc::health::v1::Health::NewStub(unowned);
  grpc::health::v1::HealthCheckRequest request;
  request.set_service(service);
  grpc::health::v1::HealthCheckResponse response;
  grpc::ClientContext context;
  SetTimeout(context, timeout);
  const grpc::Status status = stub->Check(&context, request, &response);
  *serving = status.ok() ? static_cast<int>(response.status()) : 0;
  return status;
}

grpc::Status ReflectionListServices(grpc::Channel* channel, std::vector<std::string>* services,
                                    const std::string& token) {
  grpc::Status last;
  for (const char* name : {"/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
                           "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo"}) {
    grpc::ClientContext context;
    SetTimeout(context, std::chrono::seconds(3));
    if (!token.empty()) context.AddMetadata("authorization", "Bearer " + token);
    const grpc::internal::RpcMethod method(name, grpc::internal::RpcMethod::BIDI_STREAMING);
    std::unique_ptr<grpc::ClientReaderWriter<grpc::ByteBuffer, grpc::ByteBuffer>> stream(
        grpc::internal::ClientReaderWriterFactory<grpc::ByteBuffer, grpc::ByteBuffer>::Create(
            channel, method, &context));
    // ServerReflectionRequest { string list_services = 7; }
    const std::string request("\x3a\x00", 2);
    stream->Write(ToByteBuffer(request));
    stream->WritesDone();
    grpc::ByteBuffer response;
    std::string bytes;
    while (stream->Read(&response)) bytes += FromByteBuffer(response);
    last = stream->Finish();
    if (!last.ok()) continue;
    // ServerReflectionResponse { ListServiceResponse list_services_response = 6; }
    // ListServiceResponse { repeated ServiceResponse service = 1; }
    // ServiceResponse { string name = 1; }
    std::vector<std::string> names;
    for (const std::string& list : Fields(bytes, 6)) {
      for (const std::string& service : Fields(list, 1)) {
        for (const std::string& name : Fields(service, 1)) names.push_back(name);
      }
    }
    *services = names;
    return last;
  }
  return last;
}

std::optional<HttpResponse> HttpGet(const std::string& host_port, const std::string& path,
                                    std::chrono::milliseconds timeout) {
  const size_t colon = host_port.rfind(':');
  if (colon == std::string::npos) return std::nullopt;
  const std::string host = host_port.substr(0, colon);
  const int port = std::atoi(host_port.c_str() + colon + 1);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(port));
  if (inet_pton(AF_INET, host == "localhost" ? "127.0.0.1" : host.c_str(), &addr.sin_addr) != 1) {
    return std::nullopt;
  }
  const int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return std::nullopt;
  struct Closer {
    int fd;
    ~Closer() { close(fd); }
  } closer{fd};
  timeval tv{static_cast<time_t>(timeout.count() / 1000),
             static_cast<suseconds_t>((timeout.count() % 1000) * 1000)};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
  if (connect(fd, reinterpret_cast<const sockaddr*>(&addr), sizeof addr) != 0) return std::nullopt;
  const std::string request = "GET " + path + " HTTP/1.1\r\nHost: " + host_port +
                              "\r\nAccept: text/plain\r\nConnection: close\r\n\r\n";
  size_t sent = 0;
  while (sent < request.size()) {
    const ssize_t n = send(fd, request.data() + sent, request.size() - sent, MSG_NOSIGNAL);
    if (n <= 0) return std::nullopt;
    sent += static_cast<size_t>(n);
  }

  std::string raw;
  HttpResponse response;
  size_t header_end = std::string::npos;
  std::optional<size_t> content_length;
  bool chunked = false;
  const auto deadline = Clock::now() + timeout;
  char buffer[16384];
  while (Clock::now() < deadline) {
    const ssize_t n = recv(fd, buffer, sizeof buffer, 0);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;  // EOF, error or SO_RCVTIMEO
    raw.append(buffer, static_cast<size_t>(n));
    if (header_end == std::string::npos) {
      header_end = raw.find("\r\n\r\n");
      if (header_end != std::string::npos) {
        std::string head = raw.substr(0, header_end);
        size_t line_end = head.find("\r\n");
        const std::string status_line = head.substr(0, line_end);
        const size_t sp = status_line.find(' ');
        if (sp != std::string::npos) response.status = std::atoi(status_line.c_str() + sp + 1);
        while (line_end != std::string::npos) {
          const size_t next = head.find("\r\n", line_end + 2);
          const std::string line = head.substr(line_end + 2, next == std::string::npos
                                                                 ? std::string::npos
                                                                 : next - line_end - 2);
          const size_t c = line.find(':');
          if (c != std::string::npos) {
            std::string name = line.substr(0, c);
            std::transform(name.begin(), name.end(), name.begin(),
                           [](unsigned char ch) { return static_cast<char>(std::tolower(ch)); });
            size_t v = c + 1;
            while (v < line.size() && line[v] == ' ') ++v;
            response.headers[name] = line.substr(v);
          }
          line_end = next;
        }
        if (response.headers.count("content-length")) {
          content_length = static_cast<size_t>(std::atoll(response.headers["content-length"].c_str()));
        }
        const auto te = response.headers.find("transfer-encoding");
        chunked = te != response.headers.end() && te->second.find("chunked") != std::string::npos;
      }
    }
    if (header_end != std::string::npos) {
      if (content_length && raw.size() - header_end - 4 >= *content_length) break;
      if (chunked && raw.size() >= 5 && raw.compare(raw.size() - 5, 5, "0\r\n\r\n") == 0) break;
    }
  }
  if (header_end == std::string::npos) return std::nullopt;
  std::string body = raw.substr(header_end + 4);
  if (chunked) {
    std::string decoded;
    size_t at = 0;
    while (at < body.size()) {
      const size_t eol = body.find("\r\n", at);
      if (eol == std::string::npos) break;
      const size_t size = std::strtoul(body.substr(at, eol - at).c_str(), nullptr, 16);
      if (size == 0) break;
      decoded += body.substr(eol + 2, size);
      at = eol + 2 + size + 2;
    }
    body = decoded;
  } else if (content_length && body.size() > *content_length) {
    body.resize(*content_length);
  }
  response.body = body;
  return response;
}

std::vector<MetricSample> ParseMetrics(const std::string& text) {
  std::vector<MetricSample> samples;
  size_t at = 0;
  while (at < text.size()) {
    size_t eol = text.find('\n', at);
    if (eol == std::string::npos) eol = text.size();
    const std::string line = text.substr(at, eol - at);
    at = eol + 1;
    if (line.empty() || line[0] == '#') continue;
    MetricSample s;
    size_t i = 0;
    while (i < line.size() && line[i] != '{' && line[i] != ' ' && line[i] != '\t') ++i;
    s.name = line.substr(0, i);
    if (i < line.size() && line[i] == '{') {
      ++i;
      while (i < line.size() && line[i] != '}') {
        while (i < line.size() && (line[i] == ',' || line[i] == ' ')) ++i;
        if (i < line.size() && line[i] == '}') break;
        const size_t eq = line.find('=', i);
        if (eq == std::string::npos || eq + 1 >= line.size() || line[eq + 1] != '"') break;
        const std::string key = line.substr(i, eq - i);
        std::string value;
        i = eq + 2;
        while (i < line.size() && line[i] != '"') {
          if (line[i] == '\\' && i + 1 < line.size()) {
            ++i;
            value.push_back(line[i] == 'n' ? '\n' : line[i]);
          } else {
            value.push_back(line[i]);
          }
          ++i;
        }
        ++i;  // closing quote
        s.labels[key] = value;
      }
      ++i;  // '}'
    }
    while (i < line.size() && (line[i] == ' ' || line[i] == '\t')) ++i;
    const std::string value = line.substr(i, line.find_first_of(" \t", i) - i);
    char* end = nullptr;
    s.value = std::strtod(value.c_str(), &end);
    if (s.name.empty() || end == value.c_str()) continue;
    samples.push_back(std::move(s));
  }
  return samples;
}

double SumMetric(const std::vector<MetricSample>& samples, const std::string& name,
                 const std::map<std::string, std::string>& match) {
  double sum = 0;
  for (const MetricSample& s : samples) {
    if (s.name != name) continue;
    bool ok = true;
    for (const auto& [k, v] : match) {
      const auto it = s.labels.find(k);
      if (it == s.labels.end() || it->second != v) {
        ok = false;
        break;
      }
    }
    if (ok) sum += s.value;
  }
  return sum;
}

bool HasMetric(const std::vector<MetricSample>& samples, const std::string& name) {
  return std::any_of(samples.begin(), samples.end(),
                     [&](const MetricSample& s) { return s.name == name; });
}

namespace {
using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;
}  // namespace

grpc::Status RawUnary(grpc::Channel* channel, const std::string& method, const std::string& request,
                      std::string* response, const Metadata& metadata, std::chrono::milliseconds timeout) {
  grpc::ClientContext context;
  SetTimeout(context, timeout);
  for (const auto& [key, value] : metadata) context.AddMetadata(key, value);
  grpc::ByteBuffer reply;
  const grpc::internal::RpcMethod rpc(method.c_str(), grpc::internal::RpcMethod::NORMAL_RPC);
  const grpc::Status status = grpc::internal::BlockingUnaryCall<grpc::ByteBuffer, grpc::ByteBuffer>(
      channel, rpc, &context, ToByteBuffer(request), &reply);
  if (status.ok()) *response = FromByteBuffer(reply);
  return status;
}

grpc::Status RawStream(grpc::Channel* channel, const std::string& method, bool bidi,
                       const std::vector<std::string>& messages, std::vector<std::string>* answers,
                       const Metadata& metadata, std::chrono::milliseconds timeout) {
  grpc::ClientContext context;
  SetTimeout(context, timeout);
  for (const auto& [key, value] : metadata) context.AddMetadata(key, value);
  answers->clear();
  if (!bidi) {
    const grpc::internal::RpcMethod rpc(method.c_str(), grpc::internal::RpcMethod::CLIENT_STREAMING);
    grpc::ByteBuffer reply;
    std::unique_ptr<grpc::ClientWriter<grpc::ByteBuffer>> writer(
        grpc::internal::ClientWriterFactory<grpc::ByteBuffer>::Create(channel, rpc, &context, &reply));
    for (const std::string& m : messages) {
      if (!writer->Write(ToByteBuffer(m))) break;
    }
    writer->WritesDone();
    const grpc::Status status = writer->Finish();
    if (status.ok()) answers->push_back(FromByteBuffer(reply));
    return status;
  }
  const grpc::internal::RpcMethod rpc(method.c_str(), grpc::internal::RpcMethod::BIDI_STREAMING);
  std::unique_ptr<grpc::ClientReaderWriter<grpc::ByteBuffer, grpc::ByteBuffer>> stream(
      grpc::internal::ClientReaderWriterFactory<grpc::ByteBuffer, grpc::ByteBuffer>::Create(channel, rpc, &context));
  // Written from another thread while answers are read, so neither side's window can stall.
  std::thread writer([&] {
    for (const std::string& m : messages) {
      if (!stream->Write(ToByteBuffer(m))) break;
    }
    stream->WritesDone();
  });
  grpc::ByteBuffer reply;
  while (stream->Read(&reply)) answers->push_back(FromByteBuffer(reply));
  writer.join();
  return stream->Finish();
}

grpc::Status Compute(Stub& stub, const v1::ComputeRequest& request, v1::ComputeResponse* response,
                     std::chrono::milliseconds timeout, const std::string& token) {
  grpc::ClientContext context;
  SetTimeout(context, timeout);
  if (!token.empty()) context.AddMetadata("authorization", "Bearer " + token);
  return stub.Compute(&context, request, response);
}

grpc::Status Evaluate(Stub& stub, const std::vector<v1::ComputeRequest>& batches,
                      v1::EvaluateResponse* response, const std::string& token) {
  grpc::ClientContext context;
  SetTimeout(context, 20s);
  if (!token.empty()) context.AddMetadata("authorization", "Bearer " + token);
  std::unique_ptr<grpc::ClientWriter<v1::ComputeRequest>> writer(stub.Evaluate(&context, response));
  for (const v1::ComputeRequest& r : batches) {
    if (!writer->Write(r)) break;  // the server has answered early (an error); Finish says which
  }
  writer->WritesDone();
  return writer->Finish();
}

std::string Describe(const grpc::Status& s) {
  return "code " + std::to_string(s.error_code()) + ": " + s.error_message();
}

std::vector<Outcome> ComputeConcurrently(Stub& stub, const std::vector<v1::ComputeRequest>& requests,
                                         std::chrono::milliseconds timeout,
                                         const std::function<void()>& while_running) {
  std::vector<Outcome> outcomes(requests.size());
  std::vector<std::unique_ptr<grpc::ClientContext>> contexts;
  std::mutex mu;
  std::condition_variable cv;
  size_t done = 0;
  const auto start = Clock::now();
  for (size_t i = 0; i < requests.size(); ++i) {
    contexts.push_back(std::make_unique<grpc::ClientContext>());
    SetTimeout(*contexts.back(), timeout);
  }
  for (size_t i = 0; i < requests.size(); ++i) {
    stub.async()->Compute(contexts[i].get(), &requests[i], &outcomes[i].response,
                          [&, i](grpc::Status status) {
                            std::lock_guard<std::mutex> lock(mu);
                            outcomes[i].status = std::move(status);
                            outcomes[i].elapsed = std::chrono::duration_cast<std::chrono::milliseconds>(
                                Clock::now() - start);
                            outcomes[i].done = true;
                            ++done;
                            cv.notify_all();
                          });
  }
  if (while_running) while_running();
  std::unique_lock<std::mutex> lock(mu);
  if (!cv.wait_for(lock, timeout + 5s, [&] { return done == requests.size(); })) {
    for (auto& c : contexts) c->TryCancel();
    // Every callback runs once its context is cancelled; they reference locals, so wait for them.
    cv.wait(lock, [&] { return done == requests.size(); });
  }
  return outcomes;
}

std::map<std::string, v1::ComputeRequest> GoodBases() {
  const std::vector<double> x16 = RandomNormal(16, 1, 5);
  const std::vector<double> x12 = RandomNormal(12, 1, 6);
  const std::vector<double> t12 = {0, 1, 0, 0, 0, 1, 1, 0, 0, 0, 0, 1};
  const HostTensor logits12 = MakeTensor(DType::kFloat32, {4, 3}, x12);
  const HostTensor floats12 = MakeTensor(DType::kFloat32, {4, 3}, t12);
  auto request = [](v1::ComputeRequest r, const HostTensor& logits, const HostTensor& targets) {
    *r.mutable_logits() = ToProto(logits);
    *r.mutable_targets() = ToProto(targets);
    return r;
  };
  v1::ComputeRequest softmax, sigmoid, cosine, dynamic;
  softmax.mutable_loss()->mutable_softmax_focal();
  sigmoid.mutable_loss()->mutable_sigmoid_focal();
  cosine.mutable_loss()->mutable_focal_cosine();
  dynamic.mutable_loss()->mutable_dynamic_focal();
  *dynamic.mutable_num_objects() = ToProto(MakeTensor(DType::kFloat32, {4}, {1, 2, 0, 3}));
  return {
      {"softmax", request(softmax, MakeTensor(DType::kFloat32, {4, 4}, x16), MakeTensor(DType::kInt64, {4}, {0, 2, 1, 3}))},
      {"sigmoid", request(sigmoid, logits12, floats12)},
      {"sigmoid_index", request(sigmoid, logits12, MakeTensor(DType::kInt64, {4}, {0, 3, 1, 2}))},
      {"cosine", request(cosine, logits12, MakeTensor(DType::kInt64, {4}, {0, 2, 1, 0}))},
      {"dynamic", request(dynamic, logits12, floats12)},
  };
}

v1::ComputeRequest SmallRequest(const std::string& id) {
  v1::ComputeRequest r = GoodBases().at("softmax");
  r.set_request_id(id);
  return r;
}

}  // namespace focal::testing
