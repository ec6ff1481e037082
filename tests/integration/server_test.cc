// The real focalserve binary on loopback, driven through the generated C++ stubs: every RPC
// and variant against CpuBackend run in this process (bit-identical: the CPU reductions are
// deterministic for any thread count), malformed requests, deadlines and cancellation,
// admission limits, message limits, health and graceful drain, TLS and mutual TLS, bearer
// tokens, reflection and Prometheus metrics.
#include <gtest/gtest.h>
#include <grpcpp/grpcpp.h>
#include <signal.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <limits>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "focal/v1/focal_loss.grpc.pb.h"
#include "inference/grpc_predict_v2.grpc.pb.h"
#include "kernels/cpu/cpu_backend.h"
#include "tests/integration/client_util.h"
#include "tests/support/server_process.h"
#include "tests/unit/reference.h"
#include "tests/unit/test_util.h"

namespace focal {
namespace {

using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;
using testing::HostTensor;
using testing::MakeTensor;
using testing::ServerProcess;
using Stub = v1::FocalLossService::Stub;
using testing::Compute;
using testing::ComputeConcurrently;
using testing::Describe;
using testing::Evaluate;
using testing::GoodBases;
using testing::Outcome;
using testing::SmallRequest;

constexpr char kBinary[] = FOCALSERVE_BINARY;
constexpr int kServing = 1, kNotServing = 2;

std::unique_ptr<ServerProcess> Launch(const std::vector<std::string>& flags, std::string* error,
                                      bool metrics = true) {
  return ServerProcess::Start(kBinary, flags, error, metrics);
}

/// The reference: CpuBackend in this process, on one thread (the server uses another count).
const CpuBackend& Reference() {
  static const CpuBackend* backend = new CpuBackend(CpuBackendOptions{1});
  return *backend;
}

std::unique_ptr<Stub> MakeStub(const std::string& address) {
  return v1::FocalLossService::NewStub(testing::MakeChannel(address));
}

// ---------------------------------------------------------------------------------------------
// Requests

/// Shape of a request's per-item losses (docs/variants.md: class dim dropped for class-indexed
/// variants, the logits' shape for the element-wise ones).
Shape ItemShape(const v1::ComputeRequest& r) {
  Shape logits(r.logits().shape().begin(), r.logits().shape().end());
  const bool class_rows = r.loss().has_softmax_focal() || r.loss().has_focal_cosine();
  if (class_rows && logits.size() >= 2) logits.erase(logits.begin() + 1);
  return logits;
}

int64_t NumElements(const v1::Tensor& t) {
  int64_t n = 1;
  for (int64_t d : t.shape()) n *= d;
  return n;
}

enum class Upstream { kDefault, kScalar, kTensor };

/// Sets the reduction, the gradient request and an upstream gradient.
void Finish(v1::ComputeRequest& r, const std::string& id, v1::Reduction reduction, bool gradient,
            Upstream upstream, uint32_t seed) {
  r.set_request_id(id);
  r.mutable_loss()->set_reduction(reduction);
  r.set_compute_gradient(gradient);
  if (!gradient || upstream == Upstream::kDefault) return;
  if (upstream == Upstream::kScalar || reduction != v1::NONE) {
    r.set_grad_output_scalar(0.75);
    return;
  }
  const Shape items = ItemShape(r);
  int64_t n = 1;
  for (int64_t d : items) n *= d;
  *r.mutable_grad_output_tensor() = testing::ToProto(
      MakeTensor(DType::kFloat32, items, testing::RandomUniform(static_cast<size_t>(n), -1, 2, seed)));
}

std::vector<double> BinaryTargets(size_t n, uint32_t seed) {
  std::vector<double> t = testing::RandomUniform(n, 0, 1, seed);
  for (double& v : t) v = v < 0.3 ? 1.0 : 0.0;
  return t;
}

struct NamedRequest {
  std::string name;
  v1::ComputeRequest request;
};

/// Every variant, both layouts of softmax_focal, both target kinds of sigmoid_focal, 16-bit and
/// float64 logits, and every reduction, with gradients and upstream gradients.
std::vector<NamedRequest> VariantCases() {
  std::vector<NamedRequest> out;
  for (const v1::Reduction reduction : {v1::MEAN, v1::SUM, v1::NONE}) {
    const std::string suffix = "/" + v1::Reduction_Name(reduction);
    const uint32_t seed = 1000 * static_cast<uint32_t>(reduction + 1);
    auto add = [&](const std::string& name, v1::ComputeRequest r, bool gradient, Upstream up) {
      Finish(r, name + suffix, reduction, gradient, up, seed + static_cast<uint32_t>(out.size()));
      out.push_back({name + suffix, std::move(r)});
    };
    {  // softmax_focal [N, C] with per-class alpha, default gamma
      v1::ComputeRequest r;
      auto* p = r.mutable_loss()->mutable_softmax_focal();
      for (int c = 0; c < 10; ++c) p->add_alpha_f64(0.25 + 0.125 * c);
      *r.mutable_logits() = testing::ToProto(MakeTensor(DType::kFloat32, {64, 10}, testing::RandomNormal(640, 3, seed + 1)));
      *r.mutable_targets() = testing::ToProto(MakeTensor(DType::kInt64, {64}, testing::RandomClasses(64, 10, seed + 2)));
      add("softmax_focal_2d", r, true, Upstream::kDefault);
    }
    {  // softmax_focal [N, C, H, W], ignore_index, label smoothing, gamma 1.5
      v1::ComputeRequest r;
      auto* p = r.mutable_loss()->mutable_softmax_focal();
      p->set_gamma(1.5);
      p->set_ignore_index(-100);
      p->set_label_smoothing(0.1);
      *r.mutable_logits() = testing::ToProto(MakeTensor(DType::kFloat32, {3, 5, 4, 6}, testing::RandomNormal(360, 2, seed + 3)));
      std::vector<double> y = testing::RandomClasses(72, 5, seed + 4);
      for (size_t i = 0; i < y.size(); i += 7) y[i] = -100;
      *r.mutable_targets() = testing::ToProto(MakeTensor(DType::kInt32, {3, 4, 6}, y));
      add("softmax_focal_4d", r, true, Upstream::kTensor);
    }
    {  // sigmoid_focal, float (soft) targets, label smoothing with K = 3
      v1::ComputeRequest r;
      auto* p = r.mutable_loss()->mutable_sigmoid_focal();
      p->set_label_smoothing(0.1);
      p->set_smoothing_classes(3);
      *r.mutable_logits() = testing::ToProto(MakeTensor(DType::kFloat32, {16, 12}, testing::RandomNormal(192, 2.5, seed + 5)));
      std::vector<double> t = BinaryTargets(192, seed + 6);
      for (size_t i = 0; i < t.size(); i += 11) t[i] = 0.375;
      *r.mutable_targets() = testing::ToProto(MakeTensor(DType::kFloat32, {16, 12}, t));
      add("sigmoid_focal_float", r, true, Upstream::kScalar);
    }
    {  // sigmoid_focal, class-index targets [N, H, W] (value C = background), uint8, ignore 255
      v1::ComputeRequest r;
      auto* p = r.mutable_loss()->mutable_sigmoid_focal();
      p->set_gamma(0.5);
      p->set_alpha(-1);
      p->set_ignore_index(255);
      *r.mutable_logits() = testing::ToProto(MakeTensor(DType::kFloat32, {2, 4, 3, 5}, testing::RandomNormal(120, 2, seed + 7)));
      std::vector<double> y = testing::RandomClasses(30, 5, seed + 8);  // 0..4, 4 = background
      y[3] = 255;
      y[17] = 255;
      *r.mutable_targets() = testing::ToProto(MakeTensor(DType::kUInt8, {2, 3, 5}, y));
      add("sigmoid_focal_index", r, true, Upstream::kTensor);
    }
    {  // sigmoid_focal on probabilities
      v1::ComputeRequest r;
      auto* p = r.mutable_loss()->mutable_sigmoid_focal();
      p->set_alpha(0.5);
      p->set_input(v1::PROBABILITIES);
      *r.mutable_logits() = testing::ToProto(MakeTensor(DType::kFloat32, {10, 6}, testing::RandomUniform(60, 0.02, 0.98, seed + 9)));
      *r.mutable_targets() = testing::ToProto(MakeTensor(DType::kFloat32, {10, 6}, BinaryTargets(60, seed + 10)));
      add("sigmoid_focal_probabilities", r, true, Upstream::kDefault);
    }
    {  // focal_cosine; no gradient for SUM
      v1::ComputeRequest r;
      auto* p = r.mutable_loss()->mutable_focal_cosine();
      p->set_alpha(0.5);
      p->set_xent(0.2);
      *r.mutable_logits() = testing::ToProto(MakeTensor(DType::kFloat32, {20, 7}, testing::RandomNormal(140, 2, seed + 11)));
      *r.mutable_targets() = testing::ToProto(MakeTensor(DType::kInt64, {20}, testing::RandomClasses(20, 7, seed + 12)));
      add("focal_cosine", r, reduction != v1::SUM, Upstream::kTensor);
    }
    {  // dynamic_focal with num_objects
      v1::ComputeRequest r;
      r.mutable_loss()->mutable_dynamic_focal()->set_gamma(1.0);
      *r.mutable_logits() = testing::ToProto(MakeTensor(DType::kFloat32, {12, 9}, testing::RandomNormal(108, 2, seed + 13)));
      *r.mutable_targets() = testing::ToProto(MakeTensor(DType::kFloat32, {12, 9}, BinaryTargets(108, seed + 14)));
      std::vector<double> objects = testing::RandomClasses(12, 6, seed + 15);
      objects[0] = 3;
      *r.mutable_num_objects() = testing::ToProto(MakeTensor(DType::kFloat32, {12}, objects));
      add("dynamic_focal", r, true, Upstream::kTensor);
    }
    {  // dynamic_focal [N, *] without num_objects
      v1::ComputeRequest r;
      r.mutable_loss()->mutable_dynamic_focal();
      *r.mutable_logits() = testing::ToProto(MakeTensor(DType::kFloat32, {6, 4, 3}, testing::RandomNormal(72, 2, seed + 16)));
      *r.mutable_targets() = testing::ToProto(MakeTensor(DType::kFloat32, {6, 4, 3}, BinaryTargets(72, seed + 17)));
      add("dynamic_focal_no_objects", r, true, Upstream::kDefault);
    }
    {  // bfloat16 logits, float32 gradient
      v1::ComputeRequest r;
      r.mutable_loss()->mutable_softmax_focal()->set_gamma(2.0);
      *r.mutable_logits() = testing::ToProto(MakeTensor(DType::kBFloat16, {32, 6}, testing::RandomNormal(192, 2, seed + 18)));
      *r.mutable_targets() = testing::ToProto(MakeTensor(DType::kInt32, {32}, testing::RandomClasses(32, 6, seed + 19)));
      r.set_gradient_dtype(v1::FLOAT32);
      add("softmax_focal_bf16", r, true, Upstream::kDefault);
    }
    {  // float16 logits and targets, float16 gradient
      v1::ComputeRequest r;
      r.mutable_loss()->mutable_sigmoid_focal();
      *r.mutable_logits() = testing::ToProto(MakeTensor(DType::kFloat16, {8, 10}, testing::RandomNormal(80, 2, seed + 20)));
      *r.mutable_targets() = testing::ToProto(MakeTensor(DType::kFloat16, {8, 10}, BinaryTargets(80, seed + 21)));
      add("sigmoid_focal_fp16", r, true, Upstream::kDefault);
    }
    {  // allow_non_finite: NaN and Inf propagate as in PyTorch instead of being rejected
      v1::ComputeRequest r;
      r.mutable_loss()->mutable_sigmoid_focal();
      std::vector<double> x = testing::RandomNormal(24, 2, seed + 24);
      x[3] = std::numeric_limits<double>::quiet_NaN();
      x[10] = std::numeric_limits<double>::infinity();
      *r.mutable_logits() = testing::ToProto(MakeTensor(DType::kFloat32, {4, 6}, x));
      *r.mutable_targets() = testing::ToProto(MakeTensor(DType::kFloat32, {4, 6}, BinaryTargets(24, seed + 25)));
      r.set_allow_non_finite(true);
      add("sigmoid_focal_allow_non_finite", r, true, Upstream::kDefault);
    }
    {  // float64 logits, RetinaNet-style normalizer
      v1::ComputeRequest r;
      r.mutable_loss()->mutable_softmax_focal()->set_gamma(0.0);
      r.mutable_loss()->set_normalizer(7.5);
      *r.mutable_logits() = testing::ToProto(MakeTensor(DType::kFloat64, {16, 4}, testing::RandomNormal(64, 2, seed + 22)));
      *r.mutable_targets() = testing::ToProto(MakeTensor(DType::kInt64, {16}, testing::RandomClasses(16, 4, seed + 23)));
      add("softmax_focal_f64_normalizer", r, true, Upstream::kScalar);
    }
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// Comparisons with CpuBackend

void ExpectTensorEqual(const v1::Tensor& got, const OwnedTensor& want, const std::string& what) {
  EXPECT_EQ(static_cast<int>(got.dtype()), static_cast<int>(want.dtype)) << what << ".dtype";
  EXPECT_EQ(Shape(got.shape().begin(), got.shape().end()), want.shape) << what << ".shape";
  ASSERT_EQ(got.data().size(), want.size_bytes()) << what << ".data size";
  if (std::memcmp(got.data().data(), want.data(), want.size_bytes()) == 0) return;
  const TensorView g = testing::View(got), w = want.view();
  const int64_t n = static_cast<int64_t>(want.size_bytes() / DTypeSize(want.dtype));
  int64_t differing = 0, first = -1;
  for (int64_t i = 0; i < n; ++i) {
    const double a = LoadAsDouble(g, i), b = LoadAsDouble(w, i);
    if (!(a == b) && !(std::isnan(a) && std::isnan(b))) {
      if (first < 0) first = i;
      ++differing;
    }
  }
  ADD_FAILURE() << what << ": " << differing << " of " << n
                << " elements differ from CpuBackend; first at flat index " << first << ": "
                << (first >= 0 ? LoadAsDouble(g, first) : 0.0) << " vs "
                << (first >= 0 ? LoadAsDouble(w, first) : 0.0);
}

void ExpectMatchesReference(const v1::ComputeRequest& request, const v1::ComputeResponse& response) {
  const absl::StatusOr<LossJob> job = testing::JobFromRequest(request);
  ASSERT_TRUE(job.ok()) << job.status();
  const absl::StatusOr<LossResult> want = Reference().Compute(*job);
  ASSERT_TRUE(want.ok()) << want.status();
  EXPECT_EQ(response.request_id(), request.request_id());
  EXPECT_EQ(response.backend(), "cpu");
  if (!(std::isnan(response.loss()) && std::isnan(want->loss))) {  // NaN only with allow_non_finite
    EXPECT_EQ(response.loss(), want->loss) << "loss is not bit-identical to CpuBackend's";
  }
  EXPECT_EQ(response.count(), want->count);
  EXPECT_EQ(response.has_losses(), want->losses.has_value()) << "losses present only for NONE";
  if (response.has_losses() && want->losses) ExpectTensorEqual(response.losses(), *want->losses, "losses");
  EXPECT_EQ(response.has_gradient(), want->gradient.has_value()) << "gradient present iff asked";
  if (response.has_gradient() && want->gradient) {
    ExpectTensorEqual(response.gradient(), *want->gradient, "gradient");
  }
  EXPECT_GE(response.timing().compute_micros(), 0);
  EXPECT_GE(response.timing().queue_micros(), 0);
}

// ---------------------------------------------------------------------------------------------
// One server shared by the functional tests.

class FocalServeTest : public ::testing::Test {
 protected:
  static constexpr int64_t kMaxElements = 50'000'000;
  static constexpr int64_t kMaxMessageBytes = 256 << 20;

  static void SetUpTestSuite() {
    error_ = new std::string();
    server_ = Launch({"--backend=cpu", "--cpu-threads", "2", "--max-concurrent=4",
                      "--max-elements", std::to_string(kMaxElements),
                      "--max-message-bytes=" + std::to_string(kMaxMessageBytes)},
                     error_)
                  .release();
  }
  static void TearDownTestSuite() {
    delete server_;
    server_ = nullptr;
    delete error_;
    error_ = nullptr;
  }
  void SetUp() override {
    ASSERT_NE(server_, nullptr) << *error_;
    ASSERT_TRUE(server_->Running()) << "server exited; stderr: " << server_->Stderr();
    channel_ = testing::MakeChannel(server_->address());
    stub_ = v1::FocalLossService::NewStub(channel_);
  }
  void TearDown() override {
    if (server_ != nullptr) {
      EXPECT_TRUE(server_->Running()) << "server died; stderr: " << server_->Stderr();
    }
  }

  static ServerProcess* server_;
  static std::string* error_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<Stub> stub_;
};
ServerProcess* FocalServeTest::server_ = nullptr;
std::string* FocalServeTest::error_ = nullptr;

TEST_F(FocalServeTest, StartupLineNamesBothEndpoints) {
  EXPECT_NE(server_->listening_line().find("listening on 127.0.0.1:"), std::string::npos)
      << server_->listening_line();
  EXPECT_NE(server_->listening_line().find("metrics http://127.0.0.1:"), std::string::npos)
      << server_->listening_line();
  EXPECT_NE(server_->address(), "127.0.0.1:0");
  EXPECT_NE(server_->metrics_address(), "127.0.0.1:0");
  EXPECT_NE(server_->address(), server_->metrics_address());
  // Exactly one line on stdout.
  const std::string out = server_->Stdout();
  EXPECT_EQ(std::count(out.begin(), out.end(), '\n'), 1) << out;
}

TEST_F(FocalServeTest, ComputeEveryVariantMatchesCpuBackend) {
  const std::vector<NamedRequest> cases = VariantCases();
  ASSERT_GE(cases.size(), 30u);
  for (const NamedRequest& c : cases) {
    SCOPED_TRACE(c.name);
    v1::ComputeResponse response;
    const grpc::Status status = Compute(*stub_, c.request, &response);
    ASSERT_TRUE(status.ok()) << Describe(status);
    ExpectMatchesReference(c.request, response);
  }
}

/// A float64 softmax_focal request, SUM, with per-class weights not representable in float32
/// (set by `set_alpha`), and its long-double reference loss for weights `reference_alpha`.
struct Float64AlphaCase {
  v1::ComputeRequest request;
  long double Reference(const std::vector<double>& reference_alpha) const {
    testing::RefSoftmaxParams p;
    p.alpha = reference_alpha;
    std::vector<testing::Real> x(logits.begin(), logits.end());
    std::vector<int64_t> y(targets.begin(), targets.end());
    const testing::RefLosses ref = testing::RefSoftmaxFocal(x, kRows, kClasses, 1, y, p);
    long double sum = 0;
    for (testing::Real v : ref.items) sum += v;
    return sum;
  }
  static constexpr int64_t kRows = 64, kClasses = 5;
  std::vector<double> logits = testing::RandomNormal(kRows * kClasses, 2, 71);
  std::vector<double> targets = testing::RandomClasses(kRows, kClasses, 72);
  static std::vector<double> Alpha() { return {0.2, 0.3, 0.7, 0.1, 0.9}; }

  Float64AlphaCase() {
    request.set_request_id("alpha-f64");
    request.mutable_loss()->mutable_softmax_focal();
    request.mutable_loss()->set_reduction(v1::SUM);
    *request.mutable_logits() = testing::ToProto(MakeTensor(DType::kFloat64, {kRows, kClasses}, logits));
    *request.mutable_targets() = testing::ToProto(MakeTensor(DType::kInt64, {kRows}, targets));
  }
};

double RelativeError(double got, long double want) {
  return static_cast<double>(std::fabs((static_cast<long double>(got) - want) / want));
}

std::string Scientific(double v) {
  char text[32];
  std::snprintf(text, sizeof text, "%.2e", v);
  return text;
}

TEST_F(FocalServeTest, SoftmaxAlphaF64IsExactForFloat64Requests) {
  Float64AlphaCase c;
  for (double a : Float64AlphaCase::Alpha()) c.request.mutable_loss()->mutable_softmax_focal()->add_alpha_f64(a);
  v1::ComputeResponse response;
  const grpc::Status status = Compute(*stub_, c.request, &response);
  ASSERT_TRUE(status.ok()) << Describe(status);
  // float64 all the way: a few ulps of float64, where float32 weights would be off by ~1e-8.
  const double error = RelativeError(response.loss(), c.Reference(Float64AlphaCase::Alpha()));
  EXPECT_LT(error, 1e-14) << "loss " << response.loss();
  RecordProperty("relative_error", Scientific(error));
}

// The float32 field of focal.v1 before alpha_f64: still read, as float32 values.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wdeprecated-declarations"
TEST_F(FocalServeTest, SoftmaxFloat32AlphaStillWorks) {
  Float64AlphaCase c;
  std::vector<double> rounded;
  for (double a : Float64AlphaCase::Alpha()) {
    c.request.mutable_loss()->mutable_softmax_focal()->add_alpha(static_cast<float>(a));
    rounded.push_back(static_cast<float>(a));
  }
  v1::ComputeResponse response;
  const grpc::Status status = Compute(*stub_, c.request, &response);
  ASSERT_TRUE(status.ok()) << Describe(status);
  EXPECT_LT(RelativeError(response.loss(), c.Reference(rounded)), 1e-14) << "loss " << response.loss();
  ExpectMatchesReference(c.request, response);
  // Only as close to the float64 weights' loss as float32 weights are.
  const double error = RelativeError(response.loss(), c.Reference(Float64AlphaCase::Alpha()));
  EXPECT_GT(error, 1e-10);
  RecordProperty("relative_error_to_float64_alpha", Scientific(error));
}

TEST_F(FocalServeTest, SoftmaxAlphaInBothFormsIsInvalid) {
  Float64AlphaCase c;
  auto* p = c.request.mutable_loss()->mutable_softmax_focal();
  for (double a : Float64AlphaCase::Alpha()) {
    p->add_alpha(static_cast<float>(a));
    p->add_alpha_f64(a);
  }
  v1::ComputeResponse response;
  const grpc::Status status = Compute(*stub_, c.request, &response);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << Describe(status);
  EXPECT_NE(status.error_message().find("loss.softmax_focal.alpha and loss.softmax_focal.alpha_f64 are both set"),
            std::string::npos)
      << status.error_message();
}
#pragma GCC diagnostic pop

TEST_F(FocalServeTest, ComputeStreamAnswersInOrder) {
  const std::vector<NamedRequest> cases = VariantCases();
  std::vector<v1::ComputeRequest> requests;
  for (size_t i = 0; i < 10; ++i) {
    v1::ComputeRequest r = cases[(i * 7) % cases.size()].request;  // a mix of variants and sizes
    r.set_request_id("stream-" + std::to_string(i));
    requests.push_back(std::move(r));
  }
  // The first batch is ~10^3 times larger than the others: answering in completion order
  // instead of request order would put it last.
  requests[0].mutable_loss()->mutable_softmax_focal()->clear_alpha_f64();
  *requests[0].mutable_logits() = testing::ToProto(MakeTensor(DType::kFloat32, {5000, 100}, testing::RandomNormal(500000, 2, 31)));
  *requests[0].mutable_targets() = testing::ToProto(MakeTensor(DType::kInt64, {5000}, testing::RandomClasses(5000, 100, 32)));
  requests[0].mutable_loss()->set_reduction(v1::NONE);
  requests[0].set_compute_gradient(true);
  requests[0].clear_grad_output();
  grpc::ClientContext context;
  testing::SetTimeout(context, 20s);
  auto stream = stub_->ComputeStream(&context);
  for (const v1::ComputeRequest& r : requests) ASSERT_TRUE(stream->Write(r));
  stream->WritesDone();
  std::vector<v1::ComputeResponse> responses;
  v1::ComputeResponse response;
  while (responses.size() <= requests.size() && stream->Read(&response)) responses.push_back(response);
  const grpc::Status status = stream->Finish();
  ASSERT_TRUE(status.ok()) << Describe(status);
  ASSERT_EQ(responses.size(), requests.size());
  for (size_t i = 0; i < requests.size(); ++i) {
    SCOPED_TRACE(requests[i].request_id());
    EXPECT_EQ(responses[i].request_id(), requests[i].request_id()) << "out of order at " << i;
    ExpectMatchesReference(requests[i], responses[i]);
  }
}

TEST_F(FocalServeTest, ComputeStreamInterleavedAndEmpty) {
  {  // write one, read one
    grpc::ClientContext context;
    testing::SetTimeout(context, 10s);
    auto stream = stub_->ComputeStream(&context);
    const std::vector<NamedRequest> cases = VariantCases();
    for (int i = 0; i < 3; ++i) {
      v1::ComputeRequest r = cases[static_cast<size_t>(i)].request;
      r.set_request_id("ping-" + std::to_string(i));
      ASSERT_TRUE(stream->Write(r));
      v1::ComputeResponse response;
      ASSERT_TRUE(stream->Read(&response));
      EXPECT_EQ(response.request_id(), r.request_id());
      ExpectMatchesReference(r, response);
    }
    stream->WritesDone();
    v1::ComputeResponse extra;
    EXPECT_FALSE(stream->Read(&extra));
    const grpc::Status status = stream->Finish();
    EXPECT_TRUE(status.ok()) << Describe(status);
  }
  {  // no requests: no responses, OK
    grpc::ClientContext context;
    testing::SetTimeout(context, 10s);
    auto stream = stub_->ComputeStream(&context);
    stream->WritesDone();
    v1::ComputeResponse response;
    EXPECT_FALSE(stream->Read(&response));
    const grpc::Status status = stream->Finish();
    EXPECT_TRUE(status.ok()) << Describe(status);
  }
}

/// Rows [begin, end) of a C-contiguous tensor along dimension 0.
HostTensor SliceRows(const HostTensor& t, int64_t begin, int64_t end) {
  const size_t row_bytes = t.bytes.size() / static_cast<size_t>(t.shape[0]);
  HostTensor out{t.dtype, t.shape, {}};
  out.shape[0] = end - begin;
  out.bytes.assign(t.bytes.begin() + static_cast<std::ptrdiff_t>(begin * row_bytes),
                   t.bytes.begin() + static_cast<std::ptrdiff_t>(end * row_bytes));
  return out;
}

std::vector<v1::ComputeRequest> SplitBatches(const v1::ComputeRequest& base, const HostTensor& logits,
                                             const HostTensor& targets, const std::vector<int64_t>& sizes,
                                             const std::string& tag) {
  std::vector<v1::ComputeRequest> out;
  int64_t at = 0;
  for (size_t i = 0; i < sizes.size(); ++i) {
    v1::ComputeRequest r = base;
    r.set_request_id(tag + "-" + std::to_string(i));
    *r.mutable_logits() = testing::ToProto(SliceRows(logits, at, at + sizes[i]));
    *r.mutable_targets() = testing::ToProto(SliceRows(targets, at, at + sizes[i]));
    out.push_back(std::move(r));
    at += sizes[i];
  }
  EXPECT_EQ(at, logits.shape[0]) << "split sizes must cover the dataset";
  return out;
}

struct ExpectedEvaluation {
  double total = 0;
  int64_t count = 0;
  std::vector<double> class_sums;
  std::vector<int64_t> class_counts;
};

/// Per-item losses of the whole dataset from CpuBackend (NONE, float32), summed in long double
/// per class: by target class for class-index targets, by channel (dim 1) for float targets.
ExpectedEvaluation ReferenceEvaluation(const v1::ComputeRequest& base, const HostTensor& logits,
                                       const HostTensor& targets, std::optional<int64_t> ignore) {
  v1::ComputeRequest all = base;
  *all.mutable_logits() = testing::ToProto(logits);
  *all.mutable_targets() = testing::ToProto(targets);
  all.mutable_loss()->set_reduction(v1::NONE);
  all.set_gradient_dtype(v1::FLOAT32);
  const absl::StatusOr<LossJob> job = testing::JobFromRequest(all);
  EXPECT_TRUE(job.ok()) << job.status();
  ExpectedEvaluation e;
  if (!job.ok()) return e;
  const absl::StatusOr<LossResult> result = Reference().Compute(*job);
  EXPECT_TRUE(result.ok()) << result.status();
  if (!result.ok()) return e;
  const int64_t classes = logits.shape[1];
  int64_t inner = 1;
  for (size_t d = 2; d < logits.shape.size(); ++d) inner *= logits.shape[d];
  std::vector<long double> sums(static_cast<size_t>(classes), 0.0L);
  e.class_counts.assign(static_cast<size_t>(classes), 0);
  long double total = 0;
  const TensorView losses = result->losses->view();
  const bool index_targets = IsInteger(targets.dtype);
  const int64_t items = static_cast<int64_t>(losses.size_bytes / sizeof(float));
  for (int64_t i = 0; i < items; ++i) {
    const double loss = LoadAsDouble(losses, i);
    int64_t cls;
    if (index_targets) {
      const int64_t y = LoadAsInt64(targets.view(), i);
      if (ignore && y == *ignore) continue;
      cls = y;
    } else {
      cls = (i / inner) % classes;
    }
    total += loss;
    sums[static_cast<size_t>(cls)] += loss;
    ++e.class_counts[static_cast<size_t>(cls)];
    ++e.count;
  }
  e.total = static_cast<double>(total);
  for (long double s : sums) e.class_sums.push_back(static_cast<double>(s));
  return e;
}

void ExpectRelativeNear(double got, double want, double rtol, const std::string& what) {
  const double tol = rtol * std::max(std::abs(want), 1e-300);
  EXPECT_NEAR(got, want, tol) << what;
}

void CheckEvaluateSplits(Stub& stub, const v1::ComputeRequest& base, const HostTensor& logits,
                         const HostTensor& targets, std::optional<int64_t> ignore,
                         const std::vector<int64_t>& split_a, const std::vector<int64_t>& split_b) {
  const ExpectedEvaluation want = ReferenceEvaluation(base, logits, targets, ignore);
  v1::EvaluateResponse a, b;
  grpc::Status status = Evaluate(stub, SplitBatches(base, logits, targets, split_a, "a"), &a);
  ASSERT_TRUE(status.ok()) << Describe(status);
  status = Evaluate(stub, SplitBatches(base, logits, targets, split_b, "b"), &b);
  ASSERT_TRUE(status.ok()) << Describe(status);

  // Exactly equal, however the dataset is split.
  EXPECT_EQ(a.total_loss(), b.total_loss());
  EXPECT_EQ(a.count(), b.count());
  EXPECT_EQ(a.mean(), b.mean());
  ASSERT_EQ(a.class_loss_sums_size(), b.class_loss_sums_size());
  for (int c = 0; c < a.class_loss_sums_size(); ++c) {
    EXPECT_EQ(a.class_loss_sums(c), b.class_loss_sums(c)) << "class " << c;
  }
  EXPECT_EQ(std::vector<int64_t>(a.class_counts().begin(), a.class_counts().end()),
            std::vector<int64_t>(b.class_counts().begin(), b.class_counts().end()));
  EXPECT_EQ(a.batches(), static_cast<int64_t>(split_a.size()));
  EXPECT_EQ(b.batches(), static_cast<int64_t>(split_b.size()));
  EXPECT_EQ(a.backend(), "cpu");

  // And equal to a float64 sum of the per-item losses.
  for (const v1::EvaluateResponse* r : {&a, &b}) {
    EXPECT_EQ(r->count(), want.count);
    ExpectRelativeNear(r->total_loss(), want.total, 1e-12, "total_loss");
    EXPECT_EQ(r->mean(), r->total_loss() / static_cast<double>(r->count())) << "mean = total / count";
    ASSERT_EQ(r->class_loss_sums_size(), static_cast<int>(want.class_sums.size()));
    ASSERT_EQ(r->class_counts_size(), static_cast<int>(want.class_counts.size()));
    for (size_t c = 0; c < want.class_sums.size(); ++c) {
      ExpectRelativeNear(r->class_loss_sums(static_cast<int>(c)), want.class_sums[c], 1e-12,
                         "class_loss_sums[" + std::to_string(c) + "]");
      EXPECT_EQ(r->class_counts(static_cast<int>(c)), want.class_counts[c]) << "class " << c;
    }
  }
}

TEST_F(FocalServeTest, EvaluateSoftmaxIsExactAndSplitIndependent) {
  // [N, C, H, W] with ignored rows: per-class sums by target class.
  const HostTensor logits = MakeTensor(DType::kFloat32, {24, 5, 3, 4}, testing::RandomNormal(1440, 3, 71));
  std::vector<double> y = testing::RandomClasses(288, 5, 72);
  for (size_t i = 0; i < y.size(); i += 13) y[i] = -1;
  const HostTensor targets = MakeTensor(DType::kInt64, {24, 3, 4}, y);
  v1::ComputeRequest base;
  base.mutable_loss()->mutable_softmax_focal()->set_ignore_index(-1);
  base.mutable_loss()->mutable_softmax_focal()->set_gamma(2.0);
  CheckEvaluateSplits(*stub_, base, logits, targets, -1, {24}, {5, 7, 1, 11});
}

TEST_F(FocalServeTest, EvaluateSigmoidFloatTargetsSumsByChannel) {
  const HostTensor logits = MakeTensor(DType::kFloat32, {30, 6}, testing::RandomNormal(180, 3, 81));
  const HostTensor targets = MakeTensor(DType::kFloat32, {30, 6}, BinaryTargets(180, 82));
  v1::ComputeRequest base;
  base.mutable_loss()->mutable_sigmoid_focal()->set_alpha(0.25);
  CheckEvaluateSplits(*stub_, base, logits, targets, std::nullopt, {1, 13, 16}, {10, 10, 10});
}

TEST_F(FocalServeTest, EvaluateRejectsMixedVariantsAndBadBatches) {
  const HostTensor logits = MakeTensor(DType::kFloat32, {4, 3}, testing::RandomNormal(12, 1, 91));
  const HostTensor targets = MakeTensor(DType::kInt64, {4}, {0, 1, 2, 0});
  v1::ComputeRequest a;
  a.mutable_loss()->mutable_softmax_focal();
  *a.mutable_logits() = testing::ToProto(logits);
  *a.mutable_targets() = testing::ToProto(targets);
  v1::ComputeRequest b = a;
  b.mutable_loss()->mutable_focal_cosine();
  v1::EvaluateResponse response;
  grpc::Status status = Evaluate(*stub_, {a, b}, &response);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << Describe(status);

  v1::ComputeRequest bad = a;
  *bad.mutable_targets() = testing::ToProto(MakeTensor(DType::kInt64, {4}, {0, 1, 9, 0}));
  status = Evaluate(*stub_, {a, bad}, &response);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << Describe(status);
  EXPECT_NE(status.error_message().find("targets"), std::string::npos) << status.error_message();

  status = Evaluate(*stub_, {a, a}, &response);
  ASSERT_TRUE(status.ok()) << Describe(status);
  EXPECT_EQ(response.batches(), 2);
  EXPECT_EQ(response.count(), 8);
}

TEST_F(FocalServeTest, GetServerInfoListsVariantsDtypesAndLimits) {
  grpc::ClientContext context;
  testing::SetTimeout(context, 5s);
  v1::ServerInfo info;
  const grpc::Status status = stub_->GetServerInfo(&context, v1::GetServerInfoRequest(), &info);
  ASSERT_TRUE(status.ok()) << Describe(status);
  EXPECT_FALSE(info.version().empty());
  std::map<std::string, std::set<std::string>> variants;
  for (const v1::VariantInfo& v : info.variants()) {
    for (const v1::ParameterInfo& p : v.parameters()) variants[v.name()].insert(p.name());
    variants[v.name()];
  }
  // The names of VARIANTS.md, which clients rely on.
  const std::set<std::string> expected = {"softmax_focal", "sigmoid_focal", "focal_cosine", "dynamic_focal", "asymmetric",
                                          "quality_focal", "varifocal", "focal_star", "distribution_focal"};
  for (const std::string& name : expected) EXPECT_EQ(variants.count(name), 1u) << name;
  EXPECT_EQ(variants.size(), expected.size());
  EXPECT_EQ(variants["asymmetric"], (std::set<std::string>{"gamma_pos", "gamma_neg", "clip", "ignore_index"}));
  EXPECT_EQ(variants["varifocal"], (std::set<std::string>{"alpha", "gamma", "iou_weighted"}));
  EXPECT_TRUE(variants["distribution_focal"].empty());
  EXPECT_TRUE(variants["softmax_focal"].count("gamma") && variants["softmax_focal"].count("alpha"))
      << "softmax_focal's parameters should be described";
  const std::set<int> logits(info.logits_dtypes().begin(), info.logits_dtypes().end());
  EXPECT_EQ(logits, (std::set<int>{v1::FLOAT32, v1::FLOAT16, v1::BFLOAT16, v1::FLOAT64}));
  const std::set<int> targets(info.target_dtypes().begin(), info.target_dtypes().end());
  for (int t : {v1::INT32, v1::INT64, v1::UINT8, v1::FLOAT32}) EXPECT_EQ(targets.count(t), 1u) << t;
  EXPECT_EQ(info.max_message_bytes(), kMaxMessageBytes);
  EXPECT_EQ(info.max_elements(), kMaxElements);
  EXPECT_EQ(info.max_concurrent_requests(), 4);
  EXPECT_EQ(info.backend(), "cpu");
}

TEST_F(FocalServeTest, ReflectionListsTheServices) {
  std::vector<std::string> services;
  const grpc::Status status = testing::ReflectionListServices(channel_.get(), &services);
  ASSERT_TRUE(status.ok()) << Describe(status);
  const std::set<std::string> names(services.begin(), services.end());
  EXPECT_EQ(names.count("focal.v1.FocalLossService"), 1u);
  EXPECT_EQ(names.count("grpc.health.v1.Health"), 1u);
}

TEST_F(FocalServeTest, HealthIsServing) {
  for (const std::string service : {"", "focal.v1.FocalLossService"}) {
    int serving = 0;
    const grpc::Status status = testing::HealthCheck(channel_.get(), service, &serving);
    ASSERT_TRUE(status.ok()) << "service '" << service << "': " << Describe(status);
    EXPECT_EQ(serving, kServing) << "service '" << service << "'";
  }
  int serving = 0;
  const grpc::Status status = testing::HealthCheck(channel_.get(), "no.such.Service", &serving);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::NOT_FOUND) << Describe(status);
}

// ---------------------------------------------------------------------------------------------
// Malformed requests

struct BadCase {
  std::string name;
  std::string base;  // softmax, sigmoid, sigmoid_index, cosine, dynamic
  std::function<void(v1::ComputeRequest&)> mutate;
  std::string expect;  // substring of the error message
};

void SetFloat(v1::Tensor* t, size_t i, float v) {
  std::string* data = t->mutable_data();
  std::memcpy(data->data() + i * sizeof(float), &v, sizeof v);
}

void SetShape(v1::Tensor* t, std::vector<int64_t> shape) {
  t->clear_shape();
  for (int64_t d : shape) t->add_shape(d);
}

std::vector<BadCase> BadCases() {
  const double nan = std::numeric_limits<double>::quiet_NaN();
  const float inf = std::numeric_limits<float>::infinity();
  using R = v1::ComputeRequest;
  return {
      {"missing_logits", "softmax", [](R& r) { r.clear_logits(); }, "logits"},
      {"logits_dtype_unspecified", "softmax", [](R& r) { r.mutable_logits()->set_dtype(v1::DATA_TYPE_UNSPECIFIED); }, "logits.dtype"},
      {"logits_dtype_int32", "softmax", [](R& r) { r.mutable_logits()->set_dtype(v1::INT32); }, "logits.dtype"},
      {"logits_dtype_unknown_enum", "softmax", [](R& r) { r.mutable_logits()->set_dtype(static_cast<v1::DataType>(42)); }, "logits.dtype"},
      {"logits_bytes_short", "softmax", [](R& r) { r.mutable_logits()->mutable_data()->resize(63); }, "logits.data"},
      {"logits_bytes_long", "sigmoid", [](R& r) { r.mutable_logits()->mutable_data()->append(4, '\0'); }, "logits.data"},
      {"logits_negative_dim", "softmax", [](R& r) { SetShape(r.mutable_logits(), {4, -4}); }, "logits.shape"},
      {"logits_shape_overflow", "softmax", [](R& r) { SetShape(r.mutable_logits(), {int64_t{1} << 40, int64_t{1} << 40, 4}); }, "logits.shape"},
      {"logits_rank1_for_softmax", "softmax", [](R& r) { SetShape(r.mutable_logits(), {16}); }, "logits.shape"},
      {"missing_targets", "softmax", [](R& r) { r.clear_targets(); }, "targets"},
      {"targets_dtype_unspecified", "softmax", [](R& r) { r.mutable_targets()->set_dtype(v1::DATA_TYPE_UNSPECIFIED); }, "targets.dtype"},
      {"targets_float_for_softmax", "softmax", [](R& r) { *r.mutable_targets() = testing::ToProto(MakeTensor(DType::kFloat32, {4}, {0, 1, 2, 3})); }, "targets.dtype"},
      {"targets_shape_mismatch", "softmax", [](R& r) { *r.mutable_targets() = testing::ToProto(MakeTensor(DType::kInt64, {5}, {0, 1, 2, 3, 0})); }, "targets.shape"},
      {"targets_bytes_short", "softmax", [](R& r) { r.mutable_targets()->mutable_data()->resize(31); }, "targets.data"},
      {"target_out_of_range", "softmax", [](R& r) { *r.mutable_targets() = testing::ToProto(MakeTensor(DType::kInt64, {4}, {0, 7, 1, 3})); }, "targets[1] is 7"},
      {"target_negative", "softmax", [](R& r) { *r.mutable_targets() = testing::ToProto(MakeTensor(DType::kInt64, {4}, {0, 1, -2, 3})); }, "targets[2] is -2"},
      {"nan_logit", "softmax", [](R& r) { SetFloat(r.mutable_logits(), 5, std::numeric_limits<float>::quiet_NaN()); }, "logits[1, 1]"},
      {"inf_logit", "sigmoid", [inf](R& r) { SetFloat(r.mutable_logits(), 0, inf); }, "logits[0, 0]"},
      {"gamma_negative", "softmax", [](R& r) { r.mutable_loss()->mutable_softmax_focal()->set_gamma(-1); }, "loss.gamma"},
      {"gamma_nan", "sigmoid", [nan](R& r) { r.mutable_loss()->mutable_sigmoid_focal()->set_gamma(nan); }, "loss.gamma"},
      {"alpha_wrong_length", "softmax", [](R& r) { for (int i = 0; i < 3; ++i) r.mutable_loss()->mutable_softmax_focal()->add_alpha_f64(1); }, "loss.alpha has 3 values"},
      {"alpha_negative_entry", "softmax", [](R& r) { for (double a : {1., -1., 1., 1.}) r.mutable_loss()->mutable_softmax_focal()->add_alpha_f64(a); }, "loss.alpha[1]"},
      {"smoothing_one", "softmax", [](R& r) { r.mutable_loss()->mutable_softmax_focal()->set_label_smoothing(1.0); }, "loss.label_smoothing"},
      {"smoothing_negative", "sigmoid", [](R& r) { r.mutable_loss()->mutable_sigmoid_focal()->set_label_smoothing(-0.1); }, "loss.label_smoothing"},
      {"no_variant", "softmax", [](R& r) { r.mutable_loss()->clear_variant(); }, "loss"},
      {"no_loss_at_all", "softmax", [](R& r) { r.clear_loss(); }, "loss"},
      {"reduction_unknown_enum", "softmax", [](R& r) { r.mutable_loss()->set_reduction(static_cast<v1::Reduction>(9)); }, "reduction"},
      {"num_objects_on_softmax", "softmax", [](R& r) { *r.mutable_num_objects() = testing::ToProto(MakeTensor(DType::kFloat32, {4}, {1, 1, 1, 1})); }, "num_objects"},
      {"grad_output_wrong_shape", "softmax", [](R& r) {
         r.mutable_loss()->set_reduction(v1::NONE);
         r.set_compute_gradient(true);
         *r.mutable_grad_output_tensor() = testing::ToProto(MakeTensor(DType::kFloat32, {3}, {1, 1, 1}));
       }, "grad_output"},
      {"grad_output_tensor_for_mean", "sigmoid", [](R& r) {
         r.set_compute_gradient(true);
         *r.mutable_grad_output_tensor() = testing::ToProto(MakeTensor(DType::kFloat32, {2}, {1, 1}));
       }, "grad_output"},
      {"grad_output_nan", "softmax", [nan](R& r) { r.set_compute_gradient(true); r.set_grad_output_scalar(nan); }, "grad_output"},
      {"gradient_dtype_float16_for_float32", "softmax", [](R& r) { r.set_compute_gradient(true); r.set_gradient_dtype(v1::FLOAT16); }, "gradient_dtype"},
      {"gradient_dtype_int32", "sigmoid", [](R& r) { r.set_compute_gradient(true); r.set_gradient_dtype(v1::INT32); }, "gradient_dtype"},
      {"normalizer_zero", "softmax", [](R& r) { r.mutable_loss()->set_normalizer(0); }, "loss.normalizer"},
      {"normalizer_nan", "sigmoid", [nan](R& r) { r.mutable_loss()->set_normalizer(nan); }, "loss.normalizer"},
      {"cosine_3d_logits", "cosine", [](R& r) {
         SetShape(r.mutable_logits(), {2, 3, 2});
         SetShape(r.mutable_targets(), {2, 2});
       }, "logits.shape"},
      {"cosine_xent_negative", "cosine", [](R& r) { r.mutable_loss()->mutable_focal_cosine()->set_xent(-0.5); }, "loss.xent"},
      {"sigmoid_alpha_above_one", "sigmoid", [](R& r) { r.mutable_loss()->mutable_sigmoid_focal()->set_alpha(1.5); }, "loss.alpha"},
      {"sigmoid_smoothing_classes_one", "sigmoid", [](R& r) { r.mutable_loss()->mutable_sigmoid_focal()->set_smoothing_classes(1); }, "loss.smoothing_classes"},
      {"sigmoid_target_above_one", "sigmoid", [](R& r) { SetFloat(r.mutable_targets(), 3, 1.5f); }, "targets[1, 0]"},
      {"sigmoid_ignore_index_float_targets", "sigmoid", [](R& r) { r.mutable_loss()->mutable_sigmoid_focal()->set_ignore_index(0); }, "loss.ignore_index"},
      {"sigmoid_input_unknown_enum", "sigmoid", [](R& r) { r.mutable_loss()->mutable_sigmoid_focal()->set_input(static_cast<v1::SigmoidInput>(7)); }, "input"},
      {"probabilities_out_of_range", "sigmoid", [](R& r) {
         r.mutable_loss()->mutable_sigmoid_focal()->set_input(v1::PROBABILITIES);
         for (size_t i = 0; i < 12; ++i) SetFloat(r.mutable_logits(), i, 0.5f);
         SetFloat(r.mutable_logits(), 4, 1.5f);
       }, "logits[1, 1]"},
      {"sigmoid_index_target_out_of_range", "sigmoid_index", [](R& r) { *r.mutable_targets() = testing::ToProto(MakeTensor(DType::kInt64, {4}, {0, 4, 1, 2})); }, "targets[1] is 4"},
      {"dynamic_soft_target", "dynamic", [](R& r) { SetFloat(r.mutable_targets(), 2, 0.5f); }, "targets[0, 2]"},
      {"dynamic_num_objects_wrong_shape", "dynamic", [](R& r) { *r.mutable_num_objects() = testing::ToProto(MakeTensor(DType::kFloat32, {3}, {1, 1, 1})); }, "num_objects.shape"},
      {"dynamic_num_objects_negative", "dynamic", [](R& r) { SetFloat(r.mutable_num_objects(), 2, -1.f); }, "num_objects[2]"},
      {"dynamic_num_objects_all_zero", "dynamic", [](R& r) { *r.mutable_num_objects() = testing::ToProto(MakeTensor(DType::kFloat32, {4}, {0, 0, 0, 0})); }, "num_objects"},
      {"dynamic_num_objects_int_dtype", "dynamic", [](R& r) { *r.mutable_num_objects() = testing::ToProto(MakeTensor(DType::kInt32, {4}, {1, 2, 0, 3})); }, "num_objects.dtype"},
  };
}

/// Lines of `text` that contain `token` not followed by another identifier character.
int CountLinesWithToken(const std::string& text, const std::string& token) {
  int lines = 0;
  size_t start = 0;
  while (start < text.size()) {
    size_t end = text.find('\n', start);
    if (end == std::string::npos) end = text.size();
    const std::string line = text.substr(start, end - start);
    for (size_t at = line.find(token); at != std::string::npos; at = line.find(token, at + 1)) {
      const size_t after = at + token.size();
      if (after == line.size() || !(std::isalnum(static_cast<unsigned char>(line[after])) ||
                                    line[after] == '_' || line[after] == '-')) {
        ++lines;
        break;
      }
    }
    start = end + 1;
  }
  return lines;
}

TEST_F(FocalServeTest, MalformedRequestsAreInvalidArgumentNamingTheField) {
  const std::map<std::string, v1::ComputeRequest> bases = GoodBases();
  // Every base is itself good.
  for (const auto& [name, request] : bases) {
    v1::ComputeResponse response;
    const grpc::Status status = Compute(*stub_, request, &response);
    ASSERT_TRUE(status.ok()) << "base " << name << ": " << Describe(status);
  }
  const std::vector<BadCase> cases = BadCases();
  ASSERT_GE(cases.size(), 25u);
  std::set<std::string> names;
  for (const BadCase& c : cases) {
    SCOPED_TRACE(c.name);
    ASSERT_TRUE(names.insert(c.name).second) << "duplicate case name";
    v1::ComputeRequest request = bases.at(c.base);
    c.mutate(request);
    request.set_request_id("bad-" + c.name);
    v1::ComputeResponse response;
    const grpc::Status status = Compute(*stub_, request, &response);
    EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << Describe(status);
    EXPECT_NE(status.error_message().find(c.expect), std::string::npos)
        << "message should name '" << c.expect << "': " << status.error_message();
  }
  // The server is unharmed.
  v1::ComputeRequest good = bases.at("softmax");
  good.set_request_id("good-after-bad");
  v1::ComputeResponse response;
  const grpc::Status status = Compute(*stub_, good, &response);
  ASSERT_TRUE(status.ok()) << Describe(status);
  ExpectMatchesReference(good, response);

  // One stderr line per failed request, carrying its request id.
  std::string log;
  std::vector<std::string> missing;
  const auto deadline = Clock::now() + 3s;
  do {
    log = server_->Stderr();
    missing.clear();
    for (const BadCase& c : cases) {
      if (CountLinesWithToken(log, "bad-" + c.name) != 1) missing.push_back("bad-" + c.name);
    }
    if (missing.empty()) break;
    std::this_thread::sleep_for(50ms);
  } while (Clock::now() < deadline);
  EXPECT_TRUE(missing.empty()) << missing.size() << " failed requests without exactly one stderr "
                               << "line naming their id, e.g. " << missing.front()
                               << "; stderr tail: " << log.substr(log.size() > 2000 ? log.size() - 2000 : 0);
  EXPECT_EQ(CountLinesWithToken(log, "good-after-bad"), 0) << "a successful request was logged as failed";
}

TEST_F(FocalServeTest, MalformedStreamRequestFailsTheStream) {
  v1::ComputeRequest good = GoodBases().at("softmax");
  v1::ComputeRequest bad = good;
  *bad.mutable_targets() = testing::ToProto(MakeTensor(DType::kInt64, {4}, {0, 7, 1, 3}));
  grpc::ClientContext context;
  testing::SetTimeout(context, 10s);
  auto stream = stub_->ComputeStream(&context);
  stream->Write(good);
  stream->Write(bad);
  stream->WritesDone();
  v1::ComputeResponse response;
  int read = 0;
  while (read < 5 && stream->Read(&response)) ++read;
  const grpc::Status status = stream->Finish();
  EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << Describe(status);
  EXPECT_NE(status.error_message().find("targets[1] is 7"), std::string::npos) << status.error_message();
  EXPECT_LE(read, 1);
}

// ---------------------------------------------------------------------------------------------
// Servers of their own

TEST(FocalServeCli, HelpAndUnknownFlag) {
  testing::TempDir dir;
  ASSERT_FALSE(dir.path().empty());
  EXPECT_EQ(testing::RunProgram({kBinary, "--help"}, dir.File("help.txt"), 10s), 0);
  const std::string help = testing::ReadFile(dir.File("help.txt"));
  for (const char* flag : {"--listen", "--backend", "--max-concurrent", "--max-queue",
                           "--metrics-listen", "--tls-cert", "--auth-token-file", "--drain-timeout"}) {
    EXPECT_NE(help.find(flag), std::string::npos) << "--help does not mention " << flag;
  }
  const int code = testing::RunProgram({kBinary, "--no-such-flag=1", "--listen=127.0.0.1:0",
                                        "--metrics-listen="}, dir.File("bad.txt"), 10s);
  EXPECT_NE(code, 0) << "an unknown flag must fail";
  EXPECT_NE(code, -1) << "the server kept running with an unknown flag";
}

// --backend=cuda fails loudly, naming why, when no CUDA device answers (this machine, CI); with
// one, it serves on it and the start line names the device. auto says which it chose and why.
TEST(FocalServeCli, BackendSelectionSaysWhichAndWhy) {
  testing::TempDir dir;
  ASSERT_FALSE(dir.path().empty());
  const int code = testing::RunProgram({kBinary, "--backend=cuda", "--listen=127.0.0.1:0", "--metrics-listen="},
                                       dir.File("cuda.txt"), 20s);
  const std::string said = testing::ReadFile(dir.File("cuda.txt"));
  if (code == -1) {
    // Still running after the timeout: a device answered and the server is serving on it.
    EXPECT_NE(said.find("backend cuda:"), std::string::npos) << said;
    GTEST_SKIP() << "a CUDA device answered; the no-device failure cannot be shown here";
  }
  EXPECT_NE(code, 0) << said;
  EXPECT_NE(said.find("--backend=cuda"), std::string::npos) << said;
  EXPECT_NE(said.find("no CUDA"), std::string::npos) << said;

  std::string error;
  const auto server = testing::ServerProcess::Start(kBinary, {}, &error, /*metrics=*/false);
  ASSERT_NE(server, nullptr) << error;
  EXPECT_NE(server->listening_line().find("backend cpu ("), std::string::npos) << server->listening_line();
  EXPECT_NE(server->listening_line().find("no CUDA"), std::string::npos) << server->listening_line();
}

// FOCAL_CPU_TARGET caps the CPU backend's SIMD target: an unknown value stops the server at
// start naming the variable and the values it takes; a known one shows in the start line (SSE4:
// every x86-64 processor CI runs on has it, so the cap is always what runs).
TEST(FocalServeCli, SimdTargetCapFromTheEnvironment) {
  testing::TempDir dir;
  ASSERT_FALSE(dir.path().empty());
  ASSERT_EQ(setenv("FOCAL_CPU_TARGET", "avx9000", 1), 0);
  const int code = testing::RunProgram({kBinary, "--backend=cpu", "--listen=127.0.0.1:0", "--metrics-listen="},
                                       dir.File("bad_target.txt"), 10s);
  const std::string said = testing::ReadFile(dir.File("bad_target.txt"));
  EXPECT_NE(code, 0) << said;
  EXPECT_NE(code, -1) << "the server kept running with an unknown SIMD target";
  EXPECT_NE(said.find("FOCAL_CPU_TARGET=avx9000"), std::string::npos) << said;
  EXPECT_NE(said.find("avx2"), std::string::npos) << said;

  ASSERT_EQ(setenv("FOCAL_CPU_TARGET", "sse4", 1), 0);
  std::string error;
  const auto server = testing::ServerProcess::Start(kBinary, {"--backend=cpu"}, &error, /*metrics=*/false);
  unsetenv("FOCAL_CPU_TARGET");
  ASSERT_NE(server, nullptr) << error;
  EXPECT_NE(server->listening_line().find("backend cpu (SSE4)"), std::string::npos) << server->listening_line();
}

TEST(FocalServeDeadline, DeadlineExceededAndCancelledThenStillServing) {
  std::string error;
  auto server = Launch({"--debug-delay-ms", "500"}, &error, /*metrics=*/false);
  ASSERT_NE(server, nullptr) << error;
  EXPECT_TRUE(server->metrics_address().empty());
  auto stub = MakeStub(server->address());

  v1::ComputeResponse response;
  auto start = Clock::now();
  grpc::Status status = Compute(*stub, SmallRequest("deadline"), &response, 50ms);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::DEADLINE_EXCEEDED) << Describe(status);
  EXPECT_LT(std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - start).count(), 450);

