#!/usr/bin/env bash
# Long libFuzzer runs (make fuzz; docs/testing.md). Builds build-fuzz (clang, ASan+UBSan,
# NVFP4_FUZZ=ON) when needed, then runs every target for FUZZ_RUNS executions, all targets at
# once, each on FUZZ_JOBS processes (-jobs/-workers; the runs are split between them).
# The corpus grows across runs in $FUZZ_DIR/long/<target>/corpus (seeded from
# tests/fuzz/corpus/<target>); reproducers of crashes, leaks, timeouts and OOMs land in
# $FUZZ_DIR/long/<target>/artifacts. Prints executions, time and crashes per target; exits
# non-zero when any target found something.
# Env: FUZZ_RUNS (default 10000000 per target), FUZZ_TARGETS (default "safetensors request"),
#      FUZZ_JOBS (processes per target, default max(1, nproc / targets)), FUZZ_DIR (build-fuzz),
#      FUZZ_MAX_TIME (seconds per process, default 0 = no limit), JOBS (build parallelism).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
FUZZ_DIR=${FUZZ_DIR:-build-fuzz}
FUZZ_RUNS=${FUZZ_RUNS:-10000000}
FUZZ_MAX_TIME=${FUZZ_MAX_TIME:-0}
read -r -a targets <<<"${FUZZ_TARGETS:-safetensors request}"
FUZZ_JOBS=${FUZZ_JOBS:-$(($(nproc) / ${#targets[@]}))}
((FUZZ_JOBS >= 1)) || FUZZ_JOBS=1
JOBS=${JOBS:-$(nproc)}

if [ ! -f "$FUZZ_DIR/build.ninja" ]; then
  CC=clang CXX=clang++ cmake -S . -B "$FUZZ_DIR" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
    -DNVFP4_CUDA=OFF -DNVFP4_FUZZ=ON
fi
cmake --build "$FUZZ_DIR" -j "$JOBS" --target nvfp4_fuzzers

export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-halt_on_error=1:print_stacktrace=1}

run_target() {  # kind
  local kind=$1 fuzzer="$root/$FUZZ_DIR/bin/fuzz_$1" work="$root/$FUZZ_DIR/long/$1"
  mkdir -p "$work/corpus" "$work/artifacts" "$work/logs"
  rm -f "$work"/logs/*
  local args=(-runs=$(((FUZZ_RUNS + FUZZ_JOBS - 1) / FUZZ_JOBS)) -max_total_time="$FUZZ_MAX_TIME"
              -timeout=10 -rss_limit_mb=2048 -print_final_stats=1
              -artifact_prefix="$work/artifacts/")
  [ -f "$root/tests/fuzz/$kind.dict" ] && args+=(-dict="$root/tests/fuzz/$kind.dict")
  local start=$SECONDS rc=0
  if ((FUZZ_JOBS == 1)); then
    "$fuzzer" "${args[@]}" "$work/corpus" "$root/tests/fuzz/corpus/$kind" \
      >"$work/logs/fuzz-0.log" 2>&1 || rc=$?
  else
    # -jobs writes fuzz-<n>.log into the current directory.
    (cd "$work/logs" && "$fuzzer" "${args[@]}" -jobs="$FUZZ_JOBS" -workers="$FUZZ_JOBS" \
      "$work/corpus" "$root/tests/fuzz/corpus/$kind" >"$work/logs/main.log" 2>&1) || rc=$?
  fi
  echo "$rc $((SECONDS - start))" >"$work/result"
}

echo "fuzz: ${targets[*]}: $FUZZ_RUNS runs each, $FUZZ_JOBS process(es) per target"
for kind in "${targets[@]}"; do run_target "$kind" & done
wait

status=0
printf '%-12s %14s %9s %9s %8s %8s %s\n' target executions seconds exec/s corpus crashes exit
for kind in "${targets[@]}"; do
  work="$FUZZ_DIR/long/$kind"
  read -r rc secs <"$work/result"
  execs=$(cat "$work"/logs/fuzz-*.log 2>/dev/null |
          awk '/^stat::number_of_executed_units:/ {s += $2} END {print s + 0}')
  crashes=$(find "$work/artifacts" -type f | wc -l)
  corpus=$(find "$work/corpus" -type f | wc -l)
  printf '%-12s %14s %9s %9s %8s %8s %s\n' "$kind" "$execs" "$secs" \
    "$((execs / (secs > 0 ? secs : 1)))" "$corpus" "$crashes" "$rc"
  if ((crashes > 0 || rc != 0)); then
    status=1
    echo "fuzz: $kind: see $work/logs and $work/artifacts" >&2
    grep -h -m5 -E "ERROR|runtime error|invariant violated" "$work"/logs/*.log >&2 || true
  fi
done
exit $status
