// Request validation shared by all backends (and, later, the gRPC edge): shapes, importance
// layout and length, options. Value checks (NaN/Inf) happen in the backends' first pass.
#ifndef NVFP4_KERNELS_VALIDATE_H_
#define NVFP4_KERNELS_VALIDATE_H_

#include <cstdint>
#include <string>

#include "absl/status/status.h"
#include "kernels/quantize_options.h"
#include "kernels/tensor.h"

namespace nvfp4 {

// Largest accepted dimension product: 2^40 elements.
inline constexpr int64_t kMaxElements = int64_t{1} << 40;

// data_streamed: the data comes through a RowSource, so input.data is not read (may be null).
absl::Status ValidateQuantizeRequest(const TensorView& input, const ImportanceView& importance,
                                     const QuantizeOptions& options, bool data_streamed = false);

// The errors for bad values, in every backend's wording (an engine finds the index; these word
// it). "element 617 (row 2, column 17)" for element `index` of a [*, cols] tensor.
std::string DescribeElement(int64_t index, int64_t cols);
// InvalidArgument: input element `index` is NaN or +-Inf (`value`).
absl::Status NonFiniteInputError(int64_t index, int64_t cols, float value);
// Importance values must be finite and >= 0 (-0.0 passes): InvalidArgument naming the first
// bad one.
absl::Status ImportanceValueError(int64_t index, float value);
absl::Status CheckImportanceValues(const ImportanceView& importance);

}  // namespace nvfp4

#endif  // NVFP4_KERNELS_VALIDATE_H_
