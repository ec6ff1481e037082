"""Plain-torch references for every variant of docs/variants.md (§5 of the catalogue:
/work/shared/VARIANTS.md), meant to run in float64.

Each returns the per-item losses (reduction 'none' shape) and the count MEAN divides by;
`reduce` applies the reduction. Gradients come from autograd on these expressions. The
sigmoid reference is torchvision.ops.sigmoid_focal_loss itself. The §5 references are written
from the contract's forward formulas alone; `closed_form_gradient` (NumPy) transcribes its
gradient formulas separately, so that test_reference can check the two transcriptions against
each other without a server. `weights` (every variant) multiplies the per-item losses.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
import torchvision


def _class_dim_last_to_1(t: torch.Tensor) -> torch.Tensor:
    """[N, d1..dk, C] -> [N, C, d1..dk]."""
    return t.movedim(-1, 1)


def class_balanced_alpha(class_counts, class_balance_beta=0.9999):
    """§5.0's class-balanced α (Cui et al. 2019), float64 NumPy: their effective number of
    samples 1 - β^n and weight (1-β) / (1 - β^n) for n_c > 0; a class with n_c = 0 takes the
    largest of the others' (every weight 1 when all counts are 0); normalised to Σ α_c = C, as
    their `weights / sum(weights) * C`."""
    n = np.asarray(class_counts, dtype=np.float64)
    beta = float(class_balance_beta)
    seen = n > 0
    w = np.ones_like(n)
    w[seen] = (1.0 - beta) / (1.0 - np.power(beta, n[seen]))
    w[~seen] = w[seen].max() if seen.any() else 1.0
    return w / w.sum() * len(n)


def scheduled_gamma(p_y, gamma, gamma_schedule):
    """§5.0's FLSD γ per row: the γ of the first (threshold, γ) step whose threshold is greater
    than p_y (read off a detached p_y: the choice has no gradient), else `gamma`."""
    g = torch.full_like(p_y, float(gamma))
    for threshold, step_gamma in reversed(list(gamma_schedule or ())):
        g = torch.where(p_y < threshold, torch.full_like(g, float(step_gamma)), g)
    return g


def softmax_focal(x, y, gamma=2.0, alpha=None, ignore_index=None, label_smoothing=0.0, poly_epsilon=0.0,
                  class_counts=None, class_balance_beta=0.9999, gamma_schedule=None):
    """§1 with §5.0's options: class_counts replaces alpha by class_balanced_alpha; with a
    gamma_schedule or poly_epsilon (never with label smoothing: the server rejects that)
    ℓ = -α_y (1-p_y)^γ_row log p_y + ε_p (1-p_y)^(γ_row+1), the Poly-1 term not α-weighted."""
    C = x.shape[1]
    if class_counts is not None:
        alpha = class_balanced_alpha(class_counts, class_balance_beta)
    logp = F.log_softmax(x, dim=1)
    p = logp.exp()
    valid = torch.ones_like(y, dtype=torch.bool) if ignore_index is None else (y != ignore_index)
    y_safe = torch.where(valid, y, torch.zeros_like(y))
    a = torch.ones(C, dtype=x.dtype) if alpha is None else torch.as_tensor(alpha, dtype=x.dtype)
    if gamma_schedule or poly_epsilon:
        assert label_smoothing == 0, "rejected by the server (§5.0)"
        log_py = logp.gather(1, y_safe.unsqueeze(1)).squeeze(1)
        p_y = log_py.exp()
        g = scheduled_gamma(p_y.detach(), gamma, gamma_schedule)
        loss = -a[y_safe] * (1 - p_y).pow(g) * log_py + poly_epsilon * (1 - p_y).pow(g + 1)
        loss = torch.where(valid, loss, torch.zeros_like(loss))
        return loss, int(valid.sum())
    a = a.view(1, C, *([1] * (x.dim() - 2)))
    per_class = -a * (1 - p).pow(gamma) * logp
    if label_smoothing == 0:
        loss = per_class.gather(1, y_safe.unsqueeze(1)).squeeze(1)
    else:
        q = _class_dim_last_to_1(F.one_hot(y_safe, C).to(x.dtype)) * (1 - label_smoothing) + label_smoothing / C
        loss = (q * per_class).sum(1)
    loss = torch.where(valid, loss, torch.zeros_like(loss))
    return loss, int(valid.sum())


def _smooth(t, label_smoothing, smoothing_classes):
    return t if not label_smoothing else (1 - label_smoothing) * t + label_smoothing / smoothing_classes


def _dense_targets(x, t, ignore_index):
    """(float targets shaped like x, mask or None): class-index targets [N, *] for x [N, C, *]
    become an implicit one-hot (value C = background: all zeros); ignored rows are masked."""
    if t.dtype.is_floating_point:
        return t.to(x.dtype), None
    C = x.shape[1]
    valid = torch.ones_like(t, dtype=torch.bool) if ignore_index is None else (t != ignore_index)
    y = torch.where(valid, t, torch.full_like(t, C))
    dense = _class_dim_last_to_1(F.one_hot(y, C + 1)[..., :C].to(x.dtype))
    return dense, valid.unsqueeze(1).expand_as(x)


def _masked(loss, mask):
    """(losses with masked items zeroed, count of the counted items)."""
    if mask is None:
        return loss, loss.numel()
    return torch.where(mask, loss, torch.zeros_like(loss)), int(mask.sum())


def sigmoid_focal(x, t, gamma=2.0, alpha=0.25, ignore_index=None, label_smoothing=0.0, smoothing_classes=2,
                  input="logits", poly_epsilon=0.0):
    """Float targets shaped like x, or class-index targets [N, *] for x [N, C, *] (C = background).
    poly_epsilon (§5.0, logits only): + ε_p (1-p_t)^(γ+1), p_t = p t + (1-p)(1-t), not α-weighted,
    as the PolyLoss paper's poly1_focal_loss listing."""
    t, mask = _dense_targets(x, t, ignore_index)
    t = _smooth(t.to(x.dtype), label_smoothing, smoothing_classes)
    if input == "logits":
        loss = torchvision.ops.sigmoid_focal_loss(x, t, alpha=alpha, gamma=gamma, reduction="none")
        if poly_epsilon:
            p = torch.sigmoid(x)
            p_t = p * t + (1 - p) * (1 - t)
            loss = loss + poly_epsilon * (1 - p_t).pow(gamma + 1)
    else:  # x is p itself; BCELoss's log clamp at -100
        assert not poly_epsilon, "rejected by the server (§5.0)"
        p = x
        ce = -(t * torch.clamp(torch.log(p), min=-100) + (1 - t) * torch.clamp(torch.log(1 - p), min=-100))
        p_t = p * t + (1 - p) * (1 - t)
        loss = ce * (1 - p_t).pow(gamma)
        if alpha >= 0:
            loss = (alpha * t + (1 - alpha) * (1 - t)) * loss
    return _masked(loss, mask)


