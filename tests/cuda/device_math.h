// Test scaffold (target focal_cuda_device_math, used by cuda_device_test only): the shared
// variant math (focal/math-inl.h) evaluated by a CUDA kernel, element by element, a check that
// the FOCAL_HD formulas compile for the device and agree there with the host's. Plain C++ types
// only.
#pragma once

#include <string>
#include <vector>

namespace focal::cuda {

/// Per-element results of the shared formulas for inputs x (logits) and t (targets in [0, 1]).
struct DeviceMathResults {
  std::vector<float> hard_loss, hard_grad;  ///< SigmoidFocalHard with sign 2·round(t)-1, α_t 1
  std::vector<float> soft_loss, soft_grad;  ///< SigmoidFocalSoft with α = 0.25
  std::vector<float> term_f, term_g;        ///< SoftmaxFocalTerm at log p = -|x|
};

/// Runs the formulas on device 0 with focusing parameter `gamma`. On failure (no device, a CUDA
/// error) returns false and says why in `error`.
bool EvaluateMathOnDevice(const std::vector<float>& x, const std::vector<float>& t, float gamma,
                          DeviceMathResults* out, std::string* error);

}  // namespace focal::cuda
