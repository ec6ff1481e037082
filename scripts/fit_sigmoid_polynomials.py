#!/usr/bin/python3
"""Derives the three float polynomials of the CPU kernels' sigmoid, softmax and logs
(kernels/cpu/simd-inl.h) and checks them the way the kernels evaluate them:

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

2. HwyOps::ExpNonPositive, e^a for a <= 0 (the sigmoid's e^-|x|, the softmax's e^(x - max)).
k = round(a / ln 2) from the bits of a/ln 2 + 1.5 * 2^23, r = a - k ln 2 with ln 2 in two parts
(the first of 12 bits, so that k times it is exact), e^r = 1 + r + r^2 Q(r) with Q of degree 4
by Estrin's grouping, fitted like log1p to the relative error of e^r over [-0.3466, 0.3466]; then
the exponent's bits plus k + 64 and a product by 2^-64. The check runs the whole evaluation in
float over 3M random a in [-104, 0], a few chosen ones (0, -87.5, -103, -110) and reports normal
results in ulps and subnormal ones in units of the smallest subnormal.

3. HwyOps::LogOfParts, the float log without division (Log and LogComplement): a = 2^k (1 + f)
with 1 + f in [sqrt(1/2), sqrt(2)) read off a's bits, log1p(f) = f + f^2 Q(f) with Q of degree 8 by
the grouping of 1., fitted like it to the relative error of log1p over [sqrt(1/2) - 1, sqrt(2) - 1],
then k ln 2 in ExpNonPositive's two parts, the second joining the polynomial before the one
rounding of the sum. The check runs over 2M floats log-uniform over the normal range, 2M in
[1/2, 2], and a few chosen ones, against float64's log, and LogComplement's near-zero form,
log1p(-y) for y in [0, 1 - sqrt(1/2)], over 1M more.

Deterministic: the nodes are fixed and the random floats come from numpy's seeded generator.
"""
import argparse

import numpy as np


def fit(degree, nodes=4000, rounds=30):
    """P of degree `degree` in log1p(a) = a P(a) over [0, 1] (P's c[0] is taken as 1)."""
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


LN2 = float(np.log(2.0))
EXP_MAGIC = 12582912.0  # 1.5 * 2^23: a float whose last place is 1
LN2_HI = float(np.float32(round(LN2 * 4096) / 4096))  # 12 bits: k * LN2_HI is exact for |k| < 2^12
LN2_LO = float(np.float32(LN2 - LN2_HI))


def fit_exp(nodes=4000, rounds=40, half=0.3466):
    """Q of degree 4 in e^r = 1 + r + r^2 Q(r), minimising the largest relative error of e^r."""
    k = np.arange(nodes)
    r = half * np.cos(np.pi * (k + 0.5) / nodes)
    r = r[r != 0]
    q = (np.exp(r) - 1 - r) / (r * r)
    A = np.vander(r, 5, increasing=True)
    w = np.ones_like(r)
    for _ in range(rounds):
        s = r * r / np.exp(r) * w  # Q's error times r^2 / e^r is e^r's relative error
        c, *_ = np.linalg.lstsq(A * s[:, None], q * s, rcond=None)
        e = np.abs(r * r * (A @ c - q) / np.exp(r))
        w = w * (1 + 30 * e / e.max())
        w /= w.mean()
    return [float(np.float32(v)) for v in c], float(e.max())


def exp_nonpositive(c, a):
    """ExpNonPositive as the kernel computes it, one rounding per float step."""
    x = np.maximum(round32(a), -120.0)
    shifted = fma32(x, float(np.float32(1 / LN2)), EXP_MAGIC)
    k = shifted - EXP_MAGIC  # exact
    r = fma32(k, -LN2_LO, fma32(k, -LN2_HI, x))
    r2 = round32(r * r)
    q = fma32(fma32(c[4], r2, fma32(c[3], r, c[2])), r2, fma32(c[1], r, c[0]))
    y = round32(fma32(r2, q, r) + 1.0)
    return round32(y * np.exp2(k + 64) * 2.0 ** -64)  # exact, then one rounding where subnormal


LOG_LO = float(np.float32(np.sqrt(0.5))) - 1  # f's range in LogOfParts
LOG_HI = float(np.float32(np.sqrt(2.0))) - 1


