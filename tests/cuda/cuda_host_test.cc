// What of the CUDA backend runs on the host, tested where no GPU is: the launch plans (which
// kernel shape, how many blocks, how many lanes per row) and the online-softmax algebra the row
// kernels reduce with (merge order, ties, commutativity to the bit that the butterfly
// reductions need). The device side of the same code is tests/cuda/cuda_backend_test.cc.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <random>
#include <vector>

#include "focal/kernel_args.h"
#include "kernels/cuda/loss_kernels.h"
#include "kernels/cuda/online_softmax.h"

namespace focal::cuda {
namespace {

constexpr DeviceLimits kH200{132, int64_t{60} << 20};

KernelArgs Rows(int64_t n, int64_t c, int64_t s = 1, DType dtype = DType::kFloat32) {
  KernelArgs a;
  a.batch = n;
  a.classes = c;
  a.inner = s;
  a.num_elements = n * c * s;
  a.logits_dtype = dtype;
  return a;
}

TEST(LaunchPlan, EmptyJobsLaunchNothing) {
  for (KernelKind kind : {KernelKind::kElementwiseFloatTargets, KernelKind::kSoftmaxFocal, KernelKind::kFocalCosine}) {
    EXPECT_EQ(PlanLaunch(kind, Rows(0, 80), kH200).shape, LaunchPlan::Shape::kEmpty);
    EXPECT_EQ(PlanLaunch(kind, Rows(5, 0), kH200).shape, LaunchPlan::Shape::kEmpty);
  }
}

TEST(LaunchPlan, ElementwiseCoversEveryRunOrCapsTheGrid) {
  for (int64_t n : {int64_t{1}, int64_t{7}, int64_t{8}, int64_t{9}, int64_t{2049}, int64_t{1} << 20, int64_t{1} << 27}) {
    KernelArgs a = Rows(n, 1);
    const LaunchPlan plan = PlanLaunch(KernelKind::kElementwiseFloatTargets, a, kH200);
    ASSERT_EQ(plan.shape, LaunchPlan::Shape::kElementwise) << n;
    EXPECT_EQ(plan.threads, 256);
    EXPECT_GE(plan.blocks, 1);
    EXPECT_LE(plan.blocks, 132 * 8) << n;  // grid-stride beyond one wave of resident blocks
    const int64_t runs = (n + 7) / 8;
    if (plan.blocks < 132 * 8) {
      EXPECT_GE(int64_t{plan.blocks} * 256, runs) << n;
    }
    EXPECT_LT(int64_t{plan.blocks - 1} * 256, runs) << "no block without work: " << n;
  }
}

TEST(LaunchPlan, RowShapesFollowTheLayoutAndC) {
  // Strided [N, C, S]: a thread per position.
  EXPECT_EQ(PlanLaunch(KernelKind::kSoftmaxFocal, Rows(8, 19, 512 * 512), kH200).shape,
            LaunchPlan::Shape::kStridedRows);
  // [N, C]: lanes of a warp up to C = 2048, a block per row beyond.
  for (int64_t c : {1, 2, 80, 1000, 2048}) {
    EXPECT_EQ(PlanLaunch(KernelKind::kSoftmaxFocal, Rows(100, c), kH200).shape, LaunchPlan::Shape::kWarpRows) << c;
    EXPECT_EQ(PlanLaunch(KernelKind::kFocalCosine, Rows(100, c), kH200).shape, LaunchPlan::Shape::kWarpRows) << c;
  }
  for (int64_t c : {2049, 32768, 262144}) {
    const LaunchPlan plan = PlanLaunch(KernelKind::kSoftmaxFocal, Rows(100, c), kH200);
    EXPECT_EQ(plan.shape, LaunchPlan::Shape::kBlockRows) << c;
    EXPECT_EQ(plan.threads, 512);
    EXPECT_EQ(plan.blocks, 100) << "one block per row while rows are few";
  }
}

TEST(LaunchPlan, WarpRowWidthIsAPowerOfTwoGivingEachLaneAFewRuns) {
  struct Expect {
    int64_t c;
    DType dtype;
    int width;
  };
  for (const Expect& e : {Expect{80, DType::kFloat32, 8},      // 20 runs of 4 floats: 8 lanes, ~2.5 runs each
                          Expect{80, DType::kBFloat16, 4},     // 10 runs of 8
                          Expect{81, DType::kFloat32, 32},     // not whole runs: 81 single elements
                          Expect{8, DType::kFloat32, 1},       // 2 runs: one lane per row, no shuffles
                          Expect{1000, DType::kFloat32, 32},   // 250 runs: a full warp
                          Expect{3, DType::kFloat64, 1}}) {
    const LaunchPlan plan = PlanLaunch(KernelKind::kSoftmaxFocal, Rows(1000, e.c, 1, e.dtype), kH200);
    ASSERT_EQ(plan.shape, LaunchPlan::Shape::kWarpRows);
    EXPECT_EQ(plan.row_width, e.width) << "C " << e.c << " " << DTypeName(e.dtype);
    EXPECT_EQ(plan.row_width & (plan.row_width - 1), 0);
    // Every row has a warp slot in the first grid-stride pass, or the grid is capped.
    const int64_t slots = int64_t{plan.blocks} * (256 / 32) * (32 / plan.row_width);
    if (plan.blocks < 132 * 8) {
      EXPECT_GE(slots, 1000);
    }
  }
}

TEST(LaunchPlan, BlockRowsKeepTheRowsInFlightWithinTheL2) {
  // [4096, 131072] bfloat16: 256 KiB rows; half the L2 holds 120 of them, so one block per SM.
  const LaunchPlan lm = PlanLaunch(KernelKind::kSoftmaxFocal, Rows(4096, 131072, 1, DType::kBFloat16), kH200);
  EXPECT_EQ(lm.blocks, 132);
  // Short rows of a long batch fill the device: 4 blocks per SM.
  const LaunchPlan many = PlanLaunch(KernelKind::kSoftmaxFocal, Rows(100000, 4096), kH200);
  EXPECT_EQ(many.blocks, 132 * 4);
  // Unknown L2: no cap.
  EXPECT_EQ(PlanLaunch(KernelKind::kSoftmaxFocal, Rows(4096, 131072, 1, DType::kBFloat16), DeviceLimits{132, 0}).blocks,
            132 * 4);
}

TEST(LaunchPlan, SameJobSamePlan) {
  const KernelArgs a = Rows(12345, 80);
  const LaunchPlan p = PlanLaunch(KernelKind::kSoftmaxFocal, a, kH200), q = PlanLaunch(KernelKind::kSoftmaxFocal, a, kH200);
  EXPECT_EQ(p.blocks, q.blocks);
  EXPECT_EQ(p.row_width, q.row_width);
}

// --------------------------------------------------------------------------------------------
// The online softmax, against a plain two-pass computation in long double.

struct Reference {
  long double max, rest;  // rest = Σ e^(x - max) - 1
};

Reference TwoPass(const std::vector<float>& x) {
  long double m = -INFINITY, sum = 0;
  for (float v : x) m = std::max<long double>(m, v);
  for (float v : x) sum += std::exp(static_cast<long double>(v) - m);
  return {m, sum - 1};
}

/// Splits x into `parts` interleaved lanes (as a team strides a row), adds each lane's elements
/// online, then merges the lanes in a butterfly of `parts` (a power of two), as teams.cuh does.
std::vector<OnlineSoftmax<float>> Butterfly(const std::vector<float>& x, int parts) {
  const ScalarOps<float> o;
  std::vector<OnlineSoftmax<float>> lanes(parts, OnlineSoftmax<float>::Empty());
  for (size_t i = 0; i < x.size(); ++i) lanes[i % parts].Add(o, x[i]);
  for (int offset = parts / 2; offset > 0; offset /= 2) {
    std::vector<OnlineSoftmax<float>> next(parts);
    for (int l = 0; l < parts; ++l) next[l] = CombineOnlineSoftmax()(lanes[l], lanes[l ^ offset]);
    lanes = next;
  }
  return lanes;
}

TEST(OnlineSoftmax, ButterflyMergeMatchesTwoPassAndEveryLaneHoldsTheSameBits) {
  std::mt19937 rng(3);
  for (int64_t c : {1, 2, 5, 80, 1000, 32768}) {
    for (float scale : {0.1f, 3.0f, 30.0f}) {
      std::normal_distribution<float> normal(0, scale);
      std::vector<float> x(static_cast<size_t>(c));
      for (float& v : x) v = normal(rng);
      const Reference ref = TwoPass(x);
      for (int parts : {1, 2, 8, 32, 512}) {
        const auto lanes = Butterfly(x, parts);
        for (const auto& lane : lanes) {
          ASSERT_EQ(std::memcmp(&lane, &lanes[0], sizeof lane), 0) << "lanes disagree: C " << c << " parts " << parts;
        }
        EXPECT_EQ(static_cast<long double>(lanes[0].max), ref.max);
        // Float error of the sum, relative to 1 + rest: a lane's sequential sum of n terms drifts
        // like sqrt(n) ulp (2^-23 ≈ 1.2e-7 each, counted twice for exp's own error); each new
        // maximum rescales with one exp and one multiply (~2 ln(n) of them in a random lane);
        // the butterfly adds log2(parts) levels. At C = 32768 in one lane: ~5e-5 allowed, 2.6e-5
        // seen — the CPU backend's 16-lane sums drift alike (5e-7 per item at C = 262144).
        const double n_lane = static_cast<double>(c) / parts;
        const double ulps = std::sqrt(n_lane) + 2 * std::log(n_lane + 1) + std::log2(parts) + 1;
        const long double rest = lanes[0].Rest();
        EXPECT_NEAR(static_cast<double>(rest), static_cast<double>(ref.rest),
                    2.4e-7 * ulps * static_cast<double>(1 + ref.rest))
            << "C " << c << " scale " << scale << " parts " << parts;
        EXPECT_EQ(lanes[0].finite, 1);
      }
    }
  }
}

TEST(OnlineSoftmax, TiesAtTheMaxAreCountedExactlyAndAConfidentRowKeepsItsDigits) {
  const ScalarOps<float> o;
  // Three equal maxima: rest = 2 + the rest, exactly.
  std::vector<float> x = {5, -1, 5, 0, 5, -30};
  const auto lanes = Butterfly(x, 2);
  EXPECT_EQ(lanes[0].ties, 3.0f);
  EXPECT_NEAR(lanes[0].Rest(), 2 + std::exp(-6.0) + std::exp(-5.0) + std::exp(-35.0), 1e-6);
  // A confident row: rest ~ e^-30 must not round to 0 against the max's own 1.
  OnlineSoftmax<float> s = OnlineSoftmax<float>::Empty();
  for (float v : {-10.0f, 20.0f, -10.0f}) s.Add(o, v);
  EXPECT_NEAR(s.Rest() / (2 * std::exp(-30.0)), 1.0, 1e-6);
}

TEST(OnlineSoftmax, MergingIsCommutativeToTheBitAndHandlesEmptyStates) {
  const ScalarOps<float> o;
  std::mt19937 rng(5);
  std::normal_distribution<float> normal(0, 4);
  for (int trial = 0; trial < 1000; ++trial) {
    OnlineSoftmax<float> a = OnlineSoftmax<float>::Empty(), b = OnlineSoftmax<float>::Empty();
    for (int i = trial % 4; i < 6; ++i) a.Add(o, normal(rng));
    for (int i = trial % 3; i < 5; ++i) b.Add(o, normal(rng));
    if (trial % 7 == 0) b.Add(o, a.max);  // a tie across the two
    const auto ab = CombineOnlineSoftmax()(a, b), ba = CombineOnlineSoftmax()(b, a);
    ASSERT_EQ(std::memcmp(&ab, &ba, sizeof ab), 0) << trial;
  }
  // An empty state is the identity.
  OnlineSoftmax<float> a = OnlineSoftmax<float>::Empty();
  for (float v : {1.0f, 2.0f, -3.0f}) a.Add(o, v);
  const auto merged = CombineOnlineSoftmax()(a, OnlineSoftmax<float>::Empty());
  EXPECT_EQ(std::memcmp(&merged, &a, sizeof a), 0);
  // A NaN or an infinity clears `finite`; NaN never becomes the max.
  OnlineSoftmax<float> bad = OnlineSoftmax<float>::Empty();
  bad.Add(o, 1.0f);
  bad.Add(o, std::nanf(""));
  EXPECT_EQ(bad.finite, 0);
  EXPECT_EQ(bad.max, 1.0f);
  EXPECT_TRUE(std::isnan(bad.Rest()));
  OnlineSoftmax<float> inf = OnlineSoftmax<float>::Empty();
  inf.Add(o, INFINITY);
  EXPECT_EQ(inf.finite, 0);
}

}  // namespace
}  // namespace focal::cuda
