"""A structured mutation fuzzer against the real focalserve: valid requests of every variant,
mutated one or a few fields at a time the way a hostile or broken client would (shapes, dtypes,
byte lengths, values, parameters, missing fields, and raw byte flips of the serialized message),
with every answer checked:

* the status is OK, INVALID_ARGUMENT or RESOURCE_EXHAUSTED, never anything else;
* an error's message is short and names what is wrong (a field, or the message);
* an accepted request whose logits are finite and within the contract's ±1e4 gets finite
  results of the right shapes;

and the server is alive and healthy at the end. The cases come from a fixed seed: the same
5,000+ in every run.
"""
from __future__ import annotations

import math
import os
import warnings

import grpc
import numpy as np
import pytest

from conftest import ServerProcess
from focalserve import _codec
from focalserve._proto import pb, rpc

CASES = int(os.environ.get("FOCAL_HOSTILE_CASES", "5200"))  # more for a longer run
SEED = 90210
LIMITS = ["--max-elements", "200000", "--max-classes", "4096", "--max-message-bytes", "4194304"]
# Words one of which every error message carries: the field at fault, or the message itself.
FIELDS = ("logits", "targets", "loss", "grad_output", "num_objects", "weights", "scores", "gradient_dtype",
          "the request", "this server", "--max-")
ALLOWED = {grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.RESOURCE_EXHAUSTED}
EXTREME_FLOATS = [0.0, -0.0, 1.0, -1.0, 0.5, 1e4, -1e4, 1e8, 1e15, 1e308, -1e308, 5e-324, float("nan"),
                  float("inf"), -float("inf"), 1001.0, 2.0]
EXTREME_INTS = [0, 1, -1, 2, 3, 4, 7, 255, 256, 2**31 - 1, 2**31, -(2**31), 2**62, 2**63 - 1, -(2**63)]


@pytest.fixture(scope="module")
def hostile_server():
    proc = ServerProcess(*LIMITS)
    yield proc
    assert proc.stop() == 0, proc.stderr_text()


def base_requests(rng):
    x = rng.standard_normal((4, 5)).astype(np.float32)
    y = np.array([0, 4, 1, 2])
    soft = (rng.random((4, 5)) < 0.4).astype(np.float32)
    spatial = rng.standard_normal((2, 3, 4)).astype(np.float16)
    return [
        _codec.compute_request(x, y, variant="softmax_focal", compute_gradient=True, alpha=[1, 2, 1, 1, 0.5],
                               ignore_index=4, label_smoothing=0.1),
        _codec.compute_request(spatial, rng.integers(0, 3, (2, 4)), variant="softmax_focal", reduction="none",
                               compute_gradient=True),
        _codec.compute_request(x, soft, variant="sigmoid_focal", reduction="sum", compute_gradient=True),
        _codec.compute_request(x, y, variant="sigmoid_focal", reduction="none", compute_gradient=True,
                               grad_output=rng.standard_normal((4, 5)).astype(np.float32)),
        _codec.compute_request(x, y, variant="focal_cosine", compute_gradient=True),
        _codec.compute_request(x, soft, variant="dynamic_focal", compute_gradient=True,
                               num_objects=np.array([1, 2, 0, 3], np.float32)),
        # the catalogue (§5), with the per-item weights and quality_focal's scores
        _codec.compute_request(x, soft, variant="asymmetric", reduction="none", compute_gradient=True,
                               gamma_neg=0.5, weights=rng.random((4, 5)).astype(np.float32)),
        _codec.compute_request(x, np.array([0, 5, 1, 2]), variant="quality_focal", compute_gradient=True,
                               ignore_index=2, scores=np.array([0.5, 0.1, 1.0, 0.0], np.float32),
                               weights=rng.random((4, 5)).astype(np.float16)),
        _codec.compute_request(x, soft * rng.random((4, 5)).astype(np.float32), variant="varifocal",
                               reduction="sum", compute_gradient=True, gamma=1.5),
        _codec.compute_request(x, np.array([0, 5, 1, 2]), variant="focal_star", compute_gradient=True, alpha=0.25,
                               beta=1.0),
        _codec.compute_request(spatial, np.array([[0.0, 2.0, 1.5, 0.2], [1.0, 0.0, 2.0, 0.7]], np.float32),
                               variant="distribution_focal", reduction="none", compute_gradient=True,
                               weights=np.ones((2, 4), np.float32)),
    ]


def _set_one(data: bytes, dtype, value, rng) -> bytes:
    """`data` with one of its `dtype` values replaced (a ragged tail, left by another mutation,
    is kept as it is)."""
    size = np.dtype(dtype).itemsize
    whole = len(data) // size * size
    if whole == 0:
        return data
    a = np.frombuffer(data[:whole], dtype).copy()
    with np.errstate(over="ignore"):  # 1e308 becomes inf in float32, as intended
        a[int(rng.integers(0, a.size))] = np.asarray(value).astype(dtype)
    return a.tobytes() + data[whole:]