  // Cancelled by the client while the server sleeps.
  {
    grpc::ClientContext context;
    testing::SetTimeout(context, 10s);
    std::mutex mu;
    std::condition_variable cv;
    bool done = false;
    grpc::Status cancelled;
    v1::ComputeRequest request = SmallRequest("cancel");
    v1::ComputeResponse r;
    stub->async()->Compute(&context, &request, &r, [&](grpc::Status s) {
      std::lock_guard<std::mutex> lock(mu);
      cancelled = std::move(s);
      done = true;
      cv.notify_all();
    });
    std::this_thread::sleep_for(100ms);
    context.TryCancel();
    std::unique_lock<std::mutex> lock(mu);
    cv.wait(lock, [&] { return done; });  // bounded: the call is cancelled (and has a deadline)
    EXPECT_EQ(cancelled.error_code(), grpc::StatusCode::CANCELLED) << Describe(cancelled);
  }

  // Still serving, and the debug delay is real.
  start = Clock::now();
  v1::ComputeRequest good = SmallRequest("after");
  status = Compute(*stub, good, &response, 10s);
  ASSERT_TRUE(status.ok()) << Describe(status);
  ExpectMatchesReference(good, response);
  EXPECT_GE(std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - start).count(), 450)
      << "ms: --debug-delay-ms 500 had no effect";
  EXPECT_TRUE(server->Running());
}

