// The per-element formulas of the elementwise kernel kinds (KernelArgs::formula), and the
// options of softmax_focal's row formula, from KernelArgs. For each formula: its
// per-job constants built once from KernelArgs and the map from one element's logit x and
// target t to its loss and gradient, through focal/math-inl.h. The CPU pass (Highway vectors)
// and the CUDA pass (scalars) run the same elementwise skeleton with any of them: loads, class
// index one-hots, weights and stores are the kernels', the formula is chosen here.
//
// Like focal/math-inl.h, no include guard and no namespace: focal/element_formulas.h includes it
// inside focal::math, the CPU kernels inside each Highway target's math namespace, after
// math-inl.h and focal/kernel_args.h.

/// Element<F, Ops>: formula F for value type Ops::V. `binary` says every target of the call is
/// 0 or 1 (sigmoid_focal's hard form); `alpha` holds sigmoid_focal's and focal_star's α_t
/// weights of positives and negatives (dynamic_focal's per row).
template <ElementFormula F, class Ops>
struct Element;

template <class Ops>
struct Element<ElementFormula::kSigmoidFocal, Ops> {
  using V = typename Ops::V;
  FOCAL_HD Element(const Ops& o, const KernelArgs& a)
      : c(MakeSigmoidFocalConsts(o, a.gamma, a.smoothing, a.smoothing_floor, a.probabilities)),
        poly(a.poly_epsilon != 0),
        poly_epsilon(o.Set(a.poly_epsilon)) {}
  FOCAL_HD LossGrad<V> operator()(const Ops& o, V x, V t, bool binary, const ClassWeights<V>& alpha) const {
    LossGrad<V> out = SigmoidFocal(o, c, x, t, binary, alpha.pos, alpha.neg);
    if (poly) {
      // Poly-1's term of the (smoothed) target, on logits (validated): not α-weighted.
      const V smoothed = c.smoothed ? o.MulAdd(t, c.keep, c.floor) : t;
      const LossGrad<V> extra = SigmoidPolyTerm(o, Sigmoid(o, x), smoothed, c.gamma, poly_epsilon);
      out.loss = out.loss + extra.loss;
      out.grad = out.grad + extra.grad;
    }
    return out;
  }
  /// Whether the hard form alone gives operator()'s result for targets that are all 0 or 1
  /// (`binary`): no smoothing, no probabilities, no Poly-1 term. A kernel can then keep the
  /// general form out of its loop.
  FOCAL_HD bool HardFormServes(bool binary) const { return binary && !c.smoothed && !c.probabilities && !poly; }
  FOCAL_HD LossGrad<V> HardForm(const Ops& o, V x, V t, const ClassWeights<V>& alpha) const {
    return SigmoidFocalBinary(o, c, x, t, alpha.pos, alpha.neg);
  }
  SigmoidFocalConsts<V> c;
  bool poly;  ///< ε_p ≠ 0
  V poly_epsilon;
};

template <class Ops>
struct Element<ElementFormula::kAsymmetric, Ops> {
  using V = typename Ops::V;
  FOCAL_HD Element(const Ops& o, const KernelArgs& a) : c(MakeAsymmetricConsts(o, a.gamma, a.gamma_neg, a.clip)) {}
  FOCAL_HD LossGrad<V> operator()(const Ops& o, V x, V t, bool, const ClassWeights<V>&) const {
    return Asymmetric(o, c, x, t);
  }
  AsymmetricConsts<V> c;
};

template <class Ops>
struct Element<ElementFormula::kQualityFocal, Ops> {
  using V = typename Ops::V;
  FOCAL_HD Element(const Ops& o, const KernelArgs& a) : c(MakeQualityFocalConsts(o, a.beta)) {}
  FOCAL_HD LossGrad<V> operator()(const Ops& o, V x, V y, bool, const ClassWeights<V>&) const {
    return QualityFocal(o, c, x, y);
  }
  QualityFocalConsts<V> c;
};

template <class Ops>
struct Element<ElementFormula::kVarifocal, Ops> {
  using V = typename Ops::V;
  FOCAL_HD Element(const Ops& o, const KernelArgs& a)
      : c(MakeVarifocalConsts(o, a.negative_weight, a.gamma, a.iou_weighted)) {}
  FOCAL_HD LossGrad<V> operator()(const Ops& o, V x, V q, bool, const ClassWeights<V>&) const {
    return Varifocal(o, c, x, q);
  }
  VarifocalConsts<V> c;
};

template <class Ops>
struct Element<ElementFormula::kFocalStar, Ops> {
  using V = typename Ops::V;
  FOCAL_HD Element(const Ops& o, const KernelArgs& a) : c(MakeFocalStarConsts(o, a.gamma, a.beta)) {}
  /// Targets are 0 or 1 (checked): sign 2t-1 and the α_t of the target's side.
  FOCAL_HD LossGrad<V> operator()(const Ops& o, V x, V t, bool, const ClassWeights<V>& alpha) const {
    const V one = o.Set(1);
    const auto positive = o.Eq(t, one);
    return FocalStar(o, c, x, o.Select(positive, one, o.Neg(one)), o.Select(positive, alpha.pos, alpha.neg));
  }
  FocalStarConsts<V> c;
};

/// softmax_focal's §5.0 options as its row formula takes them (math::SoftmaxFocalRow). The
/// pointers are into `a`, which must outlive the result.
FOCAL_HD SoftmaxRowOptions SoftmaxOptionsOf(const KernelArgs& a) {
  return {a.gamma_steps, a.step_threshold, a.step_gamma, a.poly_epsilon};
}
