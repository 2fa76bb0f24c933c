// Block-level NVFP4 arithmetic shared by every backend: the defined loss of a candidate scale,
// the AbsMax scale, the proven ScaleSweep window, block encoding and block error sums.
// docs/numerics.md is the prose definition; this header is the executable one. Functions are
// pure and thread-safe; blocks are always kBlockSize (16) floats (rows are zero-padded).
//
// The loss of scale code c for a block x with weights w (w = 1 for MSE) is, in fp32:
//   p     = 2^(127 - clamp(biased_exponent(max|x|), 1, 253))     block normaliser (exact)
//   q_i   = E2M1 grid value of |x_i| under S = S[c]                (threshold table)
//   d_i   = fmaf(-q_i, S * p, |x_i| * p)                          one rounding
//   t_i   = d_i * d_i          (MSE)      w_i * (d_i * d_i)   (WMSE)
//   loss  = TreeSum16(t)       pairs (i, i+8), then (i, i+4), (i, i+2), (i, i+1)
// p is a power of two, so the loss is the plain loss times p^2 up to over/underflow it avoids;
// every backend evaluates exactly these operations (no FMA contraction elsewhere).
#ifndef NVFP4_KERNELS_NUMERICS_BLOCK_MATH_H_
#define NVFP4_KERNELS_NUMERICS_BLOCK_MATH_H_

#include <cmath>
#include <cstdint>

#include "kernels/numerics/e2m1.h"
#include "kernels/numerics/e4m3.h"
#include "kernels/numerics/hd.h"
#include "kernels/numerics/scale_table.h"

