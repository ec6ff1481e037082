#include "focal/tensor.h"

#include <cstring>
#include <limits>

#include "absl/strings/str_cat.h"
#include "focal/uninitialized_string.h"

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

namespace {

template <typename T>
HostTensor Pack(DType dtype, Shape shape, absl::Span<const T> values) {
  HostTensor t{dtype, std::move(shape), std::string(values.size() * sizeof(T), '\0')};
  if (!values.empty()) std::memcpy(t.bytes.data(), values.data(), t.bytes.size());
  return t;
}

template <typename T>
T Load(const std::string& bytes, size_t i) {
  T v;
  std::memcpy(&v, bytes.data() + i * sizeof(T), sizeof(T));
  return v;
}

}  // namespace

HostTensor HostTensor::Allocate(DType dtype, Shape shape, int64_t num_elements) {
  HostTensor t;
  t.dtype = dtype;
  t.shape = std::move(shape);
  // std::string zero-fills (C++17 has no uninitialised resize): one write pass, repaid by the
  // copy the server saves when it moves these bytes into its response.
  t.bytes.resize(static_cast<size_t>(num_elements) * DTypeSize(dtype));
  return t;
}

HostTensor HostTensor::AllocateUninitialized(DType dtype, Shape shape, int64_t num_elements) {
  HostTensor t;
  t.dtype = dtype;
  t.shape = std::move(shape);
  t.bytes = UninitializedString(static_cast<size_t>(num_elements) * DTypeSize(dtype));
  return t;
}

HostTensor HostTensor::Float32(Shape shape, absl::Span<const float> values) {
  return Pack(DType::kFloat32, std::move(shape), values);
}
HostTensor HostTensor::Float64(Shape shape, absl::Span<const double> values) {
  return Pack(DType::kFloat64, std::move(shape), values);
}
HostTensor HostTensor::Int64(Shape shape, absl::Span<const int64_t> values) {
  return Pack(DType::kInt64, std::move(shape), values);
}
HostTensor HostTensor::Int32(Shape shape, absl::Span<const int32_t> values) {
  return Pack(DType::kInt32, std::move(shape), values);
}
HostTensor HostTensor::UInt8(Shape shape, absl::Span<const uint8_t> values) {
  return Pack(DType::kUInt8, std::move(shape), values);
}

HostTensor HostTensor::Float16(Shape shape, absl::Span<const float> values) {
  std::vector<uint16_t> bits(values.size());
  for (size_t i = 0; i < values.size(); ++i) bits[i] = FloatToHalf(values[i]);
  return Pack(DType::kFloat16, std::move(shape), absl::Span<const uint16_t>(bits));
}

HostTensor HostTensor::BFloat16(Shape shape, absl::Span<const float> values) {
  std::vector<uint16_t> bits(values.size());
  for (size_t i = 0; i < values.size(); ++i) bits[i] = FloatToBFloat16(values[i]);
  return Pack(DType::kBFloat16, std::move(shape), absl::Span<const uint16_t>(bits));
}

HostTensor HostTensor::FromFloats(DType dtype, Shape shape, absl::Span<const float> values) {
  switch (dtype) {
    case DType::kFloat16: return Float16(std::move(shape), values);
    case DType::kBFloat16: return BFloat16(std::move(shape), values);
    case DType::kFloat64: return Float64(std::move(shape), std::vector<double>(values.begin(), values.end()));
    case DType::kFloat32: return Float32(std::move(shape), values);
    case DType::kInt32: return Int32(std::move(shape), std::vector<int32_t>(values.begin(), values.end()));
    case DType::kInt64: return Int64(std::move(shape), std::vector<int64_t>(values.begin(), values.end()));
    case DType::kUInt8: return UInt8(std::move(shape), std::vector<uint8_t>(values.begin(), values.end()));
  }
  return Float32(std::move(shape), values);
}

int64_t HostTensor::NumElements() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

bool HostTensor::SizeMatchesShape() const {
  const absl::StatusOr<int64_t> n = focal::NumElements(shape, "");
  return n.ok() && bytes.size() / DTypeSize(dtype) == static_cast<size_t>(*n) && bytes.size() % DTypeSize(dtype) == 0;
}

std::vector<double> HostTensor::ToDoubles() const {
  const size_t n = bytes.size() / DTypeSize(dtype);
  std::vector<double> out(n);
  for (size_t i = 0; i < n; ++i) {
    switch (dtype) {
      case DType::kFloat32: out[i] = Load<float>(bytes, i); break;
      case DType::kFloat64: out[i] = Load<double>(bytes, i); break;
      case DType::kFloat16: out[i] = HalfToFloat(Load<uint16_t>(bytes, i)); break;
      case DType::kBFloat16: out[i] = BFloat16ToFloat(Load<uint16_t>(bytes, i)); break;
      case DType::kInt32: out[i] = Load<int32_t>(bytes, i); break;
      case DType::kInt64: out[i] = static_cast<double>(Load<int64_t>(bytes, i)); break;
      case DType::kUInt8: out[i] = Load<uint8_t>(bytes, i); break;
    }
  }
  return out;
}

std::vector<float> HostTensor::ToFloats() const {
  const std::vector<double> wide = ToDoubles();
  return std::vector<float>(wide.begin(), wide.end());
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
