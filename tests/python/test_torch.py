"""focalserve.torch.RemoteFocalLoss: forward and x.grad after backward against float64
autograd references, for every variant, reduction and floating dtype."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import focalserve
import refs
from cases import CASE_IDS, CASES, REDUCTIONS
from focalserve.torch import RemoteFocalLoss
from helpers import (ARRAY_RTOL, COMPUTE_RTOL, TORCH_DTYPES, assert_close, reference, stable_seed, upstream_for,
                     wire_extra, wire_logits, wire_targets)


class CountingClient(focalserve.Client):
    """Counts round trips, to check the documented one (mean/sum) or two (none) calls."""

    def __init__(self, target):
        super().__init__(target, timeout=30)
        self.calls = 0

    def compute_request(self, request, **kwargs):
        self.calls += 1
        return super().compute_request(request, **kwargs)

    def compute(self, *args, **kwargs):  # the forward's call when it keeps no request for backward
        self.calls += 1
        return super().compute(*args, **kwargs)


@pytest.fixture(scope="module")
def counting_client(server):
    with CountingClient(server.target) as c:
        yield c


def _as_torch_targets(t_wire):
    return torch.from_numpy(t_wire)


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16", "float64"])
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("name,variant,params,make", CASES, ids=CASE_IDS)
def test_backward_matches_autograd(counting_client, name, variant, params, make, reduction, dtype):
    rng = np.random.default_rng(stable_seed(name, reduction, dtype, "torch"))
    x64, t, extra = make(rng)
    x_wire = wire_logits(x64, dtype)
    t_wire = wire_targets(t)
    e_wire = wire_extra(extra)  # num_objects, weights, scores: float32
    ref_out, _, _ = reference(variant, x_wire, t_wire, e_wire, reduction, params)
    w = upstream_for(reduction, ref_out.shape, rng)
    ref_out, ref_grad, _ = reference(variant, x_wire, t_wire, e_wire, reduction, params, upstream=w)

    loss_fn = RemoteFocalLoss(counting_client, variant, reduction, **params)
    x = x_wire.clone().requires_grad_(True)
    calls = counting_client.calls
    out = loss_fn(x, _as_torch_targets(t_wire), **{k: torch.from_numpy(v) for k, v in e_wire.items()})
    assert out.dtype == TORCH_DTYPES[dtype] and out.device == x.device and out.requires_grad
    (out * torch.as_tensor(w, dtype=out.dtype)).sum().backward()
    assert counting_client.calls - calls == (2 if reduction == "none" else 1)

    assert x.grad.dtype == x.dtype and x.grad.shape == x.shape
    # forward: a reduced loss is rounded once to the logits' dtype, like the arrays
    assert_close(out.detach().double().numpy(), ref_out, ARRAY_RTOL[dtype], f"{name} {reduction} {dtype} forward")
    assert_close(x.grad.double().numpy(), ref_grad, ARRAY_RTOL[dtype], f"{name} {reduction} {dtype} x.grad")


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_weights_and_scores_get_no_gradient(counting_client, reduction):
    """Only the logits are differentiated: weights and scores that require grad are read as
    constants (as the docstring says) and get no .grad; x.grad is the reference's. float16
    weights and float64 scores: any float dtype goes."""
    g = torch.Generator().manual_seed(3)
    x64 = torch.randn(12, 4, generator=g, dtype=torch.float64) * 2
    y = torch.randint(0, 5, (12,), generator=g)  # 4 = background
    w = (torch.randint(0, 9, (12, 4), generator=g) / 4.0).to(torch.float16).requires_grad_(True)  # exact in fp16
    sc = torch.rand(12, generator=g, dtype=torch.float64).requires_grad_(True)
    sc32 = sc.detach().float().double()  # what the server computes with (float32 arithmetic)
    out, _, _ = reference("quality_focal", x64.float(), y.numpy(), {"weights": w.detach().double().numpy(),
                                                                     "scores": sc32.numpy()}, reduction, {})
    up = upstream_for(reduction, out.shape, np.random.default_rng(3))
    ref_out, ref_grad, _ = reference("quality_focal", x64.float(), y.numpy(),
                                     {"weights": w.detach().double().numpy(), "scores": sc32.numpy()}, reduction,
                                     {}, upstream=up)
    x = x64.float().requires_grad_(True)
    out = RemoteFocalLoss(counting_client, "quality_focal", reduction)(x, y, weights=w, scores=sc)
    (out * torch.as_tensor(up, dtype=out.dtype)).sum().backward()
    assert w.grad is None and sc.grad is None
    # the reference was given the scores rounded to float32, as the server's float32 arithmetic
    # reads them (had it read them in float64: one float32 rounding apart, far inside the bound)
    assert_close(out.detach().double().numpy(), ref_out, ARRAY_RTOL["float32"], f"{reduction} forward")
    assert_close(x.grad.double().numpy(), ref_grad, ARRAY_RTOL["float32"], f"{reduction} x.grad")


def _local_float32(variant, params, reduction):
    """The variant in plain float32 torch (refs' expression evaluated in float32): what a user
    would write locally."""
    def loss(logits, targets, **extras):
        losses, count = refs.per_item(variant, logits, targets, **extras, **params)
        return refs.reduce(losses, count, reduction, variant=variant)
    return loss


CATALOGUE_CASES = [c for c in CASES if c[1] in ("asymmetric", "quality_focal", "varifocal", "focal_star",
                                                  "distribution_focal")]


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("name,variant,params,make", CATALOGUE_CASES, ids=[c[0] for c in CATALOGUE_CASES])
def test_catalogue_module_matches_local_float32_torch(client, name, variant, params, make, reduction):
    """RemoteFocalLoss against the same loss written locally in float32 torch, as a drop-in
    replacement: forward and x.grad agree to float32 accuracy. Both sides do float32 math
    through different operations, so each is within COMPUTE_RTOL of the exact value (the
    server: test_backward_matches_autograd; the local expression is the same ops as refs in
    float32, whose roundings the same bound covers) and they are within twice that of each other."""
    rng = np.random.default_rng(stable_seed(name, reduction, "local-float32"))
    x64, t, extra = make(rng)
    t_wire = wire_targets(t)
    e = {k: torch.from_numpy(v) for k, v in wire_extra(extra).items()}
    tt = torch.from_numpy(t_wire)
    x_remote = torch.from_numpy(x64.astype(np.float32)).requires_grad_(True)
    x_local = x_remote.detach().clone().requires_grad_(True)
    remote = RemoteFocalLoss(client, variant, reduction, **params)(x_remote, tt, **e)
    local = _local_float32(variant, params, reduction)(x_local, tt, **e)
    assert remote.dtype == local.dtype == torch.float32 and remote.shape == local.shape
    up = torch.from_numpy(upstream_for(reduction, tuple(local.shape), rng)).float() if reduction == "none" else 0.7
    (remote * up).sum().backward()
    (local * up).sum().backward()
    assert_close(remote.detach().numpy(), local.detach().numpy(), 2 * COMPUTE_RTOL, f"{name} {reduction} forward")
    assert_close(x_remote.grad.numpy(), x_local.grad.numpy(), 2 * COMPUTE_RTOL, f"{name} {reduction} x.grad")


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_no_gradient_requested_without_autograd(counting_client, reduction):
    x = torch.randn(16, 5, generator=torch.Generator().manual_seed(0))
    y = torch.arange(16) % 5
    loss_fn = RemoteFocalLoss(counting_client, "softmax_focal", reduction, gamma=2.0)
    with torch.no_grad():
        a = loss_fn(x.clone().requires_grad_(True), y)
    b = loss_fn(x, y)  # logits not requiring grad
    assert not a.requires_grad and not b.requires_grad
    assert torch.equal(a, b)


def test_gradient_flows_into_a_model(client):
    torch.manual_seed(0)
    model = torch.nn.Linear(8, 4)
    x, y = torch.randn(32, 8), torch.randint(0, 4, (32,))
    RemoteFocalLoss(client, "softmax_focal", gamma=2.0)(model(x), y).backward()
    remote = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    ref, _ = refs.softmax_focal(model(x).double(), y, gamma=2.0)
    ref.mean().backward()
    for a, b in zip(remote, (p.grad for p in model.parameters())):
        assert_close(a.numpy(), b.numpy(), 2e-5, "parameter gradients")


def test_retain_graph_second_backward(client):
    x = torch.randn(6, 3, requires_grad=True)
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    for reduction in ("mean", "none"):
        x.grad = None
        out = RemoteFocalLoss(client, "softmax_focal", reduction)(x, y).sum()
        out.backward(retain_graph=True)
        first = x.grad.clone()
        out.backward()
        assert torch.allclose(x.grad, 2 * first, rtol=1e-6, atol=0)


def test_bad_parameter_fails_at_construction(client):
    with pytest.raises(TypeError, match="no parameter 'gama'"):
        RemoteFocalLoss(client, "softmax_focal", gama=2.0)
    with pytest.raises(ValueError, match="variant"):
        RemoteFocalLoss(client, "softmax_focl")


def test_server_error_surfaces_as_focalserve_error(client):
    x = torch.randn(4, 3, requires_grad=True)
    with pytest.raises(focalserve.FocalServeError) as e:
        RemoteFocalLoss(client, "softmax_focal")(x, torch.tensor([0, 1, 2, 3]))
    assert e.value.code.name == "INVALID_ARGUMENT" and "targets[3]" in e.value.message


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device for torch on this machine")
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_cuda_tensors_round_trip_through_the_host(client, reduction):
    x_cpu = torch.randn(16, 5, generator=torch.Generator().manual_seed(1))
    y_cpu = torch.arange(16) % 5
    x = x_cpu.cuda().requires_grad_(True)
    out = RemoteFocalLoss(client, "softmax_focal", reduction)(x, y_cpu.cuda())
    assert out.device == x.device
    out.sum().backward()
    assert x.grad.device == x.device
    xc = x_cpu.clone().requires_grad_(True)
    RemoteFocalLoss(client, "softmax_focal", reduction)(xc, y_cpu).sum().backward()
    assert torch.equal(x.grad.cpu(), xc.grad)
