#include "kernels/cpu/cpu_backend.h"

#include <omp.h>

#include <algorithm>
#include <cstring>
#include <chrono>
#include <cstdlib>
#include <vector>

#include "absl/strings/str_cat.h"
#include "focal/status_macros.h"
#include "focal/validate.h"
#include "kernels/cpu/cpu_kernels.h"

namespace focal {
namespace {

/// Work per chunk, in logits elements. Chunks are fixed by the job, never by the thread
/// count, and their sums are added in chunk order: that is what makes results bit-identical
/// for any OMP_NUM_THREADS. 16K elements keep per-chunk overhead well under 1%.
constexpr int64_t kChunkElements = 16384;

}  // namespace

CpuBackend::CpuBackend(CpuBackendOptions options) : options_(options) {}

std::string CpuBackend::SimdTarget() { return cpu::SimdTargetName(); }

absl::Status CpuBackend::ApplySimdTargetFromEnvironment() {
  const char* value = std::getenv(kSimdTargetVariable);
  if (value == nullptr || *value == '\0') return absl::OkStatus();
  if (cpu::LimitSimdTarget(value)) return absl::OkStatus();
  return absl::InvalidArgumentError(absl::StrCat(kSimdTargetVariable, "=", value, ": not a SIMD target; one of ",
                                                 cpu::kSimdTargetNames));
}

absl::StatusOr<LossResult> CpuBackend::Compute(const LossJob& job) const {
  const auto start = std::chrono::steady_clock::now();
  ASSIGN_OR_RETURN(const JobPlan plan, ValidateJob(job));

  KernelArgs a;
  const KernelKind kind = MakeKernelArgs(job, plan, a);

  LossResult result;
  result.backend = Name();
  result.count = plan.count;
  const bool none = job.spec.reduction == Reduction::kNone;
  // Outputs are not zeroed first: every kernel writes each of their elements (ignored rows and
  // masked classes as 0), and a zeroing pass costs as much memory traffic as the kernel's own
  // writes (and ran on one thread). poison_outputs lets the tests check that.
  auto poison = [&](void* data, size_t bytes) {
    if (options_.poison_outputs && bytes > 0) std::memset(data, 0xff, bytes);  // NaN in every float dtype
  };
  if (none) {
    result.losses = OwnedTensor::AllocateUninitialized(plan.output_dtype, plan.item_shape, plan.num_items);
    a.losses = result.losses->data();
    poison(a.losses, result.losses->size_bytes());
  }
  if (job.compute_gradient) {
    const size_t bytes = static_cast<size_t>(plan.num_elements) * DTypeSize(plan.output_dtype);
    if (job.gradient_into != nullptr && job.gradient_into_bytes == bytes) {
      // Straight into the caller's memory.
      result.gradient = OwnedTensor{plan.output_dtype, job.logits.shape, {}};
      a.gradient = job.gradient_into;
      result.gradient_in_place = true;
    } else {
      result.gradient = OwnedTensor::AllocateUninitialized(plan.output_dtype, job.logits.shape, plan.num_elements);
      a.gradient = result.gradient->data();
    }
    poison(a.gradient, bytes);
  }
  std::vector<float> widened_weights, widened_loss_weights;
  a.item_weights = ItemWeightsAsFloat32(job, widened_weights);
  a.loss_weights = LossWeightsAsFloat32(job, widened_loss_weights);

  // Elementwise kinds chunk over elements; class-indexed ones over positions (rows).
  const bool elementwise = kind == KernelKind::kElementwiseFloatTargets;
  const int64_t units = elementwise ? plan.num_elements : plan.batch * plan.inner;
  const int64_t per_unit = elementwise ? 1 : std::max<int64_t>(plan.classes, 1);
  // A multiple of 64 units, so that chunk boundaries fall on whole vectors (and whole groups of
  // rows) for every SIMD width: a ragged end would run lane by lane.
  const int64_t chunk = std::max<int64_t>(64, kChunkElements / per_unit / 64 * 64);
  const int64_t num_chunks = units == 0 ? 0 : (units + chunk - 1) / chunk;
  std::vector<cpu::ChunkResult> partials(num_chunks);
  const int threads = options_.num_threads > 0 ? options_.num_threads : omp_get_max_threads();
#pragma omp parallel for schedule(dynamic, 1) num_threads(threads) if (num_chunks > 1)
  for (int64_t k = 0; k < num_chunks; ++k) {
    partials[k] = cpu::RunChunk(kind, a, k * chunk, std::min(units, (k + 1) * chunk));
  }

  double sum = 0;
  bool bad = false;
  for (const cpu::ChunkResult& p : partials) {
    sum += p.loss_sum;
    bad = bad || p.bad_input || p.bad_target;
  }
  // The fused pass only flags; finding the first bad index is the rare path's job.
  if (bad) RETURN_IF_ERROR(FindInvalidValue(job));

  result.loss = ReducedLoss(job, plan, sum);
  result.compute_micros = std::chrono::duration_cast<std::chrono::microseconds>(
                              std::chrono::steady_clock::now() - start)
                              .count();
  return result;
}

}  // namespace focal
