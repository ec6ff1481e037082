// The CPU backend's kernels: one fused pass per chunk of a validated job. Implemented with
// Highway (cpu_kernels.cc) for every x86 SIMD target, chosen at run time.
#pragma once

#include <cstdint>

#include "focal/dtype.h"

namespace focal::cpu {

/// Everything a chunk needs, fixed for the whole job (built by CpuBackend from the plan).
struct KernelArgs {
  const void* logits = nullptr;
  DType logits_dtype = DType::kFloat32;
  const void* targets = nullptr;
  DType targets_dtype = DType::kFloat32;
  int64_t classes = 1;  ///< C of [N, C, S]
  int64_t inner = 1;    ///< S of [N, C, S]; stride of the class dimension
  /// Elementwise variants: elements per row, and dynamic_focal's per-row α_n (or null).
  int64_t row_length = 1;
  const float* row_alpha = nullptr;
  double alpha_pos = 1, alpha_neg = 1;  ///< sigmoid α_t weights of positives and negatives
  double gamma = 2;
  double smoothing = 0;        ///< ε
  double smoothing_floor = 0;  ///< ε/K (sigmoid) added to every target after scaling by 1-ε
  bool probabilities = false;
  bool binary_targets = false;  ///< dynamic_focal: float targets must be exactly 0 or 1
  int64_t ignore_index = INT64_MIN;
  const float* class_alpha = nullptr;  ///< softmax per-class α, or null for all ones
  double cosine_alpha = 1, xent = 0.1;
  /// Gradient weight of every item: upstream w times the reduction's scale.
  double grad_scale = 1;
  const float* item_weights = nullptr;  ///< NONE's upstream tensor, per item, or null
  void* losses = nullptr;               ///< NONE's per-item output, or null
  void* gradient = nullptr;             ///< or null when not requested
  DType output_dtype = DType::kFloat32;
  bool check_inputs = true;  ///< flag non-finite logits (or probabilities outside [0,1])
  bool propagate_nan = false;  ///< allow_non_finite: NaN/Inf inputs give NaN outputs
};

/// What one chunk reports; the backend adds chunk sums in chunk order, so the total does not
/// depend on how many threads ran the chunks.
struct ChunkResult {
  double loss_sum = 0;
  bool bad_input = false;   ///< a logit failed the input check
  bool bad_target = false;  ///< a float target was outside its range
};

enum class KernelKind : uint8_t {
  kSigmoidFloatTargets,  ///< sigmoid_focal and dynamic_focal: elementwise over the logits
  kSigmoidIndexTargets,  ///< sigmoid_focal with an implicit one-hot from class indices
  kSoftmaxFocal,
  kFocalCosine,
};

/// Runs `kind` over chunk [begin, end): elements for kSigmoidFloatTargets, positions
/// (n·S + s) for the class-indexed kinds.
ChunkResult RunChunk(KernelKind kind, const KernelArgs& args, int64_t begin, int64_t end);

/// Name of the SIMD target the dispatcher picked on this processor ("AVX3", "AVX2", ...).
const char* SimdTargetName();

}  // namespace focal::cpu
