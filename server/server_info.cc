#include "server/server_info.h"

#include "absl/strings/str_cat.h"
#include "focal/params.h"
#include "server/codec.h"

namespace focal::server {
namespace {

void AddParameter(v1::VariantInfo* variant, const char* name, const char* type, std::string default_value,
                  const char* description) {
  v1::ParameterInfo* p = variant->add_parameters();
  p->set_name(name);
  p->set_type(type);
  p->set_default_value(std::move(default_value));
  p->set_description(description);
}

std::string Number(double v) { return absl::StrCat(v); }

}  // namespace

v1::ServerInfo BuildServerInfo(const ServerOptions& options, const std::string& backend,
                               const std::vector<std::string>& devices) {
  v1::ServerInfo info;
  info.set_version(FOCALSERVE_VERSION);
  {
    const SoftmaxFocalParams d;
    v1::VariantInfo* v = info.add_variants();
    v->set_name(SoftmaxFocalParams::kName);
    AddParameter(v, "gamma", "double >= 0", Number(d.gamma), "focusing parameter");
    AddParameter(v, "alpha", "repeated float >= 0, length C", "all ones", "per-class weights");
    AddParameter(v, "ignore_index", "int64", "none", "target value whose rows are ignored");
    AddParameter(v, "label_smoothing", "double in [0, 1)", Number(d.label_smoothing), "target smoothing ε");
  }
  {
    const SigmoidFocalParams d;
    v1::VariantInfo* v = info.add_variants();
    v->set_name(SigmoidFocalParams::kName);
    AddParameter(v, "gamma", "double >= 0", Number(d.gamma), "focusing parameter");
    AddParameter(v, "alpha", "double <= 1", Number(d.alpha), "weight of positives; negative disables");
    AddParameter(v, "ignore_index", "int64", "none", "with class-index targets: rows to ignore");
    AddParameter(v, "label_smoothing", "double in [0, 1)", Number(d.label_smoothing), "target smoothing ε");
    AddParameter(v, "smoothing_classes", "int64 >= 2", Number(static_cast<double>(d.smoothing_classes)),
                 "K: targets become (1-ε)t + ε/K");
    AddParameter(v, "input", "LOGITS | PROBABILITIES", "LOGITS", "what the logits tensor holds");
  }
  {
    const FocalCosineParams d;
    v1::VariantInfo* v = info.add_variants();
    v->set_name(FocalCosineParams::kName);
    AddParameter(v, "alpha", "double", Number(d.alpha), "weight of the focal term");
    AddParameter(v, "gamma", "double >= 0", Number(d.gamma), "focusing parameter");
    AddParameter(v, "xent", "double >= 0", Number(d.xent), "scale of the focal cross-entropy term");
  }
  {
    const DynamicFocalParams d;
    v1::VariantInfo* v = info.add_variants();
    v->set_name(DynamicFocalParams::kName);
    AddParameter(v, "gamma", "double >= 0", Number(d.gamma), "focusing parameter");
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
