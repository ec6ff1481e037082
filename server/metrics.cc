#include "server/metrics.h"

#include <prometheus/counter.h>
#include <prometheus/exposer.h>
#include <prometheus/family.h>
#include <prometheus/gauge.h>
#include <prometheus/histogram.h>
#include <prometheus/registry.h>
#include <prometheus/text_serializer.h>

#include <exception>

#include "absl/status/status.h"

#include "absl/strings/str_cat.h"

namespace focal::server {
namespace {

/// Latency buckets from 50 µs to 60 s: small requests on loopback take ~100 µs, a large
/// gradient seconds.
prometheus::Histogram::BucketBoundaries SecondsBuckets() {
  return {5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 1e-2, 2.5e-2, 5e-2, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60};
}

}  // namespace

Metrics::Metrics() : registry_(std::make_shared<prometheus::Registry>()) {
  using prometheus::BuildCounter;
  using prometheus::BuildGauge;
  using prometheus::BuildHistogram;
  requests_ = &BuildCounter().Name("focal_requests_total").Help("Calls by method, protocol (focal.v1, kserve.v2), variant and gRPC status code").Register(*registry_);
  latency_ = &BuildHistogram().Name("focal_request_latency_seconds").Help("Call latency from arrival to answer").Register(*registry_);
  queue_ = &BuildHistogram().Name("focal_queue_seconds").Help("Time a computation waited for a worker").Register(*registry_);
  compute_ = &BuildHistogram().Name("focal_compute_seconds").Help("Time a backend spent on one batch").Register(*registry_);
  elements_ = &BuildCounter().Name("focal_elements_processed_total").Help("Logits elements computed, by variant").Register(*registry_);
  bytes_in_ = &BuildCounter().Name("focal_bytes_received_total").Help("Request message bytes").Register(*registry_).Add({});
  bytes_out_ = &BuildCounter().Name("focal_bytes_sent_total").Help("Response message bytes").Register(*registry_).Add({});
  in_flight_ = &BuildGauge().Name("focal_requests_in_flight").Help("Calls being served").Register(*registry_).Add({});
  device_memory_ = &BuildGauge().Name("focal_device_memory_bytes").Help("GPU memory the backend holds (its memory pools, cached bytes included)").Register(*registry_).Add({});
}

Metrics::~Metrics() = default;

absl::StatusOr<std::unique_ptr<Metrics>> Metrics::Start(const std::string& listen) {
  std::unique_ptr<Metrics> metrics(new Metrics());
  if (listen.empty()) return metrics;
  try {
    metrics->exposer_ = std::make_unique<prometheus::Exposer>(listen);
  } catch (const std::exception& e) {
    return absl::UnavailableError(absl::StrCat("--metrics-listen=", listen, ": cannot serve metrics: ", e.what()));
  }
  metrics->exposer_->RegisterCollectable(metrics->registry_);
  const std::vector<int> ports = metrics->exposer_->GetListeningPorts();
  const std::string host = listen.substr(0, listen.rfind(':'));
  metrics->address_ = absl::StrCat(host, ":", ports.empty() ? 0 : ports.front());
  return metrics;
}

namespace {

/// Slot 0 is "" (the request did not decode); the table's variants follow in its order.
int VariantSlot(absl::string_view variant) { return VariantIndex(std::string_view(variant.data(), variant.size())) + 1; }
const char* VariantLabel(int slot) { return slot == 0 ? "" : VariantNameAt(slot - 1); }

int CodeIndex(absl::string_view code) {
  for (int c = 0; c <= 16; ++c) {
    if (absl::StatusCodeToString(static_cast<absl::StatusCode>(c)) == code) return c;
  }
  return 2;  // UNKNOWN
}

}  // namespace

void Metrics::Record(const CallRecord& call) {
  const int m = MethodIndex(call.method), v = VariantSlot(call.variant), c = CodeIndex(call.code);
  std::atomic<bool>& filled = filled_[(m * kVariants + v) * kCodes + c];
  MethodSeries& series = series_[m];
  if (!filled.load(std::memory_order_acquire)) {
    std::lock_guard<std::mutex> lock(series_mu_);
    const std::string method = kMethods[m].name, protocol = kMethods[m].protocol, variant = VariantLabel(v);
    if (!series.latency) {
      series.latency = &latency_->Add({{"method", method}, {"protocol", protocol}}, SecondsBuckets());
      series.queue = &queue_->Add({{"method", method}, {"protocol", protocol}}, SecondsBuckets());
    }
    if (!series.compute[v]) series.compute[v] = &compute_->Add({{"method", method}, {"variant", variant}}, SecondsBuckets());
    if (!elements_series_[v]) elements_series_[v] = &elements_->Add({{"variant", variant}});
    series.requests[v][c] = &requests_->Add(
        {{"method", method}, {"protocol", protocol}, {"variant", variant}, {"code", absl::StatusCodeToString(static_cast<absl::StatusCode>(c))}});
    filled.store(true, std::memory_order_release);
  }
  series.requests[v][c]->Increment();
  series.latency->Observe(call.latency_seconds);
  if (call.queue_seconds >= 0) series.queue->Observe(call.queue_seconds);
  if (call.compute_seconds >= 0) series.compute[v]->Observe(call.compute_seconds);
  if (call.elements > 0) elements_series_[v]->Increment(static_cast<double>(call.elements));
  bytes_in_->Increment(static_cast<double>(call.bytes_in));
  bytes_out_->Increment(static_cast<double>(call.bytes_out));
}

void Metrics::CallStarted() { in_flight_->Increment(); }
void Metrics::CallEnded() { in_flight_->Decrement(); }
void Metrics::SetDeviceMemoryBytes(double bytes) { device_memory_->Set(bytes); }

std::string Metrics::Exposition() const { return prometheus::TextSerializer().Serialize(registry_->Collect()); }

}  // namespace focal::server
