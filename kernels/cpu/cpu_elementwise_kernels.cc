// The elementwise variants on the CPU (sigmoid_focal, dynamic_focal, asymmetric, quality_focal,
// varifocal, focal_star; float and class-index targets): one pass over the logits, a vector of
// elements at a time, the per-element formula of focal/element_formulas-inl.h chosen once per
// chunk, compiled once per SIMD target and dispatched at run time.

#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "kernels/cpu/cpu_elementwise_kernels.cc"
#include "hwy/foreach_target.h"  // IWYU pragma: keep
// foreach_target.h re-includes this file once per target; everything below runs each time.
#include "hwy/highway.h"
#include "kernels/cpu/cpu_kernel_families.h"
#include "kernels/cpu/simd-inl.h"

HWY_BEFORE_NAMESPACE();
namespace focal::cpu {
namespace HWY_NAMESPACE {

/// Per-job constants broadcast once per chunk, for one descriptor and formula.
template <ElementFormula F, class D>
struct ElementConsts {
  using V = hn::Vec<D>;
  HWY_INLINE ElementConsts(D d, const KernelArgs& a) : o{d}, formula(o, a), scale(o.Set(a.grad_scale)) {}
  HwyOps<D> o;
  math::Element<F, HwyOps<D>> formula;
  V scale;  ///< gradient scale of the reduction and the upstream scalar
};

/// The α_t weights of positives and negatives: dynamic_focal's from its row's α_n (`row_alpha`
/// non-null), else the job's (sigmoid_focal's and focal_star's; unused by the others).
template <class Ops>
HWY_INLINE math::ClassWeights<typename Ops::V> ElementWeights(const Ops& o, const KernelArgs& a,
                                                              const float* row_alpha) {
  if (row_alpha) return math::DynamicFocalWeights(o, o.Set(*row_alpha));
  return {o.Set(a.alpha_pos), o.Set(a.alpha_neg)};
}

/// A training step's usual job: a gradient, no per-item losses (a reduction), no per-item
/// weights, NaN not propagated. Its loop is compiled without the tests of those options: 11%
/// fewer instructions for sigmoid_focal on AVX2, whose loop is bound by how many vectors fit in
/// the out-of-order window.
HWY_INLINE bool IsPlainJob(const KernelArgs& a) {
  return a.gradient && !a.losses && !a.loss_weights && !a.item_weights && !a.propagate_nan;
}

/// Weights one vector's loss by the request's per-item weights, adds it to the sum and writes
/// the results: per-item losses for NONE, and the gradient scaled by the reduction and the
/// per-item gradient weights (upstream times loss weights). kPlain: `a` is a plain job
/// (IsPlainJob), the same operations without the tests.
template <bool kFloat32, bool kPlain, class D, class K>
HWY_INLINE void EmitElementwise(D d, const K& k, const KernelArgs& a, int64_t i, hn::Vec<D> x, hn::Vec<D> loss,
                                hn::Vec<D> grad, LossSum<D>& sum) {
  if (!kPlain && a.loss_weights) loss = hn::Mul(loss, LoadFloat(d, a.loss_weights, DType::kFloat32, i));
  if (!kPlain) loss = PropagateNaN<D>(a, x, loss);
  sum.Add(d, loss);
  if (!kPlain && a.losses) StoreFloat(d, loss, a.losses, DTypeOf<kFloat32>(a.output_dtype), i);
  if (kPlain || a.gradient) {
    auto g = hn::Mul(grad, k.scale);
    if (!kPlain && a.item_weights) g = hn::Mul(g, LoadFloat(d, a.item_weights, DType::kFloat32, i));
    StoreFloat(d, kPlain ? g : PropagateNaN<D>(a, x, g), a.gradient, DTypeOf<kFloat32>(a.output_dtype), i);
  }
}

/// The formula for one vector. sigmoid_focal's hard form runs in the loop; its general one
/// (soft targets, smoothing, probabilities, Poly-1) is out of line, so that the loop's registers
/// are the hard form's: inlined, the general form's values crowded them (AVX2 has 16) and the
/// common hard targets ran 1.2× slower.
template <ElementFormula F, class D>
HWY_NOINLINE math::LossGrad<hn::Vec<D>> GeneralForm(const ElementConsts<F, D>& k, hn::Vec<D> x, hn::Vec<D> t,
                                                    bool binary, const math::ClassWeights<hn::Vec<D>>& alpha) {
  return k.formula(k.o, x, t, binary, alpha);
}

/// Runs `emit` on the formula's loss and gradient for one vector. sigmoid_focal's two forms each
/// get a copy of `emit`: through one merge point after them, the hard form's results went
/// through the stack (the general form returns its pair in memory), a store and a load on the
/// latency chain of every vector.
template <ElementFormula F, class D, class Emit>
HWY_INLINE void WithElement(const ElementConsts<F, D>& k, hn::Vec<D> x, hn::Vec<D> t, bool binary,
                            const math::ClassWeights<hn::Vec<D>>& alpha, const Emit& emit) {
  if constexpr (F == ElementFormula::kSigmoidFocal) {
    if (k.formula.HardFormServes(binary)) {
      emit(k.formula.HardForm(k.o, x, t, alpha));
    } else {
      emit(GeneralForm(k, x, t, binary, alpha));
    }
  } else {
    emit(k.formula(k.o, x, t, binary, alpha));
  }
}

// ------------------------------------------------------------------------------------------
// Float targets shaped like the logits.

template <ElementFormula F, bool kFloat32, bool kPlain, class D>
HWY_INLINE void FloatTargetStep(D d, const ElementConsts<F, D>& k, const KernelArgs& a, int64_t i,
                                const math::ClassWeights<hn::Vec<D>>& alpha, LossSum<D>& sum, ChunkResult& r) {
  const auto x = LoadFloat(d, a.logits, DTypeOf<kFloat32>(a.logits_dtype), i);
  const auto t = LoadFloat(d, a.targets, DTypeOf<kFloat32>(a.targets_dtype), i);
  r.bad_input |= AnyBadInput(d, a, x);
  // One form per vector: sigmoid_focal's hard one only where every lane's target is 0 or 1.
  const bool all_binary = hn::AllTrue(d, math::IsBinaryTarget(k.o, t));
  if (!all_binary &&
      (a.binary_targets || !hn::AllTrue(d, hn::And(hn::Ge(t, hn::Zero(d)), hn::Le(t, hn::Set(d, 1)))))) {
    r.bad_target = true;
  }
  WithElement(k, x, t, all_binary, alpha, [&](const math::LossGrad<hn::Vec<D>>& out) {
    EmitElementwise<kFloat32, kPlain>(d, k, a, i, x, out.loss, out.grad, sum);
  });
}

template <ElementFormula F, typename T, bool kFloat32, bool kPlain>
ChunkResult FloatTargetChunk(const KernelArgs& args, int64_t begin, int64_t end) {
  // A local copy: Highway's vector stores may alias anything, so the loop re-read every field it
  // tests from the caller's args after each store; from a local whose address stays here it
  // keeps them in registers (3% fewer instructions for sigmoid_focal on AVX2).
  const KernelArgs a = args;
  hn::ScalableTag<T> d;
  hn::CappedTag<T, 1> d1;
  const ElementConsts<F, decltype(d)> k(d, a);
  const ElementConsts<F, decltype(d1)> k1(d1, a);
  LossSum<decltype(d)> sum;
  LossSum<decltype(d1)> tail_sum;
  ChunkResult r;
  const int64_t lanes = static_cast<int64_t>(hn::Lanes(d));
  for (int64_t i = begin; i < end;) {
    // dynamic_focal's α_n changes at row boundaries: run each row's part of the chunk.
    int64_t segment_end = end;
    const float* row_alpha = nullptr;
    if (a.row_alpha) {
      const int64_t row = i / a.row_length;
      segment_end = std::min(end, (row + 1) * a.row_length);
      row_alpha = a.row_alpha + row;
    }
    const auto alpha = ElementWeights(k.o, a, row_alpha);
    for (; i + lanes <= segment_end; i += lanes) FloatTargetStep<F, kFloat32, kPlain>(d, k, a, i, alpha, sum, r);
    const auto alpha1 = ElementWeights(k1.o, a, row_alpha);
    for (; i < segment_end; ++i) FloatTargetStep<F, kFloat32, kPlain>(d1, k1, a, i, alpha1, tail_sum, r);
  }
  r.loss_sum = sum.Total() + tail_sum.Total();
  return r;
}

// ------------------------------------------------------------------------------------------
// Class-index targets: t = [c == y] (quality_focal: its score there), background y = C,
// ignored rows 0.

template <ElementFormula F, bool kPlain, class D>
HWY_INLINE void IndexTargetStep(D d, const ElementConsts<F, D>& k, const KernelArgs& a, int64_t i,
                                hn::Mask<D> is_target, hn::Vec<D> target_value, hn::Mask<D> valid, LossSum<D>& sum,
                                ChunkResult& r) {
  const auto x = LoadFloat(d, a.logits, a.logits_dtype, i);
  r.bad_input |= AnyBadInput(d, a, x);
  const auto t = hn::IfThenElseZero(is_target, target_value);
  const auto alpha = ElementWeights(k.o, a, nullptr);
  // A one-hot is binary, except for quality_focal's scores (its formula has one form only).
  WithElement(k, x, t, /*binary=*/true, alpha, [&](const math::LossGrad<hn::Vec<D>>& out) {
    EmitElementwise<false, kPlain>(d, k, a, i, x, hn::IfThenElseZero(valid, out.loss),
                                  hn::IfThenElseZero(valid, out.grad), sum);
  });
}

template <ElementFormula F, typename T, bool kPlain>
ChunkResult IndexTargetChunk(const KernelArgs& args, int64_t begin, int64_t end) {
  const KernelArgs a = args;  // a local copy, as FloatTargetChunk's
  hn::ScalableTag<T> d;
  hn::CappedTag<T, 1> d1;
  hn::RebindToSigned<decltype(d)> di;
  hn::RebindToSigned<decltype(d1)> di1;
  using TI = hn::TFromD<decltype(di)>;
  const ElementConsts<F, decltype(d)> k(d, a);
  const ElementConsts<F, decltype(d1)> k1(d1, a);
  LossSum<decltype(d)> sum;
  LossSum<decltype(d1)> tail_sum;
  ChunkResult r;
  const int64_t C = a.classes, S = a.inner;
  const int64_t lanes = static_cast<int64_t>(hn::Lanes(d));
  // The value of the target class's t: 1, or quality_focal's score of the position.
  auto target_value_at = [&](int64_t position) -> T {
    return a.scores ? static_cast<T>(ScalarAt(a.scores, a.scores_dtype, position)) : T(1);
  };
  if (S == 1) {
    // [N, C]: a row is contiguous; vectorise along the classes. Lane j of the vector at class c
    // is the target when j == y - c (Highway's Iota goes through memory: build it once).
    const auto iota = hn::Iota(di, 0);
    for (int64_t row = begin; row < end; ++row) {
      const TI y = hn::GetLane(LoadClassIndex(di1, a, row));
      const int64_t base = row * C;
      const T value = y >= 0 && y < C ? target_value_at(row) : T(1);
      const auto valid = hn::RebindMask(d, hn::Gt(hn::Set(di, y), hn::Set(di, -1)));
      const auto valid1 = hn::RebindMask(d1, hn::Gt(hn::Set(di1, y), hn::Set(di1, -1)));
      int64_t c = 0;
      for (; c + lanes <= C; c += lanes) {
        const auto is_target = hn::RebindMask(d, hn::Eq(iota, hn::Set(di, static_cast<TI>(y - c))));
        IndexTargetStep<F, kPlain>(d, k, a, base + c, is_target, hn::Set(d, value), valid, sum, r);
      }
      for (; c < C; ++c) {
        const auto is_target = hn::RebindMask(d1, hn::Eq(hn::Set(di1, static_cast<TI>(c)), hn::Set(di1, y)));
        IndexTargetStep<F, kPlain>(d1, k1, a, base + c, is_target, hn::Set(d1, value), valid1, tail_sum, r);
      }
    }
  } else {
    // [N, C, S]: vectorise along S, a block of positions and a class at a time.
    constexpr int64_t kBlock = 4096;
    TI* const ybuf = Scratch<TI>(kBlock);
    T* const vbuf = a.scores ? Scratch<T>(kBlock) : nullptr;
    ForEachPositionBlock(a, begin, end, kBlock, [&](int64_t n, int64_t s, int64_t p, int64_t count) {
      for (int64_t j = 0; j < count; ++j) ybuf[j] = static_cast<TI>(ClassIndexAt(a, p + j));
      if (vbuf) {
        for (int64_t j = 0; j < count; ++j) vbuf[j] = target_value_at(p + j);
      }
      for (int64_t c = 0; c < C; ++c) {
        const int64_t base = (n * C + c) * S + s;
        ForEachVector(d, d1, count, [&](auto dv, int64_t j) {
          const hn::RebindToSigned<decltype(dv)> div;
          const auto y = hn::LoadU(div, ybuf + j);
          const auto valid = hn::RebindMask(dv, hn::Gt(y, hn::Set(div, -1)));
          const auto is_target = hn::RebindMask(dv, hn::Eq(y, hn::Set(div, static_cast<TI>(c))));
          const auto value = vbuf ? hn::LoadU(dv, vbuf + j) : hn::Set(dv, 1);
          IndexTargetStep<F, kPlain>(dv, ForLanes(dv, k, k1), a, base + j, is_target, value, valid,
                                     ForLanes(dv, sum, tail_sum), r);
        });
      }
    });
  }
  r.loss_sum = sum.Total() + tail_sum.Total();
  return r;
}

template <ElementFormula F, typename T>
ChunkResult ElementwiseTyped(KernelKind kind, const KernelArgs& a, int64_t begin, int64_t end) {
  if (kind == KernelKind::kElementwiseIndexTargets) {
    // The plain loop for float alone, as below.
    if constexpr (std::is_same_v<T, float>) {
      if (IsPlainJob(a)) return IndexTargetChunk<F, T, true>(a, begin, end);
    }
    return IndexTargetChunk<F, T, false>(a, begin, end);
  }
  const bool float32 = LogitsAndOutputsAreFloat32(a) && a.targets_dtype == DType::kFloat32;
  return RunFloat32OrGeneral<T>(float32, [&](auto float32_form) {
    constexpr bool kFloat32 = decltype(float32_form)::value;
    // The plain loop for float32 alone: the other dtypes' loops convert, and are rarely hot.
    if constexpr (kFloat32) {
      if (IsPlainJob(a)) return FloatTargetChunk<F, T, kFloat32, true>(a, begin, end);
    }
    return FloatTargetChunk<F, T, kFloat32, false>(a, begin, end);
  });
}

template <typename T>
ChunkResult ElementwiseFormula(KernelKind kind, const KernelArgs& a, int64_t begin, int64_t end) {
  switch (a.formula) {
    case ElementFormula::kSigmoidFocal: return ElementwiseTyped<ElementFormula::kSigmoidFocal, T>(kind, a, begin, end);
    case ElementFormula::kAsymmetric: return ElementwiseTyped<ElementFormula::kAsymmetric, T>(kind, a, begin, end);
    case ElementFormula::kQualityFocal: return ElementwiseTyped<ElementFormula::kQualityFocal, T>(kind, a, begin, end);
    case ElementFormula::kVarifocal: return ElementwiseTyped<ElementFormula::kVarifocal, T>(kind, a, begin, end);
    case ElementFormula::kFocalStar: return ElementwiseTyped<ElementFormula::kFocalStar, T>(kind, a, begin, end);
  }
  return {};
}

/// float64 logits compute in double; every other dtype in float.
ChunkResult ElementwiseChunkImpl(KernelKind kind, const KernelArgs& a, int64_t begin, int64_t end) {
  return a.logits_dtype == DType::kFloat64 ? ElementwiseFormula<double>(kind, a, begin, end)
                                           : ElementwiseFormula<float>(kind, a, begin, end);
}

const char* TargetNameImpl() { return hwy::TargetName(HWY_TARGET); }

}  // namespace HWY_NAMESPACE
}  // namespace focal::cpu
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
namespace focal::cpu {

HWY_EXPORT(ElementwiseChunkImpl);
HWY_EXPORT(TargetNameImpl);

ChunkResult RunElementwiseChunk(KernelKind kind, const KernelArgs& args, int64_t begin, int64_t end) {
  return HWY_DYNAMIC_DISPATCH(ElementwiseChunkImpl)(kind, args, begin, end);
}

const char* DispatchedTargetName() { return HWY_DYNAMIC_DISPATCH(TargetNameImpl)(); }

}  // namespace focal::cpu
#endif
