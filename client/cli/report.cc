#include "client/cli/report.h"

#include <cmath>
#include <cstdio>

namespace nvfp4::cli {

nlohmann::json Number(double value) {
  if (!std::isfinite(value)) return nullptr;
  return value;
}

nlohmann::json QuantizationJson(const QuantizeOptions& options, const QuantizedTensor& result) {
  const TensorMetrics& m = result.metrics;
  nlohmann::json j;
  j["method"] = std::string(MethodName(options.method));
  j["objective"] = std::string(ObjectiveName(options.objective));
  j["scale_max"] = options.scale_max;
  j["global_scale"] = result.global_scale;
  j["amax"] = result.amax;
  j["rows"] = result.rows;
  j["cols"] = result.cols;
  j["mse"] = Number(m.mse);
  if (m.weighted) j["wmse"] = Number(m.wmse);
  j["nmse"] = Number(m.nmse);
  j["sqnr_db"] = Number(m.sqnr_db);
  j["max_abs_error"] = Number(m.max_abs_error);
  j["absmax_mse"] = Number(m.absmax_mse);
  j["gain"] = Number(m.gain);
  if (m.weighted) {
    j["absmax_wmse"] = Number(m.absmax_wmse);
    j["wmse_gain"] = Number(m.wmse_gain);
  }
  j["candidates_per_block"] = m.candidates_per_block;
  j["seconds"] = m.seconds;
  j["elements_per_second"] = m.elements_per_second;
  return j;
}

std::string HumanRate(double per_second) {
  const char* unit = "";
  double v = per_second;
  if (v >= 1e9) {
    v /= 1e9;
    unit = "G";
  } else if (v >= 1e6) {
    v /= 1e6;
    unit = "M";
  } else if (v >= 1e3) {
    v /= 1e3;
    unit = "k";
  }
  char buffer[32];
  std::snprintf(buffer, sizeof(buffer), "%.3g %s", v, unit);
  return buffer;
}

}  // namespace nvfp4::cli
