// The CUDA kernels' forward+gradient time per variant and shape, against the device-to-device
// copy ceiling measured in the same run (tests/bench/RESULTS.md; the method is the tool
// library's device/METHOD.md):
//
//   cuda_bench [--json PATH] [--repeats N] [--quick]
//
// Bytes counted are the fewest the job must move: logits read once, targets read once, gradient
// written once (MEAN: no per-item output). The ceiling is cudaMemcpyAsync device-to-device of
// 1 GiB, counting bytes read plus bytes written. Inputs are random (a hash per element, never
// zeros), and each case rotates through enough copies of its inputs to exceed 4× the L2 cache,
// so repeats do not measure the cache. Times are CUDA events around one launch (the fused
// kernel plus the final sum), after warm-up, median of --repeats. No device: prints why, exits 0.
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "focal/kernel_args.h"
#include "kernels/cuda/loss_kernels.h"

namespace {

using focal::DType;
using focal::KernelArgs;
using focal::KernelKind;

#define CHECK_CUDA(expr)                                                                        \
  do {                                                                                          \
    const cudaError_t e_ = (expr);                                                              \
    if (e_ != cudaSuccess) {                                                                    \
      std::fprintf(stderr, "cuda_bench: %s: %s (%s:%d)\n", #expr, cudaGetErrorString(e_), __FILE__, \
                   __LINE__);                                                                   \
      std::exit(1);                                                                             \
    }                                                                                           \
  } while (0)

__device__ uint32_t Hash(uint64_t i, uint32_t seed) {
  uint64_t z = i * 0x9E3779B97F4A7C15ull + seed;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return static_cast<uint32_t>(z >> 32);
}

/// Logits: roughly normal (sum of two uniforms, scale 3); stored in `dtype`.
__global__ void FillLogits(void* out, DType dtype, int64_t n, uint32_t seed) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const float u = (Hash(i, seed) * 2.3283064e-10f + Hash(i, seed + 1) * 2.3283064e-10f - 1.0f) * 3.0f;
    switch (dtype) {
      case DType::kFloat32: static_cast<float*>(out)[i] = u; break;
      case DType::kBFloat16: static_cast<uint16_t*>(out)[i] = static_cast<uint16_t>(__float_as_uint(u) >> 16); break;
      case DType::kFloat16: static_cast<uint16_t*>(out)[i] = __half_as_ushort(__float2half_rn(u)); break;
      default: static_cast<double*>(out)[i] = u; break;
    }
  }
}

/// Targets: 0/1 (about one positive in 10) in `dtype` (float32 or the logits' 16-bit type), or
/// int64 class indices in [0, classes).
__global__ void FillTargets(void* out, bool index, DType dtype, int64_t n, int64_t classes, uint32_t seed) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const uint32_t h = Hash(i, seed);
    const bool positive = h % 10 == 0;
    if (index) {
      static_cast<int64_t*>(out)[i] = static_cast<int64_t>(h % static_cast<uint32_t>(classes));
    } else if (dtype == DType::kFloat32) {
      static_cast<float*>(out)[i] = positive ? 1.0f : 0.0f;
    } else {  // 1.0 is 0x3f80 in bfloat16 and 0x3c00 in float16
      static_cast<uint16_t*>(out)[i] = positive ? (dtype == DType::kBFloat16 ? 0x3f80 : 0x3c00) : 0;
    }
  }
}

struct BenchCase {
  const char* variant;  ///< sigmoid_focal, sigmoid_focal_index, softmax_focal, focal_cosine
  std::vector<int64_t> shape;
  DType dtype;
};

struct Measured {
  double ms = 0, gbps = 0, bytes = 0;
};

