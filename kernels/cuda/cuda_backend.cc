#include "kernels/cuda/cuda_backend.h"

#include <cuda_runtime.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <limits>
#include <new>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "common/cpu_count.h"
#include "common/large_buffer.h"
#include "common/status_macros.h"
#include "kernels/cpu/parallel_copy.h"
#include "kernels/cpu/thread_pool.h"
#include "kernels/cuda/cuda_raii.h"
#include "kernels/cuda/device_block.h"
#include "kernels/cuda/quantize_kernels.h"
#include "kernels/numerics/half.h"
#include "kernels/numerics/hd.h"
#include "kernels/row_source.h"
#include "kernels/validate.h"

namespace nvfp4::cuda {
namespace {

using internal::DeviceResult;
using internal::MetricPartial;

// Host path work unit: about 2M elements per chunk (8 MiB of f32 input in each of two pinned
// staging slots), large enough to hide the launch and copy latencies.
constexpr int64_t kHostChunkElements = int64_t{1} << 21;
// Threads for the host path's staging copies (~4 memcpy streams saturate a PCIe 5 x16 link).
constexpr unsigned kHostCopyThreads = 4;

size_t AlignUp(size_t bytes, size_t alignment) {
  return (bytes + alignment - 1) / alignment * alignment;
}

bool Aligned(const void* ptr, size_t alignment) {
  return reinterpret_cast<uintptr_t>(ptr) % alignment == 0;
}

bool Cancelled(const QuantizeOptions& options) {
  return options.cancelled != nullptr && options.cancelled->load(std::memory_order_relaxed);
}

// The shared request checks, plus the kernels' one limit: a row holds at most 2^35 - 16
// elements (2^31 - 1 blocks), so that BlockWalk's 32-bit unsigned column index plus a step
// cannot wrap.
absl::Status ValidateCudaRequest(const TensorView& input, const ImportanceView& importance,
                                 const QuantizeOptions& options, bool data_streamed = false) {
  RETURN_IF_ERROR(ValidateQuantizeRequest(input, importance, options, data_streamed));
  if (PaddedCols(input.cols) / kBlockSize > std::numeric_limits<int32_t>::max()) {
    return absl::InvalidArgumentError(
        absl::StrCat("tensor [", input.rows, ", ", input.cols,
                     "]: the CUDA engine takes rows of at most 2^35 - 16 elements"));
  }
  return absl::OkStatus();
}

absl::Status CancelledStatus() { return absl::CancelledError("quantisation cancelled"); }

float ValueFromBytes(DType dtype, const uint8_t* bytes) {
  if (dtype == DType::kF32) {
    float v;
    std::memcpy(&v, bytes, sizeof(v));
    return v;
  }
  uint16_t bits;
  std::memcpy(&bits, bytes, sizeof(bits));
  return dtype == DType::kBF16 ? Bf16BitsToFloat(bits) : HalfBitsToFloat(bits);
}

// Reads element `index` of a host or device array (for error messages only).
absl::StatusOr<float> ReadValue(DType dtype, const void* data, int64_t index, bool on_device) {
  const size_t size = DTypeSize(dtype);
  const uint8_t* src = static_cast<const uint8_t*>(data) + static_cast<size_t>(index) * size;
  uint8_t bytes[4] = {0, 0, 0, 0};
  if (on_device) {
    NVFP4_CUDA_RETURN_IF_ERROR(cudaMemcpy(bytes, src, size, cudaMemcpyDeviceToHost),
                               "cudaMemcpy (reading the bad value)");
  } else {
    std::memcpy(bytes, src, size);
  }
  return ValueFromBytes(dtype, bytes);
}

// Turns the kernels' first-bad indices into the CPU backend's InvalidArgument messages.
absl::Status CheckValues(const DeviceResult& result, const TensorView& input,
                         const ImportanceView& importance, bool on_device) {
  if (result.first_bad_input != kNoBadElement) {
    const int64_t index = static_cast<int64_t>(result.first_bad_input);
    if (input.data == nullptr) {  // streamed: the host path names bad chunks as it drains them
      return absl::InvalidArgumentError(absl::StrCat("input ", DescribeElement(index, input.cols),
                                                     " is not finite; NVFP4 needs finite values"));
    }
    ASSIGN_OR_RETURN(const float v, ReadValue(input.dtype, input.data, index, on_device));
    return NonFiniteInputError(index, input.cols, v);
  }
  if (result.first_bad_weight != kNoBadElement) {
    const int64_t index = static_cast<int64_t>(result.first_bad_weight);
    ASSIGN_OR_RETURN(const float w, ReadValue(DType::kF32, importance.data, index, on_device));
    return ImportanceValueError(index, w);
  }
  return absl::OkStatus();
}

// Device paths need device (or managed) memory of this device; the host path must not get
// device memory (it would be read with memcpy).
absl::Status CheckPointer(const void* ptr, bool want_device, int device, absl::string_view what) {
  cudaPointerAttributes attributes;
  NVFP4_CUDA_RETURN_IF_ERROR(cudaPointerGetAttributes(&attributes, ptr),
                             absl::StrCat("cudaPointerGetAttributes(", what, ")"));
  const bool device_memory = attributes.type == cudaMemoryTypeDevice;
  const bool managed = attributes.type == cudaMemoryTypeManaged;
  if (want_device) {
    if (!device_memory && !managed) {
      return absl::InvalidArgumentError(
          absl::StrCat(what, " is not CUDA device memory; use Quantize for host tensors"));
    }
    if (device_memory && attributes.device != device) {
      return absl::InvalidArgumentError(
          absl::StrCat(what, " is memory of cuda:", attributes.device, ", not cuda:", device));
    }
  } else if (device_memory) {
    return absl::InvalidArgumentError(
        absl::StrCat(what, " is CUDA device memory; use QuantizeDevice for device tensors"));
  }
  return absl::OkStatus();
}

// The kernels read elements and importance, and write dequantised floats, at their natural
// alignment; a misaligned device access is a sticky fault that loses the device's context (every
// later call fails), so a misaligned device pointer is refused first. Host pointers are only
// copied from and to with memcpy, so they need no check.
absl::Status CheckAligned(const void* ptr, size_t alignment, absl::string_view what) {
  if (reinterpret_cast<uintptr_t>(ptr) % alignment == 0) return absl::OkStatus();
  return absl::InvalidArgumentError(
      absl::StrCat(what, " (0x", absl::Hex(reinterpret_cast<uintptr_t>(ptr)),
                   ") is not aligned to its element size, ", alignment, " bytes"));
}

// CheckPointer for each output buffer a call writes (`name` prefixes the field names).
absl::Status CheckOutputPointers(const QuantizedBuffers& buffers, bool want_dequantized,
                                 bool want_device, int device, absl::string_view name) {
  RETURN_IF_ERROR(CheckPointer(buffers.packed, want_device, device, absl::StrCat(name, ".packed")));
  RETURN_IF_ERROR(CheckPointer(buffers.scales, want_device, device, absl::StrCat(name, ".scales")));
  if (!want_dequantized) return absl::OkStatus();
  return CheckPointer(buffers.dequantized, want_device, device, absl::StrCat(name, ".dequantized"));
}

GlobalScaleSource MakeGlobalScaleSource(const QuantizeOptions& options) {
  GlobalScaleSource source;
  source.has_global_scale = options.global_scale.has_value();
  source.global_scale = options.global_scale.value_or(1.0f);
  source.has_amax = options.amax.has_value();
  source.amax = options.amax.value_or(0.0f);
  source.scale_max = options.scale_max;
  return source;
}

// g does not depend on the data when it or the group's amax is given: one pass suffices (the
// quantize kernel scans for NaN/Inf and the tensor amax on the way).
bool NeedsAmaxPass(const QuantizeOptions& options) {
  return !options.global_scale.has_value() && !options.amax.has_value();
}

BlockJob MakeJob(const TensorView& input, const ImportanceView& importance,
                 const QuantizeOptions& options) {
  BlockJob job;
  job.dtype = input.dtype;
  job.cols = input.cols;
  job.padded_cols = PaddedCols(input.cols);
  job.layout = importance.layout;
  job.method = options.method;
  job.objective = options.objective;
  return job;
}

void SetVectorAccess(BlockJob* job) {
  job->vector_access = job->cols % kBlockSize == 0 && Aligned(job->x, 16) &&
                       (job->weights == nullptr || Aligned(job->weights, 16)) &&
                       (job->dequantized == nullptr || Aligned(job->dequantized, 16)) &&
                       Aligned(job->packed, 8);
}

ErrorAccumulator ToAccumulator(const MetricPartial& metrics, int64_t blocks) {
  return MakeErrorAccumulator(metrics.sum, metrics.max_abs_error, metrics.candidates, blocks);
}

double SecondsSince(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

// Makes `device` current for the calling thread and restores the previous one on exit.
class ScopedDevice {
 public:
  explicit ScopedDevice(int device) {
    if (cudaGetDevice(&previous_) != cudaSuccess) {
      cudaGetLastError();
      previous_ = -1;
    }
    status_ = CudaStatus(cudaSetDevice(device), "cudaSetDevice");
    if (previous_ == device) previous_ = -1;
  }
  ~ScopedDevice() {
    if (previous_ >= 0) cudaSetDevice(previous_);
  }
  ScopedDevice(const ScopedDevice&) = delete;
  ScopedDevice& operator=(const ScopedDevice&) = delete;
  const absl::Status& status() const { return status_; }

 private:
  int previous_ = -1;
  absl::Status status_;
};

// Whether `bytes` more of device memory (current device) would leave kResidentHeadroomBytes
// free: what a kernel's first launch (lazy module loading), a larger stack or another caller
// may still need. The resident copy of a host input is an optimisation; it must not take the
// last of the memory.
constexpr size_t kResidentHeadroomBytes = size_t{256} << 20;
// A resident input up to this size is kept (State::kept_resident) for later calls: a
// cudaMalloc/cudaFree pair per call (cudaFree synchronises the device) would cost most on the
// small tensors whose transfers are short. Larger ones are allocated for the call.
constexpr size_t kKeptResidentBytes = size_t{256} << 20;
bool HasHeadroomFor(size_t bytes) {
  size_t free_bytes = 0, total_bytes = 0;
  if (cudaMemGetInfo(&free_bytes, &total_bytes) != cudaSuccess) {
    cudaGetLastError();
    return false;
  }
  return free_bytes > bytes && free_bytes - bytes >= kResidentHeadroomBytes;
}

}  // namespace

int CudaDeviceCount() {
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess) {
    cudaGetLastError();
    return 0;
  }
  return count;
}

absl::StatusOr<int64_t> CudaMemoryUsedBytes(int device) {
  int previous = 0;
  if (cudaGetDevice(&previous) != cudaSuccess) previous = 0;
  size_t free_bytes = 0, total_bytes = 0;
  cudaError_t error = cudaSetDevice(device);
  if (error == cudaSuccess) error = cudaMemGetInfo(&free_bytes, &total_bytes);
  cudaSetDevice(previous);
  if (error != cudaSuccess) {
    cudaGetLastError();
    return absl::UnavailableError(
        absl::StrCat("cudaMemGetInfo on device ", device, ": ", cudaGetErrorString(error)));
  }
  return static_cast<int64_t>(total_bytes - free_bytes);
}

// Streams, events and the workspace. Slot s (0 or 1) of every two-element array belongs to
// stream s; the host path puts chunk i on slot i % 2.
struct CudaBackend::State {
  int device = 0;
  int sm_count = 1;
  internal::QuantizeOccupancy occupancy;
  Stream streams[2];
  Event staged[2];  // recorded after the copies out of pinned input slot s were enqueued
  Event done[2];    // recorded after chunk outputs were copied into pinned output slot s
  Event joined;     // cross-stream ordering
  Event start, stop;
  DeviceBuffer result;          // DeviceResult
  DeviceBuffer table;           // ScaleTable
  DeviceBuffer partials[2];     // MaxQuantizeGrid(sm_count) MetricPartials per slot
  DeviceBuffer chunk_totals;    // one MetricPartial per host chunk
  DeviceBuffer column_weights;  // per-column importance (host path)
  DeviceBuffer chunk_input[2];  // host path chunk buffers per slot
  DeviceBuffer chunk_weights[2];
  DeviceBuffer chunk_packed[2];
  DeviceBuffer chunk_scales[2];
  DeviceBuffer chunk_dequantized[2];
  // Host path, quantize pass: DeviceResult of the chunk on slot s (its amax and first bad
  // indices; the metrics go to chunk_totals). Per slot, so that the copy of a chunk's record
  // never reads memory the other stream's kernel is updating.
  DeviceBuffer chunk_results[2];
  DeviceBuffer kept_resident;  // resident host input (data-dependent g), <= kKeptResidentBytes
  PinnedBuffer host_result;    // DeviceResult
  PinnedBuffer pinned_input[2];
  PinnedBuffer pinned_weights[2];
  PinnedBuffer pinned_output[2];  // [packed | scales | dequantized], 256-byte aligned parts
  // Host-side staging copies (into pinned input, out of pinned output) on a few threads: one
  // thread's memcpy is slower than the PCIe link.
  std::unique_ptr<cpu::ThreadPool> copy_pool;
  std::vector<cpu::CopyRange> copy_ranges, copy_pieces;

