// Per-tensor error metrics, accumulated block by block in fp64 while quantising.
//
// ErrorAccumulator holds raw sums for a range of blocks; accumulators are merged in a fixed
// order (by row chunk), so the metrics do not depend on the thread count. Not thread-safe:
// one accumulator per chunk.
#ifndef NVFP4_KERNELS_METRICS_H_
#define NVFP4_KERNELS_METRICS_H_

#include <cstdint>

namespace nvfp4 {

struct ErrorAccumulator {
  double squared_error = 0;                  // sum (x - x^)^2
  double weighted_squared_error = 0;         // sum w (x - x^)^2 (normalised weights)
  double weight_sum = 0;                     // sum w (normalised weights)
  double squared_signal = 0;                 // sum x^2
  double absmax_squared_error = 0;           // the AbsMax baseline's sum (x - x^)^2
  double absmax_weighted_squared_error = 0;  // the AbsMax baseline's sum w (x - x^)^2
  double max_abs_error = 0;
  int64_t candidates = 0;  // loss evaluations
  int64_t blocks = 0;

  void Merge(const ErrorAccumulator& other);
};

// An accumulator from metric sums in MetricSum order (kernels/numerics/block_math.h): squared
// error, weighted squared error, weight sum, squared signal, AbsMax squared error, AbsMax
// weighted squared error.
ErrorAccumulator MakeErrorAccumulator(const double* sums, double max_abs_error, int64_t candidates,
                                      int64_t blocks);

struct TensorMetrics {
  int64_t elements = 0;
  int64_t blocks = 0;
  bool weighted = false;        // wmse is meaningful
  bool wmse_objective = false;  // the scales were chosen for WMSE (implies weighted)
  double mse = 0;               // mean squared error per element
  double wmse = 0;              // sum w e^2 / sum w (0 when not weighted)
  double nmse = 0;              // sum e^2 / sum x^2 (0 for an all-zero tensor)
  double sqnr_db = 0;           // 10 log10(sum x^2 / sum e^2); +inf when exact
  double max_abs_error = 0;
  double absmax_mse = 0;   // MSE of AbsMax with the same global scale
  double gain = 1;         // mse / absmax_mse (1 when both are 0)
  double absmax_wmse = 0;  // WMSE of AbsMax with the same global scale (0 when not weighted)
  double wmse_gain = 1;    // wmse / absmax_wmse (1 when not weighted or both are 0)
  double candidates_per_block = 0;
  double seconds = 0;
  double elements_per_second = 0;
};

// elements: real (unpadded) element count; weighted: importance was given; wmse_objective:
// the scales minimised WMSE.
TensorMetrics FinalizeMetrics(const ErrorAccumulator& sums, int64_t elements, bool weighted,
                              bool wmse_objective, double seconds);

// The ratio to AbsMax of the error the scales were chosen for: wmse_gain for the WMSE
// objective (the plain MSE of a WMSE quantisation may well exceed AbsMax's), else gain.
inline double ObjectiveGain(const TensorMetrics& m) {
  return m.wmse_objective ? m.wmse_gain : m.gain;
}

}  // namespace nvfp4

#endif  // NVFP4_KERNELS_METRICS_H_
