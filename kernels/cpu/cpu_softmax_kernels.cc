// softmax_focal on the CPU: [N, C] rows (with and without label smoothing) and the strided
// [N, C, S] layout read in place, the formulas of focal/math-inl.h (math::SoftmaxFocalRow,
// math::SoftmaxFocalSmoothedClass and their gradients) compiled once per SIMD target and
// dispatched at run time. e^(x - max) is kept between the softmax and the gradient passes: one
// exp per logit.

#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "kernels/cpu/cpu_softmax_kernels.cc"
#include "hwy/foreach_target.h"  // IWYU pragma: keep
// foreach_target.h re-includes this file once per target; everything below runs each time.
#include "hwy/highway.h"
#include "kernels/cpu/cpu_kernel_families.h"
#include "kernels/cpu/simd-inl.h"

HWY_BEFORE_NAMESPACE();
namespace focal::cpu {
namespace HWY_NAMESPACE {

/// [N, C] softmax focal without label smoothing: pass 1 the row max, pass 2 e_j = e^(x_j - max)
/// (kept) and the normaliser, then the per-row focal term for a group of rows at once, then
/// pass 3 the gradient (math::SoftmaxFocalRow) from the kept e_j: one exp per logit.
template <typename T, bool kFloat32>
ChunkResult SoftmaxRowsChunk(const KernelArgs& args, int64_t begin, int64_t end) {
  const KernelArgs a = args;  // a local copy, as FloatTargetChunk's (cpu_elementwise_kernels.cc)
  const DType logits_dtype = DTypeOf<kFloat32>(a.logits_dtype), output_dtype = DTypeOf<kFloat32>(a.output_dtype);
  hn::ScalableTag<T> d;
  const HwyOps<decltype(d)> o{d};
  const ScalarOps<T> so;
  const int64_t C = a.classes;
  const int64_t lanes = static_cast<int64_t>(hn::Lanes(d));
  const int64_t group = C <= kGroupedRowMaxClasses ? lanes : 1;
  constexpr size_t kMaxLanes = hn::MaxLanes(d);
  T* const e = Scratch<T>(static_cast<size_t>(group * C));
  const math::Gamma<hn::Vec<decltype(d)>> gamma = math::MakeGamma(o, a.gamma);
  LossSum<decltype(d)> sum;
  ChunkResult r;

  // Per-row values of the group, laid out as vectors for the per-row math.
  HWY_ALIGN T row_max[kMaxLanes], row_rest[kMaxLanes], row_xy[kMaxLanes], row_alpha[kMaxLanes],
      row_w[kMaxLanes], row_nan[kMaxLanes], row_k[kMaxLanes], row_fix[kMaxLanes], row_loss[kMaxLanes],
      row_lw[kMaxLanes], row_valid[kMaxLanes];
  int64_t row_y[kMaxLanes];

  for (int64_t first = begin; first < end; first += group) {
    const int64_t rows = std::min(group, end - first);
    for (int64_t g = 0; g < lanes; ++g) {  // idle lanes compute a harmless dummy row
      row_max[g] = 0, row_rest[g] = 0, row_xy[g] = 0, row_alpha[g] = 0, row_w[g] = 0, row_nan[g] = 0, row_lw[g] = 1;
      row_valid[g] = 0;
    }
    for (int64_t g = 0; g < rows; ++g) {
      const int64_t row = first + g, base = row * C;
      T* const row_e = e + g * C;
      const int64_t y = hn::GetLane(LoadClassIndex(hn::CappedTag<int64_t, 1>(), a, row));
      row_y[g] = y;
      if (a.loss_weights) row_lw[g] = a.loss_weights[row];
      bool finite, poisoned;
      const T max = RowMax(d, a, logits_dtype, base, C, finite, poisoned);
      if (!finite && a.check_inputs) r.bad_input = true;
      const T rest = RowExpAndRest(d, a, logits_dtype, base, C, max, row_e);
      row_max[g] = max;
      row_rest[g] = rest;
      // An ignored row takes its max as x_y: log p_y ≤ 0 keeps its (unused) focal term finite.
      row_xy[g] = max;
      if (y >= 0) {
        row_valid[g] = 1;
        row_xy[g] = static_cast<T>(ScalarAt(a.logits, logits_dtype, base + y));
        row_alpha[g] = a.class_alpha ? static_cast<T>(a.class_alpha[y]) : T(1);
        row_w[g] = static_cast<T>(ItemWeight<T>(a, row));
        if (poisoned && a.propagate_nan) {
          row_w[g] = std::numeric_limits<T>::quiet_NaN();
          row_nan[g] = 1;
        }
      }
    }
    // The per-row math, one group of rows as one vector.
    const math::SoftmaxRowGrad<hn::Vec<decltype(d)>> rg =
        math::SoftmaxFocalRow(o, hn::Load(d, row_xy), hn::Load(d, row_max), hn::Load(d, row_rest),
                              hn::Load(d, row_alpha), hn::Load(d, row_w), gamma, math::SoftmaxOptionsOf(a));
    // The loss is NaN for a counted non-finite row under allow_non_finite, 0 when ignored (α_y
    // is 0 there, but Poly-1's term is not α-weighted: zeroed by the row's valid flag). Not
    // tested on w: a NaN upstream weight is the gradient's business, not the loss's.
    const auto nan_row = hn::Ne(hn::Load(d, row_nan), hn::Zero(d));
    auto loss = hn::IfThenElse(nan_row, hn::Set(d, std::numeric_limits<T>::quiet_NaN()),
                               hn::IfThenElseZero(hn::Ne(hn::Load(d, row_valid), hn::Zero(d)), rg.loss));
    if (a.loss_weights) loss = hn::Mul(loss, hn::Load(d, row_lw));
    hn::Store(loss, d, row_loss);
    hn::Store(rg.coef_e, d, row_k);
    hn::Store(rg.grad_y, d, row_fix);
    sum.Add(d, loss);
    for (int64_t g = 0; g < rows; ++g) {
      const int64_t row = first + g, base = row * C;
      if (a.losses) StoreScalar(row_loss[g], a.losses, output_dtype, row);
      if (!a.gradient) continue;
      if (row_y[g] < 0) {  // ignored: gradient 0, whatever its logits hold
        for (int64_t c = 0; c < C; ++c) StoreScalar(0, a.gradient, output_dtype, base + c);
        continue;
      }
      const T* const row_e = e + g * C;
      const auto kp = hn::Set(d, row_k[g]);
      int64_t c = 0;
      for (; c + lanes <= C; c += lanes) {
        StoreFloat(d, math::SoftmaxFocalGradAt(o, kp, hn::LoadU(d, row_e + c)), a.gradient, output_dtype, base + c);
      }
      for (; c < C; ++c) {
        StoreScalar(math::SoftmaxFocalGradAt(so, row_k[g], row_e[c]), a.gradient, output_dtype, base + c);
      }
      if (row_y[g] >= 0) StoreScalar(row_fix[g], a.gradient, output_dtype, base + row_y[g]);
    }
  }
  r.loss_sum = sum.Total();
  return r;
}

/// [N, C] softmax focal with label smoothing: every class carries a focal term
/// (math::SoftmaxFocalSmoothedClass, whose weights the row sums into ℓ and W), so the
/// per-element work dominates and rows are taken one at a time.
template <typename T>
ChunkResult SoftmaxSmoothedRowsChunk(const KernelArgs& args, int64_t begin, int64_t end) {
  const KernelArgs a = args;  // a local copy, as FloatTargetChunk's (cpu_elementwise_kernels.cc)
  hn::ScalableTag<T> d;
  hn::CappedTag<T, 1> d1;
  hn::RebindToSigned<decltype(d)> di;
  hn::RebindToSigned<decltype(d1)> di1;
  using TI = hn::TFromD<decltype(di)>;
  const HwyOps<decltype(d)> o{d};
  const HwyOps<decltype(d1)> o1{d1};
  const ScalarOps<T> so;
  const auto gamma = math::MakeGamma(o, a.gamma);
  const auto gamma1 = math::MakeGamma(o1, a.gamma);
  const int64_t C = a.classes;
  const auto smoothing = math::MakeLabelSmoothing(o, a.smoothing, C);
  const auto smoothing1 = math::MakeLabelSmoothing(o1, a.smoothing, C);
  const int64_t lanes = static_cast<int64_t>(hn::Lanes(d));
  ChunkResult r;
  double chunk_sum = 0;
  for (int64_t row = begin; row < end; ++row) {
    const int64_t base = row * C;
    const TI y = hn::GetLane(LoadClassIndex(di1, a, row));
    bool finite, poisoned;  // checked in ignored rows too, as every other path does
    const T max = RowMax(d, a, a.logits_dtype, base, C, finite, poisoned);
    if (!finite && a.check_inputs) r.bad_input = true;
    if (y < 0) {  // ignored: contributes nothing, gradient 0
      if (a.losses) StoreScalar(0, a.losses, a.output_dtype, row);
      if (a.gradient) {
        for (int64_t c = 0; c < C; ++c) StoreScalar(0, a.gradient, a.output_dtype, base + c);
      }
      continue;
    }
    const T rest = RowExpAndRest(d, a, a.logits_dtype, base, C, max, Scratch<T>(static_cast<size_t>(C)));
    int64_t c = 0;
    const T log_norm = math::LogNormalizer(so, rest);
    auto log_prob = [&](auto dv, int64_t cc) {  // log p of classes [cc, cc + lanes)
      return math::LogProb(HwyOps<decltype(dv)>{dv}, LoadFloat(dv, a.logits, a.logits_dtype, base + cc),
                           hn::Set(dv, max), hn::Set(dv, log_norm));
    };
    auto is_y_of = [&](auto dv, auto div, int64_t cc) {  // lanes of classes [cc, cc + lanes)
      return hn::RebindMask(dv, hn::Eq(hn::Iota(div, 0), hn::Set(div, static_cast<TI>(y - cc))));
    };
    auto alpha_of = [&](auto dv, int64_t cc) {  // α in the compute type, as stored (float64)
      return a.class_alpha ? LoadFloat(dv, a.class_alpha, DType::kFloat64, cc) : hn::Set(dv, 1);
    };
    // ℓ = Σ_c weight_c f_c and W = Σ_c weight_c g_c, in blocked float64 sums.
    RowSum<decltype(d)> vloss(d), vw(d);
    T tail_loss = 0, tail_w = 0;
    for (c = 0; c + lanes <= C; c += lanes) {
      const auto cls = math::SoftmaxFocalSmoothedClass(o, log_prob(d, c), is_y_of(d, di, c), alpha_of(d, c),
                                                       smoothing, gamma);
      vloss.MulAdd(cls.weight, cls.term.f);
      vw.MulAdd(cls.weight, cls.term.g);
    }
    for (; c < C; ++c) {
      const auto cls = math::SoftmaxFocalSmoothedClass(o1, log_prob(d1, c), is_y_of(d1, di1, c), alpha_of(d1, c),
                                                       smoothing1, gamma1);
      tail_loss += hn::GetLane(hn::Mul(cls.weight, cls.term.f));
      tail_w += hn::GetLane(hn::Mul(cls.weight, cls.term.g));
    }
    T loss = vloss.Total(tail_loss);
    const T W = vw.Total(tail_w);
    T w = static_cast<T>(ItemWeight<T>(a, row));
    // With label smoothing every class carries a term, so a masked (-inf) class would make the
    // row +inf with a NaN gradient: the row is NaN, as for any non-finite logit.
    if (!finite && a.propagate_nan) loss = w = std::numeric_limits<T>::quiet_NaN();
    if (a.loss_weights) loss *= static_cast<T>(a.loss_weights[row]);
    if (a.gradient) {
      auto grad_at = [&](auto dv, auto div, const auto& gv, const auto& sv, int64_t cc) {
        const HwyOps<decltype(dv)> ov{dv};
        const auto weight = math::SmoothedWeight(ov, sv, is_y_of(dv, div, cc), alpha_of(dv, cc));
        const auto g = math::SoftmaxFocalSmoothedGrad(ov, log_prob(dv, cc), weight, hn::Set(dv, W), hn::Set(dv, w), gv);
        StoreFloat(dv, g, a.gradient, a.output_dtype, base + cc);
      };
      for (c = 0; c + lanes <= C; c += lanes) grad_at(d, di, gamma, smoothing, c);
      for (; c < C; ++c) grad_at(d1, di1, gamma1, smoothing1, c);
    }
    if (a.losses) StoreScalar(loss, a.losses, a.output_dtype, row);
    chunk_sum += static_cast<double>(loss);
  }
  r.loss_sum = chunk_sum;
  return r;
}

/// [N, C, S] softmax focal: each lane is its own row (a position s of one n), and the class
/// loops read x[n, c, s..s+L) at stride S, in place. A group is NV vectors of positions, one
/// cache line of each class: pass 1 reads each line whole at once and copies it to `xs`, so
/// the later passes read L1 instead of strided memory, and the gradient pass writes each line
/// whole. With S a power of two every class's line falls in the same cache set, where a line
/// read in halves or twice was evicted in between. e^(x - max) is kept per class and lane
/// between the softmax and gradient passes (one exp per logit). kFloat32: logits and outputs
/// are float32 (DTypeOf), so loads and stores have no dtype switch. `stream_gradient`: the
/// group's gradient lines are aligned and go out by streaming stores (SoftmaxStridedChunk).
template <bool kFloat32, int NV, class D>
HWY_INLINE void SoftmaxStridedGroup(D d, const KernelArgs& a, int64_t p, const math::Gamma<hn::Vec<D>>& gamma,
                                    const math::LabelSmoothing<hn::Vec<D>>& smoothing, hn::TFromD<D>* e,
                                    hn::TFromD<D>* xs, bool stream_gradient, LossSum<D>& sum, ChunkResult& r) {
  using T = hn::TFromD<D>;
  const hn::RebindToSigned<D> di;
  using TI = hn::TFromD<decltype(di)>;
  using V = hn::Vec<D>;
  using M = hn::Mask<D>;
  const HwyOps<D> o{d};
  const int64_t C = a.classes, S = a.inner;
  const DType logits_dtype = DTypeOf<kFloat32>(a.logits_dtype), output_dtype = DTypeOf<kFloat32>(a.output_dtype);
  const int64_t L = static_cast<int64_t>(hn::Lanes(d));
  const int64_t n = p / S, s = p % S;
  const int64_t base = n * C * S + s;
  // Vector v holds positions p + v L; its copies of x and its e are C vectors from xs_of(v), e_of(v).
  auto xs_of = [&](int v) { return xs + v * C * L; };
  auto e_of = [&](int v) { return e + v * C * L; };
  auto at = [&](int64_t c, int v) { return base + c * S + v * L; };
  // The classes' index as a vector that counts up with the class loops (no broadcast of c).
  const auto one_i = hn::Set(di, 1);
  const auto inf = hn::Set(d, std::numeric_limits<T>::infinity());

  // Pass 1: the max and min, and whether every logit of each position is finite: x - x is +0
  // for a finite x and NaN otherwise, so the OR of them is 0 in finite lanes alone. Each class
  // is its own memory stream; prefetching eight groups ahead keeps C streams flowing.
  V max[NV], min[NV], non_finite[NV];
  for (int v = 0; v < NV; ++v) max[v] = hn::Neg(inf), min[v] = inf, non_finite[v] = hn::Zero(d);
  const size_t elem = DTypeSize(logits_dtype);
  const char* const logits = static_cast<const char*>(a.logits);
  const bool prefetch = s + 9 * NV * L <= S;  // stay inside this n's rows
  for (int64_t c = 0; c < C; ++c) {
    if (prefetch) hwy::Prefetch(logits + at(c, 8 * NV) * elem);
    for (int v = 0; v < NV; ++v) {
      const V x = LoadFloat(d, a.logits, logits_dtype, at(c, v));
      hn::StoreU(x, d, xs_of(v) + c * L);
      max[v] = hn::Max(max[v], x);
      min[v] = hn::Min(min[v], x);
      non_finite[v] = hn::Or(non_finite[v], hn::Sub(x, x));
    }
  }

  // Then each vector of positions up to its focal terms, and the gradient pass for the group.
  hn::Vec<decltype(di)> y[NV];
  M valid[NV], nan_rows[NV];
  V coef_e[NV], grad_y[NV];
  bool all_valid = true, any_nan = false;
  for (int v = 0; v < NV; ++v) {
    const int64_t pv = p + v * L;
    y[v] = LoadClassIndex(di, a, pv);
    valid[v] = hn::RebindMask(d, hn::Gt(y[v], hn::Set(di, -1)));
    all_valid = all_valid && hn::AllTrue(d, valid[v]);
    const T* const x_v = xs_of(v);
    T* const e_v = e_of(v);
    auto x_at = [&](int64_t c) { return hn::LoadU(d, x_v + c * L); };
    const auto finite = hn::Eq(non_finite[v], hn::Zero(d));
    const bool all_finite = hn::AllTrue(d, finite);
    if (a.check_inputs && !all_finite) r.bad_input = true;
    // No NaN and no +inf: -inf alone is a masked class (VARIANTS.md §5.6). Finite lanes have
    // none; a vector with a non-finite logit (rare) reads its classes again to tell them apart.
    auto below_inf = finite;
    if (!all_finite) {
      below_inf = hn::FirstN(d, static_cast<size_t>(L));
      for (int64_t c = 0; c < C; ++c) below_inf = hn::And(below_inf, hn::Lt(x_at(c), inf));
    }
    // Rows with a softmax: no NaN or +inf, and some logit above -inf. Label-smoothed rows give
    // every class a term, so there any non-finite logit makes the row NaN.
    const auto has_softmax = a.smoothing == 0 ? hn::And(below_inf, hn::Gt(max[v], hn::Neg(inf))) : finite;
    // Pass 2: e = e^(x - max), kept; rest = Σ e - 1 without the maximum's own 1 (math::Rest);
    // the target's logit captured by select, without a gather. Where every e of the vector is
    // normal (the classes' span from min to max, the usual case), the exp skips its range check.
    // x_y starts at the max, so an ignored position's (unused) focal term stays finite.
    auto below = hn::Zero(d), ties = hn::Zero(d), x_y = max[v];
    const V m = max[v];
    const auto yv = y[v];
    auto exp_pass = [&](auto normal) {
      auto class_c = hn::Zero(di);
      for (int64_t c = 0; c < C; ++c, class_c = hn::Add(class_c, one_i)) {
        const auto x = x_at(c);
        const auto ex = decltype(normal)::value ? math::ExpAboutMaxNormal(o, x, m) : math::ExpAboutMax(o, x, m);
        hn::StoreU(ex, d, e_v + c * L);
        below = hn::Add(below, math::RestTermOf(o, x, m, ex));
        ties = hn::Add(ties, math::TieTerm(o, x, m));
        x_y = hn::IfThenElse(hn::RebindMask(d, hn::Eq(yv, class_c)), x, x_y);
      }
    };
    if (all_finite && hn::AllTrue(d, math::ExpAboutMaxIsNormal(o, min[v], m))) {
      exp_pass(std::true_type());
    } else {
      exp_pass(std::false_type());
    }
    // α of the target class, per lane (1 where ignored): L reads instead of a select per class.
    auto alpha_y = hn::Set(d, 1);
    if (a.class_alpha) {
      HWY_ALIGN TI ys[hn::MaxLanes(di)];
      HWY_ALIGN T alphas[hn::MaxLanes(d)];
      hn::Store(yv, di, ys);
      for (int64_t k = 0; k < L; ++k) alphas[k] = ys[k] >= 0 && ys[k] < C ? static_cast<T>(a.class_alpha[ys[k]]) : T(1);
      alpha_y = hn::Load(d, alphas);
    }
    const auto rest = math::Rest(o, below, ties);
    const auto log_norm = math::LogNormalizer(o, rest);
    auto w = hn::Set(d, static_cast<T>(a.grad_scale));
    if (a.item_weights) w = hn::Mul(w, LoadFloat(d, a.item_weights, DType::kFloat32, pv));
    w = hn::IfThenElseZero(valid[v], w);
    V loss;
    if (a.smoothing == 0) {
      const math::SoftmaxRowGrad<V> rg = math::SoftmaxFocalRow(o, x_y, m, rest, alpha_y, w, gamma,
                                                               math::SoftmaxOptionsOf(a));
      loss = rg.loss;
      coef_e[v] = rg.coef_e;
      grad_y[v] = rg.grad_y;
    } else {
      // ℓ = Σ_c weight_c f_c and W = Σ_c weight_c g_c (math::SoftmaxFocalSmoothedClass).
      coef_e[v] = grad_y[v] = hn::Zero(d);  // unused: the gradient is written here
      auto is_y = [&](int64_t c) { return hn::RebindMask(d, hn::Eq(yv, hn::Set(di, static_cast<TI>(c)))); };
      auto alpha_at = [&](int64_t c) { return o.Set(a.class_alpha ? a.class_alpha[c] : 1.0); };
      auto log_prob = [&](int64_t c) { return math::LogProb(o, x_at(c), m, log_norm); };
      loss = hn::Zero(d);
      auto W = hn::Zero(d);
      for (int64_t c = 0; c < C; ++c) {
        const auto cls = math::SoftmaxFocalSmoothedClass(o, log_prob(c), is_y(c), alpha_at(c), smoothing, gamma);
        loss = hn::MulAdd(cls.weight, cls.term.f, loss);
        W = hn::MulAdd(cls.weight, cls.term.g, W);
      }
      if (a.gradient) {
        for (int64_t c = 0; c < C; ++c) {
          const auto weight = math::SmoothedWeight(o, smoothing, is_y(c), alpha_at(c));
          const auto g = math::SoftmaxFocalSmoothedGrad(o, log_prob(c), weight, W, w, gamma);
          StoreFloat(d, hn::IfThenElseZero(valid[v], g), a.gradient, output_dtype, at(c, v));
        }
      }
    }
    loss = hn::IfThenElseZero(valid[v], loss);
    nan_rows[v] = hn::AndNot(has_softmax, valid[v]);  // counted positions without a softmax
    if (a.propagate_nan && !hn::AllFalse(d, nan_rows[v])) {
      // allow_non_finite: a counted position with a NaN or +inf logit has a NaN loss and
      // gradient (an ignored one contributes 0, as VARIANTS.md says of every ignored item).
      loss = hn::IfThenElse(nan_rows[v], hn::Set(d, std::numeric_limits<T>::quiet_NaN()), loss);
      any_nan = true;
    }
    if (a.loss_weights) loss = hn::Mul(loss, LoadFloat(d, a.loss_weights, DType::kFloat32, pv));
    sum.Add(d, loss);
    if (a.losses) StoreFloat(d, loss, a.losses, output_dtype, pv);
  }

  // Pass 3, the gradient of softmax_focal without smoothing, each class's line at once.
  // Groups with an ignored position zero its lanes; the others need no mask.
  if (a.smoothing == 0 && a.gradient) {
    auto grad_pass = [&](auto masked, auto stream) {
      auto class_c = hn::Zero(di);
      for (int64_t c = 0; c < C; ++c, class_c = hn::Add(class_c, one_i)) {
        for (int v = 0; v < NV; ++v) {
          const auto other = math::SoftmaxFocalGradAt(o, coef_e[v], hn::LoadU(d, e_of(v) + c * L));
          auto g = hn::IfThenElse(hn::RebindMask(d, hn::Eq(y[v], class_c)), grad_y[v], other);
          if (decltype(masked)::value) g = hn::IfThenElseZero(valid[v], g);
          StoreGradient<kFloat32>(d, g, a, at(c, v), decltype(stream)::value);
        }
      }
    };
    // Streamed: a whole line per class (the chunk streams line-sized groups alone, aligned).
    if (stream_gradient) {
      if (all_valid) {
        grad_pass(std::false_type(), std::true_type());
      } else {
        grad_pass(std::true_type(), std::true_type());
      }
    } else if (all_valid) {
      grad_pass(std::false_type(), std::false_type());
    } else {
      grad_pass(std::true_type(), std::false_type());
    }
  }
  // The NaN gradients of allow_non_finite's positions without a softmax, over what the
  // gradient passes wrote.
  for (int v = 0; v < NV && any_nan && a.gradient; ++v) {
    const T nan = std::numeric_limits<T>::quiet_NaN();
    HWY_ALIGN T lanes[hn::MaxLanes(d)];
    hn::Store(hn::IfThenElseZero(nan_rows[v], hn::Set(d, nan)), d, lanes);
    for (int64_t c = 0; c < C; ++c) {
      for (int64_t k = 0; k < L; ++k) {
        if (std::isnan(lanes[k])) StoreScalar(lanes[k], a.gradient, output_dtype, at(c, v) + k);
      }
    }
  }
}

template <typename T, bool kFloat32>
ChunkResult SoftmaxStridedChunk(const KernelArgs& args, int64_t begin, int64_t end) {
  // A local copy, as the elementwise chunks take: the class loops store (e, the gradient)
  // through vector stores that may alias anything, and re-read every field of the caller's
  // args they use (the logits' pointer and dtype, α, the gradient's) after each.
  const KernelArgs a = args;
  hn::ScalableTag<T> d;
  hn::CappedTag<T, 1> d1;
  const HwyOps<decltype(d)> o{d};
  const HwyOps<decltype(d1)> o1{d1};
  const auto gamma = math::MakeGamma(o, a.gamma);
  const auto gamma1 = math::MakeGamma(o1, a.gamma);
  const auto smoothing = math::MakeLabelSmoothing(o, a.smoothing, a.classes);
  const auto smoothing1 = math::MakeLabelSmoothing(o1, a.smoothing, a.classes);
  // A group is one 64-byte cache line of positions (at most 4 vectors: SSE4 and the scalar
  // target take fewer, where registers are scarcer than lines).
  constexpr int kVectors = static_cast<int>(std::clamp<size_t>(64 / (hn::MaxLanes(d) * sizeof(T)), 1, 4));
  const int64_t lanes = static_cast<int64_t>(hn::Lanes(d));
  const size_t group_values = static_cast<size_t>(a.classes * kVectors * lanes);
  T* const e = Scratch<T>(2 * group_values);
  T* const xs = e + group_values;
  LossSum<decltype(d)> sum;
  LossSum<decltype(d1)> tail_sum;
  ChunkResult r;
  const int64_t S = a.inner;
  // A large float32 gradient goes out through streaming stores, a group's line of each class
  // at once: the C lines of a group fall in one cache set (S a multiple of 16), where write-
  // allocating them evicted the lines being read. Small ones stay in cache for their reader.
  // Groups stay where the layout puts them (the loss sum's order is the layout's alone): chunks
  // and rows begin on multiples of 16 positions, so with the gradient's base on a vector
  // boundary every group's stores are aligned.
  const bool stream_gradient = StreamsGradient(d, a, kFloat32) && (S * sizeof(T)) % 64 == 0 && begin % 16 == 0 &&
                               kVectors * lanes * sizeof(T) == 64 && StreamAligned(d, a.gradient, 0);
  for (int64_t p = begin; p < end;) {
    const int64_t row_end = std::min(end, (p / S + 1) * S);  // lanes never straddle two n
    for (; p + kVectors * lanes <= row_end; p += kVectors * lanes) {
      SoftmaxStridedGroup<kFloat32, kVectors>(d, a, p, gamma, smoothing, e, xs, stream_gradient, sum, r);
    }
    for (; p + lanes <= row_end; p += lanes) SoftmaxStridedGroup<kFloat32, 1>(d, a, p, gamma, smoothing, e, xs, false, sum, r);
    for (; p < row_end; ++p) SoftmaxStridedGroup<kFloat32, 1>(d1, a, p, gamma1, smoothing1, e, xs, false, tail_sum, r);
  }
  if (stream_gradient) hwy::FlushStream();
  r.loss_sum = sum.Total() + tail_sum.Total();
  return r;
}

/// float64 logits compute in double; every other dtype in float.
template <typename T>
ChunkResult SoftmaxTyped(const KernelArgs& a, int64_t begin, int64_t end) {
  if (a.smoothing != 0 && a.inner == 1) return SoftmaxSmoothedRowsChunk<T>(a, begin, end);
  return RunFloat32OrGeneral<T>(LogitsAndOutputsAreFloat32(a), [&](auto float32_form) {
    constexpr bool kFloat32 = decltype(float32_form)::value;
    if (a.inner != 1) return SoftmaxStridedChunk<T, kFloat32>(a, begin, end);
    return SoftmaxRowsChunk<T, kFloat32>(a, begin, end);
  });
}

ChunkResult SoftmaxChunkImpl(const KernelArgs& a, int64_t begin, int64_t end) {
  return a.logits_dtype == DType::kFloat64 ? SoftmaxTyped<double>(a, begin, end) : SoftmaxTyped<float>(a, begin, end);
}

}  // namespace HWY_NAMESPACE
}  // namespace focal::cpu
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
namespace focal::cpu {

HWY_EXPORT(SoftmaxChunkImpl);

ChunkResult RunSoftmaxChunk(const KernelArgs& args, int64_t begin, int64_t end) {
  return HWY_DYNAMIC_DISPATCH(SoftmaxChunkImpl)(args, begin, end);
}

}  // namespace focal::cpu
#endif
