// Request validation shared by all backends (and, later, the gRPC edge): shapes, importance
// layout and length, options. Value checks (NaN/Inf) happen in the backends' first pass.
#ifndef NVFP4_KERNELS_VALIDATE_H_
#define NVFP4_KERNELS_VALIDATE_H_

#include "absl/status/status.h"
#include "kernels/quantize_options.h"
#include "kernels/tensor.h"

namespace nvfp4 {

// Largest accepted dimension product: 2^40 elements.
inline constexpr int64_t kMaxElements = int64_t{1} << 40;

// data_streamed: the data comes through a RowSource, so input.data is not read (may be null).
absl::Status ValidateQuantizeRequest(const TensorView& input, const ImportanceView& importance,
                                     const QuantizeOptions& options, bool data_streamed = false);

// Importance values must be finite and >= 0 (-0.0 passes): InvalidArgument naming the first
// bad one. Every backend's wording (the CUDA kernels find the index, the host words it).
absl::Status ImportanceValueError(int64_t index, float value);
absl::Status CheckImportanceValues(const ImportanceView& importance);

}  // namespace nvfp4

#endif  // NVFP4_KERNELS_VALIDATE_H_
