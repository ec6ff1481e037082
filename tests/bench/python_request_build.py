#!/usr/bin/python3
"""How long the Python client takes to turn arrays into a Compute request's wire bytes: the
message path (build_request, then SerializeToString: what compute_request sends) against the
bytes compute() now sends (_request_bytes: the large tensors joined in from the arrays once).
Best of --repeats, same run, side by side.

    /usr/bin/python3 tests/bench/python_request_build.py [--shape 262144,80] [--repeats 7]
"""
import argparse
import os
import sys
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(REPO, "client", "python"))
import focalserve  # noqa: E402


def best(fn, repeats):
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shape", default="262144,80")
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    shape = tuple(int(s) for s in args.shape.split(","))
    rng = np.random.default_rng(5)
    logits = rng.standard_normal(shape).astype(np.float32)
    targets = rng.integers(0, shape[1], shape[0])
    message = lambda: focalserve.Client.build_request(logits, targets, "softmax_focal").SerializeToString()
    joined = lambda: focalserve.Client._request_bytes(focalserve.Client, logits, targets, "softmax_focal")
    parse = focalserve.pb.ComputeRequest.FromString
    assert parse(message()) == parse(joined())  # the same request; only the order of fields differs
    for name, fn in (("message", message), ("joined", joined), ("message", message), ("joined", joined)):
        t = best(fn, args.repeats)
        print(f"{name:8s} {t * 1e3:8.2f} ms  {logits.nbytes / t / 1e9:6.2f} GB/s of logits")


if __name__ == "__main__":
    main()
