// AVX-512 row kernel (F, BW, VL, DQ): one block = one zmm register. A transliteration of the
// shared block functions (block_math.h) with the same operations in the same order, so the
// bytes and sums equal the scalar reference; tests/kernels/cpu_backend_test.cc checks that.
#include <immintrin.h>

#include "kernels/cpu/row_driver.h"
#include "kernels/cpu/row_kernel.h"

namespace nvfp4::cpu {
namespace {

inline float TreeSum(__m512 t) {
  const __m256 s8 = _mm256_add_ps(_mm512_castps512_ps256(t), _mm512_extractf32x8_ps(t, 1));
  const __m128 s4 = _mm_add_ps(_mm256_castps256_ps128(s8), _mm256_extractf128_ps(s8, 1));
  const __m128 s2 = _mm_add_ps(s4, _mm_movehl_ps(s4, s4));
  return _mm_cvtss_f32(_mm_add_ss(s2, _mm_movehdup_ps(s2)));
}

inline __m512 Abs(__m512 x) {
  return _mm512_castsi512_ps(
      _mm512_and_si512(_mm512_castps_si512(x), _mm512_set1_epi32(0x7FFFFFFF)));
}

// Grid magnitude q of each |x| lane under scale code c (threshold table).
inline __m512 GridMagnitude(__m512 ax, const float* thresholds) {
  __m512 q = _mm512_setzero_ps();
  const __m512 half = _mm512_set1_ps(0.5f), one = _mm512_set1_ps(1.0f), two = _mm512_set1_ps(2.0f);
  const __m512 step[7] = {half, half, half, half, one, one, two};
  for (int k = 0; k < 7; ++k) {
    const __mmask16 passed = _mm512_cmp_ps_mask(ax, _mm512_set1_ps(thresholds[k]), _CMP_GE_OQ);
    q = _mm512_mask_add_ps(q, passed, q, step[k]);
  }
  return q;
}

inline __m512i GridIndex(__m512 ax, const float* thresholds) {
  __m512i index = _mm512_setzero_si512();
  const __m512i one = _mm512_set1_epi32(1);
  for (int k = 0; k < 7; ++k) {
    const __mmask16 passed = _mm512_cmp_ps_mask(ax, _mm512_set1_ps(thresholds[k]), _CMP_GE_OQ);
    index = _mm512_mask_add_epi32(index, passed, index, one);
  }
  return index;
}

struct Avx512Block {
  __m512 ax, axp, w;
  bool weighted;
  uint8_t absmax;
  float m, p, inv_p, w_total;
  const ScaleTable* table;

