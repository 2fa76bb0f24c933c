#!/bin/bash
# Small-job throughput of nvfp4d against its --job-history (docs/benchmarks.md, "Small jobs"):
# 4 streams of [16, 64] f32 AbsMax tensors for 6 s per history size, through nvfp4_load.
# Usage: scripts/bench_small_jobs.sh [BIN_DIR] [OTHER_NVFP4D]   (OTHER_NVFP4D: a second binary,
# e.g. an older build, measured in the same run, alternating).
set -u
bin=${1:-build/bin}
binaries=("$bin/nvfp4d")
[ $# -ge 2 ] && binaries+=("$2")
port=57123
for history in 10 1000 5000 20000; do
  for nvfp4d in "${binaries[@]}"; do
    "$nvfp4d" --listen 127.0.0.1:$port --metrics-listen "" --job-history $history \
      --max-queue 256 >/dev/null 2>&1 &
    pid=$!
    sleep 1
    kill -0 $pid 2>/dev/null || { echo "$nvfp4d did not start (port $port in use?)"; exit 1; }
    result=$("$bin/nvfp4_load" --server 127.0.0.1:$port --streams 4 --seconds 6 --rows 16 \
      --cols 64 --method absmax 2>&1 | tail -1)
    jobs=$(grep -o '"jobs_per_second":[0-9.]*' <<<"$result" | cut -d: -f2)
    p50=$(grep -o '"p50":[0-9.e-]*' <<<"$result" | cut -d: -f2)
    printf '%-40s history %6d: %8.0f jobs/s, p50 %s s\n' "$nvfp4d" "$history" "$jobs" "$p50"
    kill $pid
    wait $pid 2>/dev/null
  done
done