float MedianMs(std::vector<float> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

double CopyCeilingGBps(int repeats) {
  const size_t bytes = size_t{1} << 30;
  void *a = nullptr, *b = nullptr;
  CHECK_CUDA(cudaMalloc(&a, bytes));
  CHECK_CUDA(cudaMalloc(&b, bytes));
  FillLogits<<<1024, 256>>>(a, DType::kFloat32, static_cast<int64_t>(bytes / 4), 1);
  CHECK_CUDA(cudaGetLastError());
  cudaEvent_t start, stop;
  CHECK_CUDA(cudaEventCreate(&start));
  CHECK_CUDA(cudaEventCreate(&stop));
  std::vector<float> times;
  for (int r = 0; r < repeats + 3; ++r) {
    CHECK_CUDA(cudaEventRecord(start));
    CHECK_CUDA(cudaMemcpyAsync(r % 2 ? a : b, r % 2 ? b : a, bytes, cudaMemcpyDeviceToDevice));
    CHECK_CUDA(cudaEventRecord(stop));
    CHECK_CUDA(cudaEventSynchronize(stop));
    float ms = 0;
    CHECK_CUDA(cudaEventElapsedTime(&ms, start, stop));
    if (r >= 3) times.push_back(ms);
  }
  CHECK_CUDA(cudaFree(a));
  CHECK_CUDA(cudaFree(b));
  return 2.0 * static_cast<double>(bytes) / (MedianMs(times) * 1e-3) / 1e9;
}

Measured Run(const BenchCase& c, int multiprocessors, size_t l2_bytes, int repeats) {
  const bool index = std::strcmp(c.variant, "sigmoid_focal") != 0;
  const KernelKind kind = std::strcmp(c.variant, "softmax_focal") == 0   ? KernelKind::kSoftmaxFocal
                          : std::strcmp(c.variant, "focal_cosine") == 0  ? KernelKind::kFocalCosine
                          : std::strcmp(c.variant, "sigmoid_focal") == 0 ? KernelKind::kElementwiseFloatTargets
                                                                         : KernelKind::kElementwiseIndexTargets;
  int64_t elements = 1;
  for (int64_t d : c.shape) elements *= d;
  const int64_t N = c.shape[0], C = c.shape.size() > 1 ? c.shape[1] : 1;
  int64_t inner = 1;
  for (size_t d = 2; d < c.shape.size(); ++d) inner *= c.shape[d];
  const int64_t target_count = index ? N * inner : elements;
  const size_t logit_bytes = static_cast<size_t>(elements) * focal::DTypeSize(c.dtype);
  // Float targets in the logits' dtype, as a torch user passes them (torch_cuda_compare.py does).
  const DType target_dtype = index ? DType::kInt64 : c.dtype;
  const size_t target_bytes = static_cast<size_t>(target_count) * focal::DTypeSize(target_dtype);
  const size_t grad_bytes = logit_bytes;  // the gradient in the logits' dtype
  const size_t input_bytes = logit_bytes + target_bytes;
  const int sets = static_cast<int>(std::max<size_t>(1, (4 * l2_bytes + input_bytes - 1) / input_bytes));

  KernelArgs a;
  a.logits_dtype = c.dtype;
  a.targets_dtype = target_dtype;
  a.batch = N;
  a.classes = C;
  a.inner = inner;
  a.num_elements = elements;
  a.gamma = 2;
  if (kind == KernelKind::kElementwiseFloatTargets || kind == KernelKind::kElementwiseIndexTargets) {
    a.alpha_pos = 0.25, a.alpha_neg = 0.75;
  }
  a.grad_scale = 1.0 / static_cast<double>(kind == KernelKind::kSoftmaxFocal || kind == KernelKind::kFocalCosine
                                                ? N * inner
                                                : elements);
  a.output_dtype = c.dtype;
  const focal::cuda::LaunchPlan plan =
      focal::cuda::PlanLaunch(kind, a, focal::cuda::DeviceLimits{multiprocessors, static_cast<int64_t>(l2_bytes)});

  std::vector<void*> logits(sets), targets(sets);
  for (int s = 0; s < sets; ++s) {
    CHECK_CUDA(cudaMalloc(&logits[s], logit_bytes));
    CHECK_CUDA(cudaMalloc(&targets[s], target_bytes));
    FillLogits<<<1024, 256>>>(logits[s], c.dtype, elements, 11 + s);
    FillTargets<<<1024, 256>>>(targets[s], index, target_dtype, target_count, C, 101 + s);
    CHECK_CUDA(cudaGetLastError());
  }
  void* gradient = nullptr;
  double* partials = nullptr;
  focal::cuda::JobScalars* scalars = nullptr;
  CHECK_CUDA(cudaMalloc(&gradient, grad_bytes));
  CHECK_CUDA(cudaMalloc(&partials, sizeof(double) * std::max(plan.blocks, 1)));
  CHECK_CUDA(cudaMalloc(&scalars, sizeof(focal::cuda::JobScalars)));
  a.gradient = gradient;
  cudaEvent_t start, stop;
  CHECK_CUDA(cudaEventCreate(&start));
  CHECK_CUDA(cudaEventCreate(&stop));
  // Each sample times kLaunchesPerSample back-to-back jobs (rotating input sets) between one
  // pair of events, so that the host's launch latency (a few µs) overlaps the device work
  // instead of counting against jobs that take only ~10 µs.
  constexpr int kLaunchesPerSample = 10;
  std::vector<float> times;
  const int warmup = 2;
  int launch = 0;
  for (int r = 0; r < warmup + repeats; ++r) {
    CHECK_CUDA(cudaEventRecord(start));
    for (int k = 0; k < kLaunchesPerSample; ++k, ++launch) {
      a.logits = logits[launch % sets];
      a.targets = targets[launch % sets];
      CHECK_CUDA(focal::cuda::LaunchLoss(kind, a, plan, partials, scalars, nullptr));
    }
    CHECK_CUDA(cudaEventRecord(stop));
    CHECK_CUDA(cudaEventSynchronize(stop));
    float ms = 0;
    CHECK_CUDA(cudaEventElapsedTime(&ms, start, stop));
    if (r >= warmup) times.push_back(ms / kLaunchesPerSample);
  }
  focal::cuda::JobScalars reported;
  CHECK_CUDA(cudaMemcpy(&reported, scalars, sizeof reported, cudaMemcpyDeviceToHost));
  if (reported.flags != 0 || !(reported.loss_sum == reported.loss_sum)) {
    std::fprintf(stderr, "cuda_bench: %s reported flags %d, loss %g\n", c.variant, reported.flags, reported.loss_sum);
    std::exit(1);
  }
  for (int s = 0; s < sets; ++s) {
    CHECK_CUDA(cudaFree(logits[s]));
    CHECK_CUDA(cudaFree(targets[s]));
  }
  CHECK_CUDA(cudaFree(gradient));
  CHECK_CUDA(cudaFree(partials));
  CHECK_CUDA(cudaFree(scalars));
  Measured m;
  m.ms = MedianMs(times);
  m.bytes = static_cast<double>(input_bytes + grad_bytes);
  m.gbps = m.bytes / (m.ms * 1e-3) / 1e9;
  return m;
}

std::string ShapeText(const std::vector<int64_t>& s) {
  std::string out = "[";
  for (size_t i = 0; i < s.size(); ++i) out += (i ? "," : "") + std::to_string(s[i]);
  return out + "]";
}

}  // namespace

