"""Arrays <-> focal.v1 messages: tensors, loss specs, requests and results.

Tensors travel as raw little-endian C-contiguous bytes with a dtype and a shape. What can be
sent as a tensor:

* NumPy arrays of float32, float16, float64, int32, int64 or uint8; bool arrays are binary
  float targets and go as float16 0/1 (exact, half the bytes of float32; uint8 would mean
  class indices); other dtypes are rejected rather than silently converted;
* torch tensors of those dtypes and of torch.bfloat16 (CUDA tensors are copied to the host);
* bfloat16 from NumPy, which has no bfloat16 dtype: either an array whose dtype is *named*
  'bfloat16' (ml_dtypes / JAX), or `BFloat16(bits)` wrapping a uint16 array of raw bfloat16
  bit patterns.

Tensors that come back (losses, gradient) are NumPy arrays made with `np.frombuffer` over the
response's bytes: no copy, read-only. A bfloat16 tensor comes back as its uint16 bit patterns
(NumPy has no bfloat16); `bfloat16_to_float32` widens it, `ComputeResult.gradient_dtype` says
which it is.
"""
from __future__ import annotations

import collections
import numbers
from typing import Any, Iterable, Mapping, Optional

import numpy as np

from ._proto import DEFAULT_VARIANT, VARIANTS, pb
from ._shm import SharedTensor

# wire enum <-> NumPy dtype (explicitly little-endian; bfloat16 as its uint16 bit patterns)
_NP_OF_WIRE = {
    pb.FLOAT32: np.dtype("<f4"),
    pb.FLOAT16: np.dtype("<f2"),
    pb.FLOAT64: np.dtype("<f8"),
    pb.BFLOAT16: np.dtype("<u2"),
    pb.INT32: np.dtype("<i4"),
    pb.INT64: np.dtype("<i8"),
    pb.UINT8: np.dtype("u1"),
}
_WIRE_OF_KIND = {
    ("f", 4): pb.FLOAT32, ("f", 2): pb.FLOAT16, ("f", 8): pb.FLOAT64,
    ("i", 4): pb.INT32, ("i", 8): pb.INT64, ("u", 1): pb.UINT8, ("b", 1): pb.FLOAT16,
}
_WIRE_OF_NAME = {
    "float32": pb.FLOAT32, "float": pb.FLOAT32, "float16": pb.FLOAT16, "half": pb.FLOAT16,
    "bfloat16": pb.BFLOAT16, "float64": pb.FLOAT64, "double": pb.FLOAT64,
    "int32": pb.INT32, "int64": pb.INT64, "long": pb.INT64, "uint8": pb.UINT8,
}
_REDUCTIONS = {"mean": pb.MEAN, "sum": pb.SUM, "none": pb.NONE}

Timing = collections.namedtuple("Timing", ["queue_micros", "compute_micros"])


class BFloat16:
    """Marks a uint16 NumPy array as raw bfloat16 bit patterns, to send it as BFLOAT16."""

    __slots__ = ("bits",)

    def __init__(self, bits: Any):
        bits = np.asarray(bits)
        if bits.dtype.kind not in "ui" or bits.dtype.itemsize != 2:
            raise TypeError(f"BFloat16 wants uint16 bit patterns, got {bits.dtype}")
        self.bits = bits.view(np.uint16)

    @classmethod
    def from_float32(cls, x: Any) -> "BFloat16":
        """Rounds float32 values to bfloat16, to nearest even (as torch does)."""
        u = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
        rounded = (u + 0x7FFF + ((u >> 16) & 1)) >> 16
        nan = np.isnan(np.asarray(x, dtype=np.float32))
        return cls(np.where(nan, (u >> 16) | 0x40, rounded).astype(np.uint16))


def bfloat16_to_float32(bits: Any) -> np.ndarray:
    """Widens raw bfloat16 bit patterns (uint16) to float32, exactly."""
    bits = np.asarray(bits)
    return (bits.astype(np.uint32) << 16).view(np.float32)


