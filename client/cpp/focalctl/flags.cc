#include "focalctl/flags.h"

#include <algorithm>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"

namespace focal::ctl {
namespace {

const FlagSpec* Find(const std::vector<const std::vector<FlagSpec>*>& specs, const std::string& name) {
  for (const auto* list : specs) {
    for (const FlagSpec& spec : *list) {
      if (name == spec.name) return &spec;
    }
  }
  return nullptr;
}

}  // namespace

absl::StatusOr<Flags> Flags::Parse(const std::vector<std::string>& args,
                                   const std::vector<const std::vector<FlagSpec>*>& specs) {
  Flags flags;
  for (size_t i = 0; i < args.size(); ++i) {
    const std::string& arg = args[i];
    if (arg == "--help" || arg == "-h") {
      flags.help_ = true;
      continue;
    }
    if (arg.rfind("--", 0) != 0 || arg.size() == 2) {
      return absl::InvalidArgumentError(absl::StrCat("unexpected argument '", arg, "'; flags look like --name=value"));
    }
    std::string name = arg.substr(2);
    std::optional<std::string> value;
    if (const size_t eq = name.find('='); eq != std::string::npos) {
      value = name.substr(eq + 1);
      name.resize(eq);
    }
    const FlagSpec* spec = Find(specs, name);
    if (spec == nullptr) return absl::InvalidArgumentError(absl::StrCat("unknown flag --", name));
    if (spec->value == nullptr) {
      if (value) return absl::InvalidArgumentError(absl::StrCat("--", name, " takes no value"));
      flags.values_[name] = "true";
      continue;
    }
    if (!value) {
      if (i + 1 >= args.size()) {
        return absl::InvalidArgumentError(absl::StrCat("--", name, " needs a value (", spec->value, ")"));
      }
      value = args[++i];
    }
    flags.values_[name] = *value;
  }
  return flags;
}

std::string Flags::Get(const std::string& name, const std::string& fallback) const {
  const auto it = values_.find(name);
  return it == values_.end() ? fallback : it->second;
}

absl::StatusOr<std::optional<double>> Flags::GetDouble(const std::string& name) const {
  if (!Has(name)) return std::optional<double>();
  double v;
  if (!absl::SimpleAtod(Get(name), &v)) {
    return absl::InvalidArgumentError(absl::StrCat("--", name, "=", Get(name), " is not a number"));
  }
  return std::optional<double>(v);
}

absl::StatusOr<std::optional<int64_t>> Flags::GetInt(const std::string& name, int64_t min) const {
  if (!Has(name)) return std::optional<int64_t>();
  int64_t v;
  if (!absl::SimpleAtoi(Get(name), &v)) {
    return absl::InvalidArgumentError(absl::StrCat("--", name, "=", Get(name), " is not an integer"));
  }
  if (v < min) return absl::InvalidArgumentError(absl::StrCat("--", name, "=", v, " must be >= ", min));
  return std::optional<int64_t>(v);
}

absl::StatusOr<std::optional<absl::Duration>> Flags::GetDuration(const std::string& name) const {
  if (!Has(name)) return std::optional<absl::Duration>();
  const std::string text = Get(name);
  double seconds;
  absl::Duration d;
  if (absl::SimpleAtod(text, &seconds)) {
    d = absl::Seconds(seconds);
  } else if (!absl::ParseDuration(text, &d)) {
    return absl::InvalidArgumentError(absl::StrCat("--", name, "=", text, " is not a duration (e.g. 30s, 500ms, 2m)"));
  }
  if (d <= absl::ZeroDuration()) return absl::InvalidArgumentError(absl::StrCat("--", name, "=", text, " must be > 0"));
  return std::optional<absl::Duration>(d);
}

absl::StatusOr<std::string> Flags::Require(const std::string& name) const {
  if (!Has(name) || Get(name).empty()) return absl::InvalidArgumentError(absl::StrCat("--", name, " is required"));
  return Get(name);
}

std::string FlagHelp(const std::vector<FlagSpec>& specs) {
  std::string out;
  for (const FlagSpec& spec : specs) {
    std::string left = absl::StrCat("  --", spec.name, spec.value ? absl::StrCat(" ", spec.value) : "");
    if (left.size() < 28) {
      left.resize(28, ' ');
    } else {
      left += "\n" + std::string(28, ' ');
    }
    absl::StrAppend(&out, left, spec.help, "\n");
  }
  return out;
}

}  // namespace focal::ctl
