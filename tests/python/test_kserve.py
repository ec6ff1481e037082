"""The Open Inference Protocol (KServe v2) endpoint, through a client generated here from
proto/inference/grpc_predict_v2.proto as any KServe/Triton client is: every RPC, every variant
and option of cases.py, both content encodings, every dtype, the error cases; every answer
bit-identical to focal.v1 Compute of the same request."""
from __future__ import annotations

import importlib
import queue
import shutil
import signal
import subprocess
import sys
import threading
import time

import grpc
import numpy as np
import pytest
import torch

import focalserve
from cases import CASE_IDS, CASES, REDUCTIONS
from conftest import REPO
from helpers import stable_seed, wire_extra, wire_logits, wire_targets

VARIANTS = list(focalserve.VARIANTS)


@pytest.fixture(scope="module")
def v2(tmp_path_factory):
    """The protocol's generated modules (pb2, pb2_grpc)."""
    out = tmp_path_factory.mktemp("kserve_stubs")
    subprocess.run(["/usr/bin/protoc", f"-I{REPO / 'proto'}", f"--python_out={out}", f"--grpc_python_out={out}",
                    "--plugin=protoc-gen-grpc_python=/usr/bin/grpc_python_plugin",
                    str(REPO / "proto" / "inference" / "grpc_predict_v2.proto")], check=True)
    sys.path.insert(0, str(out))
    try:
        pb2 = importlib.import_module("inference.grpc_predict_v2_pb2")
        pb2_grpc = importlib.import_module("inference.grpc_predict_v2_pb2_grpc")
    finally:
        sys.path.remove(str(out))
    return pb2, pb2_grpc


@pytest.fixture(scope="module")
def stub(v2, server):
    channel = grpc.insecure_channel(server.target, options=[("grpc.max_receive_message_length", -1),
                                                            ("grpc.max_send_message_length", -1)])
    yield v2[1].GRPCInferenceServiceStub(channel)
    channel.close()


# -- building requests as a KServe client does --------------------------------------------

DATATYPES = {"float32": "FP32", "float64": "FP64", "float16": "FP16", "bfloat16": "BF16",
             "int64": "INT64", "int32": "INT32", "uint8": "UINT8"}
TYPED_FIELD = {"FP32": "fp32_contents", "FP64": "fp64_contents", "INT64": "int64_contents",
               "INT32": "int_contents", "UINT8": "uint_contents"}


def _raw(x) -> tuple[str, bytes]:
    """(datatype, little-endian bytes) of a numpy array or torch tensor."""
    if isinstance(x, torch.Tensor):
        name = str(x.dtype).replace("torch.", "")
        if x.dtype in (torch.float16, torch.bfloat16):
            return DATATYPES[name], x.contiguous().view(torch.int16).numpy().tobytes()
        x = x.numpy()
    x = np.ascontiguousarray(x)
    return DATATYPES[str(x.dtype)], x.tobytes()


def add_input(pb2, request, name, x, typed):
    t = request.inputs.add(name=name, shape=list(x.shape))
    datatype, raw = _raw(x)
    t.datatype = datatype
    if typed:
        values = x.numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
        getattr(t.contents, TYPED_FIELD[datatype]).extend(values.reshape(-1).tolist())
    else:
        request.raw_input_contents.append(raw)


def set_parameter(request, name, value, as_string=False):
    """A parameter as a KServe client would send it: numbers as double/int64 (or, `as_string`,
    as string_param text), lists as comma-separated strings, γ schedules as threshold:gamma."""
    p = request.parameters[name]
    if isinstance(value, bool):
        p.bool_param = value
    elif isinstance(value, str):
        p.string_param = value
    elif isinstance(value, (list, tuple)):
        if value and isinstance(value[0], (list, tuple)):
            p.string_param = ",".join(f"{t!r}:{g!r}" for t, g in value)
        else:
            p.string_param = ",".join(repr(float(v)) for v in value)
    elif as_string:
        p.string_param = repr(value)
    elif isinstance(value, int):
        p.int64_param = value
    else:
        p.double_param = float(value)


