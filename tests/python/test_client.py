"""Client surface: error mapping, info(), health(), evaluate(), AsyncClient, auth, TLS."""
from __future__ import annotations

import asyncio
import json
import re
import shutil
import subprocess
import threading
import time
import urllib.request

import grpc
import numpy as np
import pytest
import torch

import focalserve
from conftest import ServerProcess, make_test_certificate

RNG = np.random.default_rng(11)
X = (RNG.standard_normal((12, 5)) * 2).astype(np.float32)
Y = RNG.integers(0, 5, 12)


# -- errors -------------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs,field", [
    (dict(targets=np.array([0, 1, 7] + [0] * 9)), "targets[2]"),
    (dict(gamma=-1.0), "loss.gamma"),
    (dict(alpha=[1.0, 2.0]), "loss.alpha"),
    (dict(label_smoothing=1.0), "loss.label_smoothing"),
    (dict(targets=np.zeros(11, np.int64)), "targets.shape"),
    (dict(targets=np.zeros(12, np.float32)), "targets.dtype"),
    (dict(logits=np.where(np.arange(60).reshape(12, 5) == 7, np.nan, X).astype(np.float32)), "logits[1, 2]"),
    (dict(gradient_dtype="float16", compute_gradient=True), "gradient_dtype"),
    (dict(normalizer=0.0), "loss.normalizer"),
    (dict(grad_output=np.ones(3), compute_gradient=True), "grad_output.shape"),
    (dict(num_objects=np.ones(12, np.float32)), "num_objects"),
    (dict(weights=np.where(np.arange(12) == 3, -0.5, 1.0).astype(np.float32)), "weights[3]"),
    (dict(weights=np.ones(11, np.float32)), "weights.shape"),
    (dict(weights=np.ones((12, 5), np.float32)), "weights.shape"),  # per row for softmax_focal, not per logit
    (dict(weights=np.where(np.arange(12) == 0, np.inf, 1.0)), "weights[0]"),
    (dict(weights=np.ones(12, np.int64)), "weights.dtype"),
    (dict(variant="quality_focal"), "scores"),  # class-index targets without their quality scores
    (dict(variant="quality_focal", scores=np.full(11, 0.5, np.float32)), "scores.shape"),
    (dict(variant="quality_focal", scores=np.full(12, 1.5, np.float32)), "scores[0]"),
    (dict(scores=np.full(12, 0.5, np.float32)), "scores"),  # softmax_focal takes none
    # §5.0's options out of range
    (dict(poly_epsilon=-1.5), "loss.poly_epsilon"),
    (dict(variant="sigmoid_focal", targets=np.full(12, 5), poly_epsilon=-1.01), "loss.poly_epsilon"),
    (dict(class_counts=[1, 2, 3]), "loss.class_counts"),
    (dict(class_counts=[1, 2, -3, 4, 5]), "loss.class_counts[2]"),
    (dict(class_counts=[1, 2, 3, 4, 5], class_balance_beta=1.0), "loss.class_balance_beta"),
    (dict(gamma_schedule=[(0.5, 1.0), (0.2, 2.0)]), "loss.gamma_schedule[1].threshold"),
    (dict(gamma_schedule=[(0.0, 1.0)]), "loss.gamma_schedule[0].threshold"),
    (dict(gamma_schedule=[(1.5, 1.0)]), "loss.gamma_schedule[0].threshold"),
    (dict(gamma_schedule=[(0.2, -1.0)]), "loss.gamma_schedule[0].gamma"),
    (dict(gamma_schedule=[(0.1 * (i + 1), 1.0) for i in range(9)]), "loss.gamma_schedule has 9 steps"),
])
def test_invalid_request_names_the_field(client, kwargs, field):
    args = dict(logits=X, targets=Y)
    args.update(kwargs)
    with pytest.raises(focalserve.FocalServeError) as e:
        client.compute(args.pop("logits"), args.pop("targets"), **args)
    assert e.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert field in e.value.message, e.value.message
    assert "INVALID_ARGUMENT" in str(e.value)


P = 1.0 / (1.0 + np.exp(-X))  # probabilities for sigmoid_focal's input PROBABILITIES
T = (RNG.random(X.shape) < 0.3).astype(np.float32)