def focal_cosine(x, y, alpha=1.0, gamma=2.0, xent=0.1):
    C = x.shape[1]
    one_hot = F.one_hot(y, C).to(x.dtype)
    cosine = F.cosine_embedding_loss(x, one_hot, torch.ones(x.shape[0], dtype=x.dtype), reduction="none")
    ce = F.cross_entropy(F.normalize(x, dim=1), y, reduction="none")
    p_t = torch.exp(-ce)
    return cosine + xent * alpha * (1 - p_t).pow(gamma) * ce, x.shape[0]


def dynamic_focal(x, t, num_objects=None, gamma=2.0):
    if num_objects is None:
        a_t = torch.ones_like(x)
    else:
        a = (num_objects / num_objects.mean()).to(x.dtype).view(-1, *([1] * (x.dim() - 1)))
        a_t = t * a + (1 - t) * (1 - a)
    log_pt = -F.softplus(-x * (2 * t - 1))
    return -a_t * (1 - log_pt.exp()).pow(gamma) * log_pt, x.numel()


# -- §5, the catalogue ----------------------------------------------------------------------

def _safe(cond, value, fill=1.0):
    """`value` where cond, `fill` elsewhere: the inner half of the double-where idiom, so that a
    branch torch.where does not select cannot put NaN/Inf into autograd's gradient."""
    return torch.where(cond, value, torch.full_like(value, fill))


