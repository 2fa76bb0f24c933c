// QuantizerBackend: the one narrow interface every NVFP4 engine implements (the CPU engine
// here, the CUDA engine in kernels/cuda). Given the same inputs, every backend must return the
// same bytes (packed values, scales, global scale); metrics agree to fp64 rounding.
//
// Errors: InvalidArgument for bad requests (shape, importance length, options) and for
// NaN/Inf inputs (naming the first bad element); ResourceExhausted when memory runs out.
// Thread-safety: implementations document it; the CPU backend allows concurrent calls.
#ifndef NVFP4_KERNELS_BACKEND_H_
#define NVFP4_KERNELS_BACKEND_H_

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
};

}  // namespace nvfp4

#endif  // NVFP4_KERNELS_BACKEND_H_
