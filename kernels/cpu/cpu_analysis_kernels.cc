// Evaluate's analyses on the CPU (analysis_kernels.h): the per-item parts and focal terms of a
// γ sweep, in float32 or float64 vectors, compiled once per SIMD target and dispatched at run
// time.

#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "kernels/cpu/cpu_analysis_kernels.cc"
#include "hwy/foreach_target.h"  // IWYU pragma: keep
// foreach_target.h re-includes this file once per target; everything below runs each time.
#include "hwy/highway.h"
#include "kernels/cpu/analysis_kernels.h"
#include "kernels/cpu/simd-inl.h"

HWY_BEFORE_NAMESPACE();
namespace focal::cpu {
namespace HWY_NAMESPACE {

/// Runs f(i, lanes) over [0, n) a vector at a time: whole vectors from the arrays in place, the
/// last partial one through padded copies (`f` gets `lanes` < Lanes(d) then), so that every
/// item goes through the same vector arithmetic.
template <class D, class F>
HWY_INLINE void ForEachVector(D d, int64_t n, const F& f) {
  const int64_t lanes = static_cast<int64_t>(hn::Lanes(d));
  int64_t i = 0;
  for (; i + lanes <= n; i += lanes) f(i, lanes);
  if (i < n) f(i, n - i);
}

/// Loads `count` lanes from p (the rest `pad`).
template <class D, typename T>
HWY_INLINE hn::Vec<D> LoadPart(D d, const T* p, int64_t count, double pad = 0) {
  if (count == static_cast<int64_t>(hn::Lanes(d))) return hn::LoadU(d, p);
  HWY_ALIGN hn::TFromD<D> lanes[hn::MaxLanes(d)];
  for (size_t k = 0; k < hn::Lanes(d); ++k) {
    lanes[k] = static_cast<int64_t>(k) < count ? static_cast<hn::TFromD<D>>(p[k]) : static_cast<hn::TFromD<D>>(pad);
  }
  return hn::Load(d, lanes);
}

/// LoadPart of S values into D's lanes, promoted from S (float) where D's lanes are wider.
template <class D, typename S>
HWY_INLINE hn::Vec<D> LoadPartAs(D d, const S* p, int64_t count) {
  if constexpr (std::is_same_v<hn::TFromD<D>, S>) {
    return LoadPart(d, p, count);
  } else {
    return hn::PromoteTo(d, LoadPart(hn::Rebind<S, D>(), p, count));
  }
}

template <class D, typename T>
HWY_INLINE void StorePart(D d, hn::Vec<D> v, T* p, int64_t count) {
  if (count == static_cast<int64_t>(hn::Lanes(d))) return hn::StoreU(v, d, p);
  HWY_ALIGN hn::TFromD<D> lanes[hn::MaxLanes(d)];
  hn::Store(v, d, lanes);
  for (int64_t k = 0; k < count; ++k) p[k] = lanes[k];
}

template <typename T>
void SigmoidItemPartsImpl(const T* x, const T* sign, int64_t n, const analysis::ItemParts<T>& out) {
  const hn::ScalableTag<T> d;
  const HwyOps<decltype(d)> o{d};
  ForEachVector(d, n, [&](int64_t i, int64_t count) {
    const math::SigmoidParts<hn::Vec<decltype(d)>> s = math::Sigmoid(o, LoadPart(d, sign + i, count) * LoadPart(d, x + i, count));
    StorePart(d, s.log_p, out.log_pt + i, count);
    StorePart(d, s.log_q, out.log_q + i, count);
    StorePart(d, s.p, out.pt + i, count);
    StorePart(d, s.q, out.q + i, count);
  });
}

template <typename T>
int64_t SigmoidSidesImpl(const float* t, int64_t n, T* sign, uint8_t* positive) {
  const hn::ScalableTag<T> d;
  const hn::Rebind<int32_t, decltype(d)> di;
  const hn::Rebind<uint8_t, decltype(d)> d8;
  int64_t first_bad = -1;
  ForEachVector(d, n, [&](int64_t i, int64_t count) {
    const auto target = LoadPartAs(d, t + i, count);
    const auto one = hn::Eq(target, hn::Set(d, T(1)));
    if (first_bad < 0) {
      const auto bad = hn::And(hn::FirstN(d, static_cast<size_t>(count)),
                               hn::Not(hn::Or(one, hn::Eq(target, hn::Zero(d)))));
      const intptr_t lane = hn::FindFirstTrue(d, bad);
      if (lane >= 0) first_bad = i + lane;
    }
    StorePart(d, hn::IfThenElse(one, hn::Set(d, T(1)), hn::Set(d, T(-1))), sign + i, count);
    // The flags as int32 lanes, then bytes (Highway 1.0 demotes to bytes from int32 only).
    const auto flags_t = hn::IfThenElseZero(one, hn::Set(d, T(1)));
    hn::Vec<decltype(di)> flags;
  if constexpr (std::is_same_v<T, float>) {
      flags = hn::ConvertTo(di, flags_t);
    } else {
      flags = hn::DemoteTo(di, flags_t);
    }
    StorePart(d8, hn::DemoteTo(d8, flags), positive + i, count);
  });
  return first_bad;
}

template <typename T>
void SweepPlacesImpl(const T* pt, int64_t n, int bins, uint32_t KC, uint32_t KB, const analysis::SweepItems& items) {
  // In double lanes: p·bins is exact for a float p (24 + 10 bits) and rounds as BinOf's for a
  // double one; the truncation to int32 is the floor of a value ≥ 0.
  const hn::ScalableTag<double> dd;
  const hn::Rebind<int32_t, decltype(dd)> di;
  const hn::Rebind<uint32_t, decltype(dd)> du;
  const hn::Rebind<uint8_t, decltype(dd)> d8;
  const auto scale = hn::Set(dd, static_cast<double>(bins)), last = hn::Set(dd, static_cast<double>(bins - 1));
  const auto kc = hn::Set(du, KC), kb = hn::Set(du, KB);
  ForEachVector(dd, n, [&](int64_t i, int64_t count) {
    const auto p = LoadPartAs(dd, pt + i, count);
    // A NaN (shared-memory logits changed after validation) clamps into range: Min returns the bound.
    const auto scaled = hn::Max(hn::Min(hn::Mul(p, scale), last), hn::Zero(dd));
    const auto bin = hn::BitCast(du, hn::DemoteTo(di, scaled));
    const auto side = hn::Sub(hn::Set(du, 1u), hn::PromoteTo(du, LoadPart(d8, items.positive + i, count)));
    const auto cls = LoadPart(du, items.cls + i, count);
    StorePart(du, hn::Add(hn::Mul(side, kc), cls), items.sum + i, count);
    StorePart(du, hn::Add(hn::Mul(side, kb), bin), items.mass + i, count);
    StorePart(du, bin, items.bin + i, count);
  });
}

template <typename T>
void FocalTermsImpl(double gamma, const T* q, const T* log_q, const T* log_pt, int64_t n, float* terms) {
  const hn::ScalableTag<T> d;
  const HwyOps<decltype(d)> o{d};
  const math::Gamma<hn::Vec<decltype(d)>> g = math::MakeGamma(o, gamma);
  ForEachVector(d, n, [&](int64_t i, int64_t count) {
    const auto mod = math::Modulating(o, LoadPart(d, q + i, count), [&] { return LoadPart(d, log_q + i, count); }, g);
    const auto term = mod * hn::Neg(LoadPart(d, log_pt + i, count));
    if constexpr (std::is_same_v<T, float>) {
      StorePart(d, term, terms + i, count);
    } else {
      const hn::Rebind<float, decltype(d)> df;
      StorePart(df, hn::DemoteTo(df, term), terms + i, count);
    }
  });
}

template <typename T>
analysis::SoftmaxRowParts SoftmaxRowImpl(const T* x, int64_t n, int64_t y) {
  const hn::ScalableTag<T> d;
  const HwyOps<decltype(d)> o{d};
  using V = hn::Vec<decltype(d)>;
  V top = hn::Set(d, -HUGE_VAL);
  ForEachVector(d, n, [&](int64_t i, int64_t count) { top = hn::Max(top, LoadPart(d, x + i, count, -HUGE_VAL)); });
  const V max = hn::MaxOfLanes(d, top);
  // Σ over the classes below the maximum of e and of e² (in blocks joined in float64, as the
  // kernels' row sums), and the ties at it, whose e is 1.
  RowSum<decltype(d)> rest(d), squares(d);
  V ties = hn::Zero(d);
  analysis::SoftmaxRowParts r{hn::GetLane(max), -1, 0, 0, 0, 0};
  ForEachVector(d, n, [&](int64_t i, int64_t count) {
    // Padding lanes are -inf: e = 0 and never the maximum, so they add nothing.
    const V v = LoadPart(d, x + i, count, -HUGE_VAL);
    const V below = math::RestTerm(o, v, max);
    rest.Add(below);
    squares.MulAdd(below, below);
    ties = ties + math::TieTerm(o, v, max);
    if (r.argmax < 0) {
      const intptr_t first = hn::FindFirstTrue(d, hn::Eq(v, max));
      if (first >= 0) r.argmax = i + first;
    }
  });
  // One tie is the maximum itself, whose e = 1 log1p leaves out: rest = Σ e - 1, and the same
  // of the squares.
  const double extra_ties = static_cast<double>(SumLanes(d, ties)) - 1;
  r.rest = static_cast<double>(rest.Total()) + extra_ties;
  const double squares_rest = static_cast<double>(squares.Total()) + extra_ties;
  // e_y as the vectors compute it; the sums without y from those with: y the first maximum
  // leaves exactly the rest, and any other y leaves 1 + rest - e_y ≥ 1, so no cancellation.
  r.e_y = hn::GetLane(math::ExpAboutMax(o, hn::Set(d, x[y]), max));
  if (y == r.argmax) {
    r.others = r.rest;
    r.others_squares = squares_rest;
  } else {
    r.others = (1 + r.rest) - r.e_y;
    r.others_squares = (1 + squares_rest) - r.e_y * r.e_y;
  }
  return r;
}

bool BucketPlacesImpl(const float* terms, int64_t n, int log2_exponents, const analysis::SumPlaces& a,
                      const analysis::SumPlaces& b, int32_t* mantissas) {
  const hn::ScalableTag<float> df;
  const hn::RebindToUnsigned<decltype(df)> du;
  const hn::RebindToSigned<decltype(df)> di;
  using VU = hn::Vec<decltype(du)>;
  const VU exponent_mask = hn::Set(du, 0xffu), fraction_mask = hn::Set(du, 0x7fffffu), one = hn::Set(du, 1u);
  const VU place_mask = hn::Set(du, (1u << log2_exponents) - 1), hidden = hn::Set(du, 0x800000u);
  const VU offset_a = hn::Set(du, a.offset), offset_b = hn::Set(du, b.offset);
  const VU stride_a = hn::Set(du, a.stride), stride_b = hn::Set(du, b.stride);
  auto not_finite = hn::Lt(hn::Zero(du), hn::Zero(du));  // none yet
  ForEachVector(df, n, [&](int64_t i, int64_t count) {
    const VU bits = hn::BitCast(du, LoadPart(df, terms + i, count));
    const VU exponent = hn::And(hn::ShiftRight<23>(bits), exponent_mask);
    not_finite = hn::Or(not_finite, hn::Eq(exponent, exponent_mask));
    const auto subnormal = hn::Eq(exponent, hn::Zero(du));
    const VU e = hn::Max(exponent, one);  // a subnormal's unit is e = 1's
    const VU fraction = hn::And(bits, fraction_mask);
    const VU magnitude = hn::Shl(hn::IfThenElse(subnormal, fraction, hn::Or(fraction, hidden)), hn::And(e, place_mask));
    const auto signed_magnitude = hn::BitCast(di, magnitude);
    const auto negative = hn::RebindMask(di, hn::Ne(hn::ShiftRight<31>(bits), hn::Zero(du)));
    StorePart(di, hn::IfThenElse(negative, hn::Neg(signed_magnitude), signed_magnitude), mantissas + i, count);
    const VU bucket = hn::ShiftRightSame(e, log2_exponents);
    for (const analysis::SumPlaces* p : {&a, &b}) {
      const VU sum = hn::Add(LoadPart(du, p->base + i, count), p == &a ? offset_a : offset_b);
      StorePart(du, hn::Add(hn::Mul(bucket, p == &a ? stride_a : stride_b), sum), p->places + i, count);
    }
  });
  return hn::AllFalse(du, not_finite);
}

void SigmoidItemPartsF(const float* x, const float* p, int64_t n, const analysis::ItemParts<float>& out) {
  SigmoidItemPartsImpl(x, p, n, out);
}
void SigmoidItemPartsD(const double* x, const double* p, int64_t n, const analysis::ItemParts<double>& out) {
  SigmoidItemPartsImpl(x, p, n, out);
}
int64_t SigmoidSidesF(const float* t, int64_t n, float* sign, uint8_t* positive) {
  return SigmoidSidesImpl(t, n, sign, positive);
}
int64_t SigmoidSidesD(const float* t, int64_t n, double* sign, uint8_t* positive) {
  return SigmoidSidesImpl(t, n, sign, positive);
}
void SweepPlacesF(const float* pt, int64_t n, int bins, uint32_t KC, uint32_t KB, const analysis::SweepItems& items) {
  SweepPlacesImpl(pt, n, bins, KC, KB, items);
}
void SweepPlacesD(const double* pt, int64_t n, int bins, uint32_t KC, uint32_t KB, const analysis::SweepItems& items) {
  SweepPlacesImpl(pt, n, bins, KC, KB, items);
}
void FocalTermsF(double g, const float* q, const float* log_q, const float* log_pt, int64_t n, float* terms) {
  FocalTermsImpl(g, q, log_q, log_pt, n, terms);
}
void FocalTermsD(double g, const double* q, const double* log_q, const double* log_pt, int64_t n, float* terms) {
  FocalTermsImpl(g, q, log_q, log_pt, n, terms);
}
template <typename T>
void LogsImpl(const T* a, const T* y, const T* w, int64_t n, T* log_a, T* log_complement) {
  const hn::ScalableTag<T> d;
  const HwyOps<decltype(d)> o{d};
  ForEachVector(d, n, [&](int64_t i, int64_t count) {
    StorePart(d, o.Log(LoadPart(d, a + i, count, 1)), log_a + i, count);
    StorePart(d, o.LogComplement(LoadPart(d, y + i, count), LoadPart(d, w + i, count, 1)), log_complement + i, count);
  });
}
void LogsF(const float* a, const float* y, const float* w, int64_t n, float* log_a, float* log_complement) {
  LogsImpl(a, y, w, n, log_a, log_complement);
}
void LogsD(const double* a, const double* y, const double* w, int64_t n, double* log_a, double* log_complement) {
  LogsImpl(a, y, w, n, log_a, log_complement);
}

analysis::SoftmaxRowParts SoftmaxRowF(const float* x, int64_t n, int64_t y) { return SoftmaxRowImpl(x, n, y); }
analysis::SoftmaxRowParts SoftmaxRowD(const double* x, int64_t n, int64_t y) { return SoftmaxRowImpl(x, n, y); }

}  // namespace HWY_NAMESPACE
}  // namespace focal::cpu
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
namespace focal::cpu::analysis {

HWY_EXPORT(SigmoidItemPartsF);
HWY_EXPORT(SigmoidItemPartsD);
HWY_EXPORT(SigmoidSidesF);
HWY_EXPORT(SigmoidSidesD);
HWY_EXPORT(SweepPlacesF);
HWY_EXPORT(SweepPlacesD);
HWY_EXPORT(FocalTermsF);
HWY_EXPORT(FocalTermsD);
HWY_EXPORT(SoftmaxRowF);
HWY_EXPORT(BucketPlacesImpl);
HWY_EXPORT(SoftmaxRowD);
HWY_EXPORT(LogsF);
HWY_EXPORT(LogsD);

void SigmoidItemParts(const float* x, const float* sign, int64_t n, const ItemParts<float>& out) {
  HWY_DYNAMIC_DISPATCH(SigmoidItemPartsF)(x, sign, n, out);
}
void SigmoidItemParts(const double* x, const double* sign, int64_t n, const ItemParts<double>& out) {
  HWY_DYNAMIC_DISPATCH(SigmoidItemPartsD)(x, sign, n, out);
}
int64_t SigmoidSides(const float* t, int64_t n, float* sign, uint8_t* positive) {
  return HWY_DYNAMIC_DISPATCH(SigmoidSidesF)(t, n, sign, positive);
}
int64_t SigmoidSides(const float* t, int64_t n, double* sign, uint8_t* positive) {
  return HWY_DYNAMIC_DISPATCH(SigmoidSidesD)(t, n, sign, positive);
}
void SweepPlaces(const float* pt, int64_t n, int bins, uint32_t KC, uint32_t KB, const SweepItems& items) {
  HWY_DYNAMIC_DISPATCH(SweepPlacesF)(pt, n, bins, KC, KB, items);
}
void SweepPlaces(const double* pt, int64_t n, int bins, uint32_t KC, uint32_t KB, const SweepItems& items) {
  HWY_DYNAMIC_DISPATCH(SweepPlacesD)(pt, n, bins, KC, KB, items);
}
void FocalTerms(double gamma, const float* q, const float* log_q, const float* log_pt, int64_t n, float* terms) {
  HWY_DYNAMIC_DISPATCH(FocalTermsF)(gamma, q, log_q, log_pt, n, terms);
}
void FocalTerms(double gamma, const double* q, const double* log_q, const double* log_pt, int64_t n, float* terms) {
  HWY_DYNAMIC_DISPATCH(FocalTermsD)(gamma, q, log_q, log_pt, n, terms);
}
bool BucketPlaces(const float* terms, int64_t n, int log2_exponents, const SumPlaces& a, const SumPlaces& b,
                  int32_t* mantissas) {
  return HWY_DYNAMIC_DISPATCH(BucketPlacesImpl)(terms, n, log2_exponents, a, b, mantissas);
}
SoftmaxRowParts SoftmaxRow(const float* x, int64_t n, int64_t y) { return HWY_DYNAMIC_DISPATCH(SoftmaxRowF)(x, n, y); }
SoftmaxRowParts SoftmaxRow(const double* x, int64_t n, int64_t y) { return HWY_DYNAMIC_DISPATCH(SoftmaxRowD)(x, n, y); }
void Logs(const float* a, const float* y, const float* w, int64_t n, float* log_a, float* log_complement) {
  HWY_DYNAMIC_DISPATCH(LogsF)(a, y, w, n, log_a, log_complement);
}
void Logs(const double* a, const double* y, const double* w, int64_t n, double* log_a, double* log_complement) {
  HWY_DYNAMIC_DISPATCH(LogsD)(a, y, w, n, log_a, log_complement);
}

}  // namespace focal::cpu::analysis
#endif
