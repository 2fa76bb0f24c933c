// 16-bit float conversions (IEEE binary16 and bfloat16) to and from fp32.
// Widening is exact; narrowing (for fake-quant bf16 output) rounds to nearest, ties to even.
// Pure, thread-safe.
#ifndef NVFP4_KERNELS_NUMERICS_HALF_H_
#define NVFP4_KERNELS_NUMERICS_HALF_H_

#include <cstdint>

#include "kernels/numerics/hd.h"

namespace nvfp4 {

NVFP4_HD float Bf16BitsToFloat(uint16_t bits) {
  return BitsToFloat(static_cast<uint32_t>(bits) << 16);
}

// RNE; NaN stays NaN (quiet).
NVFP4_HD uint16_t FloatToBf16Bits(float f) {
  const uint32_t u = FloatToBits(f);
  if ((u & 0x7FFFFFFFu) > 0x7F800000u) return static_cast<uint16_t>((u >> 16) | 0x0040u);
  return static_cast<uint16_t>((u + 0x7FFFu + ((u >> 16) & 1u)) >> 16);
}

NVFP4_HD float HalfBitsToFloat(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const uint32_t exponent = (h >> 10) & 0x1Fu;
  const uint32_t mantissa = h & 0x3FFu;
  if (exponent == 0x1Fu) return BitsToFloat(sign | 0x7F800000u | (mantissa << 13));
  if (exponent != 0) return BitsToFloat(sign | ((exponent + 112u) << 23) | (mantissa << 13));
  // Zero or subnormal: mantissa * 2^-24, exact in fp32.
  const float magnitude = static_cast<float>(mantissa) * 5.9604644775390625e-08f;
  return sign ? -magnitude : magnitude;
}

}  // namespace nvfp4

#endif  // NVFP4_KERNELS_NUMERICS_HALF_H_
