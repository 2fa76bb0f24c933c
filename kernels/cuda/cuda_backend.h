// CudaBackend: the NVIDIA GPU implementation of QuantizerBackend (docs/cuda.md).
//
// What: the same bytes as cpu::CpuBackend (packed values, scales, global scale, dequantised
// values) for every method, objective, dtype and importance layout; metrics agree to ~1e-6
// relative (fp64 reductions in a different order). Every block runs the shared
// __host__ __device__ numerics (kernels/numerics/), one GPU thread per 16-element block.
//
// Entry points:
//  - Quantize: host input, host output. Rows are streamed in chunks through pinned staging
//    buffers on two streams (copy in, kernel, copy out overlap); options.cancelled is polled
//    before every chunk (~2M elements).
//  - QuantizeInto: the same path into caller-owned host buffers, from a host tensor or from a
//    RowSource whose rows arrive while it runs (a network upload), reporting finished rows.
//  - QuantizeDevice: device-resident input and importance (pointers from cudaMalloc on this
//    backend's device), host output.
//  - QuantizeDeviceToDevice: device input, device output buffers owned by the caller; returns
//    g, amax and metrics (one small copy back). This is the path that runs at device-memory
//    speed; the benchmark (nvfp4_cuda_bench) measures it.
// For the device paths the TensorView/ImportanceView `data` pointers are device pointers; they
// are checked with cudaPointerGetAttributes (device or managed memory of this device). A device
// call's work follows what the caller enqueued before it on the legacy default stream (so also
// on every blocking stream) and on the calling thread's per-thread default stream; work on the
// caller's own non-blocking streams must be finished (or synchronised) by the caller, and no
// device call may be made while the caller captures a stream into a CUDA graph. Every call has
// finished its device work when it returns.
//
// Ownership: views are borrowed for the duration of a call. The backend owns its streams and a
// workspace (small device records, chunk buffers, pinned staging buffers and a resident copy of
// host inputs up to 256 MiB, grown on demand and kept until destruction).
// Thread-safety: calls on one backend are serialised by an internal mutex (the GPU is busy with
// one call at a time anyway); separate backends may be used concurrently.
// Errors (never exceptions): InvalidArgument for bad requests, NaN/Inf inputs (the first bad
// element is named, as on the CPU) and bad importance values; Cancelled when options.cancelled
// is seen; ResourceExhausted when device or pinned memory runs out; Unavailable when there is
// no usable device; Internal for any other CUDA error. Every CUDA failure carries
// cudaGetErrorString. A failed call leaves the backend usable unless the CUDA context itself is
// lost (a kernel fault such as an illegal address, an uncorrectable ECC error): that call fails
// with Unavailable (the request can be retried elsewhere), and from then on health() and every
// call return Unavailable naming the first error, since only a new process recovers the device.
//
// This header has no CUDA types: plain C++ code may include it.
#ifndef NVFP4_KERNELS_CUDA_CUDA_BACKEND_H_
#define NVFP4_KERNELS_CUDA_CUDA_BACKEND_H_

#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "kernels/backend.h"
#include "kernels/metrics.h"
#include "kernels/quantize_options.h"
#include "kernels/quantized_tensor.h"
#include "kernels/tensor.h"

namespace nvfp4::cuda {

// Number of CUDA devices; 0 (never an error, never an abort) without a driver or device.
int CudaDeviceCount();

// Device memory in use (total - free, cudaMemGetInfo) on `device`, in bytes; Unavailable
// without a driver or device.
absl::StatusOr<int64_t> CudaMemoryUsedBytes(int device);

// Caller-owned device buffers for QuantizeDeviceToDevice: the QuantizedBuffers layout and sizes
// (dequantized required when options.want_dequantized, ignored otherwise), in device memory.
// 16-byte aligned pointers (cudaMalloc's) enable the vectorised path when cols % 16 == 0.
using DeviceOutputs = QuantizedBuffers;

struct DeviceQuantizeResult {
  int64_t rows = 0;
  int64_t cols = 0;
  int64_t padded_cols = 0;
  float amax = 0;             // as QuantizedTensor::amax
  float global_scale = 1;     // g
  TensorMetrics metrics;      // seconds: wall time of the call
  double device_seconds = 0;  // GPU time from the first to the last kernel (CUDA events)
};

class CudaBackend final : public QuantizerBackend {
 public:
  // Unavailable (with the CUDA message) when there is no driver or device, InvalidArgument when
  // `device` is out of range.
  static absl::StatusOr<std::unique_ptr<CudaBackend>> Create(int device = 0);
  ~CudaBackend() override;
  CudaBackend(const CudaBackend&) = delete;
  CudaBackend& operator=(const CudaBackend&) = delete;