  ~State() { SynchronizeAll(); }

  // Synchronises the streams when a call returns (early returns included), so no queued work
  // outlives the buffers and staging slots of the call.
  class IdleOnExit {
   public:
    explicit IdleOnExit(State* state) : state_(state) {}
    ~IdleOnExit() { state_->SynchronizeAll(); }
    IdleOnExit(const IdleOnExit&) = delete;
    IdleOnExit& operator=(const IdleOnExit&) = delete;

   private:
    State* state_;
  };

  void SynchronizeAll() {
    for (Stream& stream : streams) {
      if (stream.get() != nullptr && cudaStreamSynchronize(stream.get()) != cudaSuccess) {
        cudaGetLastError();
      }
    }
  }

  DeviceResult* device_result() const { return result.as<DeviceResult>(); }
  // Device address of DeviceResult::metrics (computed, never dereferenced on the host).
  MetricPartial* device_metrics() const {
    return reinterpret_cast<MetricPartial*>(result.as<uint8_t>() + offsetof(DeviceResult, metrics));
  }
  const DeviceResult& result_on_host() const { return *host_result.as<DeviceResult>(); }

  absl::Status CopyResultToHost(cudaStream_t stream) {
    NVFP4_CUDA_RETURN_IF_ERROR(
        cudaMemcpyAsync(host_result.get(), result.get(), sizeof(DeviceResult),
                        cudaMemcpyDeviceToHost, stream),
        "cudaMemcpyAsync (result)");
    NVFP4_CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(stream), "cudaStreamSynchronize");
    return absl::OkStatus();
  }