@pytest.mark.parametrize("variant,logits,targets,params,parameter,other", [
    ("softmax_focal", X, Y, dict(poly_epsilon=1.0, label_smoothing=0.1), "loss.poly_epsilon", "loss.label_smoothing"),
    ("softmax_focal", X, Y, dict(gamma_schedule=[(0.2, 5.0)], label_smoothing=0.1), "loss.gamma_schedule",
     "loss.label_smoothing"),
    ("softmax_focal", X, Y, dict(class_counts=[10, 0, 3, 1, 1], alpha=[1.0] * 5), "loss.class_counts", "loss.alpha"),
    ("sigmoid_focal", P, T, dict(poly_epsilon=-1.0, input="probabilities"), "loss.poly_epsilon", "PROBABILITIES"),
])
def test_rejected_option_combinations_name_the_parameter(client, variant, logits, targets, params, parameter,
                                                         other):
    """§5.0's combinations the server rejects: INVALID_ARGUMENT naming the option and what it is
    combined with, from Client.compute and from RemoteFocalLoss alike; each option alone is fine."""
    with pytest.raises(focalserve.FocalServeError) as e:
        client.compute(logits, targets, variant, compute_gradient=True, **params)
    assert e.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert parameter in e.value.message and other in e.value.message, e.value.message
    from focalserve.torch import RemoteFocalLoss
    x = torch.from_numpy(np.asarray(logits, np.float32)).requires_grad_(True)
    with pytest.raises(focalserve.FocalServeError) as e:
        RemoteFocalLoss(client, variant, **params)(x, torch.from_numpy(np.asarray(targets)))
    assert e.value.code == grpc.StatusCode.INVALID_ARGUMENT and parameter in e.value.message
    for key, value in params.items():  # each alone is accepted (Poly-1 alone on sigmoid: on logits)
        alone_logits = X if (variant, key) == ("sigmoid_focal", "poly_epsilon") else logits
        client.compute(alone_logits, targets, variant, **{key: value})


def test_non_finite_allowed_propagates(client):
    x = X.copy()
    x[1, 2] = np.nan
    r = client.compute(x, Y, reduction="none", allow_non_finite=True)
    assert np.isnan(r.losses[1]) and np.isfinite(np.delete(r.losses, 1)).all()


def test_sigmoid_specific_errors(client):
    t = (RNG.random(X.shape) < 0.5).astype(np.float32)
    with pytest.raises(focalserve.FocalServeError, match="loss.alpha") as e:
        client.compute(X, t, "sigmoid_focal", alpha=1.5)
    assert e.value.code == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(focalserve.FocalServeError, match=r"targets\[0, 0\] is 2"):
        client.compute(X, np.full(X.shape, 2, np.float32), "sigmoid_focal")


def test_client_side_argument_errors(client):
    with pytest.raises(ValueError, match="variant 'softmax'"):
        client.compute(X, Y, "softmax")
    with pytest.raises(TypeError, match="focal_cosine has no parameter 'ignore_index'"):
        client.compute(X, Y, "focal_cosine", ignore_index=1)
    with pytest.raises(ValueError, match="reduction"):
        client.compute(X, Y, reduction="avg")
    with pytest.raises(TypeError, match="logits: dtype int16"):
        client.compute(X.astype(np.int16), Y)
    with pytest.raises(ValueError, match="input"):
        client.compute(X, Y, "sigmoid_focal", input="odds")


def test_deadline_exceeded(client):
    big = np.zeros((4096, 1024), np.float32)
    with pytest.raises(focalserve.FocalServeError) as e:
        client.compute(big, np.zeros(4096, np.int64), timeout=1e-4)
    assert e.value.code == grpc.StatusCode.DEADLINE_EXCEEDED


def test_unreachable_server():
    with focalserve.Client("127.0.0.1:1", timeout=2) as c:
        with pytest.raises(focalserve.FocalServeError) as e:
            c.compute(X, Y)
    assert e.value.code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)


def test_service_config_balances_and_retries_unavailable_only():
    config = json.loads(focalserve.client.service_config())
    assert config["loadBalancingConfig"] == [{"round_robin": {}}]
    policy = config["methodConfig"][0]["retryPolicy"]
    assert policy["maxAttempts"] == focalserve.client.RETRY_ATTEMPTS == 4
    assert policy["retryableStatusCodes"] == ["UNAVAILABLE", "CANCELLED"]
    assert {n["service"] for n in config["methodConfig"][0]["name"]} == {"focal.v1.FocalLossService",
                                                                         "grpc.health.v1.Health"}
    assert "methodConfig" not in json.loads(focalserve.client.service_config(1))
    with pytest.raises(ValueError, match="retry_attempts=0"):
        focalserve.Client("127.0.0.1:1", retry_attempts=0)


