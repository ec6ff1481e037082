// Tensors as a client holds them: a dtype, a shape and the raw little-endian, C-contiguous
// bytes that travel on the wire (focal.v1.Tensor), owned.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/types/span.h"
#include "focal/dtype.h"
#include "focal/tensor.h"

namespace focal {

/// An owned host tensor in the wire layout.
struct HostTensor {
  DType dtype = DType::kFloat32;
  std::vector<int64_t> shape;
  std::string bytes;  ///< little-endian, C-contiguous; size = NumElements() * DTypeSize(dtype)

  /// float32 values as float32.
  static HostTensor Float32(std::vector<int64_t> shape, absl::Span<const float> values);
  /// float64 values as float64.
  static HostTensor Float64(std::vector<int64_t> shape, absl::Span<const double> values);
  /// float32 values rounded to nearest even into float16 (as `.to(torch.float16)`).
  static HostTensor Float16(std::vector<int64_t> shape, absl::Span<const float> values);
  /// float32 values rounded to nearest even into bfloat16 (as `.to(torch.bfloat16)`).
  static HostTensor BFloat16(std::vector<int64_t> shape, absl::Span<const float> values);
  /// float32 values into any dtype: rounded to nearest even for the 16-bit floats, truncated
  /// toward zero for the integers.
  static HostTensor FromFloats(DType dtype, std::vector<int64_t> shape, absl::Span<const float> values);
  static HostTensor Int64(std::vector<int64_t> shape, absl::Span<const int64_t> values);
  static HostTensor Int32(std::vector<int64_t> shape, absl::Span<const int32_t> values);
  static HostTensor UInt8(std::vector<int64_t> shape, absl::Span<const uint8_t> values);

  /// Product of the shape (1 for a scalar).
  int64_t NumElements() const;
  /// Whether `bytes` holds exactly NumElements() elements of `dtype`.
  bool SizeMatchesShape() const;
  /// Every element as double: 16-bit floats widened exactly, integers converted.
  std::vector<double> ToDoubles() const;
  /// Every element as float32 (float64 rounded, integers converted).
  std::vector<float> ToFloats() const;
  /// A view of the bytes, valid while this tensor lives and is not modified.
  TensorView View() const;
};

}  // namespace focal
