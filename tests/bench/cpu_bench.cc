// CPU backend throughput: forward + gradient of each variant, float32, MEAN, on the issue's
// shapes (the catalogue's variants on the [N, C] ones), in logits elements per second; plus copy/<shape>, a plain parallel copy of the logits'
// bytes into the gradient buffer (read once, write once): the memory-bandwidth floor that a
// fused single pass cannot beat. Names are <variant>/<shape>; tests/bench/torch_compare.py runs
// this binary and times PyTorch on the same shapes in the same run.
#include <benchmark/benchmark.h>
#include <omp.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <map>
#include <memory>
#include <random>

#include "focal/host_memory.h"
#include "kernels/cpu/cpu_backend.h"

namespace focal {
namespace {

struct Inputs {
  Shape shape;
  int64_t numel = 0;
  std::vector<float> logits;
  std::vector<int64_t> classes;  ///< [N, *]
  std::vector<uint8_t> class_bytes;  ///< the same classes as uint8 (segmentation masks' dtype)
  std::vector<float> onehot;     ///< float targets shaped like the logits
  std::vector<float> quality;    ///< the one-hot's positives at a quality in (0, 1] (QFL, VFL)
  std::vector<float> distances;  ///< [N, *] in [0, C-1]: distribution_focal's targets
};

/// Inputs are built once per shape: random normal logits (never zeros), random classes.
const Inputs& InputsFor(const Shape& shape) {
  static std::map<Shape, std::unique_ptr<Inputs>> cache;
  auto& slot = cache[shape];
  if (slot) return *slot;
  slot = std::make_unique<Inputs>();
  Inputs& in = *slot;
  in.shape = shape;
  in.numel = 1;
  for (int64_t d : shape) in.numel *= d;
  const int64_t n = shape[0], c = shape[1], s = in.numel / (n * c);
  std::mt19937 rng(42);
  std::normal_distribution<float> normal(0, 3);
  std::uniform_int_distribution<int64_t> cls(0, c - 1);
  in.logits.resize(in.numel);
  for (float& x : in.logits) x = normal(rng);
  in.classes.resize(n * s);
  for (int64_t& y : in.classes) y = cls(rng);
  if (c <= 255) in.class_bytes.assign(in.classes.begin(), in.classes.end());
  in.onehot.assign(in.numel, 0.0f);
  for (int64_t i = 0; i < n; ++i) {
    for (int64_t j = 0; j < s; ++j) in.onehot[(i * c + in.classes[i * s + j]) * s + j] = 1.0f;
  }
  std::uniform_real_distribution<float> unit(0.0f, 1.0f);
  in.quality = in.onehot;
  for (float& q : in.quality) q = q > 0 ? std::max(unit(rng), 0.01f) : 0.0f;
  std::uniform_real_distribution<float> distance(0.0f, static_cast<float>(c - 1));
  in.distances.resize(n * s);
  for (float& y : in.distances) y = distance(rng);
  return in;
}

enum class Kind {
  kSoftmax,
  kSoftmaxByteTargets,
  kSigmoidFloat,
  kSigmoidIndex,
  kFocalCosine,
  kDynamic,
  kAsymmetric,
  kQualityFocal,
  kVarifocal,
  kFocalStar,
  kDistributionFocal,
};

/// Where the gradient goes: a buffer of the backend's own (malloc's 16-byte alignment), or a
/// page-aligned one given as LossJob::gradient_into, as a client's shared-memory region is.
enum class Output { kOwn, kInto };

void RunLoss(benchmark::State& state, Kind kind, const Shape& shape, Output output) {
  const Inputs& in = InputsFor(shape);
  Shape target_shape{shape[0]};
  target_shape.insert(target_shape.end(), shape.begin() + 2, shape.end());
  LossJob job;
  job.logits = TensorView{DType::kFloat32, shape, in.logits.data(), in.logits.size() * 4};
  const TensorView class_view{DType::kInt64, target_shape, in.classes.data(), in.classes.size() * 8};
  const TensorView float_view{DType::kFloat32, shape, in.onehot.data(), in.onehot.size() * 4};
  const TensorView quality_view{DType::kFloat32, shape, in.quality.data(), in.quality.size() * 4};
  const TensorView distance_view{DType::kFloat32, target_shape, in.distances.data(), in.distances.size() * 4};
  switch (kind) {
    case Kind::kSoftmax: job.spec.params = SoftmaxFocalParams{}; job.targets = class_view; break;
    case Kind::kSoftmaxByteTargets:
      job.spec.params = SoftmaxFocalParams{};
      job.targets = TensorView{DType::kUInt8, target_shape, in.class_bytes.data(), in.class_bytes.size()};
      break;
    case Kind::kSigmoidFloat: job.spec.params = SigmoidFocalParams{}; job.targets = float_view; break;
    case Kind::kSigmoidIndex: job.spec.params = SigmoidFocalParams{}; job.targets = class_view; break;
    case Kind::kFocalCosine: job.spec.params = FocalCosineParams{}; job.targets = class_view; break;
    case Kind::kDynamic: job.spec.params = DynamicFocalParams{}; job.targets = float_view; break;
    // The catalogue at its papers' defaults (ASL: γ- 4, γ+ 0, clip 0.05).
    case Kind::kAsymmetric: job.spec.params = AsymmetricParams{}; job.targets = float_view; break;
    case Kind::kQualityFocal: job.spec.params = QualityFocalParams{}; job.targets = quality_view; break;
    case Kind::kVarifocal: job.spec.params = VarifocalParams{}; job.targets = quality_view; break;
    case Kind::kFocalStar: job.spec.params = FocalStarParams{}; job.targets = float_view; break;
    case Kind::kDistributionFocal: job.spec.params = DistributionFocalParams{}; job.targets = distance_view; break;
  }
  job.compute_gradient = true;
  std::unique_ptr<void, decltype(&std::free)> into(nullptr, &std::free);
  if (output == Output::kInto) {
    const size_t bytes = job.logits.size_bytes;
    into.reset(std::aligned_alloc(4096, (bytes + 4095) / 4096 * 4096));
    job.gradient_into = into.get();
    job.gradient_into_bytes = bytes;
  }
  const CpuBackend backend;
  (void)backend.Compute(job);  // warm-up: first-touch page faults are not the kernel's cost
  for (auto _ : state) {
    auto result = backend.Compute(job);
    if (!result.ok()) {
      state.SkipWithError(std::string(result.status().message()).c_str());
      return;
    }
    benchmark::DoNotOptimize(result->loss);
  }
  state.SetItemsProcessed(state.iterations() * in.numel);
  state.SetBytesProcessed(state.iterations() *
                          static_cast<int64_t>(job.logits.size_bytes * 2 + job.targets.size_bytes));
}

void BM_Loss(benchmark::State& state, Kind kind, Shape shape) { RunLoss(state, kind, shape, Output::kOwn); }
void BM_LossInto(benchmark::State& state, Kind kind, Shape shape) { RunLoss(state, kind, shape, Output::kInto); }

void BM_Copy(benchmark::State& state, Shape shape) {
  const Inputs& in = InputsFor(shape);
  const size_t bytes = in.logits.size() * 4;
  // A fresh output each iteration, like the backend's gradient allocation.
  auto copy = [&] {
    std::unique_ptr<float[]> out(new float[in.logits.size()]);
    const int64_t n = static_cast<int64_t>(in.logits.size());
#pragma omp parallel for schedule(static)
    for (int64_t block = 0; block < (n + 16383) / 16384; ++block) {
      const int64_t begin = block * 16384, count = std::min<int64_t>(16384, n - begin);
      std::memcpy(out.get() + begin, in.logits.data() + begin, count * 4);
    }
    benchmark::DoNotOptimize(out.get());
    benchmark::ClobberMemory();
  };
  copy();  // warm-up, as for the losses
  for (auto _ : state) copy();
  state.SetItemsProcessed(state.iterations() * in.numel);
  state.SetBytesProcessed(state.iterations() * static_cast<int64_t>(bytes * 2));
}

std::string ShapeName(const Shape& shape) {
  std::string s;
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? "x" : "") + std::to_string(shape[i]);
  return s;
}

/// The shapes and, for quick runs, the same with N divided by 8.
const std::vector<Shape> kShapes = {{65536, 80}, {4096, 1000}, {256, 32768}, {8, 19, 512, 512},
                                    {8192, 80},  {512, 1000},  {32, 32768},  {1, 19, 512, 512}};

int Register() {
  for (const Shape& shape : kShapes) {
    const std::string name = ShapeName(shape);
    const bool rows = shape.size() == 2;
    benchmark::RegisterBenchmark(("softmax_focal/" + name).c_str(), BM_Loss, Kind::kSoftmax, shape)->UseRealTime()->Unit(benchmark::kMillisecond);
    benchmark::RegisterBenchmark(("sigmoid_focal/" + name).c_str(), BM_Loss, Kind::kSigmoidFloat, shape)->UseRealTime()->Unit(benchmark::kMillisecond);
    benchmark::RegisterBenchmark(("sigmoid_focal_index/" + name).c_str(), BM_Loss, Kind::kSigmoidIndex, shape)->UseRealTime()->Unit(benchmark::kMillisecond);
    // The gradient into a page-aligned buffer (a shared-memory region's), where large strided
    // ones stream (the backend's own buffer is aligned for that by chance).
    if (!rows) benchmark::RegisterBenchmark(("softmax_focal_into/" + name).c_str(), BM_LossInto, Kind::kSoftmax, shape)->UseRealTime()->Unit(benchmark::kMillisecond);
    // A segmentation batch's targets as bytes, as masks usually come.
    if (!rows) benchmark::RegisterBenchmark(("softmax_focal_uint8/" + name).c_str(), BM_Loss, Kind::kSoftmaxByteTargets, shape)->UseRealTime()->Unit(benchmark::kMillisecond);
    if (rows) benchmark::RegisterBenchmark(("focal_cosine/" + name).c_str(), BM_Loss, Kind::kFocalCosine, shape)->UseRealTime()->Unit(benchmark::kMillisecond);
    benchmark::RegisterBenchmark(("dynamic_focal/" + name).c_str(), BM_Loss, Kind::kDynamic, shape)->UseRealTime()->Unit(benchmark::kMillisecond);
    if (rows) {
      // The catalogue on the row shapes (the issue measures [65536, 80]); distribution_focal's
      // bins are the C of the shape.
      const std::pair<const char*, Kind> catalogue[] = {{"asymmetric", Kind::kAsymmetric},
                                                        {"quality_focal", Kind::kQualityFocal},
                                                        {"varifocal", Kind::kVarifocal},
                                                        {"focal_star", Kind::kFocalStar},
                                                        {"distribution_focal", Kind::kDistributionFocal}};
      for (const auto& [variant, kind] : catalogue) {
        benchmark::RegisterBenchmark((std::string(variant) + "/" + name).c_str(), BM_Loss, kind, shape)
            ->UseRealTime()
            ->Unit(benchmark::kMillisecond);
      }
    }
    benchmark::RegisterBenchmark(("copy/" + name).c_str(), BM_Copy, shape)->UseRealTime()->Unit(benchmark::kMillisecond);
  }
  return 0;
}
const int kRegistered = Register();

}  // namespace
}  // namespace focal

int main(int argc, char** argv) {
  benchmark::Initialize(&argc, argv);
  if (const absl::Status capped = focal::CpuBackend::ApplySimdTargetFromEnvironment(); !capped.ok()) {
    std::fprintf(stderr, "cpu_bench: %s\n", std::string(capped.message()).c_str());
    return 2;
  }
  // The same warm heap that torch_compare.py gives PyTorch, so neither side pays page faults.
  benchmark::AddCustomContext("heap", focal::KeepFreedMemoryInProcess() ? "warm (mallopt)" : "glibc defaults");
  benchmark::AddCustomContext("simd_target", focal::CpuBackend::SimdTarget());
  benchmark::AddCustomContext("omp_threads", std::to_string(omp_get_max_threads()));
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
