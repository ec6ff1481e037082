"""Inputs for every variant and option the tests sweep: (name, variant, params, make(rng)).

make(rng) returns (logits, targets, extra): float64 logits, the targets (integer class indices
or float64), and a dict of the request's optional per-item tensors (num_objects, weights,
scores; float64, sent as float32), empty when the case has none.
"""
from __future__ import annotations

import numpy as np
import torch


def _class_inputs(shape, spread=3.0, ignore=None, ignore_fraction=0.2, background=False):
    def make(rng):
        x = rng.standard_normal(shape) * spread
        N, C, inner = shape[0], shape[1], shape[2:]
        y = rng.integers(0, C + (1 if background else 0), size=(N, *inner)).astype(np.int64)
        if ignore is not None:
            y[rng.random(y.shape) < ignore_fraction] = ignore
        return x, y, {}
    return make


def _float_targets(shape, soft=False, probabilities=False):
    def make(rng):
        x = rng.standard_normal(shape) * 3.0
        if probabilities:
            x = 1.0 / (1.0 + np.exp(-x / 3.0))  # p in (0, 1), away from the clamp
        t = rng.random(shape) if soft else (rng.random(shape) < 0.3).astype(np.float64)
        return x, t, {}
    return make


def _dynamic(shape, with_objects):
    def make(rng):
        x = rng.standard_normal(shape) * 3.0
        t = (rng.random(shape) < 0.3).astype(np.float64)
        n = rng.integers(0, 6, size=shape[0]).astype(np.float64)
        n[0] = max(n[0], 1.0)  # positive mean
        return x, t, ({"num_objects": n} if with_objects else {})
    return make


def _with_scores(make):
    """Class-index inputs plus quality_focal's scores: the target class's quality in [0, 1] per
    row (a few exactly 0 and 1)."""
    def made(rng):
        x, y, extra = make(rng)
        scores = rng.random(y.shape)
        scores.flat[:2] = (0.0, 1.0)
        return x, y, {**extra, "scores": scores}
    return made


def _all_background(shape):
    """Class-index targets that are all background (value C), with scores: nothing positive."""
    def make(rng):
        x = rng.standard_normal(shape) * 3.0
        y = np.full((shape[0], *shape[2:]), shape[1], dtype=np.int64)
        return x, y, {"scores": rng.random(y.shape)}
    return make


def _quality_targets(shape, positive_fraction=0.3):
    """Float quality targets shaped like the logits: 0 for negatives, in (0, 1] for positives."""
    def make(rng):
        x = rng.standard_normal(shape) * 3.0
        q = np.where(rng.random(shape) < positive_fraction, rng.uniform(0.05, 1.0, shape), 0.0)
        q.flat[0] = 1.0
        return x, q, {}
    return make


def _iou_targets(shape, background_fraction=0.3):
    """Varifocal's targets: per position, one target class with its IoU q in (0, 1], 0 elsewhere;
    some positions are all background (0)."""
    def make(rng):
        x = rng.standard_normal(shape) * 3.0
        N, C, inner = shape[0], shape[1], shape[2:]
        cls = rng.integers(0, C, size=(N, *inner))
        iou = rng.uniform(0.05, 1.0, size=(N, *inner))
        iou[rng.random(iou.shape) < background_fraction] = 0.0
        q = np.moveaxis(np.eye(C)[cls], -1, 1) * np.expand_dims(iou, 1)
        return x, q, {}
    return make


def _distribution(shape):
    """DFL: logits [N, B, *], float targets [N, *] in [0, B-1], including the integers 0, 1 and
    the top edge B-1 (where the left bin is B-2 with weight 0)."""
    def make(rng):
        x = rng.standard_normal(shape) * 3.0
        B = shape[1]
        y = rng.uniform(0.0, B - 1, size=(shape[0], *shape[2:]))
        y.flat[:3] = (0.0, 1.0, B - 1.0)
        return x, y, {}
    return make


def _weighted(make, per="logits", zero_fraction=0.25):
    """Adds per-item `weights` in [0, 2), a quarter of them exactly 0, shaped like the 'none'
    losses: the logits' shape for the elementwise variants, the targets' for the row variants."""
    def made(rng):
        x, t, extra = make(rng)
        shape = x.shape if per == "logits" else t.shape
        w = rng.random(shape) * 2.0
        w[rng.random(shape) < zero_fraction] = 0.0
        return x, t, {**extra, "weights": w}
    return made


