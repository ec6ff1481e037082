// The CUDA kernels' own source, run on the host through the device emulation
// (device_emulation.h: every CUDA thread an OS thread, warps and blocks in lockstep at each
// shuffle and barrier), against the CPU backend with the parity cases the real device runs
// (parity_cases.h). This is how the kernels' logic — indexing, tails, the grid-stride loops,
// the team reductions, the per-variant semantics — is checked on machines without a GPU, CI
// included. It cannot check the device compiler, timing or speed: the bundle of
// scripts/gpu-check.sh runs the same cases on a real device.
//
// The emulated "device" has 2 SMs, so grids are small and every grid-stride loop goes round
// several times; sizes are smaller than on the device (each emulated block is 256-512 threads).
#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <vector>

#include "focal/kernel_args.h"
#include "focal/status_macros.h"
#include "focal/validate.h"
#include "kernels/cpu/cpu_backend.h"
#include "kernels/cuda/loss_kernels.h"
#include "tests/cuda/parity_cases.h"

namespace focal::cuda {
namespace {

using namespace parity;  // NOLINT: the shared cases and helpers

constexpr DeviceLimits kEmulatedDevice{2, int64_t{1} << 20};

/// Host memory aligned as the backend's device buffers are (16 bytes and more).
class Aligned {
 public:
  explicit Aligned(size_t bytes) : bytes_(bytes), data_(std::aligned_alloc(256, (bytes + 255) / 256 * 256 + 256)) {}
  ~Aligned() { std::free(data_); }
  Aligned(const Aligned&) = delete;
  Aligned& operator=(const Aligned&) = delete;
  void* get() const { return bytes_ ? data_ : nullptr; }
  template <class T>
  T* as() const {
    return static_cast<T*>(get());
  }