def wire_dtype(dtype: Any) -> int:
    """A DataType from a name ('float32', 'bfloat16', ...), NumPy or torch dtype, or the enum."""
    if dtype is None:
        return pb.DATA_TYPE_UNSPECIFIED
    if isinstance(dtype, numbers.Integral):
        return int(dtype)
    name = str(dtype)
    if name.startswith("torch."):
        name = name[len("torch."):]
    key = name.lower()
    if key in _WIRE_OF_NAME:
        return _WIRE_OF_NAME[key]
    if key.upper() in pb.DataType.keys():
        return pb.DataType.Value(key.upper())
    try:
        np_dtype = np.dtype(dtype)
    except TypeError:
        np_dtype = None
    if np_dtype is not None and (np_dtype.kind, np_dtype.itemsize) in _WIRE_OF_KIND:
        return _WIRE_OF_KIND[(np_dtype.kind, np_dtype.itemsize)]
    raise TypeError(f"unsupported dtype {dtype!r}; expected one of {sorted(_WIRE_OF_NAME)}")


def _torch_to_numpy(x: Any):
    """(array, wire dtype) from a torch tensor, on the host, without autograd."""
    import torch  # only reached with a torch tensor in hand

    x = x.detach()
    if x.device.type != "cpu":
        x = x.cpu()
    if x.dtype == torch.bfloat16:
        return x.contiguous().view(torch.int16).numpy().view(np.uint16), pb.BFLOAT16
    if x.dtype == torch.bool:
        x = x.to(torch.float16)  # binary float targets, as for NumPy bool
    arr = x.numpy()
    return arr, None


def to_numpy(x: Any, field: str):
    """(C-contiguous little-endian array, wire dtype) from anything this client sends."""
    wire = None
    if isinstance(x, BFloat16):
        arr, wire = x.bits, pb.BFLOAT16
    elif type(x).__module__.startswith("torch"):
        arr, wire = _torch_to_numpy(x)
    else:
        arr = np.asarray(x)
        if arr.dtype.name == "bfloat16":  # ml_dtypes / JAX
            arr, wire = arr.view(np.uint16), pb.BFLOAT16
    if wire is None:
        key = (arr.dtype.kind, arr.dtype.itemsize)
        if key not in _WIRE_OF_KIND:
            raise TypeError(f"{field}: dtype {arr.dtype} cannot be sent; use float32, float16, float64, bfloat16 "
                            f"(torch or focalserve.BFloat16), int32, int64 or uint8")
        wire = _WIRE_OF_KIND[key]
        if arr.dtype.kind == "b":
            arr = arr.astype(np.float16)
    if arr.dtype.byteorder == ">":
        arr = arr.astype(arr.dtype.newbyteorder("<"))
    return np.ascontiguousarray(arr), wire


# Fast path: a C-contiguous NumPy array of a native little-endian dtype goes as it is.
_FAST_WIRE = {np.dtype(k): v for k, v in (("<f4", pb.FLOAT32), ("<f2", pb.FLOAT16), ("<f8", pb.FLOAT64),
                                          ("<i4", pb.INT32), ("<i8", pb.INT64), ("u1", pb.UINT8))}


def to_tensor(x: Any, field: str, out: Optional[pb.Tensor] = None,
              data_apart: Optional[list] = None) -> pb.Tensor:
    """A Tensor message (new, or written into `out`) holding x's bytes, or, for a SharedTensor,
    its shared-memory reference. With a list `data_apart`, bytes of at least
    _MIN_JOINED_TENSOR_BYTES are not copied into the message: the array is appended to the list
    instead, for serialize_request to join in from where it lies."""
    if isinstance(x, SharedTensor):
        out = pb.Tensor() if out is None else out
        out.dtype = wire_dtype(x.dtype)
        del out.shape[:]
        out.shape.extend(x.shape)
        out.shared_memory.CopyFrom(x.ref)
        return out
    wire = _FAST_WIRE.get(x.dtype) if type(x) is np.ndarray and x.flags.c_contiguous else None
    if wire is not None:
        arr = x
    else:
        arr, wire = to_numpy(x, field)
    if out is None:
        return pb.Tensor(dtype=wire, shape=arr.shape, data=arr.tobytes())
    out.dtype = wire
    del out.shape[:]
    out.shape.extend(arr.shape)
    if data_apart is not None and arr.nbytes >= _MIN_JOINED_TENSOR_BYTES:
        data_apart.append(arr)
    else:
        out.data = arr.tobytes()
    return out


