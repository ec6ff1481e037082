// Hostile clients against the real focalserve binary: each test is the regression test of one
// defect an outside tester found (issue "Hardening"), reproduced the way it was found, and the
// server must answer with a clear status and stay alive and healthy after it.
#include <gtest/gtest.h>
#include <grpcpp/grpcpp.h>
#include <signal.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <functional>
#include <limits>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "focal/v1/focal_loss.grpc.pb.h"
#include "tests/integration/client_util.h"
#include "tests/support/server_process.h"
#include "tests/unit/test_util.h"

namespace focal {
namespace {

using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;
using testing::Compute;
using testing::Describe;
using testing::MakeTensor;
using testing::ServerProcess;
using testing::SmallRequest;
using Stub = v1::FocalLossService::Stub;

constexpr char kBinary[] = FOCALSERVE_BINARY;
constexpr int kServing = 1;
constexpr char kComputeMethod[] = "/focal.v1.FocalLossService/Compute";
constexpr char kStreamMethod[] = "/focal.v1.FocalLossService/ComputeStream";
constexpr char kEvaluateMethod[] = "/focal.v1.FocalLossService/Evaluate";
/// Bytes no protobuf parser accepts: field 1 with wire type 7, which does not exist.
const std::string kGarbage("\x0f\x01\x02\x03", 4);

std::unique_ptr<ServerProcess> Launch(const std::vector<std::string>& flags, bool metrics = false) {
  std::string error;
  auto server = ServerProcess::Start(kBinary, flags, &error, metrics);
  EXPECT_NE(server, nullptr) << error;
  return server;
}

/// The server still runs, says SERVING and computes a good request.
void ExpectAliveAndHealthy(ServerProcess& server, const std::string& token = "") {
  ASSERT_TRUE(server.Running()) << "the server died; stderr:\n" << server.Stderr();
  auto channel = testing::MakeChannel(server.address());
  int serving = 0;
  const grpc::Status health = testing::HealthCheck(channel.get(), "", &serving);
  ASSERT_TRUE(health.ok()) << Describe(health);
  EXPECT_EQ(serving, kServing);
  v1::ComputeResponse response;
  const grpc::Status status =
      Compute(*v1::FocalLossService::NewStub(channel), SmallRequest("alive"), &response, 10s, token);
  EXPECT_TRUE(status.ok()) << Describe(status);
}

/// The "softmax" request with one target replaced (index 1 of 4).
v1::ComputeRequest WithTarget(v1::ComputeRequest r, int64_t target) {
  *r.mutable_targets() = testing::ToProto(MakeTensor(DType::kInt64, {4}, {0, 0, 1, 2}));
  std::memcpy(r.mutable_targets()->mutable_data()->data() + sizeof(int64_t), &target, sizeof target);
  return r;
}

std::string Serialized(const v1::ComputeRequest& r) { return r.SerializeAsString(); }

/// The server's stderr once it holds `text` (the server writes a failed call's line before it
/// answers, but the test harness reads the pipe on a thread of its own), or after 5 s as it is.
std::string WaitForLog(ServerProcess& server, const std::string& text) {
  const auto give_up = Clock::now() + 5s;
  std::string log = server.Stderr();
  while (log.find(text) == std::string::npos && Clock::now() < give_up) {
    std::this_thread::sleep_for(10ms);
    log = server.Stderr();
  }
  return log;
}

#if defined(__has_feature)
#if __has_feature(address_sanitizer)
#define FOCAL_UNDER_ASAN 1
#endif
#endif
#if defined(__SANITIZE_ADDRESS__)
#define FOCAL_UNDER_ASAN 1
#endif
/// Whether the server's resident memory says anything: under AddressSanitizer (the sanitizer
/// build runs this suite against its own server) freed memory is held in quarantine on purpose
/// and every allocation has shadow memory, so the memory figures are printed but not compared.
#ifdef FOCAL_UNDER_ASAN
constexpr bool kRssIsMeaningful = false;
#else
constexpr bool kRssIsMeaningful = true;
#endif

int64_t RssBytes(pid_t pid) {
  std::ifstream status("/proc/" + std::to_string(pid) + "/status");
  std::string key;
  while (status >> key) {
    if (key == "VmRSS:") {
      int64_t kb = 0;
      status >> kb;
      return kb * 1024;
    }
    std::string rest;
    std::getline(status, rest);
  }
  return -1;
}

// ---------------------------------------------------------------------------------------------
// 1. A stream's failed batch while batches of it wait in the queue; clients that cancel with
//    batches queued. Before the fix queued work read the freed ServerContext (SIGSEGV in 2-6
//    rounds on --max-concurrent=1).

TEST(Hardening, FailedOrCancelledStreamsWithQueuedBatchesNeverCrash) {
  auto server = Launch({"--max-concurrent=1", "--max-queue=64", "--debug-delay-ms=5"});
  ASSERT_NE(server, nullptr);
  const v1::ComputeRequest good = SmallRequest("good");
  const v1::ComputeRequest bad = WithTarget(SmallRequest("bad"), 9);  // out of [0, 3]
  for (int round = 0; round < 12; ++round) {
    std::vector<std::thread> clients;
    std::atomic<int> wrong{0};
    for (int c = 0; c < 6; ++c) {
      clients.emplace_back([&, c] {
        auto stub = v1::FocalLossService::NewStub(testing::MakeChannel(server->address()));
        grpc::ClientContext context;
        testing::SetTimeout(context, 20s);
        auto stream = stub->ComputeStream(&context);
        const bool cancels = c % 3 == 2;
        for (int i = 0; i < 5; ++i) stream->Write(i == 1 && !cancels ? bad : good);
        if (cancels) {
          context.TryCancel();  // with batches still queued
        } else {
          stream->WritesDone();
        }
        v1::ComputeResponse response;
        int answers = 0;
        while (stream->Read(&response)) ++answers;
        const grpc::Status status = stream->Finish();
        if (cancels) {
          if (status.error_code() != grpc::StatusCode::CANCELLED) ++wrong;
        } else if (status.error_code() != grpc::StatusCode::INVALID_ARGUMENT || answers != 1 ||
                   status.error_message().find("message 2 of the stream") == std::string::npos) {
          ++wrong;
          ADD_FAILURE() << "answers " << answers << ", " << Describe(status);
        }
      });
    }
    for (std::thread& t : clients) t.join();
    EXPECT_EQ(wrong.load(), 0) << "round " << round;
    ASSERT_TRUE(server->Running()) << "died in round " << round << "; stderr:\n" << server->Stderr();
  }
  ExpectAliveAndHealthy(*server);
}

// ---------------------------------------------------------------------------------------------
// 2. INT64_MIN meant "no ignore_index": such targets passed validation, focal_cosine wrote
//    before its gradient buffer, the others dropped rows, Evaluate counted them on class 0.

TEST(Hardening, Int64MinTargetsAreOutOfRangeUnlessTheyAreTheIgnoreIndex) {
  auto server = Launch({});
  ASSERT_NE(server, nullptr);
  auto channel = testing::MakeChannel(server->address());
  auto stub = v1::FocalLossService::NewStub(channel);
  constexpr int64_t kMin = std::numeric_limits<int64_t>::min();
  const std::map<std::string, v1::ComputeRequest> bases = testing::GoodBases();
  for (const char* kind : {"softmax", "cosine", "sigmoid_index"}) {
    SCOPED_TRACE(kind);
    v1::ComputeRequest r = bases.at(kind);
    r.set_compute_gradient(true);
    std::memcpy(r.mutable_targets()->mutable_data()->data() + sizeof(int64_t), &kMin, sizeof kMin);
    v1::ComputeResponse response;
    grpc::Status status = Compute(*stub, r, &response);
    EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << Describe(status);
    EXPECT_NE(status.error_message().find("targets[1] is -9223372036854775808"), std::string::npos)
        << Describe(status);
    v1::EvaluateResponse totals;
    status = testing::Evaluate(*stub, {r}, &totals);
    EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << Describe(status);
  }
  // Named as the ignore_index it is an ignored row like any other.
  v1::ComputeRequest r = WithTarget(bases.at("softmax"), kMin);
  r.mutable_loss()->mutable_softmax_focal()->set_ignore_index(kMin);
  v1::ComputeResponse response;
  const grpc::Status status = Compute(*stub, r, &response);
  ASSERT_TRUE(status.ok()) << Describe(status);
  EXPECT_EQ(response.count(), 3);
  ExpectAliveAndHealthy(*server);
}

// ---------------------------------------------------------------------------------------------
// 3. Evaluate sized per-class sums from shape[1] of an empty batch: 2^62 aborted the process,
//    1e8 took 29 s and 6 GB for a 26-byte request.

TEST(Hardening, TheClassDimensionIsBoundedForEveryVariantAndRpc) {
  auto server = Launch({"--max-classes=1000"});
  ASSERT_NE(server, nullptr);
  auto channel = testing::MakeChannel(server->address());
  auto stub = v1::FocalLossService::NewStub(channel);
  const std::map<std::string, v1::ComputeRequest> bases = testing::GoodBases();
  for (const auto& [kind, base] : bases) {
    for (int64_t classes : {int64_t{1001}, int64_t{100000000}, int64_t{1} << 62}) {
      SCOPED_TRACE(kind + " C=" + std::to_string(classes));
      v1::ComputeRequest r = base;
      r.mutable_logits()->clear_shape();
      r.mutable_logits()->add_shape(0);
      r.mutable_logits()->add_shape(classes);
      r.mutable_logits()->clear_data();
      const auto started = Clock::now();
      v1::EvaluateResponse totals;
      grpc::Status status = testing::Evaluate(*stub, {r}, &totals);
      EXPECT_EQ(status.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED) << Describe(status);
      EXPECT_NE(status.error_message().find("at most 1000 per request (--max-classes)"), std::string::npos)
          << Describe(status);
      v1::ComputeResponse response;
      status = Compute(*stub, r, &response);
      EXPECT_EQ(status.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED) << Describe(status);
      EXPECT_LT(Clock::now() - started, 2s);
    }
  }
  // Dimensions whose product overflows int64 even though one of them is 0.
  v1::ComputeRequest r = bases.at("softmax");
  r.mutable_logits()->clear_shape();
  for (int64_t d : {int64_t{0}, int64_t{2}, int64_t{1} << 40, int64_t{1} << 40}) r.mutable_logits()->add_shape(d);
  v1::ComputeResponse response;
  const grpc::Status status = Compute(*stub, r, &response);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << Describe(status);
  EXPECT_NE(status.error_message().find("logits.shape overflows int64"), std::string::npos) << Describe(status);
  // GetServerInfo says what the limits are.
  grpc::ClientContext context;
  v1::ServerInfo info;
  ASSERT_TRUE(stub->GetServerInfo(&context, v1::GetServerInfoRequest(), &info).ok());
  EXPECT_EQ(info.max_classes(), 1000);
  EXPECT_EQ(info.max_rank(), 16);
  ExpectAliveAndHealthy(*server);
}

// ---------------------------------------------------------------------------------------------
// 5. A message that does not parse: gRPC's own deserializer made it an end of stream (streams
//    finished OK with what came before it) and a bare UNIMPLEMENTED for unary calls.

TEST(Hardening, MessagesThatDoNotParseAreInvalidArgumentNamingTheMessage) {
  auto server = Launch({}, /*metrics=*/true);
  ASSERT_NE(server, nullptr);
  auto channel = testing::MakeChannel(server->address());
  std::string reply;
  grpc::Status status = testing::RawUnary(channel.get(), kComputeMethod, kGarbage, &reply);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << Describe(status);
  EXPECT_NE(status.error_message().find("the request (4 bytes) is not a valid focal.v1.ComputeRequest"),
            std::string::npos)
      << Describe(status);

  const std::string good = Serialized(SmallRequest("g"));
  std::vector<std::string> answers;
  status = testing::RawStream(channel.get(), kStreamMethod, true, {good, good, kGarbage, good}, &answers);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << Describe(status);
  EXPECT_NE(status.error_message().find("message 3 of the stream (4 bytes) is not a valid"), std::string::npos)
      << Describe(status);
  EXPECT_EQ(answers.size(), 2u) << "the two batches before it are answered, none after";

  status = testing::RawStream(channel.get(), kEvaluateMethod, false, {good, kGarbage, good}, &answers);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << Describe(status);
  EXPECT_NE(status.error_message().find("message 2 of the evaluation (4 bytes) is not a valid"), std::string::npos)
      << Describe(status);

  // Logged and counted like every failed call.
  const std::string log = WaitForLog(*server, "Evaluate failed: INVALID_ARGUMENT: message 2");
  EXPECT_NE(log.find("Compute failed: INVALID_ARGUMENT: the request (4 bytes)"), std::string::npos) << log;
  EXPECT_NE(log.find("ComputeStream failed: INVALID_ARGUMENT: message 3"), std::string::npos) << log;
  EXPECT_NE(log.find("Evaluate failed: INVALID_ARGUMENT: message 2"), std::string::npos) << log;
  const auto http = testing::HttpGet(server->metrics_address(), "/metrics");
  ASSERT_TRUE(http.has_value());
  const auto samples = testing::ParseMetrics(http->body);
  for (const char* method : {"Compute", "ComputeStream", "Evaluate"}) {
    EXPECT_EQ(testing::SumMetric(samples, "focal_requests_total", {{"method", method}, {"code", "INVALID_ARGUMENT"}}),
              1)
        << method;
  }
  ExpectAliveAndHealthy(*server);
}

// ---------------------------------------------------------------------------------------------
// 6. The token was checked after the whole message was parsed; reflection answered without it;
//    request_id went into the log verbatim.

TEST(Hardening, TheTokenIsCheckedBeforeParsingAndGuardsReflection) {
  testing::TempDir dir;
  ASSERT_TRUE(testing::WriteFile(dir.File("token"), "s3cret-token\n"));
  auto server = Launch({"--auth-token-file=" + dir.File("token")});
  ASSERT_NE(server, nullptr);
  auto channel = testing::MakeChannel(server->address());
  std::string reply;
  std::vector<std::string> answers;
  // Garbage without the token: UNAUTHENTICATED, so nothing was parsed before the check.
  grpc::Status status = testing::RawUnary(channel.get(), kComputeMethod, kGarbage, &reply);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::UNAUTHENTICATED) << Describe(status);
  status = testing::RawStream(channel.get(), kStreamMethod, true, {kGarbage}, &answers);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::UNAUTHENTICATED) << Describe(status);
  status = testing::RawStream(channel.get(), kEvaluateMethod, false, {kGarbage}, &answers);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::UNAUTHENTICATED) << Describe(status);
  // RFC 6750: the scheme is case-insensitive; the token is not.
  const std::string good = Serialized(SmallRequest("tok"));
  for (const char* scheme : {"Bearer ", "bearer ", "BEARER "}) {
    status = testing::RawUnary(channel.get(), kComputeMethod, good, &reply,
                               {{"authorization", std::string(scheme) + "s3cret-token"}});
    EXPECT_TRUE(status.ok()) << scheme << Describe(status);
  }
  for (const char* wrong : {"Bearer s3cret-tokeN", "Bearer s3cret-token2", "Bearer ", "Basic s3cret-token"}) {
    status = testing::RawUnary(channel.get(), kComputeMethod, good, &reply, {{"authorization", wrong}});
    EXPECT_EQ(status.error_code(), grpc::StatusCode::UNAUTHENTICATED) << wrong;
  }
  // Reflection: refused without the token, answered with it.
  std::vector<std::string> services;
  status = testing::ReflectionListServices(channel.get(), &services);
  EXPECT_FALSE(status.ok()) << "reflection answered without the token";
  status = testing::ReflectionListServices(channel.get(), &services, "s3cret-token");
  ASSERT_TRUE(status.ok()) << Describe(status);
  EXPECT_NE(std::find(services.begin(), services.end(), "focal.v1.FocalLossService"), services.end());
  // request_id is escaped and capped in the log: no forged lines, no 8 MB lines.
  v1::ComputeRequest forged = WithTarget(SmallRequest("x\nfocalserve: FORGED LINE"), 9);
  const std::string before = server->Stderr();
  status = testing::RawUnary(channel.get(), kComputeMethod, Serialized(forged), &reply,
                             {{"authorization", "Bearer s3cret-token"}});
  EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  v1::ComputeRequest huge = WithTarget(SmallRequest(std::string(8 << 20, 'a')), 9);
  status = testing::RawUnary(channel.get(), kComputeMethod, Serialized(huge), &reply,
                             {{"authorization", "Bearer s3cret-token"}});
  EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  const std::string added = WaitForLog(*server, "...(8388608 bytes)").substr(before.size());
  EXPECT_EQ(added.find("\nfocalserve: FORGED"), std::string::npos) << added;
  EXPECT_NE(added.find("x\\x0afocalserve: FORGED"), std::string::npos) << added;
  EXPECT_LT(added.size(), 2000u) << "two failed calls, one line each";
  ExpectAliveAndHealthy(*server, "s3cret-token");
}

