#include "kernels/dequantize.h"

#include "kernels/numerics/block_math.h"
#include "kernels/numerics/e4m3.h"
#include "kernels/numerics/half.h"

namespace nvfp4 {
namespace {

template <typename Store>
void DequantizeRows(const uint8_t* packed, const uint8_t* scales, float global_scale, int64_t rows,
                    int64_t cols, Store store) {
  const int64_t padded = PaddedCols(cols);
  for (int64_t r = 0; r < rows; ++r) {
    const uint8_t* row_packed = packed + r * (padded / 2);
    const uint8_t* row_scales = scales + r * (padded / kBlockSize);
    for (int64_t c = 0; c < cols; ++c) {
      const float s = DecodeE4M3(row_scales[c / kBlockSize]) * global_scale;
      const uint8_t byte = row_packed[c / 2];
      const uint8_t nibble = (c & 1) ? static_cast<uint8_t>(byte >> 4) : (byte & 0x0F);
      store(r * cols + c, DequantizeNibble(nibble, s));
    }
  }
}

}  // namespace

void DequantizeToF32(const uint8_t* packed, const uint8_t* scales, float global_scale, int64_t rows,
                     int64_t cols, float* out) {
  DequantizeRows(packed, scales, global_scale, rows, cols,
                 [out](int64_t i, float v) { out[i] = v; });
}

void DequantizeToBf16(const uint8_t* packed, const uint8_t* scales, float global_scale,
                      int64_t rows, int64_t cols, uint16_t* out) {
  DequantizeRows(packed, scales, global_scale, rows, cols,
                 [out](int64_t i, float v) { out[i] = FloatToBf16Bits(v); });
}

std::vector<float> DequantizeToF32(const QuantizedTensor& tensor) {
  std::vector<float> out(static_cast<size_t>(tensor.rows * tensor.cols));
  DequantizeToF32(tensor.packed.data(), tensor.scales.data(), tensor.global_scale, tensor.rows,
                  tensor.cols, out.data());
  return out;
}

}  // namespace nvfp4