# Tensors of at least this many bytes are joined into a request's wire bytes from where they lie
# (serialize_request) instead of being copied into the message first: below it the message's
# own copy costs less. The server's kMinSlicedTensorBytes (focal/tensor_wire.h) is the same idea.
_MIN_JOINED_TENSOR_BYTES = 4096


def _varint(n: int) -> bytes:
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


_LENGTH_DELIMITED = 2
_TENSOR_DATA_TAG = _varint(pb.Tensor.DESCRIPTOR.fields_by_name["data"].number << 3 | _LENGTH_DELIMITED)


def serialize_request(request: pb.ComputeRequest, apart: list) -> bytes:
    """The wire bytes of `request` with the tensors compute_request(data_apart=...) kept apart
    (pairs of the request's field name and the array) as those fields' data, in one copy: the
    message's other bytes, then each field written by hand — its tag and length, the Tensor
    without data, the data's tag and length — and the array's bytes joined in from where they
    lie. Protobuf reads fields in any order. `request` loses those fields."""
    heads = []
    for name, arr in apart:
        number = request.DESCRIPTOR.fields_by_name[name].number
        tensor = getattr(request, name).SerializeToString()
        request.ClearField(name)
        size = arr.nbytes
        inner = len(tensor) + len(_TENSOR_DATA_TAG) + len(_varint(size)) + size
        heads.append((_varint(number << 3 | _LENGTH_DELIMITED) + _varint(inner) + tensor + _TENSOR_DATA_TAG
                      + _varint(size), arr))
    parts = [request.SerializeToString()]
    for head, arr in heads:
        parts.append(head)
        parts.append(memoryview(arr.reshape(-1).view(np.uint8)))
    return b"".join(parts)


def from_tensor(t: pb.Tensor, shared: Optional["SharedTensor"] = None) -> np.ndarray:
    """A read-only NumPy view of a response tensor's bytes (bfloat16 as uint16 bits); for one the
    server wrote into shared memory, the view of `shared`, the place the request named."""
    dtype = _NP_OF_WIRE.get(t.dtype)
    if dtype is None:
        raise ValueError(f"the server sent a tensor of unknown dtype {t.dtype}")
    if t.HasField("shared_memory"):
        if shared is None or t.shared_memory != shared.ref:
            raise ValueError("the server answered with a shared-memory tensor the request did not ask for")
        nbytes = int(np.prod(tuple(t.shape), dtype=np.int64)) * np.dtype(dtype).itemsize
        if shared.array.dtype == dtype and shared.array.shape == tuple(t.shape):
            return shared.array
        return shared.array.reshape(-1).view(np.uint8)[:nbytes].view(dtype).reshape(tuple(t.shape))
    return np.frombuffer(t.data, dtype=dtype).reshape(tuple(t.shape))


_DTYPE_NAMES = {v.number: v.name.lower() for v in pb.DataType.DESCRIPTOR.values}


def dtype_name(wire: int) -> str:
    return _DTYPE_NAMES.get(wire) or f"dtype{wire}"


def _reduction(reduction: Any) -> int:
    if isinstance(reduction, numbers.Integral):
        return int(reduction)
    key = str(reduction).lower()
    if key not in _REDUCTIONS:
        raise ValueError(f"reduction {reduction!r}: expected 'mean', 'sum' or 'none'")
    return _REDUCTIONS[key]