// Before the fix 4 unauthenticated 128 MB requests left +668 MB in the server: each was parsed
// (a copy) before the token was looked at, and freed memory stayed in the process.
TEST(Hardening, UnauthenticatedLargeRequestsLeaveNoMemoryBehind) {
  testing::TempDir dir;
  ASSERT_TRUE(testing::WriteFile(dir.File("token"), "s3cret-token\n"));
  auto server = Launch({"--auth-token-file=" + dir.File("token"), "--trim-idle-ms=300"});
  ASSERT_NE(server, nullptr);
  auto channel = testing::MakeChannel(server->address());
  ExpectAliveAndHealthy(*server, "s3cret-token");
  std::this_thread::sleep_for(500ms);
  const int64_t baseline = RssBytes(server->pid());
  const std::string big = Serialized(SmallRequest(std::string(128 << 20, 'z')));
  for (int i = 0; i < 4; ++i) {
    std::string reply;
    const grpc::Status status = testing::RawUnary(channel.get(), kComputeMethod, big, &reply);
    EXPECT_EQ(status.error_code(), grpc::StatusCode::UNAUTHENTICATED) << Describe(status);
  }
  std::this_thread::sleep_for(1500ms);  // idle past --trim-idle-ms
  const int64_t after = RssBytes(server->pid());
  std::printf("unauthenticated: 4 x %.0f MiB requests; RSS baseline %.1f MiB, after %.1f MiB (+%.1f)\n",
              big.size() / 1048576.0, baseline / 1048576.0, after / 1048576.0, (after - baseline) / 1048576.0);
  if (kRssIsMeaningful) {
    EXPECT_LT(after - baseline, 48 << 20) << "an unauthenticated request's memory stayed in the server";
  } else {
    std::printf("memory figures not compared: AddressSanitizer holds freed memory on purpose\n");
  }
  ExpectAliveAndHealthy(*server, "s3cret-token");
}

