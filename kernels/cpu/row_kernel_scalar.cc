// Scalar row kernel: the reference, built from the shared __host__ __device__ block functions
// only. Compiled for the baseline ISA.
#include <cmath>
#include <cstring>

#include "kernels/cpu/row_driver.h"
#include "kernels/cpu/row_kernel.h"
#include "kernels/numerics/half.h"

namespace nvfp4::cpu {
namespace {

struct ScalarOps {
  using Block = ScalarBlock;
  using Lanes = MetricLanes;
  static void Summarize(const float* x, int blocks, float six_g, float* m, uint8_t* absmax) {
    for (int b = 0; b < blocks; ++b) {
      m[b] = BlockMaxAbs(x + b * kBlockSize);
      absmax[b] = AbsMaxScaleCode(m[b], six_g);
    }
  }
  static void Prepare(const float* x, const float* w, const ScaleTable& table, float m,
                      uint8_t absmax, Block* block) {
    PrepareScalarBlock(x, w, table, m, absmax, block);
  }
  static void Finalize(const float* x, const float* w, const ScaleTable& table, int code,
                       int absmax_code, uint8_t* packed, Lanes* lanes) {
    EncodeBlock(x, table, code, packed);
    AccumulateBlockMetrics(x, w, table, code, absmax_code, lanes);
  }
  static void Dequantize(const float* x, const ScaleTable& table, int code, float* out, int n) {
    for (int i = 0; i < n; ++i) {
      out[i] = DequantizeNibble(EncodeElement(x[i], table, code), table.effective_scale[code]);
    }
  }
  static void Clear(Lanes* lanes) { ClearMetricLanes(lanes); }
  static void Fold(Lanes* lanes) { FoldMetricLanes(lanes); }
  static MetricTotals Flush(Lanes* lanes) { return FlushMetricLanes(lanes); }
};

}  // namespace

void QuantizeRowsScalar(const RowKernelArgs& args) { QuantizeRowsWith<ScalarOps>(args); }

namespace {

// Element i of an array that may lie at any address: a streamed tensor is read where its bytes
// arrived, at any offset of a received message. memcpy is the defined way to load it (a typed
// load of a misaligned address is undefined behaviour; UBSan reports it); compilers emit the
// same plain load.
template <typename T>
T LoadAt(const void* base, int64_t i) {
  T value;
  std::memcpy(&value, static_cast<const uint8_t*>(base) + static_cast<size_t>(i) * sizeof(T),
              sizeof(T));
  return value;
}

}  // namespace

void ConvertToF32Scalar(DType dtype, const void* src, int64_t n, float* dst) {
  switch (dtype) {
    case DType::kF32:
      std::memcpy(dst, src, static_cast<size_t>(n) * sizeof(float));
      break;
    case DType::kBF16:
      for (int64_t i = 0; i < n; ++i) dst[i] = Bf16BitsToFloat(LoadAt<uint16_t>(src, i));
      break;
    case DType::kF16:
      for (int64_t i = 0; i < n; ++i) dst[i] = HalfBitsToFloat(LoadAt<uint16_t>(src, i));
      break;
  }
}

uint16_t HalfInfinityBits(DType dtype) { return dtype == DType::kBF16 ? 0x7f80 : 0x7c00; }

ScanResult ScanHalfScalar(DType dtype, const uint16_t* x, int64_t n) {
  const uint16_t infinity = HalfInfinityBits(dtype);
  uint16_t max_magnitude = 0;
  ScanResult result;
  for (int64_t i = 0; i < n; ++i) {
    const uint16_t m = LoadAt<uint16_t>(x, i) & 0x7fff;
    if (m >= infinity) {
      ++result.non_finite;
    } else if (m > max_magnitude) {
      max_magnitude = m;
    }
  }
  result.max_abs =
      dtype == DType::kBF16 ? Bf16BitsToFloat(max_magnitude) : HalfBitsToFloat(max_magnitude);
  return result;
}

ScanResult ScanF32Scalar(const float* x, int64_t n) {
  ScanResult result;
  for (int64_t i = 0; i < n; ++i) {
    const float a = std::fabs(LoadAt<float>(x, i));
    if (!(a <= 3.4028234663852886e38f)) {
      ++result.non_finite;
    } else if (a > result.max_abs) {
      result.max_abs = a;
    }
  }
  return result;
}

}  // namespace nvfp4::cpu