def asymmetric(x, t, gamma_pos=0.0, gamma_neg=4.0, clip=0.05, ignore_index=None):
    """§5.1: p_m = max(p - m, 0); L+ = (1-p)^γ+ (-log p); L- = p_m^γ- (-log(1 - p_m));
    ℓ = t L+ + (1-t) L-."""
    t, mask = _dense_targets(x, t, ignore_index)
    p = torch.sigmoid(x)
    loss_pos = torch.sigmoid(-x).pow(gamma_pos) * F.softplus(-x)  # 1 - p = σ(-x), -log p = softplus(-x)
    if clip == 0:
        loss_neg = p.pow(gamma_neg) * F.softplus(x)  # -log(1 - p) = softplus(x)
    else:
        shifted = p > clip
        p_m = _safe(shifted, p - clip, 0.5)
        loss_neg = torch.where(shifted, p_m.pow(gamma_neg) * -torch.log1p(-p_m), torch.zeros_like(p))
    return _masked(t * loss_pos + (1 - t) * loss_neg, mask)


def quality_focal(x, t, scores=None, beta=2.0, ignore_index=None):
    """§5.2: ℓ = |σ(x) - y|^β (softplus(x) - x y); MEAN divides by the positives (at least 1: see
    mean_denominator). Class-index targets take their target class's quality from `scores`."""
    if t.dtype.is_floating_point:
        y, mask = t.to(x.dtype), None
        positives = int((y > 0).sum())
    else:
        onehot, mask = _dense_targets(x, t, ignore_index)
        y = onehot * scores.to(x.dtype).unsqueeze(1)
        C = x.shape[1]
        valid = mask[:, 0] if mask is not None else torch.ones_like(t, dtype=torch.bool)
        positives = int((valid & (t >= 0) & (t < C)).sum())
    loss = (torch.sigmoid(x) - y).abs().pow(beta) * (F.softplus(x) - x * y)
    loss, _ = _masked(loss, mask)
    return loss, positives


def varifocal(x, q, alpha=0.75, gamma=2.0, iou_weighted=True):
    """§5.3: q > 0: w+ (softplus(x) - x q), w+ = q (1 without iou_weighted); q = 0: α p^γ softplus(x),
    p^γ = exp(-γ softplus(-x)); nothing detached."""
    q = q.to(x.dtype)
    w_pos = q if iou_weighted else torch.ones_like(q)
    positive = w_pos * (F.softplus(x) - x * q)
    negative = alpha * torch.exp(-gamma * F.softplus(-x)) * F.softplus(x)
    return torch.where(q > 0, positive, negative), x.numel()


def focal_star(x, t, gamma=1.0, beta=0.0, alpha=-1.0, ignore_index=None):
    """§5.4: x_t = (2t-1) x, ℓ = α_t softplus(-(γ x_t + β)) / γ; α_t as §2 (off for α < 0)."""
    t, mask = _dense_targets(x, t, ignore_index)
    x_t = (2 * t - 1) * x
    loss = F.softplus(-(gamma * x_t + beta)) / gamma
    if alpha >= 0:
        loss = (alpha * t + (1 - alpha) * (1 - t)) * loss
    return _masked(loss, mask)


def distribution_focal(x, y):
    """§5.5: logits [N, B, *], targets [N, *] in [0, B-1]; i = min(floor(y), B-2),
    ℓ = -((i+1-y) log S_i + (y-i) log S_{i+1}), S = softmax over the bins (dim 1)."""
    B = x.shape[1]
    y = y.to(x.dtype)
    i = torch.clamp(torch.floor(y), max=B - 2).to(torch.int64)
    log_s = F.log_softmax(x, dim=1)
    left = log_s.gather(1, i.unsqueeze(1)).squeeze(1)
    right = log_s.gather(1, (i + 1).unsqueeze(1)).squeeze(1)
    w_l, w_r = (i + 1).to(x.dtype) - y, y - i.to(x.dtype)
    return -(w_l * left + w_r * right), y.numel()


REFERENCES = {"softmax_focal": softmax_focal, "sigmoid_focal": sigmoid_focal, "focal_cosine": focal_cosine,
              "dynamic_focal": dynamic_focal, "asymmetric": asymmetric, "quality_focal": quality_focal,
              "varifocal": varifocal, "focal_star": focal_star, "distribution_focal": distribution_focal}


