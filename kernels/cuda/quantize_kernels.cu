// The CUDA kernels of the NVFP4 backend. Each kernel's per-element or per-block work is a
// __host__ __device__ function of kernels/cuda/device_block.h built on the shared numerics, the
// same code the CPU reference runs; this file only maps that work onto threads:
//   - scan: grid-stride over elements (16-byte loads when aligned), CTA reduction, one atomic
//     per CTA for amax and for the first bad index;
//   - scale table: one thread per (code, threshold) entry;
//   - quantize: one thread per 16-element block, persistent grid-stride loop, the ScaleTable
//     copied once per CTA into shared memory, fp64 per-thread metric totals reduced per CTA
//     into a partial record (no atomics on sums: the order is fixed);
//   - reduce: one CTA sums partial records in index order.
#include <cstdint>

#include "kernels/cuda/device_block.h"
#include "kernels/cuda/quantize_kernels.h"
#include "kernels/numerics/block_math.h"
#include "kernels/numerics/scale_search.h"
#include "kernels/numerics/scale_table.h"

namespace nvfp4::cuda::internal {
namespace {

constexpr int kWarps = kThreadsPerCta / 32;
// At least two resident CTAs (16 warps) per SM, i.e. at most 128 registers per thread: one CTA
// of 8 warps cannot keep enough loads in flight to approach the HBM rate.
constexpr int kQuantizeMinCtasPerSm = 2;
constexpr unsigned kFullMask = 0xFFFFFFFFu;
static_assert(sizeof(ScaleTable) % 16 == 0, "the table is copied in 16-byte words");

__device__ __forceinline__ float WarpMax(float v) {
  for (int offset = 16; offset > 0; offset /= 2)
    v = MaxF(v, __shfl_down_sync(kFullMask, v, offset));
  return v;
}

__device__ __forceinline__ unsigned long long WarpMin(unsigned long long v) {
  for (int offset = 16; offset > 0; offset /= 2) {
    const unsigned long long other = __shfl_down_sync(kFullMask, v, offset);
    v = other < v ? other : v;
  }
  return v;
}

__device__ __forceinline__ double WarpSum(double v) {
  for (int offset = 16; offset > 0; offset /= 2) v += __shfl_down_sync(kFullMask, v, offset);
  return v;
}

__device__ __forceinline__ long long WarpSum(long long v) {
  for (int offset = 16; offset > 0; offset /= 2) v += __shfl_down_sync(kFullMask, v, offset);
  return v;
}

// CTA-wide amax and first bad indices into result (one atomic each, only when needed).
__device__ void PublishScan(float amax, unsigned long long bad_input, unsigned long long bad_weight,
                            DeviceResult* result) {
  __shared__ float s_amax[kWarps];
  __shared__ unsigned long long s_bad[2][kWarps];
  const int lane = threadIdx.x % 32;
  const int warp = threadIdx.x / 32;
  amax = WarpMax(amax);
  bad_input = WarpMin(bad_input);
  bad_weight = WarpMin(bad_weight);
  if (lane == 0) {
    s_amax[warp] = amax;
    s_bad[0][warp] = bad_input;
    s_bad[1][warp] = bad_weight;
  }
  __syncthreads();
  if (warp == 0) {
    amax = lane < kWarps ? s_amax[lane] : 0.0f;
    bad_input = lane < kWarps ? s_bad[0][lane] : kNoBadElement;
    bad_weight = lane < kWarps ? s_bad[1][lane] : kNoBadElement;
    amax = WarpMax(amax);
    bad_input = WarpMin(bad_input);
    bad_weight = WarpMin(bad_weight);
    if (lane == 0) {
      // Non-negative floats order like their bit patterns.
      if (amax > 0.0f) atomicMax(&result->amax_bits, FloatToBits(amax));
      if (bad_input != kNoBadElement) atomicMin(&result->first_bad_input, bad_input);
      if (bad_weight != kNoBadElement) atomicMin(&result->first_bad_weight, bad_weight);
    }
  }
}

// Ordered CTA reduction of metric totals into *out (thread 0 writes).
__device__ void ReduceMetrics(const double* sum, float max_abs_error, long long candidates,
                              MetricPartial* out) {
  __shared__ double s_sum[kMetricSums][kWarps];
  __shared__ float s_max[kWarps];
  __shared__ long long s_candidates[kWarps];
  const int lane = threadIdx.x % 32;
  const int warp = threadIdx.x / 32;
  double v[kMetricSums];
  for (int k = 0; k < kMetricSums; ++k) v[k] = WarpSum(sum[k]);
  max_abs_error = WarpMax(max_abs_error);
  candidates = WarpSum(candidates);
  if (lane == 0) {
    for (int k = 0; k < kMetricSums; ++k) s_sum[k][warp] = v[k];
    s_max[warp] = max_abs_error;
    s_candidates[warp] = candidates;
  }
  __syncthreads();
  if (warp == 0) {
    for (int k = 0; k < kMetricSums; ++k) v[k] = WarpSum(lane < kWarps ? s_sum[k][lane] : 0.0);
    max_abs_error = WarpMax(lane < kWarps ? s_max[lane] : 0.0f);
    candidates = WarpSum(lane < kWarps ? s_candidates[lane] : 0LL);
    if (lane == 0) {
      for (int k = 0; k < kMetricSums; ++k) out->sum[k] = v[k];
      out->max_abs_error = max_abs_error;
      out->unused = 0;
      out->candidates = candidates;
    }
  }
}

__global__ void InitResultKernel(DeviceResult* result) {
  if (threadIdx.x != 0 || blockIdx.x != 0) return;
  result->amax_bits = 0;
  result->global_scale = 0.0f;
  result->first_bad_input = kNoBadElement;
  result->first_bad_weight = kNoBadElement;
  for (int k = 0; k < kMetricSums; ++k) result->metrics.sum[k] = 0.0;
  result->metrics.max_abs_error = 0.0f;
  result->metrics.unused = 0;
  result->metrics.candidates = 0;
}

template <DType kDtype>
__global__ void __launch_bounds__(kThreadsPerCta)
    ScanKernel(const void* x, int64_t n, int64_t first_index, bool vector, DeviceResult* result) {
  float amax = 0.0f;
  uint64_t bad = kNoBadElement;
  ScanThreadElements<kDtype>(x, n, first_index, vector,
                             static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x,
                             static_cast<int64_t>(gridDim.x) * blockDim.x, &amax, &bad);
  PublishScan(amax, bad, kNoBadElement, result);
}

__global__ void BuildScaleTableKernel(GlobalScaleSource source, DeviceResult* result,
                                      ScaleTable* table) {
  const int t = static_cast<int>(blockIdx.x * blockDim.x + threadIdx.x);
  if (t >= kNumScaleCodes * 8) return;
  const float g = ResolveGlobalScale(source, BitsToFloat(result->amax_bits));
  if (t == 0) result->global_scale = g;
  BuildScaleTableEntry(g, t / 8, t % 8, table);
}

template <DType kDtype, bool kWeights, bool kSearchWeighted>
__global__ void __launch_bounds__(kThreadsPerCta, kQuantizeMinCtasPerSm)
    QuantizeKernel(BlockJob job, BlockSpan stride, const ScaleTable* __restrict__ global_table,
                   DeviceResult* result, MetricPartial* partials) {
  // Every thread reads thresholds of data-dependent codes: shared memory, loaded once per CTA.
  __shared__ ScaleTable table;
  {
    const uint4* src = reinterpret_cast<const uint4*>(global_table);
    uint4* dst = reinterpret_cast<uint4*>(&table);
    for (int i = threadIdx.x; i < static_cast<int>(sizeof(ScaleTable) / 16); i += blockDim.x) {
      dst[i] = src[i];
    }
  }
  // The search constants once per CTA, in shared memory (see QuantizeThreadBlocks).
  __shared__ ScaleSearchParams shared_params;
  __syncthreads();
  if (threadIdx.x == 0) {
    shared_params = MakeScaleSearchParams(job.method, job.objective, table.global_scale);
  }
  __syncthreads();
  ThreadTotals totals;
  ClearThreadTotals(&totals);
  QuantizeThreadBlocks<kDtype, kWeights, kSearchWeighted>(
      job, table, shared_params, static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x,
      stride, &totals);
  PublishScan(totals.amax, totals.first_bad_input, totals.first_bad_weight, result);
  ReduceMetrics(totals.sum, totals.max_abs_error, totals.candidates, &partials[blockIdx.x]);
}

__global__ void __launch_bounds__(kThreadsPerCta)
    ReducePartialsKernel(const MetricPartial* in, int64_t n, MetricPartial* out) {
  double sum[kMetricSums] = {};
  float max_abs_error = 0.0f;
  long long candidates = 0;
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x) {
    for (int k = 0; k < kMetricSums; ++k) sum[k] += in[i].sum[k];
    max_abs_error = MaxF(max_abs_error, in[i].max_abs_error);
    candidates += in[i].candidates;
  }
  ReduceMetrics(sum, max_abs_error, candidates, out);
}

}  // namespace

