// The typed request a backend computes and the result it returns. No protobuf type: the codec
// in server/ translates between these and the wire.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <variant>

#include "focal/params.h"
#include "focal/tensor.h"

namespace focal {

/// One batch to compute: tensors are views into the request's bytes.
struct LossJob {
  LossSpec spec;
  TensorView logits;
  TensorView targets;
  std::optional<TensorView> num_objects;  ///< dynamic_focal only
  /// Per-item loss weights shaped like NONE's losses: ℓ_i ← w_i ℓ_i, value and gradient.
  std::optional<TensorView> weights;
  /// quality_focal with class-index targets: the target class's quality, shaped like the targets.
  std::optional<TensorView> scores;
  bool compute_gradient = false;
  /// Upstream gradient w: a scalar for MEAN/SUM, a scalar or a tensor shaped like the per-item
  /// losses for NONE; absent means 1.
  std::variant<std::monostate, double, TensorView> grad_output;
  /// dtype of the gradient and of NONE's per-item losses; absent means the logits' dtype.
  std::optional<DType> output_dtype;
  bool allow_non_finite = false;
  /// Where the gradient may be written instead of a buffer of the backend's own (a client's
  /// shared memory: docs/shared-memory.md), exactly its bytes long; null: the backend allocates.
  /// A backend that writes there says so (LossResult::gradient_in_place).
  void* gradient_into = nullptr;
  size_t gradient_into_bytes = 0;
};

/// What a backend returns for a LossJob.
struct LossResult {
  /// The reduced loss; for NONE, the plain sum of the per-item losses as computed, before any
  /// rounding to a 16-bit output dtype (so it does not depend on output_dtype).
  double loss = 0.0;
  /// Items counted by the reduction (docs/variants.md, per variant); ignored items are not.
  int64_t count = 0;
  std::optional<OwnedTensor> losses;    ///< NONE only
  std::optional<OwnedTensor> gradient;  ///< when compute_gradient
  /// The gradient went to job.gradient_into: `gradient` has its dtype and shape, no bytes.
  bool gradient_in_place = false;
  std::string backend;                  ///< "cpu", "cuda:0"
  int64_t compute_micros = 0;
};

}  // namespace focal