# A per-class list parameter `x` travels as `repeated double x_f64` (full precision); the
# `repeated float x` beside it is its older float32 form, which the server still reads.
_F64 = "_f64"


def _parameter_names(message_type) -> "list[str]":
    """A variant's parameters as docs/variants.md names them: its message's fields, a per-class list
    `x_f64` named `x` (one parameter, `alpha`, whichever of its two fields carries it)."""
    names: "list[str]" = []
    for fd in message_type.DESCRIPTOR.fields:
        name = fd.name[:-len(_F64)] if fd.name.endswith(_F64) and fd.label == fd.LABEL_REPEATED else fd.name
        if name not in names:
            names.append(name)
    return names


def _set_messages(container, variant: str, name: str, value: Any) -> None:
    """A repeated message parameter (gamma_schedule's steps): each item a mapping of the step's
    fields or a tuple of them in field order, `(threshold, gamma)`."""
    fields = [f.name for f in container.add().DESCRIPTOR.fields]
    del container[:]
    for item in value:
        if not isinstance(item, Mapping):
            item = tuple(item)
            if len(item) != len(fields):
                raise ValueError(f"{variant}.{name}: each item is ({', '.join(fields)}), got {item!r}")
            item = dict(zip(fields, item))
        _set_params(container.add(), f"{variant}.{name}", item)


def _set_params(message, variant: str, params: Mapping[str, Any]) -> None:
    fields = message.DESCRIPTOR.fields_by_name
    for name, value in params.items():
        if value is None:  # absent: the server's default (docs/variants.md)
            continue
        fd = fields.get(name + _F64) or fields.get(name)  # a list goes at full precision when it can
        if fd is None:
            raise TypeError(f"{variant} has no parameter {name!r}; it takes "
                            f"{', '.join(_parameter_names(message)) or 'none'}")
        if fd.label == fd.LABEL_REPEATED and fd.message_type is not None:
            _set_messages(getattr(message, fd.name), variant, name, value)
        elif fd.label == fd.LABEL_REPEATED:
            if type(value).__module__.startswith("torch"):
                value = value.detach().cpu().double().numpy()
            getattr(message, fd.name).extend(float(v) for v in np.asarray(value, dtype=np.float64).ravel())
        elif fd.enum_type is not None:
            if isinstance(value, str):
                values = fd.enum_type.values_by_name
                if value.upper() not in values:
                    raise ValueError(f"{variant}.{name} is {value!r}; expected one of {', '.join(values)}")
                value = values[value.upper()].number
            setattr(message, name, int(value))
        elif fd.cpp_type in (fd.CPPTYPE_DOUBLE, fd.CPPTYPE_FLOAT):
            setattr(message, name, float(value))
        elif fd.cpp_type in (fd.CPPTYPE_INT64, fd.CPPTYPE_INT32, fd.CPPTYPE_UINT64, fd.CPPTYPE_UINT32):
            setattr(message, name, int(value))
        else:
            setattr(message, name, value)


def _build_loss_spec(variant: str, reduction: Any, normalizer: Optional[float], params: Mapping[str, Any]):
    if variant not in VARIANTS:
        raise ValueError(f"variant {variant!r}: expected one of {', '.join(VARIANTS)}")
    spec = pb.LossSpec(reduction=_reduction(reduction))
    if normalizer is not None:
        spec.normalizer = float(normalizer)
    sub = getattr(spec, variant)
    sub.SetInParent()  # selects the variant even with every parameter at its default
    _set_params(sub, variant, params)
    return spec


_SPEC_CACHE: "dict[Any, pb.LossSpec]" = {}
_PLAIN = (type(None), bool, int, float, str, tuple)