  // Makes `waiter` wait for the work enqueued so far on `signaller`.
  absl::Status Join(cudaStream_t signaller, cudaStream_t waiter) {
    NVFP4_CUDA_RETURN_IF_ERROR(cudaEventRecord(joined.get(), signaller), "cudaEventRecord");
    NVFP4_CUDA_RETURN_IF_ERROR(cudaStreamWaitEvent(waiter, joined.get(), 0), "cudaStreamWaitEvent");
    return absl::OkStatus();
  }

  // Makes `waiter` wait for the caller's work on the default streams: everything enqueued before
  // the call on the legacy default stream (which itself follows all earlier work on blocking
  // streams: cudaMemcpy, cudaMemset, kernels launched without a stream, PyTorch's default
  // stream) and on the calling thread's per-thread default stream. The backend's own streams
  // are non-blocking, so without this a kernel could read a device input that a cudaMemcpy from
  // pageable memory has not finished writing.
  absl::Status FollowCallerStreams(cudaStream_t waiter) {
    RETURN_IF_ERROR(Join(cudaStreamLegacy, waiter));
    return Join(cudaStreamPerThread, waiter);
  }

  absl::StatusOr<DeviceQuantizeResult> RunOnDevice(const TensorView& input,
                                                   const ImportanceView& importance,
                                                   const QuantizeOptions& options,
                                                   const DeviceOutputs& outputs);
  // The host path: input from host memory (input.data) or from `streamed` (input.data unused),
  // outputs into the caller's host buffers `out`; rows_done (may be null) hears of every chunk
  // whose outputs are final.
  absl::StatusOr<QuantizedSummary> RunFromHost(const TensorView& input,
                                               const ImportanceView& importance,
                                               const QuantizeOptions& options,
                                               const QuantizedBuffers& out, RowSource* streamed,
                                               const RowsDoneFn* rows_done);
};

