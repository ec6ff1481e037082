#include "server/server_info.h"

#include "focal/variant_text.h"
#include "server/codec.h"

namespace focal::server {

v1::ServerInfo BuildServerInfo(const ServerOptions& options, const std::string& backend,
                               const std::vector<std::string>& devices) {
  v1::ServerInfo info;
  info.set_version(FOCALSERVE_VERSION);
  for (const VariantDescription& variant : DescribeVariants()) {
    v1::VariantInfo* v = info.add_variants();
    v->set_name(variant.name);
    for (const ParameterDescription& parameter : variant.parameters) {
      v1::ParameterInfo* p = v->add_parameters();
      p->set_name(parameter.name);
      p->set_type(parameter.type);
      p->set_default_value(parameter.default_value);
      p->set_description(parameter.description);
    }
  }
  for (DType t : {DType::kFloat32, DType::kFloat16, DType::kBFloat16, DType::kFloat64}) info.add_logits_dtypes(ToProto(t));
  for (DType t : {DType::kInt32, DType::kInt64, DType::kUInt8, DType::kFloat32, DType::kFloat16, DType::kBFloat16,
                  DType::kFloat64}) {
    info.add_target_dtypes(ToProto(t));
  }
  info.set_max_message_bytes(options.max_message_bytes);
  info.set_max_elements(options.limits.max_elements);
  info.set_max_classes(options.limits.max_classes);
  info.set_max_rank(kMaxRank);
  info.set_backend(backend);
  for (const std::string& d : devices) info.add_devices(d);
  info.set_max_concurrent_requests(options.max_concurrent);
  return info;
}

}  // namespace focal::server
