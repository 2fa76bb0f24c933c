// FP8 E4M3FN codec (bias 7, no infinities, 0x7F/0xFF = NaN, max finite 448 = 0x7E).
//
// EncodeE4M3Rne: round-to-nearest-even for finite |x| <= 448 (callers clamp first; larger
// magnitudes are not saturated here). EncodeScaleE4M3: the block-scale rule of every NVFP4
// producer: clamp to [2^-9, 448], then RNE, so a scale byte is never 0, NaN or negative.
// All functions are pure and thread-safe.
#ifndef NVFP4_KERNELS_NUMERICS_E4M3_H_
#define NVFP4_KERNELS_NUMERICS_E4M3_H_

#include <cmath>
#include <cstdint>

#include "kernels/numerics/hd.h"

namespace nvfp4 {

inline constexpr float kE4M3Max = 448.0f;
inline constexpr float kE4M3MinSubnormal = 0.001953125f;  // 2^-9
inline constexpr float kE4M3MinNormal = 0.015625f;        // 2^-6
inline constexpr uint8_t kE4M3One = 0x38;                 // 1.0
inline constexpr int kE4M3MaxCode = 0x7E;  // 448; codes 1..126 are the positive finite scales

NVFP4_HD uint8_t EncodeE4M3Rne(float x) {
  const uint32_t bits = FloatToBits(x);
  const uint8_t sign = static_cast<uint8_t>((bits >> 24) & 0x80u);
  const uint32_t abs_bits = bits & 0x7FFFFFFFu;
  const float ax = BitsToFloat(abs_bits);
  if (ax >= kE4M3MinNormal) {
    // Rebias the exponent (127 -> 7) and round the 23-bit mantissa to 3 bits, ties to even:
    // adding 0x7FFFF plus the lowest kept bit carries exactly when the dropped part is above
    // half, or equal to half with an odd kept part.
    const uint32_t kept_lsb = (abs_bits >> 20) & 1u;
    const uint32_t rounded = abs_bits - (120u << 23) + 0x7FFFFu + kept_lsb;
    return static_cast<uint8_t>(sign | (rounded >> 20));
  }
  // Subnormal range: multiples of 2^-9. ax * 512 is exact; rintf rounds half to even.
  // A result of 8 is the smallest normal, whose code is also 8.
  return static_cast<uint8_t>(sign | static_cast<uint8_t>(rintf(ax * 512.0f)));
}

NVFP4_HD uint8_t EncodeScaleE4M3(float s) {
  return EncodeE4M3Rne(MinF(MaxF(s, kE4M3MinSubnormal), kE4M3Max));
}

NVFP4_HD float DecodeE4M3(uint8_t code) {
  const uint32_t exponent = (code >> 3) & 0xFu;
  const uint32_t mantissa = code & 0x7u;
  float magnitude;
  if (exponent == 0xFu && mantissa == 0x7u) {
    magnitude = BitsToFloat(0x7FC00000u);  // NaN
  } else if (exponent == 0) {
    magnitude = static_cast<float>(mantissa) * kE4M3MinSubnormal;
  } else {
    magnitude = BitsToFloat(((exponent + 120u) << 23) | (mantissa << 20));
  }
  return (code & 0x80u) ? -magnitude : magnitude;
}

}  // namespace nvfp4

#endif  // NVFP4_KERNELS_NUMERICS_E4M3_H_
