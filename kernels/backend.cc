#include "kernels/backend.h"

#include <cstring>
#include <new>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"

namespace nvfp4 {

absl::Status QuantizerBackend::CheckStreamable(const QuantizeOptions& options,
                                               const RowSource* streamed) {
  if (streamed != nullptr && !KnownGlobalScale(options).has_value()) {
    return absl::InvalidArgumentError("streaming quantisation needs amax or global_scale");
  }
  return absl::OkStatus();
}

absl::StatusOr<QuantizedTensor> QuantizerBackend::QuantizeIntoNewTensor(
    const TensorView& input, const ImportanceView& importance, const QuantizeOptions& options) {
  QuantizedTensor out;
  out.rows = input.rows;
  out.cols = input.cols;
  out.padded_cols = PaddedCols(input.cols);
  try {
    ResizeOutputs(out, options.want_dequantized);
  } catch (const std::bad_alloc&) {
    return absl::ResourceExhaustedError(absl::StrCat("out of memory for the outputs of a [",
                                                     input.rows, ", ", input.cols, "] tensor"));
  }
  ASSIGN_OR_RETURN(const QuantizedSummary summary,
                   QuantizeInto(input, importance, options, BuffersOf(out), /*streamed=*/nullptr,
                                /*rows_done=*/nullptr));
  out.amax = summary.amax;
  out.global_scale = summary.global_scale;
  out.metrics = summary.metrics;
  return out;
}

absl::StatusOr<QuantizedSummary> QuantizerBackend::QuantizeInto(
    const TensorView& input, const ImportanceView& importance, const QuantizeOptions& options,
    const QuantizedBuffers& out, RowSource* streamed, const RowsDoneFn* rows_done) {
  RETURN_IF_ERROR(CheckStreamable(options, streamed));
  TensorView complete = input;
  std::vector<uint8_t> gathered;
  if (streamed != nullptr) {
    try {
      gathered.resize(input.bytes());
    } catch (const std::bad_alloc&) {
      return absl::ResourceExhaustedError("out of memory gathering a streamed input");
    }
    std::vector<std::pair<const uint8_t*, size_t>> pieces;
    if (!streamed->ReadRows(0, input.rows, [&pieces](const uint8_t* data, size_t n) {
          pieces.emplace_back(data, n);
        })) {
      return absl::CancelledError("the input never completed");
    }
    uint8_t* dst = gathered.data();
    for (const auto& [data, n] : pieces) {
      std::memcpy(dst, data, n);
      dst += n;
    }
    complete.data = gathered.data();
  }
  absl::StatusOr<QuantizedTensor> result = Quantize(complete, importance, options);
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