# The wire dtypes a case's logits are rounded to before the server sees them (test_reference).
_WIRE_DTYPES = (torch.float64, torch.float32, torch.float16, torch.bfloat16)
# A row's p_y is kept this far from every γ-schedule threshold, whatever the wire dtype and in
# float32 or float64 arithmetic, so the server and the float64 reference pick the same γ.
THRESHOLD_MARGIN = 1e-3


def _target_probabilities(rows, y):
    """p_y of each row [R, C] for targets y [R] (ignored rows: any value), per wire dtype and
    arithmetic: [R, 2 x len(_WIRE_DTYPES)]."""
    out = []
    x = torch.from_numpy(rows)
    idx = torch.from_numpy(np.where((y >= 0) & (y < rows.shape[1]), y, 0)).unsqueeze(1)
    for dtype in _WIRE_DTYPES:
        wire = x.to(dtype)
        for arith in (torch.float64, torch.float32):
            out.append(torch.softmax(wire.to(arith), dim=1).gather(1, idx).squeeze(1).double().numpy())
    return np.stack(out, axis=1)


def _schedule_inputs(shape, thresholds, ignore=None):
    """Class-index inputs for a γ schedule: every counted row's p_y more than THRESHOLD_MARGIN from
    every threshold (rows redrawn from rng), and rows in every band: below the first threshold,
    between each two, and above the last when it is below 1."""
    base = _class_inputs(shape, ignore=ignore)
    thresholds = np.asarray(thresholds, dtype=np.float64)
    edges = np.concatenate([[0.0], thresholds] + ([[1.0 + 1e-9]] if thresholds[-1] < 1 else []))

    def make(rng):
        x, y, extra = base(rng)
        C = shape[1]
        rows = np.ascontiguousarray(np.moveaxis(x, 1, -1)).reshape(-1, C)
        target = y.reshape(-1)
        valid = np.flatnonzero(target != ignore) if ignore is not None else np.arange(len(target))

        def settle(i, lo=0.0, hi=2.0):
            for _ in range(10000):
                p = _target_probabilities(rows[i:i + 1], target[i:i + 1])[0]
                if np.abs(p[:, None] - thresholds[None, :]).min() > THRESHOLD_MARGIN and ((p >= lo) & (p < hi)).all():
                    return
                rows[i] = rng.standard_normal(C) * 3.0
            raise AssertionError("cannot draw a row away from the thresholds")

        for i in valid:
            settle(i)
        p = _target_probabilities(rows, target)[:, 0]
        for b, (lo, hi) in enumerate(zip(edges[:-1], edges[1:])):
            if not ((p[valid] >= lo) & (p[valid] < hi)).any():
                settle(valid[b], lo, hi)
        x = np.ascontiguousarray(np.moveaxis(rows.reshape(shape[0], *shape[2:], C), -1, 1))
        return x, y, extra
    return make


FLSD53 = {"gamma": 3.0, "gamma_schedule": [(0.2, 5.0)]}  # Mukhoti et al. 2020

