"""What nvfp4d returns, as Python values: results, metrics, jobs and server information.

The dataclasses are filled from the nvfp4.v1 messages field by field (same names, proto enums
as short lowercase strings, unset optional fields as None), so they stay in step with
proto/nvfp4/v1/quantizer.proto, where every field is documented.
"""
import dataclasses
from dataclasses import dataclass
from typing import Dict, Optional, Tuple

import ml_dtypes
import numpy as np


def _import_torch(what: str, instead: str):
    """torch, or a ModuleNotFoundError that says what needed it and how to do without."""
    try:
        import torch
    except ModuleNotFoundError as error:
        raise ModuleNotFoundError(f"{what} needs torch, which cannot be imported (pip install "
                                  f"torch); without torch, {instead}", name="torch") from error
    return torch


def enum_name(enum_type, value: int) -> str:
    """JOB_STATE_RUNNING -> "running", METHOD_FOUR_OVER_SIX -> "four-over-six", ..."""
    name = enum_type.Name(value)
    prefix = enum_type.DESCRIPTOR.values[0].name.rsplit("_", 1)[0] + "_"  # e.g. "JOB_STATE_"
    short = name[len(prefix):].lower() if name.startswith(prefix) else name.lower()
    return short.replace("_", "-")


def from_message(cls, message, **overrides):
    """cls(**fields of message) for the dataclass fields cls declares; optional proto fields
    that are unset become None."""
    values = {}
    for f in dataclasses.fields(cls):
        if f.name in overrides:
            values[f.name] = overrides[f.name]
            continue
        descriptor = message.DESCRIPTOR.fields_by_name[f.name]
        if descriptor.has_presence and not message.HasField(f.name):
            values[f.name] = None
        else:
            values[f.name] = getattr(message, f.name)
    return cls(**values)


@dataclass(frozen=True)
class TensorMetrics:
    """Error figures of one quantised tensor (TensorMetrics in the proto). gain = mse /
    absmax_mse (below 1: better than AbsMax with the same global scale); with importance,
    wmse, absmax_wmse and wmse_gain are set."""

    elements: int
    blocks: int
    mse: float
    wmse: Optional[float]
    nmse: float
    sqnr_db: float
    max_abs_error: float
    absmax_mse: float
    gain: float
    candidates_per_block: float
    quantize_seconds: float
    queue_seconds: float
    backend: str
    absmax_wmse: Optional[float]
    wmse_gain: Optional[float]
    objective: str  # "mse" or "wmse": what the scales minimised


def metrics_from(message, objective_enum) -> TensorMetrics:
    return from_message(TensorMetrics, message,
                        objective=enum_name(objective_enum, message.objective))


@dataclass(frozen=True)
class QuantizedTensor:
    """One tensor in NVFP4 (ModelOpt layout: nvfp4-formats in docs/numerics.md).

    packed: uint8, the input's shape with its last axis replaced by padded_cols / 2 (element 2j
        of a row in the low nibble of byte j); None when only the dequantised tensor was asked.
    scales: ml_dtypes.float8_e4m3fn, last axis padded_cols / 16 (one scale per 16 elements;
        `.view(np.uint8)` gives the bytes); None like packed.
    global_scale: g, ModelOpt's weight_scale_2: value = e2m1 * float(scale) * g.
    dequantized: the fake-quant tensor (the input's shape; float32 or ml_dtypes.bfloat16) when
        asked with output="dequantized" or "both", else None.
    """

    job_id: str
    shape: Tuple[int, ...]
    rows: int
    cols: int
    padded_cols: int
    global_scale: float
    amax: float
    packed: Optional[np.ndarray]
    scales: Optional[np.ndarray]
    dequantized: Optional[np.ndarray]
    metrics: TensorMetrics

    def modelopt_tensors(self, prefix: str = "", as_torch: bool = False) -> Dict[str, object]:
        """{prefix + "weight": packed, prefix + "weight_scale": scales, prefix + "weight_scale_2":
        g}: the tensors of a ModelOpt NVFP4 Linear layer, as numpy arrays (weight_scale_2 a 0-d
        float32 array) or torch tensors (weight_scale torch.float8_e4m3fn)."""
        if self.packed is None:
            raise ValueError("no packed output: quantize with output='packed' or 'both'")
        g = np.array(self.global_scale, dtype=np.float32)
        if not as_torch:
            return {prefix + "weight": self.packed, prefix + "weight_scale": self.scales,
                    prefix + "weight_scale_2": g}
        torch = _import_torch("modelopt_tensors(as_torch=True)",
                              "modelopt_tensors() returns numpy arrays")

        scales = torch.from_numpy(self.scales.view(np.uint8)).view(torch.float8_e4m3fn)
        return {prefix + "weight": torch.from_numpy(self.packed),
                prefix + "weight_scale": scales,
                prefix + "weight_scale_2": torch.from_numpy(g)}

    def dequantized_torch(self):
        """The dequantised tensor as a torch tensor (torch.float32 or torch.bfloat16)."""
        if self.dequantized is None:
            raise ValueError("no dequantized output: quantize with output='dequantized' or "
                             "'both'")
        torch = _import_torch("dequantized_torch()", "use the numpy array .dequantized")

        if self.dequantized.dtype == ml_dtypes.bfloat16:
            return torch.from_numpy(self.dequantized.view(np.int16)).view(torch.bfloat16)
        return torch.from_numpy(self.dequantized)


@dataclass(frozen=True)
class Job:
    """A job on the server (Job in the proto); kind "tensor" or "checkpoint", state one of
    "receiving", "queued", "running", "succeeded", "failed", "cancelled"."""

    id: str
    kind: str
    state: str
    name: str
    created_unix: float
    started_unix: float
    finished_unix: float
    elements: int
    error_code: str
    error_message: str
    request_id: str
    metrics: Optional[TensorMetrics]


@dataclass(frozen=True)
class Device:
    name: str
    kind: str
    workers: int


@dataclass(frozen=True)
class Limits:
    max_chunk_bytes: int
    max_message_bytes: int
    max_tensor_bytes: int
    memory_budget_bytes: int
    max_queue: int
    job_history: int


@dataclass(frozen=True)
class ServerInfo:
    version: str
    devices: Tuple[Device, ...]
    methods: Tuple[str, ...]
    objectives: Tuple[str, ...]
    limits: Limits
    auth_required: bool
    draining: bool


@dataclass(frozen=True)
class CheckpointProgress:
    """One event of a checkpoint job: phase "plan", "amax", "quantize", "finalize" or "done";
    tensor is the finished tensor's report entry (docs/checkpoints.md) or None; a warning is
    meant to be shown even by quiet callers."""

    phase: str
    done: int
    total: int
    bytes_done: int
    bytes_total: int
    message: str
    tensor: Optional[dict]
    warning: bool
