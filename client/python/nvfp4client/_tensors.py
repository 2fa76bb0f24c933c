"""Tensors in, bytes out: what the client sends for a numpy array or a torch tensor.

nvfp4d takes row-major little-endian f32, bf16 or f16 bytes of a [rows, cols] tensor. An N-D
input is quantised along its last axis (rows = the product of the others), the way a Linear
weight [out, in] or a batch of activations [..., hidden] is; a 1-D input is one row.
Nothing here changes a value: other dtypes are refused with the conversion to make, because a
silent float64 -> float32 rounding would quantise a different tensor than the caller holds.
"""
import struct
import sys
from dataclasses import dataclass
from typing import Optional, Tuple

import ml_dtypes
import numpy as np

# dtype name -> the unsigned integer type of its bits
_BITS = {"f32": np.uint32, "bf16": np.uint16, "f16": np.uint16}
# Magnitude mask and the smallest non-finite magnitude (Inf) of each dtype, as bits.
_MAGNITUDE = {"f32": (0x7FFFFFFF, 0x7F800000), "bf16": (0x7FFF, 0x7F80), "f16": (0x7FFF, 0x7C00)}
_SCAN_ELEMENTS = 1 << 22  # elements per step of the amax scan (bounds its temporary)


@dataclass(frozen=True)
class TensorBytes:
    """A tensor as nvfp4d reads it: dtype name, [rows, cols], and its raw bytes."""

    dtype: str
    shape: Tuple[int, ...]  # the caller's shape (results are reshaped back to it)
    rows: int
    cols: int
    array: np.ndarray  # C-contiguous little-endian, shares memory with the input when it can

    def data(self) -> memoryview:
        return memoryview(self.array.reshape(-1).view(np.uint8))


def is_torch(x) -> bool:
    """Whether x is a torch.Tensor, subclasses of other modules included (nn.Parameter,
    bitsandbytes' Params4bit, ...). torch is only looked up, never imported: without torch
    imported there is no torch tensor, and importing it would cost seconds."""
    torch = sys.modules.get("torch")
    tensor_type = getattr(torch, "Tensor", None)
    return isinstance(tensor_type, type) and isinstance(x, tensor_type)


def _torch_to_numpy(x, what: str) -> Tuple[np.ndarray, str]:
    import torch

    names = {torch.float32: "f32", torch.bfloat16: "bf16", torch.float16: "f16"}
    if x.dtype not in names:
        raise TypeError(f"{what}: torch dtype {x.dtype} is not an nvfp4d input dtype "
                        "(float32, bfloat16, float16); convert it first, e.g. x.float()")
    name = names[x.dtype]
    t = x.detach().to("cpu").contiguous()
    # numpy has no bfloat16: the bits travel as integers and are viewed as ml_dtypes' type.
    if name == "bf16":
        return t.view(torch.int16).numpy().view(ml_dtypes.bfloat16), name
    return t.numpy(), name


def _numpy_dtype_name(dtype: np.dtype) -> Optional[str]:
    if dtype == np.float32:
        return "f32"
    if dtype == np.float16:
        return "f16"
    if dtype == ml_dtypes.bfloat16:
        return "bf16"
    return None


