"""focalserve.AsyncClient: the same calls over grpc.aio (asyncio)."""
from __future__ import annotations

import asyncio
from typing import Any, Optional

import grpc
import grpc.aio

from . import _codec, _health
from ._errors import FocalServeError
from ._proto import DEFAULT_VARIANT, pb, rpc
from ._shm import AsyncSharedMemoryRegion
from .client import RETRY_ATTEMPTS, _Base


class AsyncClient(_Base):
    """The asyncio twin of focalserve.Client: same constructor, same methods, awaited.

        async with focalserve.AsyncClient("127.0.0.1:50051") as client:
            r = await client.compute(logits, targets, "sigmoid_focal", compute_gradient=True)

    Create it inside the running event loop (grpc.aio binds the channel to it). evaluate()
    takes a plain or an async iterable of batches.
    """

    def __init__(self, target: str, *, tls_root_certs: Any = None, token: Optional[str] = None,
                 timeout: Optional[float] = None, max_message_bytes: int = 1 << 30,
                 retry_attempts: int = RETRY_ATTEMPTS, options=None):
        super().__init__(target, tls_root_certs=tls_root_certs, token=token, timeout=timeout,
                         max_message_bytes=max_message_bytes, retry_attempts=retry_attempts, options=options)
        if self._credentials is not None:
            self.channel = grpc.aio.secure_channel(target, self._credentials, self._options)
        else:
            self.channel = grpc.aio.insecure_channel(target, self._options)
        self.stub = rpc.FocalLossServiceStub(self.channel)
        self._compute_bytes = self._compute_bytes_call()
        self._health_check = self.channel.unary_unary(
            _health.METHOD, request_serializer=_health.encode_request, response_deserializer=_health.decode_response)

    async def compute(self, logits: Any, targets: Any, variant: str = DEFAULT_VARIANT, reduction: Any = "mean",
                      compute_gradient: bool = False, grad_output: Any = None, gradient_dtype: Any = None,
                      num_objects: Any = None, allow_non_finite: bool = False, normalizer: Optional[float] = None,
                      *, weights: Any = None, scores: Any = None, timeout: Optional[float] = None,
                      request_id: str = "", gradient_output: Any = None, losses_output: Any = None,
                      **params: Any) -> _codec.ComputeResult:
        """See Client.compute (weights=, scores=, gradient_output=, losses_output= included)."""
        request = self._request_bytes(logits, targets, variant, reduction, compute_gradient, grad_output,
                                      gradient_dtype, num_objects, allow_non_finite, normalizer, request_id,
                                      weights=weights, scores=scores, gradient_output=gradient_output,
                                      losses_output=losses_output, **params)
        try:
            response = await self._compute_bytes(request, timeout=self._timeout(timeout), metadata=self._metadata)
        except grpc.RpcError as e:
            raise FocalServeError.from_rpc_error(e, "Compute") from None
        return _codec.ComputeResult(response, gradient_output, losses_output)

    async def compute_request(self, request: pb.ComputeRequest, *, timeout: Optional[float] = None,
                              gradient_output: Any = None, losses_output: Any = None) -> _codec.ComputeResult:
        try:
            response = await self.stub.Compute(request, timeout=self._timeout(timeout), metadata=self._metadata)
        except grpc.RpcError as e:
            raise FocalServeError.from_rpc_error(e, "Compute") from None
        return _codec.ComputeResult(response, gradient_output, losses_output)

    # -- shared memory (same host; see Client.shared_memory and focalserve._shm) ---------------

    def shared_memory(self, byte_size: int, name: Optional[str] = None, *,
                      timeout: Optional[float] = None) -> AsyncSharedMemoryRegion:
        """A new shared-memory object, registered by `async with client.shared_memory(n) as region`."""
        return AsyncSharedMemoryRegion(self, byte_size, name, timeout=timeout)

    async def _register_shared_memory(self, request: pb.RegisterSharedMemoryRequest, timeout: Optional[float]):
        lease = self.stub.RegisterSharedMemory(request, metadata=self._metadata)
        try:
            # A deadline for the answer only: the lease itself lasts until it is released.
            answer = await asyncio.wait_for(lease.read(), self._timeout(timeout))
        except asyncio.TimeoutError:
            lease.cancel()
            raise FocalServeError(grpc.StatusCode.DEADLINE_EXCEEDED, "the server did not map the region in time",
                                  "RegisterSharedMemory") from None
        except grpc.RpcError as e:
            raise FocalServeError.from_rpc_error(e, "RegisterSharedMemory") from None
        if answer is grpc.aio.EOF:  # refused: the status says why
            raise FocalServeError(await lease.code(), await lease.details() or "", "RegisterSharedMemory")
        return lease

    async def unregister_shared_memory(self, name: str, *, timeout: Optional[float] = None) -> None:
        try:
            await self.stub.UnregisterSharedMemory(pb.UnregisterSharedMemoryRequest(name=name),
                                                   timeout=self._timeout(timeout), metadata=self._metadata)
        except grpc.RpcError as e:
            raise FocalServeError.from_rpc_error(e, "UnregisterSharedMemory") from None

    async def list_shared_memory(self, *, timeout: Optional[float] = None) -> "list[pb.SharedMemoryRegion]":
        try:
            response = await self.stub.ListSharedMemory(pb.ListSharedMemoryRequest(), timeout=self._timeout(timeout),
                                                        metadata=self._metadata)
        except grpc.RpcError as e:
            raise FocalServeError.from_rpc_error(e, "ListSharedMemory") from None
        return list(response.regions)

    async def evaluate(self, batches: Any, variant: str = DEFAULT_VARIANT, *, allow_non_finite: bool = False,
                       timeout: Optional[float] = None, gamma_sweep: Any = None,
                       calibration_bins: Optional[int] = None, pt_bins: Optional[int] = None,
                       **params: Any) -> _codec.EvaluateResult:
        """See Client.evaluate (the same batch forms and analyses); `batches` may also be an async iterable."""
        spec = _codec.loss_spec(variant, "none", **params)
        options = _codec.evaluate_options(gamma_sweep, calibration_bins, pt_bins)
        if hasattr(batches, "__aiter__"):
            async def requests():
                i = 0
                async for batch in batches:
                    yield _codec.batch_request(i, batch, spec, allow_non_finite, options)
                    i += 1
            request_iterator = requests()
        else:
            request_iterator = _codec.batch_requests(batches, spec, allow_non_finite, options)
        request_iterator = _codec.CapturingIterator(request_iterator)
        try:
            response = await self.stub.Evaluate(request_iterator, timeout=self._timeout(timeout),
                                                metadata=self._metadata)
        except (grpc.RpcError, asyncio.CancelledError) as e:
            if request_iterator.error is not None:  # gRPC cancels the call; raise what the batches raised
                raise request_iterator.error from None
            if isinstance(e, asyncio.CancelledError):
                raise
            raise FocalServeError.from_rpc_error(e, "Evaluate") from None
        return _codec.checked_evaluation(response, request_iterator.count)

    async def info(self, *, timeout: Optional[float] = None) -> pb.ServerInfo:
        try:
            return await self.stub.GetServerInfo(pb.GetServerInfoRequest(), timeout=self._timeout(timeout),
                                                 metadata=self._metadata)
        except grpc.RpcError as e:
            raise FocalServeError.from_rpc_error(e, "GetServerInfo") from None

    async def health(self, service: str = "", *, timeout: Optional[float] = None) -> str:
        try:
            return await self._health_check(service, timeout=self._timeout(timeout), metadata=self._metadata)
        except grpc.RpcError as e:
            raise FocalServeError.from_rpc_error(e, "Health/Check") from None

    async def close(self) -> None:
        await self.channel.close()

    async def __aenter__(self) -> "AsyncClient":
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    def __repr__(self) -> str:
        return f"focalserve.AsyncClient({self.target!r})"
