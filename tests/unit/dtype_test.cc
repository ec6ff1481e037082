// Host conversions of the 16-bit floats against the bit-exact definitions: every binary16
// pattern round-trips; float → half/bfloat16 rounds to nearest even like PyTorch's .to().
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <random>

#include "focal/dtype.h"
#include "focal/tensor.h"

namespace focal {
namespace {

TEST(Half, EveryPatternWidensExactlyAndRoundTrips) {
  for (uint32_t h = 0; h < 65536; ++h) {
    const float f = HalfToFloat(static_cast<uint16_t>(h));
    const bool nan = (h & 0x7c00u) == 0x7c00u && (h & 0x3ffu) != 0;
    if (nan) {
      EXPECT_TRUE(std::isnan(f));
      EXPECT_EQ(FloatToHalf(f) & 0x7e00u, 0x7e00u);
      continue;
    }
    // Exact value: sign · mantissa · 2^(exponent - 25) from the definition of binary16.
    const int exponent = (h >> 10) & 0x1f;
    const int mantissa = h & 0x3ff;
    double want = exponent == 0 ? std::ldexp(mantissa, -24)
                  : exponent == 31 ? std::numeric_limits<double>::infinity()
                                   : std::ldexp(1024 + mantissa, exponent - 25);
    if (h & 0x8000u) want = -want;
    ASSERT_EQ(static_cast<double>(f), want) << std::hex << h;
    ASSERT_EQ(FloatToHalf(f), h) << std::hex << h;
  }
}

/// Nearest representable of `values` to x, ties to the one with an even last bit.
template <class Decode>
uint16_t NearestEven(float x, Decode decode) {
  uint16_t best = 0;
  double best_err = INFINITY;
  for (uint32_t h = 0; h < 65536; ++h) {
    const float v = decode(static_cast<uint16_t>(h));
    if (std::isnan(v)) continue;
    const double err = std::fabs(static_cast<double>(v) - x);
    if (err < best_err || (err == best_err && (h & 1u) == 0 && std::signbit(v) == std::signbit(x))) {
      best = static_cast<uint16_t>(h);
      best_err = err;
    }
  }
  return best;
}

TEST(Half, RoundsToNearestEvenIncludingSubnormalsAndOverflow) {
  std::mt19937 rng(1);
  std::vector<float> samples = {0.1f, 1.0f / 3, 65504.0f, 65519.0f, 65520.0f, 1e-5f, 3e-8f, 2.98e-8f, 6e-8f,
                                -0.3f, 1.00048828125f, 1.00146484375f};
  std::uniform_real_distribution<float> log_mag(-26, 17);
  for (int i = 0; i < 300; ++i) samples.push_back((i % 2 ? -1 : 1) * std::exp2(log_mag(rng)));
  for (float x : samples) {
    const uint16_t want = std::fabs(x) >= 65520.0f ? (std::signbit(x) ? 0xfc00 : 0x7c00) : NearestEven(x, HalfToFloat);
    EXPECT_EQ(FloatToHalf(x), want) << x;
  }
}

TEST(BFloat16, RoundsToNearestEven) {
  std::mt19937 rng(2);
  std::uniform_real_distribution<float> log_mag(-120, 120);
  std::vector<float> samples = {1.00390625f, 1.01171875f, 0.1f, -3.14159f, 1e-39f};
  for (int i = 0; i < 300; ++i) samples.push_back((i % 2 ? -1 : 1) * std::exp2(log_mag(rng)));
  for (float x : samples) {
    EXPECT_EQ(FloatToBFloat16(x), NearestEven(x, BFloat16ToFloat)) << x;
  }
  EXPECT_TRUE(std::isnan(BFloat16ToFloat(FloatToBFloat16(std::numeric_limits<float>::quiet_NaN()))));
}

// AllocateUninitialized gives exactly the bytes asked for, at every size around std::string's
// 15-byte inline buffer and its first growth (libstdc++ 12's resize_and_overwrite hands its
// operation the grown capacity, which must not become the length).
TEST(HostTensor, AllocateUninitializedHasExactlyItsBytes) {
  for (int64_t n : {0, 1, 7, 8, 14, 15, 16, 20, 29, 30, 31, 1000, 1 << 20}) {
    for (DType dtype : {DType::kFloat16, DType::kFloat32, DType::kFloat64}) {
      const HostTensor t = HostTensor::AllocateUninitialized(dtype, {n}, n);
      EXPECT_EQ(t.size_bytes(), static_cast<size_t>(n) * DTypeSize(dtype)) << n << " elements";
      EXPECT_EQ(t.bytes.c_str()[t.bytes.size()], '\0');  // still a well-formed std::string
    }
  }
}

}  // namespace
}  // namespace focal
