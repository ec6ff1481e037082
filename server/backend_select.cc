#include "server/backend_select.h"

#include "absl/strings/str_cat.h"
#include "kernels/cpu/cpu_backend.h"
#if FOCAL_HAVE_CUDA
#include "kernels/cuda/cuda_devices.h"
#endif

namespace focal::server {
namespace {

/// What the CUDA side has to offer: the devices that answered, or why none did.
struct CudaProbe {
  std::vector<std::string> devices;
  std::string reason_if_none;
};

CudaProbe ProbeCuda(const std::vector<int>& wanted) {
  CudaProbe probe;
#if FOCAL_HAVE_CUDA
  const cuda::DeviceQuery query = cuda::QueryDevices();
  for (const cuda::DeviceInfo& d : query.devices) {
    if (!wanted.empty() && std::find(wanted.begin(), wanted.end(), d.ordinal) == wanted.end()) continue;
    probe.devices.push_back(absl::StrCat("cuda:", d.ordinal, " ", d.name, " (", d.memory_bytes >> 20, " MiB, sm_",
                                         d.compute_major, d.compute_minor, ")"));
  }
  if (probe.devices.empty()) {
    probe.reason_if_none = query.devices.empty() ? query.reason_if_none : "none of the --devices answered";
  }
#else
  (void)wanted;
  probe.reason_if_none = "this build has no CUDA support (FOCAL_ENABLE_CUDA=OFF or no nvcc)";
#endif
  return probe;
}

std::unique_ptr<Backend> MakeCpu(const ServerOptions& options) {
  return std::make_unique<CpuBackend>(CpuBackendOptions{options.cpu_threads});
}

}  // namespace

absl::StatusOr<SelectedBackend> SelectBackend(const ServerOptions& options) {
  SelectedBackend selected;
  const std::string simd = CpuBackend::SimdTarget();
  if (options.backend == BackendChoice::kCpu) {
    selected.backend = MakeCpu(options);
    selected.why = absl::StrCat("cpu (", simd, "), as --backend=cpu asks");
    return selected;
  }
  const CudaProbe cuda = ProbeCuda(options.devices);
  // The kernels of the CUDA backend are the next step of the project (issue 3); until they
  // land, a device that answers is reported but the CPU computes.
  const std::string no_cuda_backend = "this version has no CUDA backend yet";
  if (options.backend == BackendChoice::kCuda) {
    if (cuda.devices.empty()) {
      return absl::FailedPreconditionError(absl::StrCat("--backend=cuda: no CUDA device answered (", cuda.reason_if_none, ")"));
    }
    return absl::FailedPreconditionError(absl::StrCat("--backend=cuda: ", cuda.devices.size(),
                                                      " CUDA device(s) answered, but ", no_cuda_backend,
                                                      "; use --backend=cpu or auto"));
  }
  selected.backend = MakeCpu(options);
  selected.why = cuda.devices.empty()
                     ? absl::StrCat("cpu (", simd, "): no CUDA device answered (", cuda.reason_if_none, ")")
                     : absl::StrCat("cpu (", simd, "): ", cuda.devices.size(), " CUDA device(s) answered but ",
                                    no_cuda_backend);
  return selected;
}

}  // namespace focal::server
