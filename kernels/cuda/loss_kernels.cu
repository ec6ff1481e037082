// Launch planning and the job's last step: the fixed-order sum of the per-block partials.
#include <algorithm>
#include <cstdint>

#include "kernels/cuda/kernel_common.cuh"
#include "kernels/cuda/kernel_launchers.h"

namespace focal::cuda {
namespace {

/// [N, C] rows up to this many classes go to lanes of a warp (up to 64 logits per lane); longer
/// rows get a block each, so a few long rows still fill the device.
constexpr int64_t kWarpRowMaxClasses = 2048;

/// Resident blocks per SM the grid-stride kernels are sized for: enough warps in flight to cover
/// memory latency, few enough partial sums to add at the end.
constexpr int kBlocksPerSm = 8;
constexpr int kBlockRowsPerSm = 4;  // 512-thread blocks: 2048 threads per SM

constexpr int kFinishThreads = 256;

/// 16-byte runs per lane the warp-row width aims for.
constexpr int64_t kRunsPerLane = 4;

int64_t CeilDiv(int64_t a, int64_t b) { return (a + b - 1) / b; }

/// The single-block fixed-order sum of the partials: thread t adds partials t, t + 256, ... in
/// order, then CUB's block tree; the same partials always give the same bits.
__global__ void __launch_bounds__(kFinishThreads) FinishKernel(const double* partials, int count, double* total) {
  double sum = 0;
  for (int i = static_cast<int>(threadIdx.x); i < count; i += kFinishThreads) sum += partials[i];
  using Reduce = cub::BlockReduce<double, kFinishThreads>;
  __shared__ typename Reduce::TempStorage storage;
  const double block_sum = Reduce(storage).Sum(sum);
  if (threadIdx.x == 0) *total = block_sum;
}

bool Aligned(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

}  // namespace

LaunchPlan PlanLaunch(KernelKind kind, const KernelArgs& a, const DeviceLimits& device) {
  LaunchPlan plan;
  const int64_t sms = std::max(device.multiprocessors, 1);
  auto grid = [&](int64_t blocks_needed, int per_sm) {
    return static_cast<int>(std::min(std::max<int64_t>(blocks_needed, 1), sms * per_sm));
  };
  if (a.num_elements == 0) return plan;  // kEmpty
  if (kind == KernelKind::kElementwiseFloatTargets || kind == KernelKind::kElementwiseIndexTargets) {
    plan.shape = LaunchPlan::Shape::kElementwise;
    plan.threads = kThreads;
    plan.blocks = grid(CeilDiv(ElementwiseRuns(a.num_elements), kThreads), kBlocksPerSm);
    return plan;
  }
  if (a.inner != 1) {
    plan.shape = LaunchPlan::Shape::kStridedRows;
    plan.threads = kThreads;
    plan.blocks = grid(CeilDiv(a.batch * a.inner, kThreads), kBlocksPerSm);
    return plan;
  }
  if (a.classes <= kWarpRowMaxClasses) {
    // Lanes per row: about four 16-byte runs each (single elements when the row is not a whole
    // number of runs), a power of two, at most a warp. Fewer lanes per row put several rows in
    // each warp, so every shuffle of the reductions and every instruction of the per-row math
    // serves all of them: at C = 80 float32, 8 lanes and 4 rows per warp instead of 32 lanes
    // (12 of them idle) for one.
    const int64_t run = 16 / static_cast<int64_t>(DTypeSize(a.logits_dtype));
    const int64_t units = a.classes % run == 0 ? a.classes / run : a.classes;
    const int64_t wanted = CeilDiv(units, kRunsPerLane);
    int width = 1;
    while (width < 32 && width < wanted) width *= 2;
    plan.shape = LaunchPlan::Shape::kWarpRows;
    plan.threads = kThreads;
    plan.row_width = width;
    const int64_t warps = CeilDiv(a.batch, 32 / width);
    plan.blocks = grid(CeilDiv(warps, kThreads / 32), kBlocksPerSm);
    return plan;
  }
  plan.shape = LaunchPlan::Shape::kBlockRows;
  plan.threads = kBlockRowThreads;
  plan.blocks = grid(a.batch, kBlockRowsPerSm);
  if (device.l2_bytes > 0) {
    // The gradient pass reads the row again: keep the rows in flight within half the L2 so that
    // the second read hits it (at C = 131072 bfloat16, 256 KiB a row: ~120 rows on an H200's
    // 60 MB), but never fewer than one block per SM.
    const int64_t row_bytes = a.classes * static_cast<int64_t>(DTypeSize(a.logits_dtype));
    const int64_t rows_in_l2 = device.l2_bytes / 2 / row_bytes;
    plan.blocks = static_cast<int>(std::min<int64_t>(plan.blocks, std::max(sms, rows_in_l2)));
  }
  return plan;
}

cudaError_t LaunchLoss(KernelKind kind, const KernelArgs& a, const LaunchPlan& plan, double* partials,
                       JobScalars* scalars, cudaStream_t stream) {
  for (const void* p : {a.logits, a.targets, static_cast<const void*>(a.gradient), static_cast<const void*>(a.losses),
                        static_cast<const void*>(a.item_weights), static_cast<const void*>(a.loss_weights)}) {
    if (!Aligned(p)) return cudaErrorInvalidValue;  // the 16-byte runs need it; null is aligned
  }
  cudaError_t status = cudaMemsetAsync(scalars, 0, sizeof(JobScalars), stream);
  if (status != cudaSuccess || plan.shape == LaunchPlan::Shape::kEmpty) return status;
  int* const flags = &scalars->flags;
  switch (kind) {
    case KernelKind::kElementwiseFloatTargets:
    case KernelKind::kElementwiseIndexTargets:
      status = LaunchElementwise(kind == KernelKind::kElementwiseIndexTargets, a, plan, partials, flags, stream);
      break;
    case KernelKind::kSoftmaxFocal: status = LaunchSoftmaxFocal(a, plan, partials, flags, stream); break;
    case KernelKind::kFocalCosine: status = LaunchFocalCosine(a, plan, partials, flags, stream); break;
    case KernelKind::kDistributionFocal: status = LaunchDistributionFocal(a, plan, partials, flags, stream); break;
  }
  if (status != cudaSuccess) return status;
  FOCAL_LAUNCH(1, kFinishThreads, stream, FinishKernel)(partials, plan.blocks, &scalars->loss_sum);
  return cudaGetLastError();
}

}  // namespace focal::cuda
