#include <cuda_runtime.h>

#include "kernels/cuda/cuda_devices.h"

namespace focal::cuda {

DeviceQuery QueryDevices() {
  DeviceQuery query;
  int count = 0;
  const cudaError_t status = cudaGetDeviceCount(&count);
  if (status != cudaSuccess) {
    // cudaErrorNoDevice / cudaErrorInsufficientDriver on machines without a GPU; not sticky.
    query.reason_if_none = std::string(cudaGetErrorName(status)) + ": " + cudaGetErrorString(status);
    cudaGetLastError();
    return query;
  }
  for (int i = 0; i < count; ++i) {
    cudaDeviceProp prop{};
    if (cudaGetDeviceProperties(&prop, i) != cudaSuccess) continue;
    DeviceInfo info;
    info.ordinal = i;
    info.name = prop.name;
    info.compute_major = prop.major;
    info.compute_minor = prop.minor;
    info.multiprocessors = prop.multiProcessorCount;
    info.l2_bytes = prop.l2CacheSize;
    info.memory_bytes = static_cast<int64_t>(prop.totalGlobalMem);
    query.devices.push_back(std::move(info));
  }
  if (query.devices.empty()) query.reason_if_none = "cudaGetDeviceCount reported no usable device";
  return query;
}

std::string DescribeDevice(const DeviceInfo& d) {
  return "cuda:" + std::to_string(d.ordinal) + " " + d.name + " (" + std::to_string(d.memory_bytes >> 20) + " MiB, sm_" +
         std::to_string(d.compute_major) + std::to_string(d.compute_minor) + ")";
}

}  // namespace focal::cuda
