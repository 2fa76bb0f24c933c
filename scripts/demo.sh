#!/usr/bin/env bash
# The demo job, end to end as a user runs it: a Llama-shaped bf16 checkpoint (4 layers, q/k/v/o,
# gate/up/down, embeddings, norms, lm_head, sharded, with activation calibration statistics) is
# quantized to NVFP4 by nvfp4d through its QuantizeCheckpoint RPC with ScaleSweep block scales
# (ModelOpt layout, W4A4), the per-tensor report is printed, and `nvfp4q verify` re-reads the
# output and checks it against the source. The server is stopped at the end.
set -euo pipefail
build=${1:-build}
bin=$(realpath "$build/bin")
work=$(realpath -m "$build/demo")
mkdir -p "$work"

if [ ! -f "$work/model/config.json" ]; then
  "$bin/nvfp4_demo_checkpoint" --out "$work/model" --layers 4 --hidden 1024 --intermediate 2816 \
    --heads 16 --kv-heads 4 --vocab 8192 --shard-gb 0.03 --calibration "$work/calibration.json"
fi
rm -rf "$work/quantized" "$work/.quantized.nvfp4-partial"

. "$(dirname "$0")/nvfp4d_lib.sh"
start_nvfp4d "$bin" "$work/nvfp4d.log" --allowed-root "$work"
echo "nvfp4d serving on 127.0.0.1:$port (allowed root $work)"
echo

"$bin/nvfp4q" quantize --server "127.0.0.1:$port" --model "$work/model" --out "$work/quantized" \
  --method scalesweep --calibration "$work/calibration.json" --report "$work/report.json"
echo
"$bin/nvfp4q" verify --model "$work/model" --quantized "$work/quantized"
echo
echo "output: $work/quantized (report: $work/report.json)"
ls -l "$work/quantized"
stop_nvfp4d