  // "cuda:<device> <device name>", e.g. "cuda:0 NVIDIA H100 80GB HBM3".
  std::string_view name() const override { return name_; }
  int device() const { return device_; }

  // Host input (TensorView/ImportanceView in host memory), host output.
  absl::StatusOr<QuantizedTensor> Quantize(const TensorView& input,
                                           const ImportanceView& importance,
                                           const QuantizeOptions& options) override;

  // The host path into the caller's host buffers (what nvfp4d calls). A streamed input (g must
  // be known: options.amax or global_scale) is read chunk by chunk as its rows arrive, each
  // chunk gathered from the received pieces into pinned staging; rows_done hears of every
  // chunk whose outputs are in `out`, in order. A NaN/Inf input fails the call at the end of
  // its chunk, naming the element; later chunks are not quantised.
  bool quantizes_in_place() const override { return true; }
  // Unavailable once the device's CUDA context is lost (see Errors above), else OK.
  absl::Status health() const override;
  absl::StatusOr<QuantizedSummary> QuantizeInto(const TensorView& input,
                                                const ImportanceView& importance,
                                                const QuantizeOptions& options,
                                                const QuantizedBuffers& out, RowSource* streamed,
                                                const RowsDoneFn* rows_done) override;

  // Device-resident input and importance, host output.
  absl::StatusOr<QuantizedTensor> QuantizeDevice(const TensorView& device_input,
                                                 const ImportanceView& device_importance,
                                                 const QuantizeOptions& options);

  // Device-resident input and importance, caller-owned device outputs. On error the output
  // buffers hold unspecified bytes.
  absl::StatusOr<DeviceQuantizeResult> QuantizeDeviceToDevice(
      const TensorView& device_input, const ImportanceView& device_importance,
      const QuantizeOptions& options, const DeviceOutputs& outputs);

 private:
  struct State;  // streams, events, workspace (CUDA types live in the .cc)

  CudaBackend(int device, std::string name, std::unique_ptr<State> state);
  // The entry points' work; the public functions refuse work on a lost context and note a loss.
  absl::StatusOr<QuantizedSummary> QuantizeIntoImpl(
      const TensorView& input, const ImportanceView& importance, const QuantizeOptions& options,
      const QuantizedBuffers& out, RowSource* streamed, const RowsDoneFn* rows_done);
  absl::StatusOr<DeviceQuantizeResult> QuantizeDeviceToDeviceImpl(
      const TensorView& device_input, const ImportanceView& device_importance,
      const QuantizeOptions& options, const DeviceOutputs& outputs);
  absl::StatusOr<QuantizedTensor> QuantizeDeviceImpl(const TensorView& device_input,
                                                     const ImportanceView& device_importance,
                                                     const QuantizeOptions& options);
  // Records the first context-losing error of `status` (IsContextLost).
  void NoteContextLoss(const absl::Status& status);
  template <typename T>
  absl::StatusOr<T> NotingContextLoss(absl::StatusOr<T> result) {
    if (!result.ok()) NoteContextLoss(result.status());
    return result;
  }

  int device_;
  std::string name_;
  std::unique_ptr<State> state_;
  std::mutex mu_;
  mutable std::mutex lost_mu_;  // guards lost_ (not mu_: health() must not wait for a call)
  absl::Status lost_;           // OK, or Unavailable since the context was lost
};

}  // namespace nvfp4::cuda

#endif  // NVFP4_KERNELS_CUDA_CUDA_BACKEND_H_