def infer_request(pb2, variant, logits, targets, extra, reduction, params, typed=False, outputs=(),
                  grad_output=None, as_string=False, request_id="kserve-test"):
    r = pb2.ModelInferRequest(model_name=variant, id=request_id)
    add_input(pb2, r, "logits", logits, typed)
    add_input(pb2, r, "targets", targets, typed)
    for name, value in extra.items():
        add_input(pb2, r, name, value, typed)
    if grad_output is not None:
        add_input(pb2, r, "grad_output", grad_output, typed)
    set_parameter(r, "reduction", reduction)
    for name, value in params.items():
        set_parameter(r, name, value, as_string)
    for name in outputs:
        r.outputs.add(name=name)
    return r


def output_arrays(response) -> dict:
    """{name: (datatype, shape, bytes)} of a response, raw or typed."""
    out = {}
    for i, o in enumerate(response.outputs):
        if response.raw_output_contents:
            data = response.raw_output_contents[i]
        else:
            field = TYPED_FIELD[o.datatype]
            dtype = {"FP32": np.float32, "FP64": np.float64, "INT64": np.int64}[o.datatype]
            data = np.array(getattr(o.contents, field), dtype=dtype).tobytes()
        out[o.name] = (o.datatype, list(o.shape), data)
    return out


def v1_compute(client, variant, logits, targets, extra, reduction, params, gradient=True, grad_output=None):
    return client.compute(logits, targets, variant, reduction=reduction, compute_gradient=gradient,
                          grad_output=grad_output, **extra, **params)


def assert_identical(response, result, reduction, gradient=True):
    """ModelInfer's outputs are focal.v1's answer, byte for byte."""
    got = output_arrays(response)
    assert got["loss"] == ("FP64", [1], np.array([result.loss], np.float64).tobytes())
    assert got["count"] == ("INT64", [1], np.array([result.count], np.int64).tobytes())
    for name, tensor in (("losses", result.response.losses), ("gradient", result.response.gradient)):
        wanted = name in got
        assert wanted == (name == "gradient" and gradient or name == "losses" and reduction == "none"), name
        if wanted:
            datatype, shape, data = got[name]
            assert shape == list(tensor.shape), name
            assert datatype == DATATYPES[focalserve._codec.dtype_name(tensor.dtype)], name
            assert data == tensor.data, f"{name}: not bit-identical to focal.v1"


# -- every variant and option, both encodings, every dtype --------------------------------

ENCODINGS = [("raw", "float32"), ("raw", "float64"), ("raw", "float16"), ("raw", "bfloat16"),
             ("typed", "float32"), ("typed", "float64")]


@pytest.mark.parametrize("encoding,dtype", ENCODINGS, ids=[f"{e}-{d}" for e, d in ENCODINGS])
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_model_infer_is_bit_identical_to_compute(v2, stub, client, case, reduction, encoding, dtype):
    name, variant, params, make = case
    rng = np.random.default_rng(stable_seed("kserve", name, reduction, encoding, dtype))
    x64, t, extra = make(rng)
    logits, targets, extra = wire_logits(x64, dtype), wire_targets(t), wire_extra(extra)
    typed = encoding == "typed"
    # Upstream gradients: a scalar for mean/sum, per item for none (as grad_output input).
    loss_shape = (t.shape if variant in ("softmax_focal", "focal_cosine", "distribution_focal") else x64.shape)
    upstream = (np.float32(0.75) if reduction != "none"
                else rng.standard_normal(loss_shape).astype(np.float32))
    request = infer_request(v2[0], variant, logits, targets, extra, reduction, params, typed=typed,
                            grad_output=np.atleast_1d(upstream), as_string=len(name) % 2 == 0)
    response = stub.ModelInfer(request, timeout=30)
    assert response.model_name == variant and response.model_version == "1" and response.id == "kserve-test"
    assert bool(response.raw_output_contents) != typed
    result = v1_compute(client, variant, logits, targets, extra, reduction, params,
                        grad_output=float(upstream) if reduction != "none" else upstream)
    assert_identical(response, result, reduction)


@pytest.mark.parametrize("targets_dtype", ["int64", "int32", "uint8"])
@pytest.mark.parametrize("encoding", ["raw", "typed"])
def test_class_index_target_dtypes(v2, stub, client, targets_dtype, encoding):
    rng = np.random.default_rng(stable_seed("kserve-targets", targets_dtype, encoding))
    x = rng.standard_normal((20, 6)).astype(np.float32)
    y = rng.integers(0, 6, 20).astype(targets_dtype)
    for variant in ("softmax_focal", "sigmoid_focal"):
        r = infer_request(v2[0], variant, x, y, {}, "sum", {"gamma": 1.5}, typed=encoding == "typed")
        assert_identical(stub.ModelInfer(r, timeout=30), v1_compute(client, variant, x, y, {}, "sum", {"gamma": 1.5}),
                         "sum")


