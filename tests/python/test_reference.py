"""focalserve.Client against float64 torch/torchvision references: every variant, option,
reduction and wire dtype, forward and gradient (with a non-trivial upstream gradient)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import focalserve
import refs
from cases import CASE_IDS, CASES, REDUCTIONS
from helpers import (ARRAY_RTOL, COMPUTE_RTOL, FLOAT16_ABS_ROUNDOFF, UNIT_ROUNDOFF, assert_close, reference,
                     stable_seed, upstream_for, wire_extra, wire_logits, wire_targets)


def _wire_for_client(x_wire: torch.Tensor, dtype: str):
    """float32/float64/float16 as NumPy arrays (the NumPy front end), bfloat16 as a torch tensor."""
    return x_wire if dtype == "bfloat16" else x_wire.numpy()


@pytest.mark.parametrize("dtype", ["float32", "float64", "float16", "bfloat16"])
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("name,variant,params,make", CASES, ids=CASE_IDS)
def test_compute_matches_reference(client, name, variant, params, make, reduction, dtype):
    rng = np.random.default_rng(stable_seed(name, reduction, dtype))
    x64, t, extra = make(rng)
    x_wire = wire_logits(x64, dtype)
    t_wire = wire_targets(t)
    e_wire = wire_extra(extra)  # num_objects, weights, scores: float32
    ref_out, _, count = reference(variant, x_wire, t_wire, e_wire, reduction, params)
    w = upstream_for(reduction, ref_out.shape, rng)
    ref_out, ref_grad, count = reference(variant, x_wire, t_wire, e_wire, reduction, params, upstream=w)

    r = client.compute(_wire_for_client(x_wire, dtype), t_wire, variant, reduction, compute_gradient=True,
                       grad_output=w, **e_wire, **params)

    assert r.count == count
    assert r.backend
    assert r.gradient_dtype == dtype and r.gradient.shape == x64.shape
    grad = focalserve.bfloat16_to_float32(r.gradient) if dtype == "bfloat16" else r.gradient
    assert_close(grad, ref_grad, ARRAY_RTOL[dtype], f"{name} {reduction} {dtype} gradient")
    if reduction == "none":
        assert r.losses_dtype == dtype
        losses = focalserve.bfloat16_to_float32(r.losses) if dtype == "bfloat16" else r.losses
        assert_close(losses, ref_out, ARRAY_RTOL[dtype], f"{name} none {dtype} losses")
        # NONE's loss is the sum of the per-item losses as computed, before their rounding to the
        # wire dtype: each returned value is within one rounding of its term, so the sum of the
        # returned values is within the unit roundoff of the sum of their magnitudes (float16
        # subnormals: an absolute half-spacing each), plus float64's own summation error.
        returned = losses.astype(np.float64)
        bound = UNIT_ROUNDOFF[dtype] * np.abs(returned).sum() * (1 + UNIT_ROUNDOFF[dtype])
        bound += (FLOAT16_ABS_ROUNDOFF * returned.size if dtype == "float16" else 0.0)
        bound += returned.size * 2.0**-52 * np.abs(returned).sum()
        assert abs(r.loss - returned.sum()) <= bound, f"NONE's loss {r.loss} vs sum {returned.sum()} (bound {bound})"
        # ...and exactly the same number as when the losses come back in float32.
        r32 = client.compute(_wire_for_client(x_wire, dtype), t_wire, variant, reduction, compute_gradient=True,
                             grad_output=w, gradient_dtype="float32", **e_wire, **params)
        assert r32.loss == r.loss
    else:
        assert r.losses is None
        # reduced losses are accumulated from float32 items in float64: float32 accuracy whatever the dtype
        assert_close(r.loss, ref_out, COMPUTE_RTOL, f"{name} {reduction} {dtype} loss")


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_gradient_dtype_float32_for_16bit_logits(client, reduction):
    rng = np.random.default_rng(7)
    x_wire = wire_logits(rng.standard_normal((32, 10)) * 3, "float16")
    y = rng.integers(0, 10, 32)
    out, _, _ = reference("softmax_focal", x_wire, y, None, reduction, {})
    w = upstream_for(reduction, out.shape, rng)
    out, grad, _ = reference("softmax_focal", x_wire, y, None, reduction, {}, upstream=w)
    r = client.compute(x_wire.numpy(), y, "softmax_focal", reduction, compute_gradient=True, grad_output=w,
                       gradient_dtype="float32")
    assert r.gradient.dtype == np.float32
    assert_close(r.gradient, grad, COMPUTE_RTOL, "float32 gradient of float16 logits")
    if reduction == "none":
        assert r.losses.dtype == np.float32
        assert_close(r.losses, out, COMPUTE_RTOL, "float32 losses of float16 logits")


def test_bfloat16_numpy_wrapper_equals_torch(client):
    rng = np.random.default_rng(3)
    x = (rng.standard_normal((16, 6)) * 3).astype(np.float32)
    y = rng.integers(0, 6, 16)
    bits = focalserve.BFloat16.from_float32(x)
    as_torch = torch.from_numpy(x).to(torch.bfloat16)
    assert np.array_equal(bits.bits, as_torch.view(torch.int16).numpy().view(np.uint16)), "rounding differs"
    a = client.compute(bits, y, reduction="none", compute_gradient=True)
    b = client.compute(as_torch, y, reduction="none", compute_gradient=True)
    assert a.gradient.dtype == np.uint16 and a.gradient_dtype == "bfloat16"
    assert np.array_equal(a.gradient, b.gradient) and np.array_equal(a.losses, b.losses)
    widened = focalserve.bfloat16_to_float32(bits.bits)
    assert np.array_equal(widened, as_torch.float().numpy())


def test_normalizer_replaces_the_count(client):
    rng = np.random.default_rng(5)
    x = rng.standard_normal((10, 4)).astype(np.float32)
    t = (rng.random((10, 4)) < 0.2).astype(np.float32)
    s = client.compute(x, t, "sigmoid_focal", "sum", compute_gradient=True)
    m = client.compute(x, t, "sigmoid_focal", "mean", compute_gradient=True, normalizer=3.5)
    assert m.loss == pytest.approx(s.loss / 3.5, rel=1e-12)
    assert_close(m.gradient, s.gradient / 3.5, 1e-6, "gradient / normalizer")


def test_mean_with_nothing_counted_is_zero(client):
    x = np.random.default_rng(1).standard_normal((4, 3)).astype(np.float32)
    y = np.full(4, -100)
    r = client.compute(x, y, ignore_index=-100, compute_gradient=True)
    assert (r.loss, r.count) == (0.0, 0)
    assert not r.gradient.any()


def test_results_are_zero_copy_views(client):
    x = np.random.default_rng(2).standard_normal((8, 5)).astype(np.float32)
    r = client.compute(x, np.arange(8) % 5, reduction="none", compute_gradient=True)
    for array in (r.losses, r.gradient):
        base = array
        while isinstance(base, np.ndarray):
            base = base.base
        assert isinstance(base, bytes), "np.frombuffer over the response bytes, not a copy"
        assert not array.flags.writeable


# -- the references themselves (no server) -----------------------------------------------------

CATALOGUE = ("asymmetric", "quality_focal", "varifocal", "focal_star", "distribution_focal")
CATALOGUE_CASES = [c for c in CASES if c[1] in CATALOGUE]


@pytest.mark.parametrize("name,variant,params,make", CATALOGUE_CASES, ids=[c[0] for c in CATALOGUE_CASES])
def test_reference_autograd_matches_the_contracts_gradient(name, variant, params, make):
    """refs' §5 forward expressions, differentiated by autograd, against §5's gradient formulas
    transcribed separately (refs.closed_form_gradient): two readings of the contract that must
    agree before either is used to judge the server. Both in float64, through different
    operations: they differ by float64 roundings (2^-53 = 1.1e-16 each) amplified by at most the
    same cancellations as in float32, so 1e-10 is ~1e4 x the float64 analogue of COMPUTE_RTOL's
    margin and ~1e-6 of the difference any transcription error makes."""
    rng = np.random.default_rng(stable_seed(name, "closed-form"))
    x64, t, extra = make(rng)
    x = torch.from_numpy(x64).requires_grad_(True)
    tt = torch.from_numpy(t)
    losses, _ = refs.per_item(variant, x, tt, **{k: torch.from_numpy(v) for k, v in extra.items()}, **params)
    losses.sum().backward()
    want = refs.closed_form_gradient(variant, x64, t, **extra, **params)
    assert np.isfinite(x.grad.numpy()).all() and np.isfinite(want).all()
    assert_close(x.grad.numpy(), want, 1e-10, f"{name}: autograd of the reference vs the contract's gradient")


POLY_CASES = [c for c in CASES if c[2].get("poly_epsilon") and not c[2].get("label_smoothing")]


@pytest.mark.parametrize("name,variant,params,make", POLY_CASES, ids=[c[0] for c in POLY_CASES])
def test_reference_poly1_term_matches_its_closed_form_gradient(name, variant, params, make):
    """§5.0's Poly-1 term as refs adds it (the loss with ε_p minus the loss without), through
    autograd, against §5.0's gradient of that term transcribed separately
    (refs.poly_term_gradient): softmax with the row's scheduled γ, sigmoid with p_t as in §2.
    Float64, different operations: 1e-10 as for the catalogue's check above."""
    rng = np.random.default_rng(stable_seed(name, "poly-closed-form"))
    x64, t, _ = make(rng)
    x = torch.from_numpy(x64).requires_grad_(True)
    tt = torch.from_numpy(t)
    with_term, _ = refs.per_item(variant, x, tt, **params)
    without, _ = refs.per_item(variant, x, tt, **dict(params, poly_epsilon=0.0))
    (with_term - without).sum().backward()
    want = refs.poly_term_gradient(variant, x64, t, **params)
    assert np.abs(want).max() > 0
    assert_close(x.grad.numpy(), want, 1e-10, f"{name}: autograd of the Poly-1 term vs its closed form")


