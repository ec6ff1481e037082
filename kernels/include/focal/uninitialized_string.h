// A std::string of n bytes that nothing has written. C++17's std::string can only grow by
// filling; C++23's resize_and_overwrite grows without it, and libstdc++ 12 has it under
// -std=c++2b, so kernels/core/uninitialized_string.cc alone is compiled that way.
#pragma once

#include <cstddef>
#include <string>

namespace focal {

/// n bytes whose values are unspecified: for a buffer that its producer writes whole.
std::string UninitializedString(size_t n);

}  // namespace focal