TEST(FocalServeLimits, ConcurrencyAndQueueLimits) {
  std::string error;
  auto server = Launch({"--max-concurrent", "1", "--max-queue", "1", "--debug-delay-ms", "300"},
                       &error, /*metrics=*/false);
  ASSERT_NE(server, nullptr) << error;
  auto stub = MakeStub(server->address());
  {  // connect first so that the burst is not spread by connection setup; with GetServerInfo,
     // which takes no worker: a warm-up Compute's worker can still hold its slot for a moment
     // after its client has the answer, and the burst would find one slot fewer (seen under load)
    grpc::ClientContext context;
    v1::ServerInfo info;
    ASSERT_TRUE(stub->GetServerInfo(&context, v1::GetServerInfoRequest(), &info).ok());
  }
  std::vector<v1::ComputeRequest> requests;
  for (int i = 0; i < 8; ++i) requests.push_back(SmallRequest("burst-" + std::to_string(i)));
  const std::vector<Outcome> outcomes = ComputeConcurrently(*stub, requests, 10s);
  int ok = 0, exhausted = 0;
  int64_t max_queue_micros = 0;
  for (size_t i = 0; i < outcomes.size(); ++i) {
    const Outcome& o = outcomes[i];
    if (o.status.ok()) {
      ++ok;
      ExpectMatchesReference(requests[i], o.response);
      max_queue_micros = std::max(max_queue_micros, o.response.timing().queue_micros());
    } else {
      EXPECT_EQ(o.status.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED) << Describe(o.status);
      if (o.status.error_code() == grpc::StatusCode::RESOURCE_EXHAUSTED) {
        ++exhausted;
        EXPECT_LT(o.elapsed.count(), 250) << "ms: a rejected request must be answered at once";
      }
    }
  }
  EXPECT_EQ(ok + exhausted, 8);
  EXPECT_GE(exhausted, 1);
  EXPECT_EQ(ok, 2) << "one computing + one queued should succeed";
  EXPECT_GE(max_queue_micros, 200000) << "the queued request should report its wait";
  // Afterwards the server serves again.
  v1::ComputeResponse response;
  const grpc::Status status = Compute(*stub, SmallRequest("after"), &response);
  EXPECT_TRUE(status.ok()) << Describe(status);
}