// ---------------------------------------------------------------------------------------------
// 7. Error messages repeated shapes and request_id without bound: the status outgrew the
//    client's metadata limit and the client saw RESOURCE_EXHAUSTED instead of the error.

TEST(Hardening, ErrorMessagesFitTheClientsMetadata) {
  auto server = Launch({});
  ASSERT_NE(server, nullptr);
  auto stub = v1::FocalLossService::NewStub(testing::MakeChannel(server->address()));
  v1::ComputeRequest r = SmallRequest("rank");
  for (int d = 0; d < 3000; ++d) r.mutable_logits()->add_shape(1);
  v1::ComputeResponse response;
  grpc::Status status = Compute(*stub, r, &response);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << Describe(status);
  EXPECT_NE(status.error_message().find("logits.shape has 3002 dimensions; at most 16"), std::string::npos)
      << Describe(status);
  r = WithTarget(SmallRequest(std::string(70000, 'q')), 9);
  ASSERT_EQ(r.request_id().size(), 70000u);
  status = Compute(*stub, r, &response);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << Describe(status);
  EXPECT_LE(status.error_message().size(), 1024u);
  // A stream's error names the request, escaped and cut to 128 bytes.
  auto channel = testing::MakeChannel(server->address());
  std::vector<std::string> answers;
  status = testing::RawStream(channel.get(), kStreamMethod, true, {Serialized(r)}, &answers);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << Describe(status);
  EXPECT_NE(status.error_message().find(std::string(128, 'q') + "...(70000 bytes)"), std::string::npos);
  EXPECT_LE(status.error_message().size(), 1024u);
  ExpectAliveAndHealthy(*server);
}

