// CUDA device discovery: what `--backend=auto` asks before it picks CUDA or the CPU.
// Plain C++ types only, so callers need no CUDA headers.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace focal::cuda {

struct DeviceInfo {
  int ordinal = 0;
  std::string name;
  int compute_major = 0, compute_minor = 0;
  int multiprocessors = 0;
  int64_t l2_bytes = 0;
  int64_t memory_bytes = 0;
};

struct DeviceQuery {
  std::vector<DeviceInfo> devices;
  /// Why there are none ("no CUDA driver", "no device", the runtime's message); empty otherwise.
  std::string reason_if_none;
};

/// Lists the visible devices. Never fails: a machine without a driver or GPU gets an empty
/// list and a reason, which is how auto selection falls back to the CPU.
DeviceQuery QueryDevices();

/// "cuda:0 NVIDIA H200 (143771 MiB, sm_90)", for start lines and server info.
std::string DescribeDevice(const DeviceInfo& device);

}  // namespace focal::cuda
