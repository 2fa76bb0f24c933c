#!/usr/bin/env python3
"""Throughput of the Python client (client/python) against nvfp4q on the same tensor, same run.

One bf16 tensor (default 8192 x 4096, 64 MiB) quantised with ScaleSweep (MSE, F = 256):
  embedded      nvfp4q quantize-tensor, no server (reads the raw file, writes safetensors)
  nvfp4q remote the same through nvfp4d (the C++ client)
  python        nvfp4client.Client.quantize on the array in memory
and, for the many-small-tensors case of calibration, the same tensor cut into 16 row slices,
sent one after the other and with quantize_many (4 in flight); last, slices of 1 to 16 MiB sent
as one unary message and as a stream. Best of --repeat runs each (of 7 for the transports); the
ratios are of figures measured in this run. Run as `make bench-python-client`.
"""
import argparse
import os
import pathlib
import subprocess
import sys
import tempfile
import time

import ml_dtypes
import numpy as np

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "pylib"))
from nvfp4_daemon import Daemon  # noqa: E402


def best_of(repeat, fn):
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def compare_transports(client, w):
    """Best of 7 per size: one unary message against the stream, the choice the client makes
    at 1 MiB (nvfp4client._client._UNARY_MAX_BYTES)."""
    from nvfp4client import _client

    chosen = _client._UNARY_MAX_BYTES
    rows = []
    try:
        for mib in (1, 2, 8, 16):
            x = w.reshape(-1)[:mib << 19].reshape(-1, w.shape[1])
            times = {}
            for name, cap in (("unary", 1 << 40), ("streamed", 0)):
                _client._UNARY_MAX_BYTES = cap
                client.quantize(x)
                times[name] = best_of(7, lambda: client.quantize(x))
            rows.append((mib, times["unary"], times["streamed"]))
    finally:
        _client._UNARY_MAX_BYTES = chosen
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bin", default=str(REPO / "build" / "bin"))
    parser.add_argument("--rows", type=int, default=8192)
    parser.add_argument("--cols", type=int, default=4096)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    import nvfp4client

    bin_dir = pathlib.Path(args.bin)
    rng = np.random.default_rng(7)
    w = rng.standard_normal((args.rows, args.cols), np.float32).astype(ml_dtypes.bfloat16)
    mib = w.nbytes / 2**20
    print(f"tensor: bf16 [{args.rows}, {args.cols}] = {mib:.0f} MiB; ScaleSweep MSE, F = 256; "
          f"{os.cpu_count()} cores; best of {args.repeat}")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = pathlib.Path(tmp)
        raw = tmp / "w.bf16"
        raw.write_bytes(w.tobytes())
        cli = [bin_dir / "nvfp4q", "quantize-tensor", "--input", raw, "--dtype", "bf16",
               "--shape", f"{args.rows},{args.cols}", "--output", tmp / "out.safetensors"]
        daemon = Daemon(bin_dir / "nvfp4d", metrics=False, log=tmp / "nvfp4d.log")
        try:
            rows = {}
            rows["embedded (nvfp4q)"] = best_of(
                args.repeat, lambda: subprocess.run(cli, check=True, capture_output=True))
            rows["nvfp4q --server (C++ client)"] = best_of(
                args.repeat, lambda: subprocess.run(cli + ["--server", daemon.target],
                                                    check=True, capture_output=True))
            with nvfp4client.Client(daemon.target) as client:
                client.wait_until_ready()
                client.quantize(w[:16])  # connection and server info, outside the timing
                results = []
                rows["python client"] = best_of(args.repeat,
                                                lambda: results.append(client.quantize(w)))
                engine = min(q.metrics.quantize_seconds for q in results)
                slices = np.array_split(w, 16)
                rows["python, 16 slices one by one"] = best_of(
                    args.repeat, lambda: [client.quantize(s) for s in slices])
                rows["python, 16 slices, quantize_many"] = best_of(
                    args.repeat, lambda: list(client.quantize_many(slices, max_in_flight=4)))
                transport = compare_transports(client, w)
            # The same bytes both ways (the tests check every method and dtype; this run too).
            from safetensors.numpy import load_file

            np.float8_e4m3fn = ml_dtypes.float8_e4m3fn
            reference = load_file(str(tmp / "out.safetensors"))
            q = results[-1]
            assert np.array_equal(reference["weight"], q.packed), "packed bytes differ"
            assert np.array_equal(reference["weight_scale"].view(np.uint8),
                                  q.scales.view(np.uint8)), "scales differ"
            assert reference["weight_scale_2"] == np.float32(q.global_scale), "g differs"
        finally:
            daemon.stop()
    embedded = rows["embedded (nvfp4q)"]
    remote = rows["nvfp4q --server (C++ client)"]
    print(f"nvfp4d's engine time for the tensor (metrics.quantize_seconds): {engine:.3f} s; the "
          "CLI rows include its start, reading the file and writing the output")
    print("| run | wall | MiB/s | / embedded | / nvfp4q --server |")
    print("|---|---|---|---|---|")
    for name, seconds in rows.items():
        print(f"| {name} | {seconds:.3f} s | {mib / seconds:.0f} | {seconds / embedded:.2f} | "
              f"{seconds / remote:.2f} |")
    print("\nOne unary message or a stream, per tensor size (bf16 row slices, best of 7):")
    print("| size | unary | streamed | unary / streamed |")
    print("|---|---|---|---|")
    for size, unary, streamed in transport:
        print(f"| {size} MiB | {unary * 1e3:.1f} ms | {streamed * 1e3:.1f} ms | "
              f"{unary / streamed:.2f} |")


if __name__ == "__main__":
    main()
