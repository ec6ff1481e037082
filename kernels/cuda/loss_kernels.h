// The CUDA kernels of every variant, as the backend and the kernel benchmark call them: plan a
// job's launch for a device, then enqueue it on a stream. Arguments are the shared KernelArgs
// (focal/kernel_args.h) with device pointers.
#pragma once

#include <cstdint>

#include "focal/kernel_args.h"
#include "kernels/cuda/device_api.h"

namespace focal::cuda {

/// Bits of JobScalars::flags.
constexpr int kBadInput = 1;   ///< a logit failed the input check (non-finite, or p outside [0,1])
constexpr int kBadTarget = 2;  ///< a float target was outside its range

/// What a job reports besides its output tensors, read back once after the stream finishes.
struct JobScalars {
  double loss_sum = 0;  ///< Σ per-item losses, in a fixed order
  int flags = 0;        ///< kBadInput | kBadTarget
};

/// How a job maps onto the device.
struct LaunchPlan {
  enum class Shape : uint8_t {
    kEmpty,        ///< nothing to compute
    kElementwise,  ///< the elementwise kinds: a thread per run of 8 elements, grid-stride
    kWarpRows,     ///< [N, C] with small C: `row_width` lanes of a warp per row
    kBlockRows,    ///< [N, C] with large C: a block per row
    kStridedRows,  ///< [N, C, S]: a thread per position, classes read at stride S
  };
  Shape shape = Shape::kEmpty;
  int blocks = 0;   ///< also the number of partial sums
  int threads = 0;
  int row_width = 0;
};

/// What the launch plan needs to know of a device.
struct DeviceLimits {
  int multiprocessors = 1;
  int64_t l2_bytes = 0;  ///< 0: unknown (no cap on rows kept in flight for L2)
};

/// The launch for `kind` over `a`'s shape on `device`. It depends on nothing else, so the same
/// job on the same kind of device always sums in the same order (bit-identical repeats; another
/// device model, or a MIG slice with fewer SMs, may round the last bits differently).
LaunchPlan PlanLaunch(KernelKind kind, const KernelArgs& a, const DeviceLimits& device);

/// Enqueues the job on `stream`: clears `scalars`, runs the fused kernel (per-block partial sums
/// into `partials`, plan.blocks of them) and the fixed-order final sum into scalars->loss_sum.
/// Every pointer in `a` is a device pointer aligned to 16 bytes. Returns the launch's error.
cudaError_t LaunchLoss(KernelKind kind, const KernelArgs& a, const LaunchPlan& plan, double* partials,
                       JobScalars* scalars, cudaStream_t stream);

}  // namespace focal::cuda
