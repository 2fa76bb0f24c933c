// Internal to the CUDA backend: the kernels' launch functions and the device-side result
// records. Every function enqueues work on `stream` and returns the launch's cudaError_t
// (cudaGetLastError after the launch); none synchronises. Device pointers must belong to the
// current device; the caller keeps them alive until the stream's work completes.
//
// A quantisation is: LaunchInitResult, optionally LaunchScan per row chunk (when g depends on
// the tensor's amax), LaunchBuildScaleTable, then per row chunk LaunchQuantize followed by
// LaunchReducePartials (its CTA partials into one record), and a final LaunchReducePartials
// over the chunk records into DeviceResult::metrics. Reductions run in a fixed order, so the
// metrics do not depend on timing. Thread-safety: the functions hold no state.
#ifndef NVFP4_KERNELS_CUDA_QUANTIZE_KERNELS_H_
#define NVFP4_KERNELS_CUDA_QUANTIZE_KERNELS_H_

#include <cuda_runtime.h>

#include <cstdint>

#include "kernels/cuda/device_block.h"
#include "kernels/numerics/block_math.h"
#include "kernels/numerics/scale_table.h"
#include "kernels/tensor.h"

namespace nvfp4::cuda::internal {

// Metric sums of a CTA, of a chunk, or of the whole tensor.
struct MetricPartial {
  double sum[kMetricSums];  // indexed by MetricSum
  float max_abs_error;
  uint32_t unused;
  int64_t candidates;
};

// What the host reads back (one small copy) at the end of a quantisation.
struct DeviceResult {
  uint32_t amax_bits;                   // max |x| over the finite inputs, as float bits (atomicMax)
  float global_scale;                   // g, written by the table kernel
  unsigned long long first_bad_input;   // kNoBadElement or the first NaN/Inf element
  unsigned long long first_bad_weight;  // kNoBadElement or the first bad importance value
  MetricPartial metrics;
};

// Threads per CTA of the scan and quantize kernels, and the most CTAs per SM the quantize grid
// uses (partial buffers hold MaxQuantizeGrid(sm_count) records).
inline constexpr int kThreadsPerCta = 256;
inline constexpr int kMaxCtasPerSm = 8;
inline int MaxQuantizeGrid(int sm_count) { return sm_count * kMaxCtasPerSm; }

// The quantize kernel's variants (DispatchBlockVariant): dtype x {no importance, importance
// with the MSE search, importance with the WMSE search}.
inline constexpr int kQuantizeVariants = 9;
inline int QuantizeVariant(const BlockJob& job) {
  const int importance = job.layout == ImportanceLayout::kNone ? 0
                         : job.objective == Objective::kWmse   ? 2
                                                               : 1;
  return static_cast<int>(job.dtype) * 3 + importance;
}

// CTAs of each quantize variant an SM of the device keeps resident (1..kMaxCtasPerSm), which
// sets the persistent grid (and with it the metric reduction's order: see docs/cuda.md).
struct QuantizeOccupancy {
  int ctas_per_sm[kQuantizeVariants];
};

// Fills *out for the current device (CudaBackend::Create, once per device). The first query
// loads the kernels' module (lazy loading), which can fail, e.g. on a full device: the error
// is returned, never replaced by a guess.
cudaError_t QueryQuantizeOccupancy(QuantizeOccupancy* out);

cudaError_t LaunchInitResult(DeviceResult* result, cudaStream_t stream);

// max |x| and the first NaN/Inf over n contiguous elements of dtype at x, whose first element
// is element first_index of the tensor.
cudaError_t LaunchScan(DType dtype, const void* x, int64_t n, int64_t first_index,
                       DeviceResult* result, int sm_count, cudaStream_t stream);

// Builds the table for g = ResolveGlobalScale(source, amax in result) and stores g in result.
cudaError_t LaunchBuildScaleTable(const GlobalScaleSource& source, DeviceResult* result,
                                  ScaleTable* table, cudaStream_t stream);

// Quantises job (see BlockJob) with a persistent grid of at most sm_count x the variant's
// occupancy CTAs; writes one MetricPartial per CTA to partials (capacity
// MaxQuantizeGrid(sm_count)) and sets *grid to the CTA count used. Folds the job's amax and
// first bad indices into result with atomics.
cudaError_t LaunchQuantize(const BlockJob& job, const ScaleTable* table, DeviceResult* result,
                           MetricPartial* partials, int sm_count,
                           const QuantizeOccupancy& occupancy, int* grid, cudaStream_t stream);

// *out = the ordered sum of in[0..n) (one CTA).
cudaError_t LaunchReducePartials(const MetricPartial* in, int64_t n, MetricPartial* out,
                                 cudaStream_t stream);

}  // namespace nvfp4::cuda::internal

#endif  // NVFP4_KERNELS_CUDA_QUANTIZE_KERNELS_H_
