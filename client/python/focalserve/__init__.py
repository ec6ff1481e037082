"""FocalServe's Python client: NumPy and torch front ends over the generated focal.v1 stubs.

    import focalserve
    with focalserve.Client("127.0.0.1:50051") as client:
        r = client.compute(logits, targets, "softmax_focal", gamma=2.0, compute_gradient=True)

focalserve.AsyncClient is the asyncio twin; focalserve.torch.RemoteFocalLoss is an nn.Module
(imported on demand, so this package does not need torch).
"""
from ._codec import BFloat16, ComputeResult, EvaluateResult, Timing, bfloat16_to_float32
from ._errors import FocalServeError
from ._memory import keep_freed_memory
from ._proto import VARIANTS, pb, rpc
from ._shm import SharedMemoryRegion, SharedTensor
from .aio import AsyncClient
from .client import Client

__version__ = "0.1.0"
__all__ = ["AsyncClient", "BFloat16", "Client", "ComputeResult", "EvaluateResult", "FocalServeError",
           "SharedMemoryRegion", "SharedTensor", "Timing",
           "VARIANTS", "bfloat16_to_float32", "keep_freed_memory", "pb", "rpc"]
