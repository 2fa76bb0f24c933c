// The result of quantising one 2-D tensor to NVFP4, in the on-disk layout of a ModelOpt export
// (nvfp4-formats.md section 7): packed values [rows, padded_cols / 2] (element 2j in the low
// nibble of byte j), E4M3 block scales [rows, padded_cols / 16], row-major, unswizzled, and the
// fp32 global scale g (ModelOpt's weight_scale_2). padded_cols = cols rounded up to 16; the
// padding is zeros. Owns its buffers.
#ifndef NVFP4_KERNELS_QUANTIZED_TENSOR_H_
#define NVFP4_KERNELS_QUANTIZED_TENSOR_H_

#include <cstdint>
#include <vector>

#include "common/large_buffer.h"
#include "kernels/metrics.h"

namespace nvfp4 {

constexpr int64_t PaddedCols(int64_t cols) { return (cols + 15) / 16 * 16; }
// Sizes of the packed values and of the block scales of a [rows, cols] tensor.
constexpr int64_t PackedBytes(int64_t rows, int64_t cols) { return rows * PaddedCols(cols) / 2; }
constexpr int64_t ScaleBytes(int64_t rows, int64_t cols) { return rows * PaddedCols(cols) / 16; }

struct QuantizedTensor {
  int64_t rows = 0;
  int64_t cols = 0;
  int64_t padded_cols = 0;
  float amax = 0;          // amax the global scale was derived from (the group's when fused)
  float global_scale = 1;  // g
  std::vector<uint8_t> packed;
  std::vector<uint8_t> scales;
  std::vector<float> dequantized;  // [rows, cols] when requested, else empty
  TensorMetrics metrics;
};

// Caller-owned memory an engine writes one [rows, cols] tensor's bytes into
// (QuantizerBackend::QuantizeInto): packed PackedBytes(rows, cols), scales ScaleBytes(rows,
// cols), dequantized rows * cols floats when options.want_dequantized (else unused). Not owned.
struct QuantizedBuffers {
  uint8_t* packed = nullptr;
  uint8_t* scales = nullptr;
  float* dequantized = nullptr;
};

// What a quantisation produced besides its bytes (QuantizedTensor's other fields).
struct QuantizedSummary {
  float amax = 0;
  float global_scale = 1;
  TensorMetrics metrics;
};

// Sizes out.packed and out.scales (and out.dequantized when wanted) for out.rows x out.cols,
// zero-filled, big ones on huge pages (common/large_buffer.h). Throws std::bad_alloc.
inline void ResizeOutputs(QuantizedTensor& out, bool want_dequantized) {
  ResizeOnHugePages(out.packed, static_cast<size_t>(PackedBytes(out.rows, out.cols)));
  ResizeOnHugePages(out.scales, static_cast<size_t>(ScaleBytes(out.rows, out.cols)));
  if (want_dequantized)
    ResizeOnHugePages(out.dequantized, static_cast<size_t>(out.rows * out.cols));
}

// Where an engine writes into `out` (sized by ResizeOutputs).
inline QuantizedBuffers BuffersOf(QuantizedTensor& out) {
  return {out.packed.data(), out.scales.data(),
          out.dequantized.empty() ? nullptr : out.dequantized.data()};
}

}  // namespace nvfp4

#endif  // NVFP4_KERNELS_QUANTIZED_TENSOR_H_
