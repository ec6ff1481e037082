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