def test_requested_outputs_only_and_in_order(v2, stub, client):
    rng = np.random.default_rng(5)
    x = rng.standard_normal((16, 5)).astype(np.float32)
    y = rng.integers(0, 5, 16)
    r = infer_request(v2[0], "softmax_focal", x, y, {}, "mean", {}, outputs=["loss"])
    response = stub.ModelInfer(r, timeout=30)
    assert [o.name for o in response.outputs] == ["loss"]
    # No gradient asked for: none computed, and the loss is Compute's without a gradient.
    assert output_arrays(response)["loss"][2] == np.array(
        [v1_compute(client, "softmax_focal", x, y, {}, "mean", {}, gradient=False).loss]).tobytes()
    r = infer_request(v2[0], "softmax_focal", x, y, {}, "none", {}, outputs=["gradient", "count", "losses"])
    response = stub.ModelInfer(r, timeout=30)
    assert [o.name for o in response.outputs] == ["gradient", "count", "losses"]
    result = v1_compute(client, "softmax_focal", x, y, {}, "none", {})
    got = output_arrays(response)
    assert got["gradient"][2] == result.response.gradient.data and got["losses"][2] == result.response.losses.data
    assert response.parameters["backend"].string_param == result.backend


# -- metadata, as a KServe/Triton client checks at startup --------------------------------

def test_startup_checks(v2, stub, server):
    pb2 = v2[0]
    assert stub.ServerLive(pb2.ServerLiveRequest(), timeout=10).live
    assert stub.ServerReady(pb2.ServerReadyRequest(), timeout=10).ready
    meta = stub.ServerMetadata(pb2.ServerMetadataRequest(), timeout=10)
    assert meta.name == "focalserve" and meta.version
    assert set(meta.extensions) == {"parameters", "model_configuration", "statistics"}
    for variant in VARIANTS:
        assert stub.ModelReady(pb2.ModelReadyRequest(name=variant), timeout=10).ready
        assert stub.ModelReady(pb2.ModelReadyRequest(name=variant, version="1"), timeout=10).ready
        m = stub.ModelMetadata(pb2.ModelMetadataRequest(name=variant), timeout=10)
        assert m.name == variant and list(m.versions) == ["1"] and m.platform == "focalserve"
        inputs = [i.name for i in m.inputs]
        assert inputs[:2] == ["logits", "targets"] and "weights" in inputs and "grad_output" in inputs
        assert ("num_objects" in inputs) == (variant == "dynamic_focal")
        assert ("scores" in inputs) == (variant == "quality_focal")
        assert all(d == -1 for i in m.inputs for d in i.shape)
        outputs = {o.name: (o.datatype, list(o.shape)) for o in m.outputs}
        assert outputs["loss"] == ("FP64", [1]) and outputs["count"] == ("INT64", [1])
        assert set(outputs) == {"loss", "count", "losses", "gradient"}
        # Triton's tools read the same description from ModelConfig.
        c = stub.ModelConfig(pb2.ModelConfigRequest(name=variant), timeout=10).config
        assert c.name == variant and c.platform == "focalserve" and c.max_batch_size == 0
        assert [(i.name, pb2.DataType.Name(i.data_type), list(i.dims)) for i in c.input] == \
            [(i.name, "TYPE_" + i.datatype, list(i.shape)) for i in m.inputs]
        assert [i.optional for i in c.input] == [i.name not in ("logits", "targets") for i in m.inputs]
        assert [(o.name, pb2.DataType.Name(o.data_type), list(o.dims)) for o in c.output] == \
            [(o.name, "TYPE_" + o.datatype, list(o.shape)) for o in m.outputs]