absl::StatusOr<DeviceQuantizeResult> CudaBackend::State::RunOnDevice(
    const TensorView& input, const ImportanceView& importance, const QuantizeOptions& options,
    const DeviceOutputs& outputs) {
  const auto start_time = std::chrono::steady_clock::now();
  IdleOnExit idle(this);
  cudaStream_t stream = streams[0].get();
  const GlobalScaleSource source = MakeGlobalScaleSource(options);
  RETURN_IF_ERROR(FollowCallerStreams(stream));
  NVFP4_CUDA_RETURN_IF_ERROR(cudaEventRecord(start.get(), stream), "cudaEventRecord");
  NVFP4_CUDA_RETURN_IF_ERROR(internal::LaunchInitResult(device_result(), stream), "init kernel");
  if (NeedsAmaxPass(options)) {
    NVFP4_CUDA_RETURN_IF_ERROR(internal::LaunchScan(input.dtype, input.data, input.elements(), 0,
                                                    device_result(), sm_count, stream),
                               "scan kernel");
  }
  NVFP4_CUDA_RETURN_IF_ERROR(
      internal::LaunchBuildScaleTable(source, device_result(), table.as<ScaleTable>(), stream),
      "scale table kernel");
  // Enqueued work is not interrupted; cancellation is honoured before the quantize pass.
  if (Cancelled(options)) return CancelledStatus();

  BlockJob job = MakeJob(input, importance, options);
  job.x = input.data;
  job.weights = importance.present() ? importance.data : nullptr;
  job.packed = outputs.packed;
  job.scales = outputs.scales;
  job.dequantized = options.want_dequantized ? outputs.dequantized : nullptr;
  job.row0 = 0;
  job.rows = input.rows;
  SetVectorAccess(&job);
  int grid = 0;
  NVFP4_CUDA_RETURN_IF_ERROR(
      internal::LaunchQuantize(job, table.as<ScaleTable>(), device_result(),
                               partials[0].as<MetricPartial>(), sm_count, occupancy, &grid, stream),
      "quantize kernel");
  NVFP4_CUDA_RETURN_IF_ERROR(internal::LaunchReducePartials(partials[0].as<MetricPartial>(), grid,
                                                            device_metrics(), stream),
                             "metric reduction kernel");
  NVFP4_CUDA_RETURN_IF_ERROR(cudaEventRecord(stop.get(), stream), "cudaEventRecord");
  RETURN_IF_ERROR(CopyResultToHost(stream));
  const DeviceResult& r = result_on_host();
  RETURN_IF_ERROR(CheckValues(r, input, importance, /*on_device=*/true));

  float milliseconds = 0.0f;
  NVFP4_CUDA_RETURN_IF_ERROR(cudaEventElapsedTime(&milliseconds, start.get(), stop.get()),
                             "cudaEventElapsedTime");
  DeviceQuantizeResult out;
  out.rows = input.rows;
  out.cols = input.cols;
  out.padded_cols = PaddedCols(input.cols);
  out.amax = options.amax.value_or(BitsToFloat(r.amax_bits));
  out.global_scale = r.global_scale;
  out.device_seconds = milliseconds * 1e-3;
  out.metrics = FinalizeMetrics(
      ToAccumulator(r.metrics, input.rows * (out.padded_cols / kBlockSize)), input.elements(),
      importance.present(), options.objective == Objective::kWmse, SecondsSince(start_time));
  return out;
}