def tensor_bytes(x, what: str = "tensor") -> TensorBytes:
    """The bytes nvfp4d reads for x: a numpy array (float32, float16, ml_dtypes.bfloat16) or a
    torch tensor (float32, bfloat16, float16; moved to the CPU). TypeError for other types and
    dtypes, ValueError for a 0-d or empty tensor."""
    if is_torch(x):
        arr, name = _torch_to_numpy(x, what)
    elif isinstance(x, np.ma.MaskedArray):
        raise TypeError(f"{what}: a masked array would be sent with the values under its mask; "
                        "fill it first, e.g. x.filled(0)")
    elif isinstance(x, np.ndarray):
        arr = x
        name = _numpy_dtype_name(np.dtype(arr.dtype).newbyteorder("="))
        if name is None:
            raise TypeError(f"{what}: numpy dtype {arr.dtype} is not an nvfp4d input dtype "
                            "(float32, float16, ml_dtypes.bfloat16); convert it first, e.g. "
                            "x.astype(np.float32)")
    else:
        raise TypeError(f"{what}: expected a numpy array or a torch tensor, got {type(x).__name__}")
    if arr.ndim == 0:
        raise ValueError(f"{what}: a 0-d tensor has no rows to quantise")
    if arr.size == 0:
        raise ValueError(f"{what}: shape {tuple(arr.shape)} has no elements")
    if arr.dtype.byteorder == ">":
        arr = arr.astype(arr.dtype.newbyteorder("<"))
    arr = np.ascontiguousarray(arr)
    cols = int(arr.shape[-1])
    rows = int(arr.size // cols)
    return TensorBytes(name, tuple(int(d) for d in arr.shape), rows, cols, arr)


def _bits_to_float(dtype: str, bits: int) -> float:
    if dtype == "f32":
        return struct.unpack("<f", struct.pack("<I", bits))[0]
    if dtype == "bf16":
        return struct.unpack("<f", struct.pack("<I", bits << 16))[0]
    return float(np.array([bits], np.uint16).view(np.float16)[0])


def finite_amax(t: TensorBytes) -> Optional[float]:
    """max |x| over the tensor, exactly (the float nvfp4d would compute), or None when the
    tensor holds a NaN or an Inf (nvfp4d then reports the first one). Integer maxima of the
    magnitude bits: IEEE order of non-negative floats is the order of their bits."""
    bits_type = _BITS[t.dtype]
    mask, non_finite = _MAGNITUDE[t.dtype]
    bits = t.array.reshape(-1).view(bits_type)
    largest = 0
    for start in range(0, bits.size, _SCAN_ELEMENTS):
        chunk = bits[start:start + _SCAN_ELEMENTS]
        largest = max(largest, int(np.bitwise_and(chunk, bits_type(mask)).max()))
    if largest >= non_finite:
        return None
    return _bits_to_float(t.dtype, largest)


def importance_bytes(w, rows: int, cols: int, shape: Tuple[int, ...]) -> Tuple[str, np.ndarray]:
    """("per_column" | "per_element", f32 values) for importance weights w: [cols] weights one
    column each (broadcast over rows), or one per element (the tensor's shape, or [rows, cols]).
    Any float dtype is accepted and converted to f32, the wire type of importance."""
    if isinstance(w, np.ma.MaskedArray):
        raise TypeError("importance: a masked array; fill it first, e.g. w.filled(0)")
    if is_torch(w):
        if not w.is_floating_point():
            raise TypeError(f"importance: expected floating-point weights, got {w.dtype}")
        w = w.detach().to("cpu")
        # float64 stays float64 (numpy has it) so that the range check below sees the values.
        w = (w.double() if w.element_size() > 4 else w.float()).contiguous().numpy()
    w = np.asarray(w)
    if w.dtype.kind != "f" and w.dtype != ml_dtypes.bfloat16:
        raise TypeError(f"importance: expected floating-point weights, got dtype {w.dtype}")
    with np.errstate(over="ignore"):
        values = np.ascontiguousarray(w, dtype="<f4")
    if w.dtype.itemsize > 4 and not np.isfinite(values).all():
        # Only a wider float can overflow f32: a finite weight would be sent as inf.
        overflow = np.flatnonzero(np.isinf(values) & np.isfinite(w.reshape(values.shape)))
        if overflow.size:
            index = int(overflow[0])
            raise ValueError(f"importance value {index} ({float(w.reshape(-1)[index]):g}) is "
                             "beyond float32's range, the type importance is sent in: scale "
                             "the weights down")
    if values.shape == (cols,):  # (for one row, per column and per element are the same)
        return "per_column", values
    if values.shape in (shape, (rows, cols)):
        return "per_element", values.reshape(-1)
    raise ValueError(f"importance: shape {tuple(values.shape)} matches neither the tensor's "
                     f"columns ({cols},) nor its shape {shape}")