def test_model_statistics_count_inferences(v2, stub):
    pb2 = v2[0]
    before = stub.ModelStatistics(pb2.ModelStatisticsRequest(name="focal_star"), timeout=10).model_stats[0]
    started_ms = int(time.time() * 1000)
    x = np.zeros((4, 3), np.float32)
    ok = infer_request(pb2, "focal_star", x, np.zeros((4, 3), np.float32), {}, "mean", {})
    bad = infer_request(pb2, "focal_star", x, np.full((4, 3), 0.5, np.float32), {}, "mean", {})  # not 0/1
    stub.ModelInfer(ok, timeout=10)
    stub.ModelInfer(ok, timeout=10)
    with pytest.raises(grpc.RpcError):
        stub.ModelInfer(bad, timeout=10)
    after = stub.ModelStatistics(pb2.ModelStatisticsRequest(name="focal_star"), timeout=10).model_stats[0]
    assert after.name == "focal_star" and after.version == "1"
    assert after.inference_stats.success.count - before.inference_stats.success.count == 2
    assert after.inference_stats.fail.count - before.inference_stats.fail.count == 1
    assert after.inference_count - before.inference_count == 2
    assert after.last_inference >= max(before.last_inference, started_ms)
    every = stub.ModelStatistics(pb2.ModelStatisticsRequest(), timeout=10)
    assert [m.name for m in every.model_stats] == VARIANTS


def test_stream_infer_answers_in_order_and_goes_on_after_an_error(v2, stub, client):
    pb2 = v2[0]
    rng = np.random.default_rng(9)
    batches = []
    for i in range(6):
        x = rng.standard_normal((8, 4)).astype(np.float32)
        y = rng.integers(0, 4, 8)
        variant = "softmax_focal" if i != 3 else "no_such_loss"
        batches.append((variant, x, y, infer_request(pb2, variant, x, y, {}, "sum", {}, request_id=f"b{i}")))
    answers = list(stub.ModelStreamInfer(iter([b[3] for b in batches]), timeout=30))
    assert len(answers) == 6
    for i, ((variant, x, y, _), a) in enumerate(zip(batches, answers)):
        assert a.infer_response.id == f"b{i}"
        if i == 3:
            assert a.error_message.startswith("NOT_FOUND: message 4 of the stream (request 'b3'): model 'no_such_loss' "
                                            "is not served here"), a.error_message
            continue
        assert a.error_message == ""
        assert_identical(a.infer_response, v1_compute(client, "softmax_focal", x, y, {}, "sum", {}), "sum")


# -- errors: each names the input, output or parameter ------------------------------------

def _base(pb2):
    """A valid softmax_focal request, raw contents, for each error case to break one way."""
    return infer_request(pb2, "softmax_focal", np.zeros((4, 3), np.float32), np.array([0, 1, 2, 1]), {}, "mean", {})


def _err(stub, request):
    with pytest.raises(grpc.RpcError) as e:
        stub.ModelInfer(request, timeout=10)
    return e.value.code(), e.value.details()


