#include "server/exact_sum.h"

#include <cmath>
#include <cstring>

namespace focal::server {

void ExactSum::Add(double x) {
  if (!std::isfinite(x)) {
    non_finite_ += x;
    return;
  }
  // Each partial keeps the rounding error of the additions before it (two-sum), so nothing is
  // lost; partials that become 0 are dropped.
  size_t kept = 0;
  for (double y : partials_) {
    if (std::fabs(x) < std::fabs(y)) std::swap(x, y);
    const double high = x + y;
    const double low = y - (high - x);
    if (low != 0) partials_[kept++] = low;
    x = high;
  }
  partials_.resize(kept);
  partials_.push_back(x);
}

void ExactSum::Merge(const ExactSum& other) {
  for (double p : other.partials_) Add(p);
  non_finite_ += other.non_finite_;
}

double ExactSum::Value() const {
  if (non_finite_ != 0 || std::isnan(non_finite_)) return non_finite_;  // inf, -inf or NaN whatever the rest
  return FiniteValue();
}

double ExactSum::FiniteValue() const {
  // Sum from the largest partial down, then correct the last rounding when it was a tie
  // (math.fsum's final step): the result is the exact sum correctly rounded.
  if (partials_.empty()) return 0.0;
  size_t n = partials_.size();
  double high = partials_[--n], low = 0;
  while (n > 0) {
    const double x = high, y = partials_[--n];
    high = x + y;
    const double y_rounded = high - x;
    low = y - y_rounded;
    if (low != 0) break;
  }
  if (n > 0 && ((low < 0 && partials_[n - 1] < 0) || (low > 0 && partials_[n - 1] > 0))) {
    const double y = low * 2, x = high + y;
    if (y == x - high) high = x;
  }
  return high;
}

}  // namespace focal::server

namespace focal::server {

void ExactFloat32Sum::AddBucketTo(int64_t value, uint32_t bucket, ExactSum& sum) {
  if (value == 0) return;
  // value = high · 2^32 + low with |high| < 2^31 and 0 <= low < 2^32: both exact as doubles.
  const int64_t high = value >> 32;
  const int64_t low = value - high * (int64_t{1} << 32);
  const int unit = static_cast<int>(bucket << kExponentsPerBucketLog2) - 150;
  sum.Add(std::ldexp(static_cast<double>(high), unit + 32));
  sum.Add(std::ldexp(static_cast<double>(low), unit));
}

void ExactFloat32Sum::AddTo(ExactSum& sum) const {
  sum.Merge(spilled_);
  for (uint32_t b = 0; b < kBuckets; ++b) AddBucketTo(buckets_[b], b, sum);
  if (non_finite_ != 0 || std::isnan(non_finite_)) sum.Add(non_finite_);
}

double ExactFloat32Sum::Value() const {
  ExactSum sum;
  AddTo(sum);
  return sum.Value();
}

void ExactFloat32Sum::Spill() {
  for (uint32_t b = 0; b < kBuckets; ++b) AddBucketTo(buckets_[b], b, spilled_);
  buckets_.fill(0);
  adds_ = 0;
}

BatchSums::BatchSums(std::vector<ExactSum>& totals, size_t n)
    : totals_(totals), n_(n), bucketed_(Fits(n)), stride_(n | 1) {
  if (bucketed_) buckets_.resize(ExactFloat32Sum::kBuckets * stride_);
}

void BatchSums::Spill() {
  for (size_t j = 0; j < buckets_.size(); ++j) {
    if (buckets_[j] == 0) continue;
    ExactFloat32Sum::AddBucketTo(buckets_[j], static_cast<uint32_t>(j / stride_), SpilledAt(j % stride_));
    buckets_[j] = 0;
  }
  adds_ = 0;
}

void BatchSums::Flush() {
  for (size_t j = 0; j < buckets_.size(); ++j) {
    if (buckets_[j] == 0) continue;
    ExactFloat32Sum::AddBucketTo(buckets_[j], static_cast<uint32_t>(j / stride_), totals_[j % stride_]);
    buckets_[j] = 0;
  }
  for (size_t i = 0; i < spilled_.size(); ++i) totals_[i].Merge(spilled_[i]);
  spilled_.clear();
  adds_ = 0;
}

}  // namespace focal::server
