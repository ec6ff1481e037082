"""Per-call cost of the Python client against raw generated-stub calls, on a [64, 80] softmax
focal request with its gradient (printed, not asserted: timings depend on the machine)."""
from __future__ import annotations

import statistics
import time

import numpy as np
import torch

import focalserve
from focalserve import pb
from focalserve.torch import RemoteFocalLoss

CALLS, WARMUP = 200, 20


def _median_us(fn):
    for _ in range(WARMUP):
        fn()
    samples = []
    for _ in range(CALLS):
        t0 = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t0)
    return statistics.median(samples) * 1e6


def test_client_overhead_vs_raw_stub(server):
    client = focalserve.Client(server.target)  # no default deadline, like the raw calls
    timed_client = focalserve.Client(server.target, timeout=30)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((64, 80)).astype(np.float32)
    y = rng.integers(0, 80, 64).astype(np.int64)
    stub = client.stub
    prebuilt = pb.ComputeRequest(
        loss=pb.LossSpec(softmax_focal=pb.SoftmaxFocal(gamma=2.0)),
        logits=pb.Tensor(dtype=pb.FLOAT32, shape=x.shape, data=x.tobytes()),
        targets=pb.Tensor(dtype=pb.INT64, shape=y.shape, data=y.tobytes()), compute_gradient=True)

    def raw_prebuilt():
        stub.Compute(prebuilt)

    def raw_readme_style():  # what README.md shows: build the request, call, view the gradient
        r = stub.Compute(pb.ComputeRequest(
            loss=pb.LossSpec(softmax_focal=pb.SoftmaxFocal(gamma=2.0)),
            logits=pb.Tensor(dtype=pb.FLOAT32, shape=x.shape, data=x.tobytes()),
            targets=pb.Tensor(dtype=pb.INT64, shape=y.shape, data=y.tobytes()), compute_gradient=True))
        np.frombuffer(r.gradient.data, np.float32).reshape(x.shape)

    def raw_prebuilt_deadline():
        stub.Compute(prebuilt, timeout=30)

    def focalserve_client():
        client.compute(x, y, "softmax_focal", compute_gradient=True, gamma=2.0)

    def focalserve_client_deadline():
        timed_client.compute(x, y, "softmax_focal", compute_gradient=True, gamma=2.0)

    loss_fn = RemoteFocalLoss(client, "softmax_focal", gamma=2.0)
    xt, yt = torch.from_numpy(x.copy()).requires_grad_(True), torch.from_numpy(y)

    def torch_module():
        xt.grad = None
        loss_fn(xt, yt).backward()

    results = {}
    for _round in range(2):  # interleaved twice; the lower median of the two rounds is kept
        for name, fn in [("raw stub, prebuilt request", raw_prebuilt), ("raw stub, README style", raw_readme_style),
                         ("focalserve.Client.compute", focalserve_client),
                         ("raw stub, prebuilt, timeout=30", raw_prebuilt_deadline),
                         ("Client(timeout=30).compute", focalserve_client_deadline),
                         ("RemoteFocalLoss fwd+bwd", torch_module)]:
            results[name] = min(results.get(name, float("inf")), _median_us(fn))
    print(f"\n[overhead] [64, 80] float32 softmax_focal + gradient, median of {CALLS} calls:")
    for name, us in results.items():
        print(f"[overhead]   {name:30s} {us:8.1f} us")
    base = results["raw stub, README style"]
    print(f"[overhead] client over README-style stub call: {results['focalserve.Client.compute'] - base:+.1f} us; "
          f"over prebuilt: {results['focalserve.Client.compute'] - results['raw stub, prebuilt request']:+.1f} us; "
          f"with a deadline on both: {results['Client(timeout=30).compute'] - results['raw stub, prebuilt, timeout=30']:+.1f} us")
    client.close()
    timed_client.close()
