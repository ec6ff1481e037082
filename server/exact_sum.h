// An exactly rounded sum of doubles, independent of the order of its terms (Shewchuk's
// non-overlapping partials, as Python's math.fsum): Evaluate's totals do not depend on how a
// dataset was split into batches.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <cstring>
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
  double FiniteValue() const;

  std::vector<double> partials_;  ///< non-overlapping, increasing magnitude; their sum is exact
  /// ±inf and NaN terms, summed apart as plain addition would (as math.fsum does): in the
  /// partials, inf - inf in the two-sum would turn an infinite sum into NaN.
  double non_finite_ = 0;
};

}  // namespace focal::server

namespace focal::server {

/// An exact, order-independent sum of float32 values, ~10x cheaper per value than ExactSum:
/// a float32 is an integer mantissa (< 2^24) times a power of two fixed by its exponent, so
/// integer buckets indexed by exponent add without any rounding. Evaluate's per-item losses
/// are float32 for every logits dtype but float64.
class ExactFloat32Sum {
 public:
  void Add(float value) {
    AddUncounted(value);
    // Each add moves a bucket by < 2^24: spilling every 2^38 adds keeps it under 2^62.
    if (++adds_ == kAddsPerSpill) Spill();
  }
  /// Add without counting: for a caller that counts the adds of many sums together and calls
  /// Spill on all of them within kAddsPerSpill adds (BatchSums), which saves touching this
  /// sum's counter, a cache line of its own, on every term.
  void AddUncounted(float value) {
    uint32_t bits;
    std::memcpy(&bits, &value, sizeof bits);
    const uint32_t exponent = (bits >> 23) & 0xffu;
    if (exponent == 0xffu) {
      non_finite_ += value;
      return;
    }
    // Normal: (2^23 + fraction) · 2^(e - 150); subnormal: fraction · 2^(1 - 150).
    const int64_t mantissa = exponent == 0 ? (bits & 0x7fffffu) : ((bits & 0x7fffffu) | 0x800000u);
    buckets_[exponent == 0 ? 1 : exponent] += (bits >> 31) ? -mantissa : mantissa;
  }
  /// Moves the buckets into the exact partials, emptying them.
  void Spill();
  static constexpr int64_t kAddsPerSpill = int64_t{1} << 38;
  /// Adds every term into `sum`, exactly.
  void AddTo(ExactSum& sum) const;
  double Value() const;

 private:
  std::array<int64_t, 256> buckets_{};  ///< by biased exponent; value = bucket · 2^(e - 150)
  int64_t adds_ = 0;                    ///< since the last spill (bounds each bucket < 2^62)
  ExactSum spilled_;
  double non_finite_ = 0;  ///< NaN and ±Inf (allow_non_finite) propagate as in plain addition
};

}  // namespace focal::server

namespace focal::server {

/// `n` exact sums of float32 terms for one batch, added into `totals` (n of them) by Flush:
/// through integer buckets (ExactFloat32Sum, 2 KiB each) while `n` is small, into the ExactSums
/// directly otherwise, so that memory stays bounded whatever the sizes.
class BatchSums {
 public:
  BatchSums(std::vector<ExactSum>& totals, size_t n);
  void Add(size_t i, float term) {
    if (bucketed_) {
      buckets_[i].AddUncounted(term);
      // One count for all the buckets bounds each of them.
      if (++adds_ == ExactFloat32Sum::kAddsPerSpill) {
        for (ExactFloat32Sum& b : buckets_) b.Spill();
        adds_ = 0;
      }
    } else {
      totals_[i].Add(term);
    }
  }
  void Flush();

  /// Up to this many sums go through buckets (8 MiB): a γ sweep of 16 values over 80 classes,
  /// both sides, is 2,560; beyond, ExactSum's ~10x cost per term is the price of bounded memory.
  static constexpr size_t kBucketed = 4096;

 private:
  std::vector<ExactSum>& totals_;
  bool bucketed_;
  int64_t adds_ = 0;  ///< into the buckets since the last spill
  std::vector<ExactFloat32Sum> buckets_;
};

}  // namespace focal::server
