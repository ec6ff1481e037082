#include "kernels/cpu/cpu_backend.h"

#include <omp.h>

#include <algorithm>
#include <chrono>
#include <vector>

#include "focal/status_macros.h"
#include "focal/validate.h"
#include "kernels/cpu/cpu_kernels.h"

namespace focal {
namespace {

using cpu::KernelArgs;
using cpu::KernelKind;

/// Work per chunk, in logits elements. Chunks are fixed by the job, never by the thread
/// count, and their sums are added in chunk order: that is what makes results bit-identical
/// for any OMP_NUM_THREADS. 16K elements keep per-chunk overhead well under 1%.
constexpr int64_t kChunkElements = 16384;

KernelKind SetVariantArgs(const LossJob& job, const JobPlan& plan, KernelArgs& a) {
  return std::visit(
      [&](const auto& p) -> KernelKind {
        using P = std::decay_t<decltype(p)>;
        if constexpr (std::is_same_v<P, SoftmaxFocalParams>) {
          a.gamma = p.gamma;
          a.smoothing = p.label_smoothing;
          a.ignore_index = p.ignore_index.value_or(INT64_MIN);
          a.class_alpha = p.alpha.empty() ? nullptr : p.alpha.data();
          return KernelKind::kSoftmaxFocal;
        } else if constexpr (std::is_same_v<P, SigmoidFocalParams>) {
          a.gamma = p.gamma;
          if (p.alpha >= 0) {  // a negative α disables the weighting, as torchvision
            a.alpha_pos = p.alpha;
            a.alpha_neg = 1 - p.alpha;
          }
          a.smoothing = p.label_smoothing;
          a.smoothing_floor = p.label_smoothing / static_cast<double>(p.smoothing_classes);
          a.probabilities = p.input == SigmoidInput::kProbabilities;
          a.ignore_index = p.ignore_index.value_or(INT64_MIN);
          return plan.index_targets ? KernelKind::kSigmoidIndexTargets
                                    : KernelKind::kSigmoidFloatTargets;
        } else if constexpr (std::is_same_v<P, FocalCosineParams>) {
          a.gamma = p.gamma;
          a.cosine_alpha = p.alpha;
          a.xent = p.xent;
          return KernelKind::kFocalCosine;
        } else {
          static_assert(std::is_same_v<P, DynamicFocalParams>);
          a.gamma = p.gamma;
          a.binary_targets = true;
          a.row_length = std::max<int64_t>(plan.inner, 1);
          a.row_alpha = plan.row_alpha.empty() ? nullptr : plan.row_alpha.data();
          return KernelKind::kSigmoidFloatTargets;
        }
      },
      job.spec.params);
}

}  // namespace

CpuBackend::CpuBackend(CpuBackendOptions options) : options_(options) {}

std::string CpuBackend::SimdTarget() { return cpu::SimdTargetName(); }

absl::StatusOr<LossResult> CpuBackend::Compute(const LossJob& job) const {
  const auto start = std::chrono::steady_clock::now();
  ASSIGN_OR_RETURN(const JobPlan plan, ValidateJob(job));

  KernelArgs a;
  a.logits = job.logits.data;
  a.logits_dtype = job.logits.dtype;
  a.targets = job.targets.data;
  a.targets_dtype = job.targets.dtype;
  a.classes = plan.classes;
  a.inner = plan.inner;
  a.grad_scale = plan.grad_scale;
  a.output_dtype = plan.output_dtype;
  const bool probabilities = [&] {
    const auto* s = std::get_if<SigmoidFocalParams>(&job.spec.params);
    return s && s->input == SigmoidInput::kProbabilities;
  }();
  a.check_inputs = !job.allow_non_finite || probabilities;
  a.propagate_nan = job.allow_non_finite;
  const KernelKind kind = SetVariantArgs(job, plan, a);

  LossResult result;
  result.backend = Name();
  result.count = plan.count;
  const bool none = job.spec.reduction == Reduction::kNone;
  if (none) {
    result.losses = OwnedTensor::Allocate(plan.output_dtype, plan.item_shape, plan.num_items);
    a.losses = result.losses->data();
  }
  if (job.compute_gradient) {
    result.gradient = OwnedTensor::Allocate(plan.output_dtype, job.logits.shape, plan.num_elements);
    a.gradient = result.gradient->data();
  }
  // NONE's upstream tensor is read as float32; other dtypes are widened once (it is shaped like
  // the per-item losses, not a copy of the logits).
  std::vector<float> widened_weights;
  if (const TensorView* w = std::get_if<TensorView>(&job.grad_output); w && none) {
    if (w->dtype == DType::kFloat32) {
      a.item_weights = w->As<float>();
    } else {
      widened_weights.resize(plan.num_items);
      for (int64_t i = 0; i < plan.num_items; ++i) widened_weights[i] = static_cast<float>(LoadAsDouble(*w, i));
      a.item_weights = widened_weights.data();
    }
  }

  // Elementwise kinds chunk over elements; class-indexed ones over positions (rows).
  const bool elementwise = kind == KernelKind::kSigmoidFloatTargets;
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

  switch (job.spec.reduction) {
    case Reduction::kNone:
    case Reduction::kSum:
      result.loss = sum;
      break;
    case Reduction::kMean: {
      const double denominator = job.spec.normalizer.value_or(static_cast<double>(plan.count));
      result.loss = denominator > 0 ? sum / denominator : 0.0;  // nothing counted: 0, not NaN
      break;
    }
  }
  result.compute_micros = std::chrono::duration_cast<std::chrono::microseconds>(
                              std::chrono::steady_clock::now() - start)
                              .count();
  return result;
}

}  // namespace focal