ERRORS = [
    ("unknown model", lambda r: setattr(r, "model_name", "focal"), grpc.StatusCode.NOT_FOUND,
     "model 'focal' is not served here"),
    ("unknown version", lambda r: setattr(r, "model_version", "2"), grpc.StatusCode.NOT_FOUND,
     "has no version '2'"),
    ("unknown input", lambda r: setattr(r.inputs[1], "name", "labels"), grpc.StatusCode.INVALID_ARGUMENT,
     "input 'labels' is not an input of softmax_focal"),
    ("input the variant lacks", lambda r: setattr(r.inputs[1], "name", "num_objects"),
     grpc.StatusCode.INVALID_ARGUMENT, "input 'num_objects' is not an input of softmax_focal"),
    ("missing targets", lambda r: (r.inputs.pop(), r.raw_input_contents.pop()), grpc.StatusCode.INVALID_ARGUMENT,
     "input 'targets' is missing"),
    ("bad datatype", lambda r: setattr(r.inputs[0], "datatype", "FP8"), grpc.StatusCode.INVALID_ARGUMENT,
     "input 'logits' has datatype 'FP8'"),
    ("raw size", lambda r: r.raw_input_contents.__setitem__(0, b"\0" * 47), grpc.StatusCode.INVALID_ARGUMENT,
     "raw_input_contents[0] has 47"),
    ("raw count", lambda r: r.raw_input_contents.pop(), grpc.StatusCode.INVALID_ARGUMENT,
     "raw_input_contents has 1 entries for 2 inputs"),
    ("raw and typed", lambda r: r.inputs[0].contents.fp32_contents.extend([0.0] * 12),
     grpc.StatusCode.INVALID_ARGUMENT, "input 'logits' has contents while the request uses raw_input_contents"),
    ("negative dim", lambda r: r.inputs[0].shape.__setitem__(0, -4), grpc.StatusCode.INVALID_ARGUMENT,
     "input 'logits'.shape[0] is -4; dimensions must be >= 0"),
    ("huge shape", lambda r: r.inputs[0].shape.extend([1 << 40, 1 << 40]), grpc.StatusCode.INVALID_ARGUMENT,
     "input 'logits'.shape overflows int64 at dimension 3"),
    ("unknown parameter", lambda r: setattr(r.parameters["gama"], "double_param", 2.0), grpc.StatusCode.INVALID_ARGUMENT,
     "parameter 'gama' is not a parameter of softmax_focal"),
    ("name that would forge a log line", lambda r: setattr(r.parameters["gam\nma"], "double_param", 2.0),
     grpc.StatusCode.INVALID_ARGUMENT, "parameter 'gam\\x0ama' is not a parameter"),
    ("value that would forge a log line", lambda r: setattr(r.parameters["gamma"], "string_param", "2\nERROR x"),
     grpc.StatusCode.INVALID_ARGUMENT, "parameter 'gamma' is '2\\x0aERROR x'; expected a number"),
    ("value too long to repeat", lambda r: setattr(r.parameters["gamma"], "string_param", "9" * 5000 + "x"),
     grpc.StatusCode.INVALID_ARGUMENT, "...(5001 bytes)'; expected a number"),
    ("bad reduction", lambda r: setattr(r.parameters["reduction"], "string_param", "average"),
     grpc.StatusCode.INVALID_ARGUMENT, "parameter 'reduction' is 'average'"),
    ("parameter out of range", lambda r: setattr(r.parameters["gamma"], "double_param", -1.0),
     grpc.StatusCode.INVALID_ARGUMENT, "gamma is -1"),
    ("parameter not a number", lambda r: setattr(r.parameters["gamma"], "string_param", "two"),
     grpc.StatusCode.INVALID_ARGUMENT, "parameter 'gamma' is 'two'; expected a number"),
    ("list as a number", lambda r: setattr(r.parameters["alpha"], "double_param", 0.25),
     grpc.StatusCode.INVALID_ARGUMENT, "parameter 'alpha' is a list of one value per class"),
    ("list with a word", lambda r: setattr(r.parameters["alpha"], "string_param", "1,x,2"),
     grpc.StatusCode.INVALID_ARGUMENT, "parameter 'alpha' holds 'x'"),
    ("unknown output", lambda r: r.outputs.add(name="grad"), grpc.StatusCode.INVALID_ARGUMENT,
     "output 'grad' is not an output of softmax_focal"),
    ("losses without none", lambda r: r.outputs.add(name="losses"), grpc.StatusCode.INVALID_ARGUMENT,
     "output 'losses' exists only with parameter 'reduction' = \"none\""),
    ("output twice", lambda r: (r.outputs.add(name="loss"), r.outputs.add(name="loss")),
     grpc.StatusCode.INVALID_ARGUMENT, "output 'loss' is requested twice"),
    ("input parameter", lambda r: setattr(r.inputs[0].parameters["shared_memory_region"], "string_param", "r"),
     grpc.StatusCode.INVALID_ARGUMENT, "input 'logits' has parameter 'shared_memory_region'"),
    ("binary_data_size that is not the size", lambda r: setattr(r.inputs[0].parameters["binary_data_size"],
                                                                "int64_param", 47),
     grpc.StatusCode.INVALID_ARGUMENT, "input 'logits' has parameter 'binary_data_size'"),
    ("output parameter", lambda r: setattr(r.outputs.add(name="loss").parameters["classification"], "int64_param", 3),
     grpc.StatusCode.INVALID_ARGUMENT, "output 'loss' has parameter 'classification'"),
    ("target out of range", lambda r: r.raw_input_contents.__setitem__(1, np.array([0, 1, 9, 1]).tobytes()),
     grpc.StatusCode.INVALID_ARGUMENT, "targets[2]"),
    ("grad_output not a scalar", lambda r: (r.inputs.add(name="grad_output", datatype="FP32", shape=[2]),
                                            r.raw_input_contents.append(np.ones(2, np.float32).tobytes())),
     grpc.StatusCode.INVALID_ARGUMENT, "input 'grad_output' has shape [2]; with reduction mean or sum it is one value"),
]


@pytest.mark.parametrize("what,edit,code,message", ERRORS, ids=[e[0] for e in ERRORS])
def test_errors_name_what_is_wrong(v2, stub, what, edit, code, message):
    r = _base(v2[0])
    edit(r)
    got_code, details = _err(stub, r)
    assert got_code == code, details
    assert message in details, details
    assert stub.ServerLive(v2[0].ServerLiveRequest(), timeout=10).live  # and it keeps serving


