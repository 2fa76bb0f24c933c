#!/usr/bin/env bash
# GPU check of the CUDA backend on a lent H100 (16 cores), in well under 6 minutes:
#   1. configure + build (sm_90, -j16) nvfp4_cuda, gpu_test, gpu_device_code_test and
#      nvfp4_cuda_bench into build-gpu/, from a generated minimal CMake project that needs only
#      CUDA, Abseil and GoogleTest (the lent image has no Debian packages and no network);
#   2. run gpu_device_code_test, gpu_test with NVFP4_GPU_LARGE=1 (64M-element tensors), a short
#      compute-sanitizer memcheck of a few gpu_test cases, nvfp4_cuda_bench, an Nsight Compute
#      profile of the scan and quantize kernels of one AbsMax and one ScaleSweep call (is the
#      quantize kernel issue- or memory-bound?), and the issue's PyTorch baselines when the
#      machine's python3 has torch (tests/gpu/torch_baseline.py, same run); every step has a
#      deadline, so the whole check ends within 6 minutes even if a step hangs;
#   3. print a summary (card, clocks, tools found, each step). Logs (at most 8 files) go to $OUT
#      when set, else build-gpu/logs.
# Exit status: 0 only when every test passed, memcheck found no error, and the benchmark ran (the
# profile and the PyTorch baselines are information; a memcheck that cannot run on the device
# or runs out of time is reported, not counted).
#
# Usage (docs/cuda.md):
#   tests/gpu/device_check.sh --fetch-debs   # on the Debian 12 dev machine: Abseil and
#                                            # GoogleTest .debs into build-gpu-debs/ (ignored
#                                            # by git through /build-*/; carry it)
#   tests/gpu/device_check.sh                # on the GPU machine (run with carry build-gpu-debs)
#   tests/gpu/device_check.sh --configure-only DIR   # generate and configure the project in DIR,
#                                            # nothing else (ctest gpu_device_check_configure:
#                                            # the main build cannot break the GPU run's build)
set -euo pipefail
caller_dir=$(pwd)
cd "$(dirname "$0")/../.."
repo=$(pwd)
deb_dir=$repo/build-gpu-debs
packages=(libabsl-dev libabsl20220623 libgtest-dev)

if [[ ${1:-} == --fetch-debs ]]; then
  mkdir -p "$deb_dir"
  (cd "$deb_dir" && apt-get download "${packages[@]}")
  ls -l "$deb_dir"
  exit 0
fi

start=$(date +%s)
build=$repo/build-gpu
configure_only=0
if [[ ${1:-} == --configure-only ]]; then
  configure_only=1
  build=$(cd "$caller_dir" && realpath -m "${2:?--configure-only needs a build directory}")
fi
logs=${OUT:-$build/logs}
mkdir -p "$build/project" "$logs"
jobs=$(nproc)
((jobs > 16)) && jobs=16
elapsed() { echo "$(($(date +%s) - start))s"; }
step() { echo "== [$(elapsed)] $*"; }

# Abseil and GoogleTest: carried Debian packages when present, else the system's.
prefix_args=()
if compgen -G "$deb_dir/*.deb" >/dev/null; then
  unpacker=dpkg-deb
  command -v dpkg-deb >/dev/null || unpacker="ar + tar"
  step "extracting carried packages from $deb_dir ($unpacker)"
  rm -rf "$build/deps"
  mkdir -p "$build/deps"
  for deb in "$deb_dir"/*.deb; do
    if [[ $unpacker == dpkg-deb ]]; then
      dpkg-deb -x "$deb" "$build/deps"
    else  # not a Debian-based image: a .deb is an ar archive holding data.tar.xz
      (cd "$build/deps" && ar p "$deb" data.tar.xz | tar -xJf -)
    fi
  done
  prefix_args=(-DCMAKE_PREFIX_PATH="$build/deps/usr")
  export LD_LIBRARY_PATH="$build/deps/usr/lib/x86_64-linux-gnu${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
elif ! compgen -G "/usr/lib/*/cmake/absl/abslConfig.cmake" >/dev/null &&
  ! compgen -G "/usr/local/lib*/cmake/absl/abslConfig.cmake" >/dev/null; then
  # The lent image has no Abseil: the packages must travel (a configure error would cost the run).
  echo "device_check: no Abseil here and no carried packages in $deb_dir: run" >&2
  echo "  tests/gpu/device_check.sh --fetch-debs on the development machine, then pass" >&2
  echo "  carry=[\"build-gpu-debs\"] to the device tool's run" >&2
  exit 1
