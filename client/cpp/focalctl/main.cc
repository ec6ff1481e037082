// focalctl: the command-line client of focalserve. `focalctl --help` lists the commands; every
// command takes --help. Exit codes: 0 success, 1 RPC or file failure, 2 usage error.
#include <cstdio>
#include <string>
#include <vector>

#include "focalctl/commands.h"

namespace focal::ctl {
namespace {

const Command* FindCommand(const std::string& name) {
  for (const Command& c : Commands()) {
    if (name == c.name) return &c;
  }
  return nullptr;
}

/// Whether global flag `arg` ("--name" without "=value") takes the next argument as its value.
bool TakesValue(const std::string& arg) {
  if (arg.rfind("--", 0) != 0 || arg.find('=') != std::string::npos) return false;
  for (const FlagSpec& f : GlobalFlags()) {
    if (arg.substr(2) == f.name) return f.value != nullptr;
  }
  return false;
}

int Main(int argc, char** argv) {
  // Global flags may come before the command; everything else follows it.
  std::vector<std::string> args;
  const Command* command = nullptr;
  bool help = false;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (command != nullptr) {
      args.push_back(arg);
    } else if (arg == "--help" || arg == "-h" || arg == "help") {
      help = true;
    } else if (arg.rfind("-", 0) == 0) {
      args.push_back(arg);
      if (TakesValue(arg) && i + 1 < argc) args.push_back(argv[++i]);
    } else {
      command = FindCommand(arg);
      if (command == nullptr) {
        std::fprintf(stderr, "focalctl: unknown command '%s'\nrun 'focalctl --help' for the commands\n", arg.c_str());
        return kExitUsage;
      }
    }
  }
  if (command == nullptr) {
    if (help) {
      std::fputs(MainHelp().c_str(), stdout);
      return kExitOk;
    }
    std::fputs(MainHelp().c_str(), stderr);
    std::fputs("\nfocalctl: no command given\n", stderr);
    return kExitUsage;
  }
  absl::StatusOr<Flags> flags = Flags::Parse(args, {&GlobalFlags(), &command->flags});
  if (help || (flags.ok() && flags->help())) {
    std::fputs(CommandHelp(*command).c_str(), stdout);
    return kExitOk;
  }
  if (!flags.ok()) return UsageError(command->name, flags.status());
  return command->run(*flags);
}

}  // namespace
}  // namespace focal::ctl

int main(int argc, char** argv) { return focal::ctl::Main(argc, argv); }