@pytest.mark.parametrize("retry_attempts", [4, 1])
def test_round_robin_over_servers_and_one_killed_mid_run(retry_attempts):
    """Three servers behind one "ipv4:" target: calls rotate over all three; one killed with
    SIGKILL while a call is computing on it (200 ms each) costs no call with the default
    retries, and (so the check can fail) that call without them."""
    servers = [ServerProcess("--debug-delay-ms", "200", "--metrics-listen", "127.0.0.1:0") for _ in range(3)]
    metrics = re.search(r"metrics (http://\S+)", servers[1].banner).group(1)

    def in_flight() -> float:
        text = urllib.request.urlopen(metrics, timeout=5).read().decode()
        return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith("focal_requests_in_flight"))

    try:
        target = "ipv4:" + ",".join(s.target for s in servers)
        with focalserve.Client(target, timeout=15, retry_attempts=retry_attempts) as c:
            for _ in range(3):
                c.compute(X, Y)
            codes, lock, stop = [], threading.Lock(), threading.Event()

            def worker():
                while not stop.is_set():
                    try:
                        c.compute(X, Y)
                        code = "OK"
                    except focalserve.FocalServeError as e:
                        code = e.code.name
                    with lock:
                        codes.append(code)

            threads = [threading.Thread(target=worker) for _ in range(4)]
            for t in threads:
                t.start()
            deadline = time.monotonic() + 10
            while in_flight() < 1:
                assert time.monotonic() < deadline, "no call reached server 1: round_robin is not in effect"
                time.sleep(0.005)
            servers[1].proc.kill()
            time.sleep(1.0)
            stop.set()
            for t in threads:
                t.join()
        failed = [code for code in codes if code != "OK"]
        print(f"\n[round_robin, retry_attempts={retry_attempts}] {len(codes)} calls, {len(failed)} failed")
        if retry_attempts > 1:
            assert failed == []
        else:
            assert failed, "no call was caught on the killed server: the test proves nothing"
    finally:
        for s in servers:
            s.stop()


# -- per-class weights at full precision (softmax_focal.alpha_f64) --------------------------

def _float64_softmax_case():
    rng = np.random.default_rng(23)
    return rng.standard_normal((64, 5)) * 2, rng.integers(0, 5, 64)  # float64 logits


def _softmax_sum(x, y, alpha):
    """The float64 torch reference of softmax_focal, SUM, with weights `alpha`."""
    import refs
    loss, _ = refs.softmax_focal(torch.from_numpy(x), torch.from_numpy(y), alpha=alpha)
    return float(loss.sum())


def test_float64_alpha_is_exact(client):
    x, y = _float64_softmax_case()
    alpha = [0.2] * 5  # not a float32 value
    request = client.build_request(x, y, "softmax_focal", "sum", alpha=alpha)
    assert list(request.loss.softmax_focal.alpha_f64) == alpha
    assert len(request.loss.softmax_focal.alpha) == 0  # the float32 form is not sent
    r = client.compute_request(request)
    want = _softmax_sum(x, y, alpha)
    assert abs(r.loss - want) / abs(want) < 1e-14, (r.loss, want)  # float32 weights: ~1.5e-8


def test_float32_alpha_still_works(client):
    x, y = _float64_softmax_case()
    request = client.build_request(x, y, "softmax_focal", "sum", alpha=[0.2] * 5)
    sub = request.loss.softmax_focal
    sub.alpha.extend(sub.alpha_f64)  # what clients sent before alpha_f64
    del sub.alpha_f64[:]
    r = client.compute_request(request)
    as_float32 = [float(np.float32(0.2))] * 5
    want = _softmax_sum(x, y, as_float32)
    assert abs(r.loss - want) / abs(want) < 1e-14, (r.loss, want)
    exact = _softmax_sum(x, y, [0.2] * 5)
    assert abs(r.loss - exact) / abs(exact) > 1e-10


def test_alpha_in_both_forms_is_invalid(client):
    x, y = _float64_softmax_case()
    request = client.build_request(x, y, "softmax_focal", alpha=[0.2] * 5)
    request.loss.softmax_focal.alpha.extend([0.2] * 5)
    with pytest.raises(focalserve.FocalServeError) as e:
        client.compute_request(request)
    assert e.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "loss.softmax_focal.alpha and loss.softmax_focal.alpha_f64 are both set" in e.value.message


def test_unknown_parameter_lists_the_variants_parameters(client):
    """Named as docs/variants.md names them: a per-class list `x_f64` is the parameter `x`."""
    with pytest.raises(TypeError) as e:
        client.compute(X, Y, "softmax_focal", beta=1)
    assert str(e.value).endswith("it takes gamma, alpha, ignore_index, label_smoothing, poly_epsilon, class_counts, "
                                 "class_balance_beta, gamma_schedule"), str(e.value)
    with pytest.raises(TypeError, match="distribution_focal has no parameter 'gamma'; it takes none"):
        client.compute(X, Y, "distribution_focal", gamma=1)


def test_list_and_schedule_parameters_encode():
    """class_counts goes as class_counts_f64 (full precision); gamma_schedule's steps as
    (threshold, gamma) pairs or mappings (client side only: the encoding, no server)."""
    from focalserve import _codec
    spec = _codec.loss_spec("softmax_focal", gamma=3.0, class_counts=np.array([10, 0, 3]),
                            gamma_schedule=[(0.2, 5.0), {"threshold": 0.5, "gamma": 4}]).softmax_focal
    assert list(spec.class_counts_f64) == [10.0, 0.0, 3.0]
    assert [(s.threshold, s.gamma) for s in spec.gamma_schedule] == [(0.2, 5.0), (0.5, 4.0)]
    assert _codec.loss_spec("softmax_focal", gamma_schedule=((0.2, 5.0),)) is _codec.loss_spec(
        "softmax_focal", gamma_schedule=((0.2, 5.0),))  # plain tuples: cached
    with pytest.raises(ValueError, match=r"gamma_schedule: each item is \(threshold, gamma\)"):
        _codec.loss_spec("softmax_focal", gamma_schedule=[(0.2,)])
    with pytest.raises(TypeError, match="softmax_focal.gamma_schedule has no parameter 'thresh'"):
        _codec.loss_spec("softmax_focal", gamma_schedule=[{"thresh": 0.2}])


