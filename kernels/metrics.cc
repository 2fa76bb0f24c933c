#include "kernels/metrics.h"

#include <algorithm>
#include <cmath>
#include <limits>

namespace nvfp4 {

void ErrorAccumulator::Merge(const ErrorAccumulator& other) {
  squared_error += other.squared_error;
  weighted_squared_error += other.weighted_squared_error;
  weight_sum += other.weight_sum;
  squared_signal += other.squared_signal;
  absmax_squared_error += other.absmax_squared_error;
  absmax_weighted_squared_error += other.absmax_weighted_squared_error;
  max_abs_error = std::max(max_abs_error, other.max_abs_error);
  candidates += other.candidates;
  blocks += other.blocks;
}

ErrorAccumulator MakeErrorAccumulator(const double* sums, double max_abs_error, int64_t candidates,
                                      int64_t blocks) {
  ErrorAccumulator a;
  a.squared_error = sums[0];
  a.weighted_squared_error = sums[1];
  a.weight_sum = sums[2];
  a.squared_signal = sums[3];
  a.absmax_squared_error = sums[4];
  a.absmax_weighted_squared_error = sums[5];
  a.max_abs_error = max_abs_error;
  a.candidates = candidates;
  a.blocks = blocks;
  return a;
}

namespace {

// error / baseline: +inf when only the baseline is exact, 1 when both are.
double GainOver(double error, double baseline) {
  if (baseline > 0) return error / baseline;
  return error > 0 ? std::numeric_limits<double>::infinity() : 1.0;
}

}  // namespace

TensorMetrics FinalizeMetrics(const ErrorAccumulator& sums, int64_t elements, bool weighted,
                              bool wmse_objective, double seconds) {
  TensorMetrics m;
  m.elements = elements;
  m.blocks = sums.blocks;
  m.weighted = weighted;
  m.wmse_objective = weighted && wmse_objective;
  const double n = elements > 0 ? static_cast<double>(elements) : 1.0;
  m.mse = sums.squared_error / n;
  m.wmse = weighted && sums.weight_sum > 0 ? sums.weighted_squared_error / sums.weight_sum : 0.0;
  m.nmse = sums.squared_signal > 0 ? sums.squared_error / sums.squared_signal : 0.0;
  if (sums.squared_error > 0) {
    m.sqnr_db = sums.squared_signal > 0
                    ? 10.0 * std::log10(sums.squared_signal / sums.squared_error)
                    : -std::numeric_limits<double>::infinity();
  } else {
    m.sqnr_db = std::numeric_limits<double>::infinity();
  }
  m.max_abs_error = sums.max_abs_error;
  m.absmax_mse = sums.absmax_squared_error / n;
  m.gain = GainOver(sums.squared_error, sums.absmax_squared_error);
  if (weighted && sums.weight_sum > 0) {
    m.absmax_wmse = sums.absmax_weighted_squared_error / sums.weight_sum;
    m.wmse_gain = GainOver(sums.weighted_squared_error, sums.absmax_weighted_squared_error);
  }
  m.candidates_per_block =
      sums.blocks > 0 ? static_cast<double>(sums.candidates) / static_cast<double>(sums.blocks) : 0;
  m.seconds = seconds;
  m.elements_per_second = seconds > 0 ? static_cast<double>(elements) / seconds : 0.0;
  return m;
}

}  // namespace nvfp4
