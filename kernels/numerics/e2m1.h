// FP4 E2M1 codec. A nibble is `s e e m`: bit 3 is the sign, bits 2..0 index the magnitude
// grid {0, 0.5, 1, 1.5, 2, 3, 4, 6}. Encoding rounds to nearest, ties to even
// (0.25->0, 0.75->1, 1.25->1, 1.75->2, 2.5->2, 3.5->4, 5->4) and saturates at 6; the sign bit
// is (y < 0), so -0.0 encodes as 0x0 and small negatives as 0x8 (ModelOpt's convention).
// Pure, thread-safe.
#ifndef NVFP4_KERNELS_NUMERICS_E2M1_H_
#define NVFP4_KERNELS_NUMERICS_E2M1_H_

#include <cstdint>

#include "kernels/numerics/hd.h"

namespace nvfp4 {

inline constexpr float kE2M1Max = 6.0f;
inline constexpr int kE2M1Levels = 8;

// Magnitude of grid index i: {0, 0.5, 1, 1.5, 2, 3, 4, 6}. Arithmetic rather than a table
// (nvcc places a run-time-indexed local table in local memory): indices 2..7 are the normal
// E2M1 values 2^(e-1) (1 + m/2) of their bits `e e m`, i.e. the float with exponent field
// 126 + e and mantissa m << 22, which is (i << 22) + (126 << 23).
NVFP4_HD float E2M1Magnitude(uint32_t index) {
  index &= 7u;
  if (index < 2u) return index == 0u ? 0.0f : 0.5f;
  return BitsToFloat((index << 22) + 0x3F000000u);
}

// E2M1Magnitude(index) in two instructions: the float whose bits are index << 22 has the index's
// two exponent bits as its low exponent bits and its mantissa bit as its top mantissa bit, so it
// is the E2M1 value times 2^-126 exactly (index 1 is a subnormal in both formats, 0.5 * 2^-126);
// the multiply by 2^126 is exact. Needs IEEE subnormals (no flush to zero); on x86 without DAZ a
// subnormal operand is slow, so the CPU engines keep E2M1Magnitude.
NVFP4_HD float E2M1MagnitudeFromBits(uint32_t index) {
  return BitsToFloat((index & 7u) << 22) * 8.5070591730234616e37f;  // 2^126
}

// Rounding boundaries between grid index k and k+1, and whether the boundary value itself
// rounds up (ties to even: the even neighbour wins).
inline constexpr float kE2M1Boundary[7] = {0.25f, 0.75f, 1.25f, 1.75f, 2.5f, 3.5f, 5.0f};
NVFP4_HD bool E2M1BoundaryRoundsUp(int k) { return (k & 1) != 0; }

// Grid index (0..7) for a magnitude a >= 0: the number of boundaries that a passes.
NVFP4_HD uint32_t E2M1MagnitudeIndex(float a) {
  return static_cast<uint32_t>(a > 0.25f) + static_cast<uint32_t>(a >= 0.75f) +
         static_cast<uint32_t>(a > 1.25f) + static_cast<uint32_t>(a >= 1.75f) +
         static_cast<uint32_t>(a > 2.5f) + static_cast<uint32_t>(a >= 3.5f) +
         static_cast<uint32_t>(a > 5.0f);
}

NVFP4_HD uint8_t EncodeE2M1(float y) {
  const float a = AbsF(y);
  return static_cast<uint8_t>(E2M1MagnitudeIndex(a) | (y < 0.0f ? 8u : 0u));
}

NVFP4_HD float DecodeE2M1(uint8_t nibble) {
  const float magnitude = E2M1Magnitude(nibble & 7u);
  return (nibble & 8u) ? -magnitude : magnitude;
}

}  // namespace nvfp4

#endif  // NVFP4_KERNELS_NUMERICS_E2M1_H_
