// What one CUDA thread of the quantize kernel does, written as __host__ __device__ code over
// the shared numerics (kernels/numerics/), so that the host can run, and the tests can check,
// exactly the code the quantize kernel runs.
//
// QuantizeThreadBlocks: the thread's blocks (BlockWalk, no division per block), each block's
// bits loaded (LoadRawBlock: 16-byte loads where aligned, zeros past the last column) one block
// ahead where registers allow, then ProcessBlock: widen them (bf16/f16 exactly), record
// non-finite inputs (one test of the block maximum taken with NaN propagated) and bad importance
// values, then the CPU reference's block steps unchanged: PrepareScalarBlock -> ChooseBlockScale,
// one E2M1RoundByThreshold per element under the chosen code for the nibbles (what EncodeBlock
// packs), DequantizeNibble's value for the fake-quant output, and the error terms of
// AccumulateBlockMetrics (their magnitudes by E2M1MagnitudeFromBits, the same values in two
// instructions, which the fake-quant output reuses). The only device-specific piece is DeviceBlock,
// a ScalarBlock whose loss() passes a compile-time weights pointer to the same CandidateLoss (a
// run-time pointer select would force the block into local memory). Loops over a block run over
// all 16 elements: a run-time bound would index the arrays at run time, i.e. on the stack
// (tests/gpu/kernel_resources_test.py checks the compiled kernels for it).
// Metric terms are summed per block in fp32 by fmaf chains (DotProduct16: one instruction per
// term) and then in fp64 per thread; the CPU folds per element position instead, so metrics
// agree to ~1e-7 relative and bytes (packed, scales, dequantized) are identical.
//
// BuildScaleTableEntry is one (code, column) entry of BuildScaleTable; ResolveGlobalScale is
// the CPU backend's choice of g. Everything here is pure and thread-safe; callers own all memory.
// Nothing reports errors: NaN/Inf inputs and bad importance values are recorded as the smallest
// offending index in ThreadTotals (the host turns them into InvalidArgument); the per-block steps
// still run on them and terminate. No CUDA types appear outside __CUDA_ARCH__ sections, so plain
// C++ (the host tests) can include this header.
#ifndef NVFP4_KERNELS_CUDA_DEVICE_BLOCK_H_
#define NVFP4_KERNELS_CUDA_DEVICE_BLOCK_H_

#include <cstdint>
#include <cstring>
#include <type_traits>

#include "kernels/numerics/block_math.h"
#include "kernels/numerics/e4m3.h"
#include "kernels/numerics/global_scale.h"
#include "kernels/numerics/half.h"
#include "kernels/numerics/hd.h"
#include "kernels/numerics/method.h"
#include "kernels/numerics/scale_search.h"
#include "kernels/numerics/scale_table.h"
#include "kernels/tensor.h"

#if defined(__CUDACC__)
#include <cuda_fp16.h>
#endif

namespace nvfp4::cuda {

inline constexpr uint64_t kNoBadElement = ~uint64_t{0};
inline constexpr float kMaxFiniteFloat = 3.4028234663852886e38f;

// Where g comes from (QuantizeOptions: global_scale wins over amax, else the tensor's amax).
struct GlobalScaleSource {
  bool has_global_scale = false;
  float global_scale = 1.0f;
  bool has_amax = false;
  float amax = 0.0f;
  int scale_max = 256;
};

NVFP4_HD float ResolveGlobalScale(const GlobalScaleSource& source, float tensor_amax) {
  if (source.has_global_scale) return source.global_scale;
  return GlobalScaleFromAmax(source.has_amax ? source.amax : tensor_amax, source.scale_max);
}

// Entry (c, k) of BuildScaleTable(g, table), c in [0, 127), k in [0, 8): running it for every
// pair writes exactly the fields BuildScaleTable writes (the GPU runs one pair per thread).
NVFP4_HD void BuildScaleTableEntry(float g, int c, int k, ScaleTable* table) {
  const float infinity = BitsToFloat(0x7F800000u);
  if (c == 0) {
    table->threshold[0][k] = infinity;
    if (k == 0) {
      table->global_scale = g;
      table->effective_scale[0] = 0.0f;
      table->effective_scale[127] = 0.0f;
    }
    return;
  }
  const float s = DecodeE4M3(static_cast<uint8_t>(c)) * g;
  if (k == 0) table->effective_scale[c] = s;
  table->threshold[c][k] = k < 7 ? E2M1Threshold(s, k) : infinity;
}

// ScalarBlock with the weights pointer fixed at compile time (see the header comment).
template <bool kWeighted>
struct DeviceBlock {
  ScalarBlock block;