TEST(FocalServeLimits, MessageSizeLimitBothDirections) {
  std::string error;
  auto server = Launch({"--max-message-bytes", "1048576"}, &error, /*metrics=*/false);
  ASSERT_NE(server, nullptr) << error;
  auto stub = MakeStub(server->address());

  // 2 MiB of logits: over the limit on the way in.
  v1::ComputeRequest big;
  big.mutable_loss()->mutable_softmax_focal();
  *big.mutable_logits() = testing::ToProto(MakeTensor(DType::kFloat32, {1024, 512}, std::vector<double>(524288, 0.5)));
  *big.mutable_targets() = testing::ToProto(MakeTensor(DType::kInt64, {1024}, std::vector<double>(1024, 1)));
  ASSERT_GT(big.ByteSizeLong(), 2u << 20);
  v1::ComputeResponse response;
  grpc::Status status = Compute(*stub, big, &response);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED) << Describe(status);

  // 512 KiB: fine.
  v1::ComputeRequest medium = big;
  *medium.mutable_logits() = testing::ToProto(MakeTensor(DType::kFloat32, {1024, 128}, testing::RandomNormal(131072, 1, 3)));
  ASSERT_LT(medium.ByteSizeLong(), 1u << 20);
  status = Compute(*stub, medium, &response);
  ASSERT_TRUE(status.ok()) << Describe(status);
  ExpectMatchesReference(medium, response);

  // A 600 KB request whose float32 gradient (1.2 MB) is over the limit on the way out.
  v1::ComputeRequest out;
  out.mutable_loss()->mutable_softmax_focal();
  out.mutable_loss()->set_reduction(v1::NONE);
  *out.mutable_logits() = testing::ToProto(MakeTensor(DType::kFloat16, {3000, 100}, testing::RandomNormal(300000, 1, 4)));
  *out.mutable_targets() = testing::ToProto(MakeTensor(DType::kUInt8, {3000}, testing::RandomClasses(3000, 100, 5)));
  out.set_compute_gradient(true);
  out.set_gradient_dtype(v1::FLOAT32);
  ASSERT_LT(out.ByteSizeLong(), 1u << 20);
  status = Compute(*stub, out, &response);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED) << Describe(status);

  status = Compute(*stub, SmallRequest("after"), &response);
  EXPECT_TRUE(status.ok()) << Describe(status);
}

