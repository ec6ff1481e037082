// The one interface between the service and the compute: thread-safe, many jobs at once.
#pragma once

#include <cstdint>
#include <string>

#include "absl/status/statusor.h"
#include "focal/job.h"

namespace focal {

class Backend {
 public:
  virtual ~Backend() = default;
  /// Validates `job` and computes it. Errors are INVALID_ARGUMENT (naming the field and the
  /// first bad index) or RESOURCE_EXHAUSTED; the backend stays usable after any of them.
  virtual absl::StatusOr<LossResult> Compute(const LossJob& job) const = 0;
  /// "cpu", "cuda:0", ... as reported in every response.
  virtual std::string Name() const = 0;
  /// False once the backend cannot compute any more (a CUDA device lost its context); the
  /// server reports NOT_SERVING so that load balancers move traffic elsewhere.
  virtual bool Healthy() const { return true; }
  /// Bytes of device (GPU) memory the backend holds now, cached pools included; 0 for a backend
  /// that holds none (the CPU one). Cheap enough to read after every batch.
  virtual int64_t DeviceMemoryBytes() const { return 0; }
};

}  // namespace focal
