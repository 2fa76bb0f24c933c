// Rendering quantisation results for people (aligned text) and scripts (JSON). The JSON field
// names are a stable interface (docs/cli.md).
#ifndef NVFP4_CLIENT_CLI_REPORT_H_
#define NVFP4_CLIENT_CLI_REPORT_H_

#include <string>

#include "kernels/quantize_options.h"
#include "kernels/quantized_tensor.h"
#include "nlohmann/json.hpp"

namespace nvfp4::cli {

// method, objective, scale_max, global_scale, amax, rows, cols, mse, [wmse], nmse, sqnr_db,
// max_abs_error, absmax_mse, gain, candidates_per_block, seconds, elements_per_second.
nlohmann::json QuantizationJson(const QuantizeOptions& options, const QuantizedTensor& result);

// JSON cannot hold inf/nan: such values become null.
nlohmann::json Number(double value);

// "1.23 G" style rate with 3 significant digits.
std::string HumanRate(double per_second);

}  // namespace nvfp4::cli

#endif  // NVFP4_CLIENT_CLI_REPORT_H_
