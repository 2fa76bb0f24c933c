// CheckStoredTensor: whether stored NVFP4 values are the rounding of their source under their
// stored block scales and global scale, the part of a quantization a reader can check without
// knowing how the scales were chosen (nvfp4q verify), and the error of the stored values.
// Element x of a block with scale code c must be E2M1Nibble(RNE_E2M1(fl32(|x| / S[c])), x),
// S[c] = fl32(e4m3(c) * g): the encoder every backend runs (kernels/numerics/block_math.h,
// EncodeElement). A zero magnitude may carry either sign (-0 and +0 decode alike).
// Pure; runs on `pool` when given (rows in fixed chunks, sums merged in chunk order, so the
// result does not depend on the thread count). Thread-safe apart from the pool's own rules.
#ifndef NVFP4_KERNELS_ENCODING_CHECK_H_
#define NVFP4_KERNELS_ENCODING_CHECK_H_

#include <cstdint>

#include "absl/status/statusor.h"
#include "kernels/cpu/thread_pool.h"
#include "kernels/tensor.h"

namespace nvfp4 {

struct StoredTensorCheck {
  int64_t mismatches = 0;       // elements whose stored nibble is not their rounding
  int64_t first_mismatch = -1;  // row-major index into [rows, cols] of the first one, or -1
  double squared_error = 0;     // sum over real elements of (x - dequantized)^2
  double squared_signal = 0;    // sum of x^2
};

// input: the source [rows, cols] (host memory); packed: rows x padded_cols / 2 bytes; scales:
// rows x padded_cols / 16 E4M3 codes, as QuantizedBuffers. InvalidArgument for a g that is
// not finite or below kMinGlobalScale, or a scale byte that is NaN (0x7F) or negative.
absl::StatusOr<StoredTensorCheck> CheckStoredTensor(const TensorView& input, const uint8_t* packed,
                                                    const uint8_t* scales, float g,
                                                    cpu::ThreadPool* pool = nullptr);

}  // namespace nvfp4

#endif  // NVFP4_KERNELS_ENCODING_CHECK_H_
