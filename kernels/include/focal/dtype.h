// Element types of the wire API and the host conversions for the 16-bit floats.
#pragma once

#include <cstdint>
#include <cstring>

#include "focal/hd.h"

namespace focal {

/// Element type of a tensor; the values mirror focal.v1.DataType minus its UNSPECIFIED zero.
enum class DType : uint8_t {
  kFloat32 = 1,
  kFloat16 = 2,
  kBFloat16 = 3,
  kFloat64 = 4,
  kInt32 = 5,
  kInt64 = 6,
  kUInt8 = 7,
};

/// Bytes per element.
FOCAL_HD constexpr size_t DTypeSize(DType t) {
  switch (t) {
    case DType::kFloat16:
    case DType::kBFloat16:
      return 2;
    case DType::kFloat32:
    case DType::kInt32:
      return 4;
    case DType::kFloat64:
    case DType::kInt64:
      return 8;
    case DType::kUInt8:
      return 1;
  }
  return 0;
}

/// Lower-case name as the wire API and PyTorch spell it ("float32", "bfloat16", ...).
const char* DTypeName(DType t);

constexpr bool IsFloating(DType t) {
  return t == DType::kFloat32 || t == DType::kFloat16 || t == DType::kBFloat16 ||
         t == DType::kFloat64;
}
constexpr bool IsInteger(DType t) {
  return t == DType::kInt32 || t == DType::kInt64 || t == DType::kUInt8;
}

FOCAL_HD uint32_t FloatBits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof u);
  return u;
}
FOCAL_HD float BitsToFloat(uint32_t u) {
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}

/// bfloat16 is the upper half of a float32: widening is exact.
FOCAL_HD float BFloat16ToFloat(uint16_t h) { return BitsToFloat(uint32_t{h} << 16); }

/// Round to nearest even, as PyTorch's `.to(torch.bfloat16)`; NaN stays a quiet NaN.
FOCAL_HD uint16_t FloatToBFloat16(float f) {
  const uint32_t u = FloatBits(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((u >> 16) | 0x0040u);
  const uint32_t rounding = 0x7fffu + ((u >> 16) & 1u);
  return static_cast<uint16_t>((u + rounding) >> 16);
}

/// IEEE binary16 to float32; exact for every input, subnormals included.
FOCAL_HD float HalfToFloat(uint16_t h) {
  const uint32_t sign = uint32_t{h & 0x8000u} << 16;
  const uint32_t exponent = (h >> 10) & 0x1fu;
  const uint32_t mantissa = h & 0x3ffu;
  if (exponent == 0x1f) return BitsToFloat(sign | 0x7f800000u | (mantissa << 13));
  if (exponent == 0) {
    // Subnormal or zero: mantissa · 2^-24, exactly representable in float32.
    const float magnitude = static_cast<float>(mantissa) * 5.9604644775390625e-8f;
    return sign ? -magnitude : magnitude;
  }
  return BitsToFloat(sign | ((exponent + 112u) << 23) | (mantissa << 13));
}

/// float32 to IEEE binary16 with round to nearest even (as `.to(torch.float16)`), overflow to
/// infinity, gradual underflow to subnormals.
FOCAL_HD uint16_t FloatToHalf(float f) {
  const uint32_t u = FloatBits(f);
  const uint16_t sign = static_cast<uint16_t>((u >> 16) & 0x8000u);
  const uint32_t abs = u & 0x7fffffffu;
  if (abs > 0x7f800000u) return static_cast<uint16_t>(sign | 0x7e00u);  // NaN
  if (abs >= 0x477ff000u) return static_cast<uint16_t>(sign | 0x7c00u);  // rounds past 65504
  if (abs < 0x38800000u) {
    // Below the smallest normal half (2^-14): add 0.5 so the FPU's own round-to-nearest-even
    // at the 2^-24 position does the rounding, then read the low mantissa bits.
    const float shifted = BitsToFloat(abs) + 0.5f;
    return static_cast<uint16_t>(sign | (FloatBits(shifted) - 0x3f000000u));
  }
  const uint32_t rounding = 0xfffu + ((abs >> 13) & 1u);
  return static_cast<uint16_t>(sign | ((abs - 0x38000000u + rounding) >> 13));
}

}  // namespace focal
