// NVFP4 -> f32 / bf16 dequantisation: x^ = e2m1(nibble) * fl32(e4m3(scale) * g), the same
// arithmetic the quantiser uses for its fake-quant output and metrics. Used for verification
// and fake-quant outputs. Pure; the caller owns all buffers.
#ifndef NVFP4_KERNELS_DEQUANTIZE_H_
#define NVFP4_KERNELS_DEQUANTIZE_H_

#include <cstdint>
#include <vector>

#include "absl/status/statusor.h"
#include "kernels/quantized_tensor.h"

namespace nvfp4 {

// packed: [rows, padded_cols/2]; scales: [rows, padded_cols/16]; out: [rows, cols].
void DequantizeToF32(const uint8_t* packed, const uint8_t* scales, float global_scale, int64_t rows,
                     int64_t cols, float* out);
// Same, rounded to bf16 (RNE), as raw bf16 bits.
void DequantizeToBf16(const uint8_t* packed, const uint8_t* scales, float global_scale,
                      int64_t rows, int64_t cols, uint16_t* out);

std::vector<float> DequantizeToF32(const QuantizedTensor& tensor);

}  // namespace nvfp4

#endif  // NVFP4_KERNELS_DEQUANTIZE_H_