def test_typed_errors(v2, stub):
    pb2 = v2[0]
    x = torch.zeros((4, 3), dtype=torch.float16)
    r = infer_request(pb2, "softmax_focal", x.to(torch.float32), np.array([0, 1, 2, 1]), {}, "mean", {}, typed=True)
    r.inputs[0].datatype = "FP16"
    code, details = _err(stub, r)
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "only in raw_input_contents" in details
    r = infer_request(pb2, "softmax_focal", np.zeros((4, 3), np.float32), np.array([0, 1, 2, 1], np.uint8), {},
                      "mean", {}, typed=True)
    r.inputs[1].contents.uint_contents[2] = 300
    code, details = _err(stub, r)
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "element 2 of its contents is 300" in details
    r = infer_request(pb2, "softmax_focal", np.zeros((4, 3), np.float32), np.array([0, 1, 2, 1]), {}, "mean", {},
                      typed=True)
    r.inputs[0].contents.fp32_contents.pop()
    code, details = _err(stub, r)
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "has 12 elements; its contents hold 11" in details
    r = infer_request(pb2, "softmax_focal", np.zeros((4, 3), np.float32), np.array([0, 1, 2, 1]), {}, "mean", {},
                      typed=True)
    r.inputs[1].contents.fp64_contents.extend([1.0])
    code, details = _err(stub, r)
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "holds 1 values in contents.fp64_contents" in details


def test_clients_binary_data_parameters_are_accepted_when_true(v2, stub, client):
    """binary_data_size on inputs (their byte length) and binary_data on outputs, which clients
    written for the HTTP protocol send on gRPC too."""
    pb2 = v2[0]
    x = np.random.default_rng(3).standard_normal((4, 3)).astype(np.float32)
    y = np.array([0, 1, 2, 1])
    r = infer_request(pb2, "softmax_focal", x, y, {}, "sum", {}, outputs=["loss", "count"])
    r.inputs[0].parameters["binary_data_size"].int64_param = x.nbytes
    r.inputs[1].parameters["binary_data_size"].int64_param = y.nbytes
    r.outputs[0].parameters["binary_data"].bool_param = True
    got = output_arrays(stub.ModelInfer(r, timeout=10))
    assert got["loss"][2] == np.array([v1_compute(client, "softmax_focal", x, y, {}, "sum", {}).loss]).tobytes()


def test_model_ready_of_a_name_that_is_no_model_is_false(v2, stub):
    """As Triton answers it: OK and ready false (tritonclient's is_model_ready returns False)."""
    pb2 = v2[0]
    assert not stub.ModelReady(pb2.ModelReadyRequest(name="nope"), timeout=10).ready
    assert not stub.ModelReady(pb2.ModelReadyRequest(name="softmax_focal", version="2"), timeout=10).ready


def test_metadata_errors(v2, stub):
    pb2 = v2[0]
    for call, request in ((stub.ModelMetadata, pb2.ModelMetadataRequest(name="nope")),
                          (stub.ModelStatistics, pb2.ModelStatisticsRequest(name="nope")),
                          (stub.ModelConfig, pb2.ModelConfigRequest(name="nope")),
                          (stub.ModelMetadata, pb2.ModelMetadataRequest(name="varifocal", version="7"))):
        with pytest.raises(grpc.RpcError) as e:
            call(request, timeout=10)
        assert e.value.code() == grpc.StatusCode.NOT_FOUND, e.value.details()


def test_auth_applies(v2, tmp_path):
    from conftest import ServerProcess
    token = tmp_path / "token"
    token.write_text("s3cret\n")
    proc = ServerProcess("--auth-token-file", str(token))
    try:
        channel = grpc.insecure_channel(proc.target)
        s = v2[1].GRPCInferenceServiceStub(channel)
        pb2 = v2[0]
        assert s.ServerLive(pb2.ServerLiveRequest(), timeout=10).live  # probes stay open, as health does
        request = infer_request(pb2, "softmax_focal", np.zeros((2, 3), np.float32), np.array([0, 2]), {}, "mean", {})
        for call, req in ((s.ModelInfer, request), (s.ModelMetadata, pb2.ModelMetadataRequest(name="softmax_focal"))):
            with pytest.raises(grpc.RpcError) as e:
                call(req, timeout=10)
            assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED
        with pytest.raises(grpc.RpcError) as e:
            list(s.ModelStreamInfer(iter([request]), timeout=10))
        assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED
        answer = s.ModelInfer(request, timeout=10, metadata=[("authorization", "Bearer s3cret")])
        assert [o.name for o in answer.outputs] == ["loss", "count", "gradient"]
        answers = list(s.ModelStreamInfer(iter([request]), timeout=10, metadata=[("authorization", "Bearer s3cret")]))
        assert len(answers) == 1 and answers[0].error_message == ""
        channel.close()
    finally:
        assert proc.stop() == 0


