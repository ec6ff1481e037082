// focalctl bench: closed-loop load from N workers for a fixed time, reported like ghz.
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <map>
#include <mutex>
#include <random>
#include <thread>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/time/time.h"
#include "focalctl/commands.h"

namespace focal::ctl {
namespace {

using Clock = std::chrono::steady_clock;

absl::StatusOr<std::vector<int64_t>> ParseShape(const std::string& text) {
  std::vector<int64_t> shape;
  for (absl::string_view part : absl::StrSplit(text, ',')) {
    int64_t d;
    if (!absl::SimpleAtoi(part, &d) || d <= 0) {
      return absl::InvalidArgumentError(absl::StrCat("--shape=", text, " is not a list of positive sizes like 64,80"));
    }
    shape.push_back(d);
  }
  return shape;
}

/// Random inputs of `shape` that `spec`'s variant accepts (fixed seed: every run sends the same).
absl::StatusOr<ComputeCall> MakeCall(const LossSpec& spec, const std::vector<int64_t>& shape, DType dtype,
                                     bool gradient) {
  const VariantFacts& facts = FactsOf(spec.params);
  const bool class_indexed = facts.targets == Targets::kClassIndex;
  const int rank = static_cast<int>(shape.size());
  if (rank < facts.min_rank || rank > facts.max_rank || (class_indexed && rank < 2)) {
    return absl::InvalidArgumentError(absl::StrCat("--shape: ", facts.name, " needs logits ",
                                                   facts.logits_shape));
  }
  std::mt19937 rng(42);
  std::normal_distribution<float> normal(0.0f, 2.0f);
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  std::vector<float> logits(static_cast<size_t>(n));
  const bool probabilities = TakesProbabilities(spec.params);
  std::uniform_real_distribution<float> unit(0.0f, 1.0f);
  for (float& x : logits) x = probabilities ? unit(rng) : normal(rng);

  ComputeCall call;
  call.loss = spec;
  call.logits = HostTensor::FromFloats(dtype, shape, logits);
  call.compute_gradient = gradient;
  std::vector<int64_t> row_shape = {shape[0]};  // one target per row: [N, d1..dk]
  if (rank >= 2) row_shape.insert(row_shape.end(), shape.begin() + 2, shape.end());
  const int64_t rows = rank >= 2 && shape[1] > 0 ? n / shape[1] : 0;
  if (class_indexed) {
    std::uniform_int_distribution<int64_t> cls(0, shape[1] - 1);
    std::vector<int64_t> targets(static_cast<size_t>(rows));
    for (int64_t& t : targets) t = cls(rng);
    call.targets = HostTensor::Int64(row_shape, targets);
  } else if (facts.targets == Targets::kFloatPerRow) {
    // distribution_focal: a distance in bins [0, B-1] per row.
    if (rank < 2) return absl::InvalidArgumentError(absl::StrCat("--shape: ", facts.name, " needs logits ", facts.logits_shape));
    std::uniform_real_distribution<float> distance(0.0f, static_cast<float>(shape[1] - 1));
    std::vector<float> targets(static_cast<size_t>(rows));
    for (float& t : targets) t = distance(rng);
    call.targets = HostTensor::FromFloats(dtype, row_shape, targets);
  } else if (!facts.binary_targets && facts.mean_over == MeanOver::kPositives) {
    // quality targets: sparse positives with their quality in (0, 1].
    std::vector<float> targets(static_cast<size_t>(n));
    for (float& t : targets) t = unit(rng) < 0.1f ? unit(rng) : 0.0f;
    call.targets = HostTensor::FromFloats(dtype, shape, targets);
  } else {
    // Sparse positives, as in detection: about one in ten.
    std::vector<float> targets(static_cast<size_t>(n));
    for (float& t : targets) t = unit(rng) < 0.1f ? 1.0f : 0.0f;
    call.targets = HostTensor::FromFloats(dtype, shape, targets);
  }
  if (facts.num_objects) {
    std::uniform_int_distribution<int> objects(1, 10);
    std::vector<float> num(static_cast<size_t>(shape[0]));
    for (float& v : num) v = static_cast<float>(objects(rng));
    call.num_objects = HostTensor::Float32({shape[0]}, num);
  }
  return call;
}

std::string Millis(double ms) { return absl::StrFormat("%.2f ms", ms); }

}  // namespace

int RunBench(const Flags& flags) {
  const std::string cmd = "bench";
  absl::StatusOr<ClientSetup> setup = ParseClientFlags(flags);
  if (!setup.ok()) return UsageError(cmd, setup.status());
  absl::StatusOr<LossSpec> spec = ParseLossSpec(flags, /*with_reduction=*/true);
  if (!spec.ok()) return UsageError(cmd, spec.status());
  absl::StatusOr<std::optional<int64_t>> concurrency = flags.GetInt("concurrency", 1);
  if (!concurrency.ok()) return UsageError(cmd, concurrency.status());
  absl::StatusOr<std::optional<absl::Duration>> duration = flags.GetDuration("duration");
  if (!duration.ok()) return UsageError(cmd, duration.status());
  absl::StatusOr<std::vector<int64_t>> shape = ParseShape(flags.Get("shape", "64,80"));
  if (!shape.ok()) return UsageError(cmd, shape.status());
  absl::StatusOr<DType> dtype = ParseDType("dtype", flags.Get("dtype", "float32"));
  if (!dtype.ok()) return UsageError(cmd, dtype.status());
  if (!IsFloating(*dtype)) return UsageError(cmd, absl::InvalidArgumentError("--dtype must be a floating dtype"));
  if (absl::Status s = LoadClassAlpha(flags, *spec); !s.ok()) return Failure(cmd, s);
  absl::StatusOr<ComputeCall> call = MakeCall(*spec, *shape, *dtype, flags.Has("gradient"));
  if (!call.ok()) return UsageError(cmd, call.status());
  const int workers = static_cast<int>(concurrency->value_or(4));
  const absl::Duration run_for = duration->value_or(absl::Seconds(10));

  const std::string target = setup->options.target;
  absl::StatusOr<std::unique_ptr<Client>> client = Connect(*std::move(setup));
  if (!client.ok()) return Failure(cmd, client.status());

  std::printf("bench %s %s %s%s: %d workers for %s against %s\n", VariantName(spec->params), DTypeName(*dtype),
              absl::StrJoin(*shape, "x").c_str(), flags.Has("gradient") ? " with gradient" : "", workers,
              absl::FormatDuration(run_for).c_str(), target.c_str());
  std::fflush(stdout);

  struct WorkerResult {
    std::vector<double> latencies_ms;  ///< successful calls
    std::map<std::string, int64_t> codes;
    std::map<std::string, std::string> first_error;  ///< per code, one message to show
  };
  std::vector<WorkerResult> results(static_cast<size_t>(workers));
  const Clock::time_point start = Clock::now();
  const Clock::time_point stop = start + absl::ToChronoNanoseconds(run_for);
  std::vector<std::thread> threads;
  for (int w = 0; w < workers; ++w) {
    threads.emplace_back([&, w] {
      WorkerResult& r = results[static_cast<size_t>(w)];
      while (Clock::now() < stop) {
        const Clock::time_point t0 = Clock::now();
        absl::StatusOr<ComputeOutput> out = (*client)->Compute(*call);
        const double ms = std::chrono::duration<double, std::milli>(Clock::now() - t0).count();
        const std::string code = absl::StatusCodeToString(out.status().code());
        ++r.codes[code];
        if (out.ok()) {
          r.latencies_ms.push_back(ms);
        } else if (!r.first_error.count(code)) {
          r.first_error[code] = std::string(out.status().message());
        }
      }
    });
  }
  for (std::thread& t : threads) t.join();
  const double total_s = std::chrono::duration<double>(Clock::now() - start).count();

  std::vector<double> all;
  std::map<std::string, int64_t> codes;
  std::map<std::string, std::string> errors;
  int64_t calls = 0;
  for (const WorkerResult& r : results) {
    all.insert(all.end(), r.latencies_ms.begin(), r.latencies_ms.end());
    for (const auto& [code, n] : r.codes) {
      codes[code] += n;
      calls += n;
    }
    for (const auto& [code, message] : r.first_error) errors.emplace(code, message);
  }
  std::sort(all.begin(), all.end());
  // Nearest-rank percentiles, as ghz reports them.
  auto percentile = [&all](double p) {
    const size_t rank = static_cast<size_t>(std::ceil(p / 100.0 * static_cast<double>(all.size())));
    return all[std::min(all.size() - 1, rank == 0 ? 0 : rank - 1)];
  };
  double sum = 0;
  for (double ms : all) sum += ms;

  std::printf("\nSummary:\n");
  std::printf("  Count:\t%lld\n", static_cast<long long>(calls));
  std::printf("  Total:\t%.2f s\n", total_s);
  if (!all.empty()) {
    std::printf("  Slowest:\t%s\n", Millis(all.back()).c_str());
    std::printf("  Fastest:\t%s\n", Millis(all.front()).c_str());
    std::printf("  Average:\t%s\n", Millis(sum / static_cast<double>(all.size())).c_str());
  }
  std::printf("  Requests/sec:\t%.2f\n", static_cast<double>(calls) / total_s);
  if (!all.empty()) {
    std::printf("\nLatency distribution (successful calls):\n");
    std::printf("  p50\t%s\n", Millis(percentile(50)).c_str());
    std::printf("  p90\t%s\n", Millis(percentile(90)).c_str());
    std::printf("  p99\t%s\n", Millis(percentile(99)).c_str());
    std::printf("  max\t%s\n", Millis(all.back()).c_str());
  }
  std::printf("\nStatus code distribution:\n");
  for (const auto& [code, n] : codes) {
    std::printf("  [%s]\t%lld responses\n", code.c_str(), static_cast<long long>(n));
  }
  if (!errors.empty()) {
    std::printf("\nError distribution (first message per code):\n");
    for (const auto& [code, message] : errors) std::printf("  [%s]\t%s\n", code.c_str(), message.c_str());
  }
  return codes.size() == 1 && codes.count("OK") ? kExitOk : kExitFailure;
}

}  // namespace focal::ctl
