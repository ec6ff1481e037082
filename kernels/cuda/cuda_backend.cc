#include "kernels/cuda/cuda_backend.h"

#include <cuda_runtime.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <cstring>
#include <deque>
#include <mutex>
#include <optional>
#include <variant>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "focal/kernel_args.h"
#include "focal/status_macros.h"
#include "focal/validate.h"
#include "kernels/cuda/cuda_devices.h"
#include "kernels/cuda/loss_kernels.h"

namespace focal::cuda {
namespace {

/// Errors after which the CUDA context is unusable: every later call on the device fails too.
bool IsStickyError(cudaError_t e) {
  switch (e) {
    case cudaErrorIllegalAddress:
    case cudaErrorLaunchFailure:
    case cudaErrorHardwareStackError:
    case cudaErrorIllegalInstruction:
    case cudaErrorMisalignedAddress:
    case cudaErrorInvalidAddressSpace:
    case cudaErrorInvalidPc:
    case cudaErrorAssert:
    case cudaErrorECCUncorrectable:
    case cudaErrorLaunchTimeout:
    case cudaErrorUnknown:
      return true;
    default:
      return false;
  }
}

std::string ErrorText(cudaError_t e) { return absl::StrCat(cudaGetErrorName(e), " (", cudaGetErrorString(e), ")"); }

constexpr size_t kDeviceAlignment = 256;

size_t AlignUp(size_t n) { return (n + kDeviceAlignment - 1) / kDeviceAlignment * kDeviceAlignment; }

}  // namespace

/// One device in use.
struct Device {
  int ordinal = 0;
  DeviceLimits limits;
  std::string description;
  cudaMemPool_t pool = nullptr;  ///< the device's default pool, which every job allocates from
  std::atomic<bool> healthy{true};
  std::string failure;  ///< the sticky error that made it unhealthy (written once, under the pool lock)
};

/// A stream with its two pinned staging buffers; one request at a time holds it.
struct Lane {
  Device* device = nullptr;
  cudaStream_t stream = nullptr;
  void* pinned[2] = {nullptr, nullptr};
  cudaEvent_t done[2] = {nullptr, nullptr};  ///< the last copy through pinned[k] has finished
  int next = 0;                              ///< staging buffer the next chunk uses
};

struct CudaBackend::Impl {
  CudaBackendOptions options;
  std::vector<std::unique_ptr<Device>> devices;
  std::vector<std::unique_ptr<Lane>> lanes;
  mutable std::mutex mutex;
  mutable std::condition_variable lane_freed;
  mutable std::deque<Lane*> free_lanes;  ///< devices interleaved, taken from the front, returned to the back

  ~Impl();  // releases whatever Create made, also when it failed half-way

