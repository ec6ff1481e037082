"""grpc.health.v1.Health/Check without generated stubs.

Why by hand: the health stubs ship in PyPI's `grpcio-health-checking` (module `grpc_health`),
which Debian does not package and this project cannot install (no PyPI). Generating the copy of
health.proto in this repository (proto/grpc/health/v1/health.proto, which the C++ client and
tests use: gRPC C++ serves health over upb, so there it is the only definition) would put a
second definition of `grpc.health.v1` in a Python process's descriptor pool as soon as the real
package is also imported, and the second import fails. The two messages are tiny, so they are
encoded here directly:

    HealthCheckRequest  { string service = 1; }        -> tag 0x0A, varint length, UTF-8 bytes
    HealthCheckResponse { ServingStatus status = 1; }  -> tag 0x08, varint enum value

and the call goes through a generic unary method on the same channel.
"""
from __future__ import annotations

SERVICE = "grpc.health.v1.Health"
METHOD = f"/{SERVICE}/Check"
STATUS_NAMES = {0: "UNKNOWN", 1: "SERVING", 2: "NOT_SERVING", 3: "SERVICE_UNKNOWN"}


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _read_varint(data: bytes, i: int):
    shift = result = 0
    while True:
        if i >= len(data):
            raise ValueError("truncated varint in HealthCheckResponse")
        b = data[i]
        i += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, i
        shift += 7


def encode_request(service: str) -> bytes:
    raw = service.encode("utf-8")
    return b"\x0a" + _varint(len(raw)) + raw if raw else b""  # proto3: the empty string is not sent


def decode_response(data: bytes) -> str:
    """The ServingStatus name; unknown fields are skipped as protobuf requires."""
    status, i = 0, 0
    while i < len(data):
        key, i = _read_varint(data, i)
        field, wire_type = key >> 3, key & 7
        if wire_type == 0:
            value, i = _read_varint(data, i)
            if field == 1:
                status = value
        elif wire_type == 1:
            i += 8
        elif wire_type == 2:
            length, i = _read_varint(data, i)
            i += length
        elif wire_type == 5:
            i += 4
        else:
            raise ValueError(f"unexpected wire type {wire_type} in HealthCheckResponse")
    return STATUS_NAMES.get(status, f"UNKNOWN({status})")
