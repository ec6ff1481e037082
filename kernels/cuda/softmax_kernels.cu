// softmax_focal's instantiations: logits dtype × label smoothing × gradient, in the three row
// shapes of row_kernels.cuh.
#include "kernels/cuda/kernel_launchers.h"
#include "kernels/cuda/row_kernels.cuh"

namespace focal::cuda {

cudaError_t LaunchSoftmaxFocal(const KernelArgs& a, const LaunchPlan& plan, double* partials, int* flags,
                               cudaStream_t stream) {
  return DispatchLogitsDType(a.logits_dtype, [&](auto dt) {
    return DispatchBool(a.smoothing > 0, [&](auto smooth) {
      return DispatchBool(a.gradient != nullptr, [&](auto grad) {
        using Rows = SoftmaxFocalRows<decltype(dt)::value, decltype(smooth)::value, decltype(grad)::value>;
        return LaunchRows<Rows>(a, plan, partials, flags, stream);
      });
    });
  });
}

}  // namespace focal::cuda
