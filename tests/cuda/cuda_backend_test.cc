// The CUDA backend against the CPU backend, the reference, on a real device: the shared parity
// cases of parity_cases.h (tolerances and their reasons there), with output buffers poisoned
// (0xFF: NaN in every float dtype) before each run so an element a kernel does not write fails
// the comparison, and every case run twice for bit-identical repeats; then concurrency and device
// out-of-memory. Skips, with the reason, where no CUDA device answers.
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "kernels/cpu/cpu_backend.h"
#include "kernels/cuda/cuda_backend.h"
#include "kernels/cuda/cuda_devices.h"
#include "tests/cuda/parity_cases.h"

namespace focal::cuda {
namespace {

using namespace parity;  // NOLINT: the shared cases and helpers

class CudaBackendTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    const DeviceQuery query = QueryDevices();
    if (query.devices.empty()) {
      skip_reason_ = new std::string("no CUDA device answered (" + query.reason_if_none + ")");
      return;
    }
    CudaBackendOptions options;
    options.poison_outputs = true;
    options.staging_bytes = 1 << 20;  // several chunks per tensor: exercises the staging pipeline
    auto backend = CudaBackend::Create(options);
    if (!backend.ok()) {
      skip_reason_ = new std::string("CudaBackend::Create failed: " + std::string(backend.status().message()));
      failed_ = true;
      return;
    }
    backend_ = backend->release();
  }
  static void TearDownTestSuite() {
    delete backend_;
    backend_ = nullptr;
  }
  void SetUp() override {
    ASSERT_FALSE(failed_) << *skip_reason_;
    if (!backend_) GTEST_SKIP() << *skip_reason_;
  }

  static DeviceCompute Device() {
    return [](const LossJob& job) { return backend_->Compute(job); };
  }
  static void CompareAll(const std::vector<Case>& cases) {
    for (const Case& k : cases) CompareCase(Device(), k, "cuda:");
  }
  static void Compare(const Case& k) { CompareCase(Device(), k, "cuda:"); }

  static inline CudaBackend* backend_ = nullptr;
  static inline std::string* skip_reason_ = nullptr;
  static inline bool failed_ = false;
};

TEST_F(CudaBackendTest, SoftmaxFocalRows) { CompareAll(SoftmaxRowCases(200000)); }
TEST_F(CudaBackendTest, SoftmaxFocalStrided) { CompareAll(SoftmaxStridedCases()); }
TEST_F(CudaBackendTest, SoftmaxFocalLargeClasses) { CompareAll(SoftmaxLargeClassCases()); }
TEST_F(CudaBackendTest, SoftmaxFocalOptions) { CompareAll(SoftmaxOptionCases(200000)); }
TEST_F(CudaBackendTest, SigmoidFocalFloatTargets) { CompareAll(SigmoidFloatTargetCases()); }
TEST_F(CudaBackendTest, SigmoidFocalIndexTargets) { CompareAll(SigmoidIndexTargetCases()); }
TEST_F(CudaBackendTest, SigmoidFocalPolyOne) { CompareAll(SigmoidPolyCases()); }
TEST_F(CudaBackendTest, RejectedOptionCombinations) { CheckRejectedOptionCombinations(Device(), "cuda:"); }
TEST_F(CudaBackendTest, DynamicFocal) { CompareAll(DynamicFocalCases()); }
TEST_F(CudaBackendTest, FocalCosine) { CompareAll(FocalCosineCases(100000)); }
TEST_F(CudaBackendTest, Asymmetric) { CompareAll(AsymmetricCases()); }
TEST_F(CudaBackendTest, QualityFocal) { CompareAll(QualityFocalCases()); }
TEST_F(CudaBackendTest, Varifocal) { CompareAll(VarifocalCases()); }
TEST_F(CudaBackendTest, FocalStar) { CompareAll(FocalStarCases()); }
TEST_F(CudaBackendTest, DistributionFocal) { CompareAll(DistributionFocalCases()); }
TEST_F(CudaBackendTest, DistributionFocalEdges) { CheckDistributionFocalEdges(Device(), "cuda:"); }
TEST_F(CudaBackendTest, LossWeightsOnEveryVariant) { CompareAll(LossWeightCases()); }
TEST_F(CudaBackendTest, EmptyInputs) { CompareAll(EmptyCases()); }
TEST_F(CudaBackendTest, NonFiniteInputs) { CheckNonFiniteInputs(Device(), "cuda:"); }
TEST_F(CudaBackendTest, IgnoredRowsContributeZeroWhateverTheirLogits) { CheckIgnoredRows(Device(), "cuda:"); }
TEST_F(CudaBackendTest, MinusInfinityLogitsAreMaskedClasses) { CheckMaskedClasses(Device(), "cuda:"); }
TEST_F(CudaBackendTest, BadTargetsAreRejectedLikeTheCpu) {
  CheckBadTargets(Device(), "cuda:");
  // The backend keeps serving after errors.
  Case ok = MakeCase("after errors", SoftmaxFocalParams{}, {64, 80});
  Vary(ok, 0);
  Compare(ok);
}