def mean_denominator(variant, count):
    """What MEAN divides by without a normalizer: the count, except quality_focal's at-least-1
    (GFL's avg_factor); 0 means MEAN returns 0."""
    return max(count, 1) if variant == "quality_focal" else count


def reduce(losses, count, reduction, normalizer=None, variant=None):
    if reduction == "none":
        return losses
    if reduction == "sum":
        return losses.sum()
    d = normalizer if normalizer is not None else mean_denominator(variant, count)
    return losses.sum() / d if d > 0 else losses.sum() * 0


def per_item(variant, x, targets, num_objects=None, scores=None, weights=None, **params):
    """(per-item losses, count): the variant's 'none' losses, times `weights` when given."""
    if variant == "dynamic_focal":
        losses, count = dynamic_focal(x, targets, num_objects, **params)
    elif variant == "quality_focal":
        losses, count = quality_focal(x, targets, scores, **params)
    else:
        losses, count = REFERENCES[variant](x, targets, **params)
    if weights is not None:
        assert weights.shape == losses.shape, (weights.shape, losses.shape)
        losses = losses * weights.to(losses.dtype)
    return losses, count


def reference(variant, x, targets, reduction, num_objects=None, normalizer=None, scores=None, weights=None,
              **params):
    """(output, count) in x's dtype: per-item losses for 'none', else the reduced scalar."""
    losses, count = per_item(variant, x, targets, num_objects, scores, weights, **params)
    return reduce(losses, count, reduction, normalizer, variant), count


# -- §5's gradient formulas, transcribed separately (NumPy, float64) ----------------------------

def poly_term_gradient(variant, x, t, gamma=2.0, poly_epsilon=0.0, gamma_schedule=None, ignore_index=None,
                       **_):
    """d(Σ_i ε_p (1-p_t)^(γ+1))/dx, the Poly-1 term alone, as §5.0 writes its gradient: softmax
    -ε_p (γ+1)(1-p_y)^γ p_y ([j=y] - p_j) with γ the row's (scheduled) γ; sigmoid
    ε_p (γ+1)(1-p_t)^γ (-(2t-1) p (1-p)). x float64 [N, C, *]; t class indices (sigmoid: or
    float targets); ignored rows get none. Label smoothing is not transcribed."""
    x = np.asarray(x, dtype=np.float64)
    t = np.asarray(t)
    C = x.shape[1]
    if variant == "softmax_focal":
        valid = np.ones(t.shape, bool) if ignore_index is None else t != ignore_index
        y = np.where(valid, t, 0)
        e = np.exp(x - x.max(axis=1, keepdims=True))
        p = e / e.sum(axis=1, keepdims=True)
        p_y = np.take_along_axis(p, y[:, None], axis=1)[:, 0]
        g = np.full(p_y.shape, float(gamma))
        for threshold, step_gamma in reversed(list(gamma_schedule or ())):
            g = np.where(p_y < threshold, float(step_gamma), g)
        onehot = np.moveaxis(np.eye(C)[y], -1, 1)
        coef = -poly_epsilon * (g + 1) * (1 - p_y) ** g * p_y * valid
        return coef[:, None] * (onehot - p)
    if t.dtype.kind in "iu":
        valid = np.ones(t.shape, bool) if ignore_index is None else t != ignore_index
        dense = np.moveaxis(np.eye(C + 1)[np.where(valid, t, C)][..., :C], -1, 1)
        g = _closed_form_poly_sigmoid(x, dense, gamma, poly_epsilon)
        return g * np.expand_dims(valid, 1)
    return _closed_form_poly_sigmoid(x, t.astype(np.float64), gamma, poly_epsilon)


def _closed_form_poly_sigmoid(x, t, gamma, poly_epsilon):
    p = _np_sigmoid(x)
    one_m_pt = t * (1 - p) + (1 - t) * p
    return poly_epsilon * (gamma + 1) * one_m_pt ** gamma * (-(2 * t - 1) * p * (1 - p))


