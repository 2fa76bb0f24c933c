// The launch functions of kernels/cuda/quantize_kernels.h run on the host, for the simulated
// CUDA runtime (simulated_cuda_runtime.cc): each "kernel" is enqueued on its stream's worker
// thread and there runs every thread of the grid that quantize_kernels.cu would launch (same
// CTA size, same grid sizing with 2 CTAs per SM), one after another, through the same
// per-thread functions of kernels/cuda/device_block.h; per-thread results fold per CTA in
// thread order (the GPU's warp-shuffle tree sums in another order: metrics agree within the
// tolerance, bytes exactly), and into the DeviceResult with atomic max/min as on the GPU (the
// scan kernels of both host-path streams share one). A launch whose buffers do not lie inside
// device-accessible allocations faults with cudaErrorIllegalAddress and loses the context, as
// a real kernel's fault does; it fails at the launch, where a GPU reports it at the next
// synchronisation.
#include <cuda_runtime.h>

#include <atomic>
#include <cstdint>
#include <functional>

#include "kernels/cuda/device_block.h"
#include "kernels/cuda/quantize_kernels.h"
#include "kernels/numerics/block_math.h"
#include "kernels/numerics/scale_search.h"
#include "kernels/numerics/scale_table.h"
#include "tests/gpu/simulated/simulated_runtime.h"

