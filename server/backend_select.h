// --backend: auto picks CUDA when a device answers and the CPU otherwise, and says why.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "focal/backend.h"
#include "server/options.h"

namespace focal::server {

struct SelectedBackend {
  std::unique_ptr<Backend> backend;
  std::string why;                   ///< for the start line: what was found and chosen
  std::vector<std::string> devices;  ///< "cuda:0 NVIDIA H200 (141 GB)", ...; empty on the CPU
};

absl::StatusOr<SelectedBackend> SelectBackend(const ServerOptions& options);

/// SelectBackend without the test-only decorations of the --debug-* flags.
absl::StatusOr<SelectedBackend> SelectUndecorated(const ServerOptions& options);

}  // namespace focal::server
