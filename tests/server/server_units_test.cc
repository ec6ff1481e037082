// The server's pure pieces: flags, the codec, exact sums, the work queue, the metrics a batch sets.
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <cmath>
#include <random>
#include <new>
#include <stdexcept>
#include <thread>

#include "server/codec.h"
#include "server/exact_sum.h"
#include "server/metrics.h"
#include "server/options.h"
#include "server/service.h"
#include "server/wire.h"
#include "server/work_queue.h"

namespace focal::server {
namespace {

absl::StatusOr<ServerOptions> Parse(std::vector<const char*> args) {
  args.insert(args.begin(), "focalserve");
  return ParseFlags(static_cast<int>(args.size()), args.data());
}

TEST(Options, DefaultsAndBothFlagForms) {
  const auto defaults = Parse({});
  ASSERT_TRUE(defaults.ok());
  EXPECT_EQ(defaults->listen, "127.0.0.1:50051");
  EXPECT_EQ(defaults->backend, BackendChoice::kAuto);
  EXPECT_EQ(defaults->max_message_bytes, int64_t{1} << 30);
  EXPECT_EQ(defaults->metrics_listen, "127.0.0.1:9464");
  const auto set = Parse({"--listen=0.0.0.0:0", "--backend", "cpu", "--max-concurrent=2", "--devices", "0,2",
                          "--metrics-listen=", "--max-connection-age", "600"});
  ASSERT_TRUE(set.ok()) << set.status();
  EXPECT_EQ(set->listen, "0.0.0.0:0");
  EXPECT_EQ(set->backend, BackendChoice::kCpu);
  EXPECT_EQ(set->max_concurrent, 2);
  EXPECT_EQ(set->devices, (std::vector<int>{0, 2}));
  EXPECT_EQ(set->metrics_listen, "");
  EXPECT_EQ(set->keepalive.max_connection_age_seconds, 600);
}

TEST(Options, ErrorsNameTheFlag) {
  EXPECT_NE(Parse({"--backend=tpu"}).status().message().find("--backend=tpu is not valid"), std::string::npos);
  EXPECT_NE(Parse({"--max-concurrent=0"}).status().message().find("--max-concurrent"), std::string::npos);
  EXPECT_NE(Parse({"--frobnicate=1"}).status().message().find("unknown flag --frobnicate"), std::string::npos);
  EXPECT_NE(Parse({"--tls-cert=a.pem"}).status().message().find("--tls-cert and --tls-key go together"), std::string::npos);
  EXPECT_NE(Parse({"--listen"}).status().message().find("--listen needs a value"), std::string::npos);
  const auto help = Parse({"--help"});
  EXPECT_EQ(help.status().code(), absl::StatusCode::kCancelled);
  EXPECT_NE(help.status().message().find("--max-queue"), std::string::npos);
}

v1::ComputeRequest SoftmaxRequest() {
  v1::ComputeRequest r;
  r.set_request_id("r");
  r.mutable_loss()->mutable_softmax_focal()->set_gamma(0.5);
  r.mutable_loss()->mutable_softmax_focal()->add_alpha_f64(1);
  r.mutable_loss()->mutable_softmax_focal()->add_alpha_f64(2);
  r.mutable_loss()->set_reduction(v1::NONE);
  const float x[4] = {1, 2, 3, 4};
  const int64_t y[2] = {0, 1};
  r.mutable_logits()->set_dtype(v1::FLOAT32);
  r.mutable_logits()->add_shape(2);
  r.mutable_logits()->add_shape(2);
  r.mutable_logits()->set_data(x, sizeof x);
  r.mutable_targets()->set_dtype(v1::INT64);
  r.mutable_targets()->add_shape(2);
  r.mutable_targets()->set_data(y, sizeof y);
  r.set_compute_gradient(true);
  r.set_grad_output_scalar(0.5);
  r.set_gradient_dtype(v1::FLOAT32);
  return r;
}

TEST(Codec, DecodesInPlaceWithDefaultsForAbsentParameters) {
  const v1::ComputeRequest r = SoftmaxRequest();
  const auto job = DecodeComputeRequest(r, {});
  ASSERT_TRUE(job.ok()) << job.status();
  const auto& p = std::get<SoftmaxFocalParams>(job->spec.params);
  EXPECT_EQ(p.gamma, 0.5);
  EXPECT_EQ(p.alpha, (std::vector<double>{1, 2}));
  EXPECT_FALSE(p.ignore_index.has_value());
  EXPECT_EQ(p.label_smoothing, 0.0);  // absent: the default, not a wire zero
  EXPECT_EQ(job->spec.reduction, Reduction::kNone);
  EXPECT_EQ(job->logits.data, r.logits().data().data());  // a view, not a copy
  EXPECT_EQ(job->logits.shape, (Shape{2, 2}));
  EXPECT_EQ(std::get<double>(job->grad_output), 0.5);
  EXPECT_EQ(job->output_dtype, DType::kFloat32);

  v1::ComputeRequest sigmoid;
  sigmoid.mutable_loss()->mutable_sigmoid_focal();
  *sigmoid.mutable_logits() = r.logits();
  *sigmoid.mutable_targets() = r.logits();
  const auto defaults = DecodeComputeRequest(sigmoid, {});
  ASSERT_TRUE(defaults.ok());
  const auto& s = std::get<SigmoidFocalParams>(defaults->spec.params);
  EXPECT_EQ(s.gamma, 2.0);
  EXPECT_EQ(s.alpha, 0.25);
  EXPECT_EQ(defaults->spec.reduction, Reduction::kMean);
  sigmoid.mutable_loss()->mutable_sigmoid_focal()->set_alpha(0);  // present zero stays zero
  EXPECT_EQ(std::get<SigmoidFocalParams>(DecodeComputeRequest(sigmoid, {})->spec.params).alpha, 0.0);
}

TEST(Codec, WireErrorsNameTheField) {
  auto expect = [](v1::ComputeRequest r, absl::StatusCode code, const std::string& fragment,
                   RequestLimits limits = {}) {
    const auto job = DecodeComputeRequest(r, limits);
    EXPECT_EQ(job.status().code(), code) << job.status();
    EXPECT_NE(job.status().message().find(fragment), std::string::npos) << job.status();
  };
  v1::ComputeRequest r = SoftmaxRequest();
  r.clear_loss();
  expect(r, absl::StatusCode::kInvalidArgument, "loss is missing");
  r = SoftmaxRequest();
  r.mutable_loss()->clear_softmax_focal();
  expect(r, absl::StatusCode::kInvalidArgument, "loss.variant is not set");
  r = SoftmaxRequest();
  r.mutable_loss()->set_reduction(static_cast<v1::Reduction>(9));
  expect(r, absl::StatusCode::kInvalidArgument, "loss.reduction is 9");
  r = SoftmaxRequest();
  r.clear_logits();
  expect(r, absl::StatusCode::kInvalidArgument, "logits is missing");
  r = SoftmaxRequest();
  r.mutable_targets()->set_dtype(v1::DATA_TYPE_UNSPECIFIED);
  expect(r, absl::StatusCode::kInvalidArgument, "targets.dtype is not set");
  r = SoftmaxRequest();
  r.mutable_logits()->set_dtype(static_cast<v1::DataType>(42));
  expect(r, absl::StatusCode::kInvalidArgument, "logits.dtype is 42");
  r = SoftmaxRequest();
  r.set_gradient_dtype(static_cast<v1::DataType>(99));
  expect(r, absl::StatusCode::kInvalidArgument, "gradient_dtype is 99");
  expect(SoftmaxRequest(), absl::StatusCode::kResourceExhausted, "at most 3 per request (--max-elements)",
         RequestLimits{3});
}

TEST(Codec, EncodesEveryField) {
  LossResult result;
  result.loss = 1.5;
  result.count = 7;
  result.backend = "cpu";
  result.compute_micros = 12;
  result.gradient = OwnedTensor::Allocate(DType::kFloat16, {1, 2}, 2);
  const uint16_t g[2] = {0x3c00, 0xc000};
  std::memcpy(result.gradient->data(), g, sizeof g);
  v1::ComputeResponse response;
  ASSERT_TRUE(EncodeComputeResponse(std::move(result), "abc", 34, &response).ok());
  EXPECT_EQ(response.request_id(), "abc");
  EXPECT_EQ(response.loss(), 1.5);
  EXPECT_EQ(response.count(), 7);
  EXPECT_EQ(response.backend(), "cpu");
  EXPECT_FALSE(response.has_losses());
  EXPECT_EQ(response.gradient().dtype(), v1::FLOAT16);
  EXPECT_EQ(response.gradient().shape_size(), 2);
  EXPECT_EQ(response.gradient().data(), std::string(reinterpret_cast<const char*>(g), sizeof g));
  EXPECT_EQ(response.timing().queue_micros(), 34);
  EXPECT_EQ(response.timing().compute_micros(), 12);
}

TEST(ExactSum, IsCorrectlyRoundedAndOrderIndependent) {
  ExactSum s;
  for (double v : {1e100, 1.0, -1e100, 1e-100}) s.Add(v);
  EXPECT_EQ(s.Value(), 1.0 + 1e-100);  // naive summation gives 1e-100
  std::mt19937 rng(3);
  std::uniform_real_distribution<double> mag(-30, 30);
  std::vector<double> values(5000);
  for (double& v : values) v = std::ldexp(1.0 + mag(rng) / 64, static_cast<int>(mag(rng))) * (rng() % 2 ? 1 : -1);
  ExactSum forward, backward, halves_a, halves_b;
  for (double v : values) forward.Add(v);
  for (auto it = values.rbegin(); it != values.rend(); ++it) backward.Add(*it);
  for (size_t i = 0; i < values.size(); ++i) (i < 1234 ? halves_a : halves_b).Add(values[i]);
  halves_a.Merge(halves_b);
  EXPECT_EQ(forward.Value(), backward.Value());
  EXPECT_EQ(forward.Value(), halves_a.Value());
  long double reference = 0;  // long double is not exact either, but agrees to ~1e-19
  for (double v : values) reference += v;
  EXPECT_NEAR(forward.Value(), static_cast<double>(reference), 1e-9 * std::fabs(static_cast<double>(reference)) + 1e-12);
}

TEST(ExactSum, InfiniteTermsPropagateAsInPlainAddition) {
  ExactSum inf, nan, both;
  for (double v : {1.0, HUGE_VAL, 2.5}) inf.Add(v);
  EXPECT_EQ(inf.Value(), HUGE_VAL);  // not NaN from inf - inf inside the partials
  for (double v : {HUGE_VAL, -HUGE_VAL, 3.0}) nan.Add(v);
  EXPECT_TRUE(std::isnan(nan.Value()));
  both.Merge(inf);
  both.Add(-1e308);
  EXPECT_EQ(both.Value(), HUGE_VAL);
}

TEST(ExactFloat32Sum, EqualsExactSumForAnyFloat32Values) {
  std::mt19937 rng(5);
  std::uniform_real_distribution<float> mag(-140, 100);
  std::vector<float> values(20000);
  for (float& v : values) v = std::ldexp(1.0f + mag(rng) / 256, static_cast<int>(mag(rng))) * (rng() % 2 ? 1.f : -1.f);
  values[7] = 1e-45f;  // the smallest subnormal
  values[8] = -3e-39f;
  ExactFloat32Sum buckets, reversed;
  ExactSum reference;
  for (float v : values) {
    buckets.Add(v);
    reference.Add(v);
  }
  for (auto it = values.rbegin(); it != values.rend(); ++it) reversed.Add(*it);
  EXPECT_EQ(buckets.Value(), reference.Value());
  EXPECT_EQ(reversed.Value(), reference.Value());
  ExactSum merged;
  buckets.AddTo(merged);
  EXPECT_EQ(merged.Value(), reference.Value());
  // The largest floats and many adds into one bucket: its integer must not overflow, and a
  // spill in between changes nothing.
  ExactFloat32Sum large, spilled;
  ExactSum large_reference;
  for (int i = 0; i < 100000; ++i) {
    const float v = i % 2 ? 3.4028235e38f : 3.0e38f;
    large.Add(v);
    spilled.Add(v);
    large_reference.Add(v);
    if (i == 4321) spilled.Spill();
  }
  EXPECT_EQ(large.Value(), large_reference.Value());
  EXPECT_EQ(spilled.Value(), large_reference.Value());
  ExactFloat32Sum with_nan;
  with_nan.Add(1.0f);
  with_nan.Add(std::nanf(""));
  EXPECT_TRUE(std::isnan(with_nan.Value()));
}

TEST(BatchSums, SpillsMidBatchAndNonFiniteTermsReachTheTotalsOnlyAtFlush) {
  std::mt19937 rng(9);
  std::uniform_real_distribution<float> unit(-1, 1);
  std::vector<ExactSum> totals(5), reference(5);
  BatchSums sums(totals, 5);
  for (int i = 0; i < 3000; ++i) {
    const size_t k = static_cast<size_t>(i) % 5;
    const float v = std::ldexp(unit(rng), i % 60 - 30);
    if (i == 1000) sums.Reserve(ExactFloat32Sum::kAddsPerSpill);  // the next add spills first
    sums.Add(k, v);
    reference[k].Add(v);
  }
  sums.Add(3, HUGE_VALF);
  reference[3].Add(HUGE_VALF);
  for (const ExactSum& t : totals) EXPECT_EQ(t.Value(), 0.0);  // nothing before the flush
  sums.Flush();
  for (size_t k = 0; k < 5; ++k) EXPECT_EQ(totals[k].Value(), reference[k].Value()) << k;
}

TEST(WorkQueue, RunsTasksAndRefusesBeyondItsBound) {
  // Declared before the queue, whose destructor runs the last task: they must outlive it.
  std::atomic<bool> release{false};
  std::atomic<int> started{0}, done{0};
  WorkQueue queue(1, 1);
  auto blocker = [&] {
    ++started;
    while (!release) std::this_thread::sleep_for(std::chrono::milliseconds(1));
    ++done;
  };
  EXPECT_TRUE(queue.TrySubmit(blocker));  // runs
  for (int i = 0; i < 2000 && started != 1; ++i) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  EXPECT_TRUE(queue.TrySubmit(blocker));   // waits
  EXPECT_FALSE(queue.TrySubmit(blocker));  // beyond 1 running + 1 waiting
  release = true;
  for (int i = 0; i < 2000 && done != 2; ++i) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  EXPECT_EQ(done, 2);
  EXPECT_TRUE(queue.TrySubmit([&] { ++done; }));
}

TEST(WorkQueue, ATaskThatThrowsDoesNotTakeTheWorkerOrTheProcessDown) {
  std::atomic<int> done{0};
  WorkQueue queue(1, 4);
  EXPECT_TRUE(queue.TrySubmit([] { throw std::bad_alloc(); }));
  (void)queue.TryRunInline([] { throw std::runtime_error("inline"); });  // runs here when the worker is free
  EXPECT_TRUE(queue.TrySubmit([&] { ++done; }));
  for (int i = 0; i < 2000 && done != 1; ++i) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  EXPECT_EQ(done, 1);
}

/// Answers every job with an empty result, or `error` when set, and reports `device_bytes`.
class FakeDeviceBackend final : public Backend {
 public:
  absl::StatusOr<LossResult> Compute(const LossJob&) const override {
    if (!error.ok()) return error;
    LossResult result;
    result.backend = Name();
    return result;
  }
  std::string Name() const override { return "fake:0"; }
  int64_t DeviceMemoryBytes() const override { return device_bytes.load(); }
  std::atomic<int64_t> device_bytes{0};
  absl::Status error;
};

/// The value of the unlabelled series `name` in a text exposition; NaN when absent.
double SeriesValue(const std::string& exposition, const std::string& name) {
  const std::string prefix = "\n" + name + " ";
  const size_t at = ("\n" + exposition).find(prefix);
  if (at == std::string::npos) return std::nan("");
  return std::stod(exposition.substr(at + prefix.size() - 1));
}

TEST(Metrics, DeviceMemoryGaugeIsWhatTheBackendReportsAfterEachBatch) {
  auto metrics = Metrics::Start("");
  ASSERT_TRUE(metrics.ok()) << metrics.status();
  FakeDeviceBackend backend;
  ServiceConfig config;
  config.backend = &backend;
  config.metrics = metrics->get();
  const FocalLossServiceImpl service(config);
  EXPECT_EQ(SeriesValue((*metrics)->Exposition(), "focal_device_memory_bytes"), 0);

  auto run_batch = [&] {
    grpc::ByteBuffer bytes;
    EXPECT_TRUE(SerializeMessage(SoftmaxRequest(), int64_t{1} << 20, &bytes).ok());
    const CallState call(std::chrono::system_clock::now() + std::chrono::minutes(1));
    v1::ComputeRequest request;
    return service.RunBatch(call, bytes, "", request, FocalLossServiceImpl::Clock::now());
  };
  backend.device_bytes = int64_t{3} << 30;
  EXPECT_TRUE(run_batch().status.ok());
  EXPECT_EQ(SeriesValue((*metrics)->Exposition(), "focal_device_memory_bytes"), 3.0 * (1 << 30));
  // A failed batch may have grown the pool too (an allocation that fit before a later one failed).
  backend.device_bytes = 12345;
  backend.error = absl::ResourceExhaustedError("out of device memory");
  EXPECT_EQ(run_batch().status.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(SeriesValue((*metrics)->Exposition(), "focal_device_memory_bytes"), 12345);
}

}  // namespace
}  // namespace focal::server
