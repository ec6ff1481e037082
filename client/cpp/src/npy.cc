#include "focal/npy.h"

#include <cerrno>
#include <cstring>
#include <fstream>
#include <iterator>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"

namespace focal {
namespace {

constexpr char kMagic[] = "\x93NUMPY";
constexpr size_t kMagicSize = 6;

absl::Status Malformed(const std::string& path, absl::string_view why) {
  return absl::InvalidArgumentError(absl::StrCat(path, ": not a valid .npy file: ", why));
}

/// The value of `key` in the header dict: the text after "'key':" up to the next top-level
/// comma or the closing brace (a shape tuple's commas are inside parentheses).
std::optional<std::string> DictValue(absl::string_view dict, absl::string_view key) {
  for (const char quote : {'\'', '"'}) {
    const std::string needle = absl::StrCat(std::string(1, quote), key, std::string(1, quote));
    size_t at = dict.find(needle);
    if (at == absl::string_view::npos) continue;
    at = dict.find(':', at + needle.size());
    if (at == absl::string_view::npos) return std::nullopt;
    ++at;
    int depth = 0;
    size_t end = at;
    for (; end < dict.size(); ++end) {
      const char c = dict[end];
      if (c == '(') ++depth;
      if (c == ')') --depth;
      if (depth == 0 && (c == ',' || c == '}')) break;
    }
    return std::string(absl::StripAsciiWhitespace(dict.substr(at, end - at)));
  }
  return std::nullopt;
}

std::optional<DType> DTypeOfDescr(absl::string_view descr) {
  if (descr == "<f4") return DType::kFloat32;
  if (descr == "<f2") return DType::kFloat16;
  if (descr == "<f8") return DType::kFloat64;
  if (descr == "<i4") return DType::kInt32;
  if (descr == "<i8") return DType::kInt64;
  if (descr == "|u1" || descr == "<u1") return DType::kUInt8;
  return std::nullopt;
}

/// Item size of a descr this reader knows, including '<u2' (bfloat16 bits).
size_t ItemSize(absl::string_view descr) {
  if (descr == "<u2") return 2;
  const std::optional<DType> t = DTypeOfDescr(descr);
  return t ? DTypeSize(*t) : 0;
}

std::string ShapeTuple(const std::vector<int64_t>& shape) {
  if (shape.size() == 1) return absl::StrCat("(", shape[0], ",)");
  return absl::StrCat("(", absl::StrJoin(shape, ", "), ")");
}

}  // namespace

const char* NpyDescr(DType dtype) {
  switch (dtype) {
    case DType::kFloat32: return "<f4";
    case DType::kFloat16: return "<f2";
    case DType::kBFloat16: return "<u2";
    case DType::kFloat64: return "<f8";
    case DType::kInt32: return "<i4";
    case DType::kInt64: return "<i8";
    case DType::kUInt8: return "|u1";
  }
  return "";
}

absl::StatusOr<NpyArray> ReadNpy(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat(path, ": cannot open the file (", std::strerror(errno), ")"));
  std::string file((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  if (in.bad()) return absl::DataLossError(absl::StrCat(path, ": read error"));
  if (file.size() < kMagicSize + 4 || file.compare(0, kMagicSize, kMagic, kMagicSize) != 0) {
    return Malformed(path, "it does not start with the \\x93NUMPY magic");
  }
  const int major = static_cast<unsigned char>(file[kMagicSize]);
  size_t header_len = 0, header_start = 0;
  if (major == 1) {
    header_len = static_cast<unsigned char>(file[8]) | static_cast<size_t>(static_cast<unsigned char>(file[9])) << 8;
    header_start = 10;
  } else if (major == 2 || major == 3) {
    if (file.size() < 12) return Malformed(path, "truncated header");
    for (int i = 3; i >= 0; --i) header_len = header_len << 8 | static_cast<unsigned char>(file[8 + i]);
    header_start = 12;
  } else {
    return Malformed(path, absl::StrCat("format version ", major, ".x is not supported (1.0, 2.0, 3.0 are)"));
  }
  if (file.size() < header_start + header_len) return Malformed(path, "truncated header");
  const absl::string_view header(file.data() + header_start, header_len);

  NpyArray array;
  const std::optional<std::string> descr = DictValue(header, "descr");
  const std::optional<std::string> fortran = DictValue(header, "fortran_order");
  const std::optional<std::string> shape = DictValue(header, "shape");
  if (!descr || !fortran || !shape) return Malformed(path, "the header lacks descr, fortran_order or shape");
  if (descr->size() < 2 || ((*descr)[0] != '\'' && (*descr)[0] != '"')) {
    return Malformed(path, absl::StrCat("descr ", *descr, " is not a simple dtype"));
  }
  array.descr = descr->substr(1, descr->size() - 2);
  if (*fortran != "False") {
    return absl::InvalidArgumentError(absl::StrCat(path, ": Fortran-order arrays are not supported; save with "
                                                         "np.save(f, np.ascontiguousarray(x))"));
  }
  if (shape->size() < 2 || shape->front() != '(' || shape->back() != ')') {
    return Malformed(path, absl::StrCat("shape ", *shape, " is not a tuple"));
  }
  for (absl::string_view dim : absl::StrSplit(absl::string_view(*shape).substr(1, shape->size() - 2), ',')) {
    dim = absl::StripAsciiWhitespace(dim);
    if (dim.empty()) continue;  // the trailing comma of a 1-tuple
    int64_t d;
    if (!absl::SimpleAtoi(dim, &d) || d < 0) return Malformed(path, absl::StrCat("shape ", *shape, " is not valid"));
    array.shape.push_back(d);
  }
  const size_t item = ItemSize(array.descr);
  if (item == 0) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": dtype '", array.descr,
                                                   "' is not supported (float32 '<f4', float16 '<f2', float64 '<f8', "
                                                   "int32 '<i4', int64 '<i8', uint8 '|u1'; bfloat16 as '<u2' bits)"));
  }
  size_t count = 1;
  for (int64_t d : array.shape) count *= static_cast<size_t>(d);
  const size_t data_start = header_start + header_len;
  if (file.size() - data_start != count * item) {
    return Malformed(path, absl::StrCat("shape ", ShapeTuple(array.shape), " of '", array.descr, "' needs ", count * item,
                                        " bytes of data; the file has ", file.size() - data_start));
  }
  array.bytes = file.substr(data_start);
  return array;
}

