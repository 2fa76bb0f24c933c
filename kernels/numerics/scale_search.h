// The block-scale search: one definition of every method's candidate set, order and tie rule,
// written once as a template over the block representation so the scalar engine, the SIMD
// engines and the CUDA kernels share it.
//
// A Block provides:  float max_abs() const;       // m = max |x_i|
//                    uint8_t absmax_code() const; // AbsMaxScaleCode(m, fl(6 g))
//                    float total_weight() const;  // W (only called for WMSE)
//                    float wmse_lower_bound() const;
//                    float loss(int code) const;  // the defined loss (block_math.h)
// Rules (docs/numerics.md):
//  - m == 0: scale 1.0 (0x38), like ModelOpt; WMSE blocks with W == 0: the AbsMax scale.
//  - candidates are visited in increasing code order and a candidate replaces the best only
//    with a strictly smaller loss, so ties keep the smallest scale (for four-over-six: the
//    "6" candidate).
#ifndef NVFP4_KERNELS_NUMERICS_SCALE_SEARCH_H_
#define NVFP4_KERNELS_NUMERICS_SCALE_SEARCH_H_

#include <cstdint>

#include "kernels/numerics/block_math.h"
#include "kernels/numerics/hd.h"
#include "kernels/numerics/method.h"
#include "kernels/numerics/scale_table.h"

namespace nvfp4 {

// Per-tensor constants of the search.
struct ScaleSearchParams {
  Method method;
  Objective objective;
  float six_g;   // fl(6 g)
  float four_g;  // fl(4 g)
  float inv_g;   // fl(1 / g)
};

NVFP4_HD ScaleSearchParams MakeScaleSearchParams(Method method, Objective objective, float g) {
  ScaleSearchParams params;
  params.method = method;
  params.objective = objective;
  params.six_g = 6.0f * g;
  params.four_g = 4.0f * g;
  params.inv_g = 1.0f / g;
  return params;
}

struct BlockChoice {
  uint8_t code;    // chosen E4M3 scale byte
  uint8_t absmax;  // the AbsMax code (the metrics' baseline)
  int candidates;  // losses evaluated (AbsMax and fixed choices count 1)
};

template <typename Block>
NVFP4_HD BlockChoice ChooseBlockScale(const Block& block, const ScaleSearchParams& params) {
  const float m = block.max_abs();
  if (m == 0.0f) return BlockChoice{kE4M3One, kE4M3One, 1};
  const uint8_t absmax = block.absmax_code();
  if (params.method == Method::kAbsMax) return BlockChoice{absmax, absmax, 1};
  const bool weighted = params.objective == Objective::kWmse;
  if (weighted && !(block.total_weight() > 0.0f)) return BlockChoice{absmax, absmax, 1};

  if (params.method == Method::kFourOverSix) {
    const uint8_t four = AbsMaxScaleCode(m, params.four_g);
    if (four == absmax) return BlockChoice{absmax, absmax, 1};
    const float loss_six = block.loss(absmax);
    const float loss_four = block.loss(four);
    return BlockChoice{loss_four < loss_six ? four : absmax, absmax, 2};
  }

  int lo = 1, hi = kE4M3MaxCode, tail_end = kE4M3MaxCode;
  if (params.method == Method::kScaleSweep) {
    const float lower = weighted ? block.wmse_lower_bound() : MseLowerBound(m);
    const SweepWindow window = ComputeSweepWindow(m, lower, params.inv_g);
    lo = window.lo;
    hi = window.hi;
    tail_end = window.tail_end;
  }
  // Branch-free update: which candidate wins is data-dependent and would mispredict.
  int best = absmax;
  float best_loss = BitsToFloat(0x7F800000u);  // +inf: the first candidate always wins
  int evaluated = 0;
  for (int c = lo; c <= hi; ++c) {
    const float loss = block.loss(c);
    const bool better = loss < best_loss;
    best = better ? c : best;
    best_loss = better ? loss : best_loss;
    ++evaluated;
  }
  // Caveat (i): odd codes below 16 above the window have no half scale to dominate them.
  for (int c = (hi + 1) | 1; c <= tail_end && c < 16; c += 2) {
    const float loss = block.loss(c);
    const bool better = loss < best_loss;
    best = better ? c : best;
    best_loss = better ? loss : best_loss;
    ++evaluated;
  }
  return BlockChoice{static_cast<uint8_t>(best), absmax, evaluated};
}

// Scalar block: the reference representation, used by the scalar CPU path and the tests.
struct ScalarBlock {
  float ax[kBlockSize];   // |x|
  float axp[kBlockSize];  // |x| * p
  float w[kBlockSize];    // weights times a power of two, max in [1, 4) (WMSE only)
  bool weighted;
  uint8_t absmax;
  float m, p, inv_p, w_total;
  const ScaleTable* table;

