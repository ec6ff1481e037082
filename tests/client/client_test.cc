// focal::Client against a real focalserve on loopback: every call, every variant, compared bit
// for bit with focal::CpuBackend run in this process; errors carry the server's code and message.
#include <gtest/gtest.h>

#include <cmath>
#include <numeric>
#include <random>
#include <unistd.h>

#include <chrono>
#include <thread>

#include <grpcpp/grpcpp.h>

#include "focal/client.h"
#include "focal/v1/focal_loss.grpc.pb.h"
#include "tests/client/test_support.h"

namespace focal::client_test {
namespace {

std::vector<float> Binary(size_t n, uint32_t seed, float p = 0.3f) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> dist(0.0f, 1.0f);
  std::vector<float> v(n);
  for (float& x : v) x = dist(rng) < p ? 1.0f : 0.0f;
  return v;
}

std::vector<float> Uniform(size_t n, uint32_t seed, float lo, float hi) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> dist(lo, hi);
  std::vector<float> v(n);
  for (float& x : v) x = dist(rng);
  return v;
}

/// A softmax_focal batch: logits [n, c] (or [n, c, h, w] when `spatial`), int64 targets.
ComputeCall SoftmaxCall(int64_t n, int64_t c, uint32_t seed, DType dtype = DType::kFloat32, bool spatial = false) {
  ComputeCall call;
  SoftmaxFocalParams p;
  p.gamma = 2.0;
  call.loss.params = p;
  std::vector<int64_t> shape = {n, c}, target_shape = {n};
  if (spatial) {
    shape = {n, c, 3, 2};
    target_shape = {n, 3, 2};
  }
  int64_t items = 1;
  for (int64_t d : target_shape) items *= d;
  call.logits = HostTensor::FromFloats(dtype, shape, Normal(static_cast<size_t>(items * c), seed));
  call.targets = HostTensor::Int64(target_shape, Classes(static_cast<size_t>(items), c, seed + 1));
  call.compute_gradient = true;
  return call;
}

/// Checks the server's answer to `call` against CpuBackend in this process: equal loss and
/// count, identical bytes of losses and gradient.
void ExpectMatchesCpuBackend(const ComputeCall& call, const absl::StatusOr<ComputeOutput>& out) {
  absl::StatusOr<LossResult> expected = ComputeLocally(call);
  ASSERT_TRUE(expected.ok()) << expected.status();
  ASSERT_TRUE(out.ok()) << out.status();
  EXPECT_EQ(out->loss, expected->loss);
  EXPECT_EQ(out->count, expected->count);
  EXPECT_EQ(out->backend, "cpu");
  ASSERT_EQ(out->gradient.has_value(), expected->gradient.has_value());
  if (expected->gradient) {
    EXPECT_TRUE(SameTensor(*expected->gradient, *out->gradient)) << "gradient differs";
  }
  ASSERT_EQ(out->losses.has_value(), expected->losses.has_value());
  if (expected->losses) {
    EXPECT_TRUE(SameTensor(*expected->losses, *out->losses)) << "losses differ";
  }
}

class ClientTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    absl::StatusOr<std::unique_ptr<ServerProcess>> started = StartServer();
    ASSERT_TRUE(started.ok()) << started.status();
    server_ = started->release();
  }
  static void TearDownTestSuite() {
    delete server_;
    server_ = nullptr;
  }
  void SetUp() override {
    ASSERT_NE(server_, nullptr);
    ClientOptions options;
    options.target = server_->address();
    options.deadline = absl::Seconds(20);
    absl::StatusOr<std::unique_ptr<Client>> client = Client::Create(options);
    ASSERT_TRUE(client.ok()) << client.status();
    client_ = *std::move(client);
  }

  /// Compute on the server and compare with CpuBackend, for every reduction.
  void CheckAllReductions(ComputeCall call) {
    for (Reduction r : {Reduction::kMean, Reduction::kSum, Reduction::kNone}) {
      SCOPED_TRACE(static_cast<int>(r));
      call.loss.reduction = r;
      ExpectMatchesCpuBackend(call, client_->Compute(call));
    }
  }

  static ServerProcess* server_;
  std::unique_ptr<Client> client_;
};

ServerProcess* ClientTest::server_ = nullptr;

