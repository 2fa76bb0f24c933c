// AVX2 + FMA + F16C row kernel: one block = two ymm registers (elements 0..7 and 8..15), so
// the first level of the defined tree sum (i + i+8) is a plain vertical add. Same operations as
// the scalar reference, hence the same bytes.
#include <immintrin.h>

#include "kernels/cpu/row_driver.h"
#include "kernels/cpu/row_kernel.h"

namespace nvfp4::cpu {
namespace {

inline float TreeSum(__m256 lo, __m256 hi) {
  const __m256 s8 = _mm256_add_ps(lo, hi);
  const __m128 s4 = _mm_add_ps(_mm256_castps256_ps128(s8), _mm256_extractf128_ps(s8, 1));
  const __m128 s2 = _mm_add_ps(s4, _mm_movehl_ps(s4, s4));
  return _mm_cvtss_f32(_mm_add_ss(s2, _mm_movehdup_ps(s2)));
}

inline __m256 Abs(__m256 x) {
  return _mm256_and_ps(x, _mm256_castsi256_ps(_mm256_set1_epi32(0x7FFFFFFF)));
}

inline float MaxLane(__m256 v) {
  __m128 m = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  m = _mm_max_ps(m, _mm_movehl_ps(m, m));
  m = _mm_max_ss(m, _mm_movehdup_ps(m));
  return _mm_cvtss_f32(m);
}

inline __m256 GridMagnitude(__m256 ax, const float* thresholds) {
  __m256 q = _mm256_setzero_ps();
  constexpr float kStep[7] = {0.5f, 0.5f, 0.5f, 0.5f, 1.0f, 1.0f, 2.0f};
  for (int k = 0; k < 7; ++k) {
    const __m256 passed = _mm256_cmp_ps(ax, _mm256_broadcast_ss(thresholds + k), _CMP_GE_OQ);
    q = _mm256_add_ps(q, _mm256_and_ps(passed, _mm256_set1_ps(kStep[k])));
  }
  return q;
}

inline __m256i GridIndex(__m256 ax, const float* thresholds) {
  __m256i index = _mm256_setzero_si256();
  for (int k = 0; k < 7; ++k) {
    const __m256 passed = _mm256_cmp_ps(ax, _mm256_broadcast_ss(thresholds + k), _CMP_GE_OQ);
    index = _mm256_sub_epi32(index, _mm256_castps_si256(passed));  // mask lanes are -1
  }
  return index;
}

struct Avx2Block {
  __m256 ax_lo, ax_hi, axp_lo, axp_hi, w_lo, w_hi;
  bool weighted;
  uint8_t absmax;
  float m, p, inv_p, w_total;
  const ScaleTable* table;

