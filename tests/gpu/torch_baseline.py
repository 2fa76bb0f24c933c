#!/usr/bin/env python3
"""The PyTorch baselines of the CUDA issue, measured in the same run as our kernels.

The issue compares our CUDA kernels with "a plain PyTorch AbsMax" (about 23 Gelem/s on an H100)
and "torch.compile of a plain PyTorch sweep" (about 1.8 Gelem/s). Those are figures from
elsewhere; this script measures both on the machine that runs our benchmark, so that the ratios
in docs/benchmarks.md are ratios of the same run (tests/gpu/device_check.sh runs it after
nvfp4_cuda_bench and passes --compare-with bench.json).

What is timed, on a [rows, cols] bf16 tensor already on the device (the benchmark's shape and a
similar distribution: Gaussian rows with a per-row scale and 0.1 % outliers x20):
  - absmax eager:    the tensor's amax, g = amax / (6 F), ModelOpt's AbsMax block scales, E2M1
                     rounding by the seven boundaries of the grid, nibbles packed two per byte;
                     written the way a PyTorch user writes it (one kernel per operation);
  - absmax compiled: the same function through torch.compile (with --compiled-absmax);
  - sweep compiled:  torch.compile of the paper's MSE sweep: the E4M3 codes q0-3 .. q0+7 around
                     the AbsMax code q0, each block's squared error under every candidate, the
                     smallest kept (ties keep the smaller scale), then the same encoding;
  - sweep eager:     the same sweep without compilation (with --eager-sweep).
Each function returns the packed bytes, the E4M3 scale bytes and g, so nothing is left out by
dead-code elimination. Times are CUDA-event times of each of --iters calls made back to back
after the warm-up (and after compilation, whose time is reported on its own); the best is
reported, as nvfp4_cuda_bench reports its best run, with the mean beside it. The script also
reports each method's MSE against AbsMax's, a check that the sweep does its work (our benchmark
reports the same figure).

With --device cpu (for tests/gpu/test_torch_baseline.py) the same code runs on the CPU.

Usage: torch_baseline.py [--rows 8192] [--cols 8192] [--iters 20] [--device cuda]
                         [--scale-max 256] [--no-compile] [--eager-sweep] [--compiled-absmax]
                         [--json-file PATH] [--compare-with bench.json [--record]]
Prints a table (and, with --compare-with, our ratios to the measured figures); exits 1 when
torch or the device is missing, or when a run failed (the others are still printed).
"""
import argparse
import json
import os
import sys
import time

try:
    import torch
except ImportError:  # the caller (device_check.sh) reports this line
    print("torch_baseline: torch is not installed", file=sys.stderr)
    sys.exit(1)

BLOCK = 16
E4M3_MAX = 448.0
E4M3_MIN_SUBNORMAL = 2.0**-9
# The paper's proven MSE window around the AbsMax code q0 (scalesweep-theory.md section 2).
SWEEP_OFFSETS = range(-3, 8)


def global_scale(x, scale_max):
    """g = amax / (6 F) as fp32 (1 for an all-zero tensor); a 0-d tensor."""
    amax = x.abs().amax().float()
    g = amax / (6.0 * scale_max)
    return torch.where(amax == 0, torch.ones_like(g), g)


def e2m1_index(y):
    """Grid index 0..7 of y >= 0 rounded to {0, .5, 1, 1.5, 2, 3, 4, 6}, ties to even,
    saturating at 6."""
    return ((y > 0.25).to(torch.uint8) + (y >= 0.75).to(torch.uint8) + (y > 1.25).to(torch.uint8)
            + (y >= 1.75).to(torch.uint8) + (y > 2.5).to(torch.uint8)
            + (y >= 3.5).to(torch.uint8) + (y > 5.0).to(torch.uint8))


def e2m1_grid(device):
    return torch.tensor([0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0], device=device)


def decode_e4m3(codes):
    return codes.to(torch.uint8).view(torch.float8_e4m3fn).float()


def effective_scale(codes, g):
    """S = fl32(e4m3(code) * g), one per block."""
    return decode_e4m3(codes) * g


def absmax_codes(blocks, g):
    """ModelOpt's AbsMax scale byte: RNE_E4M3(clamp(bamax / fl(6 g), 2^-9, 448)), 0 -> 1."""
    s = blocks.abs().amax(dim=-1) / (6.0 * g)
    s = torch.where(s == 0, torch.ones_like(s), s).clamp(E4M3_MIN_SUBNORMAL, E4M3_MAX)
    return s.to(torch.float8_e4m3fn).view(torch.uint8)