# -- info, health -------------------------------------------------------------------------

def test_info(client):
    info = client.info()
    assert info.version
    assert [v.name for v in info.variants] == list(focalserve.VARIANTS)
    softmax = next(v for v in info.variants if v.name == "softmax_focal")
    assert {"gamma", "alpha", "ignore_index", "label_smoothing"} <= {p.name for p in softmax.parameters}
    assert {focalserve.pb.FLOAT32, focalserve.pb.FLOAT16, focalserve.pb.BFLOAT16} <= set(info.logits_dtypes)
    assert info.max_message_bytes > 0 and info.max_elements > 0
    assert info.backend


def test_health(client):
    assert client.health() == "SERVING"
    assert client.health("focal.v1.FocalLossService") == "SERVING"
    with pytest.raises(focalserve.FocalServeError) as e:
        client.health("no.such.Service")
    assert e.value.code == grpc.StatusCode.NOT_FOUND


def test_health_codec():
    from focalserve import _health
    assert _health.encode_request("") == b""
    assert _health.encode_request("a.B") == b"\x0a\x03a.B"
    assert _health.encode_request("x" * 200)[:3] == b"\x0a\xc8\x01"
    assert _health.decode_response(b"") == "UNKNOWN"
    assert _health.decode_response(b"\x08\x01") == "SERVING"
    assert _health.decode_response(b"\x12\x02hi\x08\x02") == "NOT_SERVING"  # unknown field skipped


def test_health_not_serving_while_draining():
    proc = ServerProcess("--debug-delay-ms", "1500")
    try:
        with focalserve.Client(proc.target, timeout=10) as c:
            assert c.health() == "SERVING"
            future = c.stub.Compute.future(c.build_request(X, Y))  # in flight while draining
            time.sleep(0.3)
            proc.proc.send_signal(__import__("signal").SIGTERM)
            time.sleep(0.3)
            try:
                status = c.health()
            except focalserve.FocalServeError as e:  # the listener may already be gone
                status = e.code.name
            assert status in ("NOT_SERVING", "UNAVAILABLE")
            assert future.result().count == 12, "in-flight call finishes during the drain"
    finally:
        assert proc.stop() == 0


# -- evaluate -----------------------------------------------------------------------------

def _batches(n=5, rows=17, classes=5, seed=0):
    rng = np.random.default_rng(seed)
    return [((rng.standard_normal((rows, classes)) * 2).astype(np.float32), rng.integers(0, classes, rows))
            for _ in range(n)]


def test_evaluate_matches_per_item_losses(client):
    batches = _batches()
    result = client.evaluate(iter(batches), "softmax_focal", gamma=2.0, alpha=[1, 2, 1, 0.5, 1])
    losses = np.concatenate([client.compute(x, y, reduction="none", gradient_dtype="float32", gamma=2.0,
                                            alpha=[1, 2, 1, 0.5, 1]).losses for x, y in batches]).astype(np.float64)
    targets = np.concatenate([y for _, y in batches])
    assert result.batches == 5 and result.count == 85
    assert result.total_loss == pytest.approx(losses.sum(), rel=1e-12)
    assert result.mean == pytest.approx(losses.mean(), rel=1e-12)
    np.testing.assert_allclose(result.class_loss_sums, np.bincount(targets, losses, 5), rtol=1e-12)
    np.testing.assert_array_equal(result.class_counts, np.bincount(targets, minlength=5))


def test_evaluate_dynamic_with_num_objects(client):
    rng = np.random.default_rng(4)
    batches = [(rng.standard_normal((4, 6)).astype(np.float32), (rng.random((4, 6)) < 0.3).astype(np.float32),
                np.array([1, 2, 3, 2], np.float32)) for _ in range(3)]
    result = client.evaluate(batches, "dynamic_focal")
    expected = sum(client.compute(x, t, "dynamic_focal", "sum", num_objects=n).loss for x, t, n in batches)
    assert result.count == 72 and result.total_loss == pytest.approx(expected, rel=1e-6)


def _weighted_qfl_batches(n=3, rows=10, classes=4, seed=8):
    """quality_focal batches in class-index form: (logits, targets, scores, weights [rows, C])."""
    rng = np.random.default_rng(seed)
    return [((rng.standard_normal((rows, classes)) * 2).astype(np.float32), rng.integers(0, classes + 1, rows),
             rng.random(rows).astype(np.float32),
             np.where(rng.random((rows, classes)) < 0.3, 0.0, rng.random((rows, classes)) * 2).astype(np.float32))
            for _ in range(n)]


