// The row loop shared by every ISA variant: per block, prepare the ISA's block representation,
// run ChooseBlockScale, then encode and accumulate the metric lanes. Included only by the row
// kernel translation units, each compiled for its instruction set. `Ops` supplies:
//   using Block;  using Lanes;   (Lanes: the ISA's form of MetricLanes)
//   static void Summarize(const float* x, int blocks, float six_g, float* m, uint8_t* absmax);
//       (max |x| and AbsMax code of `blocks` consecutive blocks: AbsMaxScaleCode(m, six_g))
//   static void Prepare(const float* x, const float* w, const ScaleTable&, float m,
//                       uint8_t absmax, Block*);
//   static void Finalize(const float* x, const float* w, const ScaleTable&, int code,
//                        int absmax_code, uint8_t* packed8, Lanes*);   // encode + metrics
//       (absmax_code -1: the choice is the AbsMax code itself)
//   static void Dequantize(const float* x, const ScaleTable&, int code, float* out, int n);
//   static void Clear(Lanes*);  static void Fold(Lanes*);  static MetricTotals Flush(Lanes*);
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
  const bool absmax_method = a.params.method == Method::kAbsMax;
  const ScaleTable& table = *a.table;
  typename Ops::Lanes lanes;
  Ops::Clear(&lanes);
  int64_t candidates = 0;
  int blocks_since_fold = 0;
  for (int64_t r = 0; r < a.rows; ++r) {
    const float* row_x = a.x + r * a.padded_cols;
    const float* row_w =
        a.weights ? (a.weights_per_element ? a.weights + r * a.padded_cols : a.weights) : nullptr;
    // Block maxima and AbsMax codes are computed per group first: that loop has no
    // loop-carried dependency, so the long max -> divide -> encode chains overlap.
    constexpr int kGroup = kMetricFoldBlocks;
    float group_max[kGroup];
    uint8_t group_absmax[kGroup];
    for (int64_t b = 0; b < blocks_per_row; ++b) {
      const int g = static_cast<int>(b % kGroup);
      if (g == 0) {
        const int64_t left = blocks_per_row - b;
        Ops::Summarize(row_x + b * kBlockSize, static_cast<int>(left < kGroup ? left : kGroup),
                       a.params.six_g, group_max, group_absmax);
      }
      const float* x = row_x + b * kBlockSize;
      const float* w = row_w ? row_w + b * kBlockSize : nullptr;
      typename Ops::Block block;
      Ops::Prepare(x, search_weighted ? w : nullptr, table, group_max[g], group_absmax[g], &block);
      const BlockChoice choice = ChooseBlockScale(block, a.params);
      a.scales[r * blocks_per_row + b] = choice.code;
      // For method absmax the baseline is the choice itself; -1 tells Finalize so (a
      // per-tensor, hence well-predicted, condition).
      Ops::Finalize(x, w, table, choice.code, absmax_method ? -1 : choice.absmax,
                    a.packed + r * (a.padded_cols / 2) + b * 8, &lanes);
      candidates += choice.candidates;
      if (++blocks_since_fold == kMetricFoldBlocks) {
        Ops::Fold(&lanes);
        blocks_since_fold = 0;
      }
      if (a.dequantized) {
        const int64_t first = b * kBlockSize;
        const int64_t left = a.cols - first;
        const int n = static_cast<int>(left < kBlockSize ? left : kBlockSize);
        if (n > 0) Ops::Dequantize(x, table, choice.code, a.dequantized + r * a.cols + first, n);
      }
    }
  }
  const MetricTotals totals = Ops::Flush(&lanes);
  *a.sums =
      MakeErrorAccumulator(totals.sum, totals.max_abs_error, candidates, a.rows * blocks_per_row);
}

}  // namespace
}  // namespace nvfp4::cpu

#endif  // NVFP4_KERNELS_CPU_ROW_DRIVER_H_