absl::StatusOr<QuantizedSummary> CudaBackend::State::RunFromHost(
    const TensorView& input, const ImportanceView& importance, const QuantizeOptions& options,
    const QuantizedBuffers& out, RowSource* streamed, const RowsDoneFn* rows_done) {
  const auto start_time = std::chrono::steady_clock::now();
  const int64_t rows = input.rows;
  const int64_t cols = input.cols;
  const int64_t pc = PaddedCols(cols);
  const size_t element_size = DTypeSize(input.dtype);
  const bool per_column = importance.layout == ImportanceLayout::kPerColumn;
  const bool per_element = importance.layout == ImportanceLayout::kPerElement;
  const bool want_dequantized = options.want_dequantized;

  // Chunk geometry and buffers (grown on demand, kept for later calls).
  const int64_t rows_per_chunk = std::max<int64_t>(1, kHostChunkElements / pc);
  const int64_t chunks = (rows + rows_per_chunk - 1) / rows_per_chunk;
  const size_t input_bytes = static_cast<size_t>(rows_per_chunk * cols) * element_size;
  const size_t weight_bytes = per_element ? static_cast<size_t>(rows_per_chunk * cols) * 4 : 0;
  const size_t packed_bytes = static_cast<size_t>(rows_per_chunk * pc / 2);
  const size_t scale_bytes = static_cast<size_t>(rows_per_chunk * pc / kBlockSize);
  const size_t dequantized_bytes =
      want_dequantized ? static_cast<size_t>(rows_per_chunk * cols) * 4 : 0;
  const size_t scales_offset = AlignUp(packed_bytes, 256);
  const size_t dequantized_offset = AlignUp(scales_offset + scale_bytes, 256);
  // The chunk's DeviceResult (amax, first bad indices), so a bad value is found while its chunk
  // is still in the pinned input slot (a streamed input's rows may be gone by the end).
  const size_t chunk_result_offset = AlignUp(dequantized_offset + dequantized_bytes, 16);
  for (int slot = 0; slot < 2; ++slot) {
    RETURN_IF_ERROR(pinned_input[slot].Reserve(input_bytes));
    RETURN_IF_ERROR(pinned_weights[slot].Reserve(weight_bytes));
    RETURN_IF_ERROR(pinned_output[slot].Reserve(chunk_result_offset + sizeof(DeviceResult)));
    RETURN_IF_ERROR(chunk_weights[slot].Reserve(weight_bytes));
    RETURN_IF_ERROR(chunk_packed[slot].Reserve(packed_bytes));
    RETURN_IF_ERROR(chunk_scales[slot].Reserve(scale_bytes));
    RETURN_IF_ERROR(chunk_dequantized[slot].Reserve(dequantized_bytes));
  }
  RETURN_IF_ERROR(chunk_totals.Reserve(static_cast<size_t>(chunks) * sizeof(MetricPartial)));
  if (per_column) RETURN_IF_ERROR(column_weights.Reserve(static_cast<size_t>(cols) * 4));

  // With a data-dependent g the input is read twice (amax pass, quantize pass). It stays on the
  // device between the passes when it fits; otherwise each chunk is uploaded twice.
  const bool amax_pass = NeedsAmaxPass(options);
  DeviceBuffer resident;  // a resident input above kKeptResidentBytes, freed after the call
  uint8_t* resident_input = nullptr;
  if (amax_pass) {
    const bool keep = input.bytes() <= kKeptResidentBytes;
    // A large input may need the kept buffer's memory (the streams are idle here).
    if (!keep) kept_resident.Reset();
    DeviceBuffer& buffer = keep ? kept_resident : resident;
    const size_t growth = input.bytes() > buffer.size() ? input.bytes() - buffer.size() : 0;
    if (growth == 0 || HasHeadroomFor(growth)) {
      const absl::Status reserved = buffer.Reserve(input.bytes());
      if (reserved.ok()) {
        resident_input = buffer.as<uint8_t>();
      } else if (reserved.code() != absl::StatusCode::kResourceExhausted) {
        return reserved;
      }
    }
  }
  const bool use_resident = resident_input != nullptr;
  for (int slot = 0; slot < 2; ++slot) {
    RETURN_IF_ERROR(chunk_input[slot].Reserve(use_resident ? 0 : input_bytes));
  }
  IdleOnExit idle(this);  // declared after `resident`: streams are idle before it is freed

  cudaStream_t stream[2] = {streams[0].get(), streams[1].get()};
  const auto chunk_rows = [&](int64_t chunk) {
    return std::min(rows_per_chunk, rows - chunk * rows_per_chunk);
  };
  const auto resident_rows = [&](int64_t chunk) {
    return resident_input + static_cast<size_t>(chunk * rows_per_chunk * cols) * element_size;
  };
  // Copies the chunk's input (to input_dst, when not null) and per-element weights through the
  // slot's pinned buffers and enqueues the uploads on the slot's stream. A streamed chunk waits
  // for its rows and is gathered from the received pieces.
  const auto stage = [&](int64_t chunk, void* input_dst, bool weights) -> absl::Status {
    const int slot = static_cast<int>(chunk % 2);
    const int64_t r0 = chunk * rows_per_chunk;
    const size_t count = static_cast<size_t>(chunk_rows(chunk) * cols);
    NVFP4_CUDA_RETURN_IF_ERROR(cudaEventSynchronize(staged[slot].get()), "cudaEventSynchronize");
    copy_ranges.clear();
    if (input_dst != nullptr && streamed != nullptr) {
      // The source's lock may be held while the callback runs: note the pieces, copy after.
      uint8_t* dst = pinned_input[slot].as<uint8_t>();
      if (!streamed->ReadRows(r0, r0 + chunk_rows(chunk), [&](const uint8_t* data, size_t n) {
            copy_ranges.push_back({dst, data, n});
            dst += n;
          })) {
        return absl::CancelledError("the input never completed");
      }
    } else if (input_dst != nullptr) {
      copy_ranges.push_back(
          {pinned_input[slot].as<uint8_t>(),
           static_cast<const uint8_t*>(input.data) + static_cast<size_t>(r0 * cols) * element_size,
           count * element_size});
    }
    if (weights) {
      copy_ranges.push_back({pinned_weights[slot].as<uint8_t>(),
                             reinterpret_cast<const uint8_t*>(importance.data + r0 * cols),
                             count * 4});
    }
    cpu::ParallelCopy(*copy_pool, copy_ranges, &copy_pieces);
    if (input_dst != nullptr) {
      NVFP4_CUDA_RETURN_IF_ERROR(
          cudaMemcpyAsync(input_dst, pinned_input[slot].get(), count * element_size,
                          cudaMemcpyHostToDevice, stream[slot]),
          "cudaMemcpyAsync (input chunk)");
    }
    if (weights) {
      NVFP4_CUDA_RETURN_IF_ERROR(
          cudaMemcpyAsync(chunk_weights[slot].get(), pinned_weights[slot].get(), count * 4,
                          cudaMemcpyHostToDevice, stream[slot]),
          "cudaMemcpyAsync (importance chunk)");
    }
    NVFP4_CUDA_RETURN_IF_ERROR(cudaEventRecord(staged[slot].get(), stream[slot]),
                               "cudaEventRecord");
    return absl::OkStatus();
  };
  // The quantize pass's amax and first bad weight, folded over the chunks' records.
  uint32_t quantized_amax_bits = 0;
  uint64_t quantized_bad_weight = kNoBadElement;
  // Waits for the chunk's outputs in its pinned slot, fails on a NaN/Inf input in the chunk
  // (naming it, as the CPU does; later chunks are not quantised), copies the outputs into `out`
  // and reports the chunk's rows done.
  const auto drain = [&](int64_t chunk) -> absl::Status {
    const int slot = static_cast<int>(chunk % 2);
    const int64_t r0 = chunk * rows_per_chunk;
    const int64_t n = chunk_rows(chunk);
    NVFP4_CUDA_RETURN_IF_ERROR(cudaEventSynchronize(done[slot].get()), "cudaEventSynchronize");
    const uint8_t* pinned = pinned_output[slot].as<uint8_t>();
    DeviceResult chunk_result;
    std::memcpy(&chunk_result, pinned + chunk_result_offset, sizeof(chunk_result));
    // With a resident input the scan pass has reported any bad input before this pass.
    if (!use_resident && chunk_result.first_bad_input != kNoBadElement) {
      const int64_t index = static_cast<int64_t>(chunk_result.first_bad_input);
      const float v =
          ValueFromBytes(input.dtype, pinned_input[slot].as<uint8_t>() +
                                          static_cast<size_t>(index - r0 * cols) * element_size);
      return NonFiniteInputError(index, cols, v);
    }
    quantized_amax_bits = std::max(quantized_amax_bits, chunk_result.amax_bits);
    quantized_bad_weight = MinIndex(quantized_bad_weight, chunk_result.first_bad_weight);
    copy_ranges.clear();
    copy_ranges.push_back({out.packed + r0 * (pc / 2), pinned, static_cast<size_t>(n * pc / 2)});
    copy_ranges.push_back({out.scales + r0 * (pc / kBlockSize), pinned + scales_offset,
                           static_cast<size_t>(n * pc / kBlockSize)});
    if (want_dequantized) {
      copy_ranges.push_back({reinterpret_cast<uint8_t*>(out.dequantized + r0 * cols),
                             pinned + dequantized_offset, static_cast<size_t>(n * cols) * 4});
    }
    cpu::ParallelCopy(*copy_pool, copy_ranges, &copy_pieces);
    if (rows_done != nullptr) (*rows_done)(r0 + n);
    return absl::OkStatus();
  };

  NVFP4_CUDA_RETURN_IF_ERROR(internal::LaunchInitResult(device_result(), stream[0]), "init kernel");
  if (per_column) {
    NVFP4_CUDA_RETURN_IF_ERROR(
        cudaMemcpyAsync(column_weights.get(), importance.data, static_cast<size_t>(cols) * 4,
                        cudaMemcpyHostToDevice, stream[0]),
        "cudaMemcpyAsync (importance)");
  }
  RETURN_IF_ERROR(Join(stream[0], stream[1]));

  // Pass 1 (data-dependent g only): upload and scan for amax and NaN/Inf.
  if (amax_pass) {
    for (int64_t chunk = 0; chunk < chunks; ++chunk) {
      if (Cancelled(options)) return CancelledStatus();
      const int slot = static_cast<int>(chunk % 2);
      void* dst = use_resident ? resident_rows(chunk) : chunk_input[slot].get();
      RETURN_IF_ERROR(stage(chunk, dst, /*weights=*/false));
      NVFP4_CUDA_RETURN_IF_ERROR(internal::LaunchScan(input.dtype, dst, chunk_rows(chunk) * cols,
                                                      chunk * rows_per_chunk * cols,
                                                      device_result(), sm_count, stream[slot]),
                                 "scan kernel");
    }
    RETURN_IF_ERROR(Join(stream[1], stream[0]));
  }
  NVFP4_CUDA_RETURN_IF_ERROR(
      internal::LaunchBuildScaleTable(MakeGlobalScaleSource(options), device_result(),
                                      table.as<ScaleTable>(), stream[0]),
      "scale table kernel");
  if (amax_pass) {
    // Report NaN/Inf before spending the quantize pass on it (the CPU checks first, too).
    RETURN_IF_ERROR(CopyResultToHost(stream[0]));
    DeviceResult scanned = result_on_host();
    scanned.first_bad_weight = kNoBadElement;
    RETURN_IF_ERROR(CheckValues(scanned, input, importance, /*on_device=*/false));
  }
  RETURN_IF_ERROR(Join(stream[0], stream[1]));

  // Pass 2: per chunk, upload (unless resident), quantize, reduce metrics, download; chunk i
  // on slot i % 2, so one slot's copies overlap the other slot's kernel and host copies.
  for (int64_t chunk = 0; chunk < chunks; ++chunk) {
    if (Cancelled(options)) return CancelledStatus();
    const int slot = static_cast<int>(chunk % 2);
    if (chunk >= 2) RETURN_IF_ERROR(drain(chunk - 2));
    const int64_t r0 = chunk * rows_per_chunk;
    const int64_t n = chunk_rows(chunk);
    void* x = use_resident ? static_cast<void*>(resident_rows(chunk)) : chunk_input[slot].get();
    if (!use_resident || per_element) {
      RETURN_IF_ERROR(stage(chunk, use_resident ? nullptr : x, per_element));
    }
    BlockJob job = MakeJob(input, importance, options);
    job.x = x;
    job.weights = per_column    ? column_weights.as<float>()
                  : per_element ? chunk_weights[slot].as<float>()
                                : nullptr;
    job.packed = chunk_packed[slot].as<uint8_t>();
    job.scales = chunk_scales[slot].as<uint8_t>();
    job.dequantized = want_dequantized ? chunk_dequantized[slot].as<float>() : nullptr;
    job.row0 = r0;
    job.rows = n;
    SetVectorAccess(&job);
    int grid = 0;
    DeviceResult* chunk_result = chunk_results[slot].as<DeviceResult>();
    NVFP4_CUDA_RETURN_IF_ERROR(internal::LaunchInitResult(chunk_result, stream[slot]),
                               "init kernel");
    NVFP4_CUDA_RETURN_IF_ERROR(internal::LaunchQuantize(job, table.as<ScaleTable>(), chunk_result,
                                                        partials[slot].as<MetricPartial>(),
                                                        sm_count, occupancy, &grid, stream[slot]),
                               "quantize kernel");
    NVFP4_CUDA_RETURN_IF_ERROR(
        internal::LaunchReducePartials(partials[slot].as<MetricPartial>(), grid,
                                       chunk_totals.as<MetricPartial>() + chunk, stream[slot]),
        "metric reduction kernel");
    uint8_t* pinned = pinned_output[slot].as<uint8_t>();
    NVFP4_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(pinned, job.packed, static_cast<size_t>(n * pc / 2),
                                               cudaMemcpyDeviceToHost, stream[slot]),
                               "cudaMemcpyAsync (packed chunk)");
    NVFP4_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(pinned + scales_offset, job.scales,
                                               static_cast<size_t>(n * pc / kBlockSize),
                                               cudaMemcpyDeviceToHost, stream[slot]),
                               "cudaMemcpyAsync (scales chunk)");
    if (want_dequantized) {
      NVFP4_CUDA_RETURN_IF_ERROR(
          cudaMemcpyAsync(pinned + dequantized_offset, job.dequantized,
                          static_cast<size_t>(n * cols) * 4, cudaMemcpyDeviceToHost, stream[slot]),
          "cudaMemcpyAsync (dequantized chunk)");
    }
    NVFP4_CUDA_RETURN_IF_ERROR(
        cudaMemcpyAsync(pinned + chunk_result_offset, chunk_result, sizeof(DeviceResult),
                        cudaMemcpyDeviceToHost, stream[slot]),
        "cudaMemcpyAsync (chunk result)");
    NVFP4_CUDA_RETURN_IF_ERROR(cudaEventRecord(done[slot].get(), stream[slot]), "cudaEventRecord");
  }
  for (int64_t chunk = std::max<int64_t>(0, chunks - 2); chunk < chunks; ++chunk) {
    RETURN_IF_ERROR(drain(chunk));
  }
  RETURN_IF_ERROR(Join(stream[1], stream[0]));
  NVFP4_CUDA_RETURN_IF_ERROR(internal::LaunchReducePartials(chunk_totals.as<MetricPartial>(),
                                                            chunks, device_metrics(), stream[0]),
                             "metric reduction kernel");
  RETURN_IF_ERROR(CopyResultToHost(stream[0]));
  // The tensor's record: the scan pass (if any) and the metrics from the device, the quantize
  // pass's amax and bad weight from the chunk records.
  DeviceResult r = result_on_host();
  r.amax_bits = std::max(r.amax_bits, quantized_amax_bits);
  r.first_bad_weight = MinIndex(r.first_bad_weight, quantized_bad_weight);
  RETURN_IF_ERROR(CheckValues(r, input, importance, /*on_device=*/false));

  QuantizedSummary summary;
  summary.amax = options.amax.value_or(BitsToFloat(r.amax_bits));
  summary.global_scale = r.global_scale;
  summary.metrics = FinalizeMetrics(
      ToAccumulator(r.metrics, rows * (pc / kBlockSize)), input.elements(), importance.present(),
      options.objective == Objective::kWmse, SecondsSince(start_time));
  return summary;
}