def test_evaluate_batches_carry_weights_and_scores(client):
    """Every batch form: a mapping after (logits, targets[, num_objects]), or a dict batch; with
    weights, the totals are of the weighted losses, as compute() gives them."""
    batches = _weighted_qfl_batches()
    per_item = [client.compute(x, y, "quality_focal", "none", gradient_dtype="float32", scores=s, weights=w).losses
                for x, y, s, w in batches]
    want = sum(float(l.astype(np.float64).sum()) for l in per_item)
    sums = [client.compute(x, y, "quality_focal", "sum", scores=s, weights=w) for x, y, s, w in batches]
    forms = [
        [(x, y, {"scores": s, "weights": w}) for x, y, s, w in batches],
        [{"logits": x, "targets": y, "scores": s, "weights": w} for x, y, s, w in batches],
        [[x, y, None, {"scores": s, "weights": torch.from_numpy(w)}] for x, y, s, w in batches],  # lists, torch
    ]
    for form in forms:
        result = client.evaluate(iter(form), "quality_focal")
        assert result.batches == 3 and result.count == sum(r.count for r in sums)
        assert result.total_loss == pytest.approx(want, rel=1e-12)
        np.testing.assert_allclose(result.class_loss_sums, sum(l.astype(np.float64).sum(0) for l in per_item),
                                   rtol=1e-12)
    unweighted = client.evaluate([(x, y, {"scores": s}) for x, y, s, _ in batches], "quality_focal")
    assert unweighted.count == result.count and unweighted.total_loss != pytest.approx(want, rel=1e-3)


def test_evaluate_distribution_focal_rows_go_to_their_left_bin(client):
    """EvaluateResponse: a distribution_focal row's class is its target's left bin min(floor(y), B-2)
    (the top edge B-1 included), with the weighted losses."""
    rng = np.random.default_rng(14)
    B = 6
    batches = [((rng.standard_normal((5, B, 3)) * 2).astype(np.float32),
                rng.uniform(0, B - 1, (5, 3)).astype(np.float32), (rng.random((5, 3)) * 2).astype(np.float32))
               for _ in range(3)]
    batches[0][1].flat[:2] = (B - 1, 2.0)
    result = client.evaluate([{"logits": x, "targets": y, "weights": w} for x, y, w in batches], "distribution_focal")
    losses = np.concatenate([client.compute(x, y, "distribution_focal", "none", gradient_dtype="float32",
                                            weights=w).losses.ravel() for x, y, w in batches]).astype(np.float64)
    left = np.minimum(np.floor(np.concatenate([y.ravel() for _, y, _ in batches])), B - 2).astype(np.int64)
    assert result.count == 45 and result.total_loss == pytest.approx(losses.sum(), rel=1e-12)
    np.testing.assert_allclose(result.class_loss_sums, np.bincount(left, losses, B), rtol=1e-12)
    np.testing.assert_array_equal(result.class_counts, np.bincount(left, minlength=B))


def test_evaluate_quality_focal_mean_divides_by_at_least_one(client):
    x = np.random.default_rng(15).standard_normal((4, 3)).astype(np.float32)
    background = np.full(4, 3)
    total = client.compute(x, background, "quality_focal", "sum", scores=np.zeros(4, np.float32)).loss
    result = client.evaluate([(x, background, {"scores": np.zeros(4, np.float32)})], "quality_focal")
    assert result.count == 0 and result.total_loss == pytest.approx(total, rel=1e-12)
    assert result.mean == result.total_loss


def test_evaluate_num_objects_positionally_and_with_weights(client):
    rng = np.random.default_rng(9)
    batches = [(rng.standard_normal((4, 6)).astype(np.float32), (rng.random((4, 6)) < 0.3).astype(np.float32),
                np.array([1, 2, 3, 2], np.float32), (rng.random((4, 6)) * 2).astype(np.float16)) for _ in range(2)]
    want = sum(client.compute(x, t, "dynamic_focal", "sum", num_objects=n, weights=w).loss for x, t, n, w in batches)
    a = client.evaluate([(x, t, n, {"weights": w}) for x, t, n, w in batches], "dynamic_focal")
    b = client.evaluate([(x, t, {"num_objects": n, "weights": w}) for x, t, n, w in batches], "dynamic_focal")
    assert a.total_loss == b.total_loss == pytest.approx(want, rel=1e-6) and a.count == 48


