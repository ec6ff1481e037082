#!/usr/bin/python3
"""Derives the float polynomial of the CPU kernels' log1p(a), a in [0, 1] (HwyOps::Log1pUnit in
kernels/cpu/simd-inl.h), and checks it the way the kernels evaluate it.

    /usr/bin/python3 scripts/fit_log1p.py

The form is log1p(a) = a + a^2 * Q(a), Q of degree 8 in fused multiply-adds by the kernel's
Estrin grouping (see evaluate), so that the leading term a is exact and the rounding of Q moves
only the correction a^2 * Q. Q's coefficients minimise the largest relative error of log1p(a)/a (an
iteratively reweighted least-squares fit on Chebyshev nodes, which converges to near the minimax
polynomial), then round to float. The check evaluates the rounded coefficients in float with one
rounding per fused step (each step computed exactly in float64, then rounded to float32) over 2M
random floats in [0, 1], every power of two from 2^-1 down to 2^-149 and 1 itself, against
float64's log1p, and prints the largest and mean error in float ulps of the true value.
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
    print(f"degree {degree}: relative error of the fit {fit_error:.2e}; in float: "
          f"max {ulps.max():.3f} ulp, mean {ulps.mean():.3f} ulp")
    print("Q's coefficients, a^0 first (c[0] = 1 is the exact leading term a):")
    for v in c[1:]:
        print(f"  {v!r}")


if __name__ == "__main__":
    main()
