// Device-side loads and stores of the wire dtypes: widened to the compute type on load (float,
// or double for float64), rounded to nearest even on store, in 16-byte vectors where a run of
// elements allows it. Included by the kernel translation units only.
#pragma once

#include <cstdint>
#include <cstring>
#include <type_traits>

#include "focal/dtype.h"
#include "kernels/cuda/device_api.h"

namespace focal::cuda {

/// What a dtype's elements are computed in: float for 32- and 16-bit floats, double for float64.
template <DType kDT>
using ComputeT = std::conditional_t<kDT == DType::kFloat64, double, float>;

/// Bytes of one element of a floating dtype, at compile time.
template <DType kDT>
constexpr int kElementBytes = static_cast<int>(DTypeSize(kDT));

/// Elements of `kDT` in one 16-byte vector.
template <DType kDT>
constexpr int kVectorElements = 16 / kElementBytes<kDT>;

template <class T>
__device__ __forceinline__ T WidenBits(uint64_t bits, DType dt) {
  switch (dt) {
    case DType::kFloat32: return static_cast<T>(__uint_as_float(static_cast<uint32_t>(bits)));
    case DType::kFloat16:
      return static_cast<T>(__half2float(__ushort_as_half(static_cast<unsigned short>(bits))));
    case DType::kBFloat16: return static_cast<T>(__uint_as_float(static_cast<uint32_t>(bits) << 16));
    case DType::kFloat64: return static_cast<T>(__longlong_as_double(static_cast<long long>(bits)));
    default: return T(0);
  }
}

/// Element i of a floating tensor of dtype `dt`, widened to T. With a compile-time dt the switch
/// folds away.
template <class T>
__device__ __forceinline__ T LoadAs(const void* base, DType dt, int64_t i) {
  switch (dt) {
    case DType::kFloat32: return static_cast<T>(__ldg(static_cast<const float*>(base) + i));
    case DType::kFloat64: return static_cast<T>(__ldg(static_cast<const double*>(base) + i));
    case DType::kFloat16:
    case DType::kBFloat16:
      return WidenBits<T>(__ldg(static_cast<const unsigned short*>(base) + i), dt);
    default: return T(0);
  }
}

/// The bits of v in dtype `dt`, rounded to nearest even (double goes through float first, as the
/// CPU backend does).
template <class T>
__device__ __forceinline__ uint64_t NarrowBits(T v, DType dt) {
  switch (dt) {
    case DType::kFloat32: return __float_as_uint(static_cast<float>(v));
    case DType::kFloat16: return __half_as_ushort(__float2half_rn(static_cast<float>(v)));
    case DType::kBFloat16: return __bfloat16_as_ushort(__float2bfloat16_rn(static_cast<float>(v)));
    case DType::kFloat64: return static_cast<uint64_t>(__double_as_longlong(static_cast<double>(v)));
    default: return 0;
  }
}

template <class T>
__device__ __forceinline__ void StoreAs(void* base, DType dt, int64_t i, T v) {
  const uint64_t bits = NarrowBits(v, dt);
  switch (DTypeSize(dt)) {
    case 2: static_cast<unsigned short*>(base)[i] = static_cast<unsigned short>(bits); return;
    case 4: static_cast<uint32_t*>(base)[i] = static_cast<uint32_t>(bits); return;
    case 8: static_cast<uint64_t*>(base)[i] = bits; return;
    default: return;
  }
}

/// kBytes of raw memory at an address aligned to min(kBytes, 16), in the widest accesses that
/// fit. The local side goes through memcpy, never a pointer cast: reading a float16 array as
/// uint4 would break strict aliasing, and the compiler may then reorder or drop the copies (the
/// host emulation caught exactly that); memcpy between registers compiles to moves.
template <int kBytes>
__device__ __forceinline__ void LoadRaw(const void* src, void* dst) {
  if constexpr (kBytes % 16 == 0) {
#pragma unroll
    for (int k = 0; k < kBytes / 16; ++k) {
      const uint4 v = __ldg(static_cast<const uint4*>(src) + k);
      memcpy(static_cast<char*>(dst) + 16 * k, &v, 16);
    }
  } else if constexpr (kBytes == 8) {
    const uint2 v = __ldg(static_cast<const uint2*>(src));
    memcpy(dst, &v, 8);
  } else if constexpr (kBytes == 4) {
    const unsigned int v = __ldg(static_cast<const unsigned int*>(src));
    memcpy(dst, &v, 4);
  } else {
    static_assert(kBytes == 2, "runs of 2, 4, 8 or 16k bytes");
    const unsigned short v = __ldg(static_cast<const unsigned short*>(src));
    memcpy(dst, &v, 2);
  }
}

template <int kBytes>
__device__ __forceinline__ void StoreRaw(const void* src, void* dst) {
  if constexpr (kBytes % 16 == 0) {
#pragma unroll
    for (int k = 0; k < kBytes / 16; ++k) {
      uint4 v;
      memcpy(&v, static_cast<const char*>(src) + 16 * k, 16);
      static_cast<uint4*>(dst)[k] = v;
    }
  } else if constexpr (kBytes == 8) {
    uint2 v;
    memcpy(&v, src, 8);
    *static_cast<uint2*>(dst) = v;
  } else if constexpr (kBytes == 4) {
    unsigned int v;
    memcpy(&v, src, 4);
    *static_cast<unsigned int*>(dst) = v;
  } else {
    static_assert(kBytes == 2, "runs of 2, 4, 8 or 16k bytes");
    unsigned short v;
    memcpy(&v, src, 2);
    *static_cast<unsigned short*>(dst) = v;
  }
}

/// Elements [i, i + kN) of a floating tensor, widened to T; i must be a multiple of kN and the
/// buffer 16-byte aligned (every device buffer of the backend is), so each run is aligned to its
/// own size.
template <int kN, class T>
__device__ __forceinline__ void LoadRun(const void* base, DType dt, int64_t i, T* out) {
  switch (dt) {
    case DType::kFloat32: {
      alignas(16) float raw[kN];
      LoadRaw<4 * kN>(static_cast<const float*>(base) + i, raw);
#pragma unroll
      for (int k = 0; k < kN; ++k) out[k] = static_cast<T>(raw[k]);
      return;
    }
    case DType::kFloat64: {
      alignas(16) double raw[kN];
      LoadRaw<8 * kN>(static_cast<const double*>(base) + i, raw);
#pragma unroll
      for (int k = 0; k < kN; ++k) out[k] = static_cast<T>(raw[k]);
      return;
    }
    case DType::kFloat16:
    case DType::kBFloat16: {
      alignas(16) unsigned short raw[kN];
      LoadRaw<2 * kN>(static_cast<const unsigned short*>(base) + i, raw);
#pragma unroll
      for (int k = 0; k < kN; ++k) out[k] = WidenBits<T>(raw[k], dt);
      return;
    }
    default:
#pragma unroll
      for (int k = 0; k < kN; ++k) out[k] = T(0);
  }
}

/// Stores v[0..kN) to elements [i, i + kN) of an output of dtype `dt`; alignment as LoadRun.
template <int kN, class T>
__device__ __forceinline__ void StoreRun(void* base, DType dt, int64_t i, const T* v) {
  switch (DTypeSize(dt)) {
    case 2: {
      alignas(16) unsigned short raw[kN];
#pragma unroll
      for (int k = 0; k < kN; ++k) raw[k] = static_cast<unsigned short>(NarrowBits(v[k], dt));
      StoreRaw<2 * kN>(raw, static_cast<unsigned short*>(base) + i);
      return;
    }
    case 4: {
      alignas(16) uint32_t raw[kN];
#pragma unroll
      for (int k = 0; k < kN; ++k) raw[k] = static_cast<uint32_t>(NarrowBits(v[k], dt));
      StoreRaw<4 * kN>(raw, static_cast<uint32_t*>(base) + i);
      return;
    }
    case 8: {
      alignas(16) uint64_t raw[kN];
#pragma unroll
      for (int k = 0; k < kN; ++k) raw[k] = NarrowBits(v[k], dt);
      StoreRaw<8 * kN>(raw, static_cast<uint64_t*>(base) + i);
      return;
    }
    default: return;
  }
}

/// A class-index target widened to int64; -1 when the job has an ignore_index and it equals it.
__device__ __forceinline__ int64_t LoadClassIndex(const void* targets, DType dt, int64_t i, bool has_ignore_index,
                                                  int64_t ignore_index) {
  int64_t y = 0;
  switch (dt) {
    case DType::kInt32: y = __ldg(static_cast<const int*>(targets) + i); break;
    case DType::kInt64: y = __ldg(static_cast<const long long*>(targets) + i); break;
    case DType::kUInt8: y = __ldg(static_cast<const unsigned char*>(targets) + i); break;
    default: break;
  }
  return has_ignore_index && y == ignore_index ? -1 : y;
}

}  // namespace focal::cuda
