#!/usr/bin/python3
"""Writes the fuzzers' seed corpora (tests/fuzz/corpus/<target>/): small valid requests of every
variant, dtype, layout and option, plus the edges (empty tensors, extreme parameters, non-finite
logits), so that mutation starts from inputs that reach deep into decode, validation and the
kernels. Deterministic: the same files on every run. The folders also hold what longer fuzzing
runs found, merged in with libFuzzer's -merge=1. Run it again after a wire change:

    /usr/bin/python3 tests/fuzz/make_corpus.py
"""
from __future__ import annotations

import hashlib
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "client" / "python"))
import build_stubs  # noqa: E402

build_stubs.ensure()
from focalserve import _codec  # noqa: E402

OUT = REPO / "tests" / "fuzz" / "corpus"


def requests():
    rng = np.random.default_rng(20261201)
    for dtype in ("float32", "float16", "float64"):
        x = rng.standard_normal((3, 4)).astype(dtype)
        y = np.array([0, 3, 1])
        soft = (rng.random((3, 4)) < 0.4).astype(np.float32)
        for reduction in ("mean", "sum", "none"):
            yield _codec.compute_request(x, y, variant="softmax_focal", reduction=reduction, compute_gradient=True,
                                         gamma=2.0, alpha=[1, 2, 1, 0.5], label_smoothing=0.1, ignore_index=3)
            yield _codec.compute_request(x, soft, variant="sigmoid_focal", reduction=reduction,
                                         compute_gradient=True, alpha=0.25, gamma=0.5)
            yield _codec.compute_request(x, y, variant="sigmoid_focal", reduction=reduction, compute_gradient=True,
                                         ignore_index=-1, label_smoothing=0.2, smoothing_classes=3)
            yield _codec.compute_request(x, y, variant="focal_cosine", reduction=reduction, compute_gradient=True,
                                         alpha=1.0, gamma=2.0, xent=0.1)
            yield _codec.compute_request(x, soft, variant="dynamic_focal", reduction=reduction,
                                         compute_gradient=True, num_objects=np.array([1, 2, 0], np.float32))
    # [N, C, S] layouts, uint8/int32 targets, probabilities, upstream tensors, 16-bit gradients.
    x = rng.standard_normal((2, 3, 5)).astype(np.float32)
    yield _codec.compute_request(x, rng.integers(0, 3, (2, 5)).astype(np.uint8), variant="softmax_focal",
                                 compute_gradient=True, gradient_dtype="float16")
    yield _codec.compute_request(x, rng.integers(0, 4, (2, 5)).astype(np.int32), variant="sigmoid_focal",
                                 reduction="none", compute_gradient=True,
                                 grad_output=rng.standard_normal((2, 3, 5)).astype(np.float32))
    yield _codec.compute_request(rng.random((4, 2)).astype(np.float32), (rng.random((4, 2)) < 0.5).astype(np.float32),
                                 variant="sigmoid_focal", input="probabilities", compute_gradient=True)
    # Edges: empty batches, extreme and non-finite values, the parameter bounds.
    yield _codec.compute_request(np.zeros((0, 4), np.float32), np.zeros(0, np.int64), variant="softmax_focal")
    yield _codec.compute_request(np.array([[1e4, -1e4, np.inf, -np.inf]], np.float32), np.array([0]),
                                 variant="softmax_focal", allow_non_finite=True, compute_gradient=True)
    yield _codec.compute_request(np.array([[88.0, -100.0, 0.0]], np.float32), np.array([2]), variant="focal_cosine",
                                 compute_gradient=True, gamma=1000.0, alpha=-1e4, xent=1e4, normalizer=1e-6,
                                 grad_output=1e8)
    # The catalogue (docs/variants.md §5): every variant, weights, scores and the §5.0 options.
    x = rng.standard_normal((3, 4)).astype(np.float32)
    y = np.array([0, 4, 2])  # 4 = C: background
    soft = (rng.random((3, 4)) < 0.4).astype(np.float32)
    quality = soft * rng.random((3, 4)).astype(np.float32)
    weights = rng.random((3, 4)).astype(np.float32)
    for reduction in ("mean", "none"):
        yield _codec.compute_request(x, soft, variant="asymmetric", reduction=reduction, compute_gradient=True,
                                     gamma_pos=1.0, gamma_neg=0.5, clip=0.05, weights=weights)
        yield _codec.compute_request(x, y, variant="asymmetric", reduction=reduction, compute_gradient=True,
                                     clip=1e-8, ignore_index=2)
        yield _codec.compute_request(x, quality, variant="quality_focal", reduction=reduction, compute_gradient=True,
                                     beta=1.0)
        yield _codec.compute_request(x, y, variant="quality_focal", reduction=reduction, compute_gradient=True,
                                     scores=np.array([0.5, 0.0, 1.0], np.float32))
        yield _codec.compute_request(x, quality, variant="varifocal", reduction=reduction, compute_gradient=True,
                                     alpha=0.75, gamma=0.5, iou_weighted=False)
        yield _codec.compute_request(x, y, variant="focal_star", reduction=reduction, compute_gradient=True,
                                     gamma=2.0, beta=1.0, alpha=0.25)
        yield _codec.compute_request(rng.standard_normal((3, 17)).astype(np.float16), np.array([0, 16, 7.5], np.float32),
                                     variant="distribution_focal", reduction=reduction, compute_gradient=True,
                                     weights=np.array([1, 0, 2], np.float32))
        yield _codec.compute_request(x, np.array([0, 3, 1]), variant="softmax_focal", reduction=reduction,
                                     compute_gradient=True, gamma=3.0, gamma_schedule=[(0.2, 5.0), (0.5, 1.0)],
                                     poly_epsilon=1.0, class_counts=[10, 0, 3, 1000])
        yield _codec.compute_request(x, soft, variant="sigmoid_focal", reduction=reduction, compute_gradient=True,
                                     poly_epsilon=-1.0)
    yield _codec.compute_request(rng.standard_normal((2, 5, 3)).astype(np.float32), rng.random((2, 3)) * 4,
                                 variant="distribution_focal", compute_gradient=True)


