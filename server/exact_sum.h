// An exactly rounded sum of doubles, independent of the order of its terms (Shewchuk's
// non-overlapping partials, as Python's math.fsum): Evaluate's totals do not depend on how a
// dataset was split into batches.
#pragma once

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