TEST(FocalServeLimits, MaxElements) {
  std::string error;
  auto server = Launch({"--max-elements=1000"}, &error, /*metrics=*/false);
  ASSERT_NE(server, nullptr) << error;
  auto stub = MakeStub(server->address());
  auto request = [](int64_t n) {
    v1::ComputeRequest r;
    r.mutable_loss()->mutable_softmax_focal();
    *r.mutable_logits() = testing::ToProto(MakeTensor(DType::kFloat32, {n, 10}, testing::RandomNormal(static_cast<size_t>(n * 10), 1, 8)));
    *r.mutable_targets() = testing::ToProto(MakeTensor(DType::kInt64, {n}, testing::RandomClasses(static_cast<size_t>(n), 10, 9)));
    return r;
  };
  v1::ComputeResponse response;
  grpc::Status status = Compute(*stub, request(100), &response);
  EXPECT_TRUE(status.ok()) << Describe(status);
  status = Compute(*stub, request(101), &response);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED) << Describe(status);
  v1::EvaluateResponse evaluation;
  status = Evaluate(*stub, {request(50), request(101)}, &evaluation);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED) << Describe(status);
  status = Evaluate(*stub, {request(100), request(100)}, &evaluation);
  EXPECT_TRUE(status.ok()) << Describe(status) << " (the limit is per request, not per stream)";
}

// A backend that stops being healthy (a CUDA device lost to a sticky error) turns the health
// service NOT_SERVING within the watcher's second, so load balancers route around the replica.
TEST(FocalServeHealth, AnUnhealthyBackendTurnsHealthNotServing) {
  std::string error;
  auto server = Launch({"--debug-unhealthy-after=1"}, &error, /*metrics=*/false);
  ASSERT_NE(server, nullptr) << error;
  auto channel = testing::MakeChannel(server->address());
  auto stub = v1::FocalLossService::NewStub(channel);
  int serving = 0;
  ASSERT_TRUE(testing::HealthCheck(channel.get(), "", &serving).ok());
  EXPECT_EQ(serving, kServing);
  v1::ComputeResponse response;
  const grpc::Status status = Compute(*stub, SmallRequest("last-healthy"), &response);
  ASSERT_TRUE(status.ok()) << Describe(status);
  const auto give_up = std::chrono::steady_clock::now() + 5s;
  while (serving != kNotServing && std::chrono::steady_clock::now() < give_up) {
    std::this_thread::sleep_for(100ms);
    ASSERT_TRUE(testing::HealthCheck(channel.get(), "focal.v1.FocalLossService", &serving).ok());
  }
  EXPECT_EQ(serving, kNotServing) << "health still SERVING 5 s after the backend turned unhealthy";
}

TEST(FocalServeShutdown, SigtermDrainsInFlightRequestsAndExitsZero) {
  std::string error;
  auto server = Launch({"--debug-delay-ms=300", "--drain-grace=1", "--drain-timeout=10", "--max-concurrent=4"}, &error,
                       /*metrics=*/false);
  ASSERT_NE(server, nullptr) << error;
  auto channel = testing::MakeChannel(server->address());
  auto stub = v1::FocalLossService::NewStub(channel);
  for (const std::string service : {"", "focal.v1.FocalLossService"}) {
    int serving = 0;
    const grpc::Status status = testing::HealthCheck(channel.get(), service, &serving);
    ASSERT_TRUE(status.ok()) << Describe(status);
    EXPECT_EQ(serving, kServing) << "service '" << service << "'";
  }

  std::vector<v1::ComputeRequest> requests;
  for (int i = 0; i < 6; ++i) requests.push_back(SmallRequest("drain-" + std::to_string(i)));
  int health_during_grace = -1;
  grpc::Status health_status, grace_call_status, late_call_status;
  const std::vector<Outcome> outcomes = ComputeConcurrently(*stub, requests, 10s, [&] {
    std::this_thread::sleep_for(100ms);  // all six accepted: four computing, two queued
    const auto signalled = Clock::now();
    ASSERT_TRUE(server->Signal(SIGTERM));
    std::this_thread::sleep_for(30ms);
    // During the grace: health says NOT_SERVING at once, yet calls are still served, so that a
    // balancer that has not yet seen the change loses nothing.
    health_status = testing::HealthCheck(channel.get(), "", &health_during_grace, 1s);
    v1::ComputeResponse response;
    grace_call_status = Compute(*MakeStub(server->address()), SmallRequest("in-grace"), &response, 3s);
    // After it: GOAWAY, and new calls are refused.
    std::this_thread::sleep_until(signalled + 1300ms);
    late_call_status = Compute(*MakeStub(server->address()), SmallRequest("too-late"), &response, 2s);
  });
  ASSERT_TRUE(health_status.ok()) << Describe(health_status);
  EXPECT_EQ(health_during_grace, kNotServing);
  EXPECT_TRUE(grace_call_status.ok()) << "a call during --drain-grace: " << Describe(grace_call_status);
  EXPECT_EQ(late_call_status.error_code(), grpc::StatusCode::UNAVAILABLE) << Describe(late_call_status);
  for (size_t i = 0; i < outcomes.size(); ++i) {
    EXPECT_TRUE(outcomes[i].status.ok()) << requests[i].request_id() << ": " << Describe(outcomes[i].status);
    if (outcomes[i].status.ok()) ExpectMatchesReference(requests[i], outcomes[i].response);
  }
  const std::optional<int> code = server->WaitForExit(10s);
  ASSERT_TRUE(code.has_value()) << "still running 10 s after the last request";
  EXPECT_EQ(*code, 0) << "stderr: " << server->Stderr();
  EXPECT_NE(server->Stderr().find("every accepted call was answered"), std::string::npos) << server->Stderr();
}

