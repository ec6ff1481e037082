#!/usr/bin/python3
"""Derives the two float polynomials of the CPU kernels' sigmoid (kernels/cpu/simd-inl.h) and
checks them the way the kernels evaluate them:

    /usr/bin/python3 scripts/fit_sigmoid_polynomials.py

1. HwyOps::Log1pUnit, log1p(a) for a in [0, 1].

The form is log1p(a) = a + a^2 * Q(a), Q of degree 8 in fused multiply-adds by the kernel's
Estrin grouping (see evaluate), so that the leading term a is exact and the rounding of Q moves
only the correction a^2 * Q. Q's coefficients minimise the largest relative error of log1p(a)/a (an
iteratively reweighted least-squares fit on Chebyshev nodes, which converges to near the minimax
polynomial), then round to float. The check evaluates the rounded coefficients in float with one
rounding per fused step (each step computed exactly in float64, then rounded to float32) over 2M
random floats in [0, 1], every power of two from 2^-1 down to 2^-149 and 1 itself, against
float64's log1p, and prints the largest and mean error in float ulps of the true value.

2. HwyOps::ReciprocalOneToTwo, 1/u for u in [1, 2]: a quadratic first guess c0 + c1 u + c2 u^2
whose relative error |u P(u) - 1| is minimised the same way (2^-6.6), then two Newton steps
r + r (1 - u r), each squaring the error, in fused multiply-adds. A polynomial rather than the
processor's approximate reciprocal, whose precision differs between AVX-512's full vectors
(2^-14) and its 128-bit ones (2^-12): a result must not depend on which lane width an element
fell in (Evaluate's sums are bit-identical however a dataset is split). The check runs over 2M
random floats in [1, 2] and both ends.

Deterministic: the nodes are fixed and the random floats come from numpy's seeded generator.
"""
import argparse

import numpy as np


def fit(degree, nodes=4000, rounds=30):
    k = np.arange(nodes)
    a = np.sort(np.concatenate([0.5 + 0.5 * np.cos(np.pi * (k + 0.5) / nodes), [1.0]]))
    f = np.log1p(a) / a
    w = np.ones_like(a)
    A = np.vander(a, degree + 1, increasing=True)
    for _ in range(rounds):
        c, *_ = np.linalg.lstsq(A * (w / f)[:, None], w, rcond=None)
        r = np.abs(A @ c / f - 1)
        w = w * (1 + 30 * r / r.max())  # weight the error's peaks until they level
        w /= w.mean()
    return [float(np.float32(v)) for v in c], float(r.max())


def round32(x):
    return x.astype(np.float32).astype(np.float64)


def fma32(x, y, z):
    """A float fused multiply-add: x*y + z exact in float64 (24-bit products), rounded once."""
    return round32(x * y + z)


def evaluate(c, a):
    """a + a^2 Q(a) as the kernel computes it, c[0] = 1 unused (the exact leading term): Q of
    degree 8 by the kernel's Estrin grouping, ((c1 + c2 a) + (c3 + c4 a) a^2) + a^4 ((c5 + c6 a)
    + ((c7 + c8 a) + c9 a^2) a^2)."""
    a = round32(a)
    a2 = round32(a * a)
    a4 = round32(a2 * a2)
    q01 = fma32(c[2], a, c[1])
    q23 = fma32(c[4], a, c[3])
    q45 = fma32(c[6], a, c[5])
    q67 = fma32(c[9], a2, fma32(c[8], a, c[7]))
    q = fma32(fma32(q67, a2, q45), a4, fma32(q23, a2, q01))
    return fma32(a2, q, a)


def fit_reciprocal(nodes=200001, rounds=200):
    u = np.linspace(1, 2, nodes)
    A = np.stack([u, u * u, u ** 3], 1)  # u * P(u), P = c0 + c1 u + c2 u^2
    w = np.ones_like(u)
    for _ in range(rounds):
        c, *_ = np.linalg.lstsq(A * w[:, None], w, rcond=None)
        r = np.abs(A @ c - 1)
        w = w * (1 + 10 * r / r.max())
        w /= w.mean()
    return [float(np.float32(v)) for v in c], float(r.max())


def reciprocal(c, u):
    r = fma32(fma32(c[2], u, c[1]), u, c[0])
    for _ in range(2):
        r = fma32(r, fma32(-u, r, 1.0), r)
    return r


def main():
    argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter).parse_args()
    degree = 9
    c, fit_error = fit(degree)
    rng = np.random.default_rng(20261201)
    a = np.concatenate([rng.random(2_000_000, dtype=np.float32),
                        np.float32(2.0) ** -np.arange(1, 150, dtype=np.float32), [np.float32(1)]])
    a = a[a > 0].astype(np.float64)
    want = np.log1p(a)
    ulps = np.abs(evaluate(c, a) - want) / np.spacing(want.astype(np.float32)).astype(np.float64)
    print(f"log1p, degree {degree}: relative error of the fit {fit_error:.2e}; in float: "
          f"max {ulps.max():.3f} ulp, mean {ulps.mean():.3f} ulp")
    print("  Q's coefficients, a^0 first (c[0] = 1 is the exact leading term a):")
    for v in c[1:]:
        print(f"    {v!r}")

    c, fit_error = fit_reciprocal()
    u = np.concatenate([round32(rng.uniform(1, 2, 2_000_000)), [1.0, 2.0, float(np.nextafter(np.float32(2), 0))]])
    want = 1 / u
    got = reciprocal(c, u)
    ulps = np.abs(got - want) / np.spacing(want.astype(np.float32)).astype(np.float64)
    print(f"1/u: first guess's relative error {fit_error:.2e} (2^{np.log2(fit_error):.2f}); after two Newton "
          f"steps in float: max {ulps.max():.3f} ulp, {np.mean(got == round32(want)) * 100:.1f}% correctly rounded")
    print("  P's coefficients, u^0 first:")
    for v in c:
        print(f"    {v!r}")


if __name__ == "__main__":
    main()
