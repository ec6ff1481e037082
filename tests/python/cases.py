"""Inputs for every variant and option the tests sweep: (name, variant, params, make(rng))."""
from __future__ import annotations

import numpy as np


def _class_inputs(shape, spread=3.0, ignore=None, ignore_fraction=0.2, background=False):
    def make(rng):
        x = rng.standard_normal(shape) * spread
        N, C, inner = shape[0], shape[1], shape[2:]
        y = rng.integers(0, C + (1 if background else 0), size=(N, *inner)).astype(np.int64)
        if ignore is not None:
            y[rng.random(y.shape) < ignore_fraction] = ignore
        return x, y, None
    return make


def _float_targets(shape, soft=False, probabilities=False):
    def make(rng):
        x = rng.standard_normal(shape) * 3.0
        if probabilities:
            x = 1.0 / (1.0 + np.exp(-x / 3.0))  # p in (0, 1), away from the clamp
        t = rng.random(shape) if soft else (rng.random(shape) < 0.3).astype(np.float64)
        return x, t, None
    return make


def _dynamic(shape, with_objects):
    def make(rng):
        x = rng.standard_normal(shape) * 3.0
        t = (rng.random(shape) < 0.3).astype(np.float64)
        n = rng.integers(0, 6, size=shape[0]).astype(np.float64)
        n[0] = max(n[0], 1.0)  # positive mean
        return x, t, (n if with_objects else None)
    return make


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
]
CASE_IDS = [c[0] for c in CASES]
REDUCTIONS = ["mean", "sum", "none"]