TEST(FocalServeShutdown, DrainTimeoutBoundsTheExitAndSaysWhatWasCutOff) {
  std::string error;
  auto server = Launch({"--debug-delay-ms=5000", "--drain-grace=0", "--drain-timeout=1"}, &error, /*metrics=*/false);
  ASSERT_NE(server, nullptr) << error;
  auto stub = MakeStub(server->address());
  std::optional<int> code;
  std::chrono::milliseconds exit_after{0};
  const std::vector<Outcome> outcomes = ComputeConcurrently(*stub, {SmallRequest("slow")}, 10s, [&] {
    std::this_thread::sleep_for(200ms);
    const auto signalled = Clock::now();
    ASSERT_TRUE(server->Signal(SIGTERM));
    code = server->WaitForExit(6s);
    exit_after = std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - signalled);
  });
  ASSERT_TRUE(code.has_value()) << "did not exit after the drain timeout";
  EXPECT_EQ(*code, 1) << "a call was cut off: the exit code says so; stderr: " << server->Stderr();
  EXPECT_NE(server->Stderr().find("1 call(s) cut off at the drain deadline"), std::string::npos) << server->Stderr();
  EXPECT_LT(exit_after.count(), 3500) << "ms from SIGTERM to exit: --drain-timeout=1 should bound the drain";
  EXPECT_FALSE(outcomes[0].status.ok()) << "a 5 s request cannot have finished";
}

TEST(FocalServeShutdown, SigintExitsZero) {
  std::string error;
  // Also: every remaining documented flag is accepted, in both spellings.
  auto server = Launch({"--backend", "cpu", "--cpu-threads=1", "--max-queue", "8", "--keepalive-time=30",
                        "--max-connection-age", "60", "--drain-grace", "0", "--drain-timeout=5", "--max-elements",
                        "1000000", "--max-classes=4096", "--max-buffered-bytes", "100000000", "--trim-idle-ms=500"},
                       &error);
  ASSERT_NE(server, nullptr) << error;
  {
    auto stub = MakeStub(server->address());
    v1::ComputeResponse response;
    ASSERT_TRUE(Compute(*stub, SmallRequest("one"), &response).ok());
  }  // the client's connection closes here: an idle open connection slows gRPC's shutdown
  ASSERT_TRUE(server->Signal(SIGINT));
  const std::optional<int> code = server->WaitForExit(10s);
  ASSERT_TRUE(code.has_value()) << "still running 10 s after SIGINT";
  EXPECT_EQ(*code, 0) << "stderr: " << server->Stderr();
}

// ---------------------------------------------------------------------------------------------
// TLS, mutual TLS

/// A CA, a server certificate for 127.0.0.1/localhost and a client certificate, made with the
/// openssl command-line tool; plus a second ("rogue") CA with a client certificate of its own.
bool MakeCertificates(const testing::TempDir& dir, std::string* why) {
  const std::string log = dir.File("openssl.log");
  auto run = [&](const std::vector<std::string>& args) {
    if (testing::RunProgram(args, log, 30s) == 0) return true;
    std::string command;
    for (const std::string& a : args) command += a + " ";
    *why = "failed: " + command + "\n" + testing::ReadFile(log);
    return false;
  };
  const std::vector<std::string> ec = {"-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"};
  auto make_ca = [&](const std::string& name) {
    std::vector<std::string> args = {"openssl", "req", "-x509"};
    args.insert(args.end(), ec.begin(), ec.end());
    args.insert(args.end(), {"-keyout", dir.File(name + ".key"), "-out", dir.File(name + ".pem"),
                             "-days", "2", "-subj", "/CN=FocalServe test " + name,
                             "-addext", "basicConstraints=critical,CA:TRUE",
                             "-addext", "keyUsage=critical,keyCertSign,cRLSign"});
    return run(args);
  };
  auto make_leaf = [&](const std::string& name, const std::string& ca, const std::string& cn,
                       const std::string& extensions, int serial) {
    std::vector<std::string> args = {"openssl", "req"};
    args.insert(args.end(), ec.begin(), ec.end());
    args.insert(args.end(), {"-keyout", dir.File(name + ".key"), "-out", dir.File(name + ".csr"),
                             "-subj", "/CN=" + cn});
    if (!run(args)) return false;
    if (!testing::WriteFile(dir.File(name + ".ext"), extensions)) return false;
    return run({"openssl", "x509", "-req", "-in", dir.File(name + ".csr"), "-CA", dir.File(ca + ".pem"),
                "-CAkey", dir.File(ca + ".key"), "-set_serial", std::to_string(serial), "-days", "2",
                "-out", dir.File(name + ".pem"), "-extfile", dir.File(name + ".ext")});
  };
  return make_ca("ca") && make_ca("rogue_ca") &&
         make_leaf("server", "ca", "localhost",
                   "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\n"
                   "extendedKeyUsage=serverAuth\nsubjectAltName=IP:127.0.0.1,DNS:localhost\n", 2) &&
         make_leaf("client", "ca", "focal-test-client",
                   "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\n"
                   "extendedKeyUsage=clientAuth\n", 3) &&
         make_leaf("rogue_client", "rogue_ca", "focal-rogue-client",
                   "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\n"
                   "extendedKeyUsage=clientAuth\n", 4);
}

std::shared_ptr<grpc::ChannelCredentials> TlsCredentials(const testing::TempDir& dir,
                                                         const std::string& client = "") {
  grpc::SslCredentialsOptions options;
  options.pem_root_certs = testing::ReadFile(dir.File("ca.pem"));
  if (!client.empty()) {
    options.pem_cert_chain = testing::ReadFile(dir.File(client + ".pem"));
    options.pem_private_key = testing::ReadFile(dir.File(client + ".key"));
  }
  return grpc::SslCredentials(options);
}

grpc::Status ComputeOver(const std::string& address, std::shared_ptr<grpc::ChannelCredentials> credentials,
                         grpc::ChannelArguments args = {}) {
  auto stub = v1::FocalLossService::NewStub(testing::MakeChannel(address, credentials, args));
  v1::ComputeRequest request = SmallRequest("tls");
  v1::ComputeResponse response;
  const grpc::Status status = Compute(*stub, request, &response, 5s);
  if (status.ok()) ExpectMatchesReference(request, response);
  return status;
}

class FocalServeTls : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new testing::TempDir();
    why_ = new std::string();
    ok_ = !dir_->path().empty() && MakeCertificates(*dir_, why_);
  }
  static void TearDownTestSuite() {
    delete dir_;
    delete why_;
  }
  void SetUp() override { ASSERT_TRUE(ok_) << "could not make certificates: " << *why_; }
  static testing::TempDir* dir_;
  static std::string* why_;
  static bool ok_;
};
testing::TempDir* FocalServeTls::dir_ = nullptr;
std::string* FocalServeTls::why_ = nullptr;
bool FocalServeTls::ok_ = false;

TEST_F(FocalServeTls, TlsAcceptsTrustedClientsAndRejectsPlaintext) {
  std::string error;
  auto server = Launch({"--tls-cert", dir_->File("server.pem"), "--tls-key", dir_->File("server.key")},
                       &error, /*metrics=*/false);
  ASSERT_NE(server, nullptr) << error;
  grpc::Status status = ComputeOver(server->address(), TlsCredentials(*dir_));
  EXPECT_TRUE(status.ok()) << "TLS client with the CA: " << Describe(status);
  grpc::ChannelArguments by_name;
  by_name.SetSslTargetNameOverride("localhost");
  status = ComputeOver(server->address(), TlsCredentials(*dir_), by_name);
  EXPECT_TRUE(status.ok()) << "TLS client checking DNS:localhost: " << Describe(status);

  status = ComputeOver(server->address(), grpc::InsecureChannelCredentials());
  EXPECT_FALSE(status.ok()) << "a plaintext client must not get through";

  grpc::SslCredentialsOptions untrusted;  // the CA is not among the roots
  untrusted.pem_root_certs = testing::ReadFile(dir_->File("rogue_ca.pem"));
  status = ComputeOver(server->address(), grpc::SslCredentials(untrusted));
  EXPECT_FALSE(status.ok()) << "a client that does not trust the server's CA must fail";
  EXPECT_TRUE(server->Running());
}

TEST_F(FocalServeTls, MutualTlsRequiresAClientCertificateFromTheCa) {
  std::string error;
  auto server = Launch({"--tls-cert", dir_->File("server.pem"), "--tls-key", dir_->File("server.key"),
                        "--tls-client-ca", dir_->File("ca.pem")},
                       &error, /*metrics=*/false);
  ASSERT_NE(server, nullptr) << error;
  grpc::Status status = ComputeOver(server->address(), TlsCredentials(*dir_));
  EXPECT_FALSE(status.ok()) << "a client without a certificate must be rejected";
  status = ComputeOver(server->address(), TlsCredentials(*dir_, "rogue_client"));
  EXPECT_FALSE(status.ok()) << "a client certificate from another CA must be rejected";
  status = ComputeOver(server->address(), TlsCredentials(*dir_, "client"));
  EXPECT_TRUE(status.ok()) << "client with a certificate from the CA: " << Describe(status);
  status = ComputeOver(server->address(), grpc::InsecureChannelCredentials());
  EXPECT_FALSE(status.ok());
  EXPECT_TRUE(server->Running());
}

// ---------------------------------------------------------------------------------------------
// Bearer token

TEST(FocalServeAuth, BearerTokenIsRequiredExceptForHealth) {
  testing::TempDir dir;
  const std::string token = "s3cr3t-Token_for-focalserve";
  ASSERT_TRUE(testing::WriteFile(dir.File("token"), token));
  std::string error;
  auto server = Launch({"--auth-token-file", dir.File("token")}, &error, /*metrics=*/false);
  ASSERT_NE(server, nullptr) << error;
  auto channel = testing::MakeChannel(server->address());
  auto stub = v1::FocalLossService::NewStub(channel);
  v1::ComputeResponse response;

  grpc::Status status = Compute(*stub, SmallRequest("none"), &response);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::UNAUTHENTICATED) << Describe(status);
  status = Compute(*stub, SmallRequest("wrong"), &response, 5s, "not-the-token");
  EXPECT_EQ(status.error_code(), grpc::StatusCode::UNAUTHENTICATED) << Describe(status);
  status = Compute(*stub, SmallRequest("prefix"), &response, 5s, token.substr(0, token.size() - 1));
  EXPECT_EQ(status.error_code(), grpc::StatusCode::UNAUTHENTICATED) << Describe(status);
  {  // the token without the "Bearer " scheme
    grpc::ClientContext context;
    testing::SetTimeout(context, 5s);
    context.AddMetadata("authorization", token);
    status = stub->Compute(&context, SmallRequest("no-scheme"), &response);
    EXPECT_EQ(status.error_code(), grpc::StatusCode::UNAUTHENTICATED) << Describe(status);
  }
  {  // every method is guarded
    grpc::ClientContext context;
    testing::SetTimeout(context, 5s);
    v1::ServerInfo info;
    status = stub->GetServerInfo(&context, v1::GetServerInfoRequest(), &info);
    EXPECT_EQ(status.error_code(), grpc::StatusCode::UNAUTHENTICATED) << Describe(status);
    v1::EvaluateResponse evaluation;
    status = Evaluate(*stub, {SmallRequest("e")}, &evaluation);
    EXPECT_EQ(status.error_code(), grpc::StatusCode::UNAUTHENTICATED) << Describe(status);
    grpc::ClientContext stream_context;
    testing::SetTimeout(stream_context, 5s);
    auto stream = stub->ComputeStream(&stream_context);
    stream->Write(SmallRequest("s"));
    stream->WritesDone();
    while (stream->Read(&response)) {
    }
    status = stream->Finish();
    EXPECT_EQ(status.error_code(), grpc::StatusCode::UNAUTHENTICATED) << Describe(status);
  }

  v1::ComputeRequest good = SmallRequest("right");
  status = Compute(*stub, good, &response, 5s, token);
  ASSERT_TRUE(status.ok()) << Describe(status);
  ExpectMatchesReference(good, response);
  {
    grpc::ClientContext context;
    testing::SetTimeout(context, 5s);
    context.AddMetadata("authorization", "Bearer " + token);
    v1::ServerInfo info;
    status = stub->GetServerInfo(&context, v1::GetServerInfoRequest(), &info);
    EXPECT_TRUE(status.ok()) << Describe(status);
  }

  int serving = 0;
  status = testing::HealthCheck(channel.get(), "", &serving);
  ASSERT_TRUE(status.ok()) << "health must stay open without a token: " << Describe(status);
  EXPECT_EQ(serving, kServing);
}

