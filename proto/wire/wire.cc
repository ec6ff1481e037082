#include "focal/wire.h"

#include <array>
#include <optional>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "focal/status_macros.h"
#include "google/protobuf/reflection.h"
#include "google/protobuf/unknown_field_set.h"

namespace focal::wire {
namespace {

using google::protobuf::EnumDescriptor;
using google::protobuf::FieldDescriptor;
using google::protobuf::Message;
using google::protobuf::OneofDescriptor;
using google::protobuf::Reflection;

// The casts between the core's enums and the wire's rely on equal numbers.
static_assert(static_cast<int>(DType::kFloat32) == v1::FLOAT32 && static_cast<int>(DType::kFloat16) == v1::FLOAT16 &&
              static_cast<int>(DType::kBFloat16) == v1::BFLOAT16 && static_cast<int>(DType::kFloat64) == v1::FLOAT64 &&
              static_cast<int>(DType::kInt32) == v1::INT32 && static_cast<int>(DType::kInt64) == v1::INT64 &&
              static_cast<int>(DType::kUInt8) == v1::UINT8 && v1::DataType_MAX == v1::UINT8);
static_assert(static_cast<int>(Reduction::kMean) == v1::MEAN && static_cast<int>(Reduction::kSum) == v1::SUM &&
              static_cast<int>(Reduction::kNone) == v1::NONE && v1::Reduction_MAX == v1::NONE);

/// The float64 form of a per-class list is the list's name with this suffix.
constexpr absl::string_view kFloat64Suffix = "_f64";

absl::Status Invalid(std::string message) { return absl::InvalidArgumentError(std::move(message)); }

template <class T>
constexpr bool kIsList = std::is_same_v<T, std::vector<double>>;
template <class T>
constexpr bool kIsSchedule = std::is_same_v<T, std::vector<GammaStep>>;

/// A GammaStep message's fields, by name: its `threshold` and `gamma` doubles.
struct StepFields {
  const FieldDescriptor* threshold = nullptr;
  const FieldDescriptor* gamma = nullptr;
};

StepFields StepFieldsOf(const google::protobuf::Descriptor* message) {
  StepFields f;
  if (message == nullptr) return f;
  f.threshold = message->FindFieldByName("threshold");
  f.gamma = message->FindFieldByName("gamma");
  const auto is_double = [](const FieldDescriptor* d) {
    return d != nullptr && d->cpp_type() == FieldDescriptor::CPPTYPE_DOUBLE && !d->is_repeated();
  };
  if (!is_double(f.threshold) || !is_double(f.gamma)) f = {};
  return f;
}

/// "MEAN, SUM or NONE": an enum's value names as an error lists them.
std::string ValueNames(const EnumDescriptor* e) {
  std::string out;
  for (int i = 0; i < e->value_count(); ++i) {
    if (i > 0) out += i + 1 == e->value_count() ? " or " : ", ";
    out += e->value(i)->name();
  }
  return out;
}

/// "softmax_focal, sigmoid_focal, focal_cosine, dynamic_focal", from the table.
std::string VariantNames() {
  std::string out;
  ForEachVariant([&](auto tag) {
    if (!out.empty()) out += ", ";
    out += Variant<typename decltype(tag)::Params>::kFacts.name;
  });
  return out;
}

// ------------------------------------------------------------------------------------------
// The wire fields of the table, looked up once.

/// Where one parameter travels in its variant's message.
struct ParamFields {
  const FieldDescriptor* field = nullptr;  ///< the field named as the parameter (a list's float32 form)
  const FieldDescriptor* f64 = nullptr;    ///< a per-class list's `<name>_f64`
};

struct VariantFields {
  const FieldDescriptor* spec_field = nullptr;  ///< LossSpec's oneof field
  const Reflection* reflection = nullptr;       ///< of the variant's message type
  std::vector<ParamFields> params;              ///< in table order
};

/// Looked up once: a lookup per request would cost more than the rest of the decoding.
struct TableFields {
  const Reflection* reflection = nullptr;  ///< LossSpec's
  const OneofDescriptor* oneof = nullptr;
  std::array<VariantFields, kNumVariants> variants;
  absl::Status status;  ///< whether the table and the wire agree
};

/// Whether `field` can carry `param` (for a per-class list: its float64 form when `f64`, else
/// its float32 form); the reason when not.
template <class P, class T>
std::optional<std::string> Mismatch(const FieldDescriptor* field, const Param<P, T>& param, bool f64) {
  const auto want = [&](FieldDescriptor::CppType type, bool repeated) -> std::optional<std::string> {
    if (field->cpp_type() == type && field->is_repeated() == repeated) return std::nullopt;
    return absl::StrCat("is ", field->is_repeated() ? "repeated " : "", field->cpp_type_name(), ", not ",
                        repeated ? "repeated " : "", FieldDescriptor::CppTypeName(type));
  };
  if constexpr (kIsList<T>) {
    return want(f64 ? FieldDescriptor::CPPTYPE_DOUBLE : FieldDescriptor::CPPTYPE_FLOAT, true);
  } else if constexpr (kIsSchedule<T>) {
    std::optional<std::string> why = want(FieldDescriptor::CPPTYPE_MESSAGE, true);
    if (!why && StepFieldsOf(field->message_type()).threshold == nullptr) {
      why = "is not a repeated message of double threshold and double gamma";
    }
    return why;  // a list: absent is empty, the default
  } else {
    std::optional<std::string> why;
    if constexpr (std::is_same_v<T, double>) {
      why = want(FieldDescriptor::CPPTYPE_DOUBLE, false);
    } else if constexpr (std::is_same_v<T, bool>) {
      why = want(FieldDescriptor::CPPTYPE_BOOL, false);
    } else if constexpr (std::is_same_v<T, int64_t> || std::is_same_v<T, std::optional<int64_t>>) {
      why = want(FieldDescriptor::CPPTYPE_INT64, false);
      if (!why && std::is_same_v<T, std::optional<int64_t>> && !field->has_presence()) {
        why = "has no presence (declare it optional)";
      }
    } else if constexpr (std::is_enum_v<T>) {
      why = want(FieldDescriptor::CPPTYPE_ENUM, false);
      if (!why) {
        const EnumDescriptor* e = field->enum_type();
        bool same = e->value_count() == static_cast<int>(param.num_choices);
        for (int i = 0; same && i < e->value_count(); ++i) {
          same = e->value(i)->number() == i && e->value(i)->name() == absl::AsciiStrToUpper(param.choices[i]);
        }
        if (!same) why = absl::StrCat("has the values ", ValueNames(e), ", not the table's choices in their order");
      }
    } else {
      static_assert(!sizeof(T), "a parameter type the wire codec does not know: add it to proto/wire/wire.cc");
    }
    // Without presence an absent field reads as zero, and zero must then be the default.
    if (!why && !field->has_presence()) {
      const T default_value = P{}.*param.member;
      bool zero = false;
      if constexpr (std::is_enum_v<T>) {
        zero = static_cast<int>(default_value) == 0;
      } else if constexpr (!std::is_same_v<T, std::optional<int64_t>>) {
        zero = default_value == 0;
      }
      if (!zero) why = "has no presence (declare it optional) and the table's default is not zero";
    }
    return why;
  }
}

/// Whether the fields a parameter travels in were found (CheckTable says why when not).
template <class T>
bool Found(const ParamFields& f) {
  return kIsList<T> ? f.f64 != nullptr : f.field != nullptr;
}

TableFields LookUpTable() {
  TableFields t;
  const google::protobuf::Descriptor* spec = v1::LossSpec::descriptor();
  t.reflection = v1::LossSpec::default_instance().GetReflection();
  t.oneof = spec->FindOneofByName("variant");
  std::string problems;
  const auto problem = [&](std::string text) { absl::StrAppend(&problems, problems.empty() ? "" : "; ", text); };
  if (t.oneof == nullptr) problem("focal.v1.LossSpec has no oneof 'variant'");
  size_t index = 0;
  ForEachVariant([&](auto tag) {
    using P = typename decltype(tag)::Params;
    const VariantFacts& facts = Variant<P>::kFacts;
    VariantFields& v = t.variants[index++];
    v.spec_field = spec->FindFieldByName(facts.name);
    if (v.spec_field == nullptr || v.spec_field->containing_oneof() != t.oneof ||
        v.spec_field->message_type() == nullptr) {
      problem(absl::StrCat("focal.v1.LossSpec has no message field '", facts.name, "' in its oneof variant"));
      v.spec_field = nullptr;
      return;
    }
    const google::protobuf::Descriptor* message = v.spec_field->message_type();
    v.reflection = google::protobuf::MessageFactory::generated_factory()->GetPrototype(message)->GetReflection();
    ForEachParam<P>([&](const auto& param) {
      using T = typename std::decay_t<decltype(param)>::Type;
      ParamFields& f = v.params.emplace_back();
      const auto check = [&](const FieldDescriptor*& slot, const std::string& name, bool required, bool f64) {
        slot = message->FindFieldByName(name);
        if (slot == nullptr) {
          if (required) problem(absl::StrCat(message->full_name(), " has no field '", name, "'"));
          return;
        }
        if (auto why = Mismatch(slot, param, f64)) {
          problem(absl::StrCat(message->full_name(), ".", name, " ", *why));
          slot = nullptr;
        }
      };
      if constexpr (kIsList<T>) {
        check(f.f64, absl::StrCat(param.name, kFloat64Suffix), /*required=*/true, /*f64=*/true);
        check(f.field, param.name, /*required=*/false, /*f64=*/false);  // the float32 form, where kept
      } else {
        check(f.field, param.name, /*required=*/true, /*f64=*/false);
      }
    });
  });
  if (!problems.empty()) {
    t.status = absl::InternalError(
        absl::StrCat("the variant table (focal/params.h) and focal_loss.proto disagree: ", problems));
  }
  return t;
}

const TableFields& Table() {
  static const TableFields* const table = new TableFields(LookUpTable());
  return *table;
}

// ------------------------------------------------------------------------------------------
// One parameter, each way.

/// "loss.softmax_focal.alpha": `field` is the LossSpec's own name. Built only for an error.
template <class P, class T>
std::string Path(absl::string_view field, const Param<P, T>& param) {
  return absl::StrCat(field, ".", Variant<P>::kFacts.name, ".", param.name);
}

template <class P, class T>
absl::Status DecodeParam(const Message& m, const Reflection& r, const ParamFields& f, const Param<P, T>& param,
                         absl::string_view field, P& out) {
  T& value = out.*param.member;
  if constexpr (kIsList<T>) {
    const int n32 = f.field ? r.FieldSize(m, f.field) : 0;
    const int n64 = r.FieldSize(m, f.f64);
    if (n32 > 0 && n64 > 0) {
      return Invalid(absl::StrCat(Path(field, param), " and ", Path(field, param), kFloat64Suffix,
                                  " are both set; send one (", f.f64->name(), ": at full precision)"));
    }
    value.clear();
    value.reserve(n32 + n64);
    if (n64 > 0) {
      const auto list = r.GetRepeatedFieldRef<double>(m, f.f64);
      for (int i = 0; i < n64; ++i) value.push_back(list.Get(i));
    } else if (n32 > 0) {
      const auto list = r.GetRepeatedFieldRef<float>(m, f.field);
      for (int i = 0; i < n32; ++i) value.push_back(list.Get(i));
    }
  } else if constexpr (kIsSchedule<T>) {
    const int n = r.FieldSize(m, f.field);
    const StepFields step = StepFieldsOf(f.field->message_type());
    value.clear();
    value.reserve(n);
    for (int i = 0; i < n; ++i) {
      const Message& at = r.GetRepeatedMessage(m, f.field, i);
      const Reflection* ar = at.GetReflection();
      value.push_back(GammaStep{ar->GetDouble(at, step.threshold), ar->GetDouble(at, step.gamma)});
    }
  } else if (r.HasField(m, f.field)) {  // absent: the table's default
    if constexpr (std::is_same_v<T, double>) {
      value = r.GetDouble(m, f.field);
    } else if constexpr (std::is_same_v<T, bool>) {
      value = r.GetBool(m, f.field);
    } else if constexpr (std::is_same_v<T, int64_t> || std::is_same_v<T, std::optional<int64_t>>) {
      value = r.GetInt64(m, f.field);
    } else {
      static_assert(std::is_enum_v<T>);
      const int v = r.GetEnumValue(m, f.field);
      if (v < 0 || static_cast<size_t>(v) >= param.num_choices) {  // an open enum keeps unknown numbers
        return Invalid(absl::StrCat(Path(field, param), " is ", v, "; expected ", ValueNames(f.field->enum_type())));
      }
      value = static_cast<T>(v);
    }
  }
  return absl::OkStatus();
}

template <class P, class T>
void EncodeParam(const P& in, const Param<P, T>& param, const ParamFields& f, const Reflection& r, Message* m) {
  const T& value = in.*param.member;
  if constexpr (kIsList<T>) {
    if (f.field) r.ClearField(m, f.field);
    r.ClearField(m, f.f64);
    auto list = r.GetMutableRepeatedFieldRef<double>(m, f.f64);
    for (double v : value) list.Add(v);
  } else if constexpr (kIsSchedule<T>) {
    r.ClearField(m, f.field);
    const StepFields step = StepFieldsOf(f.field->message_type());
    for (const GammaStep& s : value) {
      Message* at = r.AddMessage(m, f.field);
      at->GetReflection()->SetDouble(at, step.threshold, s.threshold);
      at->GetReflection()->SetDouble(at, step.gamma, s.gamma);
    }
  } else if constexpr (std::is_same_v<T, double>) {
    r.SetDouble(m, f.field, value);
  } else if constexpr (std::is_same_v<T, bool>) {
    r.SetBool(m, f.field, value);
  } else if constexpr (std::is_same_v<T, int64_t>) {
    r.SetInt64(m, f.field, value);
  } else if constexpr (std::is_same_v<T, std::optional<int64_t>>) {
    if (value) r.SetInt64(m, f.field, *value);
  } else {
    static_assert(std::is_enum_v<T>);
    r.SetEnumValue(m, f.field, static_cast<int>(value));
  }
}

}  // namespace

// ------------------------------------------------------------------------------------------

v1::DataType ToProto(DType dtype) { return static_cast<v1::DataType>(static_cast<int>(dtype)); }

absl::StatusOr<DType> DTypeFromProto(int dtype, absl::string_view field) {
  if (dtype == v1::DATA_TYPE_UNSPECIFIED) return Invalid(absl::StrCat(field, " is not set"));
  if (dtype < static_cast<int>(DType::kFloat32) || dtype > static_cast<int>(DType::kUInt8)) {
    return Invalid(absl::StrCat(field, " is ", dtype, ", not a known DataType"));
  }
  return static_cast<DType>(dtype);
}

v1::Reduction ToProto(Reduction reduction) { return static_cast<v1::Reduction>(static_cast<int>(reduction)); }

absl::StatusOr<Reduction> ReductionFromProto(int reduction, absl::string_view field) {
  if (!v1::Reduction_IsValid(reduction)) {
    return Invalid(absl::StrCat(field, " is ", reduction, "; expected ", ValueNames(v1::Reduction_descriptor())));
  }
  return static_cast<Reduction>(reduction);
}

void TensorToProto(HostTensor&& tensor, v1::Tensor* out) {
  out->set_dtype(ToProto(tensor.dtype));
  out->mutable_shape()->Assign(tensor.shape.begin(), tensor.shape.end());
  out->set_data(std::move(tensor.bytes));  // moved, not copied
}

void TensorToProto(const HostTensor& tensor, v1::Tensor* out) {
  out->set_dtype(ToProto(tensor.dtype));
  out->mutable_shape()->Assign(tensor.shape.begin(), tensor.shape.end());
  out->set_data(tensor.bytes);
}

absl::StatusOr<TensorView> TensorViewFromProto(const v1::Tensor& tensor, absl::string_view field) {
  TensorView view;
  ASSIGN_OR_RETURN(view.dtype, DTypeFromProto(tensor.dtype(), absl::StrCat(field, ".dtype")));
  view.shape.assign(tensor.shape().begin(), tensor.shape().end());
  view.data = tensor.data().data();  // in place: no copy of the message's bytes
  view.size_bytes = tensor.data().size();
  return view;
}

absl::StatusOr<HostTensor> TensorFromProto(v1::Tensor&& tensor, absl::string_view field) {
  HostTensor out;
  ASSIGN_OR_RETURN(out.dtype, DTypeFromProto(tensor.dtype(), absl::StrCat(field, ".dtype")));
  out.shape.assign(tensor.shape().begin(), tensor.shape().end());
  out.bytes = std::move(*tensor.mutable_data());
  if (!out.SizeMatchesShape()) {
    return Invalid(absl::StrCat(field, ".data has ", out.bytes.size(), " bytes, which does not match its shape and ",
                                DTypeName(out.dtype)));
  }
  return out;
}

absl::StatusOr<LossSpec> LossSpecFromProto(const v1::LossSpec& spec, absl::string_view field) {
  const TableFields& table = Table();
  RETURN_IF_ERROR(table.status);
  LossSpec out;
  const Reflection& r = *table.reflection;
  const FieldDescriptor* set = r.GetOneofFieldDescriptor(spec, table.oneof);
  if (set == nullptr) {
    return Invalid(absl::StrCat(field, ".variant is not set; expected one of ", VariantNames()));
  }
  bool known = false;
  absl::Status status;
  size_t index = 0;
  ForEachVariant([&](auto tag) {
    using P = typename decltype(tag)::Params;
    const VariantFields& v = table.variants[index++];
    if (v.spec_field != set) return;
    known = true;
    const Message& m = r.GetMessage(spec, set);
    P p;
    size_t i = 0;
    ForEachParam<P>([&](const auto& param) {
      const ParamFields& f = v.params[i++];
      if (status.ok()) status = DecodeParam(m, *v.reflection, f, param, field, p);
    });
    out.params = std::move(p);
  });
  if (!known) {
    return Invalid(absl::StrCat(field, ".", set->name(), " is not a variant of this build; expected one of ",
                                VariantNames()));
  }
  RETURN_IF_ERROR(status);
  if (!v1::Reduction_IsValid(spec.reduction())) {
    return ReductionFromProto(spec.reduction(), absl::StrCat(field, ".reduction")).status();
  }
  out.reduction = static_cast<Reduction>(spec.reduction());
  if (spec.has_normalizer()) out.normalizer = spec.normalizer();
  return out;
}

void LossSpecToProto(const LossSpec& spec, v1::LossSpec* out) {
  const TableFields& table = Table();
  std::visit(
      [&](const auto& p) {
        using P = std::decay_t<decltype(p)>;
        size_t index = 0;
        ForEachVariant([&](auto tag) {
          const VariantFields& v = table.variants[index++];
          if constexpr (std::is_same_v<typename decltype(tag)::Params, P>) {
            if (v.spec_field == nullptr) return;  // CheckTable says why
            Message* m = table.reflection->MutableMessage(out, v.spec_field);
            const Reflection& mr = *v.reflection;
            size_t i = 0;
            ForEachParam<P>([&](const auto& param) {
              const ParamFields& f = v.params[i++];
              using T = typename std::decay_t<decltype(param)>::Type;
              if (Found<T>(f)) EncodeParam(p, param, f, mr, m);
            });
          }
        });
      },
      spec.params);
  out->set_reduction(ToProto(spec.reduction));
  if (spec.normalizer) out->set_normalizer(*spec.normalizer);
}

absl::Status RejectUnknownFields(const google::protobuf::Message& message, absl::string_view field) {
  const Reflection* reflection = message.GetReflection();
  const google::protobuf::UnknownFieldSet& unknown = reflection->GetUnknownFields(message);
  if (!unknown.empty()) {
    return Invalid(absl::StrCat(field.empty() ? "the request" : field, " has field number ", unknown.field(0).number(),
                                ", which this server's ", message.GetDescriptor()->full_name(),
                                " does not define (sent by a newer client?); it would be ignored, so the request is "
                                "refused"));
  }
  std::vector<const FieldDescriptor*> set;
  reflection->ListFields(message, &set);
  for (const FieldDescriptor* f : set) {
    if (f->cpp_type() != FieldDescriptor::CPPTYPE_MESSAGE) continue;
    const std::string path = field.empty() ? f->name() : absl::StrCat(field, ".", f->name());
    if (f->is_repeated()) {
      for (int i = 0; i < reflection->FieldSize(message, f); ++i) {
        RETURN_IF_ERROR(RejectUnknownFields(reflection->GetRepeatedMessage(message, f, i), absl::StrCat(path, "[", i, "]")));
      }
    } else {
      RETURN_IF_ERROR(RejectUnknownFields(reflection->GetMessage(message, f), path));
    }
  }
  return absl::OkStatus();
}

absl::Status CheckTable() { return Table().status; }

}  // namespace focal::wire
