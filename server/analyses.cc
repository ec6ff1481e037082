#include "server/analyses.h"

#include <algorithm>
#include <array>
#include <cmath>
#include <memory>
#include <optional>
#include <exception>
#include <mutex>
#include <thread>
#include <type_traits>
#include <variant>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "focal/math.h"
#include "focal/math_ops.h"
#include "focal/status_macros.h"
#include "kernels/cpu/analysis_kernels.h"

namespace focal::server {
namespace {

absl::Status Invalid(std::string message) { return absl::InvalidArgumentError(std::move(message)); }

/// The bin of a probability in [0, 1] among `bins` equal-width ones (1 in the last). A cast,
/// not floor(): without -msse4.1 floor is a library call, and p·bins ≥ 0 truncates to it.
size_t BinOf(double p, int bins) {
  const double b = std::min(p * bins, bins - 1.0);
  return b > 0 ? static_cast<size_t>(b) : 0;  // NaN (shared-memory logits changed after validation) to bin 0
}

/// What the sweep does not decompose, as a reason; "" when it does.
std::string SweepObstacle(const VariantParams& params) {
  if (const auto* s = std::get_if<SoftmaxFocalParams>(&params)) {
    if (s->label_smoothing != 0) return "label_smoothing spreads each row's loss over every class";
    if (s->poly_epsilon != 0) return "Poly-1's term is not a focal term";
    if (!s->gamma_schedule.empty()) return "a gamma_schedule sets γ per row";
    if (!s->class_counts.empty()) return "class_counts sets α, which the sweep leaves to the client";
    return "";
  }
  if (const auto* s = std::get_if<SigmoidFocalParams>(&params)) {
    if (s->label_smoothing != 0) return "label_smoothing makes targets soft: p_t is not defined";
    if (s->poly_epsilon != 0) return "Poly-1's term is not a focal term";
    return "";
  }
  return "";
}

}  // namespace

absl::Status EvaluationAnalyses::Check(const v1::EvaluateOptions& options, const LossJob& job) {
  if (started_) {
    if (options.SerializeAsString() != options_.SerializeAsString()) {
      return Invalid("evaluate differs from the first batch's; every batch of an evaluation carries the same options");
    }
  } else {
    if (options.gamma_sweep_size() > kMaxSweepGammas) {
      return Invalid(absl::StrCat("evaluate.gamma_sweep has ", options.gamma_sweep_size(), " values; at most ",
                                  kMaxSweepGammas));
    }
    for (int k = 0; k < options.gamma_sweep_size(); ++k) {
      const double g = options.gamma_sweep(k);
      if (!(g >= 0 && g <= ParameterLimits::kMaxGamma)) {
        return Invalid(absl::StrCat("evaluate.gamma_sweep[", k, "] is ", g, "; must be in [0, ",
                                    ParameterLimits::kMaxGamma, "]"));
      }
    }
    if (options.pt_bins() != 0) {
      if (options.gamma_sweep_size() == 0) return Invalid("evaluate.pt_bins is set without evaluate.gamma_sweep");
      if (options.pt_bins() < 1 || options.pt_bins() > kMaxAnalysisBins) {
        return Invalid(absl::StrCat("evaluate.pt_bins is ", options.pt_bins(), "; must be in [1, ", kMaxAnalysisBins, "]"));
      }
    }
    if (options.calibration_bins() < 0 || options.calibration_bins() > kMaxAnalysisBins) {
      return Invalid(absl::StrCat("evaluate.calibration_bins is ", options.calibration_bins(), "; must be in [0, ",
                                  kMaxAnalysisBins, "] (0: no calibration)"));
    }
    options_ = options;
    gammas_.assign(options.gamma_sweep().begin(), options.gamma_sweep().end());
    pt_bins_ = options.pt_bins() != 0 ? options.pt_bins() : kDefaultPtBins;
    bins_ = options.calibration_bins();
    started_ = true;
  }
  if (!active()) return absl::OkStatus();

  const char* field = gammas_.empty() ? "evaluate.calibration_bins" : "evaluate.gamma_sweep";
  if (job.allow_non_finite) {
    return Invalid(absl::StrCat(field, " is set with allow_non_finite; the analyses need finite logits"));
  }
  if (job.weights) {
    return Invalid(absl::StrCat(field, " is set with weights; the analyses count every item once, unweighted"));
  }
  const VariantParams& params = job.spec.params;
  if (!variant_.empty() && variant_ != VariantName(params)) {
    return Invalid(absl::StrCat("loss.variant is ", VariantName(params), ", but the evaluation started with ",
                                variant_, "; one Evaluate call evaluates one loss"));
  }
  const bool softmax = std::holds_alternative<SoftmaxFocalParams>(params);
  if (!softmax && !std::holds_alternative<SigmoidFocalParams>(params)) {
    return Invalid(absl::StrCat(field, " is set for ", VariantName(params),
                                "; the analyses are defined for softmax_focal and sigmoid_focal"));
  }
  if (TakesProbabilities(params)) return Invalid(absl::StrCat(field, " is set with input PROBABILITIES; it takes logits"));
  if (!gammas_.empty()) {
    if (const std::string obstacle = SweepObstacle(params); !obstacle.empty()) {
      return Invalid(absl::StrCat("evaluate.gamma_sweep is set with ", obstacle, ": the sweep would not decompose"));
    }
  }
  rows_ = softmax;
  variant_ = VariantName(params);
  const int64_t classes = job.logits.shape.size() >= 2 ? job.logits.shape[1] : 1;
  if (classes_ == 0) {
    if (static_cast<int64_t>(gammas_.size()) * classes > kMaxSweepCells) {
      return absl::ResourceExhaustedError(absl::StrCat("evaluate.gamma_sweep has ", gammas_.size(), " values for ", classes,
                                                       " classes; at most ", kMaxSweepCells,
                                                       " values × classes per evaluation"));
    }
    Resize(classes);
  } else if (classes != classes_) {
    return Invalid(absl::StrCat("logits.shape[1] is ", classes, ", but the evaluation started with ", classes_,
                                " classes; the analyses need every batch to have the same classes"));
  }
  return absl::OkStatus();
}

void EvaluationAnalyses::Resize(int64_t classes) {
  classes_ = classes;
  // Only what is asked for is held: the sweep's sums and counts, the calibration's bins and
  // per-class counts.
  const size_t C = static_cast<size_t>(classes), K = gammas_.size(), B = static_cast<size_t>(pt_bins_);
  const size_t sweep_classes = K > 0 ? C : 0, calibration_classes = bins_ > 0 ? C : 0;
  const size_t sides = rows_ ? 1 : 2;  // a row is its target class's: no negatives
  sums_.assign(sides * K * C, ExactSum());
  mass_.assign(sides * K * B, ExactSum());
  positive_counts_.assign(sweep_classes, 0);
  if (!rows_) negative_counts_.assign(sweep_classes, 0);
  bin_counts_.assign(static_cast<size_t>(bins_), 0);
  bin_correct_.assign(static_cast<size_t>(bins_), 0);
  bin_confidence_.assign(static_cast<size_t>(bins_), ExactSum());
  class_targets_.assign(calibration_classes, 0);
  class_predicted_.assign(calibration_classes, 0);
  class_true_positives_.assign(calibration_classes, 0);
}

/// One thread's share of a batch: integer buckets for the sums (BatchSums) and its own counts,
/// added into the totals under the analyses' lock once its rows are done. Exact sums do not
/// depend on the order of their terms, so neither does the answer on how rows were shared out.
/// A set of sums too large for buckets adds into the totals directly: then one thread runs.
struct EvaluationAnalyses::Partial {
  explicit Partial(EvaluationAnalyses& a)
      : sums(a.sums_, a.sums_.size()), mass(a.mass_, a.mass_.size()),
        confidence(a.bin_confidence_, a.bin_confidence_.size()), quality(a.quality_, 2),
        positive_counts(a.positive_counts_.size()), negative_counts(a.negative_counts_.size()),
        bin_counts(a.bin_counts_.size()), bin_correct(a.bin_correct_.size()),
        class_targets(a.class_targets_.size()), class_predicted(a.class_predicted_.size()),
        class_true_positives(a.class_true_positives_.size()) {}
  Partial(const Partial&) = delete;
  Partial& operator=(const Partial&) = delete;

