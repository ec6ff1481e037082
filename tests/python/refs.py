"""Plain-torch references for every variant of docs/variants.md, meant to run in float64.

Each returns the per-item losses (reduction 'none' shape) and the count MEAN divides by;
`reduce` applies the reduction. Gradients come from autograd on these expressions. The
sigmoid reference is torchvision.ops.sigmoid_focal_loss itself.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
import torchvision


def _class_dim_last_to_1(t: torch.Tensor) -> torch.Tensor:
    """[N, d1..dk, C] -> [N, C, d1..dk]."""
    return t.movedim(-1, 1)


def softmax_focal(x, y, gamma=2.0, alpha=None, ignore_index=None, label_smoothing=0.0):
    C = x.shape[1]
    logp = F.log_softmax(x, dim=1)
    p = logp.exp()
    valid = torch.ones_like(y, dtype=torch.bool) if ignore_index is None else (y != ignore_index)
    y_safe = torch.where(valid, y, torch.zeros_like(y))
    a = torch.ones(C, dtype=x.dtype) if alpha is None else torch.as_tensor(alpha, dtype=x.dtype)
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


def sigmoid_focal(x, t, gamma=2.0, alpha=0.25, ignore_index=None, label_smoothing=0.0, smoothing_classes=2,
                  input="logits"):
    """Float targets shaped like x, or class-index targets [N, *] for x [N, C, *] (C = background)."""
    mask = None
    if not t.dtype.is_floating_point:  # implicit one-hot
        C = x.shape[1]
        valid = torch.ones_like(t, dtype=torch.bool) if ignore_index is None else (t != ignore_index)
        y = torch.where(valid, t, torch.full_like(t, C))
        t = _class_dim_last_to_1(F.one_hot(y, C + 1)[..., :C].to(x.dtype))
        mask = valid.unsqueeze(1).expand_as(x)
    t = _smooth(t.to(x.dtype), label_smoothing, smoothing_classes)
    if input == "logits":
        loss = torchvision.ops.sigmoid_focal_loss(x, t, alpha=alpha, gamma=gamma, reduction="none")
    else:  # x is p itself; BCELoss's log clamp at -100
        p = x
        ce = -(t * torch.clamp(torch.log(p), min=-100) + (1 - t) * torch.clamp(torch.log(1 - p), min=-100))
        p_t = p * t + (1 - p) * (1 - t)
        loss = ce * (1 - p_t).pow(gamma)
        if alpha >= 0:
            loss = (alpha * t + (1 - alpha) * (1 - t)) * loss
    if mask is not None:
        loss = torch.where(mask, loss, torch.zeros_like(loss))
        return loss, int(mask.sum())
    return loss, loss.numel()


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


REFERENCES = {"softmax_focal": softmax_focal, "sigmoid_focal": sigmoid_focal, "focal_cosine": focal_cosine,
              "dynamic_focal": dynamic_focal}


def reduce(losses, count, reduction, normalizer=None):
    if reduction == "none":
        return losses
    if reduction == "sum":
        return losses.sum()
    d = normalizer if normalizer is not None else count
    return losses.sum() / d if d > 0 else losses.sum() * 0


def reference(variant, x, targets, reduction, num_objects=None, normalizer=None, **params):
    """(output, count) in x's dtype: per-item losses for 'none', else the reduced scalar."""
    if variant == "dynamic_focal":
        losses, count = dynamic_focal(x, targets, num_objects, **params)
    else:
        losses, count = REFERENCES[variant](x, targets, **params)
    return reduce(losses, count, reduction, normalizer), count
