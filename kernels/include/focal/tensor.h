// Tensors as the core sees them: a typed, C-contiguous view over bytes it does not own, and an
// owned buffer for results.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
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

/// An owned result tensor. Its bytes live in a std::string so that the wire layer can move them
/// into a protobuf `bytes` field instead of copying a gradient that may be gigabytes.
struct OwnedTensor {
  DType dtype = DType::kFloat32;
  Shape shape;
  std::string bytes;
  size_t size_bytes = 0;

  static OwnedTensor Allocate(DType dtype, Shape shape, int64_t num_elements);
  void* data() { return bytes.data(); }
  const void* data() const { return bytes.data(); }
  TensorView view() const { return TensorView{dtype, shape, bytes.data(), size_bytes}; }
};

/// Reads element `i` of a floating-point view as double (used by validation and references,
/// never on a hot path).
double LoadAsDouble(const TensorView& view, int64_t i);

/// Reads element `i` of an integer view as int64.
int64_t LoadAsInt64(const TensorView& view, int64_t i);

}  // namespace focal
