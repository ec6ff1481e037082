// The launchers of each kernel family, one translation unit each so that nvcc compiles them in
// parallel; LaunchLoss (loss_kernels.cu) chooses among them.
#pragma once

#include <cstdint>

#include "focal/kernel_args.h"
#include "kernels/cuda/device_api.h"
#include "kernels/cuda/loss_kernels.h"

namespace focal::cuda {

/// The elementwise kinds, a.formula's kernel; index_targets for kElementwiseIndexTargets.
cudaError_t LaunchElementwise(bool index_targets, const KernelArgs& a, const LaunchPlan& plan, double* partials,
                              int* flags, cudaStream_t stream);
cudaError_t LaunchSoftmaxFocal(const KernelArgs& a, const LaunchPlan& plan, double* partials, int* flags,
                               cudaStream_t stream);
cudaError_t LaunchFocalCosine(const KernelArgs& a, const LaunchPlan& plan, double* partials, int* flags,
                              cudaStream_t stream);
cudaError_t LaunchDistributionFocal(const KernelArgs& a, const LaunchPlan& plan, double* partials, int* flags,
                                    cudaStream_t stream);

/// Runs of 8 elements the elementwise kernel hands to each thread per step.
int64_t ElementwiseRuns(int64_t num_elements);

}  // namespace focal::cuda
