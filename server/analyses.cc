#include "server/analyses.h"

#include <algorithm>
#include <array>
#include <cmath>
#include <memory>
#include <optional>
#include <exception>
#include <mutex>
#include <thread>
#include <variant>

#include "absl/strings/str_cat.h"
#include "focal/math.h"
#include "focal/math_ops.h"
#include "focal/status_macros.h"

namespace focal::server {
namespace {

absl::Status Invalid(std::string message) { return absl::InvalidArgumentError(std::move(message)); }

/// One item as the analyses see it: its class, its side, and its probabilities in log form.
struct Item {
  int64_t cls;
  bool positive;     ///< rows: always; elements: target 1
  double log_pt;     ///< log p_t
  double log_1m_pt;  ///< log(1 - p_t), accurate as p_t → 1
  double pt;
};

/// The bin of a probability in [0, 1] among `bins` equal-width ones (1 in the last).
size_t BinOf(double p, int bins) {
  const double b = std::floor(p * bins);
  return static_cast<size_t>(std::clamp(b, 0.0, static_cast<double>(bins - 1)));
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
  positive_sums_.assign(K * C, ExactSum());
  positive_mass_.assign(K * B, ExactSum());
  positive_counts_.assign(sweep_classes, 0);
  if (!rows_) {
    negative_sums_.assign(K * C, ExactSum());
    negative_mass_.assign(K * B, ExactSum());
    negative_counts_.assign(sweep_classes, 0);
  }
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
      : pos(a.positive_sums_, a.positive_sums_.size()), neg(a.negative_sums_, a.negative_sums_.size()),
        pos_m(a.positive_mass_, a.positive_mass_.size()), neg_m(a.negative_mass_, a.negative_mass_.size()),
        confidence(a.bin_confidence_, a.bin_confidence_.size()), quality(a.quality_, 2),
        positive_counts(a.positive_counts_.size()), negative_counts(a.negative_counts_.size()),
        bin_counts(a.bin_counts_.size()), bin_correct(a.bin_correct_.size()),
        class_targets(a.class_targets_.size()), class_predicted(a.class_predicted_.size()),
        class_true_positives(a.class_true_positives_.size()) {}
  Partial(const Partial&) = delete;
  Partial& operator=(const Partial&) = delete;

  /// Adds everything into `a`'s totals (the caller holds the lock).
  void AddTo(EvaluationAnalyses& a) {
    for (BatchSums* b : {&pos, &neg, &pos_m, &neg_m, &confidence, &quality}) b->Flush();
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

  /// The sets of sums a Partial buckets (the quality pair is always small).
  static std::array<const std::vector<ExactSum>*, 5> SumSets(const EvaluationAnalyses& a) {
    return {&a.positive_sums_, &a.negative_sums_, &a.positive_mass_, &a.negative_mass_, &a.bin_confidence_};
  }
  /// Bytes one Partial holds for `a` (buckets and counts), to size the thread count.
  static size_t Bytes(const EvaluationAnalyses& a) {
    size_t bytes = 0;
    for (const std::vector<ExactSum>* v : SumSets(a)) {
      if (v->size() <= BatchSums::kBucketed) bytes += v->size() * sizeof(ExactFloat32Sum);
    }
    return bytes + (2 * a.positive_counts_.size() + 3 * a.class_targets_.size()) * sizeof(int64_t);
  }
  /// Whether every set of sums fits buckets (else its adds go to the totals: one thread only).
  static bool Bucketed(const EvaluationAnalyses& a) {
    for (const std::vector<ExactSum>* v : SumSets(a)) {
      if (v->size() > BatchSums::kBucketed) return false;
    }
    return true;
  }

  BatchSums pos, neg, pos_m, neg_m, confidence, quality;
  std::vector<int64_t> positive_counts, negative_counts, bin_counts, bin_correct;
  std::vector<int64_t> class_targets, class_predicted, class_true_positives;
  int64_t count = 0, correct = 0;
};

namespace {

/// Elements [begin, begin + n) of a floating view as doubles, one dtype switch for all.
void LoadDoubles(const TensorView& view, int64_t begin, int64_t n, std::vector<double>& out) {
  out.resize(static_cast<size_t>(n));
  switch (view.dtype) {
    case DType::kFloat32: {
      const float* p = view.As<float>() + begin;
      for (int64_t i = 0; i < n; ++i) out[static_cast<size_t>(i)] = p[i];
      return;
    }
    case DType::kFloat64: {
      const double* p = view.As<double>() + begin;
      std::copy(p, p + n, out.begin());
      return;
    }
    default:
      for (int64_t i = 0; i < n; ++i) out[static_cast<size_t>(i)] = LoadAsDouble(view, begin + i);
  }
}

/// What one batch's threads may hold for their partial sums, all together.
constexpr size_t kPartialBudgetBytes = size_t{64} << 20;

}  // namespace

void EvaluationAnalyses::AddRows(const LossJob& job, int64_t row_begin, int64_t row_end, Partial& acc) const {
  const size_t C = static_cast<size_t>(classes_), K = gammas_.size(), B = static_cast<size_t>(pt_bins_);
  const bool sweep = K > 0, calibrate = bins_ > 0;
  // The sweep's terms of one item: (1-p_t)^γ · (-log p_t) for every γ, one exp each; γ = 0 is
  // the cross-entropy itself, even where 1 - p_t is 0.
  auto add_sweep = [&](const Item& item) {
    const size_t bin = BinOf(item.pt, pt_bins_);
    BatchSums& sums = item.positive ? acc.pos : acc.neg;
    BatchSums& mass = item.positive ? acc.pos_m : acc.neg_m;
    const size_t cls = static_cast<size_t>(item.cls);
    for (size_t k = 0; k < K; ++k) {
      const double weight = gammas_[k] == 0 ? 1.0 : std::exp(gammas_[k] * item.log_1m_pt);
      const float term = static_cast<float>(weight * -item.log_pt);
      sums.Add(k * C + cls, term);
      mass.Add(k * B + bin, term);
    }
    ++(item.positive ? acc.positive_counts : acc.negative_counts)[cls];
  };

  const Shape& shape = job.logits.shape;
  int64_t inner = 1;
  for (size_t d = 2; d < shape.size(); ++d) inner *= shape[d];
  const std::optional<int64_t> ignore = IgnoreIndex(job.spec.params);
  const ScalarOps<double> o;
  std::vector<double> xs, ts;  // one row's logits [C, S] (and float targets), as doubles
  const int64_t row_elements = classes_ * inner;
  if (rows_) {
    std::vector<double> e(C);
    for (int64_t n = row_begin; n < row_end; ++n) {
      LoadDoubles(job.logits, n * row_elements, row_elements, xs);
      for (int64_t s = 0; s < inner; ++s) {
        const int64_t y = LoadAsInt64(job.targets, n * inner + s);
        if (ignore && y == *ignore) continue;
        // A row (n, s) of classes c: its softmax about the maximum, once.
        auto x = [&](int64_t c) { return xs[static_cast<size_t>(c * inner + s)]; };
        int64_t argmax = 0;
        double max = x(0);
        for (int64_t c = 1; c < classes_; ++c) {
          if (x(c) > max) max = x(c), argmax = c;
        }
        // e_j = e^(x_j - max); rest = Σ_{j≠argmax} e_j, so that Σ e_j = 1 + rest and its log is
        // log1p(rest), accurate as p → 1 (the kernels' form); others = Σ_{j≠y} e_j for 1 - p_y.
        double rest = 0, others = 0, others_squares = 0;
        for (int64_t c = 0; c < classes_; ++c) {
          const double ec = std::exp(x(c) - max);
          if (c != argmax) rest += ec;
          if (c != y) {
            others += ec;
            others_squares += ec * ec;
          }
          e[static_cast<size_t>(c)] = ec;
        }
        const double sum = 1 + rest, log_sum = std::log1p(rest);
        const Item item{y, true, (x(y) - max) - log_sum, std::log(others) - log_sum, e[static_cast<size_t>(y)] / sum};
        if (sweep) add_sweep(item);
        if (calibrate) {
          const double top = 1 / sum;  // the maximum's e is 1
          const size_t bin = BinOf(top, bins_);
          ++acc.bin_counts[bin];
          acc.confidence.Add(bin, static_cast<float>(top));
          const bool right = argmax == y;
          acc.bin_correct[bin] += right;
          acc.correct += right;
          ++acc.count;
          acc.quality.Add(0, static_cast<float>(-item.log_pt));
          // Σ_j (p_j - [j = y])² = (1 - p_y)² + Σ_{j≠y} p_j², each part ≥ 0 (no cancellation).
          const double miss = others / sum;
          acc.quality.Add(1, static_cast<float>(miss * miss + others_squares / (sum * sum)));
          ++acc.class_targets[static_cast<size_t>(y)];
          ++acc.class_predicted[static_cast<size_t>(argmax)];
          acc.class_true_positives[static_cast<size_t>(y)] += right;
        }
      }
    }
    return;
  }
  const bool index_targets = IsInteger(job.targets.dtype);
  for (int64_t n = row_begin; n < row_end; ++n) {
    LoadDoubles(job.logits, n * row_elements, row_elements, xs);
    if (!index_targets) LoadDoubles(job.targets, n * row_elements, row_elements, ts);
    for (int64_t s = 0; s < inner; ++s) {
      const int64_t y = index_targets ? LoadAsInt64(job.targets, n * inner + s) : -1;
      if (index_targets && ignore && y == *ignore) continue;
      for (int64_t c = 0; c < classes_; ++c) {
        const size_t i = static_cast<size_t>(c * inner + s);
        const bool positive = index_targets ? y == c : ts[i] == 1.0;
        const double x = xs[i];
        const math::SigmoidParts<double> t = math::Sigmoid(o, positive ? x : -x);  // of x_t
        const Item item{c, positive, t.log_p, t.log_q, t.p};
        if (sweep) add_sweep(item);
        if (calibrate) {
          const double p = positive ? t.p : t.q;  // σ(x)
          const size_t bin = BinOf(p, bins_);
          ++acc.bin_counts[bin];
          acc.confidence.Add(bin, static_cast<float>(p));
          acc.bin_correct[bin] += positive;
          const bool predicted = x >= 0;  // p ≥ 0.5
          acc.correct += predicted == positive;
          ++acc.count;
          acc.quality.Add(0, static_cast<float>(-t.log_p));
          acc.quality.Add(1, static_cast<float>(t.q * t.q));  // (p - t)² = (1 - p_t)²
          acc.class_targets[static_cast<size_t>(c)] += positive;
          acc.class_predicted[static_cast<size_t>(c)] += predicted;
          acc.class_true_positives[static_cast<size_t>(c)] += positive && predicted;
        }
      }
    }
  }
}

absl::Status EvaluationAnalyses::Add(const LossJob& job) {
  if (!active()) return absl::OkStatus();
  if (!rows_ && IsFloating(job.targets.dtype)) {
    const int64_t n = static_cast<int64_t>(job.targets.size_bytes / DTypeSize(job.targets.dtype));
    const int64_t bad = FindFirstValue(job.targets, n, [](double t) { return t != 0 && t != 1; });
    if (bad >= 0) {
      return Invalid(absl::StrCat("targets element ", bad, " is ", LoadAsDouble(job.targets, bad),
                                  "; the sweep and calibration need targets of 0 or 1 (p_t is not defined otherwise)"));
    }
  }
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
  auto run = [&](int64_t t) {
    try {
      Partial partial(*this);
      AddRows(job, rows * t / threads, rows * (t + 1) / threads, partial);
      std::lock_guard<std::mutex> lock(totals_mu);
      partial.AddTo(*this);
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
  return absl::OkStatus();
}

void EvaluationAnalyses::ToResponse(v1::EvaluateResponse* response) const {
  if (!gammas_.empty()) {
    v1::GammaSweep* s = response->mutable_sweep();
    for (double g : gammas_) s->add_gammas(g);
    s->set_classes(classes_);
    s->set_pt_bins(pt_bins_);
    for (const ExactSum& v : positive_sums_) s->add_positive_sums(v.Value());
    for (const ExactSum& v : negative_sums_) s->add_negative_sums(v.Value());
    for (int64_t v : positive_counts_) s->add_positive_counts(v);
    for (int64_t v : negative_counts_) s->add_negative_counts(v);
    for (const ExactSum& v : positive_mass_) s->add_positive_mass(v.Value());
    for (const ExactSum& v : negative_mass_) s->add_negative_mass(v.Value());
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
