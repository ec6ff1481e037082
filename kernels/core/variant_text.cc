#include "focal/variant_text.h"

#include <cmath>
#include <optional>
#include <type_traits>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_replace.h"
#include "absl/strings/str_split.h"

namespace focal {
namespace {

template <class T>
struct IsOptional : std::false_type {};
template <class T>
struct IsOptional<std::optional<T>> : std::true_type {};

std::string RangeText(const Range& r, const char* rule) {
  if (rule) return rule;
  const bool low = std::isfinite(r.low), high = std::isfinite(r.high);
  if (low && high) return absl::StrCat("in [", r.low, ", ", r.high, r.high_open ? ")" : "]");
  if (low) return absl::StrCat(">= ", r.low);
  if (high) return absl::StrCat(r.high_open ? "< " : "<= ", r.high);
  return "";
}

std::string WithRange(std::string type, const Range& r, const char* rule) {
  const std::string range = RangeText(r, rule);
  return range.empty() ? type : absl::StrCat(type, " ", range);
}

template <class P, class T>
ParameterDescription Describe(const Param<P, T>& param) {
  ParameterDescription d;
  d.name = param.name;
  d.description = param.description;
  d.flag = param.flag ? param.flag : absl::StrReplaceAll(param.name, {{"_", "-"}});
  const T value = P{}.*param.member;
  if constexpr (std::is_same_v<T, double>) {
    d.type = WithRange("double", param.range, param.rule);
    d.default_value = absl::StrCat(value);
  } else if constexpr (std::is_same_v<T, int64_t>) {
    d.type = WithRange("int64", param.range, param.rule);
    d.default_value = absl::StrCat(value);
  } else if constexpr (std::is_same_v<T, bool>) {
    d.type = "bool";
    d.default_value = value ? "true" : "false";
  } else if constexpr (IsOptional<T>::value) {
    d.type = "int64";
    d.default_value = value ? absl::StrCat(*value) : "none";
  } else if constexpr (std::is_same_v<T, std::vector<double>>) {
    d.per_class_list = true;
    d.type = absl::StrCat("repeated double, one per class, each ", RangeText(param.range, param.rule));
  } else if constexpr (std::is_same_v<T, std::vector<GammaStep>>) {
    d.type = absl::StrCat("repeated (threshold, gamma): ", param.rule);
    d.default_value = "none";
  } else {
    static_assert(std::is_enum_v<T>, "a parameter type the table does not know");
    std::vector<std::string> upper;
    for (size_t i = 0; i < param.num_choices; ++i) {
      d.choices.push_back(param.choices[i]);
      upper.push_back(absl::AsciiStrToUpper(param.choices[i]));
    }
    d.type = absl::StrJoin(upper, " | ");
    d.default_value = upper.at(static_cast<size_t>(value));
  }
  if (param.default_text) d.default_value = param.default_text;
  return d;
}

/// f(param, p) for the parameter of `params` named `name`; false when there is none.
template <class F>
bool WithParameter(VariantParams& params, absl::string_view name, const F& f) {
  return std::visit(
      [&](auto& p) {
        bool found = false;
        ForEachParam<std::decay_t<decltype(p)>>([&](const auto& param) {
          if (!found && name == param.name) {
            found = true;
            f(param, p);
          }
        });
        return found;
      },
      params);
}

absl::Status NoSuchParameter(const VariantParams& params, absl::string_view name) {
  std::vector<std::string> names;
  std::visit([&](const auto& p) {
    ForEachParam<std::decay_t<decltype(p)>>([&](const auto& param) { names.push_back(param.name); });
  }, params);
  return absl::InvalidArgumentError(absl::StrCat(VariantName(params), " has no parameter ", name, "; it takes ",
                                                 names.empty() ? "none" : absl::StrJoin(names, ", ")));
}

}  // namespace

const std::vector<VariantDescription>& DescribeVariants() {
  static const auto* variants = [] {
    auto* out = new std::vector<VariantDescription>;
    ForEachVariant([&](auto tag) {
      using P = typename decltype(tag)::Params;
      VariantDescription v;
      v.name = Variant<P>::kFacts.name;
      v.summary = Variant<P>::kFacts.summary;
      v.num_objects = Variant<P>::kFacts.num_objects;
      ForEachParam<P>([&](const auto& param) { v.parameters.push_back(Describe(param)); });
      out->push_back(std::move(v));
    });
    return out;
  }();
  return *variants;
}

const VariantDescription& DescribeVariant(const VariantParams& params) {
  return DescribeVariants()[params.index()];  // the table's order is VariantParams'
}

namespace {
/// The names of the variants whose facts say `takes`, joined by ", ".
std::string VariantsWhere(bool VariantFacts::*takes) {
  std::vector<std::string> takers;
  ForEachVariant([&](auto tag) {
    const VariantFacts& facts = Variant<typename decltype(tag)::Params>::kFacts;
    if (facts.*takes) takers.push_back(facts.name);
  });
  return absl::StrJoin(takers, ", ");
}
}  // namespace

const std::string& NumObjectsVariants() {
  static const auto* names = new std::string(VariantsWhere(&VariantFacts::num_objects));
  return *names;
}

const std::string& ScoresVariants() {
  static const auto* names = new std::string(VariantsWhere(&VariantFacts::scores));
  return *names;
}

std::string VariantNames(absl::string_view separator) {
  std::vector<std::string> names;
  for (const VariantDescription& v : DescribeVariants()) names.push_back(v.name);
  return absl::StrJoin(names, separator);
}

absl::Status SetParameterFromText(VariantParams& params, absl::string_view name, absl::string_view text) {
  absl::Status status;
  const bool found = WithParameter(params, name, [&](const auto& param, auto& p) {
    using T = typename std::decay_t<decltype(param)>::Type;
    auto bad = [&](const char* expected) {
      status = absl::InvalidArgumentError(absl::StrCat(name, " is '", text, "'; expected ", expected));
    };
    if constexpr (std::is_same_v<T, double>) {
      double v;
      if (absl::SimpleAtod(text, &v)) p.*param.member = v; else bad("a number");
    } else if constexpr (std::is_same_v<T, bool>) {
      bool v;
      if (absl::SimpleAtob(text, &v)) p.*param.member = v; else bad("true or false");
    } else if constexpr (std::is_same_v<T, int64_t> || IsOptional<T>::value) {
      int64_t v;
      if (absl::SimpleAtoi(text, &v)) p.*param.member = v; else bad("an integer");
    } else if constexpr (std::is_same_v<T, std::vector<double>>) {
      status = absl::InvalidArgumentError(absl::StrCat(name, " is a list of one value per class, not one value"));
    } else if constexpr (std::is_same_v<T, std::vector<GammaStep>>) {
      // "0.2:5,0.5:3": threshold:gamma pairs; ranges and order are ValidateJob's.
      std::vector<GammaStep> steps;
      for (absl::string_view pair : absl::StrSplit(text, ',', absl::SkipWhitespace())) {
        const std::vector<absl::string_view> parts = absl::StrSplit(pair, ':');
        GammaStep step;
        if (parts.size() != 2 || !absl::SimpleAtod(parts[0], &step.threshold) ||
            !absl::SimpleAtod(parts[1], &step.gamma)) {
          bad("threshold:gamma pairs separated by commas, e.g. 0.2:5,0.5:3");
          return;
        }
        steps.push_back(step);
      }
      p.*param.member = std::move(steps);
    } else {
      for (size_t i = 0; i < param.num_choices; ++i) {
        if (absl::AsciiStrToLower(text) == param.choices[i]) {
          p.*param.member = static_cast<T>(i);
          return;
        }
      }
      std::vector<std::string> choices(param.choices, param.choices + param.num_choices);
      bad(absl::StrJoin(choices, " or ").c_str());
    }
  });
  if (!found) return NoSuchParameter(params, name);
  return status;
}

absl::Status SetParameterList(VariantParams& params, absl::string_view name, std::vector<double> values) {
  absl::Status status;
  const bool found = WithParameter(params, name, [&](const auto& param, auto& p) {
    using T = typename std::decay_t<decltype(param)>::Type;
    if constexpr (std::is_same_v<T, std::vector<double>>) {
      p.*param.member = std::move(values);
    } else {
      status = absl::InvalidArgumentError(absl::StrCat(name, " takes one value, not a list"));
    }
  });
  if (!found) return NoSuchParameter(params, name);
  return status;
}

}  // namespace focal
