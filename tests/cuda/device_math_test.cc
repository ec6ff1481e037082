// The shared FOCAL_HD formulas on the GPU against the same formulas on the host (ScalarOps
// <float> in both places, so they differ only by the device's libm: CUDA's expf/logf/log1pf/
// expm1f are within 2 ulp, and each result goes through ~10 of them: 1e-5 relative, with an
// absolute floor of 1e-6 × the largest value for results near 0). Skips with the reason where
// no device answers.
#include <gtest/gtest.h>

#include <cmath>
#include <random>

#include "focal/math.h"
#include "focal/math_ops.h"
#include "kernels/cuda/cuda_devices.h"
#include "tests/cuda/device_math.h"

namespace focal::cuda {
namespace {

void ExpectClose(const std::vector<float>& device, const std::vector<float>& host, const char* what) {
  ASSERT_EQ(device.size(), host.size()) << what;
  float scale = 0;
  for (float v : host) scale = std::max(scale, std::fabs(v));
  for (size_t i = 0; i < host.size(); ++i) {
    EXPECT_NEAR(device[i], host[i], 1e-5f * std::fabs(host[i]) + 1e-6f * scale) << what << "[" << i << "]";
  }
}

TEST(DeviceMath, AgreesWithTheHost) {
  const DeviceQuery query = QueryDevices();
  if (query.devices.empty()) GTEST_SKIP() << "no CUDA device answered (" << query.reason_if_none << ")";
  std::mt19937 rng(1);
  std::normal_distribution<float> normal(0, 4);
  std::uniform_real_distribution<float> uniform(0, 1);
  std::vector<float> x(4096), t(4096);
  for (size_t i = 0; i < x.size(); ++i) {
    x[i] = i < 8 ? std::vector<float>{88, -88, 100, -100, 1e4f, -1e4f, 0, 30}[i] : normal(rng);
    t[i] = i % 3 == 0 ? 1.0f : i % 3 == 1 ? 0.0f : uniform(rng);
  }
  for (float gamma : {0.0f, 0.5f, 2.0f, 5.0f}) {
    SCOPED_TRACE(gamma);
    DeviceMathResults device;
    std::string error;
    ASSERT_TRUE(EvaluateMathOnDevice(x, t, gamma, &device, &error)) << error;
    const ScalarOps<float> o;
    const math::Gamma<float> g = math::MakeGamma(o, gamma);
    DeviceMathResults host;
    for (size_t i = 0; i < x.size(); ++i) {
      const auto hard = math::SigmoidFocalHard(o, x[i], t[i] >= 0.5f ? 1.0f : -1.0f, 1.0f, g);
      const auto soft = math::SigmoidFocalSoft(o, x[i], t[i], 0.25f, 0.75f, g);
      const auto term = math::SoftmaxFocalTerm(o, -std::fabs(x[i]), g);
      host.hard_loss.push_back(hard.loss);
      host.hard_grad.push_back(hard.grad);
      host.soft_loss.push_back(soft.loss);
      host.soft_grad.push_back(soft.grad);
      host.term_f.push_back(term.f);
      host.term_g.push_back(term.g);
    }
    ExpectClose(device.hard_loss, host.hard_loss, "hard loss");
    ExpectClose(device.hard_grad, host.hard_grad, "hard gradient");
    ExpectClose(device.soft_loss, host.soft_loss, "soft loss");
    ExpectClose(device.soft_grad, host.soft_grad, "soft gradient");
    ExpectClose(device.term_f, host.term_f, "softmax term f");
    ExpectClose(device.term_g, host.term_g, "softmax term g");
  }
}

}  // namespace
}  // namespace focal::cuda