def _variant_message(req):
    """The variant's parameter message (a fresh softmax_focal one when a mutation removed it)."""
    return getattr(req.loss, req.loss.WhichOneof("variant") or "softmax_focal")


def mutate(req: pb.ComputeRequest, rng) -> pb.ComputeRequest:
    """One structured mutation (sometimes two) of a copy of `req`."""
    r = pb.ComputeRequest()
    r.CopyFrom(req)
    for _ in range(1 + int(rng.random() < 0.3)):
        kind = int(rng.integers(0, 12))
        tensor = [r.logits, r.targets, r.num_objects, r.grad_output_tensor, r.weights,
                  r.scores][int(rng.integers(0, 6))]
        if kind == 0:  # a dimension
            if len(tensor.shape):
                tensor.shape[int(rng.integers(0, len(tensor.shape)))] = int(rng.choice(EXTREME_INTS))
        elif kind == 1:  # the rank
            if rng.random() < 0.5:
                tensor.shape.extend([1] * int(rng.integers(1, 20)))
            elif len(tensor.shape):
                del tensor.shape[-1]
        elif kind == 2:  # the dtype, known or not
            tensor.dtype = int(rng.integers(0, 12))
        elif kind == 3:  # the byte length
            data = tensor.data
            cut = int(rng.integers(0, len(data) + 1)) if data else 0
            tensor.data = data[:cut] if rng.random() < 0.5 else data + bytes(int(rng.integers(1, 9)))
        elif kind == 4:  # byte flips inside a tensor
            if tensor.data:
                data = bytearray(tensor.data)
                for _ in range(int(rng.integers(1, 4))):
                    data[int(rng.integers(0, len(data)))] ^= 1 << int(rng.integers(0, 8))
                tensor.data = bytes(data)
        elif kind == 5:  # a float value of the logits
            if r.logits.dtype == pb.FLOAT32:
                r.logits.data = _set_one(r.logits.data, np.float32, rng.choice(EXTREME_FLOATS), rng)
        elif kind == 6:  # a target value
            if r.targets.dtype == pb.INT64:
                r.targets.data = _set_one(r.targets.data, np.int64, int(rng.choice(EXTREME_INTS)), rng)
            elif r.targets.dtype == pb.FLOAT32:
                r.targets.data = _set_one(r.targets.data, np.float32, rng.choice(EXTREME_FLOATS), rng)
        elif kind == 7:  # a scalar parameter of the variant
            v = _variant_message(r)
            names = [f.name for f in v.DESCRIPTOR.fields if f.type in (f.TYPE_DOUBLE, f.TYPE_FLOAT)
                     and f.label != f.LABEL_REPEATED]
            if names:
                setattr(v, str(rng.choice(names)), float(rng.choice(EXTREME_FLOATS)))
        elif kind == 8:  # an integer or enum parameter of the variant, or alpha's length
            v = _variant_message(r)
            ints = [f.name for f in v.DESCRIPTOR.fields if f.type in (f.TYPE_INT64, f.TYPE_INT32, f.TYPE_ENUM)]
            if ints and rng.random() < 0.7:
                name = str(rng.choice(ints))
                field = v.DESCRIPTOR.fields_by_name[name]
                value = int(rng.choice(EXTREME_INTS))
                setattr(v, name, value % 2**31 if field.type == field.TYPE_ENUM else value)
            elif hasattr(v, "alpha") and v.DESCRIPTOR.fields_by_name["alpha"].label == 3:
                del v.alpha[:]
                v.alpha.extend(float(rng.choice(EXTREME_FLOATS)) for _ in range(int(rng.integers(0, 7))))
        elif kind == 9:  # the reduction, the normalizer, the upstream gradient
            choice = int(rng.integers(0, 3))
            if choice == 0:
                r.loss.reduction = int(rng.integers(0, 5))
            elif choice == 1:
                r.loss.normalizer = float(rng.choice(EXTREME_FLOATS))
            else:
                r.grad_output_scalar = float(rng.choice(EXTREME_FLOATS))
        elif kind == 10:  # a field left out
            name = str(rng.choice(["logits", "targets", "loss", "num_objects", "grad_output_tensor", "weights",
                                   "scores"]))
            r.ClearField(name)
            if name == "loss" and rng.random() < 0.5:
                r.loss.reduction = pb.SUM  # a loss with no variant
        else:  # flags
            r.allow_non_finite = not r.allow_non_finite
            r.compute_gradient = bool(rng.random() < 0.5)
            if rng.random() < 0.5:
                r.gradient_dtype = int(rng.integers(0, 9))
    if rng.random() < 0.1:
        r.request_id = "x" * int(rng.integers(0, 3000)) + "\n\x00\xff"
    return r