def loss_spec(variant: str, reduction: Any = "mean", normalizer: Optional[float] = None,
              **params: Any) -> pb.LossSpec:
    """The LossSpec message; cached when every parameter is a plain scalar or a tuple of them
    (treat the result as read-only). Arrays and tensors (a mutable alpha) are encoded each time."""
    if not all(type(v) in _PLAIN for v in params.values()) or type(reduction) not in _PLAIN:
        return _build_loss_spec(variant, reduction, normalizer, params)
    key = (variant, reduction, normalizer, tuple(sorted(params.items())))
    try:
        spec = _SPEC_CACHE.get(key)
    except TypeError:  # a tuple holding something unhashable
        return _build_loss_spec(variant, reduction, normalizer, params)
    if spec is None:
        spec = _build_loss_spec(variant, reduction, normalizer, params)
        if len(_SPEC_CACHE) < 256:
            _SPEC_CACHE[key] = spec
    return spec


def _is_scalar(x: Any) -> bool:
    if isinstance(x, numbers.Number):
        return True
    shape = getattr(x, "shape", None)
    return shape is not None and len(shape) == 0


def compute_request(logits: Any, targets: Any, *, variant: str = DEFAULT_VARIANT, reduction: Any = "mean",
                    compute_gradient: bool = False, grad_output: Any = None, gradient_dtype: Any = None,
                    num_objects: Any = None, allow_non_finite: bool = False, normalizer: Optional[float] = None,
                    request_id: str = "", spec: Optional[pb.LossSpec] = None, weights: Any = None,
                    scores: Any = None, gradient_output: Optional["SharedTensor"] = None,
                    losses_output: Optional["SharedTensor"] = None, data_apart: Optional[list] = None,
                    **params: Any) -> pb.ComputeRequest:
    """Builds a ComputeRequest (see Client.compute for the arguments). With a list `data_apart`,
    large tensors' bytes stay out of the message: (field name, array) pairs go into the list,
    for serialize_request."""
    if spec is None:
        spec = loss_spec(variant, reduction, normalizer, **params)
    req = pb.ComputeRequest(request_id=request_id, loss=spec, compute_gradient=bool(compute_gradient),
                            allow_non_finite=bool(allow_non_finite))

    def put(x: Any, field: str, name: str) -> None:
        # Written into the request's own fields: building a Tensor first and passing it to the
        # constructor would copy every byte once more.
        arrays = None if data_apart is None else []
        to_tensor(x, field, getattr(req, name), arrays)
        if arrays:
            data_apart.append((name, arrays[0]))

    put(logits, "logits", "logits")
    put(targets, "targets", "targets")
    if gradient_dtype is not None:
        req.gradient_dtype = wire_dtype(gradient_dtype)
    if num_objects is not None:
        put(num_objects, "num_objects", "num_objects")
    if weights is not None:
        put(weights, "weights", "weights")
    if scores is not None:
        put(scores, "scores", "scores")
    if grad_output is not None:
        if _is_scalar(grad_output):
            req.grad_output_scalar = float(grad_output)
        else:
            put(grad_output, "grad_output", "grad_output_tensor")
    for field, place in (("gradient_output", gradient_output), ("losses_output", losses_output)):
        if place is None:
            continue
        if not isinstance(place, SharedTensor):
            raise TypeError(f"{field} must be a SharedTensor (region.empty(...)), not {type(place).__name__}")
        getattr(req, field).CopyFrom(place.ref)
    return req


# What a batch of Evaluate may carry besides its logits and targets: the request's per-item
# tensors, named as their ComputeRequest fields.
BATCH_EXTRAS = ("num_objects", "weights", "scores")
_BATCH_FORMS = ("(logits, targets), (logits, targets, num_objects), (logits, targets, {extras}), "
                "(logits, targets, num_objects, {extras}) or {'logits': ..., 'targets': ..., extras}, "
                f"extras among {', '.join(BATCH_EXTRAS)}")