fi

# CUDA tools: on the PATH, else in the toolkit's bin directory, the toolkit's compute-sanitizer
# directory, or a stand-alone Nsight Compute under /opt/nvidia (where the lent image has one).
cuda_tool() {
  local found
  for found in "$(command -v "$1" 2>/dev/null)" "/usr/local/cuda/bin/$1" \
    "/usr/local/cuda/compute-sanitizer/$1" /opt/nvidia/nsight-compute/*/"$1"; do
    if [[ -n $found && -x $found && ! -d $found ]]; then
      echo "$found"
      return 0
    fi
  done
  return 0
}
# CMake and Ninja: on the PATH, else beside the Python that has them as packages (the lent image
# installs both from PyPI); without Ninja, Makefiles.
python_tool() {
  command -v "$1" 2>/dev/null && return
  local dir
  dir=$(python3 -c 'import sysconfig; print(sysconfig.get_path("scripts"))' 2>/dev/null) || return 0
  [[ -x $dir/$1 ]] && echo "$dir/$1"
  return 0
}
cmake=$(python_tool cmake)
[[ -n $cmake ]] || { echo "device_check: cmake not found" >&2; exit 1; }
ninja=$(python_tool ninja)
if [[ -n $ninja ]]; then
  generator=(-G Ninja -DCMAKE_MAKE_PROGRAM="$ninja")
else
  generator=(-G "Unix Makefiles")
fi
nvcc=$(cuda_tool nvcc)
nvcc=${nvcc:-/usr/local/cuda/bin/nvcc}
cat >"$build/project/CMakeLists.txt" <<EOF
# Generated by tests/gpu/device_check.sh: the CUDA backend, its tests and its benchmark only.
cmake_minimum_required(VERSION 3.25)
project(nvfp4_gpu_check LANGUAGES CXX CUDA)
set(PROJECT_SOURCE_DIR "$repo")
set(CMAKE_CXX_STANDARD 20)
set(CMAKE_CXX_STANDARD_REQUIRED ON)
set(CMAKE_CXX_EXTENSIONS OFF)
set(CMAKE_CUDA_STANDARD 17)
set(CMAKE_CUDA_STANDARD_REQUIRED ON)
set(CMAKE_POSITION_INDEPENDENT_CODE ON)
set(CMAKE_RUNTIME_OUTPUT_DIRECTORY \${CMAKE_BINARY_DIR}/bin)
set(CMAKE_ARCHIVE_OUTPUT_DIRECTORY \${CMAKE_BINARY_DIR}/lib)
set(NVFP4_HAVE_CUDA ON)
find_package(absl CONFIG REQUIRED)
find_package(Threads REQUIRED)
find_package(GTest CONFIG REQUIRED)
find_package(CUDAToolkit REQUIRED)
add_compile_options(\$<\$<COMPILE_LANGUAGE:CXX>:-Wall> \$<\$<COMPILE_LANGUAGE:CXX>:-Wextra>)
add_subdirectory("$repo/common" common)
add_subdirectory("$repo/kernels" kernels)
enable_testing()
add_subdirectory("$repo/tests/gpu" gpu)
EOF

step "configure (sm_90)"
"$cmake" -S "$build/project" -B "$build" "${generator[@]}" -DCMAKE_BUILD_TYPE=Release \
  -DCMAKE_CUDA_ARCHITECTURES=90 -DCMAKE_CUDA_COMPILER="$nvcc" "${prefix_args[@]}" \
  >"$logs/build.log" 2>&1 || { tail -30 "$logs/build.log"; exit 1; }
if ((configure_only)); then
  step "configured in $build"
  exit 0
fi
# Every step ends by a deadline (seconds since the start) so that the whole check, summary
# included, stays under 6 minutes even when a step hangs: limit LIMIT DEADLINE gives the
# step's timeout, at most LIMIT and what is left before DEADLINE.
limit() {
  local left=$(($2 - ($(date +%s) - start)))
  ((left < $1)) && echo "$left" || echo "$1"
}
# timeout -k: a step that ignores SIGTERM is killed 5 s later.
run_timed() {  # limit, command...
  local seconds=$1
  shift
  ((seconds > 0)) || return 124
  timeout -k 5 "$seconds" "$@"
}

step "build (${ninja:+ninja }-j$jobs; at most 150s)"
build_rc=0
run_timed "$(limit 150 150)" "$cmake" --build "$build" -j "$jobs" \
  --target gpu_test gpu_device_code_test nvfp4_cuda_bench >>"$logs/build.log" 2>&1 || build_rc=$?
if ((build_rc != 0)); then
  tail -40 "$logs/build.log"
  echo "device_check: build failed (exit $build_rc)"
  exit 1
fi

# A machine that lists a GPU must run the GPU tests: a runtime that sees no device (say, a driver
# older than the runtime) then fails gpu_test and the benchmark instead of skipping them.
if command -v nvidia-smi >/dev/null && nvidia-smi -L 2>/dev/null | grep -q '^GPU'; then
  nvidia-smi -L
  export NVFP4_REQUIRE_GPU=1
fi
status=0
summary=()
sanitizer=$(cuda_tool compute-sanitizer)
ncu=$(cuda_tool ncu)
summary+=("tools: compute-sanitizer ${sanitizer:-not found}; ncu ${ncu:-not found}")

run_gtest() {  # name, limit, command...
  local name=$1 seconds=$2
  shift 2
  step "$name (at most ${seconds}s)"
  local rc=0
  run_timed "$seconds" "$@" >"$logs/$name.log" 2>&1 || rc=$?
  tail -25 "$logs/$name.log"
  local line pattern='^\[  (PASSED|FAILED|SKIPPED) +\] [0-9]+ tests?[,.]'
  line=$(grep -E "$pattern" "$logs/$name.log" | tr -s ' ' | paste -sd';' -) || true
  summary+=("$name: exit $rc ${line:-no gtest summary}")
  last_rc=$rc
}

# The tests and the benchmark (the verdict) by 330 s; the benchmark before memcheck, so that a
# slow memcheck can never cost the run its figures.
run_gtest gpu_device_code_test "$(limit 60 330)" "$build/bin/gpu_device_code_test"
((last_rc == 0)) || status=1
run_gtest gpu_test "$(limit 200 330)" env NVFP4_GPU_LARGE=1 "$build/bin/gpu_test"
((last_rc == 0)) || status=1
gpu_test_rc=$last_rc

step "nvfp4_cuda_bench"
bench_rc=0
run_timed "$(limit 120 330)" "$build/bin/nvfp4_cuda_bench" --json-file "$logs/bench.json" \
  >"$logs/bench.txt" 2>&1 || bench_rc=$?
cat "$logs/bench.txt"
summary+=("nvfp4_cuda_bench: exit $bench_rc")
((bench_rc == 0)) || status=1
# Clocks decide the kernels' speed and the profile runs with --clock-control none: read them
# right after the benchmark's load (an idle card reads its idle clocks).
if command -v nvidia-smi >/dev/null; then
  clocks=$(nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,clocks.mem \
    --format=csv,noheader 2>/dev/null | head -1) || true
  summary+=("after the benchmark: gpu, driver, SM, max SM, memory clocks: ${clocks:-not read}")
fi

seconds=$(limit 90 300)
if [[ -z $sanitizer ]]; then
  summary+=("memcheck: compute-sanitizer not found, skipped")
elif ((gpu_test_rc == 124 || gpu_test_rc == 137)); then
  summary+=("memcheck: skipped, gpu_test did not finish (it would hang again under memcheck)")
elif ((seconds < 20)); then
  summary+=("memcheck: skipped, only ${seconds}s left before 300s")
else
  run_gtest memcheck "$seconds" "$sanitizer" --tool memcheck --error-exitcode 3 \
    "$build/bin/gpu_test" \
    --gtest_filter='*DeviceOutputs*:*AllZero*:*ScaleTable*:*BadImportance*:*BadRequests*'
  # A memory error (3) or a failed test fails the check; a sanitizer that cannot run on this
  # device (KINDS.md saw "Device not supported" on gVisor machines) or runs out of time says
  # nothing about the code.
  if grep -qE 'Device not supported|Internal Sanitizer Error|[Ff]ailed to initialize' \
    "$logs/memcheck.log"; then
    summary+=("memcheck: the sanitizer could not run on this device (memcheck.log), not counted")
  elif ((last_rc == 3)) || grep -q '^\[  FAILED  \]' "$logs/memcheck.log"; then
    status=1
  elif ((last_rc != 0)); then
    summary+=("memcheck: did not complete (exit $last_rc; see memcheck.log), not counted")
  fi
fi

# Profile (information, not part of the verdict): the scan and quantize kernels of one AbsMax
# and one ScaleSweep-MSE call (nvfp4_cuda_bench --profile makes exactly those four launches),
# which tell whether the quantize kernel is issue- or memory-bound (docs/cuda.md, "Cost model").
# Before the PyTorch baselines: ncu prints nothing until its program ends, so it gets its time
# first; the baselines print as they go.
profile=()
seconds=$(limit 90 320)
if [[ -z $ncu ]]; then
  summary+=("ncu: not found, no profile")
elif ((seconds < 30)); then
  summary+=("ncu: skipped, only ${seconds}s left before 320s")
else
  step "ncu profile (absmax, scalesweep-mse; at most ${seconds}s)"
  ncu_rc=0
  # --clock-control none: the lent card's clocks are left as found (the device tool's rule; ncu
  # would otherwise lock them to base while it profiles).
  run_timed "$seconds" "$ncu" --clock-control none --kernel-name regex:'ScanKernel|QuantizeKernel' \
    --launch-count 4 \
    --section SpeedOfLight --section ComputeWorkloadAnalysis --section SchedulerStats \
    --section WarpStateStats --section Occupancy \
    "$build/bin/nvfp4_cuda_bench" --profile >"$logs/ncu.txt" 2>&1 || ncu_rc=$?
  summary+=("ncu: exit $ncu_rc (not part of the verdict; full report in ncu.txt)")
  mapfile -t profile < <(grep -E '(Scan|Quantize)Kernel.*Context|Duration|SM Frequency|DRAM Throughput|Memory Throughput|Compute \(SM\) Throughput|Issue Slots Busy|Executed Ipc Active|No Eligible|Warp Cycles Per Issued Instruction|Achieved Occupancy' "$logs/ncu.txt" |
    cut -c1-400 | head -60)
fi

# The issue's PyTorch baselines (plain AbsMax, torch.compile of a plain sweep), measured here in
# the same run (tests/gpu/torch_baseline.py; information, not part of the verdict). Appended to
# bench.txt and recorded in bench.json through a copy under build-gpu/: the script replaces
# the file it records in whole (a .partial file, then a rename), and $OUT takes at most 8
# files.
if ! run_timed "$(limit 30 350)" python3 -c 'import torch' 2>/dev/null; then
  summary+=("torch baselines: python3 has no torch (or it did not import in time), skipped")
elif seconds=$(limit 120 350) && ((seconds < 45)); then
  summary+=("torch baselines: skipped, only ${seconds}s left before 350s")
elif [[ ! -s $logs/bench.json ]]; then
  summary+=("torch baselines: skipped, the benchmark wrote no bench.json to compare with")
else
  step "torch baselines (at most ${seconds}s)"
  torch_rc=0
  cp "$logs/bench.json" "$build/bench-torch.json"
  PYTHONUNBUFFERED=1 run_timed "$seconds" python3 "$repo/tests/gpu/torch_baseline.py" \
    --compare-with "$build/bench-torch.json" --record >"$build/torch.txt" 2>&1 || torch_rc=$?
  cp "$build/bench-torch.json" "$logs/bench.json"  # whole: unchanged, or with the baselines
  cat "$build/torch.txt"
  { echo; echo "-- PyTorch baselines, same run (exit $torch_rc)"; cat "$build/torch.txt"; } \
    >>"$logs/bench.txt"
  summary+=("torch baselines: exit $torch_rc (not part of the verdict)")
fi

{
  gpu=$(nvidia-smi -L 2>/dev/null | head -1) || gpu="no nvidia-smi"
  echo "== device_check summary ($(elapsed), ${gpu:-no GPU listed})"
  printf '%s\n' "${summary[@]}"
  echo "-- benchmark"
  cat "$logs/bench.txt"
  if ((${#profile[@]})); then
    echo "-- profile (ncu)"
    printf '%s\n' "${profile[@]}"
  fi
  echo "result: $([[ $status == 0 ]] && echo PASS || echo FAIL)"
} | tee "$logs/summary.txt"
exit "$status"
