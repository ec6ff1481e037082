// The CPU backend: fused single-pass kernels over Highway SIMD on all cores. It is fast in its
// own right and the reference the CUDA backend is tested against.
#pragma once

#include <string>

#include "absl/status/status.h"
#include "focal/backend.h"

namespace focal {

struct CpuBackendOptions {
  /// OpenMP threads per job; 0 uses OpenMP's default (OMP_NUM_THREADS, else all cores).
  int num_threads = 0;
  /// Tests: fill every output with NaN bytes before the kernels run. Outputs are allocated
  /// without zeroing, since every kernel writes all of its outputs; a test under this option sees
  /// any element one leaves unwritten.
  bool poison_outputs = false;
};

class CpuBackend final : public Backend {
 public:
  explicit CpuBackend(CpuBackendOptions options = {});
  absl::StatusOr<LossResult> Compute(const LossJob& job) const override;
  std::string Name() const override { return "cpu"; }
  /// The SIMD target chosen on this processor, for logs ("AVX2", "AVX3", ...).
  static std::string SimdTarget();
  /// The environment variable that caps the SIMD target ("avx2" on an AVX-512 machine runs the
  /// AVX2 kernels): an environment variable, so that the server, the benchmarks and the tests
  /// all honour it, as oneDNN's ONEDNN_MAX_CPU_ISA does.
  static constexpr const char* kSimdTargetVariable = "FOCAL_CPU_TARGET";
  /// Applies kSimdTargetVariable when it is set; an error names it and the values it takes.
  static absl::Status ApplySimdTargetFromEnvironment();

 private:
  CpuBackendOptions options_;
};

}  // namespace focal