  float max_abs() const { return m; }
  uint8_t absmax_code() const { return absmax; }
  float total_weight() const { return w_total; }
  float wmse_lower_bound() const {
    const __m512 numerator = _mm512_mul_ps(_mm512_mul_ps(w, axp), _mm512_set1_ps(16.0f));
    const __m512 denominator = _mm512_add_ps(_mm512_sub_ps(_mm512_set1_ps(w_total), w),
                                             _mm512_mul_ps(_mm512_set1_ps(112.0f), w));
    return _mm512_reduce_max_ps(_mm512_div_ps(numerator, denominator)) * inv_p;
  }
  float loss(int c) const {
    const __m512 q = GridMagnitude(ax, table->threshold[c]);
    const __m512 scale_p = _mm512_set1_ps(table->effective_scale[c] * p);
    const __m512 d = _mm512_fnmadd_ps(q, scale_p, axp);
    __m512 t = _mm512_mul_ps(d, d);
    if (weighted) t = _mm512_mul_ps(w, t);
    return TreeSum(t);
  }
};

inline __m512 GridValue(__m512i index) {
  const __m512 grid = _mm512_setr_ps(0.0f, 0.5f, 1.0f, 1.5f, 2.0f, 3.0f, 4.0f, 6.0f, 0.0f, 0.5f,
                                     1.0f, 1.5f, 2.0f, 3.0f, 4.0f, 6.0f);
  return _mm512_permutexvar_ps(index, grid);
}

// The fp32 partial lanes of MetricLanes in registers; the fp64 totals stay in memory.
struct Avx512Lanes {
  __m512 partial[kMetricSums];
  __m512 max_abs_error;
  MetricLanes memory;
};

struct Avx512Ops {
  using Block = Avx512Block;
  using Lanes = Avx512Lanes;
  static void Summarize(const float* x, int blocks, float six_g, float* m, uint8_t* absmax) {
    for (int b = 0; b < blocks; ++b) m[b] = _mm512_reduce_max_ps(Abs(_mm512_loadu_ps(x + b * 16)));
    // AbsMaxScaleCode for 16 blocks at a time, operation for operation: IEEE division, zero ->
    // 1.0, clamp to [2^-9, 448], then EncodeE4M3Rne (bit rounding for normals, rint below 2^-6).
    int b = 0;
    for (; b + 16 <= blocks; b += 16) {
      __m512 s = _mm512_div_ps(_mm512_loadu_ps(m + b), _mm512_set1_ps(six_g));
      s = _mm512_mask_blend_ps(_mm512_cmp_ps_mask(s, _mm512_setzero_ps(), _CMP_EQ_OQ), s,
                               _mm512_set1_ps(1.0f));
      s = _mm512_min_ps(_mm512_max_ps(s, _mm512_set1_ps(kE4M3MinSubnormal)),
                        _mm512_set1_ps(kE4M3Max));
      const __m512i bits = _mm512_castps_si512(s);
      const __m512i kept_lsb = _mm512_and_si512(_mm512_srli_epi32(bits, 20), _mm512_set1_epi32(1));
      const __m512i normal = _mm512_srli_epi32(
          _mm512_add_epi32(_mm512_sub_epi32(bits, _mm512_set1_epi32(120 << 23)),
                           _mm512_add_epi32(_mm512_set1_epi32(0x7FFFF), kept_lsb)),
          20);
      const __m512i subnormal = _mm512_cvtps_epi32(_mm512_roundscale_ps(
          _mm512_mul_ps(s, _mm512_set1_ps(512.0f)), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
      const __mmask16 is_normal = _mm512_cmp_ps_mask(s, _mm512_set1_ps(kE4M3MinNormal), _CMP_GE_OQ);
      const __m512i code = _mm512_mask_blend_epi32(is_normal, subnormal, normal);
      _mm_storeu_si128(reinterpret_cast<__m128i*>(absmax + b), _mm512_cvtepi32_epi8(code));
    }
    for (; b < blocks; ++b) absmax[b] = AbsMaxScaleCode(m[b], six_g);
  }
  static void Prepare(const float* x, const float* w, const ScaleTable& table, float m,
                      uint8_t absmax, Block* block) {
    block->ax = Abs(_mm512_loadu_ps(x));
    block->m = m;
    block->absmax = absmax;
    block->p = BlockNormalizer(block->m);
    block->inv_p = BlockDenormalizer(block->m);
    block->axp = _mm512_mul_ps(block->ax, _mm512_set1_ps(block->p));
    block->weighted = w != nullptr;
    block->w = _mm512_setzero_ps();
    if (w) {
      const __mmask16 nonzero = _mm512_cmp_ps_mask(block->ax, _mm512_setzero_ps(), _CMP_GT_OQ);
      const __m512 raw = _mm512_maskz_loadu_ps(nonzero, w);
      block->w = _mm512_mul_ps(raw, _mm512_set1_ps(BlockNormalizer(_mm512_reduce_max_ps(raw))));
    }
    block->w_total = w ? TreeSum(block->w) : 0.0f;
    block->table = &table;
  }
  static void Finalize(const float* x, const float* w, const ScaleTable& table, int code,
                       int absmax_code, uint8_t* packed, Lanes* lanes) {
    const __m512 v = _mm512_loadu_ps(x);
    const __m512 ax = Abs(v);
    const __m512i index = GridIndex(ax, table.threshold[code]);
    // Packing: sign bit 3, odd elements in the high nibble, each pair folded into one byte.
    const __mmask16 negative = _mm512_cmp_ps_mask(v, _mm512_setzero_ps(), _CMP_LT_OQ);
    __m512i nibble = _mm512_mask_or_epi32(index, negative, index, _mm512_set1_epi32(8));
    nibble =
        _mm512_sllv_epi32(nibble, _mm512_set_epi32(4, 0, 4, 0, 4, 0, 4, 0, 4, 0, 4, 0, 4, 0, 4, 0));
    nibble = _mm512_or_si512(nibble, _mm512_srli_epi64(nibble, 32));
    _mm_storel_epi64(reinterpret_cast<__m128i*>(packed), _mm512_cvtepi64_epi8(nibble));
    // Metrics (AccumulateBlockMetrics, lane by lane).
    const __m512 d = _mm512_sub_ps(
        ax, _mm512_mul_ps(GridValue(index), _mm512_set1_ps(table.effective_scale[code])));
    __m512* partial = lanes->partial;
    partial[kSquaredError] = _mm512_fmadd_ps(d, d, partial[kSquaredError]);
    if (w) {
      const __m512 wv = _mm512_loadu_ps(w);
      partial[kWeightedSquaredError] =
          _mm512_fmadd_ps(wv, _mm512_mul_ps(d, d), partial[kWeightedSquaredError]);
      partial[kWeightSum] = _mm512_add_ps(partial[kWeightSum], wv);
    }
    partial[kSquaredSignal] = _mm512_fmadd_ps(v, v, partial[kSquaredSignal]);
    // Computed even when code == absmax_code (then equal to d): a branch on the search result
    // mispredicts often enough to cost more than the arithmetic.
    // absmax_code < 0: the choice is the AbsMax code by construction (method absmax).
    __m512 d_absmax = d;
    if (absmax_code >= 0) {
      const __m512 q_absmax = GridValue(GridIndex(ax, table.threshold[absmax_code]));
      d_absmax = _mm512_sub_ps(
          ax, _mm512_mul_ps(q_absmax, _mm512_set1_ps(table.effective_scale[absmax_code])));
    }
    partial[kAbsMaxSquaredError] =
        _mm512_fmadd_ps(d_absmax, d_absmax, partial[kAbsMaxSquaredError]);
    if (w) {
      partial[kAbsMaxWeightedSquaredError] =
          _mm512_fmadd_ps(_mm512_loadu_ps(w), _mm512_mul_ps(d_absmax, d_absmax),
                          partial[kAbsMaxWeightedSquaredError]);
    }
    lanes->max_abs_error = _mm512_max_ps(lanes->max_abs_error, Abs(d));
  }
  static void Dequantize(const float* x, const ScaleTable& table, int code, float* out, int n) {
    const __m512 v = _mm512_loadu_ps(x);
    __m512 y = _mm512_mul_ps(GridMagnitude(Abs(v), table.threshold[code]),
                             _mm512_set1_ps(table.effective_scale[code]));
    const __mmask16 negative = _mm512_cmp_ps_mask(v, _mm512_setzero_ps(), _CMP_LT_OQ);
    y = _mm512_mask_xor_ps(y, negative, y, _mm512_set1_ps(-0.0f));
    _mm512_mask_storeu_ps(out, static_cast<__mmask16>((1u << n) - 1u), y);
  }
  static void Clear(Lanes* lanes) {
    ClearMetricLanes(&lanes->memory);
    for (int k = 0; k < kMetricSums; ++k) lanes->partial[k] = _mm512_setzero_ps();
    lanes->max_abs_error = _mm512_setzero_ps();
  }
  static void Fold(Lanes* lanes) {
    for (int k = 0; k < kMetricSums; ++k) {
      _mm512_storeu_ps(lanes->memory.partial[k], lanes->partial[k]);
      lanes->partial[k] = _mm512_setzero_ps();
    }
    FoldMetricLanes(&lanes->memory);
  }
  static MetricTotals Flush(Lanes* lanes) {
    Fold(lanes);
    _mm512_storeu_ps(lanes->memory.max_abs_error, lanes->max_abs_error);
    return FlushMetricLanes(&lanes->memory);
  }
};

}  // namespace

void QuantizeRowsAvx512(const RowKernelArgs& args) { QuantizeRowsWith<Avx512Ops>(args); }

void ConvertToF32Avx512(DType dtype, const void* src, int64_t n, float* dst) {
  int64_t i = 0;
  if (dtype == DType::kF32) {
    const float* s = static_cast<const float*>(src);
    for (; i + 16 <= n; i += 16) _mm512_storeu_ps(dst + i, _mm512_loadu_ps(s + i));
  } else if (dtype == DType::kBF16) {
    const uint16_t* s = static_cast<const uint16_t*>(src);
    for (; i + 16 <= n; i += 16) {
      const __m512i wide =
          _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(s + i)));
      _mm512_storeu_ps(dst + i, _mm512_castsi512_ps(_mm512_slli_epi32(wide, 16)));
    }
  } else {
    const uint16_t* s = static_cast<const uint16_t*>(src);
    for (; i + 16 <= n; i += 16) {
      _mm512_storeu_ps(
          dst + i, _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(s + i))));
    }
  }
  const int64_t done = i;
  if (done < n) {
    const size_t offset = static_cast<size_t>(done) * DTypeSize(dtype);
    ConvertToF32Scalar(dtype, static_cast<const uint8_t*>(src) + offset, n - done, dst + done);
  }
}

