// focalctl's flag parsing: `--name=value`, `--name value` and bare switches, checked against
// the flags a command declares, so that an unknown or malformed flag is a usage error that
// names it.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"

namespace focal::ctl {

/// Exit codes, as every --help documents them.
inline constexpr int kExitOk = 0;
inline constexpr int kExitFailure = 1;  ///< an RPC failed, a file could not be read or written
inline constexpr int kExitUsage = 2;    ///< bad command line

struct FlagSpec {
  const char* name;
  const char* value;  ///< placeholder shown in help ("FILE"); nullptr for a switch
  const char* help;
};

/// Parsed flags of one command line. Accessors that convert return INVALID_ARGUMENT naming
/// the flag and its value.
class Flags {
 public:
  /// Parses `args` against `specs` (each a list of flags). `--help`/`-h` sets help(). A
  /// repeated flag keeps its last value. Positional arguments are errors.
  static absl::StatusOr<Flags> Parse(const std::vector<std::string>& args,
                                     const std::vector<const std::vector<FlagSpec>*>& specs);

  bool help() const { return help_; }
  bool Has(const std::string& name) const { return values_.count(name) > 0; }
  /// The value, or `fallback` when the flag is absent.
  std::string Get(const std::string& name, const std::string& fallback = "") const;
  absl::StatusOr<std::optional<double>> GetDouble(const std::string& name) const;
  absl::StatusOr<std::optional<int64_t>> GetInt(const std::string& name, int64_t min) const;
  /// A duration: "30s", "500ms", "2m", or a plain number of seconds.
  absl::StatusOr<std::optional<absl::Duration>> GetDuration(const std::string& name) const;
  /// A required flag's value, or INVALID_ARGUMENT "--name is required".
  absl::StatusOr<std::string> Require(const std::string& name) const;

 private:
  bool help_ = false;
  std::map<std::string, std::string> values_;
};

/// Help text for a flag list, one flag per line with its placeholder and description.
std::string FlagHelp(const std::vector<FlagSpec>& specs);

}  // namespace focal::ctl
