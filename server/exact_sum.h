// An exactly rounded sum of doubles, independent of the order of its terms (Shewchuk's
// non-overlapping partials, as Python's math.fsum): Evaluate's totals do not depend on how a
// dataset was split into batches.
#pragma once

#include <array>
#include <cstdint>
#include <vector>

namespace focal::server {

class ExactSum {
 public:
  void Add(double x);
  /// The exact sum of everything added, rounded once to the nearest double.
  double Value() const;
  /// Adds every term of `other` (the result is as if its terms had been added here).
  void Merge(const ExactSum& other);

 private:
  std::vector<double> partials_;  ///< non-overlapping, increasing magnitude; their sum is exact
};

}  // namespace focal::server

namespace focal::server {

/// An exact, order-independent sum of float32 values, ~10x cheaper per value than ExactSum:
/// a float32 is an integer mantissa (< 2^24) times a power of two fixed by its exponent, so
/// integer buckets indexed by exponent add without any rounding. Evaluate's per-item losses
/// are float32 for every logits dtype but float64.
class ExactFloat32Sum {
 public:
  void Add(float value);
  /// Adds every term into `sum`, exactly.
  void AddTo(ExactSum& sum) const;
  double Value() const;

 private:
  void Spill();

  std::array<int64_t, 256> buckets_{};  ///< by biased exponent; value = bucket · 2^(e - 150)
  int64_t adds_ = 0;                    ///< since the last spill (bounds each bucket < 2^62)
  ExactSum spilled_;
  double non_finite_ = 0;  ///< NaN and ±Inf (allow_non_finite) propagate as in plain addition
};

}  // namespace focal::server
