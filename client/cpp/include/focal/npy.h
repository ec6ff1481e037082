// NumPy .npy files (https://numpy.org/neps/nep-0001-npy-format.html) as HostTensors.
//
// Read: format versions 1.0, 2.0 and 3.0, C order, dtypes '<f4' '<f2' '<f8' '<i4' '<i8' '|u1'.
// Written: format 1.0 (2.0 only when the header would not fit), C order.
//
// bfloat16: NumPy has no bfloat16 dtype, and a '<u2' file is not taken for one. The convention
// is that of ml_dtypes' `x.view(np.uint16)`: the raw bfloat16 bits stored as '<u2'. Reading
// such a file as bfloat16 takes an explicit request (ReadNpyTensor's `as`), and a bfloat16
// tensor is written as '<u2' bits (read it back with `np.load(f).view(ml_dtypes.bfloat16)`).
#pragma once

#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "focal/host_tensor.h"

namespace focal {

/// A .npy file's contents as stored: its dtype string, shape and raw bytes.
struct NpyArray {
  std::string descr;  ///< e.g. "<f4"
  std::vector<int64_t> shape;
  std::string bytes;
};

/// Reads `path`. Errors name the file: NOT_FOUND when it cannot be opened, INVALID_ARGUMENT
/// when it is not a well-formed C-order .npy.
absl::StatusOr<NpyArray> ReadNpy(const std::string& path);

/// Writes `array` to `path` (format 1.0).
absl::Status WriteNpy(const std::string& path, const NpyArray& array);

/// The .npy dtype string of `dtype` ("<f4", ...; bfloat16 is "<u2", see above).
const char* NpyDescr(DType dtype);

/// Reads `path` as a tensor. Without `as`, the file's dtype must be one of the wire's. With
/// `as`: a '<u2' file is reinterpreted as bfloat16 bits when `as` is bfloat16, and a floating
/// file is converted to another floating `as` (through float32, rounded to nearest even).
absl::StatusOr<HostTensor> ReadNpyTensor(const std::string& path, std::optional<DType> as = std::nullopt);

/// Writes `tensor` to `path` (bfloat16 as '<u2' bits).
absl::Status WriteNpyTensor(const std::string& path, const HostTensor& tensor);

}  // namespace focal
