#!/usr/bin/python3
"""The cost of Evaluate's analyses: one plain Evaluate pass against the same pass with a γ sweep
of K values (and with calibration), side by side on one server, over batches of [65536, 80]
float32 sigmoid_focal logits with 0/1 targets (and softmax_focal rows of 80 classes).

    /usr/bin/python3 tests/bench/evaluate_sweep_bench.py [--server build/server/focalserve] [--repeats 3]

Prints a table of median seconds per pass and the ratio to the plain pass; issue 13's goal is at
most 1 + K/4 for K <= 16.
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
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batches", type=int, default=2)
    args = parser.parse_args()
    proc = subprocess.Popen([args.server, "--listen=127.0.0.1:0", "--metrics-listen=", "--backend=cpu"],
                            stdout=subprocess.PIPE, text=True)
    try:
        target = re.search(r"listening on (\S+)", proc.stdout.readline()).group(1)
        rng = np.random.default_rng(1)
        x = [(rng.standard_normal((65536, 80)) * 3).astype(np.float32) for _ in range(args.batches)]
        sigmoid = [(b, (rng.random(b.shape) < 0.05).astype(np.float32)) for b in x]
        softmax = [(b, rng.integers(0, 80, b.shape[0])) for b in x]
        cases = [("plain", {}), ("K=1", dict(gamma_sweep=[2])), ("K=4", dict(gamma_sweep=[0, 1, 2, 3])),
                 ("K=16", dict(gamma_sweep=list(np.linspace(0, 5, 16)))), ("calibration", dict(calibration_bins=15)),
                 ("K=4 + calibration", dict(gamma_sweep=[0, 1, 2, 3], calibration_bins=15))]
        with focalserve.Client(target, timeout=600) as client:
            for variant, batches in (("sigmoid_focal", sigmoid), ("softmax_focal", softmax)):
                times = {}
                for _ in range(args.repeats):  # interleaved rounds
                    for name, options in cases:
                        start = time.perf_counter()
                        client.evaluate(batches, variant, **options)
                        times.setdefault(name, []).append((time.perf_counter() - start) / len(batches))
                plain = statistics.median(times["plain"])
                print(f"\n{variant}, [65536, 80] float32, {len(batches)} batches, median of {args.repeats}")
                print("| pass | s per batch | / plain | goal |\n| --- | ---: | ---: | ---: |")
                for name, _ in cases:
                    t = statistics.median(times[name])
                    k = int(name[2:].split()[0]) if name.startswith("K=") else None
                    goal = f"<= {1 + k / 4:.2f}" if k is not None else ""
                    print(f"| {name} | {t:.3f} | {t / plain:.2f} | {goal} |")
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    return 0


if __name__ == "__main__":
    sys.exit(main())
