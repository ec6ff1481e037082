// Tensors as the core sees them: a typed, C-contiguous view over bytes it does not own, and an
// owned tensor (results, the clients' tensors, the tests').
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/types/span.h"
#include "focal/dtype.h"

namespace focal {

using Shape = std::vector<int64_t>;

/// Number of elements of `shape`, or INVALID_ARGUMENT naming `field` when a dimension is
/// negative or the product overflows int64.
absl::StatusOr<int64_t> NumElements(const Shape& shape, absl::string_view field);

/// Row-major strides, in elements, of a C-contiguous tensor of `shape`.
Shape ContiguousStrides(const Shape& shape);

/// A read-only view of a C-contiguous little-endian tensor (the wire layout, read in place).
struct TensorView {
  DType dtype = DType::kFloat32;
  Shape shape;
  const void* data = nullptr;
  size_t size_bytes = 0;

  int64_t rank() const { return static_cast<int64_t>(shape.size()); }
  template <typename T>
  const T* As() const {
    return static_cast<const T*>(data);
  }
};

/// An owned tensor in the wire layout: a dtype, a shape and the little-endian, C-contiguous
/// bytes of focal.v1.Tensor. One type for the backends' results, the clients' tensors and the
/// tests'. Its bytes live in a std::string so that the wire layer can move them into (and out
/// of) a protobuf `bytes` field instead of copying a gradient that may be gigabytes.
struct HostTensor {
  DType dtype = DType::kFloat32;
  Shape shape;
  std::string bytes;  ///< size = NumElements() * DTypeSize(dtype) in a well-formed tensor

  /// `num_elements` zeroed elements of `dtype`.
  static HostTensor Allocate(DType dtype, Shape shape, int64_t num_elements);
  /// `num_elements` elements of `dtype` whose bytes are not written, for an output that its
  /// producer writes whole (the CPU backend's gradients and losses): zeroing them first is a
  /// pass over memory as long as the producer's own.
  static HostTensor AllocateUninitialized(DType dtype, Shape shape, int64_t num_elements);
  /// float32 values as float32.
  static HostTensor Float32(Shape shape, absl::Span<const float> values);
  /// float64 values as float64.
  static HostTensor Float64(Shape shape, absl::Span<const double> values);
  /// float32 values rounded to nearest even into float16 (as `.to(torch.float16)`).
  static HostTensor Float16(Shape shape, absl::Span<const float> values);
  /// float32 values rounded to nearest even into bfloat16 (as `.to(torch.bfloat16)`).
  static HostTensor BFloat16(Shape shape, absl::Span<const float> values);
  /// float32 values into any dtype: rounded to nearest even for the 16-bit floats, truncated
  /// toward zero for the integers.
  static HostTensor FromFloats(DType dtype, Shape shape, absl::Span<const float> values);
  static HostTensor Int64(Shape shape, absl::Span<const int64_t> values);
  static HostTensor Int32(Shape shape, absl::Span<const int32_t> values);
  static HostTensor UInt8(Shape shape, absl::Span<const uint8_t> values);

  void* data() { return bytes.data(); }
  const void* data() const { return bytes.data(); }
  size_t size_bytes() const { return bytes.size(); }
  /// Product of the shape (1 for a scalar).
  int64_t NumElements() const;
  /// Whether `bytes` holds exactly NumElements() elements of `dtype`.
  bool SizeMatchesShape() const;
  /// Every element as double: 16-bit floats widened exactly, integers converted.
  std::vector<double> ToDoubles() const;
  /// Every element as float32 (float64 rounded, integers converted).
  std::vector<float> ToFloats() const;
  /// A view of the bytes, valid while this tensor lives and is not modified.
  TensorView view() const { return TensorView{dtype, shape, bytes.data(), bytes.size()}; }
  /// The same as view() (the client's spelling).
  TensorView View() const { return view(); }
};

/// The name the backends give their results: the same type.
using OwnedTensor = HostTensor;

/// Reads element `i` of a floating-point view as double (used by validation and references,
/// never on a hot path).
double LoadAsDouble(const TensorView& view, int64_t i);

/// Reads element `i` of an integer view as int64.
int64_t LoadAsInt64(const TensorView& view, int64_t i);

/// The index of the first of a floating-point view's `n` elements for which `bad(value)` holds,
/// or -1: one dtype dispatch, then a plain loop (validation scans of whole request tensors).
template <class F>
int64_t FindFirstValue(const TensorView& view, int64_t n, const F& bad) {
  auto scan = [&](const auto* data, auto widen) -> int64_t {
    for (int64_t i = 0; i < n; ++i) {
      if (bad(widen(data[i]))) return i;
    }
    return -1;
  };
  switch (view.dtype) {
    case DType::kFloat32: return scan(view.As<float>(), [](float v) { return static_cast<double>(v); });
    case DType::kFloat64: return scan(view.As<double>(), [](double v) { return v; });
    case DType::kFloat16: return scan(view.As<uint16_t>(), [](uint16_t v) { return double{HalfToFloat(v)}; });
    case DType::kBFloat16: return scan(view.As<uint16_t>(), [](uint16_t v) { return double{BFloat16ToFloat(v)}; });
    default: return n > 0 ? 0 : -1;  // not a float tensor: callers check the dtype first
  }
}

/// The number of a floating-point view's elements in [begin, end) for which `pred(value)`
/// holds: one dtype dispatch, then a loop without an early exit, which the compiler vectorizes.
template <class F>
int64_t CountValues(const TensorView& view, int64_t begin, int64_t end, const F& pred) {
  auto count = [&](const auto* data, auto widen) -> int64_t {
    int64_t matching = 0;
    for (int64_t i = begin; i < end; ++i) matching += pred(widen(data[i])) ? 1 : 0;
    return matching;
  };
  switch (view.dtype) {
    case DType::kFloat32: return count(view.As<float>(), [](float v) { return v; });
    case DType::kFloat64: return count(view.As<double>(), [](double v) { return v; });
    case DType::kFloat16: return count(view.As<uint16_t>(), [](uint16_t v) { return HalfToFloat(v); });
    case DType::kBFloat16: return count(view.As<uint16_t>(), [](uint16_t v) { return BFloat16ToFloat(v); });
    default: return 0;  // not a float tensor: callers check the dtype first
  }
}

}  // namespace focal
