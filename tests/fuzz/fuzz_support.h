// What both fuzz targets share: limits small enough that every input runs in microseconds, the
// CPU backend on one thread, and the checks every answer must pass (beyond "no crash, no
// sanitizer report", which libFuzzer and the sanitizers see for themselves).
#pragma once

#include <cstdio>
#include <cstdlib>

#include "absl/status/status.h"
#include "kernels/cpu/cpu_backend.h"
#include "server/limits.h"

namespace focal::fuzz {

inline server::RequestLimits SmallLimits() {
  server::RequestLimits limits;
  limits.max_elements = 1 << 14;
  limits.max_classes = 1 << 10;
  return limits;
}

inline const CpuBackend& Backend() {
  static const CpuBackend* backend = new CpuBackend(CpuBackendOptions{1});
  return *backend;
}

/// Aborts (a finding) when an error is not one a client may be given for its own input, or
/// says too little to act on.
inline void CheckClientError(const absl::Status& status) {
  if (status.ok()) return;
  const absl::StatusCode code = status.code();
  if (code != absl::StatusCode::kInvalidArgument && code != absl::StatusCode::kResourceExhausted) {
    std::fprintf(stderr, "unexpected status for a client's input: %s\n", status.ToString().c_str());
    std::abort();
  }
  if (status.message().empty() || status.message().size() > 4096) {
    std::fprintf(stderr, "error message of %zu bytes\n", status.message().size());
    std::abort();
  }
  // Whatever a client sent reaches messages escaped (server/wire.h's Loggable): no control
  // character, so no forged log line.
  for (const char c : status.message()) {
    if (static_cast<unsigned char>(c) < 0x20 || c == 0x7f) {
      std::fprintf(stderr, "control character 0x%02x in an error message\n", static_cast<unsigned char>(c));
      std::abort();
    }
  }
}

/// Aborts when a computed answer is inconsistent with its job.
inline void CheckResult(const LossJob& job, const LossResult& result) {
  if (result.count < 0) std::abort();
  if (job.compute_gradient) {
    if (!result.gradient || result.gradient->bytes.size() != job.logits.size_bytes / DTypeSize(job.logits.dtype) *
                                                                   DTypeSize(result.gradient->dtype)) {
      std::fprintf(stderr, "gradient does not match the logits\n");
      std::abort();
    }
  }
  if ((job.spec.reduction == Reduction::kNone) != result.losses.has_value()) std::abort();
}

}  // namespace focal::fuzz
