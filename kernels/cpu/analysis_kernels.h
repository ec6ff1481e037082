// The SIMD parts of Evaluate's analyses (server/analyses.cc): an item's probabilities in log
// form and its focal terms for a γ sweep, over arrays, in the logits' compute type (float64
// for float64 logits, float32 for the others, as the kernels compute) from the shared formulas
// (focal/math-inl.h), compiled for every Highway target and dispatched at run time as the
// kernels are. Every lane, the last partial vector's too, goes through the same vector code, so
// an item's values do not depend on where it sits in an array.
#pragma once

#include <cstdint>

namespace focal::cpu::analysis {

/// Where SigmoidItemParts writes, n values each.
template <typename T>
struct ItemParts {
  T* log_pt;  ///< log p_t
  T* log_q;   ///< log(1 - p_t), accurate as p_t → 1
  T* pt;      ///< p_t
  T* q;       ///< 1 - p_t, without cancellation
};

/// Sigmoid items: logit x_i with sign_i = 1 for a positive (target 1), -1 for a negative, so
/// x_t = sign · x and p_t = σ(x_t): math::Sigmoid's parts of x_t.
void SigmoidItemParts(const float* x, const float* sign, int64_t n, const ItemParts<float>& out);
void SigmoidItemParts(const double* x, const double* sign, int64_t n, const ItemParts<double>& out);

/// Sigmoid items' sides from float targets t: positive_i = (t_i == 1), sign_i = ±1 to match
/// (SigmoidItemParts). Returns the first i whose t_i is neither 0 nor 1 (no p_t), or -1.
/// Targets of other dtypes are checked before they are rounded to float32 (a float64 near 1
/// is not 1).
int64_t SigmoidSides(const float* t, int64_t n, float* sign, uint8_t* positive);
int64_t SigmoidSides(const float* t, int64_t n, double* sign, uint8_t* positive);

/// The γ-independent places of a sweep's items: bin_i = p_t's bin among `bins` equal ones,
/// ⌊p_t·bins⌋ (the last closed) as the server's BinOf computes it, in double; the indices at
/// γ = 0 of the [side][γ][class] sums, side_i·KC + cls_i, and of the [side][γ][bin] p_t
/// histograms, side_i·KB + bin_i (side 0 positive).
struct SweepItems {
  const uint8_t* positive;
  const uint32_t* cls;
  uint32_t* bin;
  uint32_t* sum;
  uint32_t* mass;
};
void SweepPlaces(const float* pt, int64_t n, int bins, uint32_t KC, uint32_t KB, const SweepItems& items);
void SweepPlaces(const double* pt, int64_t n, int bins, uint32_t KC, uint32_t KB, const SweepItems& items);

/// terms_i = (1 - p_t)^γ · (-log p_t), rounded to float32: the focal term without α, through
/// math::Modulating (products for a whole γ up to 4, 1 for γ = 0 even where 1 - p_t is 0, else
/// exp(γ·log(1 - p_t))).
void FocalTerms(double gamma, const float* q, const float* log_q, const float* log_pt, int64_t n, float* terms);
void FocalTerms(double gamma, const double* q, const double* log_q, const double* log_pt, int64_t n, float* terms);

/// One set of exact sums' places for BucketPlaces: term j goes to sum base[j] + offset, in
/// bucket-major buckets of `stride` sums each.
struct SumPlaces {
  const uint32_t* base;
  uint32_t offset;
  uint32_t stride;
  uint32_t* places;  ///< written: the term's bucket · stride + base[j] + offset
};

/// Splits n float32 terms for exact integer buckets of 2^log2_exponents exponents each (the
/// server's ExactFloat32Sum, whose PlaceOf this is in vectors): each term's signed mantissa
/// shifted by its exponent's place in its bucket (< 2^31), and its bucket's place among two
/// sets of sums. False when a term is not finite (then nothing written means anything).
bool BucketPlaces(const float* terms, int64_t n, int log2_exponents, const SumPlaces& a, const SumPlaces& b,
                  int32_t* mantissas);

/// A softmax row's reductions about its maximum, as the kernels form them (focal/math-inl.h's
/// ExpAboutMax, RestTermOf, TieTerm), and Σ over the classes other than the target y (for
/// 1 - p_y and the Brier score without cancellation).
struct SoftmaxRowParts {
  double max;
  int64_t argmax;         ///< the first class at the maximum
  double rest;            ///< Σ_j e_j - 1, e_j = e^(x_j - max): log Σ e_j = log1p(rest)
  double others;          ///< Σ_{j≠y} e_j
  double others_squares;  ///< Σ_{j≠y} e_j²
  double e_y;             ///< e_y
};

/// The row x[0, n) of finite logits (n ≥ 1) with target class y in [0, n).
SoftmaxRowParts SoftmaxRow(const float* x, int64_t n, int64_t y);
SoftmaxRowParts SoftmaxRow(const double* x, int64_t n, int64_t y);

/// The SIMD math policy's logs over arrays, for their accuracy test (simd_math_test; the
/// sigmoid's parts are checked through SigmoidItemParts): log_a_i = log a_i and
/// log_complement_i = log(1 - y_i) given w_i = 1 - y_i (HwyOps::LogComplement).
void Logs(const float* a, const float* y, const float* w, int64_t n, float* log_a, float* log_complement);
void Logs(const double* a, const double* y, const double* w, int64_t n, double* log_a, double* log_complement);

}  // namespace focal::cpu::analysis
