#include "focal/tensor.h"

#include <limits>

#include "absl/strings/str_cat.h"

namespace focal {

const char* DTypeName(DType t) {
  switch (t) {
    case DType::kFloat32: return "float32";
    case DType::kFloat16: return "float16";
    case DType::kBFloat16: return "bfloat16";
    case DType::kFloat64: return "float64";
    case DType::kInt32: return "int32";
    case DType::kInt64: return "int64";
    case DType::kUInt8: return "uint8";
  }
  return "unknown";
}

absl::StatusOr<int64_t> NumElements(const Shape& shape, absl::string_view field) {
  // The product of the non-zero dimensions must fit too: a [0, 2^62, 2^62] tensor is empty, but
  // the row and stride arithmetic over its other dimensions would overflow.
  int64_t nonzero = 1;
  bool empty = false;
  for (size_t i = 0; i < shape.size(); ++i) {
    if (shape[i] < 0) {
      return absl::InvalidArgumentError(
          absl::StrCat(field, ".shape[", i, "] is ", shape[i], "; dimensions must be >= 0"));
    }
    if (shape[i] == 0) {
      empty = true;
      continue;
    }
    if (nonzero > std::numeric_limits<int64_t>::max() / shape[i]) {
      return absl::InvalidArgumentError(
          absl::StrCat(field, ".shape overflows int64 at dimension ", i));
    }
    nonzero *= shape[i];
  }
  return empty ? 0 : nonzero;
}

Shape ContiguousStrides(const Shape& shape) {
  Shape strides(shape.size(), 1);
  for (size_t i = shape.size(); i-- > 1;) strides[i - 1] = strides[i] * shape[i];
  return strides;
}

OwnedTensor OwnedTensor::Allocate(DType dtype, Shape shape, int64_t num_elements) {
  OwnedTensor t;
  t.dtype = dtype;
  t.shape = std::move(shape);
  t.size_bytes = static_cast<size_t>(num_elements) * DTypeSize(dtype);
  // std::string zero-fills (C++17 has no uninitialised resize): one write pass, repaid by the
  // copy the server saves when it moves these bytes into its response.
  t.bytes.resize(t.size_bytes);
  return t;
}

double LoadAsDouble(const TensorView& view, int64_t i) {
  switch (view.dtype) {
    case DType::kFloat32: return view.As<float>()[i];
    case DType::kFloat64: return view.As<double>()[i];
    case DType::kFloat16: return HalfToFloat(view.As<uint16_t>()[i]);
    case DType::kBFloat16: return BFloat16ToFloat(view.As<uint16_t>()[i]);
    case DType::kInt32: return view.As<int32_t>()[i];
    case DType::kInt64: return static_cast<double>(view.As<int64_t>()[i]);
    case DType::kUInt8: return view.As<uint8_t>()[i];
  }
  return 0.0;
}

int64_t LoadAsInt64(const TensorView& view, int64_t i) {
  switch (view.dtype) {
    case DType::kInt32: return view.As<int32_t>()[i];
    case DType::kInt64: return view.As<int64_t>()[i];
    case DType::kUInt8: return view.As<uint8_t>()[i];
    default: return static_cast<int64_t>(LoadAsDouble(view, i));
  }
}

}  // namespace focal