ScanResult ScanHalfAvx512(DType dtype, const uint16_t* x, int64_t n) {
  const uint16_t infinity = HalfInfinityBits(dtype);
  const __m512i magnitude_mask = _mm512_set1_epi16(0x7fff);
  const __m512i infinity_bits = _mm512_set1_epi16(static_cast<int16_t>(infinity));
  __m512i max_magnitude = _mm512_setzero_si512();
  int64_t non_finite = 0;
  int64_t i = 0;
  for (; i + 32 <= n; i += 32) {
    const __m512i m = _mm512_and_si512(_mm512_loadu_si512(x + i), magnitude_mask);
    const __mmask32 finite = _mm512_cmplt_epu16_mask(m, infinity_bits);
    max_magnitude = _mm512_mask_max_epu16(max_magnitude, finite, max_magnitude, m);
    non_finite += 32 - __builtin_popcount(finite);
  }
  ScanResult result = ScanHalfScalar(dtype, x + i, n - i);
  alignas(64) uint16_t lanes[32];
  _mm512_store_si512(lanes, max_magnitude);
  // The lanes hold finite magnitudes: the scalar scan reduces them (and widens the maximum).
  const ScanResult lane_scan = ScanHalfScalar(dtype, lanes, 32);
  if (lane_scan.max_abs > result.max_abs) result.max_abs = lane_scan.max_abs;
  result.non_finite += non_finite;
  return result;
}

ScanResult ScanF32Avx512(const float* x, int64_t n) {
  __m512 max_abs = _mm512_setzero_ps();
  __m512i non_finite = _mm512_setzero_si512();
  const __m512 float_max = _mm512_set1_ps(3.4028234663852886e38f);
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    const __m512 a = Abs(_mm512_loadu_ps(x + i));
    const __mmask16 finite = _mm512_cmp_ps_mask(a, float_max, _CMP_LE_OQ);
    max_abs = _mm512_mask_max_ps(max_abs, finite, max_abs, a);
    non_finite = _mm512_mask_add_epi32(non_finite, static_cast<__mmask16>(~finite), non_finite,
                                       _mm512_set1_epi32(1));
  }
  ScanResult result = ScanF32Scalar(x + i, n - i);
  const float vector_max = _mm512_reduce_max_ps(max_abs);
  if (vector_max > result.max_abs) result.max_abs = vector_max;
  result.non_finite += _mm512_reduce_add_epi32(non_finite);
  return result;
}

}  // namespace nvfp4::cpu