  NVFP4_HD_METHOD float max_abs() const { return m; }
  NVFP4_HD_METHOD uint8_t absmax_code() const { return absmax; }
  NVFP4_HD_METHOD float total_weight() const { return w_total; }
  NVFP4_HD_METHOD float wmse_lower_bound() const { return WmseLowerBound(axp, w, w_total, inv_p); }
  NVFP4_HD_METHOD float loss(int code) const {
    return CandidateLoss(ax, axp, weighted ? w : nullptr, *table, code, p);
  }
};

// max |x_i|; with a NaN among x the result is unspecified (such inputs fail the call).
NVFP4_HD float BlockMaxAbs(const float* x) {
  float m = 0.0f;
  for (int i = 0; i < kBlockSize; ++i) m = MaxMagnitude(m, AbsF(x[i]));
  return m;
}

// Fills a ScalarBlock from 16 values, their max |x| m and AbsMax code (see BlockMaxAbs,
// AbsMaxScaleCode) and, for WMSE, their 16 weights. The weights of nonzero elements are scaled
// by the power of two that brings their maximum into [1, 4): exact, so the argmin is unchanged,
// and w * d^2 cannot overflow whatever the importance range.
NVFP4_HD void PrepareScalarBlock(const float* x, const float* weights, const ScaleTable& table,
                                 float m, uint8_t absmax, ScalarBlock* block) {
  for (int i = 0; i < kBlockSize; ++i) block->ax[i] = AbsF(x[i]);
  block->m = m;
  block->absmax = absmax;
  block->p = BlockNormalizer(m);
  block->inv_p = BlockDenormalizer(m);
  for (int i = 0; i < kBlockSize; ++i) block->axp[i] = block->ax[i] * block->p;
  block->weighted = weights != nullptr;
  block->w_total = 0.0f;
  if (block->weighted) {
    // Zero elements quantise to 0 under every scale: their weight cannot change any loss, so
    // it is dropped (this also tightens the WMSE lower bound, whose W_{-j} then counts only
    // elements that can contribute).
    float w_max = 0.0f;
    for (int i = 0; i < kBlockSize; ++i) {
      block->w[i] = block->ax[i] > 0.0f ? weights[i] : 0.0f;
      w_max = MaxF(w_max, block->w[i]);
    }
    const float w_scale = BlockNormalizer(w_max);
    for (int i = 0; i < kBlockSize; ++i) block->w[i] = block->w[i] * w_scale;
    block->w_total = TreeSum16(block->w);
  }
  block->table = &table;
}

// Same, computing m and the AbsMax code (params.six_g) itself.
NVFP4_HD void PrepareScalarBlock(const float* x, const float* weights, const ScaleTable& table,
                                 const ScaleSearchParams& params, ScalarBlock* block) {
  const float m = BlockMaxAbs(x);
  PrepareScalarBlock(x, weights, table, m, AbsMaxScaleCode(m, params.six_g), block);
}

}  // namespace nvfp4

#endif  // NVFP4_KERNELS_NUMERICS_SCALE_SEARCH_H_