// ---------------------------------------------------------------------------------------------
// Metrics

TEST(FocalServeMetrics, CountersFollowTheRequests) {
  std::string error;
  auto server = Launch({}, &error);
  ASSERT_NE(server, nullptr) << error;
  ASSERT_FALSE(server->metrics_address().empty()) << server->listening_line();
  auto stub = MakeStub(server->address());

  auto scrape = [&]() -> std::vector<testing::MetricSample> {
    const std::optional<testing::HttpResponse> http = testing::HttpGet(server->metrics_address(), "/metrics");
    EXPECT_TRUE(http.has_value()) << "GET /metrics failed";
    if (!http) return {};
    EXPECT_EQ(http->status, 200);
    const auto type = http->headers.find("content-type");
    EXPECT_TRUE(type != http->headers.end() && type->second.find("text/plain") != std::string::npos)
        << "Prometheus text format is text/plain";
    return testing::ParseMetrics(http->body);
  };
  const std::vector<testing::MetricSample> before = scrape();

  // 5 softmax and 2 sigmoid successes, 3 failures.
  int64_t softmax_elements = 0, sigmoid_elements = 0;
  size_t data_bytes = 0;
  int ok = 0, failed = 0;
  for (int i = 0; i < 5; ++i) {
    v1::ComputeRequest r;
    r.set_request_id("m-softmax-" + std::to_string(i));
    r.mutable_loss()->mutable_softmax_focal();
    *r.mutable_logits() = testing::ToProto(MakeTensor(DType::kFloat32, {32, 10}, testing::RandomNormal(320, 1, 40 + i)));
    *r.mutable_targets() = testing::ToProto(MakeTensor(DType::kInt64, {32}, testing::RandomClasses(32, 10, 50 + i)));
    v1::ComputeResponse response;
    const grpc::Status status = Compute(*stub, r, &response);
    ASSERT_TRUE(status.ok()) << Describe(status);
    softmax_elements += NumElements(r.logits());
    data_bytes += r.logits().data().size() + r.targets().data().size();
    ++ok;
  }
  for (int i = 0; i < 2; ++i) {
    v1::ComputeRequest r;
    r.set_request_id("m-sigmoid-" + std::to_string(i));
    r.mutable_loss()->mutable_sigmoid_focal();
    *r.mutable_logits() = testing::ToProto(MakeTensor(DType::kFloat32, {16, 12}, testing::RandomNormal(192, 1, 60 + i)));
    *r.mutable_targets() = testing::ToProto(MakeTensor(DType::kFloat32, {16, 12}, BinaryTargets(192, 70 + i)));
    r.set_compute_gradient(true);
    v1::ComputeResponse response;
    const grpc::Status status = Compute(*stub, r, &response);
    ASSERT_TRUE(status.ok()) << Describe(status);
    sigmoid_elements += NumElements(r.logits());
    data_bytes += r.logits().data().size() + r.targets().data().size();
    ++ok;
  }
  int64_t distribution_elements = 0;
  {  // a catalogue variant gets its own label, as every variant of the table does
    v1::ComputeRequest r;
    r.set_request_id("m-dfl");
    r.mutable_loss()->mutable_distribution_focal();
    *r.mutable_logits() = testing::ToProto(MakeTensor(DType::kFloat32, {8, 17}, testing::RandomNormal(136, 1, 80)));
    *r.mutable_targets() = testing::ToProto(MakeTensor(DType::kFloat32, {8}, testing::RandomUniform(8, 0, 16, 81)));
    v1::ComputeResponse response;
    const grpc::Status status = Compute(*stub, r, &response);
    ASSERT_TRUE(status.ok()) << Describe(status);
    distribution_elements += NumElements(r.logits());
    data_bytes += r.logits().data().size() + r.targets().data().size();
    ++ok;
  }
  for (int i = 0; i < 3; ++i) {
    v1::ComputeRequest r = SmallRequest("m-bad-" + std::to_string(i));
    *r.mutable_targets() = testing::ToProto(MakeTensor(DType::kInt64, {4}, {0, 9, 1, 0}));
    v1::ComputeResponse response;
    const grpc::Status status = Compute(*stub, r, &response);
    ASSERT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << Describe(status);
    ++failed;
  }

  const std::map<std::string, std::string> compute_ok = {{"method", "Compute"}, {"code", "OK"}};
  const std::map<std::string, std::string> compute_invalid = {{"method", "Compute"}, {"code", "INVALID_ARGUMENT"}};
  auto delta = [&](const std::vector<testing::MetricSample>& after, const std::string& name,
                   const std::map<std::string, std::string>& match) {
    return testing::SumMetric(after, name, match) - testing::SumMetric(before, name, match);
  };
  // Metrics may be recorded just after the response is sent: poll briefly.
  std::vector<testing::MetricSample> after;
  const auto deadline = Clock::now() + 3s;
  do {
    after = scrape();
    if (delta(after, "focal_requests_total", compute_ok) == ok &&
        delta(after, "focal_requests_total", compute_invalid) == failed) {
      break;
    }
    std::this_thread::sleep_for(50ms);
  } while (Clock::now() < deadline);

  EXPECT_EQ(delta(after, "focal_requests_total", compute_ok), ok);
  EXPECT_EQ(delta(after, "focal_requests_total", compute_invalid), failed);
  EXPECT_EQ(delta(after, "focal_requests_total",
                  {{"method", "Compute"}, {"variant", "softmax_focal"}, {"code", "OK"}}), 5);
  EXPECT_EQ(delta(after, "focal_requests_total",
                  {{"method", "Compute"}, {"variant", "sigmoid_focal"}, {"code", "OK"}}), 2);
  EXPECT_EQ(delta(after, "focal_requests_total",
                  {{"method", "Compute"}, {"variant", "softmax_focal"}, {"code", "INVALID_ARGUMENT"}}), 3);
  EXPECT_EQ(delta(after, "focal_elements_processed_total", {{"variant", "softmax_focal"}}),
            static_cast<double>(softmax_elements));
  EXPECT_EQ(delta(after, "focal_elements_processed_total", {{"variant", "sigmoid_focal"}}),
            static_cast<double>(sigmoid_elements));
  EXPECT_EQ(delta(after, "focal_requests_total",
                  {{"method", "Compute"}, {"variant", "distribution_focal"}, {"code", "OK"}}), 1);
  EXPECT_EQ(delta(after, "focal_elements_processed_total", {{"variant", "distribution_focal"}}),
            static_cast<double>(distribution_elements));
  EXPECT_EQ(delta(after, "focal_request_latency_seconds_count", {{"method", "Compute"}}), ok + failed);
  EXPECT_TRUE(testing::HasMetric(after, "focal_request_latency_seconds_bucket"));
  EXPECT_TRUE(testing::HasMetric(after, "focal_request_latency_seconds_sum"));
  EXPECT_GE(testing::SumMetric(after, "focal_queue_seconds_count"), ok);
  EXPECT_GE(testing::SumMetric(after, "focal_compute_seconds_count"), ok);
  EXPECT_TRUE(testing::HasMetric(after, "focal_queue_seconds_bucket"));
  EXPECT_TRUE(testing::HasMetric(after, "focal_compute_seconds_bucket"));
  EXPECT_GE(delta(after, "focal_bytes_received_total", {}), static_cast<double>(data_bytes));
  EXPECT_GT(delta(after, "focal_bytes_sent_total", {}), 0.0);
  EXPECT_TRUE(testing::HasMetric(after, "focal_requests_in_flight"));
  EXPECT_EQ(testing::SumMetric(after, "focal_requests_in_flight"), 0.0);

  const std::optional<testing::HttpResponse> missing = testing::HttpGet(server->metrics_address(), "/nope");
  ASSERT_TRUE(missing.has_value());
  EXPECT_EQ(missing->status, 404);
}


// ---------------------------------------------------------------------------------------------
// The Open Inference Protocol (KServe v2), through the stub generated from
// proto/inference/grpc_predict_v2.proto, as a KServe or Triton client calls it. The requests
// are VariantCases' focal.v1 requests, mapped by this test's own reading of docs/kserve.md (by
// reflection over the variant's message, not through the server's codec); every answer must
// be focal.v1 Compute's, byte for byte.

using KServeStub = inference::GRPCInferenceService::Stub;

const char* KServeDatatype(int dtype) {
  switch (dtype) {
    case v1::FLOAT32: return "FP32";
    case v1::FLOAT16: return "FP16";
    case v1::BFLOAT16: return "BF16";
    case v1::FLOAT64: return "FP64";
    case v1::INT32: return "INT32";
    case v1::INT64: return "INT64";
    case v1::UINT8: return "UINT8";
  }
  return "?";
}

/// Adds `t` as input `name`, raw or in its typed contents field (only dtypes that have one).
bool AddKServeInput(inference::ModelInferRequest& r, const std::string& name, const v1::Tensor& t, bool typed) {
  auto* in = r.add_inputs();
  in->set_name(name);
  in->set_datatype(KServeDatatype(t.dtype()));
  for (int64_t d : t.shape()) in->add_shape(d);
  if (!typed) {
    r.add_raw_input_contents(t.data());
    return true;
  }
  auto fill = [&](auto* field, auto element) {
    using E = decltype(element);
    const size_t n = t.data().size() / sizeof(E);
    for (size_t i = 0; i < n; ++i) {
      E v;
      std::memcpy(&v, t.data().data() + i * sizeof(E), sizeof(E));
      field->Add(v);
    }
  };
  auto* c = in->mutable_contents();
  switch (t.dtype()) {
    case v1::FLOAT32: fill(c->mutable_fp32_contents(), float{}); return true;
    case v1::FLOAT64: fill(c->mutable_fp64_contents(), double{}); return true;
    case v1::INT64: fill(c->mutable_int64_contents(), int64_t{}); return true;
    case v1::INT32: fill(c->mutable_int_contents(), int32_t{}); return true;
    case v1::UINT8:
      for (char b : t.data()) c->add_uint_contents(static_cast<unsigned char>(b));
      return true;
    default: return false;  // 16-bit floats travel raw only
  }
}

std::string ExactNumber(double v) {
  char text[40];
  std::snprintf(text, sizeof text, "%.17g", v);
  return text;
}

/// The ModelInferRequest for `r`, or nullopt when the protocol cannot say it (a gradient_dtype,
/// typed contents of 16-bit floats).
std::optional<inference::ModelInferRequest> ToModelInfer(const v1::ComputeRequest& r, bool typed) {
  if (r.gradient_dtype() != v1::DATA_TYPE_UNSPECIFIED) return std::nullopt;
  inference::ModelInferRequest out;
  out.set_id(r.request_id());
  const google::protobuf::Message& loss = r.loss();
  const auto* variant_field =
      loss.GetReflection()->GetOneofFieldDescriptor(loss, loss.GetDescriptor()->FindOneofByName("variant"));
  out.set_model_name(variant_field->name());
  auto& params = *out.mutable_parameters();
  const google::protobuf::Message& p = loss.GetReflection()->GetMessage(loss, variant_field);
  std::vector<const google::protobuf::FieldDescriptor*> fields;
  p.GetReflection()->ListFields(p, &fields);
  using FD = google::protobuf::FieldDescriptor;
  for (const FD* f : fields) {
    const auto* refl = p.GetReflection();
    std::string name = f->name();
    if (f->is_repeated()) {
      std::vector<std::string> items;
      for (int i = 0; i < refl->FieldSize(p, f); ++i) {
        if (f->cpp_type() == FD::CPPTYPE_DOUBLE) items.push_back(ExactNumber(refl->GetRepeatedDouble(p, f, i)));
        if (f->cpp_type() == FD::CPPTYPE_FLOAT) items.push_back(ExactNumber(refl->GetRepeatedFloat(p, f, i)));
        if (f->cpp_type() == FD::CPPTYPE_MESSAGE) {  // a GammaStep
          const auto& step = refl->GetRepeatedMessage(p, f, i);
          const auto* sd = step.GetDescriptor();
          items.push_back(ExactNumber(step.GetReflection()->GetDouble(step, sd->FindFieldByName("threshold"))) + ":" +
                          ExactNumber(step.GetReflection()->GetDouble(step, sd->FindFieldByName("gamma"))));
        }
      }
      if (name.size() > 4 && name.compare(name.size() - 4, 4, "_f64") == 0) name.resize(name.size() - 4);
      std::string joined;
      for (const std::string& item : items) joined += (joined.empty() ? "" : ",") + item;
      params[name].set_string_param(joined);
      continue;
    }
    switch (f->cpp_type()) {
      case FD::CPPTYPE_DOUBLE: params[name].set_double_param(refl->GetDouble(p, f)); break;
      case FD::CPPTYPE_FLOAT: params[name].set_double_param(refl->GetFloat(p, f)); break;
      case FD::CPPTYPE_INT64: params[name].set_int64_param(refl->GetInt64(p, f)); break;
      case FD::CPPTYPE_INT32: params[name].set_int64_param(refl->GetInt32(p, f)); break;
      case FD::CPPTYPE_BOOL: params[name].set_bool_param(refl->GetBool(p, f)); break;
      case FD::CPPTYPE_ENUM: {
        std::string word = refl->GetEnum(p, f)->name();
        for (char& c : word) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
        params[name].set_string_param(word);
        break;
      }
      default: ADD_FAILURE() << "unmapped field " << name; break;
    }
  }
  const char* reductions[] = {"mean", "sum", "none"};
  params["reduction"].set_string_param(reductions[r.loss().reduction()]);
  if (r.loss().has_normalizer()) params["normalizer"].set_double_param(r.loss().normalizer());
  if (r.allow_non_finite()) params["allow_non_finite"].set_bool_param(true);
  bool ok = AddKServeInput(out, "logits", r.logits(), typed) && AddKServeInput(out, "targets", r.targets(), typed);
  if (r.has_num_objects()) ok = ok && AddKServeInput(out, "num_objects", r.num_objects(), typed);
  if (r.has_weights()) ok = ok && AddKServeInput(out, "weights", r.weights(), typed);
  if (r.has_scores()) ok = ok && AddKServeInput(out, "scores", r.scores(), typed);
  if (r.has_grad_output_tensor()) ok = ok && AddKServeInput(out, "grad_output", r.grad_output_tensor(), typed);
  if (r.grad_output_case() == v1::ComputeRequest::kGradOutputScalar) {
    v1::Tensor w;  // one FP64 value: [1] for mean and sum, rank 0 for none
    w.set_dtype(v1::FLOAT64);
    if (r.loss().reduction() != v1::NONE) w.add_shape(1);
    const double v = r.grad_output_scalar();
    w.set_data(&v, sizeof v);
    ok = ok && AddKServeInput(out, "grad_output", w, typed);
  }
  if (!ok) return std::nullopt;
  if (!r.compute_gradient()) {
    out.add_outputs()->set_name("loss");
    out.add_outputs()->set_name("count");
    if (r.loss().reduction() == v1::NONE) out.add_outputs()->set_name("losses");
  }
  return out;
}

