"""Independent NumPy + ml_dtypes references of the NVFP4 checkpoint math, shared by the Python
suites: ModelOpt's weight export (nvfp4-formats.md 1.2 and 7, steps 1-5) and a decoder written
from the format spec, never from our C++ code."""
import ml_dtypes
import numpy as np

# E2M1 code -> value (nvfp4-formats.md section 0); bit 3 is the sign.
E2M1_VALUES = np.array([0, .5, 1, 1.5, 2, 3, 4, 6, -0., -.5, -1, -1.5, -2, -3, -4, -6], np.float32)


def modelopt_export(w, amax=None, scale_max=448):
    """ModelOpt's NVFP4 weight export (nvfp4-formats.md 1.2 / 7 steps 1-5) in numpy/ml_dtypes;
    `amax` is the fused group's when given. scale_max 256 only changes s2 = amax / (6 F)."""
    w = w.astype(np.float32)
    n, k = w.shape
    amax = np.float32(np.abs(w).max() if amax is None else amax)
    s2 = np.float32(amax / np.float32(6 * scale_max)) if amax > 0 else np.float32(1.0)
    blocks = w.reshape(n, k // 16, 16)
    block_amax = np.abs(blocks).max(axis=-1)
    bs = (block_amax / (np.float32(6.0) * s2)).astype(np.float32)
    bs[bs == 0] = np.float32(1.0)
    bs_fp8 = np.clip(bs, np.float32(2.0 ** -9), np.float32(448.0)).astype(ml_dtypes.float8_e4m3fn)
    eff = (bs_fp8.astype(np.float32) * s2).astype(np.float32)
    y = (blocks / eff[..., None]).astype(np.float32)
    ay = np.abs(y)
    ordinal = np.searchsorted(np.array([0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0], np.float32), ay,
                              side="left")
    ordinal = ordinal + np.isin(ay, np.array([0.75, 1.75, 3.5], np.float32))
    codes = (ordinal | ((y < 0).astype(np.int64) << 3)).astype(np.uint8).reshape(n, k)
    packed = (codes[:, 0::2] | (codes[:, 1::2] << 4)).astype(np.uint8)
    return packed, bs_fp8.view(np.uint8), s2


def decode(packed, scales_u8, s2, k):
    """Independent decoder: low nibble = element 2j, E2M1 table of section 0, E4M3 by ml_dtypes,
    w = e2m1 * fl32(float(scale) * s2) (the scale product first, as ModelOpt's dequantize)."""
    codes = np.stack([packed & 0xF, packed >> 4], axis=-1).reshape(packed.shape[0], -1)[:, :k]
    scale = np.ascontiguousarray(scales_u8).view(ml_dtypes.float8_e4m3fn).astype(np.float32)
    eff = (scale * np.float32(s2)).astype(np.float32)
    eff = np.repeat(eff, 16, axis=1)[:, :k]
    return (E2M1_VALUES[codes] * eff).astype(np.float32)
