// Evaluate's analyses beyond the loss sums (EvaluateOptions, docs/evaluation.md): the γ sweep
// (per γ and class the focal terms of the positive and the negative items apart, without α,
// and the loss mass by p_t) and calibration (a reliability histogram, accuracy, NLL, Brier,
// per-class counts of the argmax). Computed on the host from the batch's logits and targets,
// each item's terms rounded once to float32 and summed exactly, so that the totals do not
// depend on how the dataset was split into batches. No gRPC here, as in evaluation.h.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "focal/job.h"
#include "focal/v1/focal_loss.pb.h"
#include "server/exact_sum.h"

namespace focal::server {

/// Most γ values one sweep takes.
inline constexpr int kMaxSweepGammas = 64;
/// Most bins of the p_t histograms and of the reliability histogram.
inline constexpr int kMaxAnalysisBins = 1000;
/// The p_t bins of a sweep that does not say.
inline constexpr int kDefaultPtBins = 20;
/// Most γ × class cells of a sweep: its totals and its answer stay near 16 MiB each.
inline constexpr int64_t kMaxSweepCells = int64_t{1} << 20;

class EvaluationAnalyses {
 public:
  /// `max_threads` bounds the threads one batch uses (0: the machine's cores, at most 8).
  explicit EvaluationAnalyses(int max_threads = 0) : max_threads_(max_threads) {}

  /// Checks one batch's options and job: the same options as the first batch, a variant and
  /// parameters the analyses decompose (INVALID_ARGUMENT saying why not), the sizes within
  /// the limits above (RESOURCE_EXHAUSTED). Call before the batch is computed.
  absl::Status Check(const v1::EvaluateOptions& options, const LossJob& job);
  /// Adds a checked batch, once computed (so validated): INVALID_ARGUMENT for float targets
  /// that are not 0 or 1, which have no p_t (the totals are then partly added: the call fails).
  absl::Status Add(const LossJob& job);
  /// Fills the response's sweep and calibration, when asked for.
  void ToResponse(v1::EvaluateResponse* response) const;

  bool active() const { return !gammas_.empty() || bins_ > 0; }

 private:
  struct Partial;
  template <typename T>
  struct ItemBlock;
  void Resize(int64_t classes);
  /// Rows [row_begin, row_end) of a checked batch into one thread's partial sums, computed in
  /// the logits' compute type T (double for float64 logits, else float, as the kernels).
  void AddRows(const LossJob& job, int64_t row_begin, int64_t row_end, Partial& acc) const;
  template <typename T>
  void AddRowsAs(const LossJob& job, int64_t row_begin, int64_t row_end, Partial& acc) const;
  /// A block of sigmoid items (logits, classes, sides): their parts, sweep and calibration.
  template <typename T>
  void AddElements(ItemBlock<T>& block, Partial& acc) const;
  /// A block of items in log form into the sweep's sums, counts and p_t mass.
  template <typename T>
  void AddSweep(ItemBlock<T>& block, Partial& acc) const;

  int max_threads_ = 0;
  bool started_ = false;
  std::string variant_;  ///< the first analysed batch's
  v1::EvaluateOptions options_;
  std::vector<double> gammas_;
  int pt_bins_ = kDefaultPtBins;
  int bins_ = 0;
  bool rows_ = false;  ///< softmax_focal (rows) or sigmoid_focal (elements)
  int64_t classes_ = 0;

  // The sweep: [side][K][C] and [side][K][B], positive side first (rows: that side alone);
  // counts [C].
  std::vector<ExactSum> sums_, mass_;
  std::vector<int64_t> positive_counts_, negative_counts_;
  // Calibration: [bins]; per class [C].
  std::vector<int64_t> bin_counts_, bin_correct_;
  std::vector<ExactSum> bin_confidence_;
  std::vector<int64_t> class_targets_, class_predicted_, class_true_positives_;
  int64_t count_ = 0, correct_ = 0;
  std::vector<ExactSum> quality_ = std::vector<ExactSum>(2);  ///< Σ NLL, Σ Brier
};

}  // namespace focal::server
