// Compiled with -std=c++2b (kernels/CMakeLists.txt): see focal/uninitialized_string.h.
#include "focal/uninitialized_string.h"

#if !defined(__cpp_lib_string_resize_and_overwrite)
#error "needs std::string::resize_and_overwrite (C++23; libstdc++ 12 with -std=c++2b)"
#endif

namespace focal {

std::string UninitializedString(size_t n) {
  std::string s;
  // The length returned is n itself, not the size the operation is handed: libstdc++ 12 hands
  // it the grown capacity where that exceeds n (at least 30 once a string leaves its 15-byte
  // inline buffer, a bug of that release), and returning it would make the string too long.
  s.resize_and_overwrite(n, [n](char*, size_t) { return n; });
  return s;
}

}  // namespace focal