def encode(blocks, codes, g):
    """Packed E2M1 bytes [rows, cols / 2] of blocks [rows, cols / 16, 16] under scale codes."""
    scale = effective_scale(codes, g).unsqueeze(-1)
    nibbles = e2m1_index(blocks.abs() / scale) | ((blocks < 0).to(torch.uint8) << 3)
    nibbles = nibbles.flatten(start_dim=1)
    return nibbles[:, 0::2] | (nibbles[:, 1::2] << 4)


def quantize_absmax(x, scale_max):
    g = global_scale(x, scale_max)
    blocks = x.float().unflatten(-1, (-1, BLOCK))
    codes = absmax_codes(blocks, g)
    return encode(blocks, codes, g), codes, g


def quantize_sweep(x, scale_max):
    g = global_scale(x, scale_max)
    blocks = x.float().unflatten(-1, (-1, BLOCK))
    magnitudes = blocks.abs()
    grid = e2m1_grid(x.device)
    q0 = absmax_codes(blocks, g).to(torch.int32)
    best_loss = torch.full(q0.shape, float("inf"), device=x.device)
    best_code = q0
    for offset in SWEEP_OFFSETS:
        code = (q0 + offset).clamp(1, 126)
        scale = effective_scale(code, g).unsqueeze(-1)
        error = magnitudes - grid[e2m1_index(magnitudes / scale).long()] * scale
        loss = (error * error).sum(dim=-1)
        better = loss < best_loss
        best_loss = torch.where(better, loss, best_loss)
        best_code = torch.where(better, code, best_code)
    codes = best_code.to(torch.uint8)
    return encode(blocks, codes, g), codes, g


def dequantize(packed, codes, g):
    grid = e2m1_grid(packed.device)
    nibbles = torch.stack([packed & 15, packed >> 4], dim=-1).flatten(start_dim=1)
    values = grid[(nibbles & 7).long()] * torch.where(nibbles >= 8, -1.0, 1.0)
    scale = effective_scale(codes, g).repeat_interleave(BLOCK, dim=-1)
    return values * scale


def make_input(rows, cols, device):
    gen = torch.Generator(device="cpu").manual_seed(12345)
    row_scale = torch.exp(2.0 * (torch.rand(rows, 1, generator=gen) - 0.5))
    x = torch.randn(rows, cols, generator=gen) * row_scale
    outliers = torch.rand(rows, cols, generator=gen) < 1.0 / 1024
    x = torch.where(outliers, x * 20.0, x)
    return x.to(torch.bfloat16).to(device)


def synchronize(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_calls(fn, x, iters, device):
    """Seconds of each of iters calls, made back to back: CUDA events around each call on a
    GPU, the wall clock on the CPU. The best is reported, as nvfp4_cuda_bench reports its best
    run."""
    if device.type == "cuda":
        events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
                  for _ in range(iters)]
        for start, stop in events:
            start.record()
            fn(x)
            stop.record()
        events[-1][1].synchronize()
        return [start.elapsed_time(stop) / 1e3 for start, stop in events]
    seconds = []
    for _ in range(iters):
        begin = time.perf_counter()
        fn(x)
        seconds.append(time.perf_counter() - begin)
    return seconds


def measure(name, fn, x, iters, device, reference):
    """Warm-up (compilation included, timed on its own), then iters timed calls."""
    begin = time.perf_counter()
    packed, codes, g = fn(x)
    synchronize(device)
    first_call = time.perf_counter() - begin
    fn(x)
    synchronize(device)
    times = time_calls(fn, x, iters, device)
    seconds = min(times)
    error = dequantize(packed, codes, g) - x.float()
    mse = float((error * error).mean())
    return {
        "method": name,
        "ms": seconds * 1e3,
        "mean_ms": sum(times) / len(times) * 1e3,
        "gelem_per_s": x.numel() / seconds / 1e9,
        "first_call_s": first_call,
        "mse": mse,
        "mse_vs_absmax": mse / reference if reference else 1.0,
    }


