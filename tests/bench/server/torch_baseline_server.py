#!/usr/bin/python3
"""BASELINE ONLY: the minimal Python focal-loss gRPC server a team would otherwise write.

This is not FocalServe and not part of it. It exists so that run_server_bench.sh can set
focalserve against what it replaces: grpcio's thread-pool server, tensors decoded with
np.frombuffer + torch.from_numpy, the loss in PyTorch, the gradient by autograd.

    /usr/bin/python3 tests/bench/server/torch_baseline_server.py [--listen 127.0.0.1:0]
        [--stubs build/python-stubs] [--workers 4] [--threads 2]

Prints `listening on HOST:PORT` once it serves. Run it with Debian's interpreter (the one with
grpcio, numpy, torch and torchvision). The Python stubs are generated into --stubs when absent:

    protoc --python_out=DIR --grpc_python_out=DIR \
        --plugin=protoc-gen-grpc_python=/usr/bin/grpc_python_plugin \
        -I proto proto/focal/v1/focal_loss.proto

What it implements (focal.v1.FocalLossService):

* Compute, sigmoid_focal with float targets shaped like the logits:
  torchvision.ops.sigmoid_focal_loss(x, t, alpha, gamma, reduction), alpha default 0.25,
  gamma default 2 (docs/variants.md §2). Class-index targets and label smoothing are not
  handled (a minimal server would not); they answer UNIMPLEMENTED.
* Compute, softmax_focal with int64 class targets [N, *] (docs/variants.md §1), plain torch:
      logp = log_softmax(x, 1); logpt = logp.gather(1, y.unsqueeze(1)).squeeze(1)
      loss = -alpha[y] * (1 - logpt.exp()) ** gamma * logpt
  with ignore_index masked out; no label smoothing.
* MEAN / SUM / NONE, normalizer, compute_gradient (autograd, scalar or tensor grad_output).
* GetServerInfo: the variants and dtypes it takes, its limits, "torch-cpu".

ComputeStream and Evaluate are left unimplemented. torch.set_num_threads(2) (--threads), a
ThreadPoolExecutor of 4 workers (--workers), 1 GiB message limits.
"""

import argparse
import os
import subprocess
import sys
import time
import warnings
from concurrent import futures

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
MAX_MESSAGE_BYTES = 1 << 30

try:
    import grpc
    import numpy as np
    import torch
    import torch.nn.functional as F
    import torchvision.ops
except ImportError as e:  # the `python3` on PATH has none of these
    sys.exit(f"torch_baseline_server.py: {e}; run it with /usr/bin/python3 (Debian's)")


def load_stubs(stubs_dir):
    """Imports focal_loss_pb2(_grpc) from stubs_dir, generating them there first if absent."""
    generated = os.path.join(stubs_dir, "focal", "v1", "focal_loss_pb2_grpc.py")
    if not os.path.exists(generated):
        os.makedirs(stubs_dir, exist_ok=True)
        subprocess.run(
            ["protoc", f"--python_out={stubs_dir}", f"--grpc_python_out={stubs_dir}",
             "--plugin=protoc-gen-grpc_python=/usr/bin/grpc_python_plugin",
             "-I", os.path.join(REPO, "proto"),
             os.path.join(REPO, "proto", "focal", "v1", "focal_loss.proto")],
            check=True)
    sys.path.insert(0, stubs_dir)
    from focal.v1 import focal_loss_pb2, focal_loss_pb2_grpc  # noqa: E402
    return focal_loss_pb2, focal_loss_pb2_grpc


pb2 = None
pb2_grpc = None

# Wire dtype <-> numpy dtype (little-endian). bfloat16 has no numpy dtype: not taken here.
NP_DTYPES = {}
PB_DTYPES = {}


def init_dtypes():
    NP_DTYPES.update({
        pb2.FLOAT32: np.dtype("<f4"), pb2.FLOAT16: np.dtype("<f2"), pb2.FLOAT64: np.dtype("<f8"),
        pb2.INT32: np.dtype("<i4"), pb2.INT64: np.dtype("<i8"), pb2.UINT8: np.dtype("u1"),
    })
    PB_DTYPES.update({torch.float32: pb2.FLOAT32, torch.float16: pb2.FLOAT16,
                      torch.float64: pb2.FLOAT64})


class BadRequest(Exception):
    def __init__(self, code, message):
        super().__init__(message)
        self.code = code


def decode(tensor, what):
    if tensor.dtype not in NP_DTYPES:
        raise BadRequest(grpc.StatusCode.INVALID_ARGUMENT,
                         f"{what}: dtype {pb2.DataType.Name(tensor.dtype)} not supported")
    dtype = NP_DTYPES[tensor.dtype]
    shape = tuple(tensor.shape)
    count = int(np.prod(shape)) if shape else 1
    if len(tensor.data) != count * dtype.itemsize:
        raise BadRequest(grpc.StatusCode.INVALID_ARGUMENT,
                         f"{what}: {len(tensor.data)} bytes for shape {list(shape)}")
    # Zero-copy view of the request's bytes; read-only, which torch warns about (ignored below).
    return torch.from_numpy(np.frombuffer(tensor.data, dtype=dtype).reshape(shape))


def encode(t):
    t = t.detach().contiguous()
    return pb2.Tensor(dtype=PB_DTYPES[t.dtype], shape=list(t.shape), data=t.numpy().tobytes())


def reduce(losses, reduction, normalizer, count):
    if reduction == pb2.NONE:
        return losses
    total = losses.sum()
    if reduction == pb2.SUM:
        return total
    return total / (normalizer if normalizer is not None else max(count, 1))


