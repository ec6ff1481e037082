"""Evaluate's analyses as NumPy arrays with named axes: the γ sweep and calibration
(docs/evaluation.md). Built from the EvaluateResponse by EvaluateResult; pandas is optional
(``to_frame()`` needs it, nothing else does).

    r = client.evaluate(batches, "sigmoid_focal", gamma_sweep=[0, 0.5, 1, 2, 5], calibration_bins=15)
    r.sweep.loss(alpha=0.25)          # [K]: the summed loss at each γ for that α, exact
    r.sweep.class_loss(alpha=0.25)    # [K, C]
    r.calibration.ece, r.calibration.bin_accuracy, r.calibration.recall
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, Optional, Tuple

import numpy as np


def _frame(columns: Dict[str, Any]):
    try:
        import pandas
    except ImportError as e:  # pragma: no cover - depends on the machine
        raise ImportError("to_frame() needs pandas (Debian: apt-get install python3-pandas); "
                          "the arrays themselves do not") from e
    return pandas.DataFrame(columns)


@dataclass(frozen=True)
class GammaSweep:
    """Per γ, per class, the focal terms (1-p_t)^γ·(-log p_t) summed without α, positives and
    negatives apart, and the same terms by p_t bin.

    Axes (``dims`` names them): gammas [gamma]; positive_sums, negative_sums [gamma, class];
    positive_counts, negative_counts [class]; positive_mass, negative_mass [gamma, pt_bin];
    pt_bin_edges [pt_bin + 1]. For softmax_focal an item is a row, always positive: the
    negative arrays are zeros.
    """

    gammas: np.ndarray
    positive_sums: np.ndarray
    negative_sums: np.ndarray
    positive_counts: np.ndarray
    negative_counts: np.ndarray
    positive_mass: np.ndarray
    negative_mass: np.ndarray
    pt_bin_edges: np.ndarray
    rows: bool  # softmax_focal: items are rows
    dims: Dict[str, Tuple[str, ...]] = field(default_factory=lambda: {
        "gammas": ("gamma",), "positive_sums": ("gamma", "class"), "negative_sums": ("gamma", "class"),
        "positive_counts": ("class",), "negative_counts": ("class",), "positive_mass": ("gamma", "pt_bin"),
        "negative_mass": ("gamma", "pt_bin"), "pt_bin_edges": ("pt_bin_edge",)})

    @classmethod
    def from_proto(cls, s) -> "GammaSweep":
        K, C, B = len(s.gammas), int(s.classes), int(s.pt_bins)
        rows = len(s.negative_counts) == 0  # softmax_focal's items are rows, with no negatives
        negative = (np.array(s.negative_sums, np.float64).reshape(K, C) if len(s.negative_sums)
                    else np.zeros((K, C)))
        negative_mass = (np.array(s.negative_mass, np.float64).reshape(K, B) if len(s.negative_mass)
                         else np.zeros((K, B)))
        negative_counts = (np.array(s.negative_counts, np.int64) if len(s.negative_counts)
                           else np.zeros(C, np.int64))
        return cls(np.array(s.gammas, np.float64), np.array(s.positive_sums, np.float64).reshape(K, C), negative,
                   np.array(s.positive_counts, np.int64), negative_counts,
                   np.array(s.positive_mass, np.float64).reshape(K, B), negative_mass,
                   np.linspace(0.0, 1.0, B + 1), rows)

    def _weights(self, alpha):
        """(weight of positives [C], weight of negatives [C]) for `alpha`."""
        C = self.positive_sums.shape[1]
        if self.rows:
            a = np.ones(C) if alpha is None else np.asarray(alpha, np.float64)
            if a.shape != (C,):
                raise ValueError(f"alpha for softmax_focal is one weight per class ({C}), got shape {a.shape}")
            return a, np.zeros(C)
        if alpha is None or float(alpha) < 0:  # no α weighting, as sigmoid_focal's negative α
            return np.ones(C), np.ones(C)
        a = float(alpha)
        return np.full(C, a), np.full(C, 1.0 - a)

    def class_loss(self, alpha=None) -> np.ndarray:
        """[gamma, class]: each class's summed loss at each γ for this α (sigmoid_focal: a
        scalar, None or negative for none; softmax_focal: one weight per class, None for ones)."""
        pos, neg = self._weights(alpha)
        return self.positive_sums * pos + self.negative_sums * neg

    def loss(self, alpha=None) -> np.ndarray:
        """[gamma]: the summed loss of the whole dataset at each γ for this α."""
        return self.class_loss(alpha).sum(axis=1)

    def mean_loss(self, alpha=None) -> np.ndarray:
        """[gamma]: loss() over the items counted (rows, or logits), as MEAN divides."""
        items = int(self.positive_counts.sum() + self.negative_counts.sum())
        return self.loss(alpha) / max(items, 1)

    def mass_fraction(self) -> np.ndarray:
        """[gamma, pt_bin]: the share of each γ's unweighted loss that comes from items whose p_t
        falls in each bin (Lin et al. 2017, Fig. 4 as a density over p_t)."""
        mass = self.positive_mass + self.negative_mass
        total = mass.sum(axis=1, keepdims=True)
        return np.divide(mass, total, out=np.zeros_like(mass), where=total > 0)

    def to_frame(self, alpha=None):
        """A pandas DataFrame, one row per (γ, class): sums, counts and the α-weighted loss."""
        K, C = self.positive_sums.shape
        return _frame({"gamma": np.repeat(self.gammas, C), "class": np.tile(np.arange(C), K),
                       "positive_sum": self.positive_sums.ravel(), "negative_sum": self.negative_sums.ravel(),
                       "loss": self.class_loss(alpha).ravel()})


@dataclass(frozen=True)
class Calibration:
    """Reliability histogram and quality metrics. Rows (softmax_focal): confidence is the top
    probability, correct means argmax = target. Elements (sigmoid_focal): confidence is p =
    σ(x) and "correct" means the target is 1, so bin_accuracy is the observed frequency of
    positives; accuracy is that of p ≥ 0.5.

    Axes: bin_* [bin]; bin_edges [bin + 1]; class_* [class].
    """

    bin_edges: np.ndarray
    bin_counts: np.ndarray
    bin_confidence: np.ndarray  # mean confidence per bin (NaN where empty)
    bin_accuracy: np.ndarray    # mean correctness per bin (NaN where empty)
    ece: float
    mce: float
    count: int
    accuracy: float
    nll: float
    brier: float
    class_targets: np.ndarray
    class_predicted: np.ndarray
    class_true_positives: np.ndarray

    @classmethod
    def from_proto(cls, c) -> "Calibration":
        counts = np.array(c.bin_counts, np.int64)
        with np.errstate(invalid="ignore", divide="ignore"):
            confidence = np.array(c.bin_confidence_sums, np.float64) / counts
            accuracy = np.array(c.bin_correct, np.float64) / counts
        return cls(np.linspace(0.0, 1.0, int(c.bins) + 1), counts, confidence, accuracy, c.ece, c.mce, c.count,
                   c.accuracy, c.nll, c.brier, np.array(c.class_targets, np.int64),
                   np.array(c.class_predicted, np.int64), np.array(c.class_true_positives, np.int64))

    @property
    def recall(self) -> np.ndarray:
        """[class]: true positives over targets (NaN for a class with no targets)."""
        with np.errstate(invalid="ignore", divide="ignore"):
            return self.class_true_positives / self.class_targets

    @property
    def precision(self) -> np.ndarray:
        """[class]: true positives over predictions (NaN for a class never predicted)."""
        with np.errstate(invalid="ignore", divide="ignore"):
            return self.class_true_positives / self.class_predicted

    def to_frame(self):
        """A pandas DataFrame, one row per class: targets, predicted, true positives, recall, precision."""
        return _frame({"class": np.arange(len(self.class_targets)), "targets": self.class_targets,
                       "predicted": self.class_predicted, "true_positives": self.class_true_positives,
                       "recall": self.recall, "precision": self.precision})


def options(gamma_sweep: Optional[Any], calibration_bins: Optional[int], pt_bins: Optional[int], message_type):
    """The EvaluateOptions message for these arguments, or None when none is asked for."""
    if gamma_sweep is None and not calibration_bins and not pt_bins:
        return None
    o = message_type()
    if gamma_sweep is not None:
        o.gamma_sweep.extend(float(g) for g in np.asarray(gamma_sweep, np.float64).ravel())
    o.calibration_bins = int(calibration_bins or 0)
    o.pt_bins = int(pt_bins or 0)
    return o
