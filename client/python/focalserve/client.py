"""focalserve.Client: the blocking client over grpcio."""
from __future__ import annotations

import json
import os
import threading
from typing import Any, Iterable, Optional

import grpc

from . import _codec, _health
from ._errors import FocalServeError
from ._proto import COMPUTE_METHOD, DEFAULT_VARIANT, pb, rpc
from ._shm import SharedMemoryRegion, SharedTensor

_INT32_MAX = 2**31 - 1


# The C++ client's defaults (client/cpp/include/focal/client.h, ClientOptions), so that both
# clients balance and retry alike.
RETRY_ATTEMPTS = 4
_INITIAL_BACKOFF_S, _MAX_BACKOFF_S, _BACKOFF_MULTIPLIER = 0.05, 2.0, 2.0
_RETRY_BUFFER_BYTES = 64 << 20


def service_config(retry_attempts: int = RETRY_ATTEMPTS) -> str:
    """The channel's service config: round_robin over every address the target resolves to, and
    UNAVAILABLE (a draining server, a broken connection) and CANCELLED (gRPC's answer to a call
    that reaches a server whose shutdown has begun, before any handler saw it) retried; every
    other code is the server's considered answer. Compute is a pure function: safe to resend."""
    config: dict = {"loadBalancingConfig": [{"round_robin": {}}]}
    if retry_attempts > 1:
        config["methodConfig"] = [{
            "name": [{"service": pb.DESCRIPTOR.services_by_name["FocalLossService"].full_name},
                     {"service": _health.SERVICE}],
            "retryPolicy": {"maxAttempts": int(retry_attempts), "initialBackoff": f"{_INITIAL_BACKOFF_S}s",
                            "maxBackoff": f"{_MAX_BACKOFF_S}s", "backoffMultiplier": _BACKOFF_MULTIPLIER,
                            "retryableStatusCodes": ["UNAVAILABLE", "CANCELLED"]}}]
    return json.dumps(config)


def _channel_options(max_message_bytes: int, retry_attempts: int, extra):
    if int(retry_attempts) < 1:
        raise ValueError(f"retry_attempts={retry_attempts} must be >= 1 (1: no retries)")
    n = min(int(max_message_bytes), _INT32_MAX)  # gRPC's limits are C ints
    options = [("grpc.max_send_message_length", n), ("grpc.max_receive_message_length", n),
               ("grpc.service_config", service_config(retry_attempts)),
               # Ours is the service config: none from DNS TXT records overrides it.
               ("grpc.service_config_disable_resolution", 1),
               ("grpc.enable_retries", 1 if retry_attempts > 1 else 0),
               ("grpc.per_rpc_retry_buffer_size", _RETRY_BUFFER_BYTES)]
    options.extend(extra or ())
    return options


def _root_certs(tls_root_certs: Any) -> bytes:
    """PEM bytes as given, or read from a path (str or os.PathLike)."""
    if isinstance(tls_root_certs, (bytes, bytearray)):
        return bytes(tls_root_certs)
    with open(os.fspath(tls_root_certs), "rb") as f:
        return f.read()


