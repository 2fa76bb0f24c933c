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

#include "absl/status/statusor.h"
#include "kernels/quantize_options.h"
#include "kernels/quantized_tensor.h"
#include "kernels/tensor.h"

namespace nvfp4 {

class QuantizerBackend {
 public:
  virtual ~QuantizerBackend() = default;
  virtual std::string_view name() const = 0;
  virtual absl::StatusOr<QuantizedTensor> Quantize(const TensorView& input,
                                                   const ImportanceView& importance,
                                                   const QuantizeOptions& options) = 0;

  // Streaming form, for inputs that arrive row by row (a network upload): rows_ready(n) blocks
  // until the first n rows of input.data are present and returns false if they never will
  // (the job is then cancelled). The global scale must be known up front (options.amax or
  // options.global_scale); the importance must be complete. Same bytes and metrics as
  // Quantize. The default waits for every row and calls Quantize; engines override it to
  // overlap the arrival with the work.
  using RowsReadyFn = std::function<bool(int64_t rows)>;
  virtual absl::StatusOr<QuantizedTensor> QuantizeStreaming(const TensorView& input,
                                                            const ImportanceView& importance,
                                                            const QuantizeOptions& options,
                                                            const RowsReadyFn& rows_ready) {
    if (!options.amax.has_value() && !options.global_scale.has_value()) {
      return absl::InvalidArgumentError("streaming quantisation needs amax or global_scale");
    }
    if (!rows_ready(input.rows)) return absl::CancelledError("the input never completed");
    return Quantize(input, importance, options);
  }
};

}  // namespace nvfp4

#endif  // NVFP4_KERNELS_BACKEND_H_