  NVFP4_HD_METHOD float max_abs() const { return block.m; }
  NVFP4_HD_METHOD uint8_t absmax_code() const { return block.absmax; }
  NVFP4_HD_METHOD float total_weight() const { return block.w_total; }
  NVFP4_HD_METHOD float wmse_lower_bound() const { return block.wmse_lower_bound(); }
  NVFP4_HD_METHOD float loss(int code) const {
    return CandidateLoss(block.ax, block.axp, kWeighted ? block.w : nullptr, *block.table, code,
                         block.p);
  }
};

// One launch's share of a tensor: rows [row0, row0 + rows) of a [*, cols] tensor. Pointers are
// relative to the launch's first row (weights: per column always the full [cols] vector).
struct BlockJob {
  DType dtype = DType::kF32;
  const void* x = nullptr;         // [rows, cols] of dtype
  const float* weights = nullptr;  // kPerColumn: [cols]; kPerElement: [rows, cols]; else null
  uint8_t* packed = nullptr;       // [rows, padded_cols / 2]
  uint8_t* scales = nullptr;       // [rows, padded_cols / 16]
  float* dequantized = nullptr;    // [rows, cols] or null
  int64_t row0 = 0;                // first row's index in the tensor (for error indices)
  int64_t rows = 0;
  int64_t cols = 0;
  int64_t padded_cols = 0;
  ImportanceLayout layout = ImportanceLayout::kNone;
  Method method = Method::kScaleSweep;
  Objective objective = Objective::kMse;
  // cols % 16 == 0, x, weights and dequantized 16-byte aligned, packed 8-byte aligned: whole
  // blocks are moved with 16-byte accesses.
  bool vector_access = false;
};

// A thread's running totals over the blocks it processed.
struct ThreadTotals {
  double sum[kMetricSums];
  float max_abs_error;
  float amax;  // max |x| over finite inputs
  int64_t candidates;
  uint64_t first_bad_input;   // smallest tensor element index holding NaN/Inf
  uint64_t first_bad_weight;  // smallest importance index that is not finite and >= 0
};

NVFP4_HD void ClearThreadTotals(ThreadTotals* totals) {
  for (int k = 0; k < kMetricSums; ++k) totals->sum[k] = 0.0;
  totals->max_abs_error = 0.0f;
  totals->amax = 0.0f;
  totals->candidates = 0;
  totals->first_bad_input = kNoBadElement;
  totals->first_bad_weight = kNoBadElement;
}

NVFP4_HD uint64_t MinIndex(uint64_t a, uint64_t b) { return a < b ? a : b; }

// Scan step of one input value (the CPU's ScanF32: NaN and +-Inf are "not <= FLT_MAX").
NVFP4_HD void ScanInput(float v, uint64_t index, float* amax, uint64_t* first_bad) {
  const float a = AbsF(v);
  if (!(a <= kMaxFiniteFloat)) {
    *first_bad = MinIndex(*first_bad, index);
  } else {
    *amax = MaxF(*amax, a);
  }
}

// max |v[i]| over kCount values, NaN when any is NaN: NaN/Inf among them is one test of the result,
// !(max <= FLT_MAX) (the scan's vectors, the quantize kernel's blocks).
template <int kCount>
NVFP4_HD float MaxAbsOrNaN(const float* v) {
  float m = 0.0f;
  for (int i = 0; i < kCount; ++i) m = MaxMagnitudeOrNaN(m, AbsF(v[i]));
  return m;
}

// Importance values must be finite and >= 0 (-0.0 passes, like the CPU's check).
NVFP4_HD bool IsValidWeight(float w) { return w >= 0.0f && w <= kMaxFiniteFloat; }

// 16 bytes at src (16-byte aligned on the device) as four little-endian words.
NVFP4_HD void Load16Bytes(const void* src, uint32_t* words) {
#if defined(__CUDA_ARCH__)
  const uint4 v = *static_cast<const uint4*>(src);
  words[0] = v.x;
  words[1] = v.y;
  words[2] = v.z;
  words[3] = v.w;
#else
  std::memcpy(words, src, 16);
#endif
}

NVFP4_HD void Store16Bytes(void* dst, const uint32_t* words) {
#if defined(__CUDA_ARCH__)
  *static_cast<uint4*>(dst) = make_uint4(words[0], words[1], words[2], words[3]);
#else
  std::memcpy(dst, words, 16);
#endif
}

NVFP4_HD void Store8Bytes(void* dst, const uint8_t* bytes) {
  uint32_t lo = 0, hi = 0;
  for (int i = 0; i < 4; ++i) {
    lo |= static_cast<uint32_t>(bytes[i]) << (8 * i);
    hi |= static_cast<uint32_t>(bytes[4 + i]) << (8 * i);
  }
#if defined(__CUDA_ARCH__)
  *static_cast<uint2*>(dst) = make_uint2(lo, hi);
#else
  const uint32_t words[2] = {lo, hi};
  std::memcpy(dst, words, 8);
#endif
}

// Widening of one 16-bit value (the CPU's ConvertToF32Scalar). fp16 -> fp32 is exact, so on
// the device the hardware conversion (one instruction) gives HalfBitsToFloat's value for every
// non-NaN input (cuda_host_conversions_test checks all 65536 patterns; NaN inputs are errors).
template <DType kDtype>
NVFP4_HD float Widen16(uint32_t bits) {
  if constexpr (kDtype == DType::kBF16) {
    return Bf16BitsToFloat(static_cast<uint16_t>(bits));
  } else {
#if defined(__CUDA_ARCH__)
    return __half2float(__ushort_as_half(static_cast<unsigned short>(bits)));
#else
    return HalfBitsToFloat(static_cast<uint16_t>(bits));
#endif
  }
}

template <DType kDtype>
NVFP4_HD float LoadValue(const void* base, int64_t index) {
  if constexpr (kDtype == DType::kF32) {
    return static_cast<const float*>(base)[index];
  } else {
    return Widen16<kDtype>(static_cast<const uint16_t*>(base)[index]);
  }
}

// The bits of one block's 16 input values as loaded (fp32: one word each; bf16/f16: element 2j
// in the low half of word j), zeros past the last column. Loading is separate from widening so
// that the kernel can fetch the next block before it works on the current one.
template <DType kDtype>
struct RawBlock {
  static constexpr int kWords = kDtype == DType::kF32 ? kBlockSize : kBlockSize / 2;
  uint32_t words[kWords];
};

// Elements [e0, e0 + n) of base. vector: n == 16 and base + e0 is 16-byte aligned.
template <DType kDtype>
NVFP4_HD void LoadRawBlock(const void* base, int64_t e0, int n, bool vector,
                           RawBlock<kDtype>* raw) {
  constexpr int kWords = RawBlock<kDtype>::kWords;
  if (vector) {
    const char* p = static_cast<const char*>(base) + e0 * (kDtype == DType::kF32 ? 4 : 2);
    for (int q = 0; q < kWords / 4; ++q) Load16Bytes(p + 16 * q, raw->words + 4 * q);
    return;
  }
  if constexpr (kDtype == DType::kF32) {
    const float* p = static_cast<const float*>(base) + e0;
    for (int i = 0; i < kBlockSize; ++i) raw->words[i] = i < n ? FloatToBits(p[i]) : 0u;
  } else {
    const uint16_t* p = static_cast<const uint16_t*>(base) + e0;
    for (int j = 0; j < kWords; ++j) {
      const uint32_t lo = 2 * j < n ? p[2 * j] : 0u;
      const uint32_t hi = 2 * j + 1 < n ? p[2 * j + 1] : 0u;
      raw->words[j] = lo | (hi << 16);
    }
  }
}

// x[0..16) = the raw block widened to fp32 (the CPU's ConvertToF32Scalar; padding is +0.0).
template <DType kDtype>
NVFP4_HD void WidenRawBlock(const RawBlock<kDtype>& raw, float* x) {
  if constexpr (kDtype == DType::kF32) {
    for (int i = 0; i < kBlockSize; ++i) x[i] = BitsToFloat(raw.words[i]);
  } else {
    for (int j = 0; j < kBlockSize / 2; ++j) {
      x[2 * j] = Widen16<kDtype>(raw.words[j] & 0xFFFFu);
      x[2 * j + 1] = Widen16<kDtype>(raw.words[j] >> 16);
    }
  }
}

// x[0..16) = elements [e0, e0 + n) of base, widened to fp32, zeros for i >= n.
template <DType kDtype>
NVFP4_HD void LoadBlock(const void* base, int64_t e0, int n, bool vector, float* x) {
  RawBlock<kDtype> raw;
  LoadRawBlock<kDtype>(base, e0, n, vector, &raw);
  WidenRawBlock<kDtype>(raw, x);
}

// What one thread of the scan kernel does: elements start, start + stride, ... of x[0, n) (as
// 16-byte vectors when `vector`, i.e. x 16-byte aligned, then the elements past the last whole
// vector one by one), folding their magnitudes into *amax and the smallest NaN/Inf index
// (first_index + i) into *first_bad, exactly as ScanInput on every element would. A vector
// is tested once, by its maximum magnitude taken with NaN propagated; only a vector holding
// NaN/Inf goes element by element (the per-element test and 64-bit index arithmetic made the
// bf16 loop ~90 instructions per 16 bytes, near the memory's pace).
template <DType kDtype>
NVFP4_HD void ScanThreadElements(const void* x, int64_t n, int64_t first_index, bool vector,
                                 int64_t start, int64_t stride, float* amax, uint64_t* first_bad) {
  constexpr int kPerVector = kDtype == DType::kF32 ? 4 : 8;
  int64_t scalar_begin = 0;
  if (vector) {
    const int64_t vectors = n / kPerVector;
    for (int64_t v = start; v < vectors; v += stride) {
      const int64_t e = v * kPerVector;
      uint32_t words[4];
      Load16Bytes(static_cast<const char*>(x) + e * (kDtype == DType::kF32 ? 4 : 2), words);
      float values[kPerVector];
      if constexpr (kDtype == DType::kF32) {
        for (int j = 0; j < 4; ++j) values[j] = BitsToFloat(words[j]);
      } else {
        for (int j = 0; j < 4; ++j) {
          values[2 * j] = Widen16<kDtype>(words[j] & 0xFFFFu);
          values[2 * j + 1] = Widen16<kDtype>(words[j] >> 16);
        }
      }
      const float m = MaxAbsOrNaN<kPerVector>(values);
      if (m <= kMaxFiniteFloat) {
        *amax = MaxMagnitude(*amax, m);
      } else {
        for (int j = 0; j < kPerVector; ++j) {
          ScanInput(values[j], static_cast<uint64_t>(first_index + e + j), amax, first_bad);
        }
      }
    }
    scalar_begin = vectors * kPerVector;
  }
  for (int64_t e = scalar_begin + start; e < n; e += stride) {
    ScanInput(LoadValue<kDtype>(x, e), static_cast<uint64_t>(first_index + e), amax, first_bad);
  }
}

// Where a block lies in its job. Blocks are numbered row-major: b = r * blocks_per_row +
// col_block.
struct BlockSite {
  int64_t b;     // the block's index: its scale byte, its 8 packed bytes
  int64_t col0;  // its first column
  int64_t e0;    // job-relative index of its first element
  int n;         // real elements (>= 1); the rest is zero padding
};

// k blocks as a move through a job's row-major blocks: `col_blocks` column blocks and
// `elements` elements on, then a wrap to the next row if that passes a row's end. From block 0
// (column 0) no wrap is needed: it is where block k lies. As the step of a thread's walk (k = the
// launch's thread count) it is computed once per launch, a kernel parameter on the GPU, so the
// walk keeps no step in registers.
struct BlockSpan {
  int64_t blocks = 1;
  int64_t elements = 0;
  uint32_t col_blocks = 0;
};

// A row's block count must fit 31 bits (the CUDA backend checks): column blocks are 32-bit
// unsigned, and a column block plus a step (each below the row's block count) stays below 2^32.
NVFP4_HD BlockSpan MakeBlockSpan(const BlockJob& job, int64_t k) {
  const int64_t blocks_per_row = job.padded_cols / kBlockSize;
  const int64_t rows = k / blocks_per_row;
  BlockSpan span;
  span.blocks = k;
  span.col_blocks = static_cast<uint32_t>(k - rows * blocks_per_row);
  span.elements = rows * job.cols + static_cast<int64_t>(span.col_blocks) * kBlockSize;
  return span;
}

// A thread's walk over blocks first, first + T, ... of a job. It carries the block's column
// block and first element along instead of dividing b by the blocks per row for each block
// (the GPU has no integer divide: a 64-bit one is a ~70-instruction call, and even the 32-bit
// fast path took ~20 instructions per block).
struct BlockWalk {
  int64_t b = 0;           // the current block
  int64_t e0 = 0;          // its first element
  uint32_t col_block = 0;  // its column block