CudaBackend::CudaBackend(int device, std::string name, std::unique_ptr<State> state)
    : device_(device), name_(std::move(name)), state_(std::move(state)) {}

CudaBackend::~CudaBackend() {
  ScopedDevice scoped(device_);
  state_.reset();
}

absl::StatusOr<std::unique_ptr<CudaBackend>> CudaBackend::Create(int device) {
  int count = 0;
  const cudaError_t error = cudaGetDeviceCount(&count);
  if (error != cudaSuccess) {
    cudaGetLastError();
    return absl::UnavailableError(
        absl::StrCat("no CUDA device: cudaGetDeviceCount: ", cudaGetErrorName(error), ": ",
                     cudaGetErrorString(error)));
  }
  if (count == 0) return absl::UnavailableError("no CUDA device: cudaGetDeviceCount found none");
  if (device < 0 || device >= count) {
    return absl::InvalidArgumentError(
        absl::StrCat("CUDA device ", device, " does not exist (", count, " present)"));
  }
  ScopedDevice scoped(device);
  RETURN_IF_ERROR(scoped.status());
  cudaDeviceProp properties;
  NVFP4_CUDA_RETURN_IF_ERROR(cudaGetDeviceProperties(&properties, device),
                             "cudaGetDeviceProperties");
  auto state = std::make_unique<State>();
  state->device = device;
  state->copy_pool = std::make_unique<cpu::ThreadPool>(
      std::clamp(UsableCpuCount(), 1, static_cast<int>(kHostCopyThreads)));
  state->sm_count = std::max(1, properties.multiProcessorCount);
  NVFP4_CUDA_RETURN_IF_ERROR(internal::QueryQuantizeOccupancy(&state->occupancy),
                             "cudaOccupancyMaxActiveBlocksPerMultiprocessor (quantize kernels)");
  for (int slot = 0; slot < 2; ++slot) {
    ASSIGN_OR_RETURN(state->streams[slot], Stream::Create());
    ASSIGN_OR_RETURN(state->staged[slot], Event::Create(/*timing=*/false));
    ASSIGN_OR_RETURN(state->done[slot], Event::Create(/*timing=*/false));
    ASSIGN_OR_RETURN(
        state->partials[slot],
        DeviceBuffer::Create(static_cast<size_t>(internal::MaxQuantizeGrid(state->sm_count)) *
                             sizeof(MetricPartial)));
    ASSIGN_OR_RETURN(state->chunk_results[slot], DeviceBuffer::Create(sizeof(DeviceResult)));
  }
  ASSIGN_OR_RETURN(state->joined, Event::Create(/*timing=*/false));
  ASSIGN_OR_RETURN(state->start, Event::Create(/*timing=*/true));
  ASSIGN_OR_RETURN(state->stop, Event::Create(/*timing=*/true));
  ASSIGN_OR_RETURN(state->result, DeviceBuffer::Create(sizeof(DeviceResult)));
  ASSIGN_OR_RETURN(state->table, DeviceBuffer::Create(sizeof(ScaleTable)));
  // The table build writes every field but not the struct's alignment padding, which the
  // kernels' 16-byte copy into shared memory reads: zero it once (compute-sanitizer initcheck).
  // On streams[0], where every table build runs: ordered before the first one.
  NVFP4_CUDA_RETURN_IF_ERROR(
      cudaMemsetAsync(state->table.get(), 0, sizeof(ScaleTable), state->streams[0].get()),
      "cudaMemsetAsync (scale table)");
  ASSIGN_OR_RETURN(state->host_result, PinnedBuffer::Create(sizeof(DeviceResult)));
  return std::unique_ptr<CudaBackend>(new CudaBackend(
      device, absl::StrCat("cuda:", device, " ", properties.name), std::move(state)));
}

