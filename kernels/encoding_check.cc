#include "kernels/encoding_check.h"

#include <algorithm>
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
namespace {

constexpr int64_t kRowsPerChunk = 16;

void CheckRows(const TensorView& input, const uint8_t* packed, const uint8_t* scales,
               const ScaleTable& table, int64_t r0, int64_t r1, StoredTensorCheck* out) {
  const int64_t cols = input.cols, padded = PaddedCols(cols);
  const size_t element_bytes = DTypeSize(input.dtype);
  std::vector<float> row(static_cast<size_t>(cols));
  for (int64_t r = r0; r < r1; ++r) {
    cpu::ConvertToF32Scalar(
        input.dtype,
        static_cast<const uint8_t*>(input.data) + static_cast<size_t>(r * cols) * element_bytes,
        cols, row.data());
    const uint8_t* row_packed = packed + r * (padded / 2);
    const uint8_t* row_scales = scales + r * (padded / kBlockSize);
    for (int64_t c = 0; c < cols; ++c) {
      const uint8_t byte = row_packed[c / 2];
      const uint8_t stored = (c & 1) ? static_cast<uint8_t>(byte >> 4) : (byte & 0x0F);
      const int code = row_scales[c / kBlockSize];
      const uint8_t expected = EncodeElement(row[c], table, code);
      if (stored != expected && !((stored & 7) == 0 && (expected & 7) == 0)) {
        if (out->mismatches == 0) out->first_mismatch = r * cols + c;
        ++out->mismatches;
      }
      const double e =
          static_cast<double>(row[c]) - DequantizeNibble(stored, table.effective_scale[code]);
      out->squared_error += e * e;
      out->squared_signal += static_cast<double>(row[c]) * row[c];
    }
  }
}

}  // namespace

absl::StatusOr<StoredTensorCheck> CheckStoredTensor(const TensorView& input, const uint8_t* packed,
                                                    const uint8_t* scales, float g,
                                                    cpu::ThreadPool* pool) {
  if (!std::isfinite(g) || !(g >= kMinGlobalScale)) {
    return absl::InvalidArgumentError(
        absl::StrCat("global scale ", g, " is not finite and >= 2^-117"));
  }
  const int64_t blocks = input.rows * (PaddedCols(input.cols) / kBlockSize);
  for (int64_t i = 0; i < blocks; ++i) {
    if (scales[i] >= kNumScaleCodes) {
      return absl::InvalidArgumentError(absl::StrCat("block scale byte ", i, " (0x",
                                                     absl::Hex(scales[i]), ") is NaN or negative"));
    }
  }
  auto table = std::make_unique<ScaleTable>();
  BuildScaleTable(g, table.get());
  const int64_t chunks = (input.rows + kRowsPerChunk - 1) / kRowsPerChunk;
  std::vector<StoredTensorCheck> parts(static_cast<size_t>(chunks));
  const auto run = [&](int64_t chunk) {
    CheckRows(input, packed, scales, *table, chunk * kRowsPerChunk,
              std::min(input.rows, (chunk + 1) * kRowsPerChunk), &parts[chunk]);
  };
  if (pool != nullptr) {
    pool->ParallelFor(chunks, run);
  } else {
    for (int64_t chunk = 0; chunk < chunks; ++chunk) run(chunk);
  }
  StoredTensorCheck total;
  for (const StoredTensorCheck& part : parts) {
    if (total.mismatches == 0 && part.mismatches > 0) total.first_mismatch = part.first_mismatch;
    total.mismatches += part.mismatches;
    total.squared_error += part.squared_error;
    total.squared_signal += part.squared_signal;
  }
  return total;
}

}  // namespace nvfp4
