#include "kernels/backend.h"

#include <cstring>

#include "common/status_macros.h"

namespace nvfp4 {

absl::Status QuantizerBackend::CheckStreamable(const QuantizeOptions& options,
                                               const RowsReadyFn* rows_ready) {
  if (rows_ready != nullptr && !KnownGlobalScale(options).has_value()) {
    return absl::InvalidArgumentError("streaming quantisation needs amax or global_scale");
  }
  return absl::OkStatus();
}

absl::StatusOr<QuantizedSummary> QuantizerBackend::QuantizeInto(
    const TensorView& input, const ImportanceView& importance, const QuantizeOptions& options,
    const QuantizedBuffers& out, const RowsReadyFn* rows_ready, const RowsDoneFn* rows_done) {
  RETURN_IF_ERROR(CheckStreamable(options, rows_ready));
  if (rows_ready != nullptr && !(*rows_ready)(input.rows)) {
    return absl::CancelledError("the input never completed");
  }
  absl::StatusOr<QuantizedTensor> result = Quantize(input, importance, options);
  if (!result.ok()) return result.status();
  std::memcpy(out.packed, result->packed.data(), result->packed.size());
  std::memcpy(out.scales, result->scales.data(), result->scales.size());
  if (options.want_dequantized) {
    std::memcpy(out.dequantized, result->dequantized.data(),
                result->dequantized.size() * sizeof(float));
  }
  if (rows_done != nullptr) (*rows_done)(input.rows);
  return QuantizedSummary{result->amax, result->global_scale, result->metrics};
}

}  // namespace nvfp4
