#include "focal/host_tensor.h"

#include <cstring>

namespace focal {
namespace {

template <typename T>
HostTensor Pack(DType dtype, std::vector<int64_t> shape, absl::Span<const T> values) {
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

HostTensor HostTensor::Float32(std::vector<int64_t> shape, absl::Span<const float> values) {
  return Pack(DType::kFloat32, std::move(shape), values);
}
HostTensor HostTensor::Float64(std::vector<int64_t> shape, absl::Span<const double> values) {
  return Pack(DType::kFloat64, std::move(shape), values);
}
HostTensor HostTensor::Int64(std::vector<int64_t> shape, absl::Span<const int64_t> values) {
  return Pack(DType::kInt64, std::move(shape), values);
}
HostTensor HostTensor::Int32(std::vector<int64_t> shape, absl::Span<const int32_t> values) {
  return Pack(DType::kInt32, std::move(shape), values);
}
HostTensor HostTensor::UInt8(std::vector<int64_t> shape, absl::Span<const uint8_t> values) {
  return Pack(DType::kUInt8, std::move(shape), values);
}

HostTensor HostTensor::Float16(std::vector<int64_t> shape, absl::Span<const float> values) {
  std::vector<uint16_t> bits(values.size());
  for (size_t i = 0; i < values.size(); ++i) bits[i] = FloatToHalf(values[i]);
  HostTensor t = Pack(DType::kFloat16, std::move(shape), absl::Span<const uint16_t>(bits));
  return t;
}

HostTensor HostTensor::BFloat16(std::vector<int64_t> shape, absl::Span<const float> values) {
  std::vector<uint16_t> bits(values.size());
  for (size_t i = 0; i < values.size(); ++i) bits[i] = FloatToBFloat16(values[i]);
  return Pack(DType::kBFloat16, std::move(shape), absl::Span<const uint16_t>(bits));
}

HostTensor HostTensor::FromFloats(DType dtype, std::vector<int64_t> shape, absl::Span<const float> values) {
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
  for (int64_t d : shape) {
    if (d < 0) return false;
  }
  return bytes.size() == static_cast<size_t>(NumElements()) * DTypeSize(dtype);
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

TensorView HostTensor::View() const { return TensorView{dtype, shape, bytes.data(), bytes.size()}; }

}  // namespace focal
