// focal_cosine on the CPU: [N, C] rows, the formulas of focal/math-inl.h (math::FocalCosine and
// its gradient) compiled once per SIMD target and dispatched at run time.

#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "kernels/cpu/cpu_cosine_kernels.cc"
#include "hwy/foreach_target.h"  // IWYU pragma: keep
// foreach_target.h re-includes this file once per target; everything below runs each time.
#include "hwy/highway.h"
#include "kernels/cpu/cpu_kernel_families.h"
#include "kernels/cpu/simd-inl.h"

HWY_BEFORE_NAMESPACE();
namespace focal::cpu {
namespace HWY_NAMESPACE {

/// [N, C] focal cosine: pass 1 ‖x‖² and the max, pass 2 e_j = e^(z_j - z_max) (kept), the
/// normaliser and Σ z_j e_j, then the per-row math (math::FocalCosine) for a group of rows as one
/// vector, then the gradient (math::FocalCosineGradAt) from the kept e_j: one exp per logit.
template <typename T>
ChunkResult FocalCosineChunk(const KernelArgs& args, int64_t begin, int64_t end) {
  const KernelArgs a = args;  // a local copy, as FloatTargetChunk's (cpu_elementwise_kernels.cc)
  hn::ScalableTag<T> d;
  hn::CappedTag<T, 1> d1;
  const HwyOps<decltype(d)> o{d};
  const HwyOps<decltype(d1)> o1{d1};
  const ScalarOps<T> so;
  const int64_t C = a.classes;
  const int64_t lanes = static_cast<int64_t>(hn::Lanes(d));
  const int64_t group = C <= kGroupedRowMaxClasses ? lanes : 1;
  constexpr size_t kMaxLanes = hn::MaxLanes(d);
  T* const e = Scratch<T>(static_cast<size_t>(group * C));
  const auto gamma = math::MakeGamma(o, a.gamma);
  double chunk_sum = 0;  // row by row, in order (idle lanes of a group are not rows)
  ChunkResult r;

  HWY_ALIGN T row_sq[kMaxLanes], row_xy[kMaxLanes], row_zmax[kMaxLanes], row_rest[kMaxLanes],
      row_tz[kMaxLanes], row_w[kMaxLanes], row_nan[kMaxLanes], row_loss[kMaxLanes], row_cx[kMaxLanes], row_ce[kMaxLanes],
      row_fix[kMaxLanes];
  int64_t row_y[kMaxLanes];

  for (int64_t first = begin; first < end; first += group) {
    const int64_t rows = std::min(group, end - first);
    for (int64_t g = 0; g < lanes; ++g) {  // idle lanes compute a harmless dummy row
      row_sq[g] = 1, row_xy[g] = 0, row_zmax[g] = 0, row_rest[g] = 0, row_tz[g] = 0, row_w[g] = 0, row_nan[g] = 0;
    }
    for (int64_t g = 0; g < rows; ++g) {
      const int64_t row = first + g, base = row * C;
      T* const row_e = e + g * C;
      const int64_t y = hn::GetLane(LoadClassIndex(hn::CappedTag<int64_t, 1>(), a, row));
      row_y[g] = y;
      // Pass 1: ‖x‖² and max x (reductions).
      RowSum<decltype(d)> vsq(d);
      auto vmax = hn::Set(d, -std::numeric_limits<T>::infinity());
      T sq = 0, max = -std::numeric_limits<T>::infinity();
      bool finite = true;
      int64_t c = 0;
      for (; c + lanes <= C; c += lanes) {
        const auto x = LoadFloat(d, a.logits, a.logits_dtype, base + c);
        finite &= hn::AllTrue(d, hn::IsFinite(x));
        vsq.MulAdd(x, x);
        vmax = hn::Max(vmax, x);
      }
      for (; c < C; ++c) {
        const T v = static_cast<T>(ScalarAt(a.logits, a.logits_dtype, base + c));
        finite &= std::isfinite(v);
        sq += v * v;
        max = std::max(max, v);
      }
      if (C >= lanes) max = std::max(max, MaxLanesOf(d, vmax));
      if (!finite && a.check_inputs) r.bad_input = true;
      const T sum_squares = vsq.Total(sq);
      const T z_scale = math::CosineZScale(so, sum_squares);
      const T z_max = math::CosineZ(so, max, z_scale);
      // Pass 2: e_j (kept), rest (math::Rest), tz = Σ z_j e_j.
      RowSum<decltype(d)> vrest(d), vtz(d);
      auto vties = hn::Zero(d);
      T tail_rest = 0, tail_ties = 0, tz = 0;
      const auto zm = hn::Set(d, z_max);
      for (c = 0; c + lanes <= C; c += lanes) {
        const auto z = math::CosineZ(o, LoadFloat(d, a.logits, a.logits_dtype, base + c), hn::Set(d, z_scale));
        const auto ez = math::ExpAboutMax(o, z, zm);
        hn::StoreU(ez, d, row_e + c);
        vrest.Add(math::RestTermOf(o, z, zm, ez));
        vties = hn::Add(vties, math::TieTerm(o, z, zm));
        vtz.MulAdd(z, ez);
      }
      for (; c < C; ++c) {
        const auto z = math::CosineZ(o1, LoadFloat(d1, a.logits, a.logits_dtype, base + c), hn::Set(d1, z_scale));
        const auto zm1 = hn::Set(d1, z_max);
        const auto ez = math::ExpAboutMax(o1, z, zm1);
        hn::StoreU(ez, d1, row_e + c);
        tail_rest += hn::GetLane(math::RestTermOf(o1, z, zm1, ez));
        tail_ties += hn::GetLane(math::TieTerm(o1, z, zm1));
        tz += hn::GetLane(hn::Mul(z, ez));
      }
      row_sq[g] = sum_squares;
      row_xy[g] = static_cast<T>(ScalarAt(a.logits, a.logits_dtype, base + y));
      row_zmax[g] = z_max;
      // The tail's terms and the ties join the blocked sum in float64.
      row_rest[g] = vrest.Total(math::Rest(ScalarOps<double>(), static_cast<double>(tail_rest),
                                           static_cast<double>(SumLanes(d, vties) + tail_ties)));
      row_tz[g] = vtz.Total(tz);
      row_w[g] = static_cast<T>(ItemWeight<T>(a, row));
      if (!finite && a.propagate_nan) {
        row_w[g] = std::numeric_limits<T>::quiet_NaN();
        row_nan[g] = 1;
      }
    }
    // The per-row math of §3 for the group, as one vector.
    const auto sum_squares = hn::Load(d, row_sq), x_y = hn::Load(d, row_xy), z_max = hn::Load(d, row_zmax);
    const auto rest = hn::Load(d, row_rest), w = hn::Load(d, row_w);
    const math::FocalCosineRow<hn::Vec<decltype(d)>> rc =
        math::FocalCosine(o, sum_squares, x_y, z_max, rest, hn::Load(d, row_tz), o.Set(a.cosine_alpha), gamma,
                          o.Set(a.xent), w);
    // NaN rows under allow_non_finite (a NaN upstream weight leaves the loss alone).
    const auto loss = hn::IfThenElse(hn::Ne(hn::Load(d, row_nan), hn::Zero(d)),
                                     hn::Set(d, std::numeric_limits<T>::quiet_NaN()), rc.loss);
    hn::Store(loss, d, row_loss);
    if (a.loss_weights) {
      for (int64_t g = 0; g < rows; ++g) row_loss[g] *= static_cast<T>(a.loss_weights[first + g]);
    }
    hn::Store(rc.coef_x, d, row_cx);
    hn::Store(rc.coef_e, d, row_ce);
    hn::Store(rc.grad_y, d, row_fix);
    for (int64_t g = 0; g < rows; ++g) chunk_sum += static_cast<double>(row_loss[g]);
    for (int64_t g = 0; g < rows; ++g) {
      const int64_t row = first + g, base = row * C;
      if (a.losses) StoreScalar(row_loss[g], a.losses, a.output_dtype, row);
      if (!a.gradient) continue;
      const T* const row_e = e + g * C;
      const auto cx = hn::Set(d, row_cx[g]), ce = hn::Set(d, row_ce[g]);
      int64_t c = 0;
      for (; c + lanes <= C; c += lanes) {
        const auto x = LoadFloat(d, a.logits, a.logits_dtype, base + c);
        StoreFloat(d, math::FocalCosineGradAt(o, cx, ce, x, hn::LoadU(d, row_e + c)), a.gradient, a.output_dtype,
                   base + c);
      }
      for (; c < C; ++c) {
        const T x = static_cast<T>(ScalarAt(a.logits, a.logits_dtype, base + c));
        const auto g1 = math::FocalCosineGradAt(o1, hn::Set(d1, row_cx[g]), hn::Set(d1, row_ce[g]), hn::Set(d1, x),
                                                hn::Set(d1, row_e[c]));
        StoreScalar(hn::GetLane(g1), a.gradient, a.output_dtype, base + c);
      }
      StoreScalar(row_fix[g], a.gradient, a.output_dtype, base + row_y[g]);
    }
  }
  r.loss_sum = chunk_sum;
  return r;
}

/// float64 logits compute in double; every other dtype in float.
ChunkResult FocalCosineChunkImpl(const KernelArgs& a, int64_t begin, int64_t end) {
  return a.logits_dtype == DType::kFloat64 ? FocalCosineChunk<double>(a, begin, end)
                                           : FocalCosineChunk<float>(a, begin, end);
}

}  // namespace HWY_NAMESPACE
}  // namespace focal::cpu
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
namespace focal::cpu {

HWY_EXPORT(FocalCosineChunkImpl);

ChunkResult RunFocalCosineChunk(const KernelArgs& args, int64_t begin, int64_t end) {
  return HWY_DYNAMIC_DISPATCH(FocalCosineChunkImpl)(args, begin, end);
}

}  // namespace focal::cpu
#endif
