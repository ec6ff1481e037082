// focalctl's commands and the pieces they share: global flags → ClientOptions, variant flags
// → LossSpec, exit-code helpers.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "focal/client.h"
#include "focalctl/flags.h"

namespace focal::ctl {

struct Command {
  const char* name;
  const char* summary;      ///< one line for the main help
  const char* synopsis;     ///< what follows "focalctl" in the usage line
  const char* description;  ///< a paragraph for --help
  std::vector<FlagSpec> flags;
  int (*run)(const Flags& flags);
};

/// Every command, in the order the main help lists them.
const std::vector<Command>& Commands();
/// Flags every command takes: the target and how to authenticate to it.
const std::vector<FlagSpec>& GlobalFlags();
/// `focalctl --help`.
std::string MainHelp();
/// `focalctl COMMAND --help`.
std::string CommandHelp(const Command& command);

/// Prints "focalctl COMMAND: message" and a pointer to --help; returns kExitUsage.
int UsageError(const std::string& command, const absl::Status& status);
/// Prints "focalctl COMMAND: CODE: message"; returns kExitFailure.
int Failure(const std::string& command, const absl::Status& status);

/// The variant flags shared by compute, eval and bench.
std::vector<FlagSpec> LossFlags();
/// --reduction and --normalizer (compute and bench; eval always sums per item).
std::vector<FlagSpec> ReductionFlags();
/// A LossSpec from the variant flags; INVALID_ARGUMENT (a usage error) for a bad value or a
/// flag that does not apply to the variant. --class-alpha is left to LoadClassAlpha.
absl::StatusOr<LossSpec> ParseLossSpec(const Flags& flags, bool with_reduction);
/// Reads --class-alpha into `spec` when given (a file error is a failure, not a usage error).
absl::Status LoadClassAlpha(const Flags& flags, LossSpec& spec);
/// "float32" → DType::kFloat32, ...; INVALID_ARGUMENT naming `flag` otherwise.
absl::StatusOr<DType> ParseDType(const std::string& flag, const std::string& name);

/// ClientOptions from the global flags, before any file is read (errors are usage errors).
struct ClientSetup {
  ClientOptions options;
  std::string tls_ca_file, tls_cert_file, tls_key_file, token_file;
  bool timeout_given = false;
};
absl::StatusOr<ClientSetup> ParseClientFlags(const Flags& flags);
/// Reads the TLS and token files and makes the client (errors are failures).
absl::StatusOr<std::unique_ptr<Client>> Connect(ClientSetup setup);

int RunBench(const Flags& flags);

}  // namespace focal::ctl
