"""The one exception type the client raises for a failed call."""
from __future__ import annotations

import grpc


class FocalServeError(Exception):
    """A call the server (or the channel) answered with a non-OK gRPC status.

    `code` is the `grpc.StatusCode` (INVALID_ARGUMENT, RESOURCE_EXHAUSTED, UNAVAILABLE,
    DEADLINE_EXCEEDED, UNAUTHENTICATED, ...) and `message` the server's text, which names the
    offending field (`targets[3] is 80; must be in [0, 79]`).
    """

    def __init__(self, code: grpc.StatusCode, message: str, method: str = ""):
        self.code = code
        self.message = message
        self.method = method
        where = f"{method}: " if method else ""
        super().__init__(f"{where}{code.name}: {message}")

    @classmethod
    def from_rpc_error(cls, error: grpc.RpcError, method: str = "") -> "FocalServeError":
        code = error.code() if hasattr(error, "code") else grpc.StatusCode.UNKNOWN
        details = error.details() if hasattr(error, "details") else str(error)
        return cls(code if code is not None else grpc.StatusCode.UNKNOWN, details or "", method)