def ours(bench, label):
    for row in bench.get("methods", []):
        if row["method"] == label:
            return row["gelem_per_s"]
    return None


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=8192)
    parser.add_argument("--cols", type=int, default=8192)
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--scale-max", type=int, default=256, choices=(256, 448))
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile runs")
    parser.add_argument("--eager-sweep", action="store_true", help="also time the eager sweep")
    parser.add_argument("--compiled-absmax", action="store_true",
                        help="also time torch.compile of the AbsMax")
    parser.add_argument("--json-file")
    parser.add_argument("--compare-with", help="nvfp4_cuda_bench --json-file output")
    parser.add_argument("--record", action="store_true",
                        help="add this run to the --compare-with file as \"torch_baselines\" "
                        "(scripts/cuda_bench_markdown.py reads it from there)")
    args = parser.parse_args()
    if args.cols % BLOCK:
        parser.error("--cols must be a multiple of 16")
    if args.record and not args.compare_with:
        parser.error("--record needs --compare-with")

    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("torch_baseline: torch sees no CUDA device", file=sys.stderr)
        return 1
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"PyTorch {torch.__version__} baselines on {name}: {args.rows} x {args.cols} bf16, "
          f"F = {args.scale_max}, {args.iters} timed calls")
    print(f"{'method':<16} {'best ms':>9} {'mean ms':>9} {'Gelem/s':>9} {'first call s':>13} "
          f"{'MSE vs absmax':>14}")

    def report(run):  # each row as soon as it is measured: a timeout keeps the rows before it
        print(f"{run['method']:<16} {run['ms']:9.3f} {run['mean_ms']:9.3f} "
              f"{run['gelem_per_s']:9.2f} {run['first_call_s']:13.1f} "
              f"{run['mse_vs_absmax']:14.4f}", flush=True)
        return run

    x = make_input(args.rows, args.cols, device)
    absmax = lambda t: quantize_absmax(t, args.scale_max)  # noqa: E731
    sweep = lambda t: quantize_sweep(t, args.scale_max)  # noqa: E731

    runs = [report(measure("absmax eager", absmax, x, args.iters, device, None))]
    reference = runs[0]["mse"]
    others = []
    if args.eager_sweep:
        others.append(("sweep eager", sweep))
    if not args.no_compile:
        if args.compiled_absmax:
            others.append(("absmax compiled", torch.compile(absmax)))
        others.append(("sweep compiled", torch.compile(sweep)))
    failed = []
    for label, fn in others:
        try:  # a compiler failure on the lent image must not lose the other figures
            runs.append(report(measure(label, fn, x, args.iters, device, reference)))
        except Exception as error:  # noqa: BLE001
            failed.append(label)
            print(f"torch_baseline: {label} failed: {type(error).__name__}: "
                  f"{str(error).splitlines()[0] if str(error) else ''}", file=sys.stderr,
                  flush=True)

    result = {"device": name, "torch": torch.__version__, "rows": args.rows, "cols": args.cols,
              "scale_max": args.scale_max, "runs": runs}
    bench = None
    if args.compare_with:
        try:
            with open(args.compare_with) as f:
                bench = json.load(f)
        except (OSError, ValueError) as error:  # the benchmark failed: the figures still count
            print(f"torch_baseline: no ratios: {args.compare_with}: {error}", file=sys.stderr)
    if bench is not None:
        by_name = {r["method"]: r["gelem_per_s"] for r in runs}
        # Our two-pass runs (g from the tensor), as the PyTorch functions also scan for amax.
        pairs = [("absmax", "absmax eager"), ("absmax", "absmax compiled"),
                 ("scalesweep-mse", "sweep compiled"), ("scalesweep-mse", "sweep eager")]
        result["ratios"] = []
        print("ours / PyTorch, same run:")
        for mine, theirs in pairs:
            a, b = ours(bench, mine), by_name.get(theirs)
            if a is None or b is None:
                continue
            result["ratios"].append({"ours": mine, "torch": theirs, "ratio": a / b})
            print(f"  {mine} {a:.1f} Gelem/s / {theirs} {b:.2f} Gelem/s = {a / b:.1f}x")
    if args.json_file:
        with open(args.json_file, "w") as f:
            json.dump(result, f, indent=1)
    if args.record and bench is not None:
        bench["torch_baselines"] = result
        partial = args.compare_with + ".partial"  # replaced whole: a timeout never leaves half
        with open(partial, "w") as f:
            json.dump(bench, f, indent=1)
        os.replace(partial, args.compare_with)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
