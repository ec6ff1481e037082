// Prometheus metrics (prometheus-cpp), scraped at http://<--metrics-listen>/metrics.
#pragma once

#include <array>
#include <atomic>
#include <cstdint>
#include <iterator>
#include <memory>
#include <mutex>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "focal/params.h"

namespace prometheus {
class Exposer;
class Registry;
class Gauge;
template <typename T>
class Family;
class Counter;
class Histogram;
}  // namespace prometheus

namespace focal::server {

/// The methods calls are counted under, each with its protocol's label: focal.v1's, then the
/// Open Inference Protocol's (kserve.v2). Method names are unique across both.
struct MethodLabel {
  const char* name;
  const char* protocol;
};
inline constexpr MethodLabel kMethods[] = {
    {"Compute", "focal.v1"},         {"ComputeStream", "focal.v1"},   {"Evaluate", "focal.v1"},
    {"GetServerInfo", "focal.v1"},   {"RegisterSharedMemory", "focal.v1"}, {"UnregisterSharedMemory", "focal.v1"},
    {"ListSharedMemory", "focal.v1"}, {"ModelInfer", "kserve.v2"},    {"ModelStreamInfer", "kserve.v2"},
    {"ServerLive", "kserve.v2"},     {"ServerReady", "kserve.v2"},    {"ModelReady", "kserve.v2"},
    {"ServerMetadata", "kserve.v2"}, {"ModelMetadata", "kserve.v2"},  {"ModelConfig", "kserve.v2"},
    {"ModelStatistics", "kserve.v2"},
};
inline constexpr int kNumMethods = static_cast<int>(std::size(kMethods));

/// The index of `method` in kMethods (a name not there counts as the last).
inline int MethodIndex(absl::string_view method) {
  for (int m = 0; m < kNumMethods; ++m) {
    if (method == kMethods[m].name) return m;
  }
  return kNumMethods - 1;
}

/// What one finished call reports.
struct CallRecord {
  absl::string_view method;   ///< one of kMethods' names
  absl::string_view variant;  ///< "" when unknown (decode failed)
  absl::string_view code;     ///< gRPC status code name, "OK", "INVALID_ARGUMENT", ...
  double latency_seconds = 0;
  double queue_seconds = -1;    ///< < 0 when the call never queued
  double compute_seconds = -1;  ///< < 0 when nothing was computed
  int64_t bytes_in = 0, bytes_out = 0;
  int64_t elements = 0;  ///< logits elements computed
};

class Metrics {
 public:
  /// Starts the HTTP exposer on `listen` ("host:port", port 0 picks one); empty: metrics are
  /// still counted but not served.
  static absl::StatusOr<std::unique_ptr<Metrics>> Start(const std::string& listen);
  ~Metrics();

  /// "host:port" actually bound, or "" when not served.
  std::string address() const { return address_; }

  void Record(const CallRecord& call);
  void CallStarted();
  void CallEnded();
  /// focal_device_memory_bytes: what Backend::DeviceMemoryBytes reported last (after each batch).
  void SetDeviceMemoryBytes(double bytes);
  /// The text a scrape of /metrics gets now (served or not): for tests.
  std::string Exposition() const;

 private:
  Metrics();
  std::shared_ptr<prometheus::Registry> registry_;
  std::unique_ptr<prometheus::Exposer> exposer_;
  std::string address_;
  prometheus::Family<prometheus::Counter>* requests_;
  prometheus::Family<prometheus::Histogram>* latency_;
  prometheus::Family<prometheus::Histogram>* queue_;
  prometheus::Family<prometheus::Histogram>* compute_;
  prometheus::Family<prometheus::Counter>* elements_;
  prometheus::Counter* bytes_in_;
  prometheus::Counter* bytes_out_;
  prometheus::Gauge* in_flight_;
  prometheus::Gauge* device_memory_;

  // Series looked up once per label combination and kept: prometheus-cpp's Family::Add builds a
  // label map and takes a lock on every call, which showed on small requests. The label values
  // come from small closed sets: methods, variants (and "" for unknown), gRPC codes.
  static constexpr int kVariants = static_cast<int>(kNumVariants) + 1, kCodes = 17;
  struct MethodSeries {
    prometheus::Histogram* latency = nullptr;
    prometheus::Histogram* queue = nullptr;
    std::array<prometheus::Histogram*, kVariants> compute{};
    std::array<std::array<prometheus::Counter*, kCodes>, kVariants> requests{};
  };
  std::mutex series_mu_;  ///< guards filling the tables below (reads after filling are lock-free)
  std::array<MethodSeries, kNumMethods> series_{};
  std::array<prometheus::Counter*, kVariants> elements_series_{};
  std::array<std::atomic<bool>, kNumMethods * kVariants * kCodes> filled_{};
};

}  // namespace focal::server
