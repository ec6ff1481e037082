#include "server/exact_sum.h"

#include <cmath>

namespace focal::server {

void ExactSum::Add(double x) {
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
}

double ExactSum::Value() const {
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
