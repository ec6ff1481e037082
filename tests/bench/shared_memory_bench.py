#!/usr/bin/python3
"""A large Compute through shared memory against the backend's compute time alone (issue 15's
goal: within 1.3x), beside the same Compute with the tensors in the messages. One server on
loopback with --shared-memory=on, the CPU backend; forward + gradient of sigmoid_focal on
[262144, 80] float32 (and softmax_focal on the same logits).

    /usr/bin/python3 tests/bench/shared_memory_bench.py [--server build/server/focalserve] [--repeats 5]

Per pass: the median call time (client to answer, the result in hand as a NumPy array), the
median of the server's own compute time (timing.compute_micros: the backend alone), and their
ratio.
"""
from __future__ import annotations

import argparse
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "client" / "python"))
import focalserve  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--server", default=str(REPO / "build" / "server" / "focalserve"))
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--rows", type=int, default=262144)
    args = parser.parse_args()
    proc = subprocess.Popen([args.server, "--listen=127.0.0.1:0", "--metrics-listen=", "--backend=cpu",
                             "--shared-memory=on"], stdout=subprocess.PIPE, text=True)
    try:
        target = re.search(r"listening on (\S+)", proc.stdout.readline()).group(1)
        rng = np.random.default_rng(7)
        x = (rng.standard_normal((args.rows, 80)) * 3).astype(np.float32)
        t = (rng.random(x.shape) < 0.05).astype(np.float32)
        y = rng.integers(0, 80, args.rows)
        with focalserve.Client(target, timeout=600) as client, \
                client.shared_memory(2 * x.nbytes + t.nbytes + y.nbytes + 4096) as region:
            X, T, Y, G = region.put(x), region.put(t), region.put(y), region.empty(x.shape, x.dtype)
            passes = {
                "sigmoid_focal, in the messages": lambda: client.compute(x, t, "sigmoid_focal", compute_gradient=True),
                "sigmoid_focal, shared memory": lambda: client.compute(X, T, "sigmoid_focal", compute_gradient=True,
                                                                       gradient_output=G),
                "softmax_focal, in the messages": lambda: client.compute(x, y, "softmax_focal", compute_gradient=True),
                "softmax_focal, shared memory": lambda: client.compute(X, Y, "softmax_focal", compute_gradient=True,
                                                                       gradient_output=G),
            }
            calls, computes = {}, {}
            for _ in range(args.repeats):  # interleaved rounds
                for name, run in passes.items():
                    start = time.perf_counter()
                    r = run()
                    calls.setdefault(name, []).append(time.perf_counter() - start)
                    computes.setdefault(name, []).append(r.timing.compute_micros / 1e6)
                    assert r.gradient.shape == x.shape
        print(f"[{args.rows}, 80] float32, forward + gradient, median of {args.repeats}")
        print("| pass | call (s) | backend compute (s) | call / compute | goal |\n| --- | ---: | ---: | ---: | ---: |")
        for name in passes:
            call, compute = statistics.median(calls[name]), statistics.median(computes[name])
            goal = "≤ 1.30" if "shared" in name else ""
            print(f"| {name} | {call:.4f} | {compute:.4f} | {call / compute:.2f} | {goal} |")
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    return 0


if __name__ == "__main__":
    sys.exit(main())