def batch_fields(i: int, batch: Any) -> "dict[str, Any]":
    """One Evaluate batch as compute_request's keyword arguments. A batch is a tuple (or list):
    (logits, targets), then optionally num_objects, then optionally a mapping of extras
    ({'weights': w, 'scores': s, 'num_objects': n}); or a mapping with 'logits', 'targets' and
    any extras (what a DataLoader collating dicts yields)."""
    if isinstance(batch, Mapping):
        unknown = sorted(set(batch) - {"logits", "targets", *BATCH_EXTRAS})
        if unknown or "logits" not in batch or "targets" not in batch:
            what = f"unknown key {unknown[0]!r}" if unknown else "'logits' and 'targets' are required"
            raise ValueError(f"batch {i}: {what}; expected {_BATCH_FORMS}")
        return dict(batch)
    try:
        items = list(batch)
    except TypeError:
        raise ValueError(f"batch {i}: a {type(batch).__name__}; expected {_BATCH_FORMS}") from None
    extras: "dict[str, Any]" = {}
    if len(items) in (3, 4) and isinstance(items[-1], Mapping):
        extras = dict(items.pop())
        unknown = sorted(set(extras) - set(BATCH_EXTRAS))
        if unknown:
            raise ValueError(f"batch {i}: unknown key {unknown[0]!r}; expected {_BATCH_FORMS}")
    if len(items) not in (2, 3):
        raise ValueError(f"batch {i}: expected {_BATCH_FORMS}")
    fields = {"logits": items[0], "targets": items[1]}
    if len(items) == 3 and items[2] is not None:
        if "num_objects" in extras:
            raise ValueError(f"batch {i}: num_objects given twice (positionally and in the mapping)")
        fields["num_objects"] = items[2]
    fields.update(extras)
    return fields


def batch_request(i: int, batch: Any, spec: pb.LossSpec, allow_non_finite: bool,
                  evaluate: Optional[pb.EvaluateOptions] = None) -> pb.ComputeRequest:
    """Evaluate's request for batch `i` (request_id 'batch-<i>'; see batch_fields for the forms),
    carrying the evaluation's options when there are any."""
    fields = batch_fields(i, batch)
    request = compute_request(fields.pop("logits"), fields.pop("targets"), spec=spec,
                              allow_non_finite=allow_non_finite, request_id=f"batch-{i}", **fields)
    if evaluate is not None:
        request.evaluate.CopyFrom(evaluate)
    return request


def batch_requests(batches: Iterable[Any], spec: pb.LossSpec, allow_non_finite: bool,
                   evaluate: Optional[pb.EvaluateOptions] = None):
    """ComputeRequests for Evaluate, built lazily, one per batch."""
    for i, batch in enumerate(batches):
        yield batch_request(i, batch, spec, allow_non_finite, evaluate)


def evaluate_options(gamma_sweep: Any = None, calibration_bins: Optional[int] = None,
                     pt_bins: Optional[int] = None) -> Optional[pb.EvaluateOptions]:
    """Evaluate's options message for the analyses asked for (None for none)."""
    from . import analyses
    return analyses.options(gamma_sweep, calibration_bins, pt_bins, pb.EvaluateOptions)


class CapturingIterator:
    """Wraps a request iterator (sync or async) and keeps the exception it raised: gRPC only
    cancels the call when a request iterator fails, and the caller should see the real error."""

    def __init__(self, inner):
        self.inner = inner
        self.error: Optional[BaseException] = None
        self.count = 0  # requests handed to gRPC

    def __iter__(self):
        return self

    def __next__(self):
        try:
            item = next(self.inner)
            self.count += 1
            return item
        except StopIteration:
            raise
        except Exception as e:
            self.error = e
            raise

    def __aiter__(self):
        return self

    async def __anext__(self):
        try:
            if hasattr(self.inner, "__anext__"):
                item = await self.inner.__anext__()
            else:
                try:
                    item = next(self.inner)
                except StopIteration:
                    raise StopAsyncIteration from None
            self.count += 1
            return item
        except StopAsyncIteration:
            raise
        except Exception as e:
            self.error = e
            raise


