"""focalserve.torch: a focal loss computed by a FocalServe server, as a torch nn.Module.

    loss_fn = RemoteFocalLoss(client, "softmax_focal", gamma=2.0)
    loss = loss_fn(logits, targets)      # one Compute call (loss and gradient)
    loss.backward()                       # no call for 'mean'/'sum'

How the gradient gets to autograd:

* reduction 'mean' / 'sum': forward asks for the gradient with upstream w = 1 in the same
  round trip; backward multiplies it by the (scalar) upstream gradient. The server's
  gradient is linear in w, so this is exact. For float16/bfloat16 logits the gradient is
  fetched as float32 and rounded to the logits' dtype once, after the multiplication.
* reduction 'none': the upstream gradient is a tensor, known only in backward, and the
  per-item gradient cannot be rebuilt from the losses, so backward makes a second Compute
  call with grad_output_tensor = upstream (the request built in forward is kept and re-sent
  with the gradient fields set). One extra round trip, only when backward runs.

Forward asks for no gradient when autograd will not need one (torch.no_grad(), or logits not
requiring grad). The gradient is taken with respect to the logits only: targets, num_objects,
weights and scores are data, sent as they are and never differentiated (a tensor of them that
requires grad gets no .grad). Works for every variant and for float32/float16/bfloat16/float64 logits; the
loss and the gradient keep the logits' dtype and device. CUDA tensors are copied to the host
for the call and the results copied back (the server does the math; the GPU it uses is its
own). Double backward is not supported.
"""
from __future__ import annotations

from typing import Any, Optional

import numpy as np
import torch

from ._codec import loss_spec, to_tensor
from ._proto import DEFAULT_VARIANT, pb

__all__ = ["RemoteFocalLoss"]

_SIXTEEN_BIT = (torch.float16, torch.bfloat16)


def _to_torch(array: np.ndarray, wire_dtype: str, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """A response array (read-only view) as an owned torch tensor of `dtype` on `device`."""
    if wire_dtype == "bfloat16":
        t = torch.from_numpy(array.view(np.int16).copy()).view(torch.bfloat16)
    else:
        t = torch.from_numpy(array.copy())
    return t.to(device=device, dtype=dtype)


class _RemoteFocalFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits: torch.Tensor, targets: Any, num_objects: Any, weights: Any, scores: Any,
                module: "RemoteFocalLoss"):
        need_grad = bool(ctx.needs_input_grad[0])
        reduced = module.reduction != "none"
        sixteen = logits.dtype in _SIXTEEN_BIT
        args = dict(compute_gradient=need_grad and reduced,
                    gradient_dtype="float32" if (need_grad and reduced and sixteen) else None,
                    num_objects=num_objects, allow_non_finite=module.allow_non_finite, normalizer=module.normalizer,
                    weights=weights, scores=scores, **module.params)
        keep_request = need_grad and not reduced  # re-sent in backward with the upstream gradient
        if keep_request:
            request = module.client.build_request(logits, targets, module.variant, module.reduction, **args)
            result = module.client.compute_request(request, timeout=module.timeout)
        else:  # compute() sends the arrays' bytes without building a message of them first
            result = module.client.compute(logits, targets, module.variant, module.reduction, timeout=module.timeout,
                                           **args)
        ctx.logits_dtype, ctx.logits_device, ctx.reduced = logits.dtype, logits.device, reduced
        if reduced:
            if need_grad:
                # kept on the host in float32 (16-bit logits) or the logits' dtype until backward
                keep = torch.float32 if sixteen else logits.dtype
                ctx.gradient = _to_torch(result.gradient, result.gradient_dtype, keep, torch.device("cpu"))
            return torch.tensor(result.loss, dtype=logits.dtype, device=logits.device)
        if keep_request:
            ctx.request = request
            ctx.module = module
        return _to_torch(result.losses, result.losses_dtype, logits.dtype, logits.device)

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):
        if not ctx.needs_input_grad[0]:
            return None, None, None, None, None, None
        if ctx.reduced:
            gradient = ctx.gradient.to(grad_output.device)
            gradient = (gradient * grad_output.to(gradient.dtype)).to(ctx.logits_dtype)
            return gradient, None, None, None, None, None
        request: pb.ComputeRequest = ctx.request
        request.compute_gradient = True
        request.gradient_dtype = pb.DATA_TYPE_UNSPECIFIED  # the logits' dtype: one rounding, on the server
        to_tensor(grad_output, "grad_output", request.grad_output_tensor)
        result = ctx.module.client.compute_request(request, timeout=ctx.module.timeout)
        gradient = _to_torch(result.gradient, result.gradient_dtype, ctx.logits_dtype, ctx.logits_device)
        return gradient, None, None, None, None, None


class RemoteFocalLoss(torch.nn.Module):
    """A focal-loss variant computed remotely, with its gradient, as an nn.Module.

    client      a focalserve.Client (blocking)
    variant     one of focalserve.VARIANTS
    reduction   'mean' | 'sum' | 'none'
    normalizer  replaces MEAN's count as the denominator (e.g. RetinaNet's positive anchors)
    **params    the variant's parameters (gamma, alpha, ignore_index, label_smoothing, ...;
                gamma_pos/gamma_neg/clip, beta, iou_weighted, ... for the newer variants)

    forward(logits, targets, num_objects=None, weights=None, scores=None): every variant.
    targets and the optional per-item tensors as torch tensors or NumPy arrays (any float
    dtype for the float ones):
      targets      integer class targets or float targets, as the variant takes them
      num_objects  float [N], dynamic_focal
      weights      per-item loss weights, shaped like the 'none' losses, each >= 0: they scale
                   the loss and its gradient (MEAN still divides by the variant's count)
      scores       quality_focal with class-index targets: the target class's quality, shaped
                   like the targets
    Only the logits get a gradient: targets, num_objects, weights and scores are not
    differentiated (treated as constants; one that requires grad gets none).
    """

    def __init__(self, client, variant: str = DEFAULT_VARIANT, reduction: str = "mean", *,
                 normalizer: Optional[float] = None, allow_non_finite: bool = False,
                 timeout: Optional[float] = None, **params: Any):
        super().__init__()
        reduction = str(reduction).lower()
        if reduction not in ("mean", "sum", "none"):
            raise ValueError(f"reduction {reduction!r}: expected 'mean', 'sum' or 'none'")
        self.client = client
        self.variant = variant
        self.reduction = reduction
        self.normalizer = normalizer
        self.allow_non_finite = allow_non_finite
        self.timeout = timeout
        self.params = dict(params)
        # fail on an unknown variant or parameter now, not at the first batch
        loss_spec(variant, reduction, normalizer, **self.params)

    def forward(self, logits: torch.Tensor, targets: Any, num_objects: Any = None, weights: Any = None,
                scores: Any = None) -> torch.Tensor:
        return _RemoteFocalFunction.apply(logits, targets, num_objects, weights, scores, self)

    def extra_repr(self) -> str:
        params = ", ".join(f"{k}={v!r}" for k, v in self.params.items())
        return f"{self.variant!r}, reduction={self.reduction!r}{', ' + params if params else ''}"
