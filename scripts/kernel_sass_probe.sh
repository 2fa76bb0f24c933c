#!/usr/bin/env bash
# Static per-method SASS figures of the quantize kernel's per-block code (docs/cuda.md,
# "Machine code"). Compiles a probe kernel per method (bf16; the method and the vector path
# fixed, so nvcc drops the other methods' code) with the backend's flags for sm_90, then prints
# the size of each loop body (between a backward branch and its target): the grid-stride loop
# is one block, an inner loop with 16 FFMA is one sweep candidate.
#   scripts/kernel_sass_probe.sh        (needs nvcc, and the test venv's cuobjdump/nvdisasm)
set -euo pipefail
cd "$(dirname "$0")/.."
bin=$(.venv/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/nvidia/cu13/bin
[[ -x $bin/cuobjdump ]] || { echo "cuobjdump not found in .venv (make deps)"; exit 1; }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
cat >"$tmp/probe.cu" <<'CU'
#include "kernels/cuda/device_block.h"
using namespace nvfp4;
using namespace nvfp4::cuda;
template <Method kMethod, bool kWmse>
__global__ void __launch_bounds__(256, 2)
    Probe(BlockJob job, BlockSpan stride, const ScaleTable* global_table, ThreadTotals* out) {
  __shared__ ScaleTable table;
  for (int i = threadIdx.x; i < static_cast<int>(sizeof(ScaleTable) / 4); i += blockDim.x)
    reinterpret_cast<float*>(&table)[i] = reinterpret_cast<const float*>(global_table)[i];
  job.method = kMethod;
  job.objective = kWmse ? Objective::kWmse : Objective::kMse;
  job.vector_access = true;
  job.dequantized = nullptr;
  job.cols = job.padded_cols;
  __shared__ ScaleSearchParams shared_params;  // as QuantizeKernel
  if (threadIdx.x == 0) {
    shared_params = MakeScaleSearchParams(job.method, job.objective, table.global_scale);
  }
  __syncthreads();
  ThreadTotals totals;
  ClearThreadTotals(&totals);
  // QuantizeThreadBlocks' loop (load-ahead without importance), the method fixed at compile
  // time.
  BlockWalk walk = StartBlockWalk(job, blockIdx.x * 256 + threadIdx.x);
  RawBlock<DType::kBF16> next;
  if (!kWmse && !walk.done(job)) LoadRawBlock<DType::kBF16>(job.x, walk.e0, 16, true, &next);
  for (; !walk.done(job); walk.Advance(job, stride)) {
    const BlockSite site = walk.site(job);
    RawBlock<DType::kBF16> raw;
    if constexpr (!kWmse) {
      raw = next;
      BlockWalk ahead = walk;
      ahead.Advance(job, stride);
      if (!ahead.done(job)) LoadRawBlock<DType::kBF16>(job.x, ahead.e0, 16, true, &next);
    } else {
      LoadRawBlock<DType::kBF16>(job.x, site.e0, 16, true, &raw);
    }
    ScaleSearchParams params = shared_params;
    params.method = kMethod;  // a constant here, so nvcc drops the other methods' code
    ProcessBlock<DType::kBF16, kWmse, kWmse>(job, table, params, site, raw, &totals);
  }
  out[blockIdx.x * 256 + threadIdx.x] = totals;
}
template __global__ void Probe<Method::kAbsMax, false>(BlockJob, BlockSpan, const ScaleTable*, ThreadTotals*);
template __global__ void Probe<Method::kFourOverSix, false>(BlockJob, BlockSpan, const ScaleTable*,
                                                            ThreadTotals*);
template __global__ void Probe<Method::kScaleSweep, false>(BlockJob, BlockSpan, const ScaleTable*,
                                                           ThreadTotals*);
template __global__ void Probe<Method::kScaleSweep, true>(BlockJob, BlockSpan, const ScaleTable*,
                                                          ThreadTotals*);
template __global__ void Probe<Method::kExhaustive, false>(BlockJob, BlockSpan, const ScaleTable*,
                                                           ThreadTotals*);
CU
nvcc=$(command -v nvcc || echo /usr/local/cuda/bin/nvcc)
"$nvcc" -std=c++17 -I. -arch=sm_90 --fmad=false -prec-div=true -prec-sqrt=true -O3 -cubin \
  "$tmp/probe.cu" -o "$tmp/probe.cubin"
PATH=$bin:$PATH "$bin/cuobjdump" -sass "$tmp/probe.cubin" >"$tmp/probe.sass"
.venv/bin/python - "$tmp/probe.sass" <<'PY'
import re, sys
sys.path.insert(0, 'tests/gpu')
from kernel_resources_test import loop_bodies, sass_functions
methods = {'0': 'absmax', '1': 'four-over-six', '2': 'exhaustive', '3': 'scalesweep'}
for (_, function), ins in sorted(sass_functions(open(sys.argv[1])).items()):
    m = re.search(r'ProbeILN5nvfp46MethodE(\d)ELb([01])E', function)
    if not m:
        continue
    name = methods[m.group(1)] + ('-wmse' if m.group(2) == '1' else '-mse')
    parts = [f"{'candidate' if ffma == 16 else 'loop'} {len(body)}"
             for _, _, body, _, ffma in loop_bodies(ins) if len(body) >= 20]
    print(f'{name:18s} {len(ins):5d} instructions; loop bodies: {", ".join(parts)}')
PY
