#include "server/checkpoint/checkpoint_report.h"

#include <cmath>
#include <exception>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"

namespace nvfp4::checkpoint {
namespace {

using Json = nlohmann::ordered_json;

// JSON has no infinity: an exact tensor's SQNR is written as null.
Json Finite(double v) { return std::isfinite(v) ? Json(v) : Json(nullptr); }

}  // namespace

Json TensorReportToJson(const TensorReport& t) {
  Json j = Json::object();
  j["name"] = t.name;
  j["shape"] = t.shape;
  j["dtype"] = t.dtype;
  j["quantized"] = t.quantized;
  j["shard"] = t.shard;
  j["input_bytes"] = t.input_bytes;
  j["output_bytes"] = t.output_bytes;
  if (!t.quantized) {
    j["reason"] = t.reason;
    return j;
  }
  j["method"] = t.method;
  j["objective"] = t.objective;
  j["group"] = t.group;
  j["amax"] = t.amax;
  j["global_scale"] = t.global_scale;
  if (t.input_amax >= 0) j["input_amax"] = t.input_amax;
  const TensorMetrics& m = t.metrics;
  j["elements"] = m.elements;
  j["mse"] = m.mse;
  if (m.weighted) j["wmse"] = m.wmse;
  j["nmse"] = m.nmse;
  j["sqnr_db"] = Finite(m.sqnr_db);
  j["max_abs_error"] = m.max_abs_error;
  j["absmax_mse"] = m.absmax_mse;
  j["gain"] = m.gain;
  if (m.weighted) {
    j["absmax_wmse"] = m.absmax_wmse;
    j["wmse_gain"] = m.wmse_gain;
  }
  j["candidates_per_block"] = m.candidates_per_block;
  j["seconds"] = t.seconds;
  return j;
}

absl::StatusOr<TensorReport> TensorReportFromJson(const Json& j) {
  try {
    TensorReport t;
    t.name = j.at("name").get<std::string>();
    t.shape = j.at("shape").get<std::vector<int64_t>>();
    t.dtype = j.at("dtype").get<std::string>();
    t.quantized = j.at("quantized").get<bool>();
    t.shard = j.at("shard").get<int>();
    t.input_bytes = j.at("input_bytes").get<uint64_t>();
    t.output_bytes = j.at("output_bytes").get<uint64_t>();
    if (!t.quantized) {
      t.reason = j.at("reason").get<std::string>();
      return t;
    }
    t.method = j.at("method").get<std::string>();
    t.objective = j.at("objective").get<std::string>();
    t.group = j.at("group").get<std::string>();
    t.amax = j.at("amax").get<float>();
    t.global_scale = j.at("global_scale").get<float>();
    t.input_amax = j.contains("input_amax") ? j.at("input_amax").get<float>() : -1.0f;
    TensorMetrics& m = t.metrics;
    m.elements = j.at("elements").get<int64_t>();
    m.blocks = m.elements / 16;
    m.mse = j.at("mse").get<double>();
    // Rows of reports written before absmax_wmse existed count as unweighted: their totals
    // would compare WMSE with a missing baseline.
    m.weighted = j.contains("wmse") && j.contains("absmax_wmse");
    m.wmse = m.weighted ? j.at("wmse").get<double>() : 0.0;
    m.wmse_objective = m.weighted && t.objective == "wmse";
    // Absent from reports written before these fields existed (a resumed job's journal).
    m.absmax_wmse = j.value("absmax_wmse", 0.0);
    m.wmse_gain = j.value("wmse_gain", 1.0);
    m.nmse = j.at("nmse").get<double>();
    m.sqnr_db = j.at("sqnr_db").is_null() ? INFINITY : j.at("sqnr_db").get<double>();
    m.max_abs_error = j.at("max_abs_error").get<double>();
    m.absmax_mse = j.at("absmax_mse").get<double>();
    m.gain = j.at("gain").get<double>();
    m.candidates_per_block = j.at("candidates_per_block").get<double>();
    t.seconds = j.at("seconds").get<double>();
    return t;
  } catch (const std::exception& e) {
    return absl::InvalidArgumentError(absl::StrCat("bad tensor report: ", e.what()));
  }
}

void ComputeTotals(CheckpointReport& report) {
  CheckpointTotals& s = report.totals;
  s.tensors = static_cast<int>(report.tensors.size());
  s.quantized = s.passed_through = 0;
  s.quantized_elements = 0;
  s.input_bytes = s.output_bytes = 0;
  double sq = 0, absmax_sq = 0, nmse_weighted = 0;
  double weighted_n = 0, wsq = 0, absmax_wsq = 0;
  for (const TensorReport& t : report.tensors) {
    s.input_bytes += t.input_bytes;
    s.output_bytes += t.output_bytes;
    if (!t.quantized) {
      ++s.passed_through;
      continue;
    }
    ++s.quantized;
    const double n = static_cast<double>(t.metrics.elements);
    s.quantized_elements += t.metrics.elements;
    sq += t.metrics.mse * n;
    absmax_sq += t.metrics.absmax_mse * n;
    nmse_weighted += t.metrics.nmse * n;
    if (t.metrics.weighted) {
      weighted_n += n;
      wsq += t.metrics.wmse * n;
      absmax_wsq += t.metrics.absmax_wmse * n;
    }
  }
  const double n = static_cast<double>(s.quantized_elements);
  s.mse = n > 0 ? sq / n : 0;
  s.absmax_mse = n > 0 ? absmax_sq / n : 0;
  s.nmse = n > 0 ? nmse_weighted / n : 0;
  s.gain = absmax_sq > 0 ? sq / absmax_sq : 1;
  s.weighted = weighted_n > 0;
  s.wmse = weighted_n > 0 ? wsq / weighted_n : 0;
  s.absmax_wmse = weighted_n > 0 ? absmax_wsq / weighted_n : 0;
  s.wmse_gain = absmax_wsq > 0 ? wsq / absmax_wsq : 1;
}

TensorMetrics TotalsAsMetrics(const CheckpointReport& report) {
  const CheckpointTotals& s = report.totals;
  TensorMetrics m;
  m.elements = s.quantized_elements;
  m.blocks = s.quantized_elements / 16;
  m.mse = s.mse;
  m.nmse = s.nmse;
  m.sqnr_db = s.nmse > 0 ? -10.0 * std::log10(s.nmse) : INFINITY;
  m.absmax_mse = s.absmax_mse;
  m.gain = s.gain;
  m.weighted = s.weighted;
  m.wmse_objective = s.weighted && report.objective == "wmse";
  m.wmse = s.wmse;
  m.absmax_wmse = s.absmax_wmse;
  m.wmse_gain = s.wmse_gain;
  m.seconds = s.quantize_seconds;
  return m;
}

Json CheckpointReportToJson(const CheckpointReport& r) {
  Json j = Json::object();
  j["model"] = r.model_dir;
  j["out"] = r.out_dir;
  j["format"] = r.format;
  j["method"] = r.method;
  j["objective"] = r.objective;
  j["scale_max"] = r.scale_max;
  j["activations"] = r.w4a4 ? "nvfp4" : "none";
  const CheckpointTotals& s = r.totals;
  Json totals = Json::object();
  totals["tensors"] = s.tensors;
  totals["quantized"] = s.quantized;
  totals["passed_through"] = s.passed_through;
  totals["shards"] = s.shards;
  totals["shards_resumed"] = s.shards_resumed;
  totals["quantized_elements"] = s.quantized_elements;
  totals["mse"] = s.mse;
  totals["absmax_mse"] = s.absmax_mse;
  totals["gain"] = s.gain;
  if (s.weighted) {
    totals["wmse"] = s.wmse;
    totals["absmax_wmse"] = s.absmax_wmse;
    totals["wmse_gain"] = s.wmse_gain;
  }
  totals["nmse"] = s.nmse;
  totals["input_bytes"] = s.input_bytes;
  totals["output_bytes"] = s.output_bytes;
  totals["wall_seconds"] = s.wall_seconds;
  totals["read_seconds"] = s.read_seconds;
  totals["quantize_seconds"] = s.quantize_seconds;
  totals["write_seconds"] = s.write_seconds;
  totals["input_gb_per_second"] = s.wall_seconds > 0 ? s.input_bytes / s.wall_seconds / 1e9 : 0.0;
  j["totals"] = totals;
  j["notes"] = r.notes;
  Json tensors = Json::array();
  for (const TensorReport& t : r.tensors) tensors.push_back(TensorReportToJson(t));
  j["tensors"] = std::move(tensors);
  return j;
}

absl::StatusOr<CheckpointReport> CheckpointReportFromJson(const Json& j) {
  CheckpointReport r;
  try {
    r.model_dir = j.at("model").get<std::string>();
    r.out_dir = j.at("out").get<std::string>();
    r.format = j.at("format").get<std::string>();
    r.method = j.at("method").get<std::string>();
    r.objective = j.at("objective").get<std::string>();
    r.scale_max = j.at("scale_max").get<int>();
    r.w4a4 = j.at("activations").get<std::string>() == "nvfp4";
    r.notes = j.at("notes").get<std::vector<std::string>>();
    const Json& t = j.at("totals");
    CheckpointTotals& s = r.totals;
    s.shards = t.at("shards").get<int>();
    s.shards_resumed = t.at("shards_resumed").get<int>();
    s.wall_seconds = t.at("wall_seconds").get<double>();
    s.read_seconds = t.at("read_seconds").get<double>();
    s.quantize_seconds = t.at("quantize_seconds").get<double>();
    s.write_seconds = t.at("write_seconds").get<double>();
    for (const Json& tensor : j.at("tensors")) {
      absl::StatusOr<TensorReport> row = TensorReportFromJson(tensor);
      if (!row.ok()) return row.status();
      r.tensors.push_back(*std::move(row));
    }
  } catch (const std::exception& e) {
    return absl::InvalidArgumentError(absl::StrCat("bad checkpoint report: ", e.what()));
  }
  ComputeTotals(r);
  return r;
}

std::string FormatReportTable(const CheckpointReport& r) {
  // The error columns are those of the objective the scales minimised: a WMSE quantisation's
  // plain MSE may well exceed AbsMax's while its WMSE is far below.
  const bool weighted = r.objective == "wmse" && r.totals.weighted;
  std::string out = absl::StrFormat("%-56s %-13s %-10s %10s %8s %11s %7s %6s %8s\n", "tensor",
                                    "shape", "objective", weighted ? "wmse" : "mse", "sqnr_dB",
                                    weighted ? "absmax_wmse" : "absmax_mse", "gain", "cand", "ms");
  for (const TensorReport& t : r.tensors) {
    if (!t.quantized) continue;
    std::string name = t.name;
    if (name.size() > 56) name = "..." + name.substr(name.size() - 53);
    const TensorMetrics& m = t.metrics;
    // In a WMSE table a row without importance ("mse (no importance)") has no WMSE figures.
    const bool blank = weighted && !m.weighted;
    const double error = weighted ? m.wmse : m.mse;
    const double baseline = weighted ? m.absmax_wmse : m.absmax_mse;
    out += absl::StrFormat("%-56s %-13s %-10s %10s %8.2f %11s %+6.1f%% %6.2f %8.1f\n", name,
                           absl::StrJoin(t.shape, "x"), t.objective,
                           blank ? std::string("-") : absl::StrFormat("%.3e", error), m.sqnr_db,
                           blank ? std::string("-") : absl::StrFormat("%.3e", baseline),
                           (ObjectiveGain(m) - 1) * 100, m.candidates_per_block, t.seconds * 1e3);
  }
  const CheckpointTotals& s = r.totals;
  const std::string errors =
      weighted ? absl::StrFormat("WMSE %.4e vs AbsMax %.4e: %+.2f%% (MSE %.4e vs %.4e: %+.2f%%)",
                                 s.wmse, s.absmax_wmse, (s.wmse_gain - 1) * 100, s.mse,
                                 s.absmax_mse, (s.gain - 1) * 100)
               : absl::StrFormat("MSE %.4e vs AbsMax %.4e: %+.2f%%", s.mse, s.absmax_mse,
                                 (s.gain - 1) * 100);
  out += absl::StrFormat(
      "%d tensors quantized (%d passed through), %d shard(s)%s; %s; "
      "%.2f GB in, %.2f GB out, %.2f s (read %.2f, quantize %.2f, write %.2f)\n",
      s.quantized, s.passed_through, s.shards,
      s.shards_resumed > 0 ? absl::StrCat(" (", s.shards_resumed, " resumed)") : "", errors,
      s.input_bytes / 1e9, s.output_bytes / 1e9, s.wall_seconds, s.read_seconds, s.quantize_seconds,
      s.write_seconds);
  for (const std::string& note : r.notes) out += absl::StrCat("note: ", note, "\n");
  return out;
}

}  // namespace nvfp4::checkpoint