// ---------------------------------------------------------------------------------------------
// 8. Slow readers: streams that never read held 40-46 MB each without a total bound, and freed
//    memory stayed in the process.

TEST(Hardening, SlowReadersHoldBoundedMemoryThatGoesBackAfterwards) {
  constexpr int64_t kBudget = 64 << 20;
  auto server = Launch({"--max-buffered-bytes=" + std::to_string(kBudget), "--trim-idle-ms=300", "--max-concurrent=2"});
  ASSERT_NE(server, nullptr);
  // [16384, 64] float32 logits: a 4 MiB request whose gradient answer is 4 MiB too.
  constexpr int64_t kRows = 16384, kClasses = 64;
  v1::ComputeRequest big;
  big.mutable_loss()->mutable_softmax_focal();
  *big.mutable_logits() = testing::ToProto(
      MakeTensor(DType::kFloat32, {kRows, kClasses}, testing::RandomNormal(kRows * kClasses, 1, 41)));
  *big.mutable_targets() = testing::ToProto(MakeTensor(DType::kInt64, {kRows}, testing::RandomClasses(kRows, kClasses, 42)));
  big.set_compute_gradient(true);
  const int64_t answer_bytes = kRows * kClasses * 4;
  ExpectAliveAndHealthy(*server);
  std::this_thread::sleep_for(500ms);
  const int64_t baseline = RssBytes(server->pid());

  constexpr int kStreams = 24;
  std::vector<std::unique_ptr<grpc::ClientContext>> contexts;
  std::vector<std::thread> writers;
  std::atomic<int64_t> sent{0};
  for (int i = 0; i < kStreams; ++i) contexts.push_back(std::make_unique<grpc::ClientContext>());
  for (int i = 0; i < kStreams; ++i) {
    writers.emplace_back([&, i] {
      auto stub = v1::FocalLossService::NewStub(testing::MakeChannel(server->address()));
      auto stream = stub->ComputeStream(contexts[i].get());
      while (stream->Write(big)) ++sent;  // never reads: blocks once flow control is full
      stream->Finish();
    });
  }
  int64_t peak = 0, sent_midway = 0;
  for (int i = 0; i < 30; ++i) {  // 3 s
    std::this_thread::sleep_for(100ms);
    peak = std::max(peak, RssBytes(server->pid()));
    if (i == 14) sent_midway = sent.load();
  }
  const int64_t sent_at_end = sent.load();
  for (auto& c : contexts) c->TryCancel();
  for (std::thread& t : writers) t.join();
  std::this_thread::sleep_for(1500ms);  // idle past --trim-idle-ms
  const int64_t after = RssBytes(server->pid());
  std::printf("slow readers: %d streams, %lld batches sent; RSS baseline %.1f MiB, peak %.1f MiB (+%.1f), "
              "after cancel and idle %.1f MiB (+%.1f); budget %.0f MiB\n",
              kStreams, static_cast<long long>(sent.load()), baseline / 1048576.0, peak / 1048576.0,
              (peak - baseline) / 1048576.0, after / 1048576.0, (after - baseline) / 1048576.0, kBudget / 1048576.0);
  // The server stopped taking batches: in the second half, no stream got more than the one
  // write through that was already under way.
  EXPECT_LE(sent_at_end - sent_midway, kStreams) << "streams kept reading although nobody read their answers";
  // What the server may hold at once: the budget, or where every stream's first read was posted
  // while it was empty, one batch per stream (its answer once computed); the transport's unread
  // bytes per stream (its fixed 4 MiB HTTP/2 window); each computing batch's transient copies
  // (the parsed request, the float32 result, the serialized answer). glibc, which keeps large
  // blocks in one arena here (host_memory.h), may hold as much again in free blocks.
  constexpr int64_t kWindow = 4 << 20;
  const int64_t held = std::max(kBudget, kStreams * answer_bytes) + kStreams * kWindow + 2 * 3 * answer_bytes;
  if (kRssIsMeaningful) {
    EXPECT_LT(peak - baseline, 2 * held) << "unread answers are not bounded";
    EXPECT_LT(after - baseline, 48 << 20) << "memory freed after the spike stayed in the process";
  } else {
    std::printf("memory figures not compared: AddressSanitizer holds freed memory on purpose\n");
  }
  ExpectAliveAndHealthy(*server);
}

