// The CUDA slot: device discovery compiled by nvcc in every build that has it. On machines
// without a GPU (the development machines, CI) the test skips and says why.
#include <gtest/gtest.h>

#include "kernels/cuda/cuda_devices.h"

namespace focal::cuda {
namespace {

TEST(CudaDevices, ListsVisibleDevicesOrSaysWhyNone) {
  const DeviceQuery query = QueryDevices();
  if (query.devices.empty()) {
    EXPECT_FALSE(query.reason_if_none.empty());
    GTEST_SKIP() << "no CUDA device answered (" << query.reason_if_none << ")";
  }
  for (const DeviceInfo& d : query.devices) {
    EXPECT_FALSE(d.name.empty());
    EXPECT_GE(d.compute_major, 7);  // CUDA 13 supports Turing and newer
    EXPECT_GT(d.multiprocessors, 0);
    EXPECT_GT(d.memory_bytes, int64_t{1} << 30);
  }
}

}  // namespace
}  // namespace focal::cuda
