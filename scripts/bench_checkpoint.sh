#!/usr/bin/env bash
# Checkpoint benchmark: a >= 2 GiB bf16 Llama-shaped checkpoint (hidden 4096, intermediate 11008,
# 5 layers, vocab 32000: 1.15 G parameters, 2.30 GB = 2.14 GiB) quantized with ScaleSweep three ways in the
# same run: embedded (nvfp4q), server-side (nvfp4d QuantizeCheckpoint on the same files), and
# --stream-tensors (tensors sent over QuantizeTensor, output written by nvfp4q). Prints wall time,
# input GB/s, the read / quantize / write split, and the remote / embedded ratios. The outputs
# must be byte-identical (checked). Usage: scripts/bench_checkpoint.sh [build] [work dir].
set -euo pipefail
build=${1:-build}
bin=$(realpath "$build/bin")
work=$(realpath -m "${2:-$build/bench-checkpoint}")
mkdir -p "$work"
if [ ! -f "$work/model/config.json" ]; then
  "$bin/nvfp4_demo_checkpoint" --out "$work/model" --layers 5 --hidden 4096 --intermediate 11008 \
    --heads 32 --kv-heads 8 --vocab 32000 --shard-gb 1
fi
rm -rf "$work"/out-* "$work"/.out-*.nvfp4-partial
# Warm the page cache so every run reads from memory, as a second pass over a hot model would.
cat "$work"/model/*.safetensors >/dev/null

run() {  # name, nvfp4q arguments...
  local name=$1
  shift
  # Every run starts with no dirty pages: otherwise a run's fsyncs also wait for the writeback of
  # the runs before it (1 GB each), which made the last run (streamed) up to 2x slower.
  sync
  "$bin/nvfp4q" quantize --quiet --model "$work/model" --out "$work/out-$name" \
    --report "$work/report-$name.json" "$@" >/dev/null
}

. "$(dirname "$0")/nvfp4d_lib.sh"
start_nvfp4d "$bin" "$work/nvfp4d.log" --allowed-root "$work"

run embedded
run server --server "127.0.0.1:$port"
run stream --server "127.0.0.1:$port" --stream-tensors
for name in server stream; do
  if ! diff -rq "$work/out-embedded" "$work/out-$name" >/dev/null; then
    echo "bench_checkpoint: out-$name differs from out-embedded" >&2
    exit 1
  fi
done

python3 - "$work" <<'EOF'
import json, sys
work = sys.argv[1]
rows = {}
for name in ("embedded", "server", "stream"):
    t = json.load(open(f"{work}/report-{name}.json"))["totals"]
    rows[name] = t
print(f"{'run':<10} {'wall_s':>8} {'GB/s':>6} {'read_s':>7} {'quant_s':>8} {'write_s':>8} {'x embedded':>11}")
base = rows["embedded"]["wall_seconds"]
for name, t in rows.items():
    print(f"{name:<10} {t['wall_seconds']:8.2f} {t['input_gb_per_second']:6.2f} {t['read_seconds']:7.2f} "
          f"{t['quantize_seconds']:8.2f} {t['write_seconds']:8.2f} {t['wall_seconds'] / base:11.2f}")
t = rows["embedded"]
print(f"input {t['input_bytes'] / 1e9:.2f} GB, output {t['output_bytes'] / 1e9:.2f} GB, "
      f"{t['quantized']} tensors quantized, MSE vs AbsMax {100 * (t['gain'] - 1):+.2f} %; outputs byte-identical")
EOF
stop_nvfp4d