cudaError_t QueryQuantizeOccupancy(QuantizeOccupancy* out) {
  cudaError_t status = cudaSuccess;
  for (DType dtype : {DType::kF32, DType::kBF16, DType::kF16}) {
    for (int importance = 0; importance < 3 && status == cudaSuccess; ++importance) {
      BlockJob job;
      job.dtype = dtype;
      job.layout = importance == 0 ? ImportanceLayout::kNone : ImportanceLayout::kPerElement;
      job.objective = importance == 2 ? Objective::kWmse : Objective::kMse;
      DispatchBlockVariant(job, [&](auto dtype_tag, auto weights_tag, auto search_tag) {
        int n = 0;
        status = cudaOccupancyMaxActiveBlocksPerMultiprocessor(
            &n,
            QuantizeKernel<decltype(dtype_tag)::value, decltype(weights_tag)::value,
                           decltype(search_tag)::value>,
            kThreadsPerCta, 0);
        out->ctas_per_sm[QuantizeVariant(job)] =
            n < 1 ? 1 : (n > kMaxCtasPerSm ? kMaxCtasPerSm : n);
      });
    }
  }
  return status;
}

cudaError_t LaunchInitResult(DeviceResult* result, cudaStream_t stream) {
  InitResultKernel<<<1, 1, 0, stream>>>(result);
  return cudaGetLastError();
}

