// Small helpers for building LossJobs from vectors in tests.
#pragma once

#include <cstring>
#include <random>
#include <vector>

#include "focal/dtype.h"
#include "focal/job.h"
#include "focal/tensor.h"

namespace focal::testing {

/// The core's owned tensor (focal/tensor.h), under the name the tests have always used.
using HostTensor = focal::HostTensor;

/// Encodes `values` as `dtype` (16-bit floats rounded to nearest even).
inline HostTensor MakeTensor(DType dtype, Shape shape, const std::vector<double>& values) {
  HostTensor t = HostTensor::Allocate(dtype, std::move(shape), static_cast<int64_t>(values.size()));
  for (size_t i = 0; i < values.size(); ++i) {
    char* at = t.bytes.data() + i * DTypeSize(dtype);
    auto put = [&](auto v) { std::memcpy(at, &v, sizeof v); };
    switch (dtype) {
      case DType::kFloat32: put(static_cast<float>(values[i])); break;
      case DType::kFloat64: put(values[i]); break;
      case DType::kFloat16: put(FloatToHalf(static_cast<float>(values[i]))); break;
      case DType::kBFloat16: put(FloatToBFloat16(static_cast<float>(values[i]))); break;
      case DType::kInt32: put(static_cast<int32_t>(values[i])); break;
      case DType::kInt64: put(static_cast<int64_t>(values[i])); break;
      case DType::kUInt8: put(static_cast<uint8_t>(values[i])); break;
    }
  }
  return t;
}

/// The values a tensor actually holds, as doubles (after any rounding of MakeTensor).
inline std::vector<double> Values(const TensorView& v) {
  std::vector<double> out(v.size_bytes / DTypeSize(v.dtype));
  for (size_t i = 0; i < out.size(); ++i) out[i] = LoadAsDouble(v, static_cast<int64_t>(i));
  return out;
}

inline std::vector<double> RandomNormal(size_t n, double stddev, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<double> dist(0, stddev);
  std::vector<double> v(n);
  for (double& x : v) x = static_cast<float>(dist(rng));  // float32-representable
  return v;
}

inline std::vector<double> RandomUniform(size_t n, double lo, double hi, uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<double> dist(lo, hi);
  std::vector<double> v(n);
  for (double& x : v) x = static_cast<float>(dist(rng));
  return v;
}

inline std::vector<double> RandomClasses(size_t n, int64_t classes, uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_int_distribution<int64_t> dist(0, classes - 1);
  std::vector<double> v(n);
  for (double& x : v) x = static_cast<double>(dist(rng));
  return v;
}

}  // namespace focal::testing
