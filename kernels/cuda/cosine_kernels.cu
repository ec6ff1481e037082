// focal_cosine's instantiations: logits dtype × gradient, for [N, C] rows.
#include "kernels/cuda/kernel_launchers.h"
#include "kernels/cuda/row_kernels.cuh"

namespace focal::cuda {

cudaError_t LaunchFocalCosine(const KernelArgs& a, const LaunchPlan& plan, double* partials, int* flags,
                              cudaStream_t stream) {
  return DispatchLogitsDType(a.logits_dtype, [&](auto dt) {
    return DispatchBool(a.gradient != nullptr, [&](auto grad) {
      return LaunchRows<FocalCosineRows<decltype(dt)::value, decltype(grad)::value>, false>(a, plan, partials, flags, stream);
    });
  });
}

}  // namespace focal::cuda