int main(int argc, char** argv) {
  const char* json_path = nullptr;
  int repeats = 20;
  bool quick = false;
  for (int i = 1; i < argc; ++i) {
    if (!std::strcmp(argv[i], "--json") && i + 1 < argc) {
      json_path = argv[++i];
    } else if (!std::strcmp(argv[i], "--repeats") && i + 1 < argc) {
      repeats = std::max(1, std::atoi(argv[++i]));
    } else if (!std::strcmp(argv[i], "--quick")) {
      quick = true;
    } else {
      std::fprintf(stderr, "usage: cuda_bench [--json PATH] [--repeats N] [--quick]\n");
      return 2;
    }
  }
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess || count == 0) {
    std::printf("cuda_bench: no CUDA device answered; nothing measured\n");
    return 0;
  }
  cudaDeviceProp prop{};
  CHECK_CUDA(cudaGetDeviceProperties(&prop, 0));
  const double ceiling = CopyCeilingGBps(repeats);
  std::printf("device %s, %d SMs, L2 %d MiB; copy ceiling %.0f GB/s (1 GiB device-to-device, read+write)\n",
              prop.name, prop.multiProcessorCount, prop.l2CacheSize >> 20, ceiling);

  const DType f32 = DType::kFloat32, bf16 = DType::kBFloat16;
  std::vector<BenchCase> cases = {
      {"sigmoid_focal", {65536, 80}, f32},           {"sigmoid_focal", {4096, 1000}, f32},
      {"sigmoid_focal", {256, 32768}, f32},          {"sigmoid_focal", {8, 19, 512, 512}, f32},
      {"sigmoid_focal", {1 << 20, 80}, f32},         {"sigmoid_focal", {1 << 20, 80}, bf16},
      {"sigmoid_focal_index", {65536, 80}, f32},     {"sigmoid_focal_index", {1 << 20, 80}, f32},
      {"sigmoid_focal_index", {1 << 20, 80}, bf16},  {"sigmoid_focal_index", {8, 19, 512, 512}, f32},
      {"softmax_focal", {65536, 80}, f32},           {"softmax_focal", {4096, 1000}, f32},
      {"softmax_focal", {256, 32768}, f32},          {"softmax_focal", {8, 19, 512, 512}, f32},
      {"softmax_focal", {1 << 20, 80}, f32},         {"softmax_focal", {1 << 20, 80}, bf16},
      {"softmax_focal", {4096, 131072}, bf16},       {"focal_cosine", {65536, 80}, f32},
      {"focal_cosine", {4096, 1000}, f32},
  };
  if (quick) cases = {{"sigmoid_focal", {1 << 20, 80}, f32}, {"softmax_focal", {1 << 20, 80}, f32}};
  std::printf("%-20s %-18s %-9s %10s %10s %8s\n", "variant", "shape", "dtype", "ms", "GB/s", "of copy");
  std::string device_name;
  for (const char* p = prop.name; *p; ++p) {
    if (*p != '"' && *p != '\\') device_name += *p;  // JSON-safe
  }
  const std::string head = "{\n  \"device\": \"" + device_name + "\",\n  \"copy_gbps\": " +
                           std::to_string(ceiling) + ",\n  \"results\": [\n";
  std::string rows;
  // Rewritten after every case, so a failure later (which exits) keeps the figures so far.
  auto write_json = [&] {
    if (!json_path) return;
    FILE* f = std::fopen(json_path, "w");
    if (!f) {
      std::fprintf(stderr, "cuda_bench: cannot write %s\n", json_path);
      std::exit(1);
    }
    std::fputs((head + rows + "\n  ]\n}\n").c_str(), f);
    std::fclose(f);
  };
  for (size_t i = 0; i < cases.size(); ++i) {
    const BenchCase& c = cases[i];
    const Measured m = Run(c, prop.multiProcessorCount, static_cast<size_t>(prop.l2CacheSize), repeats);
    std::printf("%-20s %-18s %-9s %10.4f %10.0f %7.1f%%\n", c.variant, ShapeText(c.shape).c_str(),
                focal::DTypeName(c.dtype), m.ms, m.gbps, 100.0 * m.gbps / ceiling);
    std::fflush(stdout);
    rows += std::string(i ? ",\n" : "") + "    {\"variant\": \"" + c.variant + "\", \"shape\": \"" +
            ShapeText(c.shape) + "\", \"dtype\": \"" + focal::DTypeName(c.dtype) + "\", \"ms\": " +
            std::to_string(m.ms) + ", \"bytes\": " + std::to_string(m.bytes) + ", \"gbps\": " + std::to_string(m.gbps) +
            "}";
    write_json();
  }
  return 0;
}
