"""Shared memory with a server on the same host (docs/shared-memory.md): a POSIX shared-memory
object of this process, registered with the server for as long as it is open, whose tensors go
to the server as references instead of bytes, and into which the server writes results.

    with client.shared_memory(64 << 20) as region:
        x = region.put(logits)                              # copied in once
        t = region.put(targets)
        g = region.empty(logits.shape, logits.dtype)        # for the server to write
        r = client.compute(x, t, "sigmoid_focal", compute_gradient=True, gradient_output=g)
        r.gradient is g.array                               # the region's bytes, no copy

The server must run with --shared-memory=on and on this host.
"""
from __future__ import annotations

import re
from multiprocessing import shared_memory
from typing import Any, Optional, Tuple

import grpc
import grpc.aio
import numpy as np

from ._proto import pb

# Tensors start on cache-line boundaries, as the server's SIMD loads like them.
ALIGNMENT = 64


class SharedTensor:
    """A tensor in a registered region: pass it to compute() wherever an array goes, or as
    gradient_output= / losses_output=. `array` is its NumPy view of the region's bytes."""

    __slots__ = ("region", "offset", "array")

    def __init__(self, region: "SharedMemoryRegion", offset: int, array: np.ndarray):
        self.region, self.offset, self.array = region, offset, array

    @property
    def ref(self) -> pb.SharedMemoryRef:
        return pb.SharedMemoryRef(region=self.region.name, offset=self.offset, byte_size=self.array.nbytes)

    @property
    def shape(self) -> Tuple[int, ...]:
        return self.array.shape

    @property
    def dtype(self) -> np.dtype:
        return self.array.dtype

    def __repr__(self) -> str:
        return f"SharedTensor({self.region.name!r}, offset={self.offset}, {self.dtype}{list(self.shape)})"


class SharedMemoryRegion:
    """A shared-memory object of `byte_size` bytes made for this region, registered with the
    server from construction to close() (a `with` block). The registration is a call the server
    keeps open: it ends, and the server lets the region go, at close(), when this process exits
    or loses its connection, or when the server drains. Arrays taken from the region stay valid
    while they are referenced; the object itself is removed at close()."""

    def __init__(self, client: Any, byte_size: int, name: Optional[str] = None, *, timeout: Optional[float] = None):
        self._make_object(client, byte_size, name)
        try:
            self._lease = client._register_shared_memory(self._request(), timeout)
        except BaseException:
            self._release_object()
            raise

    def _make_object(self, client: Any, byte_size: int, name: Optional[str]) -> None:
        if byte_size <= 0:
            raise ValueError(f"byte_size is {byte_size}; a region has at least one byte")
        self._client = client
        self._shm = shared_memory.SharedMemory(create=True, size=int(byte_size))
        self.byte_size = int(byte_size)
        # Python names the object without the leading '/' shm_open takes.
        self.key = "/" + self._shm.name.lstrip("/")
        self.name = name if name is not None else re.sub(r"[^A-Za-z0-9._-]", "_", self._shm.name.lstrip("/"))
        self._next = 0
        self._lease = None

    def _request(self) -> pb.RegisterSharedMemoryRequest:
        return pb.RegisterSharedMemoryRequest(name=self.name, key=self.key, offset=0, byte_size=self.byte_size)

    # -- tensors ------------------------------------------------------------------------------

    def empty(self, shape: Any, dtype: Any, offset: Optional[int] = None) -> SharedTensor:
        """An uninitialised tensor in the region: at `offset`, or after the last one taken."""
        dtype = np.dtype(dtype)
        shape = tuple(int(s) for s in np.atleast_1d(shape)) if np.ndim(shape) else (int(shape),)
        nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        if offset is None:
            offset = -(-self._next // ALIGNMENT) * ALIGNMENT
        if offset < 0 or offset + nbytes > self.byte_size:
            raise ValueError(f"{nbytes} bytes at offset {offset} do not fit the region's {self.byte_size}")
        self._next = max(self._next, offset + nbytes)
        array = np.ndarray(shape, dtype=dtype, buffer=self._shm.buf, offset=offset)
        return SharedTensor(self, offset, array)

    def put(self, x: Any, offset: Optional[int] = None) -> SharedTensor:
        """x (a NumPy array or a torch tensor) copied into the region."""
        if hasattr(x, "detach") and hasattr(x, "cpu"):  # torch, without importing it
            x = x.detach().cpu().numpy()
        x = np.asarray(x)
        t = self.empty(x.shape, x.dtype, offset)
        t.array[...] = x
        return t

    # -- lifetime -----------------------------------------------------------------------------

    def close(self) -> None:
        """Unregisters the region (the server lets it go once calls using it finish) and removes
        the object. Idempotent."""
        if self._lease is not None:
            lease, self._lease = self._lease, None
            if lease.done():  # ended already (a drain, a lost connection): the name may be another's now
                self._release_object()
                return
            try:
                self._client.unregister_shared_memory(self.name)
            except Exception:
                lease.cancel()
            else:
                try:
                    for _ in lease:  # the server ends it with OK at once
                        pass
                except grpc.RpcError:
                    pass
        self._release_object()

    def _release_object(self) -> None:
        if self._shm is None:
            return
        shm, self._shm = self._shm, None
        try:
            shm.unlink()
        except FileNotFoundError:
            pass
        try:
            shm.close()
        except BufferError:  # arrays of the region are still referenced: they keep the mapping
            pass

    def __enter__(self) -> "SharedMemoryRegion":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r}, key={self.key!r}, byte_size={self.byte_size})"


class AsyncSharedMemoryRegion(SharedMemoryRegion):
    """SharedMemoryRegion for focalserve.AsyncClient: registered by `async with` (or
    `await region.open()`), released by leaving it (or `await region.aclose()`)."""

    def __init__(self, client: Any, byte_size: int, name: Optional[str] = None, *, timeout: Optional[float] = None):
        self._make_object(client, byte_size, name)
        self._timeout = timeout

    async def open(self) -> "AsyncSharedMemoryRegion":
        if self._lease is None:
            try:
                self._lease = await self._client._register_shared_memory(self._request(), self._timeout)
            except BaseException:
                self._release_object()
                raise
        return self

    async def aclose(self) -> None:
        if self._lease is not None:
            lease, self._lease = self._lease, None
            if not lease.done():
                try:
                    await self._client.unregister_shared_memory(self.name)
                except Exception:
                    lease.cancel()
                else:
                    try:
                        while await lease.read() is not grpc.aio.EOF:  # the server ends it with OK at once
                            pass
                    except grpc.RpcError:
                        pass
        self._release_object()

    async def __aenter__(self) -> "AsyncSharedMemoryRegion":
        return await self.open()

    async def __aexit__(self, *exc) -> None:
        await self.aclose()