namespace nvfp4::cuda::internal {
namespace {

// A launch on a lost context fails with the error that lost it.
#define NVFP4_SIM_RETURN_IF_LOST()                                                     \
  do {                                                                                 \
    if (const cudaError_t lost = simulated::LostContextError(); lost != cudaSuccess) { \
      return lost;                                                                     \
    }                                                                                  \
  } while (false)

constexpr int kSimulatedCtasPerSm = 2;  // the quantize kernel's __launch_bounds__ minimum

int64_t GridFor(int64_t work_items_per_thread_group, int sm_count, int ctas_per_sm) {
  const int64_t wanted = (work_items_per_thread_group + kThreadsPerCta - 1) / kThreadsPerCta;
  const int64_t cap = static_cast<int64_t>(sm_count) * ctas_per_sm;
  return wanted < 1 ? 1 : (wanted > cap ? cap : wanted);
}

// atomicMin / atomicMax: *target = the smaller / larger of *target and value, atomically.
template <typename T, typename Better>
void AtomicKeep(T* target, T value, Better better) {
  std::atomic_ref<T> ref(*target);
  T seen = ref.load();
  while (better(value, seen) && !ref.compare_exchange_weak(seen, value)) {
  }
}

void Publish(float amax, uint64_t bad_input, uint64_t bad_weight, DeviceResult* result) {
  // Non-negative floats order like their bit patterns (the GPU's atomicMax on the bits).
  if (amax > 0.0f) AtomicKeep(&result->amax_bits, FloatToBits(amax), std::greater<>());
  if (bad_input != kNoBadElement) {
    AtomicKeep<unsigned long long>(&result->first_bad_input, bad_input, std::less<>());
  }
  if (bad_weight != kNoBadElement) {
    AtomicKeep<unsigned long long>(&result->first_bad_weight, bad_weight, std::less<>());
  }
}

}  // namespace

cudaError_t LaunchInitResult(DeviceResult* result, cudaStream_t stream) {
  NVFP4_SIM_RETURN_IF_LOST();
  if (!simulated::DeviceAccessible(result, sizeof(*result)))
    return simulated::LoseContext(cudaErrorIllegalAddress);
  simulated::Enqueue(stream, [result] {
    *result = DeviceResult{};
    result->first_bad_input = kNoBadElement;
    result->first_bad_weight = kNoBadElement;
  });
  return cudaSuccess;
}

cudaError_t LaunchScan(DType dtype, const void* x, int64_t n, int64_t first_index,
                       DeviceResult* result, int sm_count, cudaStream_t stream) {
  NVFP4_SIM_RETURN_IF_LOST();
  if (n <= 0) return cudaSuccess;
  if (!simulated::DeviceAccessible(x, static_cast<size_t>(n) * DTypeSize(dtype)) ||
      !simulated::DeviceAccessible(result, sizeof(*result))) {
    return simulated::LoseContext(cudaErrorIllegalAddress);
  }
  const bool vector = reinterpret_cast<uintptr_t>(x) % 16 == 0;
  const int64_t threads = GridFor(n / 4, sm_count, kMaxCtasPerSm) * kThreadsPerCta;
  simulated::Enqueue(stream, [=] {
    DispatchDtype(dtype, [&](auto dtype_tag) {
      for (int64_t thread = 0; thread < threads; ++thread) {
        float amax = 0.0f;
        uint64_t bad = kNoBadElement;
        ScanThreadElements<decltype(dtype_tag)::value>(x, n, first_index, vector, thread, threads,
                                                       &amax, &bad);
        Publish(amax, bad, kNoBadElement, result);
      }
    });
  });
  return cudaSuccess;
}

cudaError_t LaunchBuildScaleTable(const GlobalScaleSource& source, DeviceResult* result,
                                  ScaleTable* table, cudaStream_t stream) {
  NVFP4_SIM_RETURN_IF_LOST();
  if (!simulated::DeviceAccessible(result, sizeof(*result)) ||
      !simulated::DeviceAccessible(table, sizeof(*table))) {
    return simulated::LoseContext(cudaErrorIllegalAddress);
  }
  simulated::Enqueue(stream, [=] {
    const float g = ResolveGlobalScale(source, BitsToFloat(result->amax_bits));
    result->global_scale = g;
    for (int t = 0; t < kNumScaleCodes * 8; ++t) BuildScaleTableEntry(g, t / 8, t % 8, table);
  });
  return cudaSuccess;
}

cudaError_t QueryQuantizeOccupancy(QuantizeOccupancy* out) {
  if (const cudaError_t error = simulated::FailureFor("occupancy"); error != cudaSuccess) {
    return error;
  }
  for (int& ctas : out->ctas_per_sm) ctas = kSimulatedCtasPerSm;
  return cudaSuccess;
}

cudaError_t LaunchQuantize(const BlockJob& job, const ScaleTable* table, DeviceResult* result,
                           MetricPartial* partials, int sm_count,
                           const QuantizeOccupancy& occupancy, int* grid, cudaStream_t stream) {
  NVFP4_SIM_RETURN_IF_LOST();
  const int64_t blocks = job.rows * (job.padded_cols / kBlockSize);
  *grid = 0;
  if (blocks <= 0) return cudaSuccess;
  if (simulated::Injected("kernel_fault")) return simulated::LoseContext(cudaErrorIllegalAddress);
  const size_t elements = static_cast<size_t>(job.rows * job.cols);
  const size_t weights = job.layout == ImportanceLayout::kPerColumn    ? job.cols
                         : job.layout == ImportanceLayout::kPerElement ? elements
                                                                       : 0;
  const int64_t ctas = GridFor(blocks, sm_count, occupancy.ctas_per_sm[QuantizeVariant(job)]);
  if (!simulated::DeviceAccessible(job.x, elements * DTypeSize(job.dtype)) ||
      !simulated::DeviceAccessible(job.weights, weights * sizeof(float)) ||
      !simulated::DeviceAccessible(job.packed, static_cast<size_t>(blocks) * kBlockSize / 2) ||
      !simulated::DeviceAccessible(job.scales, static_cast<size_t>(blocks)) ||
      (job.dequantized != nullptr &&
       !simulated::DeviceAccessible(job.dequantized, elements * sizeof(float))) ||
      !simulated::DeviceAccessible(table, sizeof(*table)) ||
      !simulated::DeviceAccessible(result, sizeof(*result)) ||
      !simulated::DeviceAccessible(partials, static_cast<size_t>(ctas) * sizeof(MetricPartial))) {
    return simulated::LoseContext(cudaErrorIllegalAddress);
  }
  *grid = static_cast<int>(ctas);
  simulated::Enqueue(stream, [=] {
    const int64_t threads = ctas * kThreadsPerCta;
    const BlockSpan stride = MakeBlockSpan(job, threads);
    const ScaleSearchParams params =
        MakeScaleSearchParams(job.method, job.objective, table->global_scale);
    for (int64_t cta = 0; cta < ctas; ++cta) {
      ThreadTotals cta_totals;
      ClearThreadTotals(&cta_totals);
      for (int64_t t = cta * kThreadsPerCta; t < (cta + 1) * kThreadsPerCta; ++t) {
        ThreadTotals mine;
        ClearThreadTotals(&mine);
        DispatchBlockVariant(job, [&](auto dtype_tag, auto weights_tag, auto search_tag) {
          QuantizeThreadBlocks<decltype(dtype_tag)::value, decltype(weights_tag)::value,
                               decltype(search_tag)::value>(job, *table, params, t, stride, &mine);
        });
        for (int k = 0; k < kMetricSums; ++k) cta_totals.sum[k] += mine.sum[k];
        cta_totals.max_abs_error = MaxF(cta_totals.max_abs_error, mine.max_abs_error);
        cta_totals.candidates += mine.candidates;
        Publish(mine.amax, mine.first_bad_input, mine.first_bad_weight, result);
      }
      MetricPartial& out = partials[cta];
      for (int k = 0; k < kMetricSums; ++k) out.sum[k] = cta_totals.sum[k];
      out.max_abs_error = cta_totals.max_abs_error;
      out.unused = 0;
      out.candidates = cta_totals.candidates;
    }
  });
  return cudaSuccess;
}

cudaError_t LaunchReducePartials(const MetricPartial* in, int64_t n, MetricPartial* out,
                                 cudaStream_t stream) {
  NVFP4_SIM_RETURN_IF_LOST();
  if (!simulated::DeviceAccessible(in, static_cast<size_t>(n) * sizeof(MetricPartial)) ||
      !simulated::DeviceAccessible(out, sizeof(*out))) {
    return simulated::LoseContext(cudaErrorIllegalAddress);
  }
  simulated::Enqueue(stream, [=] {
    MetricPartial total{};
    for (int64_t i = 0; i < n; ++i) {
      for (int k = 0; k < kMetricSums; ++k) total.sum[k] += in[i].sum[k];
      total.max_abs_error = MaxF(total.max_abs_error, in[i].max_abs_error);
      total.candidates += in[i].candidates;
    }
    *out = total;
  });
  return cudaSuccess;
}

}  // namespace nvfp4::cuda::internal
