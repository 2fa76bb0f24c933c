// Row kernels: quantise a run of rows whose global scale is already fixed. One implementation
// per instruction set (scalar, AVX2, AVX-512), all producing identical bytes and metric sums;
// the per-block search logic is the shared ChooseBlockScale template, the ISA variants only
// provide the block representation. Internal to the CPU backend.
#ifndef NVFP4_KERNELS_CPU_ROW_KERNEL_H_
#define NVFP4_KERNELS_CPU_ROW_KERNEL_H_

#include <cstdint>

#include "kernels/metrics.h"
#include "kernels/numerics/scale_search.h"
#include "kernels/numerics/scale_table.h"
#include "kernels/tensor.h"

namespace nvfp4::cpu {

struct RowKernelArgs {
  const float* x = nullptr;        // [rows, padded_cols] fp32, padding zeros
  const float* weights = nullptr;  // importance: [padded_cols] or [rows, padded_cols], pad 0
  bool weights_per_element = false;
  int64_t rows = 0;
  int64_t cols = 0;
  int64_t padded_cols = 0;
  const ScaleTable* table = nullptr;
  ScaleSearchParams params{};
  uint8_t* packed = nullptr;     // [rows, padded_cols / 2]
  uint8_t* scales = nullptr;     // [rows, padded_cols / 16]
  float* dequantized = nullptr;  // [rows, cols] or nullptr
  ErrorAccumulator* sums = nullptr;
};

using RowKernelFn = void (*)(const RowKernelArgs&);
void QuantizeRowsScalar(const RowKernelArgs& args);
void QuantizeRowsAvx2(const RowKernelArgs& args);
void QuantizeRowsAvx512(const RowKernelArgs& args);

// Widening conversion of n values of `dtype` at src to fp32 (exact), per ISA.
using ConvertFn = void (*)(DType dtype, const void* src, int64_t n, float* dst);
void ConvertToF32Scalar(DType dtype, const void* src, int64_t n, float* dst);
void ConvertToF32Avx2(DType dtype, const void* src, int64_t n, float* dst);
void ConvertToF32Avx512(DType dtype, const void* src, int64_t n, float* dst);

// max |x| over n fp32 values and the number of non-finite ones, per ISA.
struct ScanResult {
  float max_abs = 0;
  int64_t non_finite = 0;
};
using ScanFn = ScanResult (*)(const float* x, int64_t n);
ScanResult ScanF32Scalar(const float* x, int64_t n);
ScanResult ScanF32Avx2(const float* x, int64_t n);
ScanResult ScanF32Avx512(const float* x, int64_t n);

// The same over n bf16 or f16 values (dtype), on their bits without widening: for finite
// values the magnitude order of these formats is the integer order of (bits & 0x7fff), and
// non-finite values are those at or above the infinity pattern. max_abs equals what
// ConvertToF32 + ScanF32 report.
using ScanHalfFn = ScanResult (*)(DType dtype, const uint16_t* x, int64_t n);
ScanResult ScanHalfScalar(DType dtype, const uint16_t* x, int64_t n);
ScanResult ScanHalfAvx2(DType dtype, const uint16_t* x, int64_t n);
ScanResult ScanHalfAvx512(DType dtype, const uint16_t* x, int64_t n);
// Infinity's magnitude bits in `dtype` (shared by the ISAs).
uint16_t HalfInfinityBits(DType dtype);

}  // namespace nvfp4::cpu

#endif  // NVFP4_KERNELS_CPU_ROW_KERNEL_H_
