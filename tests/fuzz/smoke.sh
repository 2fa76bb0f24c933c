#!/usr/bin/env bash
# CTest smoke run of one libFuzzer target: smoke.sh FUZZER SEED_DIR WORK_DIR RUNS [DICT]
# New inputs go to WORK_DIR/corpus (emptied first), so the run starts from the seeds only;
# the seeds in SEED_DIR are only read. Crash/leak/timeout reproducers land in WORK_DIR/artifacts
# and fail the test (libFuzzer exits non-zero on the first one).
set -euo pipefail
fuzzer=$1 seeds=$2 work=$3 runs=$4 dict=${5:-}
rm -rf "$work/corpus" "$work/artifacts"
mkdir -p "$work/corpus" "$work/artifacts"
args=(-runs="$runs" -max_total_time=240 -timeout=10 -rss_limit_mb=2048 -print_final_stats=1
      -artifact_prefix="$work/artifacts/")
[ -n "$dict" ] && [ -f "$dict" ] && args+=(-dict="$dict")
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=0}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-halt_on_error=1:print_stacktrace=1}
"$fuzzer" "${args[@]}" "$work/corpus" "$seeds"
if compgen -G "$work/artifacts/*" >/dev/null; then
  echo "smoke: artifacts left in $work/artifacts:" >&2
  ls -l "$work/artifacts" >&2
  exit 1
fi