def contract_inputs(r: pb.ComputeRequest) -> bool:
    """Whether the logits are finite and within ±1e4 and every output is float32 or wider: the
    contract's promise of finite results holds for these."""
    dtypes = {pb.FLOAT32: np.float32, pb.FLOAT64: np.float64, pb.FLOAT16: np.float16}
    if r.logits.dtype not in dtypes or r.allow_non_finite:
        return False
    if r.gradient_dtype not in (0, pb.FLOAT32, pb.FLOAT64) or r.logits.dtype == pb.FLOAT16 and r.gradient_dtype == 0:
        return False
    size = np.dtype(dtypes[r.logits.dtype]).itemsize
    x = np.frombuffer(r.logits.data[:len(r.logits.data) // size * size], dtypes[r.logits.dtype]).astype(np.float64)
    return bool(np.all(np.isfinite(x)) and np.all(np.abs(x) <= 1e4))


def check_answer(kind, request, code, message, response):
    assert code in ALLOWED, f"{kind}: {code} {message!r}"
    if code != grpc.StatusCode.OK:
        assert message and len(message) <= 1024, f"{kind}: message of {len(message)} bytes"
        assert any(word in message for word in FIELDS), f"{kind}: names nothing: {message!r}"
        return
    if response is None:
        return
    if request.compute_gradient:
        assert list(response.gradient.shape) == list(request.logits.shape)
    if request is not None and contract_inputs(request):
        assert math.isfinite(response.loss), f"{kind}: loss {response.loss} for {request}"
        if response.HasField("gradient"):
            g = _codec.from_tensor(response.gradient).astype(np.float64)
            assert np.all(np.isfinite(g)), f"{kind}: non-finite gradient"
        if response.HasField("losses"):
            assert np.all(np.isfinite(_codec.from_tensor(response.losses).astype(np.float64)))


def test_mutated_requests_are_answered_clearly_and_the_server_survives(hostile_server):
    rng = np.random.default_rng(SEED)
    bases = base_requests(rng)
    channel = grpc.insecure_channel(hostile_server.target)
    stub = rpc.FocalLossServiceStub(channel)
    raw = channel.unary_unary("/focal.v1.FocalLossService/Compute", request_serializer=None,
                              response_deserializer=None)
    codes = {}
    for i in range(CASES):
        base = bases[i % len(bases)]
        if i % 10 == 9:  # raw byte flips of the serialized message: parse errors or odd values
            data = bytearray(base.SerializeToString())
            for _ in range(int(rng.integers(1, 6))):
                data[int(rng.integers(0, len(data)))] = int(rng.integers(0, 256))
            try:
                reply = raw(bytes(data), timeout=10)
                code, message = grpc.StatusCode.OK, ""
                response = pb.ComputeResponse.FromString(reply)
            except grpc.RpcError as e:
                code, message, response = e.code(), e.details() or "", None
            request = pb.ComputeRequest()
            try:
                with warnings.catch_warnings():  # Python's parser warns where C++'s refuses
                    warnings.simplefilter("ignore")
                    request.ParseFromString(bytes(data))
            except Exception:  # the server said why; nothing to compare the answer with
                request = None
            # The server's parser is the stricter one (proto3 strings must be UTF-8): what it
            # cannot parse it says so; what parses is answered like any other request.
            if code == grpc.StatusCode.INVALID_ARGUMENT and "do not parse" in message:
                pass
            else:
                assert request is not None, f"parsed bytes Python's protobuf rejects: {code} {message!r}"
                check_answer("raw", request, code, message, response)
        else:
            request = mutate(base, rng)
            try:
                response = stub.Compute(request, timeout=10)
                code, message = grpc.StatusCode.OK, ""
            except grpc.RpcError as e:
                code, message, response = e.code(), e.details() or "", None
            check_answer("structured", request, code, message, response)
        codes[code.name] = codes.get(code.name, 0) + 1
    print(f"\nhostile: {CASES} cases, answers by code: {codes}")
    assert codes.get("OK", 0) > CASES // 20, "the mutations should leave some requests valid"
    assert codes.get("INVALID_ARGUMENT", 0) > CASES // 4
    # Alive and healthy, and still computing right.
    from focalserve import _health
    health = channel.unary_unary(_health.METHOD, request_serializer=_health.encode_request,
                                 response_deserializer=_health.decode_response)
    assert health("", timeout=5) == "SERVING"
    good = stub.Compute(bases[0], timeout=10)
    assert math.isfinite(good.loss) and good.count == 3
    channel.close()