  /// Adds everything into `a`'s totals (the caller holds the lock).
  void AddTo(EvaluationAnalyses& a) {
    for (BatchSums* b : {&sums, &mass, &confidence, &quality}) b->Flush();
    auto add = [](std::vector<int64_t>& into, const std::vector<int64_t>& from) {
      for (size_t i = 0; i < from.size(); ++i) into[i] += from[i];
    };
    add(a.positive_counts_, positive_counts);
    add(a.negative_counts_, negative_counts);
    add(a.bin_counts_, bin_counts);
    add(a.bin_correct_, bin_correct);
    add(a.class_targets_, class_targets);
    add(a.class_predicted_, class_predicted);
    add(a.class_true_positives_, class_true_positives);
    a.count_ += count;
    a.correct_ += correct;
  }

  /// The sizes of the sets of sums a Partial buckets (the quality pair is always small).
  static std::array<size_t, 3> SumSets(const EvaluationAnalyses& a) {
    return {a.sums_.size(), a.mass_.size(), a.bin_confidence_.size()};
  }
  /// Bytes one Partial holds for `a` (buckets and counts), to size the thread count.
  static size_t Bytes(const EvaluationAnalyses& a) {
    size_t bytes = 0;
    for (size_t n : SumSets(a)) bytes += BatchSums::Bytes(n);
    return bytes + (2 * a.positive_counts_.size() + 3 * a.class_targets_.size()) * sizeof(int64_t);
  }
  /// Whether every set of sums fits buckets (else its adds go to the totals: one thread only).
  static bool Bucketed(const EvaluationAnalyses& a) {
    for (size_t n : SumSets(a)) {
      if (!BatchSums::Fits(n)) return false;
    }
    return true;
  }

