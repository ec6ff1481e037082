"""The generated focal.v1 modules (focalserve/_generated/, made by build_stubs.py)."""
try:
    from ._generated.focal.v1 import focal_loss_pb2 as pb  # noqa: F401
    from ._generated.focal.v1 import focal_loss_pb2_grpc as rpc  # noqa: F401
except ImportError as e:  # pragma: no cover - depends on the checkout
    raise ImportError(
        "focalserve: the generated stubs are missing; run `/usr/bin/python3 client/python/build_stubs.py` "
        "(or install the package with pip, which runs it)") from e

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["FocalLossService"].full_name  # "focal.v1.FocalLossService"
COMPUTE_METHOD = f"/{SERVICE_NAME}/Compute"  # the path gRPC calls it by
VARIANTS = tuple(f.name for f in pb.LossSpec.DESCRIPTOR.oneofs_by_name["variant"].fields)
# The variant a call computes when it names none: the first of the oneof, as on the server.
DEFAULT_VARIANT = VARIANTS[0]