class _Base:
    """What the blocking and the asyncio clients share: options, metadata, request building."""

    def __init__(self, target: str, *, tls_root_certs: Any = None, token: Optional[str] = None,
                 timeout: Optional[float] = None, max_message_bytes: int = 1 << 30,
                 retry_attempts: int = RETRY_ATTEMPTS, options=None):
        self.target = target
        self.timeout = timeout
        self._options = _channel_options(max_message_bytes, retry_attempts, options)
        self._credentials = (grpc.ssl_channel_credentials(root_certificates=_root_certs(tls_root_certs))
                             if tls_root_certs is not None else None)
        self._metadata = (("authorization", f"Bearer {token}"),) if token else None

    def _timeout(self, timeout: Optional[float]) -> Optional[float]:
        return self.timeout if timeout is None else timeout

    @staticmethod
    def build_request(logits: Any, targets: Any, variant: str = DEFAULT_VARIANT, reduction: Any = "mean",
                      compute_gradient: bool = False, grad_output: Any = None, gradient_dtype: Any = None,
                      num_objects: Any = None, allow_non_finite: bool = False, normalizer: Optional[float] = None,
                      request_id: str = "", *, weights: Any = None, scores: Any = None,
                      gradient_output: Any = None, losses_output: Any = None, _data_apart: Optional[list] = None,
                      **params: Any) -> pb.ComputeRequest:
        """The ComputeRequest `compute` would send (to keep, edit and send with `compute_request`)."""
        return _codec.compute_request(logits, targets, variant=variant, reduction=reduction,
                                      compute_gradient=compute_gradient, grad_output=grad_output,
                                      gradient_dtype=gradient_dtype, num_objects=num_objects,
                                      allow_non_finite=allow_non_finite, normalizer=normalizer,
                                      request_id=request_id, weights=weights, scores=scores,
                                      gradient_output=gradient_output, losses_output=losses_output,
                                      data_apart=_data_apart, **params)

    def _request_bytes(self, *args: Any, **kwargs: Any) -> bytes:
        """build_request's request as wire bytes, its large tensors joined in from the caller's
        arrays (_codec.serialize_request): one copy of them, where building the message and
        serializing it makes two. Sent through _compute_bytes."""
        apart: list = []
        request = self.build_request(*args, _data_apart=apart, **kwargs)
        return _codec.serialize_request(request, apart)

    def _compute_bytes_call(self):
        """Compute, called with the request already as bytes (_request_bytes)."""
        return self.channel.unary_unary(COMPUTE_METHOD, request_serializer=None,
                                        response_deserializer=pb.ComputeResponse.FromString)


