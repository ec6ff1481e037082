// The CUDA backend: the same Backend interface as the CPU one, computed by the kernels of
// loss_kernels.h on one or more devices. Plain C++ types only, so callers need no CUDA headers.
#pragma once

#include <cstddef>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "focal/backend.h"

namespace focal::cuda {

struct CudaBackendOptions {
  std::vector<int> devices;    ///< CUDA ordinals to use; empty: every visible device
  int streams_per_device = 4;  ///< requests computed at once per device, each on its own stream
  /// Bytes of each of a stream's two pinned host staging buffers: copies to and from the device
  /// go through them in chunks of this size, the host copy of one chunk overlapping the DMA of
  /// the next.
  size_t staging_bytes = size_t{8} << 20;
  /// Tests only: fill every output buffer with 0xFF bytes (NaN in every float dtype) before each
  /// job, so that an element a kernel fails to write shows.
  bool poison_outputs = false;
};

class CudaBackend final : public Backend {
 public:
  /// Opens the devices: a stream pool, pinned staging buffers and a caching memory pool on each.
  /// FAILED_PRECONDITION when none of the wanted devices answers.
  static absl::StatusOr<std::unique_ptr<CudaBackend>> Create(CudaBackendOptions options);
  ~CudaBackend() override;

  /// Validates on the host, then copies in, computes and copies out on one stream of one device.
  /// Device out-of-memory is RESOURCE_EXHAUSTED and leaves the backend healthy; a sticky CUDA
  /// error (the context is lost) marks that device unhealthy and is UNAVAILABLE.
  absl::StatusOr<LossResult> Compute(const LossJob& job) const override;
  std::string Name() const override;
  bool Healthy() const override;
  /// What the devices' memory pools hold (in use plus cached for the next request), summed.
  int64_t DeviceMemoryBytes() const override;

  /// "cuda:0 NVIDIA H200 (143771 MiB, sm_90)", one per device in use.
  std::vector<std::string> DeviceDescriptions() const;

  struct Impl;

 private:
  explicit CudaBackend(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace focal::cuda