@pytest.mark.parametrize("batch,match", [
    ((X, Y, {"weight": np.ones(12)}), "batch 0: unknown key 'weight'"),
    ({"logits": X, "targets": Y, "score": np.ones(12)}, "batch 0: unknown key 'score'"),
    ({"logits": X}, "batch 0: 'logits' and 'targets' are required"),
    ((X, Y, np.ones(12), {"num_objects": np.ones(12)}), "batch 0: num_objects given twice"),
    ((X, Y, np.ones(12), np.ones(12)), "batch 0: expected"),
    (X.sum(), "batch 0: a float32"),
])
def test_evaluate_bad_batch_forms(client, batch, match):
    with pytest.raises(ValueError, match=match):
        client.evaluate([batch])


class _ShortCountingServer:
    """A stand-in for a server that loses a batch: it answers Evaluate OK with one batch fewer
    than it read, the silent truncation the client must catch."""

    def __init__(self):
        from concurrent import futures
        from focalserve._proto import pb, rpc

        class Servicer(rpc.FocalLossServiceServicer):
            def Evaluate(self, request_iterator, context):
                return pb.EvaluateResponse(batches=max(sum(1 for _ in request_iterator) - 1, 0))

        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
        rpc.add_FocalLossServiceServicer_to_server(Servicer(), self.server)
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        self.server.start()

    def __enter__(self):
        return f"127.0.0.1:{self.port}"

    def __exit__(self, *exc):
        self.server.stop(None)


def test_evaluate_checks_the_server_accumulated_every_batch():
    with _ShortCountingServer() as target:
        with focalserve.Client(target, timeout=10) as c:
            with pytest.raises(focalserve.FocalServeError) as e:
                c.evaluate(_batches(3))
            assert e.value.code == grpc.StatusCode.DATA_LOSS
            assert "accumulated 2 batches but 3 were sent" in e.value.message

        async def run():
            async with focalserve.AsyncClient(target, timeout=10) as ac:
                await ac.evaluate(_batches(2))

        with pytest.raises(focalserve.FocalServeError, match="accumulated 1 batches but 2 were sent"):
            asyncio.run(run())


def test_evaluate_error_names_the_batch(client):
    batches = _batches(3)
    batches[1] = (batches[1][0], batches[1][1] + 10)
    with pytest.raises(focalserve.FocalServeError) as e:
        client.evaluate(batches)
    assert e.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "message 2 of the evaluation (request 'batch-1')" in e.value.message and "targets" in e.value.message


def test_evaluate_batch_iterator_errors_surface(client):
    def batches():
        yield _batches(1)[0]
        yield (X,)  # not a (logits, targets) pair

    with pytest.raises(ValueError, match="batch 1"):
        client.evaluate(batches())

    def failing():
        yield _batches(1)[0]
        raise RuntimeError("the data loader broke")

    with pytest.raises(RuntimeError, match="data loader broke"):
        client.evaluate(failing())


# -- async --------------------------------------------------------------------------------

def test_async_client(server, client):
    batches = _batches(4)
    sync_compute = client.compute(X, Y, compute_gradient=True, gamma=1.5)
    sync_eval = client.evaluate(batches, gamma=1.5)

    async def main():
        async with focalserve.AsyncClient(server.target, timeout=30) as ac:
            r = await ac.compute(X, Y, compute_gradient=True, gamma=1.5)
            many = await asyncio.gather(*(ac.compute(X, Y, reduction="sum") for _ in range(8)))

            async def agen():
                for b in batches:
                    await asyncio.sleep(0)
                    yield b
            ev_async = await ac.evaluate(agen(), gamma=1.5)
            ev_sync_iter = await ac.evaluate(batches, gamma=1.5)
            info = await ac.info()
            health = await ac.health()
            async def broken():
                yield batches[0]
                raise RuntimeError("async loader broke")
            with pytest.raises(RuntimeError, match="async loader broke"):
                await ac.evaluate(broken())
            with pytest.raises(focalserve.FocalServeError) as e:
                await ac.compute(X, Y + 5)
            return r, many, ev_async, ev_sync_iter, info, health, e.value

    r, many, ev_async, ev_sync_iter, info, health, error = asyncio.run(main())
    assert r.loss == sync_compute.loss and np.array_equal(r.gradient, sync_compute.gradient)  # deterministic
    assert len({m.loss for m in many}) == 1
    assert ev_async.total_loss == sync_eval.total_loss == ev_sync_iter.total_loss and ev_async.batches == 4
    assert info.version and health == "SERVING"
    assert error.code == grpc.StatusCode.INVALID_ARGUMENT and "targets" in error.message


