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
/// integer buckets indexed by exponent add without any rounding. One bucket serves eight
/// exponents, the mantissa shifted by the exponent's place among them (< 2^31): 32 buckets,
/// 256 bytes, of which a sum's terms, whose exponents seldom spread far, touch one or two cache
/// lines. (One bucket per exponent was 2 KiB a sum: a γ sweep's thousands of sums missed the
/// cache on nearly every add.) Evaluate's per-item losses are float32 for every logits dtype
/// but float64.
class ExactFloat32Sum {
 public:
  static constexpr int kExponentsPerBucketLog2 = 3;
  static constexpr int kBuckets = 256 >> kExponentsPerBucketLog2;

  /// Where a finite float32 goes: its bucket and its signed mantissa in the bucket's unit
  /// 2^(8·bucket - 150). Normal: (2^23 + fraction) · 2^(e - 150); subnormal: fraction ·
  /// 2^(1 - 150), so as e = 1. cpu::analysis::BucketPlaces is the same in vectors.
  struct Place {
    uint32_t bucket;
    int64_t mantissa;  ///< |mantissa| < 2^31
  };
  static bool IsFinite(uint32_t bits) { return ((bits >> 23) & 0xffu) != 0xffu; }
  static Place PlaceOf(uint32_t bits) {
    const uint32_t exponent = (bits >> 23) & 0xffu;
    const uint32_t e = exponent == 0 ? 1 : exponent;
    const int64_t magnitude = static_cast<int64_t>((bits & 0x7fffffu) | (exponent == 0 ? 0 : 0x800000u))
                              << (e & ((1u << kExponentsPerBucketLog2) - 1));
    return {e >> kExponentsPerBucketLog2, (bits >> 31) ? -magnitude : magnitude};
  }
  /// Each add moves a bucket by < 2^31: spilling every 2^31 adds keeps it under 2^62.
  static constexpr int64_t kAddsPerSpill = int64_t{1} << 31;
  /// Adds bucket `bucket`'s value into `sum`, exactly.
  static void AddBucketTo(int64_t value, uint32_t bucket, ExactSum& sum);

  void Add(float value) {
    uint32_t bits;
    std::memcpy(&bits, &value, sizeof bits);
    if (!IsFinite(bits)) {
      non_finite_ += value;
      return;
    }
    const Place place = PlaceOf(bits);
    buckets_[place.bucket] += place.mantissa;
    if (++adds_ == kAddsPerSpill) Spill();
  }
  /// Moves the buckets into the exact partials, emptying them.
  void Spill();
  /// Adds every term into `sum`, exactly.
  void AddTo(ExactSum& sum) const;
  double Value() const;

 private:
  std::array<int64_t, kBuckets> buckets_{};
  int64_t adds_ = 0;  ///< since the last spill (bounds each bucket < 2^62)
  ExactSum spilled_;
  double non_finite_ = 0;  ///< NaN and ±Inf (allow_non_finite) propagate as in plain addition
};

}  // namespace focal::server

namespace focal::server {

/// `n` exact sums of float32 terms for one batch, added into `totals` (n of them) by Flush:
/// through integer buckets, ExactFloat32Sum's, in one flat array while `n` is small, into the
/// ExactSums directly otherwise, so that memory stays bounded whatever the sizes. The array is
/// bucket-major, sum i's bucket b at b · stride() + i, which callers may address directly
/// (AddPlaced): terms of neighbouring sums and like magnitude, a row's classes', share cache
/// lines, where sum-major rows of 32 buckets made each class sum a few lines of its own.
class BatchSums {
 public:
  BatchSums(std::vector<ExactSum>& totals, size_t n);
  void Add(size_t i, float term) {
    Reserve(1);
    AddUncounted(i, term);
  }
  /// For a block of adds, counted once ahead: Reserve(n), then up to n adds uncounted. Saves the
  /// count per term, which the compiler must keep in memory (it may alias the buckets).
  void Reserve(int64_t n) {
    if (adds_ + n > ExactFloat32Sum::kAddsPerSpill) Spill();
    adds_ += n;
  }
  void AddUncounted(size_t i, float term) {
    uint32_t bits;
    std::memcpy(&bits, &term, sizeof bits);
    if (!bucketed_) {
      totals_[i].Add(term);  // too many sums for buckets: one thread at a time has the totals
      return;
    }
    if (!ExactFloat32Sum::IsFinite(bits)) {
      SpilledAt(i).Add(term);
      return;
    }
    const ExactFloat32Sum::Place place = ExactFloat32Sum::PlaceOf(bits);
    buckets_[place.bucket * stride_ + i] += place.mantissa;
  }
  /// Whether the sums go through buckets (else only the adds above work).
  bool bucketed() const { return bucketed_; }
  /// Sums per bucket in the array: n, made odd so that one bucket's row is never a multiple of
  /// 4 KiB from the next (the processor would take equal low 12 address bits for a
  /// store-to-load dependency and stall the adds: 4 KiB aliasing).
  size_t stride() const { return stride_; }
  /// Adds mantissa j into bucket places[j] (bucket · stride() + sum, as
  /// cpu::analysis::BucketPlaces writes them) for j < n: adds that Reserve counted.
  void AddPlaced(const uint32_t* places, const int32_t* mantissas, int64_t n) {
    int64_t* const buckets = buckets_.data();
    for (int64_t j = 0; j < n; ++j) buckets[places[j]] += mantissas[j];
  }
  /// Adds the buckets (and what they spilled) into the totals and empties them. The totals may
  /// be shared: the caller holds their lock, and only Flush touches them.
  void Flush();

  /// Up to this many sums go through buckets (4 MiB); beyond, the adds go into the totals
  /// directly, so only one BatchSums may add into those totals at a time: a γ sweep of 64 values over 80 classes,
  /// (ExactSum's ~10x cost per term is the price of bounded memory). A γ sweep of 64 values over
  /// 80 classes, both sides, is 10,240.
  static constexpr size_t kBucketed = 16384;
  /// Whether n sums go through buckets, and the bytes their buckets take.
  static bool Fits(size_t n) { return n <= kBucketed; }
  static size_t Bytes(size_t n) { return Fits(n) ? ExactFloat32Sum::kBuckets * (n | 1) * sizeof(int64_t) : 0; }

 private:
  std::vector<ExactSum>& totals_;
  /// Moves the buckets into spilled_, before they could overflow.
  void Spill();
  ExactSum& SpilledAt(size_t i) {
    if (spilled_.empty()) spilled_.resize(n_);
    return spilled_[i];
  }

  size_t n_;
  bool bucketed_;
  size_t stride_;
  int64_t adds_ = 0;  ///< into the buckets since the last spill
  std::vector<int64_t> buckets_;
  /// What Spill moved out of the buckets, and non-finite terms: n sums once there is any, so
  /// that only Flush touches the totals.
  std::vector<ExactSum> spilled_;
};

}  // namespace focal::server