 private:
  size_t bytes_;
  void* data_;
};

std::unique_ptr<Aligned> CopyOf(const void* src, size_t bytes) {
  auto out = std::make_unique<Aligned>(bytes);
  if (bytes) std::memcpy(out->get(), src, bytes);
  return out;
}

/// What CudaBackend::Compute does, with host memory for device memory and the emulated launch:
/// validate, copy the inputs into aligned buffers, poison the outputs, plan, launch, read back.
absl::StatusOr<LossResult> EmulatedCompute(const LossJob& job) {
  ASSIGN_OR_RETURN(const JobPlan plan, ValidateJob(job));
  KernelArgs a;
  const KernelKind kind = MakeKernelArgs(job, plan, a);
  std::vector<float> widened, widened_loss;
  const float* item_weights = ItemWeightsAsFloat32(job, widened);
  const float* loss_weights = LossWeightsAsFloat32(job, widened_loss);
  const bool none = job.spec.reduction == Reduction::kNone;
  const size_t out_size = DTypeSize(plan.output_dtype);
  const auto logits = CopyOf(job.logits.data, job.logits.size_bytes);
  const auto targets = CopyOf(job.targets.data, job.targets.size_bytes);
  const auto row_alpha = CopyOf(plan.row_alpha.data(), plan.row_alpha.size() * sizeof(float));
  // The per-class α the kernels read, as CudaBackend copies it: the request's, or class_counts'
  // class-balanced one (plan.class_alpha), C values.
  const size_t class_alpha_bytes = a.class_alpha ? static_cast<size_t>(plan.classes) * sizeof(double) : 0;
  const auto class_alpha = CopyOf(a.class_alpha, class_alpha_bytes);
  const auto weights = CopyOf(item_weights, item_weights ? static_cast<size_t>(plan.num_items) * 4 : 0);
  const auto loss_weights_copy = CopyOf(loss_weights, loss_weights ? static_cast<size_t>(plan.num_items) * 4 : 0);
  const auto scores = CopyOf(a.scores, a.scores ? job.scores->size_bytes : 0);
  const size_t gradient_bytes = job.compute_gradient ? static_cast<size_t>(plan.num_elements) * out_size : 0;
  const size_t losses_bytes = none ? static_cast<size_t>(plan.num_items) * out_size : 0;
  Aligned gradient(gradient_bytes), losses(losses_bytes), scalars(sizeof(JobScalars));
  a.logits = logits->get();
  a.targets = targets->get();
  a.row_alpha = row_alpha->as<float>();
  a.class_alpha = class_alpha->as<double>();
  a.item_weights = weights->as<float>();
  a.loss_weights = loss_weights_copy->as<float>();
  a.scores = scores->get();
  a.gradient = gradient.get();
  a.losses = losses.get();
  const LaunchPlan launch = PlanLaunch(kind, a, kEmulatedDevice);
  Aligned partials(static_cast<size_t>(launch.blocks) * sizeof(double));
  const bool empty = launch.shape == LaunchPlan::Shape::kEmpty;
  if (gradient_bytes) std::memset(gradient.get(), empty ? 0 : 0xFF, gradient_bytes);  // poison, as on the device
  if (losses_bytes) std::memset(losses.get(), empty ? 0 : 0xFF, losses_bytes);
  if (LaunchLoss(kind, a, launch, partials.as<double>(), scalars.as<JobScalars>(), nullptr) != cudaSuccess) {
    return absl::InternalError("LaunchLoss refused the job");
  }
  const JobScalars reported = *scalars.as<JobScalars>();
  if (reported.flags != 0) RETURN_IF_ERROR(FindInvalidValue(job));
  LossResult result;
  result.backend = "emulated";
  result.count = plan.count;
  result.loss = ReducedLoss(job, plan, reported.loss_sum);
  if (none) {
    result.losses = OwnedTensor::Allocate(plan.output_dtype, plan.item_shape, plan.num_items);
    if (losses_bytes > 0) std::memcpy(result.losses->data(), losses.get(), losses_bytes);  // memcpy(_, null, 0) is UB
  }
  if (job.compute_gradient) {
    result.gradient = OwnedTensor::Allocate(plan.output_dtype, job.logits.shape, plan.num_elements);
    if (gradient_bytes > 0) std::memcpy(result.gradient->data(), gradient.get(), gradient_bytes);
  }
  return result;
}

void CompareAll(const std::vector<Case>& cases) {
  for (const Case& k : cases) CompareCase(EmulatedCompute, k, "emulated");
}

TEST(EmulatedKernels, SoftmaxFocalRows) { CompareAll(SoftmaxRowCases(1500)); }
TEST(EmulatedKernels, SoftmaxFocalStrided) { CompareAll(SoftmaxStridedCases()); }
TEST(EmulatedKernels, SoftmaxFocalLargeClasses) { CompareAll(SoftmaxLargeClassCases()); }
TEST(EmulatedKernels, SoftmaxFocalOptions) { CompareAll(SoftmaxOptionCases(1500)); }
TEST(EmulatedKernels, GammaScheduleRowsStayOffThresholds) {
  // The device test's sizes too: its cases are the same generator's.
  for (int64_t budget : {1500, 200000}) CheckScheduleRowsStayOffThresholds(SoftmaxOptionCases(budget));
}
TEST(EmulatedKernels, SigmoidFocalFloatTargets) { CompareAll(SigmoidFloatTargetCases()); }
TEST(EmulatedKernels, SigmoidFocalIndexTargets) { CompareAll(SigmoidIndexTargetCases()); }
TEST(EmulatedKernels, SigmoidFocalPolyOne) { CompareAll(SigmoidPolyCases()); }
TEST(EmulatedKernels, RejectedOptionCombinations) { CheckRejectedOptionCombinations(EmulatedCompute, "emulated"); }
TEST(EmulatedKernels, DynamicFocal) { CompareAll(DynamicFocalCases()); }
TEST(EmulatedKernels, FocalCosine) { CompareAll(FocalCosineCases(3000)); }
TEST(EmulatedKernels, Asymmetric) { CompareAll(AsymmetricCases()); }
TEST(EmulatedKernels, QualityFocal) { CompareAll(QualityFocalCases()); }
TEST(EmulatedKernels, Varifocal) { CompareAll(VarifocalCases()); }
TEST(EmulatedKernels, FocalStar) { CompareAll(FocalStarCases()); }
TEST(EmulatedKernels, DistributionFocal) { CompareAll(DistributionFocalCases()); }
TEST(EmulatedKernels, DistributionFocalEdges) { CheckDistributionFocalEdges(EmulatedCompute, "emulated"); }
TEST(EmulatedKernels, LossWeightsOnEveryVariant) { CompareAll(LossWeightCases()); }
TEST(EmulatedKernels, EmptyInputs) { CompareAll(EmptyCases()); }
TEST(EmulatedKernels, NonFiniteInputs) { CheckNonFiniteInputs(EmulatedCompute, "emulated"); }
TEST(EmulatedKernels, IgnoredRowsContributeZeroWhateverTheirLogits) { CheckIgnoredRows(EmulatedCompute, "emulated"); }
TEST(EmulatedKernels, MinusInfinityLogitsAreMaskedClasses) { CheckMaskedClasses(EmulatedCompute, "emulated"); }
TEST(EmulatedKernels, BadTargetsAreRejectedLikeTheCpu) { CheckBadTargets(EmulatedCompute, "emulated"); }

// Long rows against a long-double reference, for both backends: the GPU's per-thread runs and
// tree merges, and the CPU's blocked float64 row sums, keep the loss within 5e-7 relative and
// the gradient within 5e-7 of its largest element even at C = 262143 with label smoothing (where
// W = Σ_c q_c α_c g(p_c) adds every class). Prints the figures (tests/bench/RESULTS.md).
TEST(EmulatedKernels, LongRowsAgainstALongDoubleReference) {
  for (int64_t C : {1000, 131072, 262143}) {
    for (double eps : {0.0, 0.1}) {
      const int64_t N = 3;
      const std::vector<double> x = RandomNormal(static_cast<size_t>(N * C), 6, 7);
      const std::vector<double> y = RandomClasses(static_cast<size_t>(N), C, 8);
      const HostTensor logits = MakeTensor(DType::kFloat32, {N, C}, x);
      const HostTensor targets = MakeTensor(DType::kInt64, {N}, y);
      SoftmaxFocalParams p;
      p.label_smoothing = eps;
      const LossJob job = GradientJob(p, Reduction::kSum, logits, targets);
      const auto cpu = CpuBackend().Compute(job);
      const auto emulated = EmulatedCompute(job);
      ASSERT_TRUE(cpu.ok() && emulated.ok());
      long double loss = 0;
      double scale = 0, cpu_error = 0, emulated_error = 0;
      for (int64_t n = 0; n < N; ++n) {
        const double* row = x.data() + n * C;
        long double max = -INFINITY, sum = 0, W = 0;
        for (int64_t c = 0; c < C; ++c) max = std::max<long double>(max, row[c]);
        for (int64_t c = 0; c < C; ++c) sum += std::exp(row[c] - max);
        std::vector<long double> u(C), g(C), q(C);
        for (int64_t c = 0; c < C; ++c) {  // VARIANTS.md §1 with γ = 2, written plainly
          u[c] = row[c] - max - std::log(sum);
          const long double p_c = std::exp(u[c]), one_minus_p = -std::expm1(u[c]);
          const long double r = one_minus_p == 0 ? -1 : u[c] / one_minus_p;
          g[c] = one_minus_p * one_minus_p * (1 - 2 * p_c * r);
          q[c] = eps / C + (c == static_cast<int64_t>(y[n]) ? 1 - eps : 0);
          W += q[c] * g[c];
          loss += q[c] * -(one_minus_p * one_minus_p * u[c]);
        }
        for (int64_t c = 0; c < C; ++c) {
          const long double ref = std::exp(u[c]) * W - q[c] * g[c];
          scale = std::max(scale, static_cast<double>(std::fabs(ref)));
          const size_t i = static_cast<size_t>(n * C + c);
          cpu_error = std::max(cpu_error, static_cast<double>(std::fabs(static_cast<const float*>(cpu->gradient->data())[i] - ref)));
          emulated_error = std::max(emulated_error, static_cast<double>(std::fabs(static_cast<const float*>(emulated->gradient->data())[i] - ref)));
        }
      }
      const double cpu_loss = static_cast<double>((cpu->loss - loss) / loss);
      const double emulated_loss = static_cast<double>((emulated->loss - loss) / loss);
      std::printf("long rows C %lld eps %.1f: loss rel error cpu %.2e cuda-kernels %.2e | gradient error / max cpu %.2e cuda-kernels %.2e\n",
                  static_cast<long long>(C), eps, cpu_loss, emulated_loss, cpu_error / scale, emulated_error / scale);
      EXPECT_LT(std::fabs(cpu_loss), 5e-7);
      EXPECT_LT(std::fabs(emulated_loss), 5e-7);
      EXPECT_LT(cpu_error, 5e-7 * scale);
      EXPECT_LT(emulated_error, 5e-7 * scale);
    }
  }
}

}  // namespace
}  // namespace focal::cuda
