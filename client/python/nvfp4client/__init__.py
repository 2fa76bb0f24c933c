"""nvfp4client: Python client of nvfp4d, the NVFP4 (ScaleSweep) quantisation service.

    import nvfp4client
    with nvfp4client.Client("127.0.0.1:50051") as client:
        q = client.quantize(weight)          # numpy or torch, f32 / bf16 / f16
        state = q.modelopt_tensors("model.layers.0.mlp.down_proj.")

Guide: docs/python.md. API contract: proto/nvfp4/v1/quantizer.proto.
"""
from ._client import (METHODS, OBJECTIVES, RETRYABLE, Client, InvalidArgumentError,
                      Nvfp4Error, channel_target)
from ._results import (CheckpointProgress, Device, Job, Limits, QuantizedTensor, ServerInfo,
                       TensorMetrics)

__all__ = ["Client", "QuantizedTensor", "TensorMetrics", "Job", "ServerInfo", "Device",
           "Limits", "CheckpointProgress", "Nvfp4Error", "InvalidArgumentError",
           "channel_target", "METHODS", "OBJECTIVES", "RETRYABLE"]
