#include "server/kserve_codec.h"

#include <cstring>
#include <iterator>
#include <optional>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "focal/status_macros.h"
#include "focal/variant_text.h"
#include "focal/wire.h"
#include "server/codec.h"
#include "server/wire.h"

namespace focal::server::kserve {
namespace {

using inference::InferParameter;
using inference::InferTensorContents;
using inference::ModelInferRequest;

absl::Status Invalid(std::string message) { return absl::InvalidArgumentError(std::move(message)); }

struct DatatypeEntry {
  DType dtype;
  const char* name;             ///< the protocol's datatype
  inference::DataType config;  ///< Triton's model-configuration enum
};
/// The dtypes focalserve computes with, by their protocol names: one list for decoding,
/// encoding, metadata, configuration and errors.
constexpr DatatypeEntry kDatatypes[] = {
    {DType::kFloat32, "FP32", inference::TYPE_FP32}, {DType::kFloat16, "FP16", inference::TYPE_FP16},
    {DType::kBFloat16, "BF16", inference::TYPE_BF16}, {DType::kFloat64, "FP64", inference::TYPE_FP64},
    {DType::kInt32, "INT32", inference::TYPE_INT32},  {DType::kInt64, "INT64", inference::TYPE_INT64},
    {DType::kUInt8, "UINT8", inference::TYPE_UINT8},
};

inference::DataType ConfigType(DType dtype) {
  for (const DatatypeEntry& e : kDatatypes) {
    if (e.dtype == dtype) return e.config;
  }
  return inference::TYPE_INVALID;
}

std::string DatatypeNames() {
  std::vector<std::string> names;
  for (const DatatypeEntry& e : kDatatypes) names.push_back(e.name);
  return absl::StrJoin(names, ", ");
}

absl::StatusOr<DType> DtypeOf(absl::string_view datatype, absl::string_view field) {
  for (const DatatypeEntry& e : kDatatypes) {
    if (datatype == e.name) return e.dtype;
  }
  return Invalid(absl::StrCat(field, " has datatype '", Loggable(datatype), "'; expected one of ", DatatypeNames()));
}

// ------------------------------------------------------------------------------------------
// Inputs: each name's place in the job, and which variants take it.

struct InputEntry {
  const char* name;
  /// Whether the variant takes it (null: every variant).
  bool VariantFacts::*takes;
};
constexpr InputEntry kInputs[] = {
    {"logits", nullptr}, {"targets", nullptr},         {"num_objects", &VariantFacts::num_objects},
    {"weights", nullptr}, {"scores", &VariantFacts::scores}, {"grad_output", nullptr},
};
enum : size_t { kLogits, kTargets, kNumObjects, kWeights, kScores, kGradOutput };

const VariantFacts& FactsAt(int variant) { return FactsOf(*DefaultParams(VariantNameAt(variant))); }

bool TakesInput(const VariantFacts& facts, const InputEntry& input) { return !input.takes || facts.*input.takes; }

std::string InputNames(const VariantFacts& facts) {
  std::vector<std::string> names;
  for (const InputEntry& input : kInputs) {
    if (TakesInput(facts, input)) names.push_back(input.name);
  }
  return absl::StrJoin(names, ", ");
}

constexpr const char* kOutputNames[] = {"loss", "count", "losses", "gradient"};

/// Typed contents of `dtype`: how many elements are there, and a view of them when the field's
/// element type is the dtype's (else the caller converts). Every other contents field must be
/// empty: elements in the wrong field are an error, not zeros.
struct TypedElements {
  int64_t count = 0;
  const void* data = nullptr;
};

absl::StatusOr<TypedElements> TypedContents(const InferTensorContents& c, DType dtype, absl::string_view field) {
  const char* expected = nullptr;
  TypedElements out;
  switch (dtype) {
    case DType::kFloat32: expected = "fp32_contents"; out = {c.fp32_contents_size(), c.fp32_contents().data()}; break;
    case DType::kFloat64: expected = "fp64_contents"; out = {c.fp64_contents_size(), c.fp64_contents().data()}; break;
    case DType::kInt64: expected = "int64_contents"; out = {c.int64_contents_size(), c.int64_contents().data()}; break;
    case DType::kInt32: expected = "int_contents"; out = {c.int_contents_size(), c.int_contents().data()}; break;
    case DType::kUInt8: expected = "uint_contents"; out = {c.uint_contents_size(), nullptr}; break;
    case DType::kFloat16:
    case DType::kBFloat16:
      return Invalid(absl::StrCat(field, " is ", DatatypeName(dtype),
                                  ", which the protocol carries only in raw_input_contents (no typed contents field holds it)"));
  }
  const std::pair<const char*, int> fields[] = {
      {"bool_contents", c.bool_contents_size()},     {"int_contents", c.int_contents_size()},
      {"int64_contents", c.int64_contents_size()},   {"uint_contents", c.uint_contents_size()},
      {"uint64_contents", c.uint64_contents_size()}, {"fp32_contents", c.fp32_contents_size()},
      {"fp64_contents", c.fp64_contents_size()},     {"bytes_contents", c.bytes_contents_size()},
  };
  for (const auto& [name, size] : fields) {
    if (size > 0 && std::strcmp(name, expected) != 0) {
      return Invalid(absl::StrCat(field, " is ", DatatypeName(dtype), " but holds ", size, " values in contents.", name,
                                  "; its values go in contents.", expected));
    }
  }
  return out;
}

/// A view of one input's elements: raw bytes (exactly elements × size), or its typed contents
/// (exactly `elements` values; UINT8 narrowed from uint32 into `converted`, each checked).
/// `limits`, for the logits, are checked first: a request over them is refused for its size.
absl::StatusOr<TensorView> InputView(const ModelInferRequest& request, int index, bool raw, const RequestLimits* limits,
                                     InferCall& call) {
  const ModelInferRequest::InferInputTensor& input = request.inputs(index);
  const std::string field = absl::StrCat("input '", Loggable(input.name()), "'");
  TensorView view;
  ASSIGN_OR_RETURN(view.dtype, DtypeOf(input.datatype(), field));
  if (input.shape_size() > kMaxRank) {
    return Invalid(absl::StrCat(field, " has ", input.shape_size(), " dimensions; at most ", kMaxRank));
  }
  view.shape.assign(input.shape().begin(), input.shape().end());
  ASSIGN_OR_RETURN(const int64_t elements, NumElements(view.shape, field));
  if (limits) RETURN_IF_ERROR(CheckRequestSize(view, *limits));
  const size_t element_size = DTypeSize(view.dtype);
  if (raw) {
    const std::string& bytes = request.raw_input_contents(index);
    // elements ≤ 2^63 / size is NumElements' guarantee only for size 1; compare without the product.
    if (static_cast<uint64_t>(elements) > bytes.size() / element_size ||
        bytes.size() != static_cast<size_t>(elements) * element_size) {
      return Invalid(absl::StrCat(field, " of shape [", absl::StrJoin(view.shape, ", "), "] and datatype ",
                                  input.datatype(), " needs ", elements, " × ", element_size,
                                  " bytes; raw_input_contents[", index, "] has ", bytes.size()));
    }
    view.data = bytes.data();
    view.size_bytes = bytes.size();
    return view;
  }
  ASSIGN_OR_RETURN(const TypedElements typed, TypedContents(input.contents(), view.dtype, field));
  if (typed.count != elements) {
    return Invalid(absl::StrCat(field, " of shape [", absl::StrJoin(view.shape, ", "), "] has ", elements,
                                " elements; its contents hold ", typed.count));
  }
  view.size_bytes = static_cast<size_t>(elements) * element_size;
  if (view.dtype != DType::kUInt8) {
    view.data = typed.data;
    return view;
  }
  std::string& narrowed = call.converted.emplace_back(static_cast<size_t>(elements), '\0');
  for (int64_t i = 0; i < elements; ++i) {
    const uint32_t v = input.contents().uint_contents(static_cast<int>(i));
    if (v > 255) return Invalid(absl::StrCat(field, " is UINT8 but element ", i, " of its contents is ", v));
    narrowed[static_cast<size_t>(i)] = static_cast<char>(v);
  }
  view.data = narrowed.data();
  return view;
}

// ------------------------------------------------------------------------------------------
// Parameters.

/// A parameter's value as text: the form focal/variant_text.h reads for every parameter type.
/// Doubles keep all 17 digits, so that the number set is the number sent, to the last bit.
absl::StatusOr<std::string> ParameterText(const InferParameter& p, absl::string_view field) {
  switch (p.parameter_choice_case()) {
    case InferParameter::kBoolParam: return std::string(p.bool_param() ? "true" : "false");
    case InferParameter::kInt64Param: return absl::StrCat(p.int64_param());
    case InferParameter::kUint64Param: return absl::StrCat(p.uint64_param());
    case InferParameter::kStringParam: return p.string_param();
    case InferParameter::kDoubleParam: return absl::StrFormat("%.17g", p.double_param());
    case InferParameter::PARAMETER_CHOICE_NOT_SET: break;
  }
  return Invalid(absl::StrCat(field, " has no value"));
}

absl::StatusOr<double> NumberParameter(const InferParameter& p, absl::string_view field) {
  ASSIGN_OR_RETURN(const std::string text, ParameterText(p, field));
  double v;
  if (p.parameter_choice_case() == InferParameter::kBoolParam || !absl::SimpleAtod(text, &v)) {
    return Invalid(absl::StrCat(field, " is '", Loggable(text), "'; expected a number"));
  }
  return v;
}

/// A per-class list as a string_param: numbers separated by commas (or spaces), optionally in
/// brackets, as "[0.25, 0.75]" or "0.25,0.75".
absl::StatusOr<std::vector<double>> ListParameter(const InferParameter& p, absl::string_view field) {
  if (p.parameter_choice_case() != InferParameter::kStringParam) {
    return Invalid(absl::StrCat(field, " is a list of one value per class: send it as a string_param of numbers "
                                       "separated by commas, e.g. \"0.25,0.75\""));
  }
  absl::string_view text = absl::StripAsciiWhitespace(p.string_param());
  if (absl::ConsumePrefix(&text, "[") != absl::ConsumeSuffix(&text, "]")) {
    return Invalid(absl::StrCat(field, " is '", Loggable(p.string_param()), "': unbalanced brackets"));
  }
  std::vector<double> values;
  for (absl::string_view item : absl::StrSplit(text, absl::ByAnyChar(", \t\n"), absl::SkipEmpty())) {
    double v;
    if (!absl::SimpleAtod(item, &v)) {
      return Invalid(absl::StrCat(field, " holds '", Loggable(item), "', not a number"));
    }
    values.push_back(v);
  }
  return values;
}

absl::Status SetRequestParameter(LossSpec& spec, bool& allow_non_finite, const std::string& name,
                                 const InferParameter& value) {
  const std::string field = absl::StrCat("parameter '", Loggable(name), "'");
  if (name == "reduction") {
    ASSIGN_OR_RETURN(const std::string text, ParameterText(value, field));
    const std::string lower = absl::AsciiStrToLower(text);
    constexpr std::pair<const char*, Reduction> kReductions[] = {
        {"mean", Reduction::kMean}, {"sum", Reduction::kSum}, {"none", Reduction::kNone}};
    for (const auto& [word, reduction] : kReductions) {
      if (value.parameter_choice_case() == InferParameter::kStringParam && lower == word) {
        spec.reduction = reduction;
        return absl::OkStatus();
      }
    }
    return Invalid(absl::StrCat(field, " is '", Loggable(text), "'; expected \"mean\", \"sum\" or \"none\""));
  }
  if (name == "normalizer") {
    ASSIGN_OR_RETURN(spec.normalizer, NumberParameter(value, field));
    return absl::OkStatus();
  }
  if (name == "allow_non_finite") {
    ASSIGN_OR_RETURN(const std::string text, ParameterText(value, field));
    if (!absl::SimpleAtob(text, &allow_non_finite) || value.parameter_choice_case() == InferParameter::kDoubleParam) {
      return Invalid(absl::StrCat(field, " is '", Loggable(text), "'; expected true or false"));
    }
    return absl::OkStatus();
  }
  for (const ParameterDescription& p : DescribeVariant(spec.params).parameters) {
    if (p.name != name) continue;
    if (p.per_class_list) {
      ASSIGN_OR_RETURN(std::vector<double> values, ListParameter(value, field));
      return SetParameterList(spec.params, name, std::move(values));
    }
    ASSIGN_OR_RETURN(const std::string text, ParameterText(value, field));
    const absl::Status set = SetParameterFromText(spec.params, name, text);
    if (set.ok()) return set;
    // focal/variant_text.h says "<name> is '<text>'; expected ...": said again here with the
    // client's text escaped and cut (Loggable), so that no request forges a log line.
    const std::string echoed = absl::StrCat(name, " is '", text, "'; ");
    if (absl::StartsWith(set.message(), echoed)) {
      return Invalid(absl::StrCat(field, " is '", Loggable(text), "'; ", set.message().substr(echoed.size())));
    }
    return set;
  }
  std::vector<std::string> names = {"reduction", "normalizer", "allow_non_finite"};
  for (const ParameterDescription& p : DescribeVariant(spec.params).parameters) names.push_back(p.name);
  return Invalid(absl::StrCat(field, " is not a parameter of ", VariantName(spec.params), "; it takes ",
                              absl::StrJoin(names, ", ")));
}

/// The requested outputs, checked, in the request's order; every output the reduction has when
/// none is named (the protocol's default).
absl::StatusOr<std::vector<Output>> RequestedOutputs(const ModelInferRequest& request, const LossSpec& spec) {
  std::vector<Output> outputs;
  if (request.outputs_size() == 0) {
    outputs = {Output::kLoss, Output::kCount};
    if (spec.reduction == Reduction::kNone) outputs.push_back(Output::kLosses);
    outputs.push_back(Output::kGradient);
    return outputs;
  }
  for (const auto& requested : request.outputs()) {
    const std::string field = absl::StrCat("output '", Loggable(requested.name()), "'");
    int found = -1;
    for (int i = 0; i < static_cast<int>(std::size(kOutputNames)); ++i) {
      if (requested.name() == kOutputNames[i]) found = i;
    }
    if (found < 0) {
      return Invalid(absl::StrCat(field, " is not an output of ", VariantName(spec.params),
                                  "; it has loss, count, losses (with reduction none) and gradient"));
    }
    const auto output = static_cast<Output>(found);
    for (Output seen : outputs) {
      if (seen == output) return Invalid(absl::StrCat(field, " is requested twice"));
    }
    if (output == Output::kLosses && spec.reduction != Reduction::kNone) {
      return Invalid(absl::StrCat(field, " exists only with parameter 'reduction' = \"none\""));
    }
    for (const auto& [key, value] : requested.parameters()) {
      // binary_data (the HTTP protocol's, which some clients send on gRPC too) asks for raw
      // bytes: what a raw request gets anyway.
      if (key == "binary_data" && value.parameter_choice_case() == InferParameter::kBoolParam) continue;
      return Invalid(absl::StrCat(field, " has parameter '", Loggable(key),
                                  "'; focalserve's outputs take only binary_data"));
    }
    outputs.push_back(output);
  }
  return outputs;
}

}  // namespace

const char* DatatypeName(DType dtype) {
  for (const DatatypeEntry& e : kDatatypes) {
    if (e.dtype == dtype) return e.name;
  }
  return "UNKNOWN";
}

absl::StatusOr<int> FindModel(absl::string_view name, absl::string_view version) {
  const int variant = VariantIndex(std::string_view(name.data(), name.size()));
  if (variant < 0) {
    return absl::NotFoundError(absl::StrCat("model '", Loggable(name), "' is not served here; the models are ",
                                            VariantNames(", ")));
  }
  if (!version.empty() && version != kModelVersion) {
    return absl::NotFoundError(absl::StrCat("model '", name, "' has no version '", Loggable(version),
                                            "'; it has version ", kModelVersion));
  }
  return variant;
}

ModelSpec DescribeModel(int variant) {
  const VariantFacts& facts = FactsAt(variant);
  // The common layout of each tensor, every dimension variable: logits [N, C] (a variant's
  // further dimensions are accepted as in focal.v1, docs/variants.md), a row's values [N], an
  // element's [N, C].
  const std::vector<int64_t> element{-1, -1}, row{-1};
  const bool rows = facts.items == Items::kRows;
  const bool row_targets = facts.targets == Targets::kClassIndex || facts.targets == Targets::kFloatPerRow;
  ModelSpec m;
  for (const InputEntry& input : kInputs) {
    if (!TakesInput(facts, input)) continue;
    const std::string name = input.name;
    TensorSpec t{input.name, DType::kFloat32, rows ? row : element, /*optional=*/true};
    if (name == "logits") t = {input.name, DType::kFloat32, element, false};
    if (name == "targets") {
      t = {input.name, facts.targets == Targets::kClassIndex ? DType::kInt64 : DType::kFloat32,
           row_targets ? row : element, false};
    }
    if (name == "num_objects" || name == "scores") t.shape = row;
    m.inputs.push_back(t);
  }
  m.outputs = {{"loss", DType::kFloat64, {1}},
               {"count", DType::kInt64, {1}},
               {"losses", DType::kFloat32, rows ? row : element},
               {"gradient", DType::kFloat32, element}};
  return m;
}

inference::ModelMetadataResponse ModelMetadata(int variant) {
  inference::ModelMetadataResponse m;
  m.set_name(VariantNameAt(variant));
  m.add_versions(kModelVersion);
  m.set_platform(kPlatform);
  const ModelSpec spec = DescribeModel(variant);
  for (const auto& [tensors, list] : {std::pair{&spec.inputs, m.mutable_inputs()}, {&spec.outputs, m.mutable_outputs()}}) {
    for (const TensorSpec& t : *tensors) {
      auto* out = list->Add();
      out->set_name(t.name);
      out->set_datatype(DatatypeName(t.dtype));
      for (int64_t d : t.shape) out->add_shape(d);
    }
  }
  return m;
}

inference::ModelConfigResponse ModelConfig(int variant) {
  inference::ModelConfigResponse response;
  inference::ModelConfig* c = response.mutable_config();
  c->set_name(VariantNameAt(variant));
  c->set_platform(kPlatform);
  c->set_backend(kPlatform);
  c->set_max_batch_size(0);
  const ModelSpec spec = DescribeModel(variant);
  for (const TensorSpec& t : spec.inputs) {
    inference::ModelInput* in = c->add_input();
    in->set_name(t.name);
    in->set_data_type(ConfigType(t.dtype));
    for (int64_t d : t.shape) in->add_dims(d);
    in->set_optional(t.optional);
  }
  for (const TensorSpec& t : spec.outputs) {
    inference::ModelOutput* out = c->add_output();
    out->set_name(t.name);
    out->set_data_type(ConfigType(t.dtype));
    for (int64_t d : t.shape) out->add_dims(d);
  }
  return response;
}

absl::StatusOr<InferCall> DecodeInferRequest(const ModelInferRequest& request, const RequestLimits& limits) {
  InferCall call;
  RETURN_IF_ERROR(wire::RejectUnknownFields(request, ""));
  ASSIGN_OR_RETURN(call.variant, FindModel(request.model_name(), request.model_version()));
  const VariantFacts& facts = FactsAt(call.variant);
  LossJob& job = call.job;
  job.spec.params = *DefaultParams(facts.name);
  for (const auto& [name, value] : request.parameters()) {
    RETURN_IF_ERROR(SetRequestParameter(job.spec, job.allow_non_finite, name, value));
  }

  const bool raw = request.raw_input_contents_size() > 0;
  if (raw && request.raw_input_contents_size() != request.inputs_size()) {
    return Invalid(absl::StrCat("raw_input_contents has ", request.raw_input_contents_size(), " entries for ",
                                request.inputs_size(), " inputs; it needs one per input, in their order"));
  }
  call.typed = !raw;
  // The inputs given, by their index in kInputs.
  std::optional<TensorView> views[std::size(kInputs)];
  for (int i = 0; i < request.inputs_size(); ++i) {
    const auto& input = request.inputs(i);
    const std::string field = absl::StrCat("input '", Loggable(input.name()), "'");
    size_t entry = std::size(kInputs);
    for (size_t e = 0; e < std::size(kInputs); ++e) {
      if (input.name() == kInputs[e].name && TakesInput(facts, kInputs[e])) entry = e;
    }
    if (entry == std::size(kInputs)) {
      return Invalid(absl::StrCat(field, " is not an input of ", facts.name, "; it takes ", InputNames(facts)));
    }
    if (views[entry]) return Invalid(absl::StrCat(field, " is given twice"));
    if (raw && input.has_contents()) {
      return Invalid(absl::StrCat(field, " has contents while the request uses raw_input_contents; use one or the other"));
    }
    ASSIGN_OR_RETURN(views[entry], InputView(request, i, raw, entry == kLogits ? &limits : nullptr, call));
    for (const auto& [key, value] : input.parameters()) {
      // binary_data_size (the HTTP protocol's, which some clients send on gRPC too) is the
      // tensor's byte length: accepted when it says exactly that.
      if (key == "binary_data_size" && value.parameter_choice_case() == InferParameter::kInt64Param &&
          value.int64_param() == static_cast<int64_t>(views[entry]->size_bytes)) {
        continue;
      }
      return Invalid(absl::StrCat(field, " has parameter '", Loggable(key),
                                  "'; focalserve's inputs take only binary_data_size, their byte length "
                                  "(shared memory is not served)"));
    }
  }
  for (size_t required : {kLogits, kTargets}) {
    if (!views[required]) return Invalid(absl::StrCat("input '", kInputs[required].name, "' is missing"));
  }
  job.logits = *views[kLogits];
  job.targets = *views[kTargets];
  job.num_objects = views[kNumObjects];
  job.weights = views[kWeights];
  job.scores = views[kScores];
  if (views[kGradOutput]) {
    const TensorView& w = *views[kGradOutput];
    // MEAN and SUM take one upstream scalar (a tensor of one element carries it); NONE takes a
    // tensor shaped like the losses, or a scalar as a tensor of rank 0.
    if (job.spec.reduction != Reduction::kNone || w.shape.empty()) {
      if (w.size_bytes != DTypeSize(w.dtype)) {
        return Invalid(absl::StrCat("input 'grad_output' has shape [", absl::StrJoin(w.shape, ", "),
                                    "]; with reduction mean or sum it is one value"));
      }
      if (w.dtype == DType::kInt32 || w.dtype == DType::kInt64 || w.dtype == DType::kUInt8) {
        return Invalid(absl::StrCat("input 'grad_output' is ", DatatypeName(w.dtype), "; expected FP32, FP64, FP16 or BF16"));
      }
      job.grad_output = LoadAsDouble(w, 0);
    } else {
      job.grad_output = w;
    }
  }
  ASSIGN_OR_RETURN(call.outputs, RequestedOutputs(request, job.spec));
  job.compute_gradient = false;
  for (Output o : call.outputs) job.compute_gradient |= o == Output::kGradient;
  return call;
}

namespace {

/// Appends one output: its bytes moved into raw_output_contents, or copied into typed contents.
absl::Status AddOutput(const char* name, HostTensor&& tensor, bool typed, inference::ModelInferResponse* response) {
  auto* out = response->add_outputs();
  out->set_name(name);
  out->set_datatype(DatatypeName(tensor.dtype));
  for (int64_t d : tensor.shape) out->add_shape(d);
  if (!typed) {
    *response->add_raw_output_contents() = std::move(tensor.bytes);
    return absl::OkStatus();
  }
  const size_t n = tensor.bytes.size() / DTypeSize(tensor.dtype);
  auto copy = [&](auto* field) {
    field->Resize(static_cast<int>(n), {});
    if (n > 0) std::memcpy(field->mutable_data(), tensor.bytes.data(), tensor.bytes.size());
  };
  auto* contents = out->mutable_contents();
  switch (tensor.dtype) {
    case DType::kFloat32: copy(contents->mutable_fp32_contents()); break;
    case DType::kFloat64: copy(contents->mutable_fp64_contents()); break;
    case DType::kInt64: copy(contents->mutable_int64_contents()); break;
    default:
      // Typed requests have FP32 or FP64 logits, so their outputs are of these dtypes.
      return absl::InternalError(absl::StrCat("output '", name, "' is ", DatatypeName(tensor.dtype),
                                              ", which typed contents cannot hold"));
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status EncodeInferResponse(LossResult&& result, const InferCall& call, const std::string& id,
                                 inference::ModelInferResponse* response) {
  response->set_model_name(VariantNameAt(call.variant));
  response->set_model_version(kModelVersion);
  response->set_id(id);
  (*response->mutable_parameters())["backend"].set_string_param(result.backend);
  for (Output o : call.outputs) {
    switch (o) {
      case Output::kLoss:
        RETURN_IF_ERROR(AddOutput("loss", HostTensor::Float64({1}, {result.loss}), call.typed, response));
        break;
      case Output::kCount:
        RETURN_IF_ERROR(AddOutput("count", HostTensor::Int64({1}, {result.count}), call.typed, response));
        break;
      case Output::kLosses:
        if (!result.losses) return absl::InternalError("the backend returned no per-item losses for reduction none");
        RETURN_IF_ERROR(AddOutput("losses", std::move(*result.losses), call.typed, response));
        break;
      case Output::kGradient:
        if (!result.gradient) return absl::InternalError("the backend returned no gradient");
        RETURN_IF_ERROR(AddOutput("gradient", std::move(*result.gradient), call.typed, response));
        break;
    }
  }
  return absl::OkStatus();
}

}  // namespace focal::server::kserve