def sigmoid_focal(spec, x, t, reduction, normalizer):
    if spec.HasField("label_smoothing") or spec.input == pb2.PROBABILITIES:
        raise BadRequest(grpc.StatusCode.UNIMPLEMENTED, "baseline: no smoothing, logits only")
    if not t.is_floating_point() or t.shape != x.shape:
        raise BadRequest(grpc.StatusCode.UNIMPLEMENTED,
                         "baseline: sigmoid_focal takes float targets shaped like the logits")
    alpha = spec.alpha if spec.HasField("alpha") else 0.25
    gamma = spec.gamma if spec.HasField("gamma") else 2.0
    losses = torchvision.ops.sigmoid_focal_loss(x, t.to(x.dtype), alpha=alpha, gamma=gamma,
                                                reduction="none")
    return reduce(losses, reduction, normalizer, losses.numel()), losses.numel()


def softmax_focal(spec, x, y, reduction, normalizer):
    if spec.HasField("label_smoothing") and spec.label_smoothing != 0:
        raise BadRequest(grpc.StatusCode.UNIMPLEMENTED, "baseline: no label smoothing")
    if y.is_floating_point() or x.dim() < 2 or y.shape != x.shape[:1] + x.shape[2:]:
        raise BadRequest(grpc.StatusCode.INVALID_ARGUMENT,
                         "softmax_focal takes integer targets [N, *] for logits [N, C, *]")
    gamma = spec.gamma if spec.HasField("gamma") else 2.0
    y = y.long()
    keep = None
    if spec.HasField("ignore_index"):
        keep = y != spec.ignore_index
        y = torch.where(keep, y, torch.zeros_like(y))
    logp = F.log_softmax(x.float(), dim=1)
    logpt = logp.gather(1, y.unsqueeze(1)).squeeze(1)
    pt = logpt.exp()
    losses = -((1 - pt) ** gamma) * logpt
    if len(spec.alpha):
        losses = losses * torch.tensor(list(spec.alpha), dtype=losses.dtype)[y]
    if keep is not None:
        losses = losses * keep
        count = int(keep.sum())
    else:
        count = losses.numel()
    return reduce(losses, reduction, normalizer, count), count


class FocalLossBaseline:
    def Compute(self, request, context):
        start = time.perf_counter()
        try:
            return self._compute(request, start)
        except BadRequest as e:
            context.abort(e.code, str(e))

    def _compute(self, request, start):
        x = decode(request.logits, "logits")
        targets = decode(request.targets, "targets")
        if request.compute_gradient:
            x = x.float().requires_grad_() if x.dtype != torch.float64 else x.requires_grad_()
        spec = request.loss
        normalizer = spec.normalizer if spec.HasField("normalizer") else None
        variant = spec.WhichOneof("variant")
        with torch.set_grad_enabled(request.compute_gradient):
            if variant == "sigmoid_focal":
                out, count = sigmoid_focal(spec.sigmoid_focal, x, targets, spec.reduction,
                                           normalizer)
            elif variant == "softmax_focal":
                out, count = softmax_focal(spec.softmax_focal, x, targets, spec.reduction,
                                           normalizer)
            else:
                raise BadRequest(grpc.StatusCode.UNIMPLEMENTED,
                                 f"baseline: variant {variant} not implemented")
        response = pb2.ComputeResponse(request_id=request.request_id, count=count,
                                       backend="torch-cpu")
        response.loss = float(out.detach().sum()) if spec.reduction == pb2.NONE else float(out)
        if spec.reduction == pb2.NONE:
            response.losses.CopyFrom(encode(out))
        if request.compute_gradient:
            if request.HasField("grad_output_tensor"):
                w = decode(request.grad_output_tensor, "grad_output").to(out.dtype)
            else:
                w = torch.full_like(out, request.grad_output_scalar
                                    if request.HasField("grad_output_scalar") else 1.0)
            (grad,) = torch.autograd.grad(out, x, grad_outputs=w)
            response.gradient.CopyFrom(encode(grad))
        response.timing.compute_micros = int((time.perf_counter() - start) * 1e6)
        return response

    def GetServerInfo(self, request, context):
        return pb2.ServerInfo(
            version=f"torch-baseline (torch {torch.__version__}, grpcio {grpc.__version__})",
            variants=[pb2.VariantInfo(name="sigmoid_focal"), pb2.VariantInfo(name="softmax_focal")],
            logits_dtypes=[pb2.FLOAT32, pb2.FLOAT16, pb2.FLOAT64],
            target_dtypes=[pb2.FLOAT32, pb2.INT64, pb2.INT32],
            max_message_bytes=MAX_MESSAGE_BYTES, backend="torch-cpu", devices=["cpu"])


def main():
    global pb2, pb2_grpc
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--listen", default="127.0.0.1:0")
    parser.add_argument("--stubs", default=os.path.join(REPO, "build", "python-stubs"))
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    pb2, pb2_grpc = load_stubs(os.path.abspath(args.stubs))
    init_dtypes()
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", message="The given NumPy array is not writable")

    # A servicer class built on the generated base, so unimplemented methods answer
    # UNIMPLEMENTED.
    servicer = type("Servicer", (FocalLossBaseline, pb2_grpc.FocalLossServiceServicer), {})()
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=args.workers),
        options=[("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                 ("grpc.max_send_message_length", MAX_MESSAGE_BYTES)])
    pb2_grpc.add_FocalLossServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port(args.listen)
    if port == 0:
        sys.exit(f"torch_baseline_server.py: cannot listen on {args.listen}")
    server.start()
    host = args.listen.rsplit(":", 1)[0]
    print(f"torch_baseline_server: listening on {host}:{port}", flush=True)
    try:
        server.wait_for_termination()
    except KeyboardInterrupt:
        server.stop(grace=1)


if __name__ == "__main__":
    main()