class ComputeResult:
    """One Compute answer.

    loss      float: the reduced loss (for reduction 'none', the sum of `losses`)
    count     int: items counted by the reduction
    losses    np.ndarray or None: per-item losses (reduction 'none')
    gradient  np.ndarray or None: d(sum w*loss)/d(logits) when compute_gradient was set
    gradient_dtype / losses_dtype   'float32', 'float16', 'bfloat16' (arrays of uint16 bits) or 'float64'
    backend   'cpu' or 'cuda:N';  timing  Timing(queue_micros, compute_micros)
    response  the ComputeResponse message itself
    """

    __slots__ = ("loss", "count", "losses", "gradient", "losses_dtype", "gradient_dtype", "backend", "timing",
                 "request_id", "response")

    def __init__(self, response: pb.ComputeResponse, gradient_output: Optional["SharedTensor"] = None,
                 losses_output: Optional["SharedTensor"] = None):
        self.response = response
        self.loss = response.loss
        self.count = response.count
        self.backend = response.backend
        self.request_id = response.request_id
        self.timing = Timing(response.timing.queue_micros, response.timing.compute_micros)
        self.losses = self.losses_dtype = self.gradient = self.gradient_dtype = None
        if response.HasField("losses"):
            t = response.losses
            self.losses, self.losses_dtype = from_tensor(t, losses_output), _DTYPE_NAMES.get(t.dtype)
        if response.HasField("gradient"):
            t = response.gradient
            self.gradient, self.gradient_dtype = from_tensor(t, gradient_output), _DTYPE_NAMES.get(t.dtype)

    def __repr__(self) -> str:
        parts = [f"loss={self.loss!r}", f"count={self.count}", f"backend={self.backend!r}"]
        if self.losses is not None:
            parts.append(f"losses={self.losses_dtype}{list(self.losses.shape)}")
        if self.gradient is not None:
            parts.append(f"gradient={self.gradient_dtype}{list(self.gradient.shape)}")
        return f"ComputeResult({', '.join(parts)})"


def checked_evaluation(response: "pb.EvaluateResponse", sent: int) -> "EvaluateResult":
    """The EvaluateResult, once the server says it accumulated every batch that was sent: a
    total over fewer batches than the caller streamed would be a silently wrong answer."""
    if response.batches != sent:
        from ._errors import FocalServeError
        import grpc
        raise FocalServeError(grpc.StatusCode.DATA_LOSS,
                              f"the server accumulated {response.batches} batches but {sent} were sent", "Evaluate")
    return EvaluateResult(response)


class EvaluateResult:
    """One Evaluate answer: exact totals over every batch streamed in.

    total_loss, count, mean; class_loss_sums (float64 array) and class_counts (int64 array)
    by target class (row variants) or by class channel (variants whose items are logits);
    batches, backend, timing; sweep (focalserve.analyses.GammaSweep) and calibration
    (focalserve.analyses.Calibration) when they were asked for, else None; response (the
    EvaluateResponse message).
    """

    __slots__ = ("total_loss", "count", "mean", "class_loss_sums", "class_counts", "batches", "backend",
                 "timing", "sweep", "calibration", "response")

    def __init__(self, response: pb.EvaluateResponse):
        self.response = response
        self.total_loss = response.total_loss
        self.count = response.count
        self.mean = response.mean
        self.class_loss_sums = np.array(response.class_loss_sums, dtype=np.float64)
        self.class_counts = np.array(response.class_counts, dtype=np.int64)
        self.batches = response.batches
        self.backend = response.backend
        self.timing = Timing(response.timing.queue_micros, response.timing.compute_micros)
        from . import analyses
        self.sweep = analyses.GammaSweep.from_proto(response.sweep) if response.HasField("sweep") else None
        self.calibration = (analyses.Calibration.from_proto(response.calibration)
                            if response.HasField("calibration") else None)

    def __repr__(self) -> str:
        return (f"EvaluateResult(mean={self.mean!r}, total_loss={self.total_loss!r}, count={self.count}, "
                f"batches={self.batches}, backend={self.backend!r})")
