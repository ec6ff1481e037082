#include "server/backend_select.h"

#include <atomic>

#include "absl/strings/str_cat.h"
#include "kernels/cpu/cpu_backend.h"
#if FOCAL_HAVE_CUDA
#include "kernels/cuda/cuda_backend.h"
#include "kernels/cuda/cuda_devices.h"
#endif

namespace focal::server {
namespace {

/// --debug-unhealthy-after: forwards to `inner` and reports unhealthy after `limit` computations,
/// so the tests can watch the server turn NOT_SERVING as it does after a sticky CUDA error.
class UnhealthyAfter final : public Backend {
 public:
  UnhealthyAfter(std::unique_ptr<Backend> inner, int64_t limit) : inner_(std::move(inner)), limit_(limit) {}
  absl::StatusOr<LossResult> Compute(const LossJob& job) const override {
    ++computed_;
    return inner_->Compute(job);
  }
  std::string Name() const override { return inner_->Name(); }
  bool Healthy() const override { return inner_->Healthy() && computed_.load() < limit_; }

 private:
  std::unique_ptr<Backend> inner_;
  int64_t limit_;
  mutable std::atomic<int64_t> computed_{0};
};

std::unique_ptr<Backend> MakeCpu(const ServerOptions& options) {
  return std::make_unique<CpuBackend>(CpuBackendOptions{options.cpu_threads});
}

/// The CUDA backend on the --devices (all when empty), or why there is none.
absl::StatusOr<SelectedBackend> MakeCuda(const ServerOptions& options) {
#if FOCAL_HAVE_CUDA
  cuda::CudaBackendOptions cuda_options;
  cuda_options.devices = options.devices;
  cuda_options.streams_per_device = options.cuda_streams;
  absl::StatusOr<std::unique_ptr<cuda::CudaBackend>> backend = cuda::CudaBackend::Create(cuda_options);
  if (!backend.ok()) return backend.status();
  SelectedBackend selected;
  selected.devices = (*backend)->DeviceDescriptions();
  selected.backend = std::move(*backend);
  return selected;
#else
  (void)options;
  return absl::FailedPreconditionError("this build has no CUDA support (FOCAL_ENABLE_CUDA=OFF or no nvcc)");
#endif
}

}  // namespace

absl::StatusOr<SelectedBackend> SelectBackend(const ServerOptions& options) {
  absl::StatusOr<SelectedBackend> selected = SelectUndecorated(options);
  if (selected.ok() && options.debug_unhealthy_after > 0) {
    selected->backend = std::make_unique<UnhealthyAfter>(std::move(selected->backend), options.debug_unhealthy_after);
  }
  return selected;
}

absl::StatusOr<SelectedBackend> SelectUndecorated(const ServerOptions& options) {
  if (absl::Status capped = CpuBackend::ApplySimdTargetFromEnvironment(); !capped.ok()) return capped;
  const std::string simd = CpuBackend::SimdTarget();
  if (options.backend == BackendChoice::kCpu) {
    SelectedBackend selected;
    selected.backend = MakeCpu(options);
    selected.why = absl::StrCat("cpu (", simd, "), as --backend=cpu asks");
    return selected;
  }
  absl::StatusOr<SelectedBackend> cuda = MakeCuda(options);
  if (cuda.ok()) {
    cuda->why = absl::StrCat(cuda->backend->Name(), ": ", cuda->devices.size(), " CUDA device(s) answered",
                             options.backend == BackendChoice::kCuda ? ", as --backend=cuda asks" : "");
    return cuda;
  }
  if (options.backend == BackendChoice::kCuda) {
    return absl::FailedPreconditionError(absl::StrCat("--backend=cuda: ", cuda.status().message()));
  }
  SelectedBackend selected;
  selected.backend = MakeCpu(options);
  selected.why = absl::StrCat("cpu (", simd, "): ", cuda.status().message());
  return selected;
}

}  // namespace focal::server