class Client(_Base):
    """A blocking FocalServe client.

        client = focalserve.Client("127.0.0.1:50051")
        r = client.compute(logits, targets, "softmax_focal", gamma=2.0, compute_gradient=True)
        r.loss, r.count, r.gradient

    target            "host:port", or any gRPC target: "ipv4:h:p,h:p", "dns:///svc:50051"; calls
                      rotate over every address it resolves to (round_robin)
    tls_root_certs    None for plaintext; PEM bytes or a path to a PEM file for TLS
    token             sent as 'authorization: Bearer <token>' on every call
    timeout           default deadline per call, seconds (None: none)
    max_message_bytes largest message both ways (the server's default is 1 GiB too)
    retry_attempts    attempts per call, the first included (gRPC caps it at 5); UNAVAILABLE is
                      retried with backoff from 50 ms up to 2 s, as the C++ client does; 1: none
    options           extra gRPC channel options

    Failed calls raise FocalServeError (.code, .message); arguments the client cannot encode
    raise TypeError/ValueError before anything is sent. Thread-safe; use as a context manager
    or call close().
    """

    def __init__(self, target: str, *, tls_root_certs: Any = None, token: Optional[str] = None,
                 timeout: Optional[float] = None, max_message_bytes: int = 1 << 30,
                 retry_attempts: int = RETRY_ATTEMPTS, options=None):
        super().__init__(target, tls_root_certs=tls_root_certs, token=token, timeout=timeout,
                         max_message_bytes=max_message_bytes, retry_attempts=retry_attempts, options=options)
        if self._credentials is not None:
            self.channel = grpc.secure_channel(target, self._credentials, self._options)
        else:
            self.channel = grpc.insecure_channel(target, self._options)
        self.stub = rpc.FocalLossServiceStub(self.channel)
        self._compute_bytes = self._compute_bytes_call()
        self._health_check = self.channel.unary_unary(
            _health.METHOD, request_serializer=_health.encode_request, response_deserializer=_health.decode_response)

    # -- calls ------------------------------------------------------------------------------

    def compute(self, logits: Any, targets: Any, variant: str = DEFAULT_VARIANT, reduction: Any = "mean",
                compute_gradient: bool = False, grad_output: Any = None, gradient_dtype: Any = None,
                num_objects: Any = None, allow_non_finite: bool = False, normalizer: Optional[float] = None,
                *, weights: Any = None, scores: Any = None, timeout: Optional[float] = None, request_id: str = "",
                gradient_output: Any = None, losses_output: Any = None, **params: Any) -> _codec.ComputeResult:
        """One batch. Returns a ComputeResult (loss, count, losses, gradient, backend, timing).

        logits, targets   arrays (NumPy or torch; see focalserve._codec for dtypes and bfloat16)
        variant           one of focalserve.VARIANTS (the LossSpec variants of the wire API)
        reduction         'mean' | 'sum' | 'none'
        compute_gradient  also return d(sum w*loss)/d(logits)
        grad_output       the upstream gradient w: a scalar, or for 'none' an array shaped like
                          the per-item losses; None = 1
        gradient_dtype    None (the logits' dtype) or 'float32' (also the dtype of 'none' losses)
        num_objects       per-row object counts, float [N], for the variants that take them
        weights           per-item loss weights (keyword only; every variant): float, each finite and
                          >= 0, shaped exactly like the 'none' losses; each item's loss and gradient
                          are multiplied by its weight, and 'mean' still divides by the variant's
                          count (mmdetection's weight + avg_factor). Unlike grad_output, it changes
                          the loss value
        scores            (keyword only) quality_focal with class-index targets: the target class's
                          quality score in [0, 1] per row, float, shaped like the targets
        allow_non_finite  let NaN/Inf propagate instead of INVALID_ARGUMENT
        normalizer        replaces MEAN's count as the denominator
        gradient_output,  (keyword only) SharedTensors of a shared_memory() region for the server to
        losses_output     write the gradient and 'none' losses into; the result's gradient/losses are
                          then their arrays. Any array argument may be a SharedTensor too
        **params          the variant's parameters as in docs/variants.md, named as the fields of its
                          focal.v1 message; a per-class list (alpha=) goes at full precision, in
                          its `_f64` field; None = default
        """
        request = self._request_bytes(logits, targets, variant, reduction, compute_gradient, grad_output,
                                      gradient_dtype, num_objects, allow_non_finite, normalizer, request_id,
                                      weights=weights, scores=scores, gradient_output=gradient_output,
                                      losses_output=losses_output, **params)
        try:
            response = self._compute_bytes(request, timeout=self._timeout(timeout), metadata=self._metadata)
        except grpc.RpcError as e:
            raise FocalServeError.from_rpc_error(e, "Compute") from None
        return _codec.ComputeResult(response, gradient_output, losses_output)

    def compute_request(self, request: pb.ComputeRequest, *, timeout: Optional[float] = None,
                        gradient_output: Any = None, losses_output: Any = None) -> _codec.ComputeResult:
        """Sends a prepared ComputeRequest (see build_request); gradient_output/losses_output are
        the SharedTensors its shared-memory outputs name, for the result's arrays."""
        try:
            response = self.stub.Compute(request, timeout=self._timeout(timeout), metadata=self._metadata)
        except grpc.RpcError as e:
            raise FocalServeError.from_rpc_error(e, "Compute") from None
        return _codec.ComputeResult(response, gradient_output, losses_output)

    def evaluate(self, batches: Iterable[Any], variant: str = DEFAULT_VARIANT, *, allow_non_finite: bool = False,
                 timeout: Optional[float] = None, gamma_sweep: Any = None, calibration_bins: Optional[int] = None,
                 pt_bins: Optional[int] = None, **params: Any) -> _codec.EvaluateResult:
        """A whole dataset streamed batch by batch; exact totals and per-class sums come back.

        batches is any iterable of batches, each one of
            (logits, targets)
            (logits, targets, num_objects)
            (logits, targets, {"weights": w, "scores": s, "num_objects": n})   any of the three
            (logits, targets, num_objects, {"weights": w, "scores": s})
            {"logits": x, "targets": t, "weights": w, ...}                      (a dict batch)
        with the per-item tensors as compute() takes them. It is consumed lazily, one batch
        encoded at a time as gRPC's flow control asks for it. With weights, total_loss, mean and
        class_loss_sums are of the weighted losses; count is what MEAN divides by, as in compute().

        Analyses in the same pass (softmax_focal and sigmoid_focal, hard targets; docs/evaluation.md):
        gamma_sweep        γ values (at most 64): result.sweep holds per γ and class the loss sums
                           of positives and negatives apart, so that any α is exact afterwards
                           (result.sweep.loss(alpha=...)), and the loss mass by p_t
        pt_bins            p_t bins of that mass (default 20)
        calibration_bins   confidence bins of a reliability histogram (15 is usual): result.calibration
                           holds it with ECE, MCE, accuracy, NLL, Brier and per-class recall/precision
        """
        spec = _codec.loss_spec(variant, "none", **params)
        options = _codec.evaluate_options(gamma_sweep, calibration_bins, pt_bins)
        requests = _codec.CapturingIterator(_codec.batch_requests(batches, spec, allow_non_finite, options))
        try:
            response = self.stub.Evaluate(requests, timeout=self._timeout(timeout), metadata=self._metadata)
        except grpc.RpcError as e:
            if requests.error is not None:  # gRPC cancels the call; raise what the batches raised
                raise requests.error from None
            raise FocalServeError.from_rpc_error(e, "Evaluate") from None
        return _codec.checked_evaluation(response, requests.count)

    def info(self, *, timeout: Optional[float] = None) -> pb.ServerInfo:
        """The server's focal.v1.ServerInfo: version, variants and parameters, dtypes, limits, devices."""
        try:
            return self.stub.GetServerInfo(pb.GetServerInfoRequest(), timeout=self._timeout(timeout),
                                           metadata=self._metadata)
        except grpc.RpcError as e:
            raise FocalServeError.from_rpc_error(e, "GetServerInfo") from None

    # -- shared memory (same host; the server's --shared-memory=on) ---------------------------

    def shared_memory(self, byte_size: int, name: Optional[str] = None, *,
                      timeout: Optional[float] = None) -> SharedMemoryRegion:
        """A new POSIX shared-memory object of `byte_size` bytes, registered with the server until
        the region is closed (use it as a context manager); see focalserve._shm."""
        return SharedMemoryRegion(self, byte_size, name, timeout=timeout)

    def _register_shared_memory(self, request: pb.RegisterSharedMemoryRequest, timeout: Optional[float]):
        """Starts the registration call and waits for the server to map the region; the call
        (to cancel) is the lease."""
        lease = self.stub.RegisterSharedMemory(request, metadata=self._metadata)
        # A deadline for the answer only, not for the lease: past it the call is cancelled,
        # unless the answer has come (decided under one lock, so a late timer cancels nothing).
        lock, state = threading.Lock(), {"answered": False}

        def expire():
            with lock:
                if not state["answered"]:
                    lease.cancel()

        timer = None
        if self._timeout(timeout) is not None:
            timer = threading.Timer(self._timeout(timeout), expire)
            timer.start()
        try:
            next(lease)
            with lock:
                state["answered"] = True
            if lease.done():  # cancelled by the timer just before the answer was counted
                raise FocalServeError.from_rpc_error(lease, "RegisterSharedMemory")
        except grpc.RpcError as e:
            raise FocalServeError.from_rpc_error(e, "RegisterSharedMemory") from None
        finally:
            if timer is not None:
                timer.cancel()
        return lease

    def unregister_shared_memory(self, name: str, *, timeout: Optional[float] = None) -> None:
        try:
            self.stub.UnregisterSharedMemory(pb.UnregisterSharedMemoryRequest(name=name),
                                             timeout=self._timeout(timeout), metadata=self._metadata)
        except grpc.RpcError as e:
            raise FocalServeError.from_rpc_error(e, "UnregisterSharedMemory") from None

    def list_shared_memory(self, *, timeout: Optional[float] = None) -> "list[pb.SharedMemoryRegion]":
        try:
            return list(self.stub.ListSharedMemory(pb.ListSharedMemoryRequest(), timeout=self._timeout(timeout),
                                                   metadata=self._metadata).regions)
        except grpc.RpcError as e:
            raise FocalServeError.from_rpc_error(e, "ListSharedMemory") from None

    def health(self, service: str = "", *, timeout: Optional[float] = None) -> str:
        """grpc.health.v1 Check: 'SERVING', 'NOT_SERVING', ... ('' = the whole server;
        'focal.v1.FocalLossService' = the loss service). See focalserve._health for why by hand."""
        try:
            return self._health_check(service, timeout=self._timeout(timeout), metadata=self._metadata)
        except grpc.RpcError as e:
            raise FocalServeError.from_rpc_error(e, "Health/Check") from None

    # -- lifetime ---------------------------------------------------------------------------

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"focalserve.Client({self.target!r})"
