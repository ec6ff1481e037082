"""Evaluate's analyses end to end (docs/evaluation.md): the γ sweep and calibration through the
Python client against NumPy float64 references written plainly here, α recombined against
separate Evaluate calls, split-independence, and the refusals."""
from __future__ import annotations

import numpy as np
import pytest

import focalserve
from focalserve.analyses import Calibration, GammaSweep

GAMMAS = [0.0, 0.5, 1.0, 2.0, 3.0, 5.0]



def float32_rtol(gamma, log_q_max, classes=1):
    """The relative error of a sum of sweep terms for float32 logits. Each term is computed in
    float32, as the kernels compute, rounded once to float32 and summed exactly, so a sum of
    positive terms keeps the worst term's relative error. With ε = 2^-24: -log p_t is within
    (4 + 2C)ε (the sigmoid's exp, log and division; a softmax row's sum of C exps adds 2Cε, C = 1
    for sigmoid items); (1-p_t)^γ within γ(4 + 2C)·max(1, L)ε, L = max |log(1-p_t)| (the error of
    log(1-p_t), times γ in the exponent); the product and the rounding add 4ε. Twice the bound."""
    return 2 * ((4 + 2 * classes) * (1 + gamma * max(1.0, float(log_q_max))) + 4) * 2.0**-24


# A term below float32's normal range (2^-126: a confident item at a large γ) keeps no relative
# accuracy when rounded to float32, but is off by less than 2^-126 absolutely: sums of n terms
# take an absolute n·2^-126 beside the relative bound.
def underflow_atol(n_terms):
    return n_terms * 2.0**-126


def assert_clear_of_bin_edges(p, bins):
    """Bin counts are exact only for probabilities clear of the bin edges by more than their
    float32 error: true of the test data, which this checks."""
    scaled = np.asarray(p, dtype=np.float64) * bins
    assert np.all(np.abs(scaled - np.round(scaled)) > 1e-5), "a probability lies on a bin edge: choose other data"

# A separate Evaluate computes each item in float32 through the variant's own formulas: the
# project's float32 tolerance (helpers.COMPUTE_RTOL).
COMPUTE_RTOL = 2e-5


def sigmoid_batches(rng, n_batches=5, rows=40, classes=6):
    return [(rng.standard_normal((rows, classes)).astype(np.float32) * 3,
             (rng.random((rows, classes)) < 0.3).astype(np.float32)) for _ in range(n_batches)]


def softmax_batches(rng, n_batches=5, rows=50, classes=7, ignore=None):
    out = []
    for _ in range(n_batches):
        y = rng.integers(0, classes, rows)
        if ignore is not None:
            y[rng.random(rows) < 0.15] = ignore
        out.append(((rng.standard_normal((rows, classes)) * 2.5).astype(np.float32), y))
    return out


def focal_terms(p_t, gamma):
    """(1-p_t)^γ · (-log p_t) in float64, 0^0 = 1."""
    weight = np.ones_like(p_t) if gamma == 0 else (1.0 - p_t) ** gamma
    return weight * -np.log(p_t)


def sigmoid_reference(batches):
    x = np.concatenate([b[0] for b in batches]).astype(np.float64)
    t = np.concatenate([b[1] for b in batches]).astype(np.float64)
    p = 1.0 / (1.0 + np.exp(-x))
    return x, t, p, np.where(t == 1, p, 1 - p)


def test_sigmoid_sweep_matches_float64_reference(client):
    rng = np.random.default_rng(101)
    batches = sigmoid_batches(rng)
    r = client.evaluate(batches, "sigmoid_focal", gamma_sweep=GAMMAS, pt_bins=10)
    s = r.sweep
    assert isinstance(s, GammaSweep) and not s.rows
    assert s.positive_sums.shape == (len(GAMMAS), 6) and s.positive_mass.shape == (len(GAMMAS), 10)
    assert s.dims["positive_sums"] == ("gamma", "class")
    x, t, p, pt = sigmoid_reference(batches)
    assert_clear_of_bin_edges(pt, 10)
    log_q_max = -np.log1p(-pt).max()
    for k, g in enumerate(GAMMAS):
        terms = focal_terms(pt, g)
        rtol = float32_rtol(g, log_q_max)
        atol = underflow_atol(pt.size)
        np.testing.assert_allclose(s.positive_sums[k], np.where(t == 1, terms, 0).sum(axis=0), rtol=rtol, atol=atol)
        np.testing.assert_allclose(s.negative_sums[k], np.where(t == 0, terms, 0).sum(axis=0), rtol=rtol, atol=atol)
        bins = np.minimum((pt * 10).astype(int), 9)
        mass = np.bincount(bins[t == 1], weights=terms[t == 1], minlength=10)
        np.testing.assert_allclose(s.positive_mass[k], mass, rtol=rtol, atol=atol)
    np.testing.assert_array_equal(s.positive_counts, (t == 1).sum(axis=0))
    np.testing.assert_array_equal(s.negative_counts, (t == 0).sum(axis=0))
    np.testing.assert_allclose(s.mass_fraction().sum(axis=1), 1.0, rtol=1e-12)