absl::Status WriteNpy(const std::string& path, const NpyArray& array) {
  std::string dict = absl::StrCat("{'descr': '", array.descr, "', 'fortran_order': False, 'shape': ",
                                  ShapeTuple(array.shape), ", }");
  // Pad with spaces and end with a newline so that the data starts on a 64-byte boundary.
  const bool v1 = dict.size() + 1 + 10 <= 65535;
  const size_t prefix = v1 ? 10 : 12;
  dict.append((64 - (prefix + dict.size() + 1) % 64) % 64, ' ');
  dict.push_back('\n');
  std::string out(kMagic, kMagicSize);
  out.push_back(static_cast<char>(v1 ? 1 : 2));
  out.push_back(0);
  const size_t n = dict.size();
  out.push_back(static_cast<char>(n & 0xff));
  out.push_back(static_cast<char>((n >> 8) & 0xff));
  if (!v1) {
    out.push_back(static_cast<char>((n >> 16) & 0xff));
    out.push_back(static_cast<char>((n >> 24) & 0xff));
  }
  out += dict;
  std::ofstream file(path, std::ios::binary | std::ios::trunc);
  if (!file) return absl::NotFoundError(absl::StrCat(path, ": cannot create the file (", std::strerror(errno), ")"));
  file.write(out.data(), static_cast<std::streamsize>(out.size()));
  file.write(array.bytes.data(), static_cast<std::streamsize>(array.bytes.size()));
  file.close();
  if (!file) return absl::DataLossError(absl::StrCat(path, ": write error"));
  return absl::OkStatus();
}

absl::StatusOr<HostTensor> ReadNpyTensor(const std::string& path, std::optional<DType> as) {
  absl::StatusOr<NpyArray> array = ReadNpy(path);
  if (!array.ok()) return array.status();
  HostTensor t;
  t.shape = std::move(array->shape);
  t.bytes = std::move(array->bytes);
  if (array->descr == "<u2") {
    if (as != DType::kBFloat16) {
      return absl::InvalidArgumentError(absl::StrCat(
          path, ": dtype '<u2' (uint16) is not a wire dtype; if it holds bfloat16 bits, say so with bfloat16 as its dtype"));
    }
    t.dtype = DType::kBFloat16;
    return t;
  }
  t.dtype = *DTypeOfDescr(array->descr);
  if (!as || *as == t.dtype) return t;
  if (!IsFloating(t.dtype) || !IsFloating(*as)) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": holds ", DTypeName(t.dtype), "; it cannot be read as ",
                                                   DTypeName(*as), " (only floating files convert, and '<u2' to bfloat16)"));
  }
  return HostTensor::FromFloats(*as, std::move(t.shape), t.ToFloats());
}

absl::Status WriteNpyTensor(const std::string& path, const HostTensor& tensor) {
  return WriteNpy(path, NpyArray{NpyDescr(tensor.dtype), tensor.shape, tensor.bytes});
}

}  // namespace focal
