// QuantizerBackend: the one narrow interface every NVFP4 engine implements (the CPU engine
// here, the CUDA engine in kernels/cuda). Given the same inputs, every backend must return the
// same bytes (packed values, scales, global scale); metrics agree to fp64 rounding.
//
// Errors: InvalidArgument for bad requests (shape, importance length, options) and for
// NaN/Inf inputs (naming the first bad element); ResourceExhausted when memory runs out.
// Thread-safety: implementations document it; the CPU backend allows concurrent calls.
#ifndef NVFP4_KERNELS_BACKEND_H_
#define NVFP4_KERNELS_BACKEND_H_

#include <cstdint>
#include <functional>
#include <string_view>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "kernels/quantize_options.h"
#include "kernels/quantized_tensor.h"
#include "kernels/row_source.h"
#include "kernels/tensor.h"

namespace nvfp4 {

class QuantizerBackend {
 public:
  virtual ~QuantizerBackend() = default;
  virtual std::string_view name() const = 0;
  virtual absl::StatusOr<QuantizedTensor> Quantize(const TensorView& input,
                                                   const ImportanceView& importance,
                                                   const QuantizeOptions& options) = 0;

  // The general form: quantises into caller-owned buffers (QuantizedBuffers sizes), so a
  // service can recycle its output memory and send finished rows while later ones are still
  // being quantised. Same bytes and metrics as Quantize.
  //
  // streamed: nullptr when input.data is complete. Otherwise the input arrives row by row (a
  // network upload) and is read through `streamed` (kernels/row_source.h), not input.data
  // (which may be null; input still gives dtype and shape). Streaming needs g known up front
  // (options.amax or options.global_scale: KnownGlobalScale) and a complete importance. If the
  // rows never arrive the call returns Cancelled.
  // rows_done: nullptr, or told n once the outputs of the first n rows are final (and the
  // engine no longer reads those rows of `streamed`). Calls may come from several engine
  // threads at once and out of order (each n is a valid prefix; use the largest seen); one has
  // n = input.rows, before an OK return. It must not block.
  // On error the buffers hold unspecified bytes.
  //
  // The default gathers a streamed input into one buffer, runs Quantize and copies its result
  // (engines override it to write in place and to overlap the arrival with the work).
  using RowsDoneFn = std::function<void(int64_t rows)>;
  // True when QuantizeInto writes straight into the caller's buffers and reads a streamed input
  // where it lies; false for the default, which holds a second copy of the outputs and of a
  // streamed input while it runs (a server reserves memory for them).
  virtual bool quantizes_in_place() const { return false; }
  // OK while the engine can take work; otherwise why not (e.g. a GPU whose CUDA context was
  // lost: only a new process recovers it). A service takes it as a signal to be restarted.
  // Thread-safe, cheap, never blocks on a running call.
  virtual absl::Status health() const { return absl::OkStatus(); }
  virtual absl::StatusOr<QuantizedSummary> QuantizeInto(
      const TensorView& input, const ImportanceView& importance, const QuantizeOptions& options,
      const QuantizedBuffers& out, RowSource* streamed, const RowsDoneFn* rows_done);

 protected:
  // QuantizeInto's streaming precondition (g known up front), for every implementation.
  static absl::Status CheckStreamable(const QuantizeOptions& options, const RowSource* streamed);
  // Quantize for an engine whose QuantizeInto writes in place: sizes a QuantizedTensor's
  // outputs (ResourceExhausted when host memory runs out) and runs QuantizeInto into them. The
  // caller checks the request first, so a bad shape never sizes outputs.
  absl::StatusOr<QuantizedTensor> QuantizeIntoNewTensor(const TensorView& input,
                                                        const ImportanceView& importance,
                                                        const QuantizeOptions& options);
};

}  // namespace nvfp4

#endif  // NVFP4_KERNELS_BACKEND_H_