def test_async_client_weights_and_scores(server, client):
    batches = _weighted_qfl_batches(2)
    x, y, sc, w = batches[0]
    sync = client.compute(x, y, "quality_focal", "none", compute_gradient=True, scores=sc, weights=w)
    sync_eval = client.evaluate([(b[0], b[1], {"scores": b[2], "weights": b[3]}) for b in batches], "quality_focal")

    async def main():
        async with focalserve.AsyncClient(server.target, timeout=30) as ac:
            r = await ac.compute(x, y, "quality_focal", "none", compute_gradient=True, scores=sc, weights=w)

            async def agen():
                for b in batches:
                    yield {"logits": b[0], "targets": b[1], "scores": b[2], "weights": b[3]}
            ev = await ac.evaluate(agen(), "quality_focal")

            async def bad():
                yield {"logits": x, "targets": y, "scores": sc}
                yield (x, y, {"wieghts": w})
            with pytest.raises(ValueError, match="batch 1: unknown key 'wieghts'"):
                await ac.evaluate(bad(), "quality_focal")
            with pytest.raises(focalserve.FocalServeError) as e:
                await ac.compute(x, y, "quality_focal", weights=w)
            return r, ev, e.value

    r, ev, error = asyncio.run(main())
    assert np.array_equal(r.losses, sync.losses) and np.array_equal(r.gradient, sync.gradient)
    assert ev.total_loss == sync_eval.total_loss and ev.batches == 2
    assert error.code == grpc.StatusCode.INVALID_ARGUMENT and "scores" in error.message


# -- auth and TLS -------------------------------------------------------------------------

def test_bearer_token(tmp_path):
    token_file = tmp_path / "token"
    token_file.write_text("s3cret\n")
    proc = ServerProcess("--auth-token-file", str(token_file))
    try:
        with focalserve.Client(proc.target, timeout=10) as anonymous:
            with pytest.raises(focalserve.FocalServeError) as e:
                anonymous.compute(X, Y)
            assert e.value.code == grpc.StatusCode.UNAUTHENTICATED
            assert anonymous.health() == "SERVING"  # health stays open
        with focalserve.Client(proc.target, timeout=10, token="wrong") as wrong:
            with pytest.raises(focalserve.FocalServeError) as e:
                wrong.info()
            assert e.value.code == grpc.StatusCode.UNAUTHENTICATED
        with focalserve.Client(proc.target, timeout=10, token="s3cret") as good:
            assert good.compute(X, Y).count == 12 and good.info().version
    finally:
        assert proc.stop() == 0


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl is needed to make a test certificate")
def test_tls(tmp_path):
    cert, key = make_test_certificate(tmp_path)
    proc = ServerProcess("--tls-cert", str(cert), "--tls-key", str(key))
    try:
        with focalserve.Client(proc.target, timeout=10, tls_root_certs=str(cert)) as c:  # a path
            assert c.compute(X, Y).count == 12 and c.health() == "SERVING"
        with focalserve.Client(proc.target, timeout=10, tls_root_certs=cert.read_bytes()) as c:  # PEM bytes
            assert c.info().version
        with focalserve.Client(proc.target, timeout=3) as plaintext:
            with pytest.raises(focalserve.FocalServeError) as e:
                plaintext.info()
            assert e.value.code == grpc.StatusCode.UNAVAILABLE
    finally:
        assert proc.stop() == 0


# -- inputs -------------------------------------------------------------------------------

def test_accepts_torch_lists_and_narrow_targets(client):
    base = client.compute(X, Y, reduction="sum").loss
    assert client.compute(torch.from_numpy(X), torch.from_numpy(Y), reduction="sum").loss == base
    assert client.compute(X.tolist(), Y.astype(np.int32), reduction="sum").loss == pytest.approx(base, rel=1e-7)
    assert client.compute(X, Y.astype(np.uint8), reduction="sum").loss == base
    assert client.compute(X.astype(">f4"), Y.astype(">i8"), reduction="sum").loss == base  # big-endian input
    assert client.compute(np.asfortranarray(X), Y, reduction="sum").loss == base  # non-contiguous input
    t = RNG.random(X.shape) < 0.3
    assert client.compute(X, t, "sigmoid_focal", reduction="sum").loss == pytest.approx(
        client.compute(X, t.astype(np.float32), "sigmoid_focal", reduction="sum").loss, rel=1e-12)


def test_weights_and_scores_any_float_dtype(client):
    """weights and scores go as they are given, NumPy or torch, in any float dtype; values exact
    in every dtype (multiples of 1/8 in [0, 2]) give the same answer."""
    rng = np.random.default_rng(12)
    y = rng.integers(0, 6, 12)  # 5 = background
    w = rng.integers(0, 17, (12, 5)) / 8.0
    sc = rng.integers(0, 9, 12) / 8.0
    base = client.compute(X, y, "quality_focal", "sum", compute_gradient=True, weights=w.astype(np.float32),
                          scores=sc.astype(np.float32))
    forms = [(w.astype(np.float64), sc.astype(np.float16)), (torch.tensor(w, dtype=torch.bfloat16),
              torch.tensor(sc, dtype=torch.float64)), (torch.tensor(w, dtype=torch.float16), sc.astype(">f4")),
             (np.asfortranarray(w.astype(np.float32)), focalserve.BFloat16.from_float32(sc.astype(np.float32))),
             (w.tolist(), sc.tolist())]
    for weights, scores in forms:
        r = client.compute(X, y, "quality_focal", "sum", compute_gradient=True, weights=weights, scores=scores)
        assert r.loss == base.loss and np.array_equal(r.gradient, base.gradient), (type(weights), type(scores))
    request = client.build_request(X, y, "quality_focal", weights=w, scores=sc.astype(np.float16))
    assert request.weights.dtype == focalserve.pb.FLOAT64 and list(request.weights.shape) == [12, 5]
    assert request.scores.dtype == focalserve.pb.FLOAT16 and list(request.scores.shape) == [12]
    assert not request.HasField("num_objects")
    assert not client.build_request(X, Y).HasField("weights") and not client.build_request(X, Y).HasField("scores")