def test_class_balanced_alpha_reference():
    """refs.class_balanced_alpha as §5.0 (Cui et al.'s weights, zeros at the largest weight)."""
    a = refs.class_balanced_alpha([100, 0, 10, 1], 0.9)
    w = (1 - 0.9) / (1 - 0.9 ** np.array([100, 10, 1]))
    assert a.sum() == pytest.approx(4, rel=1e-15)
    assert a[1] == pytest.approx(a[3], rel=1e-15) and a[3] == a.max()  # n = 0 takes n = 1's weight
    np.testing.assert_allclose(a[[0, 2, 3]] / a[[0, 2, 3]].sum(), w / w.sum(), rtol=1e-14)
    np.testing.assert_array_equal(refs.class_balanced_alpha([0, 0, 0]), np.ones(3))
    np.testing.assert_allclose(refs.class_balanced_alpha([5, 9, 2], 0.0), np.ones(3), rtol=1e-15)


# -- §5.0 options through the server: one option against its equivalent -----------------------

def _rows_away_from(x, y, thresholds, margin=1e-3):
    p = torch.softmax(torch.from_numpy(x).double(), dim=1).gather(1, torch.from_numpy(y).unsqueeze(1)).squeeze(1)
    return np.abs(p.numpy()[:, None] - np.asarray(thresholds)[None, :]).min() > margin


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_class_counts_equal_the_alpha_they_derive(client, reduction):
    """class_counts (zeros among them) gives the loss and gradient that sending
    refs.class_balanced_alpha as alpha (float64 on the wire) gives: float32 kernels either way,
    the weights equal to ~1e-15, so the results agree to float32 rounding at most."""
    rng = np.random.default_rng(stable_seed("counts-vs-alpha", reduction))
    x = (rng.standard_normal((40, 6)) * 3).astype(np.float32)
    y = rng.integers(0, 6, 40)
    counts = [1000, 0, 25, 0, 3, 7]
    a = client.compute(x, y, "softmax_focal", reduction, compute_gradient=True, class_counts=counts,
                       class_balance_beta=0.99)
    b = client.compute(x, y, "softmax_focal", reduction, compute_gradient=True,
                       alpha=list(refs.class_balanced_alpha(counts, 0.99)))
    assert a.loss == pytest.approx(b.loss, rel=1e-6)
    assert_close(a.gradient, b.gradient, 1e-6, "class_counts vs alpha gradient")
    if reduction == "none":
        assert_close(a.losses, b.losses, 1e-6, "class_counts vs alpha losses")


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_equivalent_gamma_schedules_agree(client, reduction):
    """FLSD-53 as Mukhoti et al.'s code writes it (gamma_dic {0.2: 5, 0.5: 3}, the class's γ 3)
    and as §5.0 does (γ 3, one step (0.2, 5)) are the same loss; a single step at 1 with γ g is
    the fixed γ g for every row (p_y < 1); a schedule with one γ everywhere is no schedule."""
    rng = np.random.default_rng(stable_seed("schedules", reduction))
    while True:
        x = (rng.standard_normal((48, 5)) * 3).astype(np.float32)
        y = rng.integers(0, 5, 48)
        if _rows_away_from(x, y, [0.2, 0.5, 1.0]):
            break

    def run(**params):
        return client.compute(x, y, "softmax_focal", reduction, compute_gradient=True, **params)

    pairs = [(run(gamma=3.0, gamma_schedule=[(0.2, 5.0)]), run(gamma=3.0, gamma_schedule=[(0.2, 5.0), (0.5, 3.0)])),
             (run(gamma=7.0, gamma_schedule=[(1.0, 1.5)]), run(gamma=1.5)),
             (run(gamma=2.0, gamma_schedule=[(0.3, 2.0), (0.9, 2.0)]), run(gamma=2.0))]
    for a, b in pairs:
        assert a.loss == pytest.approx(b.loss, rel=1e-6)
        assert_close(a.gradient, b.gradient, 1e-6, "equivalent schedules' gradients")
    flsd, fixed5, fixed3 = pairs[0][0], run(gamma=5.0), run(gamma=3.0)
    p = torch.softmax(torch.from_numpy(x).double(), 1).numpy()[np.arange(48), y]
    if reduction == "none":  # each row is the fixed-γ loss of its band
        want = np.where(p < 0.2, fixed5.losses, fixed3.losses)
        assert (p < 0.2).any() and (p >= 0.2).any()
        assert_close(flsd.losses, want, 1e-6, "FLSD-53 rows = γ 5 below 0.2, γ 3 above")