  BatchSums sums;  ///< the sweep's, [side][γ][class]
  BatchSums mass;  ///< the p_t histograms, [side][γ][bin]
  BatchSums confidence, quality;
  std::vector<int64_t> positive_counts, negative_counts, bin_counts, bin_correct;
  std::vector<int64_t> class_targets, class_predicted, class_true_positives;
  int64_t count = 0, correct = 0;
  int64_t bad_target = -1;  ///< the first float target neither 0 nor 1 (flat index), if any
};

namespace {

/// Elements [begin, begin + n) of a floating view in T, one dtype switch for all.
template <typename T>
void LoadAs(const TensorView& view, int64_t begin, int64_t n, T* out) {
  switch (view.dtype) {
    case DType::kFloat32: {
      const float* p = view.As<float>() + begin;
      std::copy(p, p + n, out);
      return;
    }
    case DType::kFloat64: {
      const double* p = view.As<double>() + begin;
      for (int64_t i = 0; i < n; ++i) out[i] = static_cast<T>(p[i]);
      return;
    }
    default:
      for (int64_t i = 0; i < n; ++i) out[i] = static_cast<T>(LoadAsDouble(view, begin + i));
  }
}

/// What one batch's threads may hold for their partial sums, all together.
constexpr size_t kPartialBudgetBytes = size_t{64} << 20;

}  // namespace

/// Up to kCapacity items of one thread in log form, whose sweep terms are computed together, a
/// γ at a time, in vectors (cpu::analysis): one exp per γ and item at most.
/// T is the logits' compute type, as in the kernels: double for float64 logits, else float.
template <typename T>
struct EvaluationAnalyses::ItemBlock {
  static constexpr int64_t kCapacity = 1024;
  ItemBlock()
      : x(kCapacity), log_pt(kCapacity), log_q(kCapacity), pt(kCapacity), q(kCapacity), cls(kCapacity),
        positive(kCapacity), sign(kCapacity), bin(kCapacity), terms(kCapacity), sum_base(kCapacity), mass_base(kCapacity),
        sum_places(kCapacity), mass_places(kCapacity), mantissas(kCapacity) {}
  cpu::analysis::ItemParts<T> parts() { return {log_pt.data(), log_q.data(), pt.data(), q.data()}; }

