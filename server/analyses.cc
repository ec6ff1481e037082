#include "server/analyses.h"

#include <algorithm>
#include <cmath>
#include <optional>
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
  const VariantParams& params = job.spec.params;
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
  const size_t C = static_cast<size_t>(classes), K = gammas_.size(), B = static_cast<size_t>(pt_bins_);
  positive_sums_.assign(K * C, ExactSum());
  positive_mass_.assign(K * B, ExactSum());
  positive_counts_.assign(C, 0);
  if (!rows_) {
    negative_sums_.assign(K * C, ExactSum());
    negative_mass_.assign(K * B, ExactSum());
    negative_counts_.assign(C, 0);
  }
  bin_counts_.assign(static_cast<size_t>(bins_), 0);
  bin_correct_.assign(static_cast<size_t>(bins_), 0);
  bin_confidence_.assign(static_cast<size_t>(bins_), ExactSum());
  class_targets_.assign(C, 0);
  class_predicted_.assign(C, 0);
  class_true_positives_.assign(C, 0);
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
  const size_t C = static_cast<size_t>(classes_), K = gammas_.size(), B = static_cast<size_t>(pt_bins_);
  BatchSums pos(positive_sums_, K * C), neg(negative_sums_, rows_ ? 0 : K * C);
  BatchSums pos_mass(positive_mass_, K * B), neg_mass(negative_mass_, rows_ ? 0 : K * B);
  BatchSums confidence(bin_confidence_, static_cast<size_t>(bins_));
  std::vector<ExactSum> nll_brier(2);
  BatchSums quality(nll_brier, 2);
  const bool sweep = K > 0, calibrate = bins_ > 0;

  // The sweep's terms of one item: (1-p_t)^γ · (-log p_t) for every γ, one exp each; γ = 0 is
  // the cross-entropy itself, even where 1 - p_t is 0.
  auto add_sweep = [&](const Item& item) {
    const size_t bin = BinOf(item.pt, pt_bins_);
    BatchSums& sums = item.positive ? pos : neg;
    BatchSums& mass = item.positive ? pos_mass : neg_mass;
    for (size_t k = 0; k < K; ++k) {
      const double weight = gammas_[k] == 0 ? 1.0 : std::exp(gammas_[k] * item.log_1m_pt);
      const float term = static_cast<float>(weight * -item.log_pt);
      sums.Add(k * C + static_cast<size_t>(item.cls), term);
      mass.Add(k * B + bin, term);
    }
    ++(item.positive ? positive_counts_ : negative_counts_)[static_cast<size_t>(item.cls)];
  };

  const Shape& shape = job.logits.shape;
  const int64_t rows = shape.empty() ? 1 : shape[0];
  int64_t inner = 1;
  for (size_t d = 2; d < shape.size(); ++d) inner *= shape[d];
  const std::optional<int64_t> ignore = IgnoreIndex(job.spec.params);
  const ScalarOps<double> o;
  if (rows_) {
    // A row (n, s) of classes c: its softmax about the maximum, once.
    for (int64_t n = 0; n < rows; ++n) {
      for (int64_t s = 0; s < inner; ++s) {
        const int64_t y = LoadAsInt64(job.targets, n * inner + s);
        if (ignore && y == *ignore) continue;
        auto x = [&](int64_t c) { return LoadAsDouble(job.logits, (n * classes_ + c) * inner + s); };
        int64_t argmax = 0;
        double max = x(0);
        for (int64_t c = 1; c < classes_; ++c) {
          if (x(c) > max) max = x(c), argmax = c;
        }
        double sum = 0, others = 0, squares = 0;  // Σ e_j, Σ_{j≠y} e_j, Σ e_j², e_j = e^(x_j - max)
        for (int64_t c = 0; c < classes_; ++c) {
          const double e = std::exp(x(c) - max);
          sum += e;
          squares += e * e;
          if (c != y) others += e;
        }
        const double log_sum = std::log(sum);
        const Item item{y, true, (x(y) - max) - log_sum, std::log(others) - log_sum, std::exp(x(y) - max) / sum};
        if (sweep) add_sweep(item);
        if (calibrate) {
          const double top = 1 / sum;  // the maximum's e is 1
          const size_t bin = BinOf(top, bins_);
          ++bin_counts_[bin];
          confidence.Add(bin, static_cast<float>(top));
          const bool right = argmax == y;
          bin_correct_[bin] += right;
          correct_ += right;
          ++count_;
          quality.Add(0, static_cast<float>(-item.log_pt));
          // Σ_j (p_j - [j = y])² = Σ p_j² - 2 p_y + 1.
          quality.Add(1, static_cast<float>(squares / (sum * sum) - 2 * item.pt + 1));
          ++class_targets_[static_cast<size_t>(y)];
          ++class_predicted_[static_cast<size_t>(argmax)];
          class_true_positives_[static_cast<size_t>(y)] += right;
        }
      }
    }
  } else {
    const bool index_targets = IsInteger(job.targets.dtype);
    for (int64_t n = 0; n < rows; ++n) {
      for (int64_t s = 0; s < inner; ++s) {
        const int64_t y = index_targets ? LoadAsInt64(job.targets, n * inner + s) : -1;
        if (index_targets && ignore && y == *ignore) continue;
        for (int64_t c = 0; c < classes_; ++c) {
          const int64_t i = (n * classes_ + c) * inner + s;
          const bool positive = index_targets ? y == c : LoadAsDouble(job.targets, i) == 1.0;
          const double x = LoadAsDouble(job.logits, i);
          const math::SigmoidParts<double> t = math::Sigmoid(o, positive ? x : -x);  // of x_t
          const Item item{c, positive, t.log_p, t.log_q, t.p};
          if (sweep) add_sweep(item);
          if (calibrate) {
            const double p = positive ? t.p : t.q;  // σ(x)
            const size_t bin = BinOf(p, bins_);
            ++bin_counts_[bin];
            confidence.Add(bin, static_cast<float>(p));
            bin_correct_[bin] += positive;
            const bool predicted = x >= 0;  // p ≥ 0.5
            correct_ += predicted == positive;
            ++count_;
            quality.Add(0, static_cast<float>(-t.log_p));
            quality.Add(1, static_cast<float>(t.q * t.q));  // (p - t)² = (1 - p_t)²
            class_targets_[static_cast<size_t>(c)] += positive;
            class_predicted_[static_cast<size_t>(c)] += predicted;
            class_true_positives_[static_cast<size_t>(c)] += positive && predicted;
          }
        }
      }
    }
  }
  pos.Flush();
  neg.Flush();
  pos_mass.Flush();
  neg_mass.Flush();
  confidence.Flush();
  quality.Flush();
  nll_.Merge(nll_brier[0]);
  brier_.Merge(nll_brier[1]);
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
    c->set_nll(count_ > 0 ? nll_.Value() / n : 0.0);
    c->set_brier(count_ > 0 ? brier_.Value() / n : 0.0);
    for (size_t k = 0; k < class_targets_.size(); ++k) {
      c->add_class_targets(class_targets_[k]);
      c->add_class_predicted(class_predicted_[k]);
      c->add_class_true_positives(class_true_positives_[k]);
    }
  }
}

}  // namespace focal::server
