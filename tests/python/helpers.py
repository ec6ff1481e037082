"""Shared test helpers: wire rounding, float64 references with autograd, tolerances."""
from __future__ import annotations

import zlib

import numpy as np
import torch

import refs

TORCH_DTYPES = {"float32": torch.float32, "float64": torch.float64, "float16": torch.float16,
                "bfloat16": torch.bfloat16}

# Tolerances, relative (elementwise, plus the same fraction of the largest reference value as
# an absolute floor, since MEAN gradients and small losses sit near zero):
# * values the server returns in float32 or wider: the server does its arithmetic in float32
#   (docs/variants.md), so a few float32 ulps (6e-8 each) amplified by the focal term's
#   cancellations; 2e-5 leaves ~100x margin over the worst error seen (2e-7).
# * arrays returned in float16 / bfloat16: one rounding to the wire dtype on top, at most half
#   an ulp, 2^-11 = 4.9e-4 (float16) and 2^-8 = 3.9e-3 (bfloat16); the tolerance is twice
#   that (worst seen: 3.5e-4 and 2.8e-3), the reference being the exact value, not a rounded one.
COMPUTE_RTOL = 2e-5
ARRAY_RTOL = {"float32": COMPUTE_RTOL, "float64": COMPUTE_RTOL, "float16": 1e-3, "bfloat16": 8e-3}


# Unit roundoff of each wire dtype: one rounding to it moves a value by at most this fraction.
UNIT_ROUNDOFF = {"float32": 2.0**-24, "float64": 2.0**-53, "float16": 2.0**-11, "bfloat16": 2.0**-8}
# float16's subnormals are evenly spaced: below 2^-14 a rounding moves a value by up to 2^-25.
FLOAT16_ABS_ROUNDOFF = 2.0**-25


def stable_seed(*parts) -> int:
    """A seed from the test's own parameters that is the same in every process (Python's hash()
    of a string changes with PYTHONHASHSEED, which made CI flaky)."""
    return zlib.crc32(repr(parts).encode())


def assert_close(actual, expected, rtol, what=""):
    actual = np.asarray(actual, dtype=np.float64)
    expected = np.asarray(expected, dtype=np.float64)
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != {expected.shape}"
    scale = float(np.max(np.abs(expected))) if expected.size else 0.0
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=rtol * max(scale, 1e-30), err_msg=what)


def wire_logits(x64: np.ndarray, dtype: str) -> torch.Tensor:
    """The logits as sent: a torch tensor of `dtype` (values rounded to it)."""
    return torch.tensor(x64, dtype=torch.float64).to(TORCH_DTYPES[dtype])


def wire_targets(t: np.ndarray) -> np.ndarray:
    """Class indices as int64, float targets as float32 (what the tests send)."""
    return t.astype(np.int64) if t.dtype.kind in "iu" else t.astype(np.float32)


def wire_extra(extra) -> dict:
    """The request's optional per-item tensors (num_objects, weights, scores) as sent: float32."""
    return {k: np.asarray(v, dtype=np.float64).astype(np.float32) for k, v in (extra or {}).items()}


def reference(variant, x_wire: torch.Tensor, t_wire: np.ndarray, extra_wire, reduction, params, upstream=None,
              normalizer=None):
    """(output, gradient or None, count) in float64 from the wire values, through autograd.

    extra_wire: None or a dict of the per-item tensors sent with the request (num_objects,
    weights, scores), as sent. upstream: None for the forward only; a scalar (mean/sum) or an
    array shaped like the per-item losses (none); the gradient is d(sum(upstream * output))/dx.
    """
    x = x_wire.detach().to(torch.float64).requires_grad_(upstream is not None)
    t = torch.from_numpy(np.array(t_wire)).to(torch.int64 if t_wire.dtype.kind in "iu" else torch.float64)
    extra = {k: torch.from_numpy(np.asarray(v, dtype=np.float64)) for k, v in (extra_wire or {}).items()}
    out, count = refs.reference(variant, x, t, reduction, normalizer=normalizer, **extra, **params)
    grad = None
    if upstream is not None:
        (out * torch.as_tensor(upstream, dtype=torch.float64)).sum().backward()
        grad = x.grad.numpy()
    return out.detach().numpy(), grad, count


def upstream_for(reduction, loss_shape, rng):
    """A non-trivial upstream gradient: 0.7 for mean/sum, N(0,1) weights for none."""
    if reduction == "none":
        return rng.standard_normal(loss_shape)
    return 0.7