def fit_log(nodes=6000, rounds=60):
    """Q of degree 8 in log1p(f) = f + f^2 Q(f) over [LOG_LO, LOG_HI], minimising the largest
    relative error of log1p(f)."""
    k = np.arange(nodes)
    f = (LOG_LO + LOG_HI) / 2 + (LOG_HI - LOG_LO) / 2 * np.cos(np.pi * (k + 0.5) / nodes)
    f = f[f != 0]
    g = (np.log1p(f) - f) / (f * f)
    A = np.vander(f, 9, increasing=True)
    w = np.ones_like(f)
    for _ in range(rounds):
        s = f * f / np.abs(np.log1p(f)) * w  # Q's error times f^2 / log1p(f): log1p's relative error
        c, *_ = np.linalg.lstsq(A * s[:, None], g * s, rcond=None)
        e = np.abs(f * f * (A @ c - g) / np.log1p(f))
        w = w * (1 + 30 * e / e.max())
        w /= w.mean()
    return [float(np.float32(v)) for v in c], float(e.max())


def log_of_parts(c, k, f):
    """LogOfParts as the kernel computes it: k ln 2 + f + f^2 Q(f), Q by evaluate's grouping."""
    low = fma32(k, LN2_LO, evaluate([1.0] + c, f))
    return fma32(k, LN2_HI, low)


def log_float(c, a):
    """HwyOps::Log on positive floats: subnormals scaled by 2^23 first, then a's parts from its bits."""
    a = round32(a)
    subnormal = a < 2.0 ** -126
    x = np.where(subnormal, a * 2.0 ** 23, a).astype(np.float32)
    bits = x.view(np.uint32).astype(np.int64) - 0x3F3504F3
    k = (bits >> 23).astype(np.float64) - np.where(subnormal, 23, 0)
    mantissa = ((bits & 0x7FFFFF) + 0x3F3504F3).astype(np.uint32).view(np.float32).astype(np.float64)
    return log_of_parts(c, k, mantissa - 1.0)  # the subtraction is exact


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

    c, fit_error = fit_exp()
    a = np.concatenate([-rng.random(2_000_000) * 104, -rng.random(1_000_000), [0.0, -87.5, -103.0, -110.0]])
    a = round32(a)
    got, want = exp_nonpositive(c, a), np.exp(a)
    ulp = np.spacing(np.maximum(want, 2.0 ** -149).astype(np.float32)).astype(np.float64)
    err = np.abs(got - want) / ulp
    normal = want >= 2.0 ** -126
    print(f"e^a, a <= 0: relative error of the fit {fit_error:.2e}; in float: max {err[normal].max():.3f} ulp, "
          f"mean {err[normal].mean():.3f} ulp (normal results); subnormal results within "
          f"{err[~normal].max():.3f} of the smallest subnormal; e^0 = {exp_nonpositive(c, np.zeros(1))[0]!r}")
    print(f"  ln 2 = {LN2_HI!r} + {LN2_LO!r}; Q's coefficients, r^0 first:")
    for v in c:
        print(f"    {v!r}")

    c, fit_error = fit_log()
    a = np.concatenate([np.exp(rng.uniform(np.log(2.0 ** -126), np.log(3.4e38), 2_000_000)),
                        rng.uniform(0.5, 2, 2_000_000), [1.0, 0.5, 2.0, 2.0 ** -149, 2.0 ** -130, 3e38]])
    a = round32(a)
    want = np.log(a)
    got = log_float(c, a)
    err = np.abs(got - want) / np.spacing(np.abs(want).astype(np.float32)).astype(np.float64)
    err[want == 0] = np.abs(got[want == 0])
    y = np.concatenate([round32(rng.uniform(0, -LOG_LO, 1_000_000)), 2.0 ** -np.arange(2, 150)])
    want_c = np.log1p(-y)
    err_c = np.abs(log_of_parts(c, np.zeros_like(y), -y) - want_c) / np.spacing(
        np.abs(want_c).astype(np.float32)).astype(np.float64)
    print(f"log a: relative error of the fit {fit_error:.2e}; in float: max {err.max():.3f} ulp, mean "
          f"{err.mean():.3f} ulp; log(1 - y) near 0: max {err_c.max():.3f} ulp, mean {err_c.mean():.3f} ulp")
    print("  Q's coefficients, f^0 first:")
    for v in c:
        print(f"    {v!r}")


if __name__ == "__main__":
    main()
