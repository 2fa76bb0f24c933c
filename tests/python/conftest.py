"""Shared fixtures: paths to the built binaries and the codec shim, set by CTest."""
import ctypes
import os
import pathlib
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest


def _bin_dir() -> pathlib.Path:
    path = os.environ.get("NVFP4_BIN")
    if not path:
        pytest.exit("NVFP4_BIN is not set: run these tests through ctest (make test)", 2)
    return pathlib.Path(path)


@pytest.fixture(scope="session")
def nvfp4q() -> str:
    return str(_bin_dir() / "nvfp4q")


@pytest.fixture(scope="session")
def codec():
    lib = ctypes.CDLL(os.environ["NVFP4_SHIM"])
    f32p = np.ctypeslib.ndpointer(np.float32, flags="C_CONTIGUOUS")
    u8p = np.ctypeslib.ndpointer(np.uint8, flags="C_CONTIGUOUS")
    for name, args in {
        "nvfp4_encode_e4m3_rne": (f32p, u8p),
        "nvfp4_encode_scale_e4m3": (f32p, u8p),
        "nvfp4_decode_e4m3": (u8p, f32p),
        "nvfp4_encode_e2m1": (f32p, u8p),
        "nvfp4_decode_e2m1": (u8p, f32p),
    }.items():
        fn = getattr(lib, name)
        fn.argtypes = [*args, ctypes.c_int64]
        fn.restype = None
    lib.nvfp4_dequantize_f32.argtypes = [u8p, u8p, ctypes.c_float, ctypes.c_int64, ctypes.c_int64,
                                         f32p]
    lib.nvfp4_dequantize_f32.restype = None

    class Codec:
        @staticmethod
        def _map(fn, x, out_dtype):
            x = np.ascontiguousarray(x)
            out = np.empty(x.shape, dtype=out_dtype)
            fn(x.ravel(), out.ravel(), x.size)
            return out

        def encode_e4m3_rne(self, x):
            return self._map(lib.nvfp4_encode_e4m3_rne, x.astype(np.float32), np.uint8)

        def encode_scale_e4m3(self, x):
            return self._map(lib.nvfp4_encode_scale_e4m3, x.astype(np.float32), np.uint8)

        def decode_e4m3(self, b):
            return self._map(lib.nvfp4_decode_e4m3, b.astype(np.uint8), np.float32)

        def encode_e2m1(self, x):
            return self._map(lib.nvfp4_encode_e2m1, x.astype(np.float32), np.uint8)

        def decode_e2m1(self, b):
            return self._map(lib.nvfp4_decode_e2m1, b.astype(np.uint8), np.float32)

        def dequantize(self, packed, scales, global_scale, cols):
            """Our dequantisation (kernels/dequantize.h): packed U8 [rows, padded/2], scales
            (E4M3 bytes) [rows, padded/16], fp32 global scale g -> f32 [rows, cols]."""
            packed = np.ascontiguousarray(packed, dtype=np.uint8)
            scales = np.ascontiguousarray(np.asarray(scales).view(np.uint8))
            rows = packed.shape[0]
            assert packed.shape[1] * 2 >= cols and scales.shape == (rows, packed.shape[1] // 8)
            out = np.empty((rows, cols), dtype=np.float32)
            lib.nvfp4_dequantize_f32(packed, scales, float(np.float32(global_scale)), rows, cols,
                                     out)
            return out

    return Codec()


REPO = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests" / "pylib"))
from nvfp4_daemon import Daemon  # noqa: E402  (shared with tests/integration)


@pytest.fixture(scope="session")
def pb(tmp_path_factory):
    """nvfp4.v1 Python stubs generated from the repository's proto at test time."""
    from grpc_tools import protoc
    out = tmp_path_factory.mktemp("stubs")
    rc = protoc.main(["protoc", f"-I{REPO / 'proto'}", f"--python_out={out}",
                      f"--grpc_python_out={out}", str(REPO / "proto/nvfp4/v1/quantizer.proto")])
    assert rc == 0
    sys.path.insert(0, str(out))
    from nvfp4.v1 import quantizer_pb2, quantizer_pb2_grpc
    return quantizer_pb2, quantizer_pb2_grpc


@pytest.fixture
def nvfp4d(nvfp4q):
    path = str(pathlib.Path(nvfp4q).parent / "nvfp4d")
    daemons = []

    def start(*args):
        d = Daemon(path, *args)
        daemons.append(d)
        return d

    yield start
    for d in daemons:
        d.stop()