@pytest.mark.parametrize("alpha", [0.25, 0.5, 0.9, -1.0])
def test_any_alpha_recombines_to_a_separate_evaluate(client, alpha):
    rng = np.random.default_rng(202)
    batches = sigmoid_batches(rng, n_batches=3)
    s = client.evaluate(batches, "sigmoid_focal", gamma_sweep=GAMMAS).sweep
    for k, g in enumerate(GAMMAS):
        direct = client.evaluate(batches, "sigmoid_focal", gamma=g, alpha=alpha)
        assert s.loss(alpha)[k] == pytest.approx(direct.total_loss, rel=COMPUTE_RTOL)
        np.testing.assert_allclose(s.class_loss(alpha)[k], direct.class_loss_sums, rtol=COMPUTE_RTOL)


def test_softmax_sweep_and_class_alpha(client):
    rng = np.random.default_rng(303)
    batches = softmax_batches(rng, ignore=-100)
    s = client.evaluate(batches, "softmax_focal", gamma_sweep=GAMMAS, ignore_index=-100).sweep
    assert s.rows and not s.negative_sums.any()
    x = np.concatenate([b[0] for b in batches]).astype(np.float64)
    y = np.concatenate([b[1] for b in batches])
    keep = y != -100
    x, y = x[keep], y[keep]
    z = x - x.max(axis=1, keepdims=True)
    p = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
    p_y = p[np.arange(len(y)), y]
    log_q_max = -np.log1p(-p_y).max()
    alpha = np.array([0.5, 1, 2, 0.25, 3, 1.5, 0.75])
    for k, g in enumerate(GAMMAS):
        terms = focal_terms(p_y, g)
        np.testing.assert_allclose(s.positive_sums[k], np.bincount(y, weights=terms, minlength=7),
                                   rtol=float32_rtol(g, log_q_max, classes=7), atol=underflow_atol(len(y)))
        direct = client.evaluate(batches, "softmax_focal", gamma=g, alpha=alpha, ignore_index=-100)
        assert s.loss(alpha)[k] == pytest.approx(direct.total_loss, rel=COMPUTE_RTOL)
    np.testing.assert_array_equal(s.positive_counts, np.bincount(y, minlength=7))


def reliability(confidence, correct, bins):
    edges = np.minimum((confidence * bins).astype(int), bins - 1)
    counts = np.bincount(edges, minlength=bins)
    conf = np.bincount(edges, weights=confidence, minlength=bins)
    hits = np.bincount(edges, weights=correct.astype(np.float64), minlength=bins)
    nonempty = counts > 0
    gaps = np.abs(hits[nonempty] / counts[nonempty] - conf[nonempty] / counts[nonempty])
    return counts, conf, hits, float((counts[nonempty] / counts.sum() * gaps).sum()), float(gaps.max())


def test_softmax_calibration_matches_numpy(client):
    rng = np.random.default_rng(404)
    batches = softmax_batches(rng, n_batches=4, rows=120)
    c = client.evaluate(batches, "softmax_focal", calibration_bins=15).calibration
    assert isinstance(c, Calibration)
    x = np.concatenate([b[0] for b in batches]).astype(np.float64)
    y = np.concatenate([b[1] for b in batches])
    z = x - x.max(axis=1, keepdims=True)
    p = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
    top, argmax = p.max(axis=1), p.argmax(axis=1)
    assert_clear_of_bin_edges(top, 15)
    counts, conf, hits, ece, mce = reliability(top, argmax == y, 15)
    np.testing.assert_array_equal(c.bin_counts, counts)
    rtol = float32_rtol(0, 0, classes=7)  # the confidence 1/Σe and -log p_y, γ = 0 terms
    np.testing.assert_allclose(c.bin_confidence[counts > 0], (conf / np.maximum(counts, 1))[counts > 0], rtol=rtol)
    # ECE and MCE are differences of per-bin rates in [0, 1], the mean confidences good to rtol:
    # absolute rtol.
    assert c.ece == pytest.approx(ece, abs=rtol) and c.mce == pytest.approx(mce, abs=rtol)
    assert c.count == len(y) and c.accuracy == pytest.approx(np.mean(argmax == y), abs=0)
    assert c.nll == pytest.approx(np.mean(-np.log(p[np.arange(len(y)), y])), rel=rtol)
    onehot = np.eye(7)[y]
    # Brier's squares double the probabilities' relative error.
    assert c.brier == pytest.approx(np.mean(((p - onehot) ** 2).sum(axis=1)), rel=2 * rtol)
    np.testing.assert_array_equal(c.class_targets, np.bincount(y, minlength=7))
    np.testing.assert_array_equal(c.class_predicted, np.bincount(argmax, minlength=7))
    np.testing.assert_array_equal(c.class_true_positives, np.bincount(y[argmax == y], minlength=7))
    with np.errstate(invalid="ignore"):
        np.testing.assert_array_equal(c.recall, c.class_true_positives / c.class_targets)