  float max_abs() const { return m; }
  uint8_t absmax_code() const { return absmax; }
  float total_weight() const { return w_total; }
  float wmse_lower_bound() const {
    const __m256 sixteen = _mm256_set1_ps(16.0f), w112 = _mm256_set1_ps(112.0f);
    const __m256 total = _mm256_set1_ps(w_total);
    const __m256 r_lo =
        _mm256_div_ps(_mm256_mul_ps(_mm256_mul_ps(w_lo, axp_lo), sixteen),
                      _mm256_add_ps(_mm256_sub_ps(total, w_lo), _mm256_mul_ps(w112, w_lo)));
    const __m256 r_hi =
        _mm256_div_ps(_mm256_mul_ps(_mm256_mul_ps(w_hi, axp_hi), sixteen),
                      _mm256_add_ps(_mm256_sub_ps(total, w_hi), _mm256_mul_ps(w112, w_hi)));
    return MaxLane(_mm256_max_ps(r_lo, r_hi)) * inv_p;
  }
  float loss(int c) const {
    const float* thresholds = table->threshold[c];
    const __m256 scale_p = _mm256_set1_ps(table->effective_scale[c] * p);
    const __m256 d_lo = _mm256_fnmadd_ps(GridMagnitude(ax_lo, thresholds), scale_p, axp_lo);
    const __m256 d_hi = _mm256_fnmadd_ps(GridMagnitude(ax_hi, thresholds), scale_p, axp_hi);
    __m256 t_lo = _mm256_mul_ps(d_lo, d_lo), t_hi = _mm256_mul_ps(d_hi, d_hi);
    if (weighted) {
      t_lo = _mm256_mul_ps(w_lo, t_lo);
      t_hi = _mm256_mul_ps(w_hi, t_hi);
    }
    return TreeSum(t_lo, t_hi);
  }
};

// The fp32 partial lanes of MetricLanes in registers ([k][0]: lanes 0..7, [k][1]: 8..15); the
// fp64 totals stay in memory.
struct Avx2Lanes {
  __m256 partial[kMetricSums][2];
  __m256 max_abs_error[2];
  MetricLanes memory;
};

struct Avx2Ops {
  using Block = Avx2Block;
  using Lanes = Avx2Lanes;
  static void Summarize(const float* x, int blocks, float six_g, float* m, uint8_t* absmax) {
    for (int b = 0; b < blocks; ++b) {
      const float* xb = x + b * kBlockSize;
      m[b] = MaxLane(_mm256_max_ps(Abs(_mm256_loadu_ps(xb)), Abs(_mm256_loadu_ps(xb + 8))));
    }
    for (int b = 0; b < blocks; ++b) absmax[b] = AbsMaxScaleCode(m[b], six_g);
  }
  static void Prepare(const float* x, const float* w, const ScaleTable& table, float m,
                      uint8_t absmax, Block* block) {
    block->ax_lo = Abs(_mm256_loadu_ps(x));
    block->ax_hi = Abs(_mm256_loadu_ps(x + 8));
    block->m = m;
    block->absmax = absmax;
    block->p = BlockNormalizer(block->m);
    block->inv_p = BlockDenormalizer(block->m);
    const __m256 p = _mm256_set1_ps(block->p);
    block->axp_lo = _mm256_mul_ps(block->ax_lo, p);
    block->axp_hi = _mm256_mul_ps(block->ax_hi, p);
    block->weighted = w != nullptr;
    block->w_lo = block->w_hi = _mm256_setzero_ps();
    if (w) {
      const __m256 zero = _mm256_setzero_ps();
      const __m256 lo =
          _mm256_and_ps(_mm256_loadu_ps(w), _mm256_cmp_ps(block->ax_lo, zero, _CMP_GT_OQ));
      const __m256 hi =
          _mm256_and_ps(_mm256_loadu_ps(w + 8), _mm256_cmp_ps(block->ax_hi, zero, _CMP_GT_OQ));
      const __m256 w_scale = _mm256_set1_ps(BlockNormalizer(MaxLane(_mm256_max_ps(lo, hi))));
      block->w_lo = _mm256_mul_ps(lo, w_scale);
      block->w_hi = _mm256_mul_ps(hi, w_scale);
    }
    block->w_total = w ? TreeSum(block->w_lo, block->w_hi) : 0.0f;
    block->table = &table;
  }
  static __m256i Nibbles(__m256 v, __m256i index) {
    const __m256 negative = _mm256_cmp_ps(v, _mm256_setzero_ps(), _CMP_LT_OQ);
    return _mm256_or_si256(index,
                           _mm256_and_si256(_mm256_castps_si256(negative), _mm256_set1_epi32(8)));
  }
  // Folds 8 nibbles (one per int32 lane) into 4 bytes in lanes 0..3 (as int32).
  static __m128i PairBytes(__m256i nibble) {
    nibble = _mm256_sllv_epi32(nibble, _mm256_set_epi32(4, 0, 4, 0, 4, 0, 4, 0));
    nibble = _mm256_or_si256(nibble, _mm256_srli_epi64(nibble, 32));
    return _mm256_castsi256_si128(
        _mm256_permutevar8x32_epi32(nibble, _mm256_set_epi32(7, 5, 3, 1, 6, 4, 2, 0)));
  }
  static __m256 GridValue(__m256i index) {
    return _mm256_permutevar8x32_ps(_mm256_setr_ps(0.0f, 0.5f, 1.0f, 1.5f, 2.0f, 3.0f, 4.0f, 6.0f),
                                    index);
  }
  static void Finalize(const float* x, const float* w, const ScaleTable& table, int code,
                       int absmax_code, uint8_t* packed, Lanes* lanes) {
    const float* thresholds = table.threshold[code];
    const __m256 v_lo = _mm256_loadu_ps(x), v_hi = _mm256_loadu_ps(x + 8);
    const __m256 ax_lo = Abs(v_lo), ax_hi = Abs(v_hi);
    const __m256i index_lo = GridIndex(ax_lo, thresholds), index_hi = GridIndex(ax_hi, thresholds);
    const __m128i words =
        _mm_packus_epi32(PairBytes(Nibbles(v_lo, index_lo)), PairBytes(Nibbles(v_hi, index_hi)));
    _mm_storel_epi64(reinterpret_cast<__m128i*>(packed), _mm_packus_epi16(words, words));

    // Metrics (AccumulateBlockMetrics, lane by lane).
    const __m256 s = _mm256_set1_ps(table.effective_scale[code]);
    const __m256 d[2] = {_mm256_sub_ps(ax_lo, _mm256_mul_ps(GridValue(index_lo), s)),
                         _mm256_sub_ps(ax_hi, _mm256_mul_ps(GridValue(index_hi), s))};
    const __m256 v[2] = {v_lo, v_hi};
    // Computed even when code == absmax_code (then equal to d): a branch on the search result
    // mispredicts often enough to cost more than the arithmetic.
    // absmax_code < 0: the choice is the AbsMax code by construction (method absmax).
    __m256 d_absmax[2] = {d[0], d[1]};
    if (absmax_code >= 0) {
      const float* t = table.threshold[absmax_code];
      const __m256 sa = _mm256_set1_ps(table.effective_scale[absmax_code]);
      d_absmax[0] = _mm256_sub_ps(ax_lo, _mm256_mul_ps(GridMagnitude(ax_lo, t), sa));
      d_absmax[1] = _mm256_sub_ps(ax_hi, _mm256_mul_ps(GridMagnitude(ax_hi, t), sa));
    }
    for (int h = 0; h < 2; ++h) {
      __m256(&partial)[kMetricSums][2] = lanes->partial;
      partial[kSquaredError][h] = _mm256_fmadd_ps(d[h], d[h], partial[kSquaredError][h]);
      if (w) {
        const __m256 wv = _mm256_loadu_ps(w + 8 * h);
        partial[kWeightedSquaredError][h] =
            _mm256_fmadd_ps(wv, _mm256_mul_ps(d[h], d[h]), partial[kWeightedSquaredError][h]);
        partial[kWeightSum][h] = _mm256_add_ps(partial[kWeightSum][h], wv);
      }
      partial[kSquaredSignal][h] = _mm256_fmadd_ps(v[h], v[h], partial[kSquaredSignal][h]);
      partial[kAbsMaxSquaredError][h] =
          _mm256_fmadd_ps(d_absmax[h], d_absmax[h], partial[kAbsMaxSquaredError][h]);
      if (w) {
        partial[kAbsMaxWeightedSquaredError][h] =
            _mm256_fmadd_ps(_mm256_loadu_ps(w + 8 * h), _mm256_mul_ps(d_absmax[h], d_absmax[h]),
                            partial[kAbsMaxWeightedSquaredError][h]);
      }
      lanes->max_abs_error[h] = _mm256_max_ps(lanes->max_abs_error[h], Abs(d[h]));
    }
  }
  static void Dequantize(const float* x, const ScaleTable& table, int code, float* out, int n) {
    const float* thresholds = table.threshold[code];
    const __m256 s = _mm256_set1_ps(table.effective_scale[code]);
    alignas(32) float values[16];
    for (int half = 0; half < 2; ++half) {
      const __m256 v = _mm256_loadu_ps(x + 8 * half);
      const __m256 y = _mm256_mul_ps(GridMagnitude(Abs(v), thresholds), s);
      const __m256 negative = _mm256_cmp_ps(v, _mm256_setzero_ps(), _CMP_LT_OQ);
      _mm256_store_ps(values + 8 * half,
                      _mm256_xor_ps(y, _mm256_and_ps(negative, _mm256_set1_ps(-0.0f))));
    }
    for (int i = 0; i < n; ++i) out[i] = values[i];
  }
  static void Clear(Lanes* lanes) {
    ClearMetricLanes(&lanes->memory);
    for (int k = 0; k < kMetricSums; ++k)
      lanes->partial[k][0] = lanes->partial[k][1] = _mm256_setzero_ps();
    lanes->max_abs_error[0] = lanes->max_abs_error[1] = _mm256_setzero_ps();
  }
  static void Fold(Lanes* lanes) {
    for (int k = 0; k < kMetricSums; ++k) {
      for (int h = 0; h < 2; ++h) {
        _mm256_storeu_ps(lanes->memory.partial[k] + 8 * h, lanes->partial[k][h]);
        lanes->partial[k][h] = _mm256_setzero_ps();
      }
    }
    FoldMetricLanes(&lanes->memory);
  }
  static MetricTotals Flush(Lanes* lanes) {
    Fold(lanes);
    _mm256_storeu_ps(lanes->memory.max_abs_error, lanes->max_abs_error[0]);
    _mm256_storeu_ps(lanes->memory.max_abs_error + 8, lanes->max_abs_error[1]);
    return FlushMetricLanes(&lanes->memory);
  }
};

}  // namespace

void QuantizeRowsAvx2(const RowKernelArgs& args) { QuantizeRowsWith<Avx2Ops>(args); }

void ConvertToF32Avx2(DType dtype, const void* src, int64_t n, float* dst) {
  int64_t i = 0;
  if (dtype == DType::kF32) {
    const float* s = static_cast<const float*>(src);
    for (; i + 8 <= n; i += 8) _mm256_storeu_ps(dst + i, _mm256_loadu_ps(s + i));
  } else if (dtype == DType::kBF16) {
    const uint16_t* s = static_cast<const uint16_t*>(src);
    for (; i + 8 <= n; i += 8) {
      const __m256i wide =
          _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(s + i)));
      _mm256_storeu_ps(dst + i, _mm256_castsi256_ps(_mm256_slli_epi32(wide, 16)));
    }
  } else {
    const uint16_t* s = static_cast<const uint16_t*>(src);
    for (; i + 8 <= n; i += 8) {
      _mm256_storeu_ps(dst + i,
                       _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(s + i))));
    }
  }
  if (i < n) {
    const size_t offset = static_cast<size_t>(i) * DTypeSize(dtype);
    ConvertToF32Scalar(dtype, static_cast<const uint8_t*>(src) + offset, n - i, dst + i);
  }
}