absl::StatusOr<QuantizedTensor> CudaBackend::Quantize(const TensorView& input,
                                                      const ImportanceView& importance,
                                                      const QuantizeOptions& options) {
  RETURN_IF_ERROR(ValidateCudaRequest(input, importance, options));
  return QuantizeIntoNewTensor(input, importance, options);
}

absl::Status CudaBackend::health() const {
  std::lock_guard<std::mutex> lock(lost_mu_);
  return lost_;
}

void CudaBackend::NoteContextLoss(const absl::Status& status) {
  if (!IsContextLost(status)) return;
  std::lock_guard<std::mutex> lock(lost_mu_);
  if (!lost_.ok()) return;
  lost_ = absl::UnavailableError(absl::StrCat(name_, " lost its CUDA context (", status.message(),
                                              "); only a new process can use it again"));
}

absl::StatusOr<QuantizedSummary> CudaBackend::QuantizeInto(
    const TensorView& input, const ImportanceView& importance, const QuantizeOptions& options,
    const QuantizedBuffers& out, RowSource* streamed, const RowsDoneFn* rows_done) {
  RETURN_IF_ERROR(health());
  return NotingContextLoss(QuantizeIntoImpl(input, importance, options, out, streamed, rows_done));
}

absl::StatusOr<DeviceQuantizeResult> CudaBackend::QuantizeDeviceToDevice(
    const TensorView& device_input, const ImportanceView& device_importance,
    const QuantizeOptions& options, const DeviceOutputs& outputs) {
  RETURN_IF_ERROR(health());
  return NotingContextLoss(
      QuantizeDeviceToDeviceImpl(device_input, device_importance, options, outputs));
}

absl::StatusOr<QuantizedTensor> CudaBackend::QuantizeDevice(const TensorView& device_input,
                                                            const ImportanceView& device_importance,
                                                            const QuantizeOptions& options) {
  RETURN_IF_ERROR(health());
  return NotingContextLoss(QuantizeDeviceImpl(device_input, device_importance, options));
}