def _np_softplus(z):
    return np.maximum(z, 0) + np.log1p(np.exp(-np.abs(z)))


def _np_sigmoid(z):
    return np.exp(-_np_softplus(-z))


def closed_form_gradient(variant, x, t, scores=None, weights=None, **params):
    """d(Σ_i w_i ℓ_i)/dx, w the per-item `weights` (default all ones), as §5 writes the gradient.
    x float64 [N, C, *] (distribution_focal: [N, B, *]); t as the variant takes it (class-index
    targets become a one-hot here, background C, ignored rows get no gradient)."""
    x = np.asarray(x, dtype=np.float64)
    g = _closed_form(variant, x, t, scores, params)
    if weights is not None:
        w = np.asarray(weights, dtype=np.float64)
        g = g * (np.expand_dims(w, 1) if variant == "distribution_focal" else w)
    return g


def _closed_form(variant, x, t, scores, params):
    params = dict(params)
    ignore_index = params.pop("ignore_index", None)
    t = np.asarray(t)
    if ignore_index is not None and t.dtype.kind in "iu":
        valid = t != ignore_index
        g = _closed_form(variant, x, np.where(valid, t, x.shape[1]), scores, params)
        return g * np.expand_dims(valid, 1)
    if variant == "distribution_focal":
        B = x.shape[1]
        y = np.asarray(t, dtype=np.float64)
        i = np.minimum(np.floor(y), B - 2).astype(np.int64)
        e = np.exp(x - x.max(axis=1, keepdims=True))
        s = e / e.sum(axis=1, keepdims=True)
        target = np.zeros_like(x)
        np.put_along_axis(target, i[:, None], ((i + 1) - y)[:, None], axis=1)
        np.put_along_axis(target, (i + 1)[:, None], (y - i)[:, None], axis=1)
        return s - target
    if t.dtype.kind in "iu":
        C = x.shape[1]
        onehot = np.moveaxis(np.eye(C + 1)[t][..., :C], -1, 1)
        t = onehot * (np.asarray(scores, dtype=np.float64)[:, None] if variant == "quality_focal" else 1.0)
    t = t.astype(np.float64)
    p = _np_sigmoid(x)
    log_p = -_np_softplus(-x)
    if variant == "asymmetric":
        gp, gn, m = params.get("gamma_pos", 0.0), params.get("gamma_neg", 4.0), params.get("clip", 0.05)
        d_pos = (1 - p) ** gp * (gp * p * log_p - (1 - p))
        p_m = np.maximum(p - m, 0)
        with np.errstate(divide="ignore", invalid="ignore"):
            # -log(1-p_m)/p_m, stably: -log1p(-p_m)/p_m -> 1 as p_m -> 0
            ratio = np.where(p_m > 0, -np.log1p(-p_m) / np.where(p_m > 0, p_m, 1), 1.0)
            pm_gn = np.where(p_m > 0, np.where(p_m > 0, p_m, 1) ** gn, 0.0)
            d_neg = np.where(p > m, p * (1 - p) * pm_gn * (gn * ratio + 1 / (1 - p_m)), 0.0)
        return t * d_pos + (1 - t) * d_neg
    if variant == "quality_focal":
        beta = params.get("beta", 2.0)
        d = p - t
        ce = _np_softplus(x) - x * t
        return np.sign(d) * np.abs(d) ** (beta - 1) * (d * d + beta * p * (1 - p) * ce)
    if variant == "varifocal":
        alpha, gamma = params.get("alpha", 0.75), params.get("gamma", 2.0)
        w_pos = t if params.get("iou_weighted", True) else np.ones_like(t)
        p_gamma = np.exp(-gamma * _np_softplus(-x))
        return np.where(t > 0, w_pos * (p - t), alpha * p_gamma * (gamma * (1 - p) * _np_softplus(x) + p))
    if variant == "focal_star":
        gamma, beta, alpha = params.get("gamma", 1.0), params.get("beta", 0.0), params.get("alpha", -1.0)
        s = 2 * t - 1
        a_t = alpha * t + (1 - alpha) * (1 - t) if alpha >= 0 else np.ones_like(t)
        return a_t * s * (_np_sigmoid(gamma * s * x + beta) - 1)
    raise ValueError(variant)