ScanResult ScanHalfAvx2(DType dtype, const uint16_t* x, int64_t n) {
  const uint16_t infinity = HalfInfinityBits(dtype);
  const __m256i magnitude_mask = _mm256_set1_epi16(0x7fff);
  // Magnitudes are below 0x8000, so signed 16-bit compares order them correctly.
  const __m256i below_infinity = _mm256_set1_epi16(static_cast<int16_t>(infinity - 1));
  __m256i max_magnitude = _mm256_setzero_si256();
  int64_t non_finite = 0;
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    const __m256i m = _mm256_and_si256(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(x + i)),
                                       magnitude_mask);
    const __m256i bad = _mm256_cmpgt_epi16(m, below_infinity);
    max_magnitude = _mm256_max_epi16(max_magnitude, _mm256_andnot_si256(bad, m));
    non_finite += __builtin_popcount(static_cast<uint32_t>(_mm256_movemask_epi8(bad))) / 2;
  }
  ScanResult result = ScanHalfScalar(dtype, x + i, n - i);
  alignas(32) uint16_t lanes[16];
  _mm256_store_si256(reinterpret_cast<__m256i*>(lanes), max_magnitude);
  // The lanes hold finite magnitudes: the scalar scan reduces them (and widens the maximum).
  const ScanResult lane_scan = ScanHalfScalar(dtype, lanes, 16);
  if (lane_scan.max_abs > result.max_abs) result.max_abs = lane_scan.max_abs;
  result.non_finite += non_finite;
  return result;
}

ScanResult ScanF32Avx2(const float* x, int64_t n) {
  __m256 max_abs = _mm256_setzero_ps();
  __m256i non_finite = _mm256_setzero_si256();
  const __m256 float_max = _mm256_set1_ps(3.4028234663852886e38f);
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m256 a = Abs(_mm256_loadu_ps(x + i));
    const __m256 finite = _mm256_cmp_ps(a, float_max, _CMP_LE_OQ);
    max_abs = _mm256_max_ps(max_abs, _mm256_and_ps(a, finite));
    non_finite = _mm256_sub_epi32(
        non_finite,
        _mm256_castps_si256(_mm256_andnot_ps(finite, _mm256_castsi256_ps(_mm256_set1_epi32(-1)))));
  }
  ScanResult result = ScanF32Scalar(x + i, n - i);
  const float vector_max = MaxLane(max_abs);
  if (vector_max > result.max_abs) result.max_abs = vector_max;
  alignas(32) int32_t counts[8];
  _mm256_store_si256(reinterpret_cast<__m256i*>(counts), non_finite);
  for (int k = 0; k < 8; ++k) result.non_finite += counts[k];
  return result;
}

}  // namespace nvfp4::cpu