TEST_F(ClientTest, ComputeSoftmaxFocalMatchesCpuBackend) {
  CheckAllReductions(SoftmaxCall(16, 7, 1));
  {
    SCOPED_TRACE("alpha, ignore_index, label smoothing, NCHW, float16");
    ComputeCall call = SoftmaxCall(4, 5, 2, DType::kFloat16, /*spatial=*/true);
    auto& p = std::get<SoftmaxFocalParams>(call.loss.params);
    p.gamma = 0.5;
    p.alpha = {0.1f, 0.2f, 0.3f, 0.4f, 0.5f};
    p.ignore_index = 3;
    p.label_smoothing = 0.1;
    CheckAllReductions(call);
  }
  {
    SCOPED_TRACE("float64, upstream gradient 0.5, normalizer");
    ComputeCall call = SoftmaxCall(9, 4, 3, DType::kFloat64);
    call.grad_output = 0.5;
    call.loss.normalizer = 3.0;
    ExpectMatchesCpuBackend(call, client_->Compute(call));
  }
}

TEST_F(ClientTest, ComputeSigmoidFocalMatchesCpuBackend) {
  ComputeCall call;
  call.loss.params = SigmoidFocalParams{};  // gamma 2, alpha 0.25
  call.logits = HostTensor::Float32({8, 6}, Normal(48, 10));
  call.targets = HostTensor::Float32({8, 6}, Binary(48, 11));
  call.compute_gradient = true;
  CheckAllReductions(call);
  {
    SCOPED_TRACE("bfloat16 logits, float32 gradient, per-item upstream gradient");
    ComputeCall c = call;
    c.logits = HostTensor::BFloat16({8, 6}, Normal(48, 12));
    c.targets = HostTensor::BFloat16({8, 6}, Binary(48, 13));
    c.gradient_dtype = DType::kFloat32;
    c.loss.reduction = Reduction::kNone;
    c.grad_output = HostTensor::Float32({8, 6}, Uniform(48, 14, 0.0f, 2.0f));
    ExpectMatchesCpuBackend(c, client_->Compute(c));
  }
  {
    SCOPED_TRACE("class-index targets with ignore_index and label smoothing");
    ComputeCall c;
    SigmoidFocalParams p;
    p.gamma = 1.5;
    p.alpha = -1;
    p.ignore_index = -100;
    p.label_smoothing = 0.05;
    p.smoothing_classes = 4;
    c.loss.params = p;
    c.logits = HostTensor::Float32({6, 4}, Normal(24, 15));
    c.targets = HostTensor::Int64({6}, {0, 4, -100, 3, 1, 4});  // 4 = background
    c.compute_gradient = true;
    CheckAllReductions(c);
  }
  {
    SCOPED_TRACE("probabilities input");
    ComputeCall c;
    SigmoidFocalParams p;
    p.input = SigmoidInput::kProbabilities;
    c.loss.params = p;
    c.logits = HostTensor::Float32({5, 3}, Uniform(15, 16, 0.01f, 0.99f));
    c.targets = HostTensor::Float32({5, 3}, Binary(15, 17));
    c.compute_gradient = true;
    CheckAllReductions(c);
  }
}

TEST_F(ClientTest, ComputeFocalCosineMatchesCpuBackend) {
  ComputeCall call;
  FocalCosineParams p;
  p.alpha = 0.75;
  p.gamma = 3.0;
  p.xent = 0.5;
  call.loss.params = p;
  call.logits = HostTensor::Float32({12, 9}, Normal(108, 20));
  call.targets = HostTensor::Int32({12}, std::vector<int32_t>{0, 1, 2, 3, 4, 5, 6, 7, 8, 0, 1, 2});
  call.compute_gradient = true;
  CheckAllReductions(call);
  call.logits = HostTensor::Float64({12, 9}, std::vector<double>(108, 0.25));
  call.loss.reduction = Reduction::kMean;
  ExpectMatchesCpuBackend(call, client_->Compute(call));
}

TEST_F(ClientTest, ComputeDynamicFocalMatchesCpuBackend) {
  ComputeCall call;
  call.loss.params = DynamicFocalParams{1.0};
  call.logits = HostTensor::Float32({5, 7}, Normal(35, 30));
  call.targets = HostTensor::Float32({5, 7}, Binary(35, 31));
  call.num_objects = HostTensor::Float32({5}, {1, 4, 2, 8, 3});
  call.compute_gradient = true;
  CheckAllReductions(call);
  SCOPED_TRACE("without num_objects, float16");
  call.num_objects.reset();
  call.logits = HostTensor::Float16({5, 7}, Normal(35, 32));
  CheckAllReductions(call);
}