TEST_F(CudaBackendTest, ConcurrentRequestsMatchSequentialOnes) {
  std::vector<Case> cases;
  for (int i = 0; i < 16; ++i) {
    Case k = MakeCase("concurrent", SoftmaxFocalParams{}, {500 + i, 80});
    if (i % 2) k.params = SigmoidFocalParams{}, k.targets = Targets::kHard, k.targets_dtype = DType::kFloat32;
    Vary(k, i);
    cases.push_back(k);
  }
  std::vector<std::unique_ptr<Inputs>> inputs;
  std::vector<std::string> expected;
  for (size_t i = 0; i < cases.size(); ++i) {
    inputs.push_back(Build(cases[i], static_cast<uint32_t>(i)));
    const auto r = backend_->Compute(inputs.back()->job);
    ASSERT_TRUE(r.ok()) << r.status();
    expected.push_back(r->gradient ? r->gradient->bytes : std::string(reinterpret_cast<const char*>(&r->loss), 8));
  }
  std::vector<std::string> got(cases.size());
  std::vector<std::thread> threads;
  for (size_t i = 0; i < cases.size(); ++i) {
    threads.emplace_back([&, i] {
      const auto r = backend_->Compute(inputs[i]->job);
      if (r.ok()) got[i] = r->gradient ? r->gradient->bytes : std::string(reinterpret_cast<const char*>(&r->loss), 8);
    });
  }
  for (auto& t : threads) t.join();
  for (size_t i = 0; i < cases.size(); ++i) EXPECT_EQ(got[i], expected[i]) << cases[i].name;
}

TEST_F(CudaBackendTest, DeviceOutOfMemoryIsResourceExhaustedAndTheBackendRecovers) {
  size_t free_bytes = 0, total_bytes = 0;
  ASSERT_EQ(cudaSetDevice(0), cudaSuccess);
  ASSERT_EQ(cudaMemGetInfo(&free_bytes, &total_bytes), cudaSuccess);
  // Occupy all but 64 MiB of the device, then ask for a 256 MiB job.
  void* hog = nullptr;
  const size_t keep = size_t{64} << 20;
  ASSERT_GT(free_bytes, keep + (size_t{1} << 28));
  size_t hog_bytes = free_bytes - keep;
  while (cudaMalloc(&hog, hog_bytes) != cudaSuccess && hog_bytes > keep) {
    cudaGetLastError();
    hog_bytes -= size_t{256} << 20;
  }
  ASSERT_NE(hog, nullptr);
  Case big = MakeCase("oom", SigmoidFocalParams{}, {int64_t{1} << 26}, DType::kFloat32, Targets::kHard, DType::kFloat32);
  big.reduction = Reduction::kSum;
  auto in = Build(big, 9);
  const auto r = backend_->Compute(in->job);
  ASSERT_EQ(cudaFree(hog), cudaSuccess);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), absl::StatusCode::kResourceExhausted) << r.status();
  EXPECT_TRUE(backend_->Healthy());
  Case after = MakeCase("after oom", SoftmaxFocalParams{}, {128, 80});
  Vary(after, 1);
  Compare(after);
}

TEST_F(CudaBackendTest, DeviceMemoryBytesCountsWhatThePoolKeeps) {
  Case k = MakeCase("memory", SigmoidFocalParams{}, {int64_t{1} << 22}, DType::kFloat32, Targets::kHard, DType::kFloat32);
  auto in = Build(k, 3);
  const auto r = backend_->Compute(in->job);
  ASSERT_TRUE(r.ok()) << r.status();
  // Freed memory stays in the pool for the next job: at least this one's logits and targets.
  EXPECT_GE(backend_->DeviceMemoryBytes(), int64_t{2} * 4 << 22);
}

TEST(CudaBackendCreate, UnknownDevicesFailLoudly) {
  const DeviceQuery query = QueryDevices();
  CudaBackendOptions options;
  options.devices = {1000};
  const auto backend = CudaBackend::Create(options);
  ASSERT_FALSE(backend.ok());
  EXPECT_EQ(backend.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_FALSE(backend.status().message().empty());
  if (query.devices.empty()) GTEST_SKIP() << "checked the no-device message only: no CUDA device answered";
}

}  // namespace
}  // namespace focal::cuda
