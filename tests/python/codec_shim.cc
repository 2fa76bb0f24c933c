// C ABI over the shared numerics for the Python interop tests (loaded with ctypes). Test-only.
#include <cstdint>

#include "kernels/dequantize.h"
#include "kernels/numerics/e2m1.h"
#include "kernels/numerics/e4m3.h"

extern "C" {

void nvfp4_encode_e4m3_rne(const float* in, uint8_t* out, int64_t n) {
  for (int64_t i = 0; i < n; ++i) out[i] = nvfp4::EncodeE4M3Rne(in[i]);
}

void nvfp4_encode_scale_e4m3(const float* in, uint8_t* out, int64_t n) {
  for (int64_t i = 0; i < n; ++i) out[i] = nvfp4::EncodeScaleE4M3(in[i]);
}

void nvfp4_decode_e4m3(const uint8_t* in, float* out, int64_t n) {
  for (int64_t i = 0; i < n; ++i) out[i] = nvfp4::DecodeE4M3(in[i]);
}

void nvfp4_encode_e2m1(const float* in, uint8_t* out, int64_t n) {
  for (int64_t i = 0; i < n; ++i) out[i] = nvfp4::EncodeE2M1(in[i]);
}

void nvfp4_decode_e2m1(const uint8_t* in, float* out, int64_t n) {
  for (int64_t i = 0; i < n; ++i) out[i] = nvfp4::DecodeE2M1(in[i]);
}

// Our dequantisation (kernels/dequantize.h): packed [rows, padded/2], scales [rows, padded/16]
// and the fp32 global scale g (ModelOpt's weight_scale_2) to f32 [rows, cols].
void nvfp4_dequantize_f32(const uint8_t* packed, const uint8_t* scales, float global_scale,
                          int64_t rows, int64_t cols, float* out) {
  nvfp4::DequantizeToF32(packed, scales, global_scale, rows, cols, out);
}

}  // extern "C"