  std::vector<T> x;          ///< sigmoid items' logits, when copied
  const T* logits = nullptr;  ///< sigmoid items' logits: x, or the batch's own when they are in T
  std::vector<T> log_pt, log_q, pt, q;
  std::vector<uint32_t> cls;  ///< < classes_, which --max-classes bounds
  std::vector<uint8_t> positive;  ///< rows: always; elements: target 1
  std::vector<T> sign;            ///< elements: 1 if positive else -1, so that x_t = sign · x
  std::vector<uint32_t> bin;      ///< p_t's bin of the sweep's mass histograms
  std::vector<float> terms;
  // The terms' places in the sweep's buckets (BatchSums::AddPlaced): sums and mass at γ = 0
  // (each γ is an offset), then the places and mantissas of one γ's terms.
  std::vector<uint32_t> sum_base, mass_base, sum_places, mass_places;
  std::vector<int32_t> mantissas;
  int64_t size = 0;
};

template <typename T>
void EvaluationAnalyses::AddSweep(ItemBlock<T>& block, Partial& acc) const {
  const uint32_t C = static_cast<uint32_t>(classes_), B = static_cast<uint32_t>(pt_bins_);
  const uint32_t K = static_cast<uint32_t>(gammas_.size());
  const int64_t n = block.size;
  cpu::analysis::SweepPlaces(block.pt.data(), n, pt_bins_, K * C, K * B,
                             {block.positive.data(), block.cls.data(), block.bin.data(), block.sum_base.data(),
                              block.mass_base.data()});
  for (int64_t i = 0; i < n; ++i) ++(block.positive[i] ? acc.positive_counts : acc.negative_counts)[block.cls[i]];
  const bool placed = acc.sums.bucketed() && acc.mass.bucketed();
  for (uint32_t k = 0; k < K; ++k) {
    // (1-p_t)^γ · (-log p_t): γ = 0 is the cross-entropy itself, even where 1 - p_t is 0.
    cpu::analysis::FocalTerms(gammas_[k], block.q.data(), block.log_q.data(), block.log_pt.data(), n,
                              block.terms.data());
    acc.sums.Reserve(n);
    acc.mass.Reserve(n);
    if (placed && cpu::analysis::BucketPlaces(
                      block.terms.data(), n, ExactFloat32Sum::kExponentsPerBucketLog2,
                      {block.sum_base.data(), k * C, static_cast<uint32_t>(acc.sums.stride()), block.sum_places.data()},
                      {block.mass_base.data(), k * B, static_cast<uint32_t>(acc.mass.stride()), block.mass_places.data()},
                                              block.mantissas.data())) {
      acc.sums.AddPlaced(block.sum_places.data(), block.mantissas.data(), n);
      acc.mass.AddPlaced(block.mass_places.data(), block.mantissas.data(), n);
      continue;
    }
    for (int64_t i = 0; i < n; ++i) {  // sums too many for buckets, or a non-finite term
      acc.sums.AddUncounted(block.sum_base[i] + k * C, block.terms[i]);
      acc.mass.AddUncounted(block.mass_base[i] + k * B, block.terms[i]);
    }
  }
}

template <typename T>
void EvaluationAnalyses::AddElements(ItemBlock<T>& block, Partial& acc) const {
  cpu::analysis::SigmoidItemParts(block.logits, block.sign.data(), block.size, block.parts());
  if (!gammas_.empty()) AddSweep(block, acc);
  if (bins_ == 0) return;
  acc.confidence.Reserve(block.size);
  acc.quality.Reserve(2 * block.size);
  for (int64_t i = 0; i < block.size; ++i) {
    const bool positive = block.positive[i];
    const double p = positive ? block.pt[i] : block.q[i];  // σ(x)
    const size_t bin = BinOf(p, bins_);
    ++acc.bin_counts[bin];
    acc.confidence.AddUncounted(bin, static_cast<float>(p));
    acc.bin_correct[bin] += positive;
    const bool predicted = block.logits[i] >= 0;  // p ≥ 0.5
    acc.correct += predicted == positive;
    ++acc.count;
    acc.quality.AddUncounted(0, static_cast<float>(-block.log_pt[i]));
    acc.quality.AddUncounted(1, static_cast<float>(block.q[i] * block.q[i]));  // (p - t)² = (1 - p_t)²
    const size_t c = static_cast<size_t>(block.cls[i]);
    acc.class_targets[c] += positive;
    acc.class_predicted[c] += predicted;
    acc.class_true_positives[c] += positive && predicted;
  }
}

void EvaluationAnalyses::AddRows(const LossJob& job, int64_t row_begin, int64_t row_end, Partial& acc) const {
  if (job.logits.dtype == DType::kFloat64) {
    AddRowsAs<double>(job, row_begin, row_end, acc);
  } else {
    AddRowsAs<float>(job, row_begin, row_end, acc);
  }
}

template <typename T>
void EvaluationAnalyses::AddRowsAs(const LossJob& job, int64_t row_begin, int64_t row_end, Partial& acc) const {
  const int64_t C = classes_;
  const Shape& shape = job.logits.shape;
  int64_t inner = 1;
  for (size_t d = 2; d < shape.size(); ++d) inner *= shape[d];
  const std::optional<int64_t> ignore = IgnoreIndex(job.spec.params);
  const int64_t row_elements = C * inner;
  static_assert(std::is_same_v<T, float> || std::is_same_v<T, double>);
  constexpr DType kComputeType = std::is_same_v<T, float> ? DType::kFloat32 : DType::kFloat64;
  ItemBlock<T> block;
  if (!rows_) {
    // Elements (n, c, s) in memory order, a block at a time: the thread's rows are one
    // contiguous range. With ignored positions (index targets and ignore_index), the kept ones
    // are gathered; else the logits load into the block in place.
    const bool index_targets = IsInteger(job.targets.dtype), gather = index_targets && ignore.has_value();
    const int64_t first = row_begin * row_elements, last = row_end * row_elements;
    constexpr int64_t kBlock = ItemBlock<T>::kCapacity;
    std::vector<T> xs(gather ? static_cast<size_t>(kBlock) : 0);
    std::vector<float> ts(index_targets ? 0 : static_cast<size_t>(kBlock));
    // [N, C] (inner 1): the classes of a block starting at class c are cycle[c, c + kBlock).
    std::vector<uint32_t> cycle(inner == 1 ? static_cast<size_t>(kBlock + C) : 0);
    for (size_t k = 0; k < cycle.size(); ++k) cycle[k] = static_cast<uint32_t>(static_cast<int64_t>(k) % C);
    for (int64_t begin = first; begin < last; begin += kBlock) {
      const int64_t len = std::min(kBlock, last - begin);
      int64_t n = begin / row_elements, c = begin % row_elements / inner, s = begin % inner;
      if (!index_targets) {
        // Float targets: every element is an item, the block filled in place, a vector at a time.
        if (job.logits.dtype == kComputeType) {
          block.logits = job.logits.As<T>() + begin;
        } else {
          LoadAs(job.logits, begin, len, block.x.data());
          block.logits = block.x.data();
        }
        const float* t = ts.data();
        if (job.targets.dtype == DType::kFloat32) {
          t = job.targets.As<float>() + begin;
        } else {
          LoadAs(job.targets, begin, len, ts.data());
        }
        // p_t is defined for targets 0 and 1 alone; the first other one fails the batch. A
        // float64 target is checked as it is, before float32 could round it to 0 or 1 (16-bit
        // floats widen exactly).
        int64_t bad = cpu::analysis::SigmoidSides(t, len, block.sign.data(), block.positive.data());
        if (job.targets.dtype == DType::kFloat64) {
          const double* wide = job.targets.As<double>() + begin;
          bad = -1;
          for (int64_t j = 0; j < len && bad < 0; ++j) {
            if (wide[j] != 0.0 && wide[j] != 1.0) bad = j;
          }
        }
        if (bad >= 0 && acc.bad_target < 0) acc.bad_target = begin + bad;
        if (inner == 1) {
          std::copy(cycle.begin() + c, cycle.begin() + c + len, block.cls.begin());
        } else {
          for (int64_t j = 0; j < len; ++j) {
            block.cls[j] = static_cast<uint32_t>(c);
            if (++s == inner) s = 0, c = c + 1 == C ? 0 : c + 1;
          }
        }
        block.size = len;
        AddElements(block, acc);
        block.size = 0;
        continue;
      }
      // Class-index targets: positive where the class is the position's target; with
      // ignore_index, the kept elements gathered.
      LoadAs(job.logits, begin, len, gather ? xs.data() : block.x.data());
      block.logits = block.x.data();
      for (int64_t j = 0; j < len; ++j) {
        const int64_t y = LoadAsInt64(job.targets, n * inner + s);
        if (!(ignore && y == *ignore)) {
          if (gather) block.x[block.size] = xs[j];
          block.cls[block.size] = static_cast<uint32_t>(c);
          block.positive[block.size] = y == c;
          block.sign[block.size] = y == c ? T(1) : T(-1);
          if (++block.size == kBlock) {
            AddElements(block, acc);
            block.size = 0;
          }
        }
        if (++s == inner) {
          s = 0;
          if (++c == C) c = 0, ++n;
        }
      }
    }
    if (block.size > 0) AddElements(block, acc);
    return;
  }

  // Rows (n, s) of classes c, their logits contiguous: [N, C] in place from a row's copy, the
  // strided [N, C, S] gathered a block of positions at a time.
  const bool sweep = !gammas_.empty(), calibrate = bins_ > 0;
  const int64_t positions = std::min<int64_t>(inner, 256);
  std::vector<T> xs(static_cast<size_t>(C * positions)), gathered(inner == 1 ? 0 : static_cast<size_t>(C));
  // [N, C] logits already in T are read where they lie.
  const bool in_place = inner == 1 && job.logits.dtype == kComputeType;
  for (int64_t n = row_begin; n < row_end; ++n) {
    for (int64_t s0 = 0; s0 < inner; s0 += positions) {
      const int64_t width = std::min(positions, inner - s0);
      const T* block_logits = xs.data();
      if (in_place) {
        block_logits = job.logits.As<T>() + n * row_elements;
      } else if (width == inner) {
        LoadAs(job.logits, n * row_elements, row_elements, xs.data());
      } else {
        for (int64_t c = 0; c < C; ++c) LoadAs(job.logits, n * row_elements + c * inner + s0, width, xs.data() + c * width);
      }
      for (int64_t s = s0; s < s0 + width; ++s) {
        const int64_t y = LoadAsInt64(job.targets, n * inner + s);
        if (ignore && y == *ignore) continue;
        const T* row = block_logits;
        if (inner != 1) {
          for (int64_t c = 0; c < C; ++c) gathered[static_cast<size_t>(c)] = xs[static_cast<size_t>(c * width + (s - s0))];
          row = gathered.data();
        }
        // The kernels' form: e_j = e^(x_j - max), Σ e_j = 1 + rest and its log log1p(rest),
        // accurate as p → 1; 1 - p_y from the other classes' e_j, without cancellation.
        const cpu::analysis::SoftmaxRowParts r = cpu::analysis::SoftmaxRow(row, C, y);
        // The logits may be a client's shared memory, changing under us: a NaN written after
        // validation leaves no maximum, and the argmax indexes the per-class counts.
        const int64_t argmax = r.argmax >= 0 && r.argmax < C ? r.argmax : 0;
        const double max = r.max, rest = r.rest, others = r.others, others_squares = r.others_squares;
        const double sum = 1 + rest, log_sum = std::log1p(rest);
        const double log_pt = (row[y] - max) - log_sum;
        if (sweep) {
          const int64_t i = block.size++;
          block.log_pt[i] = static_cast<T>(log_pt);
          block.log_q[i] = static_cast<T>(std::log(others) - log_sum);
          block.pt[i] = static_cast<T>(r.e_y / sum);
          block.q[i] = static_cast<T>(others / sum);
          block.cls[i] = static_cast<uint32_t>(y);
          block.positive[i] = 1;
          if (block.size == ItemBlock<T>::kCapacity) {
            AddSweep(block, acc);
            block.size = 0;
          }
        }
        if (calibrate) {
          const double top = 1 / sum;  // the maximum's e is 1
          const size_t bin = BinOf(top, bins_);
          ++acc.bin_counts[bin];
          acc.confidence.Add(bin, static_cast<float>(top));
          const bool right = argmax == y;
          acc.bin_correct[bin] += right;
          acc.correct += right;
          ++acc.count;
          acc.quality.Add(0, static_cast<float>(-log_pt));
          // Σ_j (p_j - [j = y])² = (1 - p_y)² + Σ_{j≠y} p_j², each part ≥ 0 (no cancellation).
          const double miss = others / sum;
          acc.quality.Add(1, static_cast<float>(miss * miss + others_squares / (sum * sum)));
          ++acc.class_targets[static_cast<size_t>(y)];
          ++acc.class_predicted[static_cast<size_t>(argmax)];
          acc.class_true_positives[static_cast<size_t>(y)] += right;
        }
      }
    }
  }
  if (block.size > 0) AddSweep(block, acc);
}

absl::Status EvaluationAnalyses::Add(const LossJob& job) {
  if (!active()) return absl::OkStatus();
  const Shape& shape = job.logits.shape;
  const int64_t rows = shape.empty() ? 1 : shape[0];
  int64_t inner = 1;
  for (size_t d = 2; d < shape.size(); ++d) inner *= shape[d];
  // Threads: the machine's cores (at most 8, or max_threads_), one per 2^16 items' worth of
  // work, within the memory budget, and one alone when a set of sums is too large for buckets.
  const int64_t work = rows * classes_ * inner * static_cast<int64_t>(std::max<size_t>(gammas_.size(), 1));
  int64_t threads = std::min<int64_t>({max_threads_ > 0 ? max_threads_ : std::max(1u, std::thread::hardware_concurrency()),
                                       8, std::max<int64_t>(1, work >> 16), std::max<int64_t>(rows, 1)});
  threads = std::min<int64_t>(threads, std::max<size_t>(1, kPartialBudgetBytes / std::max<size_t>(1, Partial::Bytes(*this))));
  if (!Partial::Bucketed(*this)) threads = 1;
  std::mutex totals_mu;
  std::vector<std::exception_ptr> errors(static_cast<size_t>(threads));
  int64_t bad_target = -1;  // the first over all threads (each one's range comes in order)
  auto run = [&](int64_t t) {
    try {
      Partial partial(*this);
      AddRows(job, rows * t / threads, rows * (t + 1) / threads, partial);
      std::lock_guard<std::mutex> lock(totals_mu);
      partial.AddTo(*this);
      if (partial.bad_target >= 0 && (bad_target < 0 || partial.bad_target < bad_target)) bad_target = partial.bad_target;
    } catch (...) {
      errors[static_cast<size_t>(t)] = std::current_exception();
    }
  };
  std::vector<std::thread> pool;
  try {
    for (int64_t t = 1; t < threads; ++t) pool.emplace_back(run, t);
  } catch (...) {
    errors[0] = std::current_exception();  // no thread to be had: the call fails, after a join
  }
  if (!errors[0]) run(0);
  for (std::thread& th : pool) th.join();
  for (const std::exception_ptr& e : errors) {
    if (e) std::rethrow_exception(e);  // RunBatch's caller turns it into this call's INTERNAL
  }
  if (bad_target >= 0) {
    // All the digits: a float64 a hair from 1 would print as 1 in six.
    return Invalid(absl::StrCat("targets element ", bad_target, " is ",
                                absl::StrFormat("%.17g", LoadAsDouble(job.targets, bad_target)),
                                "; the sweep and calibration need targets of 0 or 1 (p_t is not defined otherwise)"));
  }
  return absl::OkStatus();
}

void EvaluationAnalyses::ToResponse(v1::EvaluateResponse* response) const {
  if (!gammas_.empty()) {
    v1::GammaSweep* s = response->mutable_sweep();
    for (double g : gammas_) s->add_gammas(g);
    s->set_classes(classes_);
    s->set_pt_bins(pt_bins_);
    // [side][γ][class] and [side][γ][bin]: the positive side first.
    const size_t KC = gammas_.size() * static_cast<size_t>(classes_), KB = gammas_.size() * static_cast<size_t>(pt_bins_);
    for (size_t i = 0; i < sums_.size(); ++i) (i < KC ? s->add_positive_sums(sums_[i].Value()) : s->add_negative_sums(sums_[i].Value()));
    for (int64_t v : positive_counts_) s->add_positive_counts(v);
    for (int64_t v : negative_counts_) s->add_negative_counts(v);
    for (size_t i = 0; i < mass_.size(); ++i) (i < KB ? s->add_positive_mass(mass_[i].Value()) : s->add_negative_mass(mass_[i].Value()));
  }
  if (bins_ > 0) {
    v1::Calibration* c = response->mutable_calibration();
    c->set_bins(bins_);
    double ece = 0, mce = 0;
    for (size_t b = 0; b < bin_counts_.size(); ++b) {
      const double confidence = bin_confidence_[b].Value();
      c->add_bin_counts(bin_counts_[b]);
      c->add_bin_confidence_sums(confidence);
      c->add_bin_correct(bin_correct_[b]);
      if (bin_counts_[b] == 0) continue;
      const double n = static_cast<double>(bin_counts_[b]);
      const double gap = std::abs(static_cast<double>(bin_correct_[b]) / n - confidence / n);
      ece += n / static_cast<double>(count_) * gap;
      mce = std::max(mce, gap);
    }
    c->set_ece(ece);
    c->set_mce(mce);
    c->set_count(count_);
    c->set_correct(correct_);
    const double n = count_ > 0 ? static_cast<double>(count_) : 1.0;
    c->set_accuracy(count_ > 0 ? static_cast<double>(correct_) / n : 0.0);
    c->set_nll(count_ > 0 ? quality_[0].Value() / n : 0.0);
    c->set_brier(count_ > 0 ? quality_[1].Value() / n : 0.0);
    for (size_t k = 0; k < class_targets_.size(); ++k) {
      c->add_class_targets(class_targets_[k]);
      c->add_class_predicted(class_predicted_[k]);
      c->add_class_true_positives(class_true_positives_[k]);
    }
  }
}

}  // namespace focal::server