cudaError_t LaunchScan(DType dtype, const void* x, int64_t n, int64_t first_index,
                       DeviceResult* result, int sm_count, cudaStream_t stream) {
  if (n <= 0) return cudaSuccess;
  const bool vector = reinterpret_cast<uintptr_t>(x) % 16 == 0;
  const int64_t wanted = (n / 4 + kThreadsPerCta - 1) / kThreadsPerCta;
  const int64_t cap = static_cast<int64_t>(sm_count) * kMaxCtasPerSm;
  const int grid = static_cast<int>(wanted < 1 ? 1 : (wanted > cap ? cap : wanted));
  DispatchDtype(dtype, [&](auto dtype_tag) {
    ScanKernel<decltype(dtype_tag)::value>
        <<<grid, kThreadsPerCta, 0, stream>>>(x, n, first_index, vector, result);
  });
  return cudaGetLastError();
}

cudaError_t LaunchBuildScaleTable(const GlobalScaleSource& source, DeviceResult* result,
                                  ScaleTable* table, cudaStream_t stream) {
  constexpr int kEntries = kNumScaleCodes * 8;
  BuildScaleTableKernel<<<(kEntries + kThreadsPerCta - 1) / kThreadsPerCta, kThreadsPerCta, 0,
                          stream>>>(source, result, table);
  return cudaGetLastError();
}

cudaError_t LaunchQuantize(const BlockJob& job, const ScaleTable* table, DeviceResult* result,
                           MetricPartial* partials, int sm_count,
                           const QuantizeOccupancy& occupancy, int* grid, cudaStream_t stream) {
  const int64_t blocks = job.rows * (job.padded_cols / kBlockSize);
  *grid = 0;
  if (blocks <= 0) return cudaSuccess;
  cudaError_t status = cudaSuccess;
  DispatchBlockVariant(job, [&](auto dtype_tag, auto weights_tag, auto search_tag) {
    constexpr DType kDtype = decltype(dtype_tag)::value;
    constexpr bool kWeights = decltype(weights_tag)::value;
    constexpr bool kSearch = decltype(search_tag)::value;
    const int64_t wanted = (blocks + kThreadsPerCta - 1) / kThreadsPerCta;
    const int64_t cap =
        static_cast<int64_t>(sm_count) * occupancy.ctas_per_sm[QuantizeVariant(job)];
    *grid = static_cast<int>(wanted < cap ? wanted : cap);
    QuantizeKernel<kDtype, kWeights, kSearch><<<*grid, kThreadsPerCta, 0, stream>>>(
        job, MakeBlockSpan(job, static_cast<int64_t>(*grid) * kThreadsPerCta), table, result,
        partials);
    status = cudaGetLastError();
  });
  return status;
}

cudaError_t LaunchReducePartials(const MetricPartial* in, int64_t n, MetricPartial* out,
                                 cudaStream_t stream) {
  ReducePartialsKernel<<<1, kThreadsPerCta, 0, stream>>>(in, n, out);
  return cudaGetLastError();
}

}  // namespace nvfp4::cuda::internal