// ---------------------------------------------------------------------------------------------
// 9 and 10. Parameters float32 cannot carry answered OK with Inf/NaN; Evaluate ignored fields
//    Compute rejects.

TEST(Hardening, ParametersThatOverflowFloat32AreRejectedByName) {
  auto server = Launch({});
  ASSERT_NE(server, nullptr);
  auto stub = v1::FocalLossService::NewStub(testing::MakeChannel(server->address()));
  const std::map<std::string, v1::ComputeRequest> bases = testing::GoodBases();
  struct Case {
    const char* base;
    std::function<void(v1::ComputeRequest&)> set;
    const char* names;
  };
  const std::vector<Case> cases = {
      {"softmax", [](auto& r) { r.mutable_loss()->mutable_softmax_focal()->set_gamma(1e308); }, "loss.gamma is 1e+308"},
      {"sigmoid", [](auto& r) { r.mutable_loss()->mutable_sigmoid_focal()->set_gamma(1e308); }, "loss.gamma is 1e+308"},
      {"cosine", [](auto& r) { r.mutable_loss()->mutable_focal_cosine()->set_alpha(1e308); }, "loss.alpha is 1e+308"},
      {"cosine", [](auto& r) { r.mutable_loss()->mutable_focal_cosine()->set_alpha(-1e308); }, "loss.alpha is -1e+308"},
      {"cosine", [](auto& r) { r.mutable_loss()->mutable_focal_cosine()->set_xent(1e308); }, "loss.xent is 1e+308"},
      {"dynamic", [](auto& r) { r.mutable_loss()->mutable_dynamic_focal()->set_gamma(1e308); }, "loss.gamma is 1e+308"},
      {"softmax", [](auto& r) { r.mutable_loss()->set_normalizer(5e-324); }, "loss.normalizer is 4.94066e-324"},
      {"softmax",
       [](auto& r) {
         r.set_compute_gradient(true);
         r.set_grad_output_scalar(1e308);
       },
       "grad_output is 1e+308"},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.names);
    v1::ComputeRequest r = bases.at(c.base);
    c.set(r);
    v1::ComputeResponse response;
    const grpc::Status status = Compute(*stub, r, &response);
    EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << Describe(status);
    EXPECT_NE(status.error_message().find(c.names), std::string::npos) << Describe(status);
  }
  // Evaluate: what only shapes a gradient or the MEAN denominator is refused, by name.
  for (const auto& [set, name] : std::vector<std::pair<std::function<void(v1::ComputeRequest&)>, const char*>>{
           {[](auto& r) { r.mutable_loss()->set_normalizer(-1); }, "loss.normalizer is set"},
           {[](auto& r) { r.mutable_loss()->set_normalizer(4); }, "loss.normalizer is set"},
           {[](auto& r) { r.set_grad_output_scalar(1e308); }, "grad_output is set"},
           {[](auto& r) { r.set_gradient_dtype(v1::FLOAT16); }, "gradient_dtype is set"}}) {
    SCOPED_TRACE(name);
    v1::ComputeRequest r = bases.at("softmax");
    set(r);
    v1::EvaluateResponse totals;
    const grpc::Status status = testing::Evaluate(*stub, {bases.at("softmax"), r}, &totals);
    EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << Describe(status);
    EXPECT_NE(status.error_message().find(std::string("message 2 of the evaluation: ") + name), std::string::npos)
        << Describe(status);
  }
  ExpectAliveAndHealthy(*server);
}

