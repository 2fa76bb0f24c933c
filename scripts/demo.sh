#!/usr/bin/env bash
# The demo job: generate a small LLM-like tensor set, compare AbsMax, four-over-six and
# ScaleSweep on it (MSE, change vs AbsMax, candidates per block), then quantise one tensor to a
# ModelOpt-layout safetensors file and print its JSON report.
set -euo pipefail
build=${1:-build}
out=$build/demo
mkdir -p "$out"
"$build/bin/nvfp4_demo_tensors" "$out/tensors"
echo
"$build/bin/nvfp4q" compare "$out"/tensors/*.npy
echo
"$build/bin/nvfp4q" quantize-tensor --input "$out/tensors/layers.0.self_attn.q_proj.weight.npy" \
  --output "$out/q_proj.nvfp4.safetensors" --method scalesweep
