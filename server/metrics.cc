#include "server/metrics.h"

#include <prometheus/counter.h>
#include <prometheus/exposer.h>
#include <prometheus/family.h>
#include <prometheus/gauge.h>
#include <prometheus/histogram.h>
#include <prometheus/registry.h>

#include <exception>

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
  requests_ = &BuildCounter().Name("focal_requests_total").Help("Calls by method, variant and gRPC status code").Register(*registry_);
  latency_ = &BuildHistogram().Name("focal_request_latency_seconds").Help("Call latency from arrival to answer").Register(*registry_);
  queue_ = &BuildHistogram().Name("focal_queue_seconds").Help("Time a computation waited for a worker").Register(*registry_);
  compute_ = &BuildHistogram().Name("focal_compute_seconds").Help("Time a backend spent on one batch").Register(*registry_);
  elements_ = &BuildCounter().Name("focal_elements_processed_total").Help("Logits elements computed, by variant").Register(*registry_);
  bytes_in_ = &BuildCounter().Name("focal_bytes_received_total").Help("Request message bytes").Register(*registry_).Add({});
  bytes_out_ = &BuildCounter().Name("focal_bytes_sent_total").Help("Response message bytes").Register(*registry_).Add({});
  in_flight_ = &BuildGauge().Name("focal_requests_in_flight").Help("Calls being served").Register(*registry_).Add({});
  device_memory_ = &BuildGauge().Name("focal_device_memory_bytes").Help("GPU memory in use by the backend").Register(*registry_).Add({});
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

void Metrics::Record(const CallRecord& call) {
  const std::string method(call.method), variant(call.variant), code(call.code);
  requests_->Add({{"method", method}, {"variant", variant}, {"code", code}}).Increment();
  latency_->Add({{"method", method}}, SecondsBuckets()).Observe(call.latency_seconds);
  if (call.queue_seconds >= 0) queue_->Add({{"method", method}}, SecondsBuckets()).Observe(call.queue_seconds);
  if (call.compute_seconds >= 0) {
    compute_->Add({{"method", method}, {"variant", variant}}, SecondsBuckets()).Observe(call.compute_seconds);
  }
  if (call.elements > 0) elements_->Add({{"variant", variant}}).Increment(static_cast<double>(call.elements));
  bytes_in_->Increment(static_cast<double>(call.bytes_in));
  bytes_out_->Increment(static_cast<double>(call.bytes_out));
}

void Metrics::CallStarted() { in_flight_->Increment(); }
void Metrics::CallEnded() { in_flight_->Decrement(); }
void Metrics::SetDeviceMemoryBytes(double bytes) { device_memory_->Set(bytes); }

}  // namespace focal::server
