// Evaluate's analyses on the server's side, without the transport: one [65536, 80] float32 batch
// of sigmoid_focal (5% positives) and of softmax_focal, the plain Evaluate pass (the backend's
// per-item losses, then EvaluationTotals) against EvaluationAnalyses::Add with a γ sweep of K
// values and with calibration, on every core, as the server runs them. Issue 13's goal is for
// the whole call (tests/bench/evaluate_sweep_bench.py); this one shows where the time goes.
//
//     build/tests/bench/analyses_bench [--benchmark_repetitions=5]
#include <benchmark/benchmark.h>

#include <random>
#include <vector>

#include "kernels/cpu/cpu_backend.h"
#include "server/analyses.h"
#include "server/evaluation.h"

namespace focal::server {
namespace {

constexpr int64_t kRows = 65536, kClasses = 80;

struct Batch {
  std::vector<float> logits, onehot;
  std::vector<int64_t> classes;
  LossJob sigmoid, softmax;
};

const Batch& TheBatch() {
  static const Batch* batch = [] {
    auto* b = new Batch;
    std::mt19937 rng(13);
    std::normal_distribution<float> normal(0, 3);
    std::uniform_real_distribution<float> unit(0, 1);
    std::uniform_int_distribution<int64_t> cls(0, kClasses - 1);
    b->logits.resize(kRows * kClasses);
    for (float& x : b->logits) x = normal(rng);
    b->onehot.resize(b->logits.size());
    for (float& t : b->onehot) t = unit(rng) < 0.05f ? 1.0f : 0.0f;
    b->classes.resize(kRows);
    for (int64_t& y : b->classes) y = cls(rng);
    auto view = [](const auto& v, DType dtype, Shape shape) {
      return TensorView{dtype, std::move(shape), v.data(), v.size() * sizeof(v[0])};
    };
    b->sigmoid.spec.params = SigmoidFocalParams{};
    b->sigmoid.logits = view(b->logits, DType::kFloat32, {kRows, kClasses});
    b->sigmoid.targets = view(b->onehot, DType::kFloat32, {kRows, kClasses});
    b->softmax.spec.params = SoftmaxFocalParams{};
    b->softmax.logits = b->sigmoid.logits;
    b->softmax.targets = view(b->classes, DType::kInt64, {kRows});
    for (LossJob* job : {&b->sigmoid, &b->softmax}) {
      job->spec.reduction = Reduction::kNone;
      job->compute_gradient = false;
      job->output_dtype = DType::kFloat32;
    }
    return b;
  }();
  return *batch;
}

const LossJob& JobOf(int64_t softmax) { return softmax ? TheBatch().softmax : TheBatch().sigmoid; }

void BM_PlainEvaluate(benchmark::State& state) {
  const CpuBackend backend;
  const LossJob& job = JobOf(state.range(0));
  for (auto _ : state) {
    EvaluationTotals totals;
    const auto result = backend.Compute(job);
    if (!result.ok() || !totals.Add(job, *result).ok()) state.SkipWithError("the plain pass failed");
  }
  state.SetItemsProcessed(state.iterations() * kRows * kClasses);
}

void BM_Analyses(benchmark::State& state) {
  const LossJob& job = JobOf(state.range(0));
  v1::EvaluateOptions options;
  const int64_t k = state.range(1);
  for (int64_t i = 0; i < k; ++i) options.add_gamma_sweep(5.0 * static_cast<double>(i) / std::max<int64_t>(1, k - 1));
  if (k == 1) options.set_gamma_sweep(0, 2.0);
  options.set_calibration_bins(static_cast<int>(state.range(2)));
  for (auto _ : state) {
    EvaluationAnalyses analyses;
    if (!analyses.Check(options, job).ok() || !analyses.Add(job).ok()) state.SkipWithError("the analyses failed");
  }
  state.SetItemsProcessed(state.iterations() * kRows * kClasses);
}

// {softmax?}; {softmax?, K, calibration bins}.
BENCHMARK(BM_PlainEvaluate)->ArgNames({"softmax"})->Args({0})->Args({1})->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_Analyses)
    ->ArgNames({"softmax", "K", "calibration"})
    ->ArgsProduct({{0, 1}, {1, 4, 16}, {0}})
    ->Args({0, 0, 15})
    ->Args({1, 0, 15})
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();

}  // namespace
}  // namespace focal::server

BENCHMARK_MAIN();