  /// OK, or the error of `e` as a status naming the device and step; marks the device unhealthy
  /// when the error is sticky.
  absl::Status Check(cudaError_t e, Device& device, const char* what) const;
  absl::StatusOr<Lane*> Acquire() const;
  void Release(Lane* lane) const;
  absl::Status CopyToDevice(Lane& lane, void* device_dst, const void* host_src, size_t bytes) const;
  absl::Status CopyToHost(Lane& lane, void* host_dst, const void* device_src, size_t bytes) const;
  absl::StatusOr<LossResult> Run(Lane& lane, const LossJob& job, const JobPlan& plan) const;
};

absl::Status CudaBackend::Impl::Check(cudaError_t e, Device& device, const char* what) const {
  if (e == cudaSuccess) return absl::OkStatus();
  cudaGetLastError();  // clears a non-sticky error; a sticky one stays
  const std::string where = absl::StrCat("cuda:", device.ordinal, " ", what, ": ", ErrorText(e));
  if (e == cudaErrorMemoryAllocation) {
    size_t free_bytes = 0, total_bytes = 0;
    cudaMemGetInfo(&free_bytes, &total_bytes);
    return absl::ResourceExhaustedError(absl::StrCat(where, "; the device has ", free_bytes >> 20, " MiB free of ",
                                                     total_bytes >> 20, " MiB: send smaller batches"));
  }
  if (IsStickyError(e) || cudaPeekAtLastError() != cudaSuccess) {
    {
      std::lock_guard<std::mutex> lock(mutex);
      if (device.healthy.exchange(false)) device.failure = where;
    }
    lane_freed.notify_all();  // waiters re-check whether any healthy device is left
    return absl::UnavailableError(absl::StrCat(where, "; the device is marked unhealthy"));
  }
  return absl::InternalError(where);
}

absl::StatusOr<Lane*> CudaBackend::Impl::Acquire() const {
  std::unique_lock<std::mutex> lock(mutex);
  for (;;) {
    bool any_healthy = false;
    for (const auto& d : devices) any_healthy = any_healthy || d->healthy.load();
    if (!any_healthy) {
      std::vector<std::string> failures;
      for (const auto& d : devices) failures.push_back(d->failure);
      return absl::UnavailableError(absl::StrCat("every CUDA device failed: ", absl::StrJoin(failures, "; ")));
    }
    for (auto it = free_lanes.begin(); it != free_lanes.end(); ++it) {
      if ((*it)->device->healthy.load()) {
        Lane* lane = *it;
        free_lanes.erase(it);
        return lane;
      }
    }
    lane_freed.wait(lock);
  }
}

void CudaBackend::Impl::Release(Lane* lane) const {
  {
    std::lock_guard<std::mutex> lock(mutex);
    free_lanes.push_back(lane);
  }
  lane_freed.notify_one();
}

absl::Status CudaBackend::Impl::CopyToDevice(Lane& lane, void* device_dst, const void* host_src, size_t bytes) const {
  Device& device = *lane.device;
  const size_t chunk = options.staging_bytes;
  for (size_t offset = 0; offset < bytes; offset += chunk) {
    const int b = lane.next;
    lane.next ^= 1;
    const size_t n = std::min(chunk, bytes - offset);
    // The buffer's previous copy must be done before the host overwrites it; meanwhile the other
    // buffer's DMA runs.
    RETURN_IF_ERROR(Check(cudaEventSynchronize(lane.done[b]), device, "staging wait"));
    std::memcpy(lane.pinned[b], static_cast<const char*>(host_src) + offset, n);
    RETURN_IF_ERROR(Check(cudaMemcpyAsync(static_cast<char*>(device_dst) + offset, lane.pinned[b], n,
                                          cudaMemcpyHostToDevice, lane.stream),
                          device, "copy to device"));
    RETURN_IF_ERROR(Check(cudaEventRecord(lane.done[b], lane.stream), device, "event record"));
  }
  return absl::OkStatus();
}

absl::Status CudaBackend::Impl::CopyToHost(Lane& lane, void* host_dst, const void* device_src, size_t bytes) const {
  Device& device = *lane.device;
  const size_t chunk = options.staging_bytes;
  struct Pending {
    size_t offset, size;
    int buffer;
  };
  std::optional<Pending> pending;
  // Chunk k's DMA is queued before chunk k-1 is copied out of its buffer, so the two overlap.
  auto drain = [&]() -> absl::Status {
    RETURN_IF_ERROR(Check(cudaEventSynchronize(lane.done[pending->buffer]), device, "copy to host"));
    std::memcpy(static_cast<char*>(host_dst) + pending->offset, lane.pinned[pending->buffer], pending->size);
    pending.reset();
    return absl::OkStatus();
  };
  for (size_t offset = 0; offset < bytes; offset += chunk) {
    const int b = lane.next;
    lane.next ^= 1;
    const size_t n = std::min(chunk, bytes - offset);
    RETURN_IF_ERROR(Check(cudaMemcpyAsync(lane.pinned[b], static_cast<const char*>(device_src) + offset, n,
                                          cudaMemcpyDeviceToHost, lane.stream),
                          device, "copy to host"));
    RETURN_IF_ERROR(Check(cudaEventRecord(lane.done[b], lane.stream), device, "event record"));
    if (pending) RETURN_IF_ERROR(drain());
    pending = Pending{offset, n, b};
  }
  if (pending) RETURN_IF_ERROR(drain());
  return absl::OkStatus();
}

absl::StatusOr<LossResult> CudaBackend::Impl::Run(Lane& lane, const LossJob& job, const JobPlan& plan) const {
  Device& device = *lane.device;
  RETURN_IF_ERROR(Check(cudaSetDevice(device.ordinal), device, "cudaSetDevice"));
  KernelArgs a;
  const KernelKind kind = MakeKernelArgs(job, plan, a);
  std::vector<float> widened_weights, widened_loss_weights;
  const float* item_weights = ItemWeightsAsFloat32(job, widened_weights);
  const float* item_loss_weights = LossWeightsAsFloat32(job, widened_loss_weights);
  const bool none = job.spec.reduction == Reduction::kNone;
  const size_t out_size = DTypeSize(plan.output_dtype);
  const LaunchPlan launch = PlanLaunch(kind, a, device.limits);
  // The per-class α the kernels read: the request's, or class_counts' class-balanced one.
  const size_t class_alpha_count = a.class_alpha ? static_cast<size_t>(plan.classes) : 0;

  // One device allocation per job, carved into the tensors: the pool hands it back cached.
  struct Region {
    const void* host;  ///< input to copy in, or null for an output
    size_t bytes;
    size_t offset = 0;
  };
  Region logits{job.logits.data, job.logits.size_bytes}, targets{job.targets.data, job.targets.size_bytes},
      row_alpha{plan.row_alpha.data(), plan.row_alpha.size() * sizeof(float)},
      // α as the job holds it (float64): the float64 kernels compute in double and read it
      // exactly; the others round it to float on read, as a float upload would.
      class_alpha{a.class_alpha, class_alpha_count * sizeof(*a.class_alpha)},
      weights{item_weights, item_weights ? static_cast<size_t>(plan.num_items) * sizeof(float) : 0},
      // The request's loss weights (the loss side; item_weights carries their gradient side).
      loss_weights{item_loss_weights, item_loss_weights ? static_cast<size_t>(plan.num_items) * sizeof(float) : 0},
      // quality_focal's per-position scores, in their own dtype (a.scores_dtype).
      scores{a.scores, a.scores ? job.scores->size_bytes : 0},
      gradient{nullptr, job.compute_gradient ? static_cast<size_t>(plan.num_elements) * out_size : 0},
      losses{nullptr, none ? static_cast<size_t>(plan.num_items) * out_size : 0},
      partials{nullptr, static_cast<size_t>(launch.blocks) * sizeof(double)}, scalars{nullptr, sizeof(JobScalars)};
  Region* regions[] = {&logits,  &targets,  &row_alpha, &class_alpha, &weights, &loss_weights,
                       &scores,  &gradient, &losses,    &partials,    &scalars};
  size_t total = 0;
  for (Region* r : regions) {
    r->offset = total;
    total += AlignUp(r->bytes);
  }
  char* base = nullptr;
  RETURN_IF_ERROR(Check(cudaMallocAsync(reinterpret_cast<void**>(&base), total, lane.stream), device,
                        absl::StrCat("allocating ", total >> 20, " MiB").c_str()));
  // Freed on every path, stream-ordered after whatever was queued; the stream is idle afterwards.
  struct FreeOnExit {
    const Impl* impl;
    Lane& lane;
    char* base;
    ~FreeOnExit() {
      cudaFreeAsync(base, lane.stream);
      impl->Check(cudaStreamSynchronize(lane.stream), *lane.device, "stream synchronize").IgnoreError();
    }
  } free_on_exit{this, lane, base};
  auto at = [&](const Region& r) -> void* { return r.bytes ? base + r.offset : nullptr; };

  for (Region* r : regions) {
    if (r->host && r->bytes) RETURN_IF_ERROR(CopyToDevice(lane, at(*r), r->host, r->bytes));
  }
  a.logits = at(logits);
  a.targets = at(targets);
  a.row_alpha = static_cast<const float*>(at(row_alpha));
  a.class_alpha = static_cast<const double*>(at(class_alpha));
  a.item_weights = static_cast<const float*>(at(weights));
  a.loss_weights = static_cast<const float*>(at(loss_weights));
  a.scores = at(scores);
  a.gradient = at(gradient);
  a.losses = at(losses);
  for (Region* r : {&gradient, &losses}) {
    // Poisoned for tests; zeroed when there is nothing to compute but NONE still has items
    // (C = 0 with every row ignored).
    const bool empty = launch.shape == LaunchPlan::Shape::kEmpty;
    if (r->bytes && (options.poison_outputs || empty)) {
      RETURN_IF_ERROR(Check(cudaMemsetAsync(at(*r), empty ? 0 : 0xFF, r->bytes, lane.stream), device, "memset"));
    }
  }
  RETURN_IF_ERROR(Check(LaunchLoss(kind, a, launch, static_cast<double*>(at(partials)),
                                   static_cast<JobScalars*>(at(scalars)), lane.stream),
                        device, "kernel launch"));

  JobScalars reported;
  RETURN_IF_ERROR(CopyToHost(lane, &reported, at(scalars), sizeof reported));
  // The fused pass only flags; finding the first bad index is the rare path's job, on the host.
  if (reported.flags != 0) RETURN_IF_ERROR(FindInvalidValue(job));

  LossResult result;
  result.backend = absl::StrCat("cuda:", device.ordinal);
  result.count = plan.count;
  result.loss = ReducedLoss(job, plan, reported.loss_sum);
  if (none) {
    result.losses = OwnedTensor::Allocate(plan.output_dtype, plan.item_shape, plan.num_items);
    RETURN_IF_ERROR(CopyToHost(lane, result.losses->data(), at(losses), losses.bytes));
  }
  if (job.compute_gradient) {
    result.gradient = OwnedTensor::Allocate(plan.output_dtype, job.logits.shape, plan.num_elements);
    RETURN_IF_ERROR(CopyToHost(lane, result.gradient->data(), at(gradient), gradient.bytes));
  }
  return result;
}

CudaBackend::CudaBackend(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

CudaBackend::~CudaBackend() = default;

CudaBackend::Impl::~Impl() {
  for (const auto& lane : lanes) {
    cudaSetDevice(lane->device->ordinal);
    if (lane->stream) cudaStreamSynchronize(lane->stream);
    for (int b = 0; b < 2; ++b) {
      if (lane->done[b]) cudaEventDestroy(lane->done[b]);
      if (lane->pinned[b]) cudaFreeHost(lane->pinned[b]);
    }
    if (lane->stream) cudaStreamDestroy(lane->stream);
  }
}

absl::StatusOr<std::unique_ptr<CudaBackend>> CudaBackend::Create(CudaBackendOptions options) {
  if (options.streams_per_device < 1) return absl::InvalidArgumentError("streams_per_device must be >= 1");
  if (options.staging_bytes < 4096) return absl::InvalidArgumentError("staging_bytes must be >= 4096");
  const DeviceQuery query = QueryDevices();
  auto impl = std::make_unique<Impl>();
  for (const DeviceInfo& info : query.devices) {
    const auto& wanted = options.devices;
    if (!wanted.empty() && std::find(wanted.begin(), wanted.end(), info.ordinal) == wanted.end()) continue;
    auto device = std::make_unique<Device>();
    device->ordinal = info.ordinal;
    device->limits = DeviceLimits{info.multiprocessors, info.l2_bytes};
    device->description = DescribeDevice(info);
    impl->devices.push_back(std::move(device));
  }
  if (impl->devices.empty()) {
    return absl::FailedPreconditionError(
        query.devices.empty() ? absl::StrCat("no CUDA device answered (", query.reason_if_none, ")")
                              : absl::StrCat("none of the requested CUDA devices [", absl::StrJoin(options.devices, ","),
                                             "] answered; visible: ", query.devices.size()));
  }
  for (const auto& device : impl->devices) {
    Device& d = *device;
    RETURN_IF_ERROR(impl->Check(cudaSetDevice(d.ordinal), d, "cudaSetDevice"));
    // The device's default pool keeps freed memory cached for the next request instead of
    // returning it to the driver at each synchronisation.
    cudaMemPool_t pool = nullptr;
    RETURN_IF_ERROR(impl->Check(cudaDeviceGetDefaultMemPool(&pool, d.ordinal), d, "memory pool"));
    uint64_t keep_all = UINT64_MAX;
    RETURN_IF_ERROR(impl->Check(cudaMemPoolSetAttribute(pool, cudaMemPoolAttrReleaseThreshold, &keep_all), d,
                                "memory pool"));
    d.pool = pool;
    for (int s = 0; s < options.streams_per_device; ++s) {
      auto lane = std::make_unique<Lane>();
      lane->device = &d;
      RETURN_IF_ERROR(impl->Check(cudaStreamCreateWithFlags(&lane->stream, cudaStreamNonBlocking), d, "stream"));
      for (int b = 0; b < 2; ++b) {
        RETURN_IF_ERROR(impl->Check(cudaHostAlloc(&lane->pinned[b], options.staging_bytes, cudaHostAllocDefault), d,
                                    "pinned staging buffer"));
        RETURN_IF_ERROR(impl->Check(cudaEventCreateWithFlags(&lane->done[b], cudaEventDisableTiming), d, "event"));
      }
      impl->lanes.push_back(std::move(lane));
    }
  }
  // Interleave the devices in the free list so that consecutive requests spread across them.
  const size_t per_device = static_cast<size_t>(options.streams_per_device);
  for (size_t s = 0; s < per_device; ++s) {
    for (size_t d = 0; d < impl->devices.size(); ++d) impl->free_lanes.push_back(impl->lanes[d * per_device + s].get());
  }
  impl->options = std::move(options);
  return std::unique_ptr<CudaBackend>(new CudaBackend(std::move(impl)));
}

absl::StatusOr<LossResult> CudaBackend::Compute(const LossJob& job) const {
  const auto start = std::chrono::steady_clock::now();
  ASSIGN_OR_RETURN(const JobPlan plan, ValidateJob(job));  // nothing reaches a device before this passes
  ASSIGN_OR_RETURN(Lane* const lane, impl_->Acquire());
  struct ReleaseOnExit {  // also when a result allocation throws
    const Impl& impl;
    Lane* lane;
    ~ReleaseOnExit() { impl.Release(lane); }
  } release{*impl_, lane};
  absl::StatusOr<LossResult> result = impl_->Run(*lane, job, plan);
  if (result.ok()) {
    result->compute_micros =
        std::chrono::duration_cast<std::chrono::microseconds>(std::chrono::steady_clock::now() - start).count();
  }
  return result;
}

std::string CudaBackend::Name() const {
  std::vector<int> ordinals;
  for (const auto& d : impl_->devices) ordinals.push_back(d->ordinal);
  return absl::StrCat("cuda:", absl::StrJoin(ordinals, ","));
}

bool CudaBackend::Healthy() const {
  for (const auto& d : impl_->devices) {
    if (d->healthy.load()) return true;
  }
  return false;
}

int64_t CudaBackend::DeviceMemoryBytes() const {
  int64_t total = 0;
  for (const auto& d : impl_->devices) {
    // Reserved, not used: the pool keeps freed memory (release threshold: all), and that is
    // what the process holds on the device.
    uint64_t reserved = 0;
    if (cudaMemPoolGetAttribute(d->pool, cudaMemPoolAttrReservedMemCurrent, &reserved) == cudaSuccess) {
      total += static_cast<int64_t>(reserved);
    } else {
      cudaGetLastError();  // a lost device reports nothing; leave no error for the next Check to see
    }
  }
  return total;
}

std::vector<std::string> CudaBackend::DeviceDescriptions() const {
  std::vector<std::string> out;
  for (const auto& d : impl_->devices) out.push_back(d->description);
  return out;
}

}  // namespace focal::cuda