def test_sigmoid_calibration_matches_numpy(client):
    rng = np.random.default_rng(505)
    batches = sigmoid_batches(rng, n_batches=3)
    c = client.evaluate(batches, "sigmoid_focal", calibration_bins=12).calibration
    x, t, p, pt = sigmoid_reference(batches)
    assert_clear_of_bin_edges(p, 12)
    counts, conf, hits, ece, mce = reliability(p.ravel(), t.ravel() == 1, 12)
    np.testing.assert_array_equal(c.bin_counts, counts)
    rtol = float32_rtol(0, 0)  # σ(x) and -log p_t, γ = 0 terms
    assert c.ece == pytest.approx(ece, abs=rtol) and c.mce == pytest.approx(mce, abs=rtol)
    assert c.accuracy == pytest.approx(np.mean((p >= 0.5) == (t == 1)), abs=0)
    assert c.nll == pytest.approx(np.mean(-np.log(pt)), rel=rtol)
    assert c.brier == pytest.approx(np.mean((p - t) ** 2), rel=2 * rtol)
    np.testing.assert_array_equal(c.class_targets, (t == 1).sum(axis=0))
    np.testing.assert_array_equal(c.class_predicted, (p >= 0.5).sum(axis=0))


def test_one_batch_or_thirty_seven_give_identical_analyses(client):
    rng = np.random.default_rng(606)
    x = (rng.standard_normal((370, 5)) * 3).astype(np.float32)
    y = rng.integers(0, 5, 370)
    whole = client.evaluate([(x, y)], "softmax_focal", gamma_sweep=GAMMAS, calibration_bins=15)
    parts = client.evaluate([(x[i:i + 10], y[i:i + 10]) for i in range(0, 370, 10)], "softmax_focal",
                            gamma_sweep=GAMMAS, calibration_bins=15)
    assert parts.batches == 37
    assert whole.response.sweep.SerializeToString() == parts.response.sweep.SerializeToString()
    assert whole.response.calibration.SerializeToString() == parts.response.calibration.SerializeToString()


@pytest.mark.parametrize("kwargs,fragment", [
    (dict(gamma_sweep=[1, -1]), "evaluate.gamma_sweep[1] is -1; must be in [0, 1000]"),
    (dict(gamma_sweep=[np.nan]), "evaluate.gamma_sweep[0] is nan"),
    (dict(gamma_sweep=list(range(65))), "evaluate.gamma_sweep has 65 values; at most 64"),
    (dict(calibration_bins=1001), "evaluate.calibration_bins is 1001"),
    (dict(pt_bins=5), "evaluate.pt_bins is set without evaluate.gamma_sweep"),
    (dict(gamma_sweep=[2], label_smoothing=0.1), "evaluate.gamma_sweep is set with label_smoothing"),
])
def test_bad_options_are_refused_naming_the_field(client, kwargs, fragment):
    rng = np.random.default_rng(707)
    with pytest.raises(focalserve.FocalServeError) as e:
        client.evaluate(softmax_batches(rng, n_batches=1), "softmax_focal", **kwargs)
    assert e.value.code.name == "INVALID_ARGUMENT" and fragment in e.value.message, e.value.message


def test_other_variants_and_compute_refuse_them(client):
    rng = np.random.default_rng(808)
    with pytest.raises(focalserve.FocalServeError) as e:
        client.evaluate(softmax_batches(rng, n_batches=1), "focal_cosine", calibration_bins=15)
    assert "the analyses are defined for softmax_focal and sigmoid_focal" in e.value.message
    x, y = softmax_batches(rng, n_batches=1)[0]
    request = client.build_request(x, y, "softmax_focal")
    request.evaluate.calibration_bins = 15
    with pytest.raises(focalserve.FocalServeError) as e:
        client.compute_request(request)
    assert "evaluate is set; EvaluateOptions are for the Evaluate RPC" in e.value.message
    soft = [(x.astype(np.float32), np.full(x.shape, 0.5, np.float32))]
    with pytest.raises(focalserve.FocalServeError) as e:
        client.evaluate(soft, "sigmoid_focal", calibration_bins=15)
    assert "the sweep and calibration need targets of 0 or 1" in e.value.message


def test_no_analyses_unless_asked(client):
    rng = np.random.default_rng(909)
    r = client.evaluate(softmax_batches(rng, n_batches=2), "softmax_focal")
    assert r.sweep is None and r.calibration is None
    assert not r.response.HasField("sweep") and not r.response.HasField("calibration")


def test_frames_when_pandas_is_present(client):
    pandas = pytest.importorskip("pandas", reason="python3-pandas is optional: the arrays serve without it")
    rng = np.random.default_rng(1010)
    r = client.evaluate(sigmoid_batches(rng, n_batches=1), "sigmoid_focal", gamma_sweep=[0, 2], calibration_bins=5)
    frame = r.sweep.to_frame(alpha=0.25)
    assert isinstance(frame, pandas.DataFrame) and len(frame) == 2 * 6
    assert len(r.calibration.to_frame()) == 6
