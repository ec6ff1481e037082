// Linked into every CPU unit test: the binary honours FOCAL_CPU_TARGET (CpuBackend's SIMD cap)
// as the server does, so that ctest can run the backend's tests once per SIMD target on one
// machine (tests/CMakeLists.txt), and says which target ran.
#include <gtest/gtest.h>

#include <cstdio>
#include <string>

#include "kernels/cpu/cpu_backend.h"

namespace focal {
namespace {

class SimdTargetEnvironment : public ::testing::Environment {
 public:
  void SetUp() override {
    const absl::Status capped = CpuBackend::ApplySimdTargetFromEnvironment();
    ASSERT_TRUE(capped.ok()) << capped.message();
    std::printf("SIMD target: %s\n", CpuBackend::SimdTarget().c_str());
  }
};

[[maybe_unused]] ::testing::Environment* const kSimdTarget =
    ::testing::AddGlobalTestEnvironment(new SimdTargetEnvironment);

}  // namespace
}  // namespace focal
