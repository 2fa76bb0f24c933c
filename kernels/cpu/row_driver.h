// The row loop shared by every ISA variant: per block, prepare the ISA's block representation,
// run ChooseBlockScale, then encode and accumulate the metric lanes. Included only by the row
// kernel translation units, each compiled for its instruction set. `Ops` supplies:
//   using Block;  using Lanes;   (Lanes: the ISA's form of MetricLanes)
//   static void Prepare(const float* x, const float* w, const ScaleTable&, Block*);
//   static void Finalize(const float* x, const float* w, const ScaleTable&, int code,
//                        int absmax_code, uint8_t* packed8, Lanes*);   // encode + metrics
//   static void Dequantize(const float* x, const ScaleTable&, int code, float* out, int n);
//   static void Clear(Lanes*);  static MetricTotals Flush(const Lanes&);
// No std:: templates are used here: this header is compiled with AVX flags, and a shared
// template instantiation could be picked by the linker for baseline code.
#ifndef NVFP4_KERNELS_CPU_ROW_DRIVER_H_
#define NVFP4_KERNELS_CPU_ROW_DRIVER_H_

#include "kernels/cpu/row_kernel.h"
#include "kernels/numerics/block_math.h"
#include "kernels/numerics/scale_search.h"

namespace nvfp4::cpu {
namespace {

template <typename Ops>
void QuantizeRowsWith(const RowKernelArgs& a) {
  const int64_t blocks_per_row = a.padded_cols / kBlockSize;
  const bool search_weighted = a.params.objective == Objective::kWmse;
  const ScaleTable& table = *a.table;
  typename Ops::Lanes lanes;
  Ops::Clear(&lanes);
  int64_t candidates = 0;
  for (int64_t r = 0; r < a.rows; ++r) {
    const float* row_x = a.x + r * a.padded_cols;
    const float* row_w =
        a.weights ? (a.weights_per_element ? a.weights + r * a.padded_cols : a.weights) : nullptr;
    for (int64_t b = 0; b < blocks_per_row; ++b) {
      const float* x = row_x + b * kBlockSize;
      const float* w = row_w ? row_w + b * kBlockSize : nullptr;
      typename Ops::Block block;
      Ops::Prepare(x, search_weighted ? w : nullptr, table, &block);
      const BlockChoice choice = ChooseBlockScale(block, a.params);
      a.scales[r * blocks_per_row + b] = choice.code;
      Ops::Finalize(x, w, table, choice.code, choice.absmax,
                    a.packed + r * (a.padded_cols / 2) + b * 8, &lanes);
      candidates += choice.candidates;
      if (a.dequantized) {
        const int64_t first = b * kBlockSize;
        const int64_t left = a.cols - first;
        const int n = static_cast<int>(left < kBlockSize ? left : kBlockSize);
        if (n > 0) Ops::Dequantize(x, table, choice.code, a.dequantized + r * a.cols + first, n);
      }
    }
  }
  const MetricTotals totals = Ops::Flush(lanes);
  ErrorAccumulator& sums = *a.sums;
  sums.squared_error = totals.squared_error;
  sums.weighted_squared_error = totals.weighted_squared_error;
  sums.weight_sum = totals.weight_sum;
  sums.squared_signal = totals.squared_signal;
  sums.absmax_squared_error = totals.absmax_squared_error;
  sums.max_abs_error = totals.max_abs_error;
  sums.candidates = candidates;
  sums.blocks = a.rows * blocks_per_row;
}

}  // namespace
}  // namespace nvfp4::cpu

#endif  // NVFP4_KERNELS_CPU_ROW_DRIVER_H_