/// {name: (datatype, shape, bytes)} of a ModelInferResponse, raw or typed.
std::map<std::string, std::tuple<std::string, std::vector<int64_t>, std::string>> KServeOutputs(
    const inference::ModelInferResponse& response) {
  std::map<std::string, std::tuple<std::string, std::vector<int64_t>, std::string>> out;
  for (int i = 0; i < response.outputs_size(); ++i) {
    const auto& o = response.outputs(i);
    std::string bytes;
    if (response.raw_output_contents_size() > 0) {
      bytes = response.raw_output_contents(i);
    } else if (o.datatype() == "FP32") {
      bytes.assign(reinterpret_cast<const char*>(o.contents().fp32_contents().data()), 4u * o.contents().fp32_contents_size());
    } else if (o.datatype() == "FP64") {
      bytes.assign(reinterpret_cast<const char*>(o.contents().fp64_contents().data()), 8u * o.contents().fp64_contents_size());
    } else if (o.datatype() == "INT64") {
      bytes.assign(reinterpret_cast<const char*>(o.contents().int64_contents().data()), 8u * o.contents().int64_contents_size());
    }
    out[o.name()] = {o.datatype(), std::vector<int64_t>(o.shape().begin(), o.shape().end()), bytes};
  }
  return out;
}

void ExpectKServeMatchesCompute(const inference::ModelInferResponse& response, const v1::ComputeResponse& want) {
  const auto got = KServeOutputs(response);
  const double loss = want.loss();
  const int64_t count = want.count();
  ASSERT_TRUE(got.count("loss") && got.count("count"));
  EXPECT_EQ(got.at("loss"), std::make_tuple(std::string("FP64"), std::vector<int64_t>{1},
                                            std::string(reinterpret_cast<const char*>(&loss), sizeof loss)));
  EXPECT_EQ(got.at("count"), std::make_tuple(std::string("INT64"), std::vector<int64_t>{1},
                                             std::string(reinterpret_cast<const char*>(&count), sizeof count)));
  for (const auto& [name, tensor, present] : {std::make_tuple("losses", &want.losses(), want.has_losses()),
                                              std::make_tuple("gradient", &want.gradient(), want.has_gradient())}) {
    ASSERT_EQ(got.count(name) == 1, present) << name;
    if (!present) continue;
    EXPECT_EQ(std::get<0>(got.at(name)), KServeDatatype(tensor->dtype())) << name;
    EXPECT_EQ(std::get<1>(got.at(name)), std::vector<int64_t>(tensor->shape().begin(), tensor->shape().end())) << name;
    EXPECT_TRUE(std::get<2>(got.at(name)) == tensor->data()) << name << " is not bit-identical to focal.v1's";
  }
}

class KServeTest : public FocalServeTest {
 protected:
  void SetUp() override {
    FocalServeTest::SetUp();
    kserve_ = inference::GRPCInferenceService::NewStub(channel_);
  }
  std::unique_ptr<KServeStub> kserve_;
};

TEST_F(KServeTest, ModelInferMatchesComputeForEveryVariantCaseInBothEncodings) {
  const std::vector<NamedRequest> cases = VariantCases();
  int compared[2] = {0, 0};
  for (const NamedRequest& c : cases) {
    v1::ComputeResponse want;
    ASSERT_TRUE(Compute(*stub_, c.request, &want).ok()) << c.name;
    for (const bool typed : {false, true}) {
      SCOPED_TRACE(c.name + (typed ? " typed" : " raw"));
      const std::optional<inference::ModelInferRequest> request = ToModelInfer(c.request, typed);
      if (!request) continue;
      grpc::ClientContext context;
      testing::SetTimeout(context, 10s);
      inference::ModelInferResponse response;
      const grpc::Status status = kserve_->ModelInfer(&context, *request, &response);
      ASSERT_TRUE(status.ok()) << Describe(status);
      EXPECT_EQ(response.model_name(), request->model_name());
      EXPECT_EQ(response.id(), c.request.request_id());
      EXPECT_EQ(response.raw_output_contents_size() > 0, !typed);
      ExpectKServeMatchesCompute(response, want);
      ++compared[typed];
    }
  }
  EXPECT_GE(compared[0], 25);
  EXPECT_GE(compared[1], 10);
}

TEST_F(KServeTest, EveryMetadataCallAsAClientMakesThemAtStartup) {
  auto call = [&](auto method, const auto& request, auto* response) {
    grpc::ClientContext context;
    testing::SetTimeout(context, 5s);
    return ((*kserve_).*method)(&context, request, response);
  };
  inference::ServerLiveResponse live;
  ASSERT_TRUE(call(&KServeStub::ServerLive, inference::ServerLiveRequest(), &live).ok());
  EXPECT_TRUE(live.live());
  inference::ServerReadyResponse ready;
  ASSERT_TRUE(call(&KServeStub::ServerReady, inference::ServerReadyRequest(), &ready).ok());
  EXPECT_TRUE(ready.ready());
  inference::ServerMetadataResponse server;
  ASSERT_TRUE(call(&KServeStub::ServerMetadata, inference::ServerMetadataRequest(), &server).ok());
  EXPECT_EQ(server.name(), "focalserve");
  EXPECT_FALSE(server.version().empty());
  for (int v = 0; v < static_cast<int>(kNumVariants); ++v) {
    const std::string name = VariantNameAt(v);
    SCOPED_TRACE(name);
    inference::ModelReadyRequest ready_request;
    ready_request.set_name(name);
    inference::ModelReadyResponse model_ready;
    ASSERT_TRUE(call(&KServeStub::ModelReady, ready_request, &model_ready).ok());
    EXPECT_TRUE(model_ready.ready());
    inference::ModelMetadataRequest meta_request;
    meta_request.set_name(name);
    meta_request.set_version("1");
    inference::ModelMetadataResponse meta;
    ASSERT_TRUE(call(&KServeStub::ModelMetadata, meta_request, &meta).ok());
    EXPECT_EQ(meta.name(), name);
    EXPECT_EQ(meta.platform(), "focalserve");
    ASSERT_GE(meta.inputs_size(), 2);
    EXPECT_EQ(meta.inputs(0).name(), "logits");
    inference::ModelConfigRequest config_request;
    config_request.set_name(name);
    inference::ModelConfigResponse config;
    ASSERT_TRUE(call(&KServeStub::ModelConfig, config_request, &config).ok());
    EXPECT_EQ(config.config().input_size(), meta.inputs_size());
    EXPECT_EQ(config.config().output_size(), 4);
  }
  inference::ModelReadyRequest no_model;
  no_model.set_name("retina");
  inference::ModelReadyResponse not_ready;
  ASSERT_TRUE(call(&KServeStub::ModelReady, no_model, &not_ready).ok());  // as Triton: OK, not ready
  EXPECT_FALSE(not_ready.ready());
  inference::ModelMetadataRequest unknown;
  unknown.set_name("retina");
  inference::ModelMetadataResponse none;
  const grpc::Status missing = call(&KServeStub::ModelMetadata, unknown, &none);
  EXPECT_EQ(missing.error_code(), grpc::StatusCode::NOT_FOUND) << Describe(missing);
  inference::ModelStatisticsResponse stats;
  ASSERT_TRUE(call(&KServeStub::ModelStatistics, inference::ModelStatisticsRequest(), &stats).ok());
  EXPECT_EQ(stats.model_stats_size(), static_cast<int>(kNumVariants));
}

TEST_F(KServeTest, StreamInferAnswersEveryRequestInOrderAndReportsErrorsInStream) {
  const std::vector<NamedRequest> cases = VariantCases();
  std::vector<inference::ModelInferRequest> requests;
  std::vector<v1::ComputeResponse> wants;
  for (const NamedRequest& c : cases) {
    std::optional<inference::ModelInferRequest> r = ToModelInfer(c.request, false);
    if (!r || requests.size() >= 8) continue;
    v1::ComputeResponse want;
    ASSERT_TRUE(Compute(*stub_, c.request, &want).ok());
    requests.push_back(*r);
    wants.push_back(want);
  }
  inference::ModelInferRequest bad = requests[0];
  (*bad.mutable_parameters())["gamma"].set_double_param(-3);
  requests.insert(requests.begin() + 2, bad);
  grpc::ClientContext context;
  testing::SetTimeout(context, 20s);
  auto stream = kserve_->ModelStreamInfer(&context);
  for (const auto& r : requests) ASSERT_TRUE(stream->Write(r));
  ASSERT_TRUE(stream->WritesDone());
  std::vector<inference::ModelStreamInferResponse> answers;
  inference::ModelStreamInferResponse answer;
  while (stream->Read(&answer)) answers.push_back(answer);
  const grpc::Status status = stream->Finish();
  ASSERT_TRUE(status.ok()) << Describe(status);
  ASSERT_EQ(answers.size(), requests.size());
  for (size_t i = 0, w = 0; i < answers.size(); ++i) {
    EXPECT_EQ(answers[i].infer_response().id(), requests[i].id());
    if (i == 2) {
      EXPECT_NE(answers[i].error_message().find("INVALID_ARGUMENT: message 3 of the stream"), std::string::npos)
          << answers[i].error_message();
      EXPECT_NE(answers[i].error_message().find("gamma is -3"), std::string::npos) << answers[i].error_message();
      continue;
    }
    EXPECT_EQ(answers[i].error_message(), "");
    ExpectKServeMatchesCompute(answers[i].infer_response(), wants[w++]);
  }
}

TEST(KServeServer, MetricsAreLabelledByProtocolAndStreamsDrain) {
  std::string error;
  auto server = Launch({"--backend=cpu", "--drain-grace=0", "--drain-timeout=5"}, &error);
  ASSERT_NE(server, nullptr) << error;
  auto channel = testing::MakeChannel(server->address());
  auto kserve = inference::GRPCInferenceService::NewStub(channel);
  const std::optional<inference::ModelInferRequest> request = ToModelInfer(SmallRequest("m1"), false);
  ASSERT_TRUE(request.has_value());
  for (int i = 0; i < 3; ++i) {
    grpc::ClientContext context;
    inference::ModelInferResponse response;
    ASSERT_TRUE(kserve->ModelInfer(&context, *request, &response).ok());
  }
  v1::ComputeResponse computed;
  const grpc::Status compute_status = Compute(*MakeStub(server->address()), SmallRequest("v1"), &computed);
  const std::optional<testing::HttpResponse> http = testing::HttpGet(server->metrics_address(), "/metrics");
  ASSERT_TRUE(http.has_value());
  const auto samples = testing::ParseMetrics(http->body);
  ASSERT_TRUE(compute_status.ok()) << Describe(compute_status);
  EXPECT_EQ(testing::SumMetric(samples, "focal_requests_total",
                               {{"method", "ModelInfer"}, {"protocol", "kserve.v2"}, {"code", "OK"}}),
            3);
  EXPECT_EQ(testing::SumMetric(samples, "focal_requests_total", {{"protocol", "focal.v1"}}), 1);
  EXPECT_EQ(testing::SumMetric(samples, "focal_requests_total",
                               {{"method", "Compute"}, {"protocol", "focal.v1"}, {"code", "OK"}}),
            1);

  // A stream that answered one request, then the server drains: the stream ends UNAVAILABLE
  // saying so, and the server exits cleanly.
  grpc::ClientContext context;
  testing::SetTimeout(context, 20s);
  auto stream = kserve->ModelStreamInfer(&context);
  ASSERT_TRUE(stream->Write(*request));
  inference::ModelStreamInferResponse answer;
  ASSERT_TRUE(stream->Read(&answer));
  EXPECT_EQ(answer.error_message(), "");
  server->Signal(SIGTERM);
  while (stream->Read(&answer)) {
  }
  const grpc::Status status = stream->Finish();
  EXPECT_EQ(status.error_code(), grpc::StatusCode::UNAVAILABLE) << Describe(status);
  EXPECT_NE(status.error_message().find("all 1 requests it read from this stream were answered"), std::string::npos)
      << Describe(status);
  EXPECT_EQ(server->WaitForExit(10s), std::optional<int>(0)) << server->Stderr();
}

}  // namespace
}  // namespace focal