TEST_F(ClientTest, ComputeWithoutGradientReturnsNone) {
  ComputeCall call = SoftmaxCall(4, 3, 40);
  call.compute_gradient = false;
  absl::StatusOr<ComputeOutput> out = client_->Compute(call);
  ExpectMatchesCpuBackend(call, out);
  ASSERT_TRUE(out.ok());
  EXPECT_FALSE(out->gradient.has_value());
  EXPECT_FALSE(out->losses.has_value());
}

TEST_F(ClientTest, RequestIdIsEchoed) {
  ComputeCall call = SoftmaxCall(2, 3, 41);
  call.request_id = "batch-0042";
  absl::StatusOr<ComputeOutput> out = client_->Compute(call);
  ASSERT_TRUE(out.ok()) << out.status();
  EXPECT_EQ(out->request_id, "batch-0042");
}

TEST_F(ClientTest, ErrorCarriesServerCodeAndMessage) {
  ComputeCall call = SoftmaxCall(6, 4, 50);
  call.targets = HostTensor::Int64({6}, {0, 1, 2, 7, 1, 0});  // 7 is out of [0, 3]
  absl::StatusOr<LossResult> local = ComputeLocally(call);
  ASSERT_FALSE(local.ok());
  absl::StatusOr<ComputeOutput> out = client_->Compute(call);
  ASSERT_FALSE(out.ok());
  // The validation is shared by every backend: the server's message is the one computed here.
  EXPECT_EQ(out.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(out.status().message(), local.status().message());
  EXPECT_NE(out.status().message().find("targets[3]"), absl::string_view::npos) << out.status();

  // A wire-level problem found by the server's codec, not by the backend.
  ComputeCall unset = SoftmaxCall(2, 3, 51);
  unset.logits.dtype = static_cast<DType>(0);
  out = client_->Compute(unset);
  EXPECT_EQ(out.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(out.status().message().find("logits.dtype"), absl::string_view::npos) << out.status();
  // The server logs the failure with its request id. The line can reach its stderr just after
  // the answer reaches us (the sanitizer build has shown it): wait for it, up to 10 s.
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  while (server_->Stderr().find("INVALID_ARGUMENT") == std::string::npos &&
         std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  EXPECT_NE(server_->Stderr().find("INVALID_ARGUMENT"), std::string::npos) << server_->Stderr();
}

TEST_F(ClientTest, ClientSideMessageLimitIsEnforced) {
  ClientOptions options = client_->options();
  options.max_message_bytes = 1024;
  absl::StatusOr<std::unique_ptr<Client>> small = Client::Create(options);
  ASSERT_TRUE(small.ok());
  ComputeCall call = SoftmaxCall(64, 16, 60);  // 4 KiB of logits
  absl::StatusOr<ComputeOutput> out = (*small)->Compute(call);
  EXPECT_EQ(out.status().code(), absl::StatusCode::kResourceExhausted) << out.status();
}

TEST_F(ClientTest, ComputeStreamAnswersInOrder) {
  std::vector<ComputeCall> calls;
  for (uint32_t i = 0; i < 6; ++i) {
    calls.push_back(SoftmaxCall(8 + i, 5, 100 + i));
    calls.back().request_id = absl::StrCat("s", i);
  }
  std::unique_ptr<ComputeStream> stream = client_->OpenComputeStream();
  // Interleaved: write one, read one (the server answers each before the next arrives).
  for (const ComputeCall& call : calls) {
    ASSERT_TRUE(stream->Write(call));
    std::optional<ComputeOutput> out = stream->Read();
    ASSERT_TRUE(out.has_value());
    EXPECT_EQ(out->request_id, call.request_id);
    ExpectMatchesCpuBackend(call, *out);
  }
  ASSERT_TRUE(stream->WritesDone());
  EXPECT_FALSE(stream->Read().has_value());
  EXPECT_TRUE(stream->Finish().ok());

  // Pipelined: everything written by one thread while this one reads.
  absl::StatusOr<std::vector<ComputeOutput>> outs = client_->ComputeMany(calls);
  ASSERT_TRUE(outs.ok()) << outs.status();
  ASSERT_EQ(outs->size(), calls.size());
  for (size_t i = 0; i < calls.size(); ++i) {
    EXPECT_EQ((*outs)[i].request_id, calls[i].request_id);
    ExpectMatchesCpuBackend(calls[i], (*outs)[i]);
  }
}

TEST_F(ClientTest, ComputeStreamEndsWithTheFailedBatchStatus) {
  std::vector<ComputeCall> calls = {SoftmaxCall(4, 3, 110), SoftmaxCall(4, 3, 111), SoftmaxCall(4, 3, 112)};
  calls[1].targets = HostTensor::Int64({4}, {0, 1, 5, 2});
  std::unique_ptr<ComputeStream> stream = client_->OpenComputeStream();
  std::thread writer([&] {
    for (const ComputeCall& c : calls) {
      if (!stream->Write(c)) break;
    }
    stream->WritesDone();
  });
  std::vector<ComputeOutput> outs;
  while (std::optional<ComputeOutput> out = stream->Read()) outs.push_back(*std::move(out));
  writer.join();
  const absl::Status status = stream->Finish();
  ASSERT_EQ(outs.size(), 1u);  // the batch before the failed one is answered
  ExpectMatchesCpuBackend(calls[0], outs[0]);
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(status.message(),
            absl::StrCat("message 2 of the stream: ", ComputeLocally(calls[1]).status().message()));

  absl::StatusOr<std::vector<ComputeOutput>> many = client_->ComputeMany(calls);
  EXPECT_EQ(many.status().code(), absl::StatusCode::kInvalidArgument);
}

/// The totals Evaluate must report for `batches`: per-item losses from CpuBackend (NONE,
/// float32), attributed to the target class.
struct ExpectedTotals {
  long double total = 0;
  int64_t count = 0;
  std::vector<long double> class_sums;
  std::vector<int64_t> class_counts;
};

ExpectedTotals SoftmaxTotals(const std::vector<ComputeCall>& batches, int64_t classes) {
  ExpectedTotals t;
  t.class_sums.assign(static_cast<size_t>(classes), 0);
  t.class_counts.assign(static_cast<size_t>(classes), 0);
  for (ComputeCall call : batches) {
    call.loss.reduction = Reduction::kNone;
    call.compute_gradient = false;
    call.gradient_dtype = DType::kFloat32;
    absl::StatusOr<LossResult> r = ComputeLocally(call);
    EXPECT_TRUE(r.ok()) << r.status();
    if (!r.ok()) continue;
    t.count += r->count;
    const TensorView losses = r->losses->view();
    const std::vector<double> targets = call.targets.ToDoubles();
    const auto ignore = std::get<SoftmaxFocalParams>(call.loss.params).ignore_index;
    for (size_t i = 0; i < targets.size(); ++i) {
      const auto cls = static_cast<int64_t>(targets[i]);
      if (ignore && cls == *ignore) continue;
      const float loss = losses.As<float>()[i];
      t.total += loss;
      t.class_sums[static_cast<size_t>(cls)] += loss;
      ++t.class_counts[static_cast<size_t>(cls)];
    }
  }
  return t;
}

void ExpectTotals(const ExpectedTotals& expected, const EvaluateOutput& out, int64_t batches) {
  EXPECT_EQ(out.batches, batches);
  EXPECT_EQ(out.count, expected.count);
  EXPECT_NEAR(out.total_loss, static_cast<double>(expected.total), 1e-12 * static_cast<double>(expected.total));
  EXPECT_DOUBLE_EQ(out.mean, out.total_loss / static_cast<double>(out.count));
  EXPECT_EQ(out.class_counts, expected.class_counts);
  ASSERT_EQ(out.class_loss_sums.size(), expected.class_sums.size());
  for (size_t c = 0; c < expected.class_sums.size(); ++c) {
    EXPECT_NEAR(out.class_loss_sums[c], static_cast<double>(expected.class_sums[c]), 1e-12 * out.total_loss) << c;
  }
  EXPECT_EQ(out.backend, "cpu");
}

TEST_F(ClientTest, EvaluateFromRangeAndFromCallback) {
  std::vector<ComputeCall> batches;
  for (uint32_t i = 0; i < 5; ++i) {
    batches.push_back(SoftmaxCall(10 + 3 * i, 6, 200 + i));
    std::get<SoftmaxFocalParams>(batches.back().loss.params).ignore_index = 5;
  }
  const ExpectedTotals expected = SoftmaxTotals(batches, 6);

  absl::StatusOr<EvaluateOutput> out = client_->Evaluate(batches.begin(), batches.end());
  ASSERT_TRUE(out.ok()) << out.status();
  ExpectTotals(expected, *out, 5);

  size_t next = 0;
  out = client_->Evaluate([&](ComputeCall& batch) -> absl::StatusOr<bool> {
    if (next == batches.size()) return false;
    batch = batches[next++];
    return true;
  });
  ASSERT_TRUE(out.ok()) << out.status();
  ExpectTotals(expected, *out, 5);
  // Exact sums do not depend on how the data was split: one batch in reverse order agrees.
  std::vector<ComputeCall> reversed(batches.rbegin(), batches.rend());
  absl::StatusOr<EvaluateOutput> again = client_->Evaluate(reversed.begin(), reversed.end());
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_EQ(again->total_loss, out->total_loss);
  EXPECT_EQ(again->class_loss_sums, out->class_loss_sums);
}

TEST_F(ClientTest, EvaluateReportsBatchAndSourceErrors) {
  std::vector<ComputeCall> batches = {SoftmaxCall(4, 3, 300), SoftmaxCall(4, 3, 301)};
  batches[1].targets = HostTensor::Int64({4}, {0, 9, 1, 2});
  absl::StatusOr<EvaluateOutput> out = client_->Evaluate(batches.begin(), batches.end());
  ASSERT_FALSE(out.ok());
  EXPECT_EQ(out.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(out.status().message().find("message 2 of the evaluation"), absl::string_view::npos) << out.status();
  EXPECT_NE(out.status().message().find("targets[1]"), absl::string_view::npos) << out.status();

  // The producer's own error abandons the call and is what Evaluate returns.
  int produced = 0;
  out = client_->Evaluate([&](ComputeCall& batch) -> absl::StatusOr<bool> {
    if (produced == 2) return absl::DataLossError("batch file truncated");
    batch = SoftmaxCall(4, 3, 310 + produced++);
    return true;
  });
  EXPECT_EQ(out.status(), absl::DataLossError("batch file truncated"));

  // No batch at all: zero totals.
  out = client_->Evaluate([](ComputeCall&) -> absl::StatusOr<bool> { return false; });
  ASSERT_TRUE(out.ok()) << out.status();
  EXPECT_EQ(out->batches, 0);
  EXPECT_EQ(out->count, 0);
}

TEST_F(ClientTest, ServerInfoDescribesTheServer) {
  absl::StatusOr<ServerInfoOutput> info = client_->ServerInfo();
  ASSERT_TRUE(info.ok()) << info.status();
  EXPECT_FALSE(info->version.empty());
  EXPECT_EQ(info->backend, "cpu");
  std::vector<std::string> names;
  for (const auto& v : info->variants) names.push_back(v.name);
  EXPECT_EQ(names, (std::vector<std::string>{"softmax_focal", "sigmoid_focal", "focal_cosine", "dynamic_focal",
                                             "asymmetric", "quality_focal", "varifocal", "focal_star",
                                             "distribution_focal"}));
  ASSERT_FALSE(info->variants[0].parameters.empty());
  EXPECT_EQ(info->variants[0].parameters[0].name, "gamma");
  EXPECT_EQ(info->variants[0].parameters[0].default_value, "2");
  EXPECT_EQ(info->logits_dtypes,
            (std::vector<DType>{DType::kFloat32, DType::kFloat16, DType::kBFloat16, DType::kFloat64}));
  EXPECT_EQ(info->max_message_bytes, int64_t{1} << 30);
  EXPECT_GT(info->max_elements, 0);
  EXPECT_GT(info->max_concurrent_requests, 0);
}

TEST_F(ClientTest, HealthIsServing) {
  absl::StatusOr<ServingStatus> status = client_->Health();
  ASSERT_TRUE(status.ok()) << status.status();
  EXPECT_EQ(*status, ServingStatus::kServing);
  status = client_->Health("focal.v1.FocalLossService");
  ASSERT_TRUE(status.ok()) << status.status();
  EXPECT_EQ(*status, ServingStatus::kServing);
  status = client_->Health("no.such.Service");
  EXPECT_EQ(status.status().code(), absl::StatusCode::kNotFound) << status.status();
}

TEST_F(ClientTest, EveryTargetFormReachesTheServer) {
  const std::string port = server_->address().substr(server_->address().rfind(':') + 1);
  const ComputeCall call = SoftmaxCall(3, 4, 80);
  for (const std::string& target : {server_->address(), "ipv4:" + server_->address(), "dns:///localhost:" + port}) {
    SCOPED_TRACE(target);
    ClientOptions options;
    options.target = target;
    options.deadline = absl::Seconds(10);
    absl::StatusOr<std::unique_ptr<Client>> client = Client::Create(options);
    ASSERT_TRUE(client.ok()) << client.status();
    ExpectMatchesCpuBackend(call, (*client)->Compute(ComputeCall(call)));  // the moving overload
  }
}

// ------------------------------------------------------------------------------------------
// Options and servers with flags of their own.

TEST(ClientOptionsTest, ServiceConfigAsksForRoundRobinAndRetries) {
  ClientOptions options;
  const std::string json = Client::ServiceConfigJson(options);
  EXPECT_NE(json.find(R"("round_robin")"), std::string::npos) << json;
  EXPECT_NE(json.find(R"("maxAttempts": 4)"), std::string::npos) << json;
  EXPECT_NE(json.find(R"("retryableStatusCodes": ["UNAVAILABLE", "CANCELLED"])"), std::string::npos) << json;
  EXPECT_NE(json.find(R"("service": "focal.v1.FocalLossService")"), std::string::npos) << json;
  options.max_retry_attempts = 1;
  EXPECT_EQ(Client::ServiceConfigJson(options).find("retryPolicy"), std::string::npos);
}

TEST(ClientOptionsTest, CreateRejectsInconsistentOptions) {
  ClientOptions options;
  options.target = "";
  EXPECT_EQ(Client::Create(options).status().code(), absl::StatusCode::kInvalidArgument);
  options = ClientOptions();
  options.tls_client_cert_pem = "cert";
  EXPECT_EQ(Client::Create(options).status().code(), absl::StatusCode::kInvalidArgument);
  options = ClientOptions();
  options.initial_backoff = absl::ZeroDuration();
  EXPECT_EQ(Client::Create(options).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(ClientServerFlagsTest, BearerTokenIsSentAndChecked) {
  TempDir dir;
  ASSERT_TRUE(WriteFile(dir.File("token"), "s3cret\n"));
  absl::StatusOr<std::unique_ptr<ServerProcess>> server = StartServer({"--auth-token-file", dir.File("token")});
  ASSERT_TRUE(server.ok()) << server.status();
  ClientOptions options;
  options.target = (*server)->address();
  const ComputeCall call = SoftmaxCall(4, 3, 400);

  absl::StatusOr<ComputeOutput> out = (*Client::Create(options))->Compute(call);
  EXPECT_EQ(out.status().code(), absl::StatusCode::kUnauthenticated) << out.status();
  EXPECT_NE(out.status().message().find("authorization"), absl::string_view::npos) << out.status();
  // Health stays open without a token.
  EXPECT_EQ(*(*Client::Create(options))->Health(), ServingStatus::kServing);

  options.bearer_token = "wrong";
  out = (*Client::Create(options))->Compute(call);
  EXPECT_EQ(out.status().code(), absl::StatusCode::kUnauthenticated) << out.status();

  options.bearer_token = "s3cret";
  std::unique_ptr<Client> client = *Client::Create(options);
  ExpectMatchesCpuBackend(call, client->Compute(call));
  EXPECT_TRUE(client->ServerInfo().ok());
  EXPECT_TRUE(client->ComputeMany({call, call}).ok());
  std::vector<ComputeCall> batches = {call};
  EXPECT_TRUE(client->Evaluate(batches.begin(), batches.end()).ok());
}

TEST(ClientServerFlagsTest, SharedMemoryGivesTheSameBytesAndReleasesItsRegion) {
  absl::StatusOr<std::unique_ptr<ServerProcess>> server = StartServer({"--shared-memory=on"});
  ASSERT_TRUE(server.ok()) << server.status();
  ClientOptions options;
  options.target = (*server)->address();
  std::unique_ptr<Client> client = *Client::Create(options);
  ComputeCall call = SoftmaxCall(6, 5, 500);
  call.compute_gradient = true;
  call.loss.reduction = Reduction::kNone;
  const ComputeOutput plain = *client->Compute(call);
  {
    absl::StatusOr<std::unique_ptr<SharedMemoryRegion>> region = client->CreateSharedMemory(1 << 16, "cpp-region");
    ASSERT_TRUE(region.ok()) << region.status();
    EXPECT_EQ(*client->ListSharedMemory(), std::vector<std::string>{"cpp-region"});
    ComputeCall shared = call;
    shared.shared_logits = *(*region)->Put(call.logits, 0);
    shared.shared_targets = *(*region)->Put(call.targets, 4096);
    shared.logits = HostTensor();
    shared.targets = HostTensor();
    shared.gradient_output = *(*region)->Place(plain.gradient->dtype, plain.gradient->shape, 8192);
    shared.losses_output = *(*region)->Place(plain.losses->dtype, plain.losses->shape, 16384);
    EXPECT_EQ((*region)->Place(DType::kFloat32, {1 << 15}, 0).status().code(), absl::StatusCode::kInvalidArgument);
    absl::StatusOr<ComputeOutput> out = client->Compute(shared);
    ASSERT_TRUE(out.ok()) << out.status();
    EXPECT_EQ(out->loss, plain.loss);
    EXPECT_FALSE(out->gradient.has_value());
    ASSERT_TRUE(out->shared_gradient.has_value() && out->shared_losses.has_value());
    EXPECT_EQ(out->shared_gradient->offset, 8192u);
    EXPECT_EQ((*region)->Read(*out->shared_gradient)->bytes, plain.gradient->bytes);
    EXPECT_EQ((*region)->Read(*out->shared_losses)->bytes, plain.losses->bytes);
    // A reference past the region is the server's INVALID_ARGUMENT, naming the field.
    ComputeCall outside = shared;
    outside.shared_logits->offset = (1 << 16) - 8;
    const absl::Status refused = client->Compute(outside).status();
    EXPECT_EQ(refused.code(), absl::StatusCode::kInvalidArgument);
    EXPECT_NE(refused.message().find("logits.shared_memory: offset"), std::string::npos) << refused;
  }
  EXPECT_TRUE(client->ListSharedMemory()->empty());  // the region unregistered itself
  // A server without the flag refuses, saying which flag.
  absl::StatusOr<std::unique_ptr<ServerProcess>> plain_server = StartServer();
  ASSERT_TRUE(plain_server.ok());
  options.target = (*plain_server)->address();
  const absl::Status off = (*Client::Create(options))->CreateSharedMemory(4096).status();
  EXPECT_EQ(off.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(off.message().find("--shared-memory=on"), std::string::npos) << off;
}

TEST(ClientServerFlagsTest, DeadlineExceeded) {
  absl::StatusOr<std::unique_ptr<ServerProcess>> server = StartServer({"--debug-delay-ms", "3000"});
  ASSERT_TRUE(server.ok()) << server.status();
  ClientOptions options;
  options.target = (*server)->address();
  options.deadline = absl::Milliseconds(300);
  const auto start = std::chrono::steady_clock::now();
  absl::StatusOr<ComputeOutput> out = (*Client::Create(options))->Compute(SoftmaxCall(4, 3, 500));
  EXPECT_EQ(out.status().code(), absl::StatusCode::kDeadlineExceeded) << out.status();
  EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(2));
}

TEST(ClientServerFlagsTest, ServerLimitIsResourceExhausted) {
  absl::StatusOr<std::unique_ptr<ServerProcess>> server = StartServer({"--max-elements", "100"});
  ASSERT_TRUE(server.ok()) << server.status();
  ClientOptions options;
  options.target = (*server)->address();
  absl::StatusOr<ComputeOutput> out = (*Client::Create(options))->Compute(SoftmaxCall(32, 8, 600));
  EXPECT_EQ(out.status().code(), absl::StatusCode::kResourceExhausted) << out.status();
  EXPECT_NE(out.status().message().find("--max-elements"), absl::string_view::npos) << out.status();
}

/// Runs openssl to make a self-signed certificate for 127.0.0.1; false when openssl is missing.
bool MakeCertificate(const TempDir& dir, const std::string& name, const std::string& common_name) {
  const RunResult r = RunProgram("/usr/bin/openssl",
                          {"req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                           "-days", "2", "-subj", "/CN=" + common_name, "-addext",
                           "subjectAltName=IP:127.0.0.1,DNS:localhost", "-keyout", dir.File(name + ".key"), "-out",
                           dir.File(name + ".pem")});
  return r.exit_code == 0;
}

TEST(ClientServerFlagsTest, TlsAndMutualTls) {
  if (access("/usr/bin/openssl", X_OK) != 0) GTEST_SKIP() << "no /usr/bin/openssl to make test certificates";
  TempDir dir;
  ASSERT_TRUE(MakeCertificate(dir, "server", "focalserve-test"));
  ASSERT_TRUE(MakeCertificate(dir, "client", "focalctl-test"));
  const ComputeCall call = SoftmaxCall(4, 3, 700);
  {
    SCOPED_TRACE("server TLS");
    absl::StatusOr<std::unique_ptr<ServerProcess>> server =
        StartServer({"--tls-cert", dir.File("server.pem"), "--tls-key", dir.File("server.key")});
    ASSERT_TRUE(server.ok()) << server.status();
    ClientOptions options;
    options.target = (*server)->address();
    options.deadline = absl::Seconds(5);
    options.tls_root_certs_pem = ReadFile(dir.File("server.pem"));
    ExpectMatchesCpuBackend(call, (*Client::Create(options))->Compute(call));
    options.tls_root_certs_pem.clear();  // plaintext against a TLS port
    EXPECT_EQ((*Client::Create(options))->Compute(call).status().code(), absl::StatusCode::kUnavailable);
  }
  {
    SCOPED_TRACE("mutual TLS");
    absl::StatusOr<std::unique_ptr<ServerProcess>> server =
        StartServer({"--tls-cert", dir.File("server.pem"), "--tls-key", dir.File("server.key"),
                              "--tls-client-ca", dir.File("client.pem")});
    ASSERT_TRUE(server.ok()) << server.status();
    ClientOptions options;
    options.target = (*server)->address();
    options.deadline = absl::Seconds(5);
    options.tls_root_certs_pem = ReadFile(dir.File("server.pem"));
    EXPECT_EQ((*Client::Create(options))->Compute(call).status().code(), absl::StatusCode::kUnavailable)
        << "a client without a certificate must be refused";
    options.tls_client_cert_pem = ReadFile(dir.File("client.pem"));
    options.tls_client_key_pem = ReadFile(dir.File("client.key"));
    ExpectMatchesCpuBackend(call, (*Client::Create(options))->Compute(call));
  }
}

}  // namespace
}  // namespace focal::client_test

namespace focal::client_test {
namespace {

/// A stand-in for a server that loses a batch: it answers Evaluate OK with one batch fewer than
/// it read, the silent truncation the client must catch.
class ShortCountingService final : public v1::FocalLossService::Service {
 public:
  grpc::Status Evaluate(grpc::ServerContext*, grpc::ServerReader<v1::ComputeRequest>* reader,
                        v1::EvaluateResponse* response) override {
    v1::ComputeRequest request;
    int64_t read = 0;
    while (reader->Read(&request)) ++read;
    response->set_batches(read - 1);
    return grpc::Status::OK;
  }
};

TEST(ClientEvaluateTest, ChecksTheServerAccumulatedEveryBatch) {
  ShortCountingService service;
  grpc::ServerBuilder builder;
  int port = 0;
  builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port);
  builder.RegisterService(&service);
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  ASSERT_NE(port, 0);
  ClientOptions options;
  options.target = "127.0.0.1:" + std::to_string(port);
  absl::StatusOr<std::unique_ptr<Client>> client = Client::Create(options);
  ASSERT_TRUE(client.ok()) << client.status();
  std::vector<ComputeCall> batches = {SoftmaxCall(4, 3, 310), SoftmaxCall(4, 3, 311), SoftmaxCall(4, 3, 312)};
  const absl::StatusOr<EvaluateOutput> out = (*client)->Evaluate(batches.begin(), batches.end());
  EXPECT_EQ(out.status().code(), absl::StatusCode::kDataLoss) << out.status();
  EXPECT_NE(out.status().message().find("accumulated 2 batches but 3 were sent"), absl::string_view::npos)
      << out.status();
  server->Shutdown();
}

}  // namespace
}  // namespace focal::client_test
