#include "focal/params.h"

namespace focal {

const char* VariantName(const VariantParams& params) {
  return std::visit([](const auto& p) { return p.kName; }, params);
}

}  // namespace focal