namespace nvfp4 {

inline constexpr int kBlockSize = 16;

template <typename T>
NVFP4_HD T TreeSum16(const T* t) {
  T s8[8], s4[4];
  for (int i = 0; i < 8; ++i) s8[i] = t[i] + t[i + 8];
  for (int i = 0; i < 4; ++i) s4[i] = s8[i] + s8[i + 4];
  const T s2a = s4[0] + s4[2];
  const T s2b = s4[1] + s4[3];
  return s2a + s2b;
}

// Power of two p with max|x| * p in [1, 4) for normal maxima (see header comment).
NVFP4_HD float BlockNormalizer(float max_abs) {
  uint32_t e = (FloatToBits(max_abs) >> 23) & 0xFFu;
  e = e < 1u ? 1u : (e > 253u ? 253u : e);
  return BitsToFloat((254u - e) << 23);
}

// Inverse of BlockNormalizer (also an exact power of two).
NVFP4_HD float BlockDenormalizer(float max_abs) {
  uint32_t e = (FloatToBits(max_abs) >> 23) & 0xFFu;
  e = e < 1u ? 1u : (e > 253u ? 253u : e);
  return BitsToFloat(e << 23);
}

// ModelOpt's AbsMax block-scale code: RNE_E4M3(clamp(m / fl(k * g), 2^-9, 448)), where a zero
// quotient becomes 1.0 first. With k_g = fl(6 g) this is AbsMax, with fl(4 g) the "4" candidate
// of four-over-six.
NVFP4_HD uint8_t AbsMaxScaleCode(float max_abs, float k_g) {
  const float s = max_abs / k_g;
  return EncodeScaleE4M3(s == 0.0f ? 1.0f : s);
}

// Smallest code in [1, 127] whose value is >= v (127: none).
NVFP4_HD int E4M3CodeCeil(float v) {
  if (!(v > kE4M3MinSubnormal)) return 1;
  if (!(v <= kE4M3Max)) return 127;
  int c = EncodeE4M3Rne(v);
  if (DecodeE4M3(static_cast<uint8_t>(c)) < v) ++c;
  return c;
}

// Largest code in [0, 126] whose value is <= v (0: none).
NVFP4_HD int E4M3CodeFloor(float v) {
  if (!(v >= kE4M3MinSubnormal)) return 0;
  if (!(v < kE4M3Max)) return kE4M3MaxCode;
  int c = EncodeE4M3Rne(v);
  if (DecodeE4M3(static_cast<uint8_t>(c)) > v) --c;
  return c;
}

// Candidate set of the bounded sweep: codes lo..hi, then the odd codes in (hi, tail_end].
struct SweepWindow {
  int lo;
  int hi;
  int tail_end;
};

// Relative slack on the bounds: covers the fp32 rounding of m / 3.5, of the WMSE bound, of the
// division by g and of fl(s * g), so the window always contains the exact interval [L, U].
inline constexpr float kBoundSlack = 3.814697265625e-06f;  // 2^-18

// Window for a block with max m and lower bound `lower` (in x units); inv_g = fl(1 / g).
//  - U = m / 3.5 for any weights; codes above U are dominated by their half (caveat i: odd
//    codes below 16 have no half and stay, hence the tail).
//  - codes below `lower` are dominated by their double, but only up to 224 (caveat ii: the
//    double must exist), so lo never exceeds 0x77.
NVFP4_HD SweepWindow ComputeSweepWindow(float max_abs, float lower, float inv_g) {
  const float upper_s = ((max_abs * inv_g) * (2.0f / 7.0f)) * (1.0f + kBoundSlack);
  const float lower_s = (lower * inv_g) * (1.0f - kBoundSlack);
  int lo = E4M3CodeCeil(lower_s);
  if (lo > 0x77) lo = 0x77;
  const int hi = E4M3CodeFloor(upper_s);
  SweepWindow window;
  window.lo = lo;
  window.hi = hi;
  window.tail_end = hi < 15 ? 15 : hi;
  return window;
}

// MSE lower bound for a 16-element block: L = 16 m / (111 + 16) = 16 m / 127.
NVFP4_HD float MseLowerBound(float max_abs) { return max_abs * (16.0f / 127.0f); }

// WMSE lower bound L_w = max_j 16 w_j |x_j| / (112 w_j + W_{-j}) on normalised magnitudes axp
// (|x| * p) and normalised weights w with total W > 0; the result is in x units (times
// inv_p = 1/p).
NVFP4_HD float WmseLowerBound(const float* axp, const float* w, float total_weight, float inv_p) {
  float bound = 0.0f;
  for (int j = 0; j < kBlockSize; ++j) {
    const float numerator = (w[j] * axp[j]) * 16.0f;
    const float denominator = (total_weight - w[j]) + 112.0f * w[j];
    bound = MaxF(bound, numerator / denominator);
  }
  return bound * inv_p;
}

// Copies threshold row c into row[8]: the rounding selects among the row's values per element,
// which on the GPU must be registers, not data-dependent shared-memory addresses.
NVFP4_HD void LoadThresholdRow(const ScaleTable& table, int c, float* row) {
  for (int k = 0; k < 8; ++k) row[k] = table.threshold[c][k];
}

// The defined loss (header comment) of scale code c. w == nullptr means MSE.
NVFP4_HD float CandidateLoss(const float* ax, const float* axp, const float* w,
                             const ScaleTable& table, int c, float p) {
  const float scale_p = table.effective_scale[c] * p;
  float row[8];
  LoadThresholdRow(table, c, row);
  float terms[kBlockSize];
  for (int i = 0; i < kBlockSize; ++i) {
    const float q = E2M1RoundByThreshold(ax[i], row).magnitude;
    const float d = fmaf(-q, scale_p, axp[i]);
    const float e = d * d;
    terms[i] = w ? w[i] * e : e;
  }
  return TreeSum16(terms);
}

// E2M1 nibble of an element x whose magnitude has grid index `index`: the sign bit is x < 0, so
// -0.0 and NaN encode as positive.
NVFP4_HD uint8_t E2M1Nibble(uint32_t index, float x) {
  return static_cast<uint8_t>(index | (x < 0.0f ? 8u : 0u));
}

// E2M1 nibble of x under scale code c.
NVFP4_HD uint8_t EncodeElement(float x, const ScaleTable& table, int c) {
  const float a = AbsF(x);
  return E2M1Nibble(E2M1IndexByThreshold(a, table.threshold[c]), x);
}

// Packs a block's 16 nibbles into 8 bytes: element 2j in the low nibble of byte j.
NVFP4_HD void PackNibbles(const uint8_t* nibbles, uint8_t* packed) {
  for (int j = 0; j < kBlockSize / 2; ++j) {
    packed[j] = static_cast<uint8_t>(nibbles[2 * j] | (nibbles[2 * j + 1] << 4));
  }
}

// The packed E2M1 bytes of block x under scale code c.
NVFP4_HD void EncodeBlock(const float* x, const ScaleTable& table, int c, uint8_t* packed) {
  uint8_t nibbles[kBlockSize];
  for (int i = 0; i < kBlockSize; ++i) nibbles[i] = EncodeElement(x[i], table, c);
  PackNibbles(nibbles, packed);
}

// Dequantised value of a nibble under effective scale s: fl32(e2m1 * s).
NVFP4_HD float DequantizeNibble(uint8_t nibble, float effective_scale) {
  return DecodeE2M1(nibble) * effective_scale;
}

// Metric sums, accumulated per element position: lane i of each sum collects element i of
// every block of a row chunk, in block order. Blocks are added into fp32 partial lanes (one
// fmaf per element, exact for the error itself: d = |x| - |x^| is exact in fp32), which are
// folded into fp64 lanes every kMetricFoldBlocks blocks; FlushMetricLanes combines the 16 fp64
// lanes with TreeSum16. Every backend does exactly this, so the metrics are bit-identical
// across ISAs and (chunks being fixed by shape) thread counts, no block pays for a horizontal
// reduction, and the relative rounding error stays around 1e-6 or better.
inline constexpr int kMetricFoldBlocks = 64;
inline constexpr int kMetricSums = 6;
enum MetricSum : int {
  kSquaredError = 0,                // sum e^2
  kWeightedSquaredError = 1,        // sum w e^2
  kWeightSum = 2,                   // sum w
  kSquaredSignal = 3,               // sum x^2
  kAbsMaxSquaredError = 4,          // sum e^2 of the AbsMax baseline
  kAbsMaxWeightedSquaredError = 5,  // sum w e^2 of the AbsMax baseline
};

struct MetricLanes {
  float partial[kMetricSums][kBlockSize];
  double total[kMetricSums][kBlockSize];
  float max_abs_error[kBlockSize];
};

NVFP4_HD void ClearMetricLanes(MetricLanes* lanes) {
  for (int k = 0; k < kMetricSums; ++k) {
    for (int i = 0; i < kBlockSize; ++i) {
      lanes->partial[k][i] = 0.0f;
      lanes->total[k][i] = 0.0;
    }
  }
  for (int i = 0; i < kBlockSize; ++i) lanes->max_abs_error[i] = 0.0f;
}

// total += partial; partial = 0.
NVFP4_HD void FoldMetricLanes(MetricLanes* lanes) {
  for (int k = 0; k < kMetricSums; ++k) {
    for (int i = 0; i < kBlockSize; ++i) {
      lanes->total[k][i] += static_cast<double>(lanes->partial[k][i]);
      lanes->partial[k][i] = 0.0f;
    }
  }
}

// Adds one block quantised with scale code c; absmax_code is the AbsMax baseline's code, or -1
// when c is that code by construction; weights (raw importance) may be nullptr.
NVFP4_HD void AccumulateBlockMetrics(const float* x, const float* weights, const ScaleTable& table,
                                     int c, int absmax_code, MetricLanes* lanes) {
  if (absmax_code < 0) absmax_code = c;
  const float s = table.effective_scale[c];
  const float s_absmax = table.effective_scale[absmax_code];
  for (int i = 0; i < kBlockSize; ++i) {
    const float a = AbsF(x[i]);
    const float d = a - E2M1Magnitude(E2M1IndexByThreshold(a, table.threshold[c])) * s;
    lanes->partial[kSquaredError][i] = fmaf(d, d, lanes->partial[kSquaredError][i]);
    if (weights) {
      lanes->partial[kWeightedSquaredError][i] =
          fmaf(weights[i], d * d, lanes->partial[kWeightedSquaredError][i]);
      lanes->partial[kWeightSum][i] = lanes->partial[kWeightSum][i] + weights[i];
    }
    lanes->partial[kSquaredSignal][i] = fmaf(x[i], x[i], lanes->partial[kSquaredSignal][i]);
    const float d_absmax =
        c == absmax_code
            ? d
            : a - E2M1Magnitude(E2M1IndexByThreshold(a, table.threshold[absmax_code])) * s_absmax;
    lanes->partial[kAbsMaxSquaredError][i] =
        fmaf(d_absmax, d_absmax, lanes->partial[kAbsMaxSquaredError][i]);
    if (weights) {
      lanes->partial[kAbsMaxWeightedSquaredError][i] =
          fmaf(weights[i], d_absmax * d_absmax, lanes->partial[kAbsMaxWeightedSquaredError][i]);
    }
    lanes->max_abs_error[i] = MaxF(lanes->max_abs_error[i], AbsF(d));
  }
}

struct MetricTotals {
  double sum[kMetricSums];
  float max_abs_error;
};

// Folds the partials, then reduces the lanes.
NVFP4_HD MetricTotals FlushMetricLanes(MetricLanes* lanes) {
  FoldMetricLanes(lanes);
  MetricTotals totals;
  for (int k = 0; k < kMetricSums; ++k) totals.sum[k] = TreeSum16(lanes->total[k]);
  totals.max_abs_error = 0.0f;
  for (int i = 0; i < kBlockSize; ++i) {
    totals.max_abs_error = MaxF(totals.max_abs_error, lanes->max_abs_error[i]);
  }
  return totals;
}

}  // namespace nvfp4

#endif  // NVFP4_KERNELS_NUMERICS_BLOCK_MATH_H_