// ---------------------------------------------------------------------------------------------
// 11. A response over the size limit: the client saw RESOURCE_EXHAUSTED, metrics counted OK; an
//     oversized request was not counted at all.

TEST(Hardening, MessagesOverTheSizeLimitEitherWayAreResourceExhaustedAndCountedSo) {
  auto server = Launch({"--max-message-bytes=1048576"}, /*metrics=*/true);
  ASSERT_NE(server, nullptr);
  auto stub = v1::FocalLossService::NewStub(testing::MakeChannel(server->address()));
  // float16 logits [65536, 6] (768 KiB) whose float32 gradient is 1.5 MiB.
  constexpr int64_t kRows = 65536, kClasses = 6;
  v1::ComputeRequest r;
  r.mutable_loss()->mutable_softmax_focal();
  *r.mutable_logits() = testing::ToProto(
      MakeTensor(DType::kFloat16, {kRows, kClasses}, testing::RandomNormal(kRows * kClasses, 1, 43)));
  *r.mutable_targets() = testing::ToProto(MakeTensor(DType::kUInt8, {kRows}, testing::RandomClasses(kRows, kClasses, 44)));
  r.set_compute_gradient(true);
  r.set_gradient_dtype(v1::FLOAT32);
  ASSERT_LT(r.ByteSizeLong(), 1048576u);
  v1::ComputeResponse response;
  grpc::Status status = Compute(*stub, r, &response);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED) << Describe(status);
  EXPECT_NE(status.error_message().find("this server sends at most 1048576 (--max-message-bytes)"), std::string::npos)
      << Describe(status);
  std::vector<std::string> answers;
  auto channel = testing::MakeChannel(server->address());
  status = testing::RawStream(channel.get(), kStreamMethod, true, {Serialized(r)}, &answers);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED) << Describe(status);
  // Requests over the limit: gRPC would take them whole and fail the call unseen; the service
  // answers with the size, and counts them.
  const std::string oversized = Serialized(SmallRequest(std::string(2 << 20, 'o')));
  std::string reply;
  status = testing::RawUnary(channel.get(), kComputeMethod, oversized, &reply);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED) << Describe(status);
  EXPECT_NE(status.error_message().find("the request is " + std::to_string(oversized.size()) + " bytes"),
            std::string::npos)
      << Describe(status);
  status = testing::RawStream(channel.get(), kStreamMethod, true, {Serialized(SmallRequest("a")), oversized}, &answers);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED) << Describe(status);
  EXPECT_NE(status.error_message().find("message 2 of the stream is"), std::string::npos) << Describe(status);
  EXPECT_EQ(answers.size(), 1u);
  const auto http = testing::HttpGet(server->metrics_address(), "/metrics");
  ASSERT_TRUE(http.has_value());
  const auto samples = testing::ParseMetrics(http->body);
  EXPECT_EQ(testing::SumMetric(samples, "focal_requests_total", {{"code", "RESOURCE_EXHAUSTED"}}), 4);
  ExpectAliveAndHealthy(*server);
}

