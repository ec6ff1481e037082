"""A load client for the deploy tests, run as its own process (inside a network namespace when
the test says so): the Python client (focalserve.Client) calling Compute back to back.

  load.py compute --target T --seconds S --workers N [--retry-attempts K]

prints JSON: every call's start and end (time.time()), status code and, for the first failure
of each code, its message; and whether every answer was the same, bit for bit.
"""
from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "client" / "python"))

import numpy as np  # noqa: E402

import focalserve  # noqa: E402


def request_arrays():
    rng = np.random.default_rng(20261201)
    logits = rng.normal(0, 3, size=(64, 80)).astype(np.float32)
    targets = (rng.random((64, 80)) < 0.1).astype(np.float32)
    return logits, targets


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=["compute"])
    parser.add_argument("--target", required=True)
    parser.add_argument("--seconds", type=float, required=True)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--retry-attempts", type=int, default=focalserve.client.RETRY_ATTEMPTS)
    parser.add_argument("--dns-min-resolution-ms", type=int, default=None,
                        help="gRPC's least time between two resolutions of the name (default 30 s)")
    args = parser.parse_args()

    logits, targets = request_arrays()
    calls, first_errors, answers = [], {}, set()
    lock = threading.Lock()
    stop_at = time.time() + args.seconds
    options = ([("grpc.dns_min_time_between_resolutions_ms", args.dns_min_resolution_ms)]
               if args.dns_min_resolution_ms is not None else None)
    with focalserve.Client(args.target, timeout=20, retry_attempts=args.retry_attempts, options=options) as client:
        def worker():
            while time.time() < stop_at:
                start = time.time()
                try:
                    r = client.compute(logits, targets, "sigmoid_focal", compute_gradient=True, gamma=2.0, alpha=0.25)
                    code, answer = "OK", (r.loss, r.gradient.tobytes())
                except focalserve.FocalServeError as e:
                    code, answer = e.code.name, None
                    with lock:
                        first_errors.setdefault(code, e.message)
                with lock:
                    calls.append((start, time.time(), code))
                    if answer is not None:
                        answers.add(answer)

        threads = [threading.Thread(target=worker) for _ in range(args.workers)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    json.dump({"calls": calls, "first_errors": first_errors, "distinct_answers": len(answers)}, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
