#include "kernels/encoding_check.h"

#include <cmath>
#include <memory>
#include <vector>

#include "absl/strings/str_cat.h"
#include "kernels/cpu/row_kernel.h"
#include "kernels/numerics/block_math.h"
#include "kernels/numerics/global_scale.h"
#include "kernels/numerics/scale_table.h"
#include "kernels/quantized_tensor.h"

namespace nvfp4 {

absl::StatusOr<EncodingMismatches> CountEncodingMismatches(const TensorView& input,
                                                           const uint8_t* packed,
                                                           const uint8_t* scales, float g) {
  if (!std::isfinite(g) || !(g >= kMinGlobalScale)) {
    return absl::InvalidArgumentError(
        absl::StrCat("global scale ", g, " is not finite and >= 2^-117"));
  }
  const int64_t rows = input.rows, cols = input.cols, padded = PaddedCols(cols);
  const int64_t blocks_per_row = padded / kBlockSize;
  for (int64_t i = 0; i < rows * blocks_per_row; ++i) {
    if (scales[i] >= kNumScaleCodes) {
      return absl::InvalidArgumentError(absl::StrCat("block scale byte ", i, " (0x",
                                                     absl::Hex(scales[i]), ") is NaN or negative"));
    }
  }
  auto table = std::make_unique<ScaleTable>();
  BuildScaleTable(g, table.get());
  EncodingMismatches result;
  std::vector<float> row(static_cast<size_t>(cols));
  const size_t element_bytes = DTypeSize(input.dtype);
  for (int64_t r = 0; r < rows; ++r) {
    cpu::ConvertToF32Scalar(
        input.dtype,
        static_cast<const uint8_t*>(input.data) + static_cast<size_t>(r * cols) * element_bytes,
        cols, row.data());
    const uint8_t* row_packed = packed + r * (padded / 2);
    const uint8_t* row_scales = scales + r * blocks_per_row;
    for (int64_t c = 0; c < cols; ++c) {
      const uint8_t byte = row_packed[c / 2];
      const uint8_t stored = (c & 1) ? static_cast<uint8_t>(byte >> 4) : (byte & 0x0F);
      const uint8_t expected = EncodeElement(row[c], *table, row_scales[c / kBlockSize]);
      const bool both_zero = (stored & 7) == 0 && (expected & 7) == 0;
      if (stored != expected && !both_zero) {
        if (result.count == 0) result.first = r * cols + c;
        ++result.count;
      }
    }
  }
  return result;
}

}  // namespace nvfp4