def kserve_module():
    """The Open Inference Protocol's messages, generated into a temporary folder."""
    import importlib
    import subprocess
    import tempfile
    out = tempfile.mkdtemp(prefix="focal-kserve-stubs.")
    subprocess.run(["/usr/bin/protoc", f"-I{REPO / 'proto'}", f"--python_out={out}",
                    str(REPO / "proto" / "inference" / "grpc_predict_v2.proto")], check=True)
    sys.path.insert(0, out)
    return importlib.import_module("inference.grpc_predict_v2_pb2")


KSERVE_DATATYPES = {1: "FP32", 2: "FP16", 3: "BF16", 4: "FP64", 5: "INT32", 6: "INT64", 7: "UINT8"}


def infer_request(pb2, r):
    """A focal.v1 ComputeRequest as the ModelInferRequest of docs/kserve.md (raw contents)."""
    variant = r.loss.WhichOneof("variant")
    out = pb2.ModelInferRequest(model_name=variant, id=r.request_id)
    for field, value in getattr(r.loss, variant).ListFields():
        name = field.name.removesuffix("_f64")
        if field.label == field.LABEL_REPEATED:
            items = [f"{v.threshold!r}:{v.gamma!r}" if hasattr(v, "gamma") else repr(v) for v in value]
            out.parameters[name].string_param = ",".join(items)
        elif field.type == field.TYPE_ENUM:
            out.parameters[name].string_param = field.enum_type.values_by_number[value].name.lower()
        elif field.type == field.TYPE_BOOL:
            out.parameters[name].bool_param = value
        elif field.type in (field.TYPE_INT64, field.TYPE_INT32):
            out.parameters[name].int64_param = value
        else:
            out.parameters[name].double_param = value
    out.parameters["reduction"].string_param = ("mean", "sum", "none")[r.loss.reduction]
    for name in ("logits", "targets", "num_objects", "weights", "scores", "grad_output_tensor"):
        if r.HasField(name):
            t = getattr(r, name)
            out.inputs.add(name=name.removesuffix("_tensor"), datatype=KSERVE_DATATYPES[t.dtype], shape=list(t.shape))
            out.raw_input_contents.append(t.data)
    if not r.compute_gradient:
        for name in ("loss", "count"):
            out.outputs.add(name=name)
    return out


TYPED_FIELDS = {"FP32": ("fp32_contents", np.float32), "FP64": ("fp64_contents", np.float64),
                "INT64": ("int64_contents", np.int64), "INT32": ("int_contents", np.int32),
                "UINT8": ("uint_contents", np.uint8)}


def typed_infer_request(raw):
    """The same request with typed contents, or None when an input is 16-bit (raw only)."""
    typed = type(raw)()
    typed.CopyFrom(raw)
    del typed.raw_input_contents[:]
    for tensor, data in zip(typed.inputs, raw.raw_input_contents):
        if tensor.datatype not in TYPED_FIELDS:
            return None
        field, dtype = TYPED_FIELDS[tensor.datatype]
        getattr(tensor.contents, field).extend(np.frombuffer(data, dtype).tolist())
    return typed


def write(target: str, blobs):
    folder = OUT / target
    folder.mkdir(parents=True, exist_ok=True)
    # Files are named by their SHA-1, as libFuzzer names what it finds: the inputs merged in
    # from longer runs (see RESULTS.md) stay beside these seeds.
    for blob in blobs:
        (folder / hashlib.sha1(blob).hexdigest()).write_bytes(blob)
    print(f"{folder.relative_to(REPO)}: {len(blobs)} files")


def main():
    singles = [r.SerializeToString() for r in requests()]
    write("compute_request_fuzzer", singles)

    def stream(*messages):  # evaluate_stream_fuzzer's framing: a 2-byte little-endian length each
        return b"".join(len(m).to_bytes(2, "little") + m for m in messages)

    streams = [stream(s) for s in singles if len(s) < 65536]
    streams += [stream(singles[i], singles[i]) for i in range(0, len(singles), 5)]  # the same variant twice
    streams += [stream(singles[0], singles[1])]  # two variants: refused
    # The analyses: softmax and sigmoid batches with a γ sweep and calibration, twice each.
    analysed = []
    for r in requests():
        variant = r.loss.WhichOneof("variant")
        if variant in ("softmax_focal", "sigmoid_focal") and not r.allow_non_finite and not r.HasField("weights"):
            r.evaluate.gamma_sweep.extend([0, 0.5, 2, 5])
            r.evaluate.pt_bins = 10
            r.evaluate.calibration_bins = 15
            analysed.append(r.SerializeToString())
    streams += [stream(m, m) for m in analysed if len(m) < 32768]
    write("evaluate_stream_fuzzer", streams)

    pb2 = kserve_module()
    infer = [infer_request(pb2, r) for r in requests() if not r.gradient_dtype and not r.HasField("grad_output_scalar")]
    write("model_infer_fuzzer", [r.SerializeToString() for r in infer] +
          [typed.SerializeToString() for typed in map(typed_infer_request, infer) if typed is not None])


if __name__ == "__main__":
    main()