def test_readiness_follows_health_through_the_drain(v2):
    """From SIGTERM on, through the drain's grace, ServerReady and ModelReady say false while
    calls are still served; once draining, calls are UNAVAILABLE."""
    from conftest import ServerProcess
    pb2 = v2[0]
    proc = ServerProcess("--drain-grace", "3")
    try:
        channel = grpc.insecure_channel(proc.target)
        s = v2[1].GRPCInferenceServiceStub(channel)
        assert s.ServerReady(pb2.ServerReadyRequest(), timeout=10).ready
        assert s.ModelReady(pb2.ModelReadyRequest(name="varifocal"), timeout=10).ready
        proc.proc.send_signal(signal.SIGTERM)
        deadline = time.time() + 2
        while s.ServerReady(pb2.ServerReadyRequest(), timeout=10).ready and time.time() < deadline:
            time.sleep(0.02)
        assert not s.ServerReady(pb2.ServerReadyRequest(), timeout=10).ready
        assert not s.ModelReady(pb2.ModelReadyRequest(name="varifocal"), timeout=10).ready
        assert s.ServerLive(pb2.ServerLiveRequest(), timeout=10).live
        request = infer_request(pb2, "softmax_focal", np.zeros((2, 3), np.float32), np.array([0, 2]), {}, "mean", {})
        assert s.ModelInfer(request, timeout=10).outputs  # still served in the grace
        channel.close()
    finally:
        assert proc.stop() == 0


def test_stream_drain_answers_the_request_in_flight_then_ends_unavailable(v2):
    from conftest import ServerProcess
    pb2 = v2[0]
    proc = ServerProcess("--debug-delay-ms", "600")
    try:
        channel = grpc.insecure_channel(proc.target)
        s = v2[1].GRPCInferenceServiceStub(channel)
        requests: "queue.Queue" = queue.Queue()

        def sent():
            while (r := requests.get()) is not None:
                yield r

        request = infer_request(pb2, "softmax_focal", np.zeros((2, 3), np.float32), np.array([0, 2]), {}, "mean", {})
        answers = s.ModelStreamInfer(sent(), timeout=20)
        requests.put(request)
        time.sleep(0.2)  # computing (600 ms) when the drain starts
        proc.proc.send_signal(signal.SIGTERM)
        got = []
        with pytest.raises(grpc.RpcError) as e:
            for a in answers:
                got.append(a)
        requests.put(None)
        assert len(got) == 1 and got[0].error_message == "", got
        assert e.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "all 1 requests it read from this stream were answered" in e.value.details()
        channel.close()
    finally:
        assert proc.stop() == 0


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl is needed to make a test certificate")
def test_tls_applies(v2, tmp_path):
    from conftest import ServerProcess, make_test_certificate
    pb2 = v2[0]
    cert, key = make_test_certificate(tmp_path)
    proc = ServerProcess("--tls-cert", str(cert), "--tls-key", str(key))
    try:
        secure = grpc.secure_channel(proc.target, grpc.ssl_channel_credentials(cert.read_bytes()))
        request = infer_request(pb2, "sigmoid_focal", np.zeros((2, 3), np.float32), np.zeros((2, 3), np.float32), {},
                                "sum", {})
        assert v2[1].GRPCInferenceServiceStub(secure).ModelInfer(request, timeout=10).outputs
        plaintext = grpc.insecure_channel(proc.target)
        with pytest.raises(grpc.RpcError) as e:
            v2[1].GRPCInferenceServiceStub(plaintext).ServerLive(pb2.ServerLiveRequest(), timeout=3)
        assert e.value.code() == grpc.StatusCode.UNAVAILABLE
        secure.close()
        plaintext.close()
    finally:
        assert proc.stop() == 0