CASES = [
    ("softmax_default", "softmax_focal", {}, _class_inputs((16, 7))),
    ("softmax_gamma0_is_ce", "softmax_focal", {"gamma": 0.0}, _class_inputs((16, 7))),
    ("softmax_gamma0.5", "softmax_focal", {"gamma": 0.5}, _class_inputs((16, 7))),
    ("softmax_gamma5_alpha", "softmax_focal", {"gamma": 5.0, "alpha": [0.5, 1, 2, 0.25, 1, 3, 0.1]},
     _class_inputs((16, 7))),
    ("softmax_ignore_alpha", "softmax_focal", {"alpha": [1, 2, 3, 0.5, 0.25], "ignore_index": -100},
     _class_inputs((24, 5), ignore=-100)),
    ("softmax_smoothing", "softmax_focal", {"label_smoothing": 0.1, "alpha": [0.5, 1, 1.5, 2]},
     _class_inputs((16, 4))),
    ("softmax_spatial_ignore", "softmax_focal", {"gamma": 1.5, "ignore_index": 255},
     _class_inputs((3, 5, 4, 3), ignore=255)),
    ("sigmoid_default", "sigmoid_focal", {}, _float_targets((16, 6))),
    ("sigmoid_soft_noalpha_g0.5", "sigmoid_focal", {"alpha": -1.0, "gamma": 0.5}, _float_targets((16, 6), soft=True)),
    ("sigmoid_smoothing", "sigmoid_focal", {"label_smoothing": 0.1, "alpha": 0.5}, _float_targets((12, 5))),
    ("sigmoid_smoothing_k5", "sigmoid_focal", {"label_smoothing": 0.2, "smoothing_classes": 5},
     _float_targets((12, 5))),
    ("sigmoid_index_targets", "sigmoid_focal", {"ignore_index": -1},
     _class_inputs((20, 5), background=True, ignore=-1)),
    ("sigmoid_index_spatial", "sigmoid_focal", {"gamma": 1.0}, _class_inputs((2, 4, 3, 3), background=True)),
    ("sigmoid_probabilities", "sigmoid_focal", {"input": "probabilities"},
     _float_targets((16, 6), probabilities=True)),
    ("cosine_default", "focal_cosine", {}, _class_inputs((16, 7))),
    ("cosine_params", "focal_cosine", {"alpha": 0.5, "gamma": 1.0, "xent": 0.3}, _class_inputs((16, 7))),
    ("dynamic_objects", "dynamic_focal", {}, _dynamic((6, 4, 5), True)),
    ("dynamic_no_objects", "dynamic_focal", {"gamma": 1.0}, _dynamic((8, 6), False)),
    # weights (every variant), on the seed variants
    ("softmax_weights_ignore", "softmax_focal", {"ignore_index": -100, "alpha": [1, 2, 0.5, 1, 3]},
     _weighted(_class_inputs((24, 5), ignore=-100), per="targets")),
    ("sigmoid_index_weights", "sigmoid_focal", {"ignore_index": -1},
     _weighted(_class_inputs((2, 4, 3, 3), background=True, ignore=-1))),
    ("cosine_weights", "focal_cosine", {}, _weighted(_class_inputs((16, 7)), per="targets")),
    ("dynamic_weights", "dynamic_focal", {}, _weighted(_dynamic((6, 4, 5), True))),
    # §5.1 asymmetric
    ("asym_default", "asymmetric", {}, _float_targets((16, 6))),
    ("asym_soft_clip0", "asymmetric", {"gamma_pos": 1.0, "gamma_neg": 2.0, "clip": 0.0},
     _float_targets((16, 6), soft=True)),
    ("asym_index_ignore", "asymmetric", {"gamma_neg": 3.0, "clip": 0.1, "ignore_index": -1},
     _class_inputs((20, 5), background=True, ignore=-1)),
    ("asym_gneg0.5_spatial", "asymmetric", {"gamma_pos": 0.5, "gamma_neg": 0.5, "clip": 0.05},
     _class_inputs((2, 4, 3, 3), background=True)),
    ("asym_weights", "asymmetric", {}, _weighted(_float_targets((16, 6)))),
    # §5.2 quality_focal
    ("qfl_float", "quality_focal", {}, _quality_targets((16, 6))),
    ("qfl_float_beta1", "quality_focal", {"beta": 1.0}, _quality_targets((2, 4, 3, 3))),
    ("qfl_index_scores", "quality_focal", {"beta": 1.5, "ignore_index": -1},
     _with_scores(_class_inputs((20, 5), background=True, ignore=-1))),
    ("qfl_index_spatial", "quality_focal", {}, _with_scores(_class_inputs((2, 4, 3, 3), background=True))),
    ("qfl_index_weights", "quality_focal", {"beta": 2.5},
     _weighted(_with_scores(_class_inputs((20, 5), background=True)))),
    ("qfl_float_weights", "quality_focal", {}, _weighted(_quality_targets((16, 6)))),
    ("qfl_no_positives", "quality_focal", {}, _all_background((8, 4))),  # MEAN divides by 1
    # §5.3 varifocal
    ("vfl_default", "varifocal", {}, _iou_targets((16, 6))),
    ("vfl_not_iou_weighted", "varifocal", {"iou_weighted": False, "alpha": 0.5, "gamma": 1.5},
     _iou_targets((2, 4, 3, 3))),
    ("vfl_gamma0", "varifocal", {"gamma": 0.0, "alpha": 2.0}, _iou_targets((12, 5))),
    ("vfl_weights", "varifocal", {}, _weighted(_iou_targets((16, 6)))),
    # §5.4 focal_star
    ("fls_default", "focal_star", {}, _float_targets((16, 6))),
    ("fls_alpha", "focal_star", {"gamma": 2.0, "beta": 1.0, "alpha": 0.25}, _float_targets((16, 6))),
    ("fls_index_ignore", "focal_star", {"gamma": 0.5, "beta": -0.5, "alpha": 0.75, "ignore_index": -1},
     _class_inputs((20, 5), background=True, ignore=-1)),
    ("fls_index_noalpha_spatial", "focal_star", {"gamma": 3.0}, _class_inputs((2, 4, 3, 3), background=True)),
    ("fls_weights", "focal_star", {"alpha": 0.25}, _weighted(_float_targets((16, 6)))),
    # §5.5 distribution_focal
    ("dfl_NB", "distribution_focal", {}, _distribution((16, 8))),
    ("dfl_NBS", "distribution_focal", {}, _distribution((4, 6, 5))),
    ("dfl_B2", "distribution_focal", {}, _distribution((12, 2))),
    ("dfl_NBS_weights", "distribution_focal", {}, _weighted(_distribution((4, 6, 5)), per="targets")),
    # §5.0 options: Poly-1 on both variants, class-balanced α (with zero counts), γ schedules
    ("softmax_poly1_ce_eps2", "softmax_focal", {"gamma": 0.0, "poly_epsilon": 2.0}, _class_inputs((16, 7))),
    ("softmax_poly1_epsm1_alpha", "softmax_focal", {"poly_epsilon": -1.0, "alpha": [0.5, 1, 2, 0.25, 3]},
     _class_inputs((16, 5))),
    ("softmax_poly1_spatial_ignore", "softmax_focal", {"gamma": 1.5, "poly_epsilon": 1.0, "ignore_index": 255},
     _class_inputs((3, 5, 4, 3), ignore=255)),
    ("softmax_counts_zeros", "softmax_focal", {"class_counts": [1000, 0, 25, 0, 3, 7], "class_balance_beta": 0.99},
     _class_inputs((24, 6))),
    ("softmax_counts_smoothing", "softmax_focal", {"class_counts": [500, 50, 5, 0], "label_smoothing": 0.1},
     _class_inputs((16, 4))),
    ("softmax_flsd53", "softmax_focal", FLSD53, _schedule_inputs((32, 6), [0.2])),
    ("softmax_schedule_2step", "softmax_focal", {"gamma": 1.0, "gamma_schedule": [(0.25, 4.0), (0.6, 2.5)]},
     _schedule_inputs((32, 5), [0.25, 0.6])),
    ("softmax_flsd53_poly1_counts_spatial", "softmax_focal",
     dict(FLSD53, poly_epsilon=1.0, class_counts=[90, 3, 0, 400, 12], ignore_index=-1),
     _schedule_inputs((2, 5, 4, 4), [0.2], ignore=-1)),
    ("softmax_schedule_weights", "softmax_focal", {"gamma": 2.0, "gamma_schedule": [(0.2, 5.0), (0.5, 3.0)]},
     _weighted(_schedule_inputs((24, 5), [0.2, 0.5]), per="targets")),
    ("sigmoid_poly1_eps1", "sigmoid_focal", {"poly_epsilon": 1.0}, _float_targets((16, 6))),
    ("sigmoid_poly1_bce_epsm1_soft", "sigmoid_focal", {"gamma": 0.0, "alpha": -1.0, "poly_epsilon": -1.0},
     _float_targets((16, 6), soft=True)),
    ("sigmoid_poly1_index_ignore_eps2", "sigmoid_focal", {"gamma": 0.5, "poly_epsilon": 2.0, "ignore_index": -1},
     _class_inputs((20, 5), background=True, ignore=-1)),
    ("sigmoid_poly1_smoothing", "sigmoid_focal", {"poly_epsilon": 2.0, "label_smoothing": 0.1},
     _float_targets((12, 5))),
]
CASE_IDS = [c[0] for c in CASES]
REDUCTIONS = ["mean", "sum", "none"]