  NVFP4_HD_METHOD bool done(const BlockJob& job) const {
    return b >= job.rows * (job.padded_cols / kBlockSize);
  }
  NVFP4_HD_METHOD void Advance(const BlockJob& job, const BlockSpan& stride) {
    b += stride.blocks;
    e0 += stride.elements;
    col_block += stride.col_blocks;
    if (col_block >= static_cast<uint32_t>(job.padded_cols / kBlockSize)) {
      col_block -= static_cast<uint32_t>(job.padded_cols / kBlockSize);
      e0 += job.cols - job.padded_cols;  // from column padded_cols of row r to column 0 of r + 1
    }
  }
  NVFP4_HD_METHOD BlockSite site(const BlockJob& job) const {
    BlockSite site;
    site.b = b;
    site.col0 = static_cast<int64_t>(col_block) * kBlockSize;
    site.e0 = e0;
    const int64_t left = job.cols - site.col0;
    site.n = left < kBlockSize ? static_cast<int>(left) : kBlockSize;
    return site;
  }
};

NVFP4_HD BlockWalk StartBlockWalk(const BlockJob& job, int64_t first) {
  const BlockSpan from_block0 = MakeBlockSpan(job, first);
  BlockWalk walk;
  walk.b = first;
  walk.e0 = from_block0.elements;
  walk.col_block = from_block0.col_blocks;
  return walk;
}

// The error d = |x| - q S of AccumulateBlockMetrics for every element, given its grid
// magnitude q under the effective scale S = s.
NVFP4_HD void BlockErrors(const float* ax, const float* magnitude, float s, float* d) {
  for (int i = 0; i < kBlockSize; ++i) d[i] = ax[i] - magnitude[i] * s;
}

// sum a[i] b[i] as one fmaf chain: one instruction per term (a product and a tree sum take two).
// The metrics' per-block sums, which are checked against the CPU's within a tolerance (their
// order of summation differs anyway); never used for a loss, whose sum order is defined.
NVFP4_HD float DotProduct16(const float* a, const float* b) {
  float sum = 0.0f;
  for (int i = 0; i < kBlockSize; ++i) sum = fmaf(a[i], b[i], sum);
  return sum;
}

// The whole per-block step for the block at `site`, whose input bits are `raw`. kWeights:
// importance present (metrics are weighted); kSearchWeighted: objective WMSE (implies kWeights).
// Each element is rounded once under the chosen code; its nibble, dequantised value and error
// all come from that rounding (the CPU rounds the same way: EncodeElement, AccumulateBlockMetrics).
template <DType kDtype, bool kWeights, bool kSearchWeighted>
NVFP4_HD void ProcessBlock(const BlockJob& job, const ScaleTable& table,
                           const ScaleSearchParams& params, const BlockSite& site,
                           const RawBlock<kDtype>& raw, ThreadTotals* totals) {
  static_assert(kWeights || !kSearchWeighted, "a weighted search needs weights");
  const int64_t b = site.b;
  const int64_t col0 = site.col0;
  const int64_t e0 = site.e0;
  const int n = site.n;
  const uint64_t tensor_e0 = static_cast<uint64_t>(job.row0 * job.cols + e0);

  float x[kBlockSize];
  WidenRawBlock<kDtype>(raw, x);
  // NaN/Inf: the block's maximum magnitude with NaN propagated is not <= FLT_MAX; the smallest
  // bad index is searched for only in a bad block (padding is 0.0, never bad), whose maximum is
  // then taken as 0 (the cheap all-zero path; a failed call's outputs are unspecified). Loops
  // run over all 16 elements so that x stays in registers (a loop bounded by n would index it
  // at run time, i.e. from local memory).
  float m = MaxAbsOrNaN<kBlockSize>(x);
  if (m <= kMaxFiniteFloat) {
    totals->amax = MaxF(totals->amax, m);
  } else {
    m = 0.0f;
    for (int i = 0; i < kBlockSize; ++i) {
      if (i < n) ScanInput(x[i], tensor_e0 + i, &totals->amax, &totals->first_bad_input);
    }
  }

  float w[kBlockSize];
  if constexpr (kWeights) {
    const bool per_column = job.layout == ImportanceLayout::kPerColumn;
    LoadBlock<DType::kF32>(job.weights, per_column ? col0 : e0, n, job.vector_access, w);
    bool bad_weight = false;
    for (int i = 0; i < kBlockSize; ++i) bad_weight |= !IsValidWeight(w[i]);
    if (bad_weight) {
      const uint64_t w0 = per_column ? static_cast<uint64_t>(col0) : tensor_e0;
      for (int i = 0; i < kBlockSize; ++i) {
        if (i < n && !IsValidWeight(w[i])) {
          totals->first_bad_weight = MinIndex(totals->first_bad_weight, w0 + i);
        }
      }
    }
  } else {
    for (int i = 0; i < kBlockSize; ++i) w[i] = 0.0f;
  }

  // The CPU reference's block steps (row_kernel_scalar.cc / row_driver.h).
  DeviceBlock<kSearchWeighted> block;
  PrepareScalarBlock(x, kSearchWeighted ? w : nullptr, table, m, AbsMaxScaleCode(m, params.six_g),
                     &block.block);
  const BlockChoice choice = ChooseBlockScale(block, params);
  const int code = choice.code;
  job.scales[b] = choice.code;

  const float* ax = block.block.ax;
  float row[8];
  LoadThresholdRow(table, code, row);
  const float s = table.effective_scale[code];
  uint8_t nibbles[kBlockSize];
  float magnitude[kBlockSize];
  for (int i = 0; i < kBlockSize; ++i) {
    const E2M1Rounding rounding = E2M1RoundByThreshold(ax[i], row);
    nibbles[i] = E2M1Nibble(rounding.index, x[i]);
    magnitude[i] = E2M1MagnitudeFromBits(rounding.index);
  }
  uint8_t packed[kBlockSize / 2];
  PackNibbles(nibbles, packed);
  if (job.vector_access) {
    Store8Bytes(job.packed + b * (kBlockSize / 2), packed);
  } else {
    for (int j = 0; j < kBlockSize / 2; ++j) job.packed[b * (kBlockSize / 2) + j] = packed[j];
  }

  if (job.dequantized != nullptr) {
    float out[kBlockSize];
    // DequantizeNibble(nibbles[i], s), i.e. fl(DecodeE2M1(nibble) * s), from the magnitude at
    // hand: the nibble's sign bit negates it (-0.0 included, as DecodeE2M1 does).
    for (int i = 0; i < kBlockSize; ++i) {
      out[i] = ((nibbles[i] & 8u) != 0 ? -magnitude[i] : magnitude[i]) * s;
    }
    float* dst = job.dequantized + e0;
    if (job.vector_access) {
      for (int q = 0; q < 4; ++q) {
        uint32_t words[4];
        for (int j = 0; j < 4; ++j) words[j] = FloatToBits(out[4 * q + j]);
        Store16Bytes(dst + 4 * q, words);
      }
    } else {
      for (int i = 0; i < kBlockSize; ++i) {
        if (i < n) dst[i] = out[i];
      }
    }
  }

  // Metric terms (those of AccumulateBlockMetrics), summed per block in fp32 by fmaf chains.
  float d[kBlockSize];
  BlockErrors(ax, magnitude, s, d);
  float squared_error[kBlockSize];
  float max_error = 0.0f;
  for (int i = 0; i < kBlockSize; ++i) {
    squared_error[i] = d[i] * d[i];
    max_error = MaxMagnitude(max_error, AbsF(d[i]));
  }
  const float squared_error_sum = DotProduct16(d, d);
  // The AbsMax baseline's errors: the same terms, hence the same sums, when the chosen code is
  // the AbsMax code (always for AbsMax and all-zero blocks).
  float absmax_error_sum = squared_error_sum;
  float weighted_error_sum = 0.0f, absmax_weighted_error_sum = 0.0f;
  if constexpr (kWeights) {
    weighted_error_sum = DotProduct16(w, squared_error);
    absmax_weighted_error_sum = weighted_error_sum;
  }
  if (choice.absmax != code) {
    LoadThresholdRow(table, choice.absmax, row);
    for (int i = 0; i < kBlockSize; ++i) magnitude[i] = E2M1RoundByThreshold(ax[i], row).magnitude;
    float absmax_d[kBlockSize];
    BlockErrors(ax, magnitude, table.effective_scale[choice.absmax], absmax_d);
    absmax_error_sum = DotProduct16(absmax_d, absmax_d);
    if constexpr (kWeights) {
      for (int i = 0; i < kBlockSize; ++i) squared_error[i] = absmax_d[i] * absmax_d[i];
      absmax_weighted_error_sum = DotProduct16(w, squared_error);
    }
  }
  totals->sum[kSquaredError] += static_cast<double>(squared_error_sum);
  if constexpr (kWeights) {
    totals->sum[kWeightedSquaredError] += static_cast<double>(weighted_error_sum);
    totals->sum[kWeightSum] += static_cast<double>(TreeSum16(w));
    totals->sum[kAbsMaxWeightedSquaredError] += static_cast<double>(absmax_weighted_error_sum);
  }
  totals->sum[kSquaredSignal] += static_cast<double>(DotProduct16(x, x));
  totals->sum[kAbsMaxSquaredError] += static_cast<double>(absmax_error_sum);
  totals->max_abs_error = MaxF(totals->max_abs_error, max_error);
  totals->candidates += choice.candidates;
}

// What one thread of the quantize kernel does: blocks first, first + stride, ... of the job.
// Without importance, each block's input is loaded one step ahead, so that its loads are in
// flight while the thread works on the block before (the kernel is issue-bound; this keeps
// the memory system busy without more resident warps). The variants with importance hold the
// weights as well and have no registers to spare: ptxas would spill the block loaded ahead
// (tests/gpu/kernel_resources_test.py), so they load each block when they reach it.
// `search` is read once per block: the kernel keeps it in shared memory (held in registers
// under the register cap, nvcc recomputed fl(1 / g), an IEEE division, for every block).
template <DType kDtype, bool kWeights, bool kSearchWeighted>
NVFP4_HD void QuantizeThreadBlocks(const BlockJob& job, const ScaleTable& table,
                                   const ScaleSearchParams& search, int64_t first,
                                   const BlockSpan& stride, ThreadTotals* totals) {
  constexpr bool kLoadAhead = !kWeights;
  BlockWalk walk = StartBlockWalk(job, first);
  RawBlock<kDtype> next;
  if (kLoadAhead && !walk.done(job)) {
    const BlockSite site = walk.site(job);
    LoadRawBlock<kDtype>(job.x, site.e0, site.n, job.vector_access, &next);
  }
  for (; !walk.done(job); walk.Advance(job, stride)) {
    const BlockSite site = walk.site(job);
    RawBlock<kDtype> raw;
    if constexpr (kLoadAhead) {
      raw = next;
      BlockWalk ahead = walk;
      ahead.Advance(job, stride);
      if (!ahead.done(job)) {
        const BlockSite next_site = ahead.site(job);
        LoadRawBlock<kDtype>(job.x, next_site.e0, next_site.n, job.vector_access, &next);
      }
    } else {
      LoadRawBlock<kDtype>(job.x, site.e0, site.n, job.vector_access, &raw);
    }
    const ScaleSearchParams params = search;
    ProcessBlock<kDtype, kWeights, kSearchWeighted>(job, table, params, site, raw, totals);
  }
}

// Calls fn(dtype_tag, weights_tag, search_weighted_tag) with std::integral_constant tags for
// the job's variant: the one place that maps a request to a QuantizeThreadBlocks instantiation.
// Calls fn(std::integral_constant<DType, dtype>{}): host code picking the template instance of
// a kernel or per-thread function for a run-time dtype.
template <typename Fn>
void DispatchDtype(DType dtype, Fn&& fn) {
  switch (dtype) {
    case DType::kF32:
      fn(std::integral_constant<DType, DType::kF32>{});
      break;
    case DType::kBF16:
      fn(std::integral_constant<DType, DType::kBF16>{});
      break;
    case DType::kF16:
      fn(std::integral_constant<DType, DType::kF16>{});
      break;
  }
}

template <typename Fn>
void DispatchBlockVariant(const BlockJob& job, Fn&& fn) {
  const bool weights = job.layout != ImportanceLayout::kNone;
  const bool search_weighted = weights && job.objective == Objective::kWmse;
  auto with_dtype = [&](auto dtype_tag) {
    if (search_weighted) {
      fn(dtype_tag, std::true_type{}, std::true_type{});
    } else if (weights) {
      fn(dtype_tag, std::true_type{}, std::false_type{});
    } else {
      fn(dtype_tag, std::false_type{}, std::false_type{});
    }
  };
  DispatchDtype(job.dtype, with_dtype);
}

}  // namespace nvfp4::cuda

#endif  // NVFP4_KERNELS_CUDA_DEVICE_BLOCK_H_
