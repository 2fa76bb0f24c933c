#!/usr/bin/env python3
"""Markdown for docs/benchmarks.md ("CUDA kernels") from a GPU run's bench.json.

tests/gpu/device_check.sh leaves bench.json in $OUT: nvfp4_cuda_bench's figures, with the PyTorch
baselines of the same run under "torch_baselines" (torch_baseline.py --record). This prints
them as the tables the docs keep, so that the figures are copied, never retyped:

  scripts/cuda_bench_markdown.py /work/.device/.../bench.json [--gpu "NVIDIA H100 80GB HBM3"]

--gpu names the card (nvidia-smi -L, from summary.txt) where the JSON names only the device
index. Exits 1 on a file that is not the benchmark's JSON.
"""
import argparse
import json
import sys


def table(header, rows):
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def render(bench, gpu):
    out = []
    out.append(
        f"{gpu or bench['device']}: {bench['rows']} × {bench['cols']} {bench['dtype']} in device "
        f"memory; device-to-device copy {bench['copy_bandwidth_gbs']:.0f} GB/s (read + write), "
        f"so the roofline (input read once, packed values and scales written) is "
        f"{bench['roofline_ms'] * 1e3:.1f} µs.")
    out.append("")
    out.append("Device µs: CUDA events around the call's kernels, all launches queued before the "
               "first runs (the benchmark holds the stream for 1 ms first); as called: the same "
               "call without that, so the host's launch gaps count too.")
    out.append("")
    out.append(table(
        ["method", "passes", "device µs", "as called µs", "Gelem/s", "roofline", "× absmax",
         "candidates/block", "objective vs AbsMax"],
        [[r["method"], "one" if r["one_pass"] else "two", f"{r['device_ms'] * 1e3:.1f}",
          f"{r['device_ms_as_called'] * 1e3:.1f}", f"{r['gelem_per_s']:.1f}", f"{100 * r['roofline_fraction']:.1f} %",
          f"{r['vs_absmax']:.2f}", f"{r['candidates_per_block']:.2f}", f"{r['gain']:.4f}"]
         for r in bench["methods"]]))
    out.append("")
    out.append("Targets (the issue's, for an H100):")
    out.append("")
    for t in bench["targets"]:
        sense = "≤" if t["at_most"] else "≥"
        verdict = "met" if t["met"] else "**missed**"
        out.append(f"- {t['name']}: {t['value']:.3f} (goal {sense} {t['goal']:.2f}): {verdict}")
    out.append("")
    out.append(f"Host path (pageable host bf16 in, host out), pinned host-to-device "
               f"{bench['h2d_bandwidth_gbs']:.1f} GB/s:")
    out.append("")
    out.append(table(
        ["method", "wall ms", "input GB/s", "of H2D"],
        [[r["method"], f"{r['wall_ms']:.2f}", f"{r['input_gbs']:.2f}",
          f"{100 * r['h2d_fraction']:.1f} %"] for r in bench["host_path"]]))
    torch = bench.get("torch_baselines")
    out.append("")
    if torch is None:
        out.append("PyTorch baselines: not measured in this run; against the issue's figures "
                   f"(plain AbsMax ~23, torch.compile sweep ~1.8 Gelem/s): AbsMax "
                   f"{bench['vs_torch_absmax']:.1f}×, ScaleSweep-MSE "
                   f"{bench['vs_torch_compile_sweep']:.1f}×.")
        return "\n".join(out)
    out.append(f"PyTorch {torch['torch']} baselines, same run and shape "
               f"(tests/gpu/torch_baseline.py, F = {torch['scale_max']}):")
    out.append("")
    out.append(table(
        ["PyTorch", "best ms", "mean ms", "Gelem/s", "first call s", "MSE vs AbsMax"],
        [[r["method"], f"{r['ms']:.3f}", f"{r['mean_ms']:.3f}", f"{r['gelem_per_s']:.2f}",
          f"{r['first_call_s']:.1f}", f"{r['mse_vs_absmax']:.4f}"] for r in torch["runs"]]))
    out.append("")
    for r in torch.get("ratios", []):
        out.append(f"- ours ({r['ours']}) / PyTorch {r['torch']}: **{r['ratio']:.1f}×**")
    return "\n".join(out)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("bench_json")
    parser.add_argument("--gpu", help="the card's name, for the first line")
    args = parser.parse_args()
    try:
        with open(args.bench_json) as f:
            bench = json.load(f)
        text = render(bench, args.gpu)
    except (OSError, ValueError, KeyError, TypeError) as error:
        print(f"cuda_bench_markdown: {args.bench_json}: not the benchmark's JSON "
              f"({type(error).__name__}: {error})", file=sys.stderr)
        return 1
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
