#!/usr/bin/env bash
# Sanitizer builds of the unit and service tests (docs/testing.md), CPU only (NVFP4_CUDA=OFF):
#   asan  build-asan: -fsanitize=address,undefined, RelWithDebInfo; common_test, kernels_test, checkpoint_test,
#         client_io_test, client_test, proto_test, scheduler_test, server_test and the GPU tests
#         that run on the host (gpu_device_code_test; gpu_simulated_test where the CUDA headers
#         are installed) (every GoogleTest case; no Python tests).
#   tsan  build-tsan: -fsanitize=thread, RelWithDebInfo; scheduler_test, repeated; then
#         gpu_simulated_test (the CUDA backend's host code with the simulated device's stream
#         threads: a missing synchronisation is a race here), repeated.
# Usage: scripts/sanitizers.sh [asan] [tsan]   (both when none is named)
# Env: JOBS (build/ctest parallelism, default nproc), SAN_CXX/SAN_CC (default g++/gcc: the
#      compiler Debian's abseil/protobuf/gRPC were built with), TSAN_REPEAT (default 50),
#      TSAN_SIMULATED_REPEAT (default 3; ~100 s each on 2 cores), ASAN_DIR/TSAN_DIR (build dirs).
# Any sanitizer report fails the run (-fno-sanitize-recover=all, halt_on_error=1).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
JOBS=${JOBS:-$(nproc)}
SAN_CC=${SAN_CC:-gcc}
SAN_CXX=${SAN_CXX:-g++}
ASAN_DIR=${ASAN_DIR:-build-asan}
TSAN_DIR=${TSAN_DIR:-build-tsan}
TSAN_REPEAT=${TSAN_REPEAT:-50}
TSAN_SIMULATED_REPEAT=${TSAN_SIMULATED_REPEAT:-3}
modes=("$@")
((${#modes[@]})) || modes=(asan tsan)

configure() {  # dir sanitizers
  [ -f "$1/build.ninja" ] && return 0
  CC=$SAN_CC CXX=$SAN_CXX cmake -S . -B "$1" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
    -DNVFP4_CUDA=OFF -DNVFP4_SANITIZE="$2"
}

timed() {  # label command...
  local start=$SECONDS
  "${@:2}"
  echo "sanitizers: $1 took $((SECONDS - start)) s"
}

run_asan() {
  configure "$ASAN_DIR" address,undefined
  timed "asan build" cmake --build "$ASAN_DIR" -j "$JOBS" --target common_test kernels_test checkpoint_test \
    client_io_test client_test proto_test scheduler_test server_test gpu_host_tests
  # Leak reports are on; tests/sanitizers/lsan.supp lists (and explains) each suppression.
  export ASAN_OPTIONS="detect_leaks=1:abort_on_error=1:strict_string_checks=1:detect_stack_use_after_return=1:check_initialization_order=1"
  export LSAN_OPTIONS="suppressions=$root/tests/sanitizers/lsan.supp:print_suppressions=0"
  export UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1"
  # Only the GoogleTest cases (named Suite.Test): the Python/pytest tests (python_interop,
  # deploy_manifests, integration) and NOT_BUILT placeholders have no dot in their names.
  (cd "$ASAN_DIR" && timed "asan tests" ctest --output-on-failure -j "$JOBS" -E '^[^.]+$')
}

run_tsan() {
  configure "$TSAN_DIR" thread
  timed "tsan build" cmake --build "$TSAN_DIR" -j "$JOBS" --target scheduler_test gpu_host_tests
  export TSAN_OPTIONS="halt_on_error=1:second_deadlock_stack=1:history_size=4:suppressions=$root/tests/sanitizers/tsan.supp"
  timed "tsan tests" "$TSAN_DIR/bin/scheduler_test" --gtest_repeat="$TSAN_REPEAT" \
    --gtest_brief=1
  if [ -x "$TSAN_DIR/bin/gpu_simulated_test" ]; then
    timed "tsan simulated GPU tests" "$TSAN_DIR/bin/gpu_simulated_test" \
      --gtest_repeat="$TSAN_SIMULATED_REPEAT" --gtest_brief=1
  else
    echo "sanitizers: no CUDA headers: gpu_simulated_test not built, skipped"
  fi
}

for mode in "${modes[@]}"; do
  case $mode in
    asan) run_asan ;;
    tsan) run_tsan ;;
    *) echo "usage: $0 [asan] [tsan]" >&2; exit 2 ;;
  esac
done
echo "sanitizers: ${modes[*]}: no reports"
