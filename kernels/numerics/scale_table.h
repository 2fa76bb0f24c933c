// ScaleTable: everything the block search needs about the 126 candidate scales of one tensor.
//
// For block-scale code c (1..126) it holds the effective scale S[c] = fl32(e4m3(c) * g) and the
// seven E2M1 rounding thresholds X[c][k]: the smallest float a >= 0 with
// E2M1MagnitudeIndex(fl32(a / S[c])) > k. Because correctly rounded division is monotone in a,
//   E2M1MagnitudeIndex(fl32(a / S[c])) == #{k : a >= X[c][k]}   for every float a >= 0,
// so comparing against the table reproduces the defining division x / S bit for bit, without
// dividing (scalesweep numerics, docs/numerics.md). The thresholds are found by calling the one
// E2M1 encoder, never re-derived. Column 7 is +inf padding for 8-wide loads.
// Built once per tensor (about 2k divisions); read-only afterwards, so shareable across threads.
#ifndef NVFP4_KERNELS_NUMERICS_SCALE_TABLE_H_
#define NVFP4_KERNELS_NUMERICS_SCALE_TABLE_H_

#include <cstdint>

#include "kernels/numerics/e2m1.h"
#include "kernels/numerics/e4m3.h"
#include "kernels/numerics/hd.h"

namespace nvfp4 {

inline constexpr int kNumScaleCodes = 127;  // index 0 unused (a zero scale is never chosen)

// Rows first: each threshold row is 32-byte aligned, so a row is two 16-byte loads.
struct alignas(64) ScaleTable {
  float threshold[kNumScaleCodes][8];
  float effective_scale[128];  // S[c] = fl32(DecodeE4M3(c) * g); entries 0 and 127 unused
  float global_scale;          // g
};

// Does magnitude a reach grid index k+1 when divided by s?
NVFP4_HD bool PassesE2M1Boundary(float a, float s, int k) {
  return E2M1MagnitudeIndex(a / s) > static_cast<uint32_t>(k);
}

// Smallest float a >= 0 with PassesE2M1Boundary(a, s, k); +inf when no finite a does. s must be
// a positive normal float.
NVFP4_HD float E2M1Threshold(float s, int k) {
  constexpr float kBoundary[7] = {0.25f, 0.75f, 1.25f, 1.75f, 2.5f, 3.5f, 5.0f};
  constexpr float kFloatMax = 3.4028234663852886e38f;
  const float infinity = BitsToFloat(0x7F800000u);
  if (!PassesE2M1Boundary(kFloatMax, s, k)) return infinity;
  float a = kBoundary[k] * s;  // within a few ulps of the answer
  if (!(a <= kFloatMax)) a = kFloatMax;
  while (!PassesE2M1Boundary(a, s, k)) a = NextUpNonNegative(a);
  while (a > 0.0f && PassesE2M1Boundary(NextDownPositive(a), s, k)) a = NextDownPositive(a);
  return a;
}

// Fills table for global scale g (g >= kMinGlobalScale, finite).
NVFP4_HD void BuildScaleTable(float g, ScaleTable* table) {
  const float infinity = BitsToFloat(0x7F800000u);
  table->global_scale = g;
  table->effective_scale[0] = 0.0f;
  table->effective_scale[127] = 0.0f;
  for (int k = 0; k < 8; ++k) table->threshold[0][k] = infinity;
  for (int c = 1; c < kNumScaleCodes; ++c) {
    const float s = DecodeE4M3(static_cast<uint8_t>(c)) * g;
    table->effective_scale[c] = s;
    for (int k = 0; k < 7; ++k) table->threshold[c][k] = E2M1Threshold(s, k);
    table->threshold[c][7] = infinity;
  }
}

// Grid rounding of a magnitude a under one threshold row t (scale code c: t = threshold[c]):
// index = #{k : a >= t[k]}, the E2M1 grid index of fl32(a / S[c]), and its magnitude. A row is
// non-decreasing (passing boundary k implies passing the lower ones), so the count is a three-
// step binary search: three comparisons instead of seven, which matters where it runs 16 times
// per candidate scale. NaN compares false everywhere and gets index 0, as in the plain count.
struct E2M1Rounding {
  uint32_t index;   // 0..7
  float magnitude;  // E2M1Magnitude(index)
};

NVFP4_HD E2M1Rounding E2M1RoundByThreshold(float a, const float* t) {
  const bool b2 = a >= t[3];
  const bool b1 = a >= (b2 ? t[5] : t[1]);
  const bool b0 = a >= (b2 ? (b1 ? t[6] : t[4]) : (b1 ? t[2] : t[0]));
  E2M1Rounding rounding;
  // The index is formed as index << 22, the bits E2M1MagnitudeFromBits starts from, so that a
  // caller that wants both (the GPU's encode) gets them from the same selects: nvcc drops the
  // shift pair.
  const uint32_t index_bits =
      (b2 ? (b1 ? 6u << 22 : 4u << 22) : (b1 ? 2u << 22 : 0u)) + (b0 ? 1u << 22 : 0u);
  rounding.index = index_bits >> 22;
  // E2M1Magnitude(index), selected from the three outcomes (no integer round trip): base is
  // the magnitude of index & 6, step the grid spacing there.
  const float base = b2 ? (b1 ? 4.0f : 2.0f) : (b1 ? 1.0f : 0.0f);
  const float step = b2 ? (b1 ? 2.0f : 1.0f) : 0.5f;
  rounding.magnitude = b0 ? base + step : base;
  return rounding;
}

NVFP4_HD uint32_t E2M1IndexByThreshold(float a, const float* thresholds) {
  return E2M1RoundByThreshold(a, thresholds).index;
}

}  // namespace nvfp4

#endif  // NVFP4_KERNELS_NUMERICS_SCALE_TABLE_H_