// ---------------------------------------------------------------------------------------------
// 4. SIGTERM under load: calls accepted before the drain must all be answered; streams finish
//    what they read; the exit code says whether anything was lost.

TEST(Hardening, SigtermUnderLoadLosesNoAcceptedCall) {
  for (int run = 0; run < 2; ++run) {
    SCOPED_TRACE("run " + std::to_string(run));
    auto server = Launch({"--drain-grace=1", "--drain-timeout=10", "--max-concurrent=2", "--max-queue=256"});
    ASSERT_NE(server, nullptr);
    std::atomic<bool> stop{false};
    std::atomic<int64_t> ok{0}, refused{0}, lost{0};
    std::mutex mu;
    std::vector<std::string> failures;
    Clock::time_point signalled = Clock::time_point::max();
    std::mutex signal_mu;
    std::vector<std::thread> clients;
    for (int c = 0; c < 6; ++c) {
      clients.emplace_back([&, c] {
        auto stub = v1::FocalLossService::NewStub(testing::MakeChannel(server->address()));
        for (int i = 0; !stop; ++i) {
          const auto started = Clock::now();
          v1::ComputeResponse response;
          const grpc::Status status = Compute(*stub, SmallRequest("load-" + std::to_string(c)), &response, 5s);
          if (status.ok()) {
            ++ok;
            continue;
          }
          Clock::time_point t;
          {
            std::lock_guard<std::mutex> lock(signal_mu);
            t = signalled;
          }
          // Refused, not lost: a call started after the grace that got UNAVAILABLE (the server
          // said it is shutting down, or the listener had closed) or CANCELLED (gRPC's answer to
          // a call that reaches the server after its Shutdown began, before any handler saw it,
          // in the moment before the client reads the GOAWAY; the clients retry both). A call
          // the server had accepted and then dropped shows in the exit code below as well.
          const bool refusal = status.error_code() == grpc::StatusCode::UNAVAILABLE ||
                               status.error_code() == grpc::StatusCode::CANCELLED;
          if (refusal && started > t + 900ms) {
            ++refused;
          } else {
            ++lost;
            std::lock_guard<std::mutex> lock(mu);
            failures.push_back(Describe(status));
          }
          break;
        }
      });
    }
    // A stream writing and reading throughout: it must end with every batch it had read answered.
    int64_t stream_answers = 0;
    grpc::Status stream_status;
    std::thread streamer([&] {
      auto stub = v1::FocalLossService::NewStub(testing::MakeChannel(server->address()));
      grpc::ClientContext context;
      testing::SetTimeout(context, 20s);
      auto stream = stub->ComputeStream(&context);
      std::thread writer([&] {
        while (!stop && stream->Write(SmallRequest("stream"))) std::this_thread::sleep_for(2ms);
      });
      v1::ComputeResponse response;
      while (stream->Read(&response)) ++stream_answers;
      stream_status = stream->Finish();
      stop = true;
      writer.join();
    });
    std::this_thread::sleep_for(500ms);
    {
      std::lock_guard<std::mutex> lock(signal_mu);
      signalled = Clock::now();
    }
    ASSERT_TRUE(server->Signal(SIGTERM));
    const std::optional<int> code = server->WaitForExit(15s);
    stop = true;
    for (std::thread& t : clients) t.join();
    streamer.join();
    std::printf("drain run %d: %lld answered, %lld refused after the grace, %lld lost; stream answered %lld, %s\n", run,
                static_cast<long long>(ok.load()), static_cast<long long>(refused.load()),
                static_cast<long long>(lost.load()), static_cast<long long>(stream_answers),
                Describe(stream_status).c_str());
    EXPECT_EQ(lost.load(), 0) << (failures.empty() ? "" : failures[0]);
    EXPECT_GT(ok.load(), 0);
    ASSERT_TRUE(code.has_value()) << "still running 15 s after SIGTERM";
    EXPECT_EQ(*code, 0) << server->Stderr();
    EXPECT_EQ(stream_status.error_code(), grpc::StatusCode::UNAVAILABLE) << Describe(stream_status);
    EXPECT_NE(stream_status.error_message().find("all " + std::to_string(stream_answers) +
                                                 " batches it read from this stream were answered"),
              std::string::npos)
        << Describe(stream_status);
  }
}

}  // namespace
}  // namespace focal