absl::StatusOr<QuantizedSummary> CudaBackend::QuantizeIntoImpl(
    const TensorView& input, const ImportanceView& importance, const QuantizeOptions& options,
    const QuantizedBuffers& out, RowSource* streamed, const RowsDoneFn* rows_done) {
  RETURN_IF_ERROR(ValidateCudaRequest(input, importance, options, streamed != nullptr));
  RETURN_IF_ERROR(CheckStreamable(options, streamed));
  if (out.packed == nullptr || out.scales == nullptr ||
      (options.want_dequantized && out.dequantized == nullptr)) {
    return absl::InvalidArgumentError("QuantizeInto: an output buffer is null");
  }
  std::lock_guard<std::mutex> lock(mu_);
  ScopedDevice scoped(device_);
  RETURN_IF_ERROR(scoped.status());
  cudaGetLastError();  // do not report an earlier, unrelated failure as ours
  if (streamed == nullptr) {
    RETURN_IF_ERROR(CheckPointer(input.data, /*want_device=*/false, device_, "input.data"));
  }
  if (importance.present()) {
    RETURN_IF_ERROR(
        CheckPointer(importance.data, /*want_device=*/false, device_, "importance.data"));
  }
  RETURN_IF_ERROR(
      CheckOutputPointers(out, options.want_dequantized, /*want_device=*/false, device_, "out"));
  // When rows are reported (a caller may send them on) or arrive while the call runs, bad
  // importance must fail the call before any work, as on the CPU; the kernels would only find it
  // after every row was reported.
  if (streamed != nullptr || rows_done != nullptr) {
    RETURN_IF_ERROR(CheckImportanceValues(importance));
  }
  try {
    return state_->RunFromHost(input, importance, options, out, streamed, rows_done);
  } catch (const std::bad_alloc&) {
    return absl::ResourceExhaustedError(absl::StrCat("out of host memory quantising a [",
                                                     input.rows, ", ", input.cols, "] tensor"));
  }
}

absl::StatusOr<DeviceQuantizeResult> CudaBackend::QuantizeDeviceToDeviceImpl(
    const TensorView& device_input, const ImportanceView& device_importance,
    const QuantizeOptions& options, const DeviceOutputs& outputs) {
  RETURN_IF_ERROR(ValidateCudaRequest(device_input, device_importance, options));
  if (outputs.packed == nullptr || outputs.scales == nullptr) {
    return absl::InvalidArgumentError("device outputs: packed and scales must not be null");
  }
  if (options.want_dequantized && outputs.dequantized == nullptr) {
    return absl::InvalidArgumentError(
        "device outputs: want_dequantized needs a dequantized buffer");
  }
  RETURN_IF_ERROR(CheckAligned(device_input.data, DTypeSize(device_input.dtype), "input.data"));
  if (device_importance.present()) {
    RETURN_IF_ERROR(CheckAligned(device_importance.data, sizeof(float), "importance.data"));
  }
  if (options.want_dequantized) {
    RETURN_IF_ERROR(CheckAligned(outputs.dequantized, sizeof(float), "outputs.dequantized"));
  }
  std::lock_guard<std::mutex> lock(mu_);
  ScopedDevice scoped(device_);
  RETURN_IF_ERROR(scoped.status());
  cudaGetLastError();
  RETURN_IF_ERROR(CheckPointer(device_input.data, /*want_device=*/true, device_, "input.data"));
  if (device_importance.present()) {
    RETURN_IF_ERROR(
        CheckPointer(device_importance.data, /*want_device=*/true, device_, "importance.data"));
  }
  RETURN_IF_ERROR(CheckOutputPointers(outputs, options.want_dequantized, /*want_device=*/true,
                                      device_, "outputs"));
  return state_->RunOnDevice(device_input, device_importance, options, outputs);
}

absl::StatusOr<QuantizedTensor> CudaBackend::QuantizeDeviceImpl(
    const TensorView& device_input, const ImportanceView& device_importance,
    const QuantizeOptions& options) {
  RETURN_IF_ERROR(ValidateCudaRequest(device_input, device_importance, options));
  const int64_t pc = PaddedCols(device_input.cols);
  const size_t packed_bytes = static_cast<size_t>(device_input.rows * pc / 2);
  const size_t scale_bytes = static_cast<size_t>(device_input.rows * pc / kBlockSize);
  const size_t dequantized_bytes =
      options.want_dequantized ? static_cast<size_t>(device_input.elements()) * 4 : 0;
  // Declared before the buffers, so that they are freed while the backend's device is current.
  ScopedDevice scoped(device_);
  RETURN_IF_ERROR(scoped.status());
  DeviceBuffer packed, scales, dequantized;
  ASSIGN_OR_RETURN(packed, DeviceBuffer::Create(packed_bytes));
  ASSIGN_OR_RETURN(scales, DeviceBuffer::Create(scale_bytes));
  ASSIGN_OR_RETURN(dequantized, DeviceBuffer::Create(dequantized_bytes));
  DeviceOutputs outputs;
  outputs.packed = packed.as<uint8_t>();
  outputs.scales = scales.as<uint8_t>();
  outputs.dequantized = dequantized.as<float>();
  ASSIGN_OR_RETURN(const DeviceQuantizeResult result,
                   QuantizeDeviceToDeviceImpl(device_input, device_importance, options, outputs));
  try {
    QuantizedTensor out;
    out.rows = result.rows;
    out.cols = result.cols;
    out.padded_cols = result.padded_cols;
    out.amax = result.amax;
    out.global_scale = result.global_scale;
    out.metrics = result.metrics;
    ResizeOutputs(out, options.want_dequantized);
    NVFP4_CUDA_RETURN_IF_ERROR(
        cudaMemcpy(out.packed.data(), packed.get(), packed_bytes, cudaMemcpyDeviceToHost),
        "cudaMemcpy (packed)");
    NVFP4_CUDA_RETURN_IF_ERROR(
        cudaMemcpy(out.scales.data(), scales.get(), scale_bytes, cudaMemcpyDeviceToHost),
        "cudaMemcpy (scales)");
    if (dequantized_bytes > 0) {
      NVFP4_CUDA_RETURN_IF_ERROR(cudaMemcpy(out.dequantized.data(), dequantized.get(),
                                            dequantized_bytes, cudaMemcpyDeviceToHost),
                                 "cudaMemcpy (dequantized)");
    }
    return out;
  } catch (const std::bad_alloc&) {
    return absl::ResourceExhaustedError(absl::StrCat("out of host memory for a [",
                                                     device_input.rows, ", ", device_input.cols,
                                                     "] quantised tensor"));
  }
}

}  // namespace nvfp4::cuda