def test_weights_scale_each_item_and_mean_keeps_the_count(client):
    rng = np.random.default_rng(13)
    w = np.where(rng.random(12) < 0.25, 0.0, rng.random(12) * 3).astype(np.float32)
    plain = client.compute(X, Y, reduction="none", compute_gradient=True)
    weighted = client.compute(X, Y, reduction="none", compute_gradient=True, weights=w)
    # Both are float32 results of the same float32 item computation; the weighted one is its
    # product with w, rounded once more (or w folded in earlier: a few float32 roundings either
    # way, u = 6e-8 each), so 1e-6 = 16 u relative, and for the gradient the same fraction of
    # its largest element as an absolute floor (elements near 0 carry the largest one's error).
    np.testing.assert_allclose(weighted.losses, plain.losses * w, rtol=1e-6)
    g_want = plain.gradient * w[:, None]
    np.testing.assert_allclose(weighted.gradient, g_want, rtol=1e-6, atol=1e-6 * np.abs(g_want).max())
    assert not weighted.gradient[w == 0].any()
    mean = client.compute(X, Y, compute_gradient=True, weights=w)
    assert mean.count == 12 and mean.loss == pytest.approx(float((plain.losses.astype(np.float64) * w).sum()) / 12,
                                                           rel=1e-6)


def test_request_id_round_trips(client):
    assert client.compute(X, Y, request_id="abc-123").request_id == "abc-123"


# -- requests built without an intermediate copy -------------------------------------------------

_WIRE_RNG = np.random.default_rng(23)
_BIG = _WIRE_RNG.standard_normal((300, 20)).astype(np.float32)  # 24,000 bytes: joined in
_SMALL = _WIRE_RNG.standard_normal((6, 20)).astype(np.float32)  # 480 bytes: in the message


@pytest.mark.parametrize("case", [
    dict(logits=_BIG, targets=_WIRE_RNG.integers(0, 20, 300), variant="softmax_focal"),
    dict(logits=_SMALL, targets=_WIRE_RNG.integers(0, 20, 6), variant="softmax_focal"),
    dict(logits=_BIG, targets=(_BIG > 0).astype(np.float32), variant="sigmoid_focal", compute_gradient=True,
         weights=np.abs(_BIG), grad_output=np.ones_like(_BIG), reduction="none", gamma=0.5),
    dict(logits=_BIG.astype(np.float16), targets=(_BIG > 0).astype(np.float16), variant="sigmoid_focal"),
    dict(logits=_BIG.T, targets=(_BIG.T > 0).astype(np.float32), variant="sigmoid_focal"),  # not contiguous
    dict(logits=torch.from_numpy(_BIG), targets=torch.from_numpy(_WIRE_RNG.integers(0, 20, 300)),
         variant="softmax_focal", grad_output=2.0, compute_gradient=True),
], ids=["index-targets", "small", "every-tensor", "float16", "transposed", "torch"])
def test_request_bytes_are_the_messages_bytes(case):
    """The bytes compute() sends parse to the message build_request makes, field for field."""
    case = dict(case)
    logits, targets = case.pop("logits"), case.pop("targets")
    expected = focalserve.Client.build_request(logits, targets, **case)
    sent = focalserve.pb.ComputeRequest.FromString(
        focalserve.Client._request_bytes(focalserve.Client, logits, targets, **case))
    assert sent == expected
    assert sent.SerializeToString(deterministic=True) == expected.SerializeToString(deterministic=True)


def test_compute_sends_large_tensors_apart_and_answers_as_compute_request(client):
    logits, targets = _BIG, (_BIG > 0.5).astype(np.float32)
    apart: list = []
    focalserve.Client.build_request(logits, targets, "sigmoid_focal", _data_apart=apart)
    assert [name for name, _ in apart] == ["logits", "targets"]  # both above the threshold
    direct = client.compute(logits, targets, "sigmoid_focal", compute_gradient=True, reduction="none")
    prepared = client.compute_request(client.build_request(logits, targets, "sigmoid_focal", compute_gradient=True,
                                                           reduction="none"))
    np.testing.assert_array_equal(direct.gradient, prepared.gradient)
    np.testing.assert_array_equal(direct.losses, prepared.losses)
    assert direct.loss == prepared.loss
