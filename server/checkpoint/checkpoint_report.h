// CheckpointReport: what a checkpoint job did, per tensor and in total, as JSON (stable field
// names, docs/checkpoints.md) and as a printed table.
// Thread-safety: plain values.
#ifndef NVFP4_SERVER_CHECKPOINT_CHECKPOINT_REPORT_H_
#define NVFP4_SERVER_CHECKPOINT_CHECKPOINT_REPORT_H_

#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "absl/status/statusor.h"
#include "kernels/metrics.h"

namespace nvfp4::checkpoint {

struct TensorReport {
  std::string name;  // source tensor name
  std::vector<int64_t> shape;
  std::string dtype;
  bool quantized = false;
  std::string reason;     // why not quantized
  std::string method;     // "scalesweep", ...
  std::string objective;  // "mse", "wmse", or "mse (no importance)"
  std::string group;      // fused group name, or ""
  float amax = 0;         // the global scale's amax (the group's when fused)
  float global_scale = 0;
  float input_amax = -1;  // W4A4 activation amax (group max); -1 when weight-only
  TensorMetrics metrics;
  double seconds = 0;
  uint64_t input_bytes = 0;
  uint64_t output_bytes = 0;
  int shard = 0;
};

struct CheckpointTotals {
  int tensors = 0, quantized = 0, passed_through = 0;
  int shards = 0, shards_resumed = 0;
  int64_t quantized_elements = 0;
  double mse = 0, absmax_mse = 0, gain = 1, nmse = 0;  // element-weighted over quantized tensors
  // The same over the tensors quantised with importance (weighted: there are any).
  bool weighted = false;
  double wmse = 0, absmax_wmse = 0, wmse_gain = 1;
  uint64_t input_bytes = 0, output_bytes = 0;
  double wall_seconds = 0, read_seconds = 0, quantize_seconds = 0, write_seconds = 0;
};

struct CheckpointReport {
  std::string model_dir, out_dir, format, method, objective;
  int scale_max = 0;
  bool w4a4 = false;
  std::vector<TensorReport> tensors;  // in source name order
  CheckpointTotals totals;
  std::vector<std::string> notes;  // fallbacks and skips worth reading
};

nlohmann::ordered_json TensorReportToJson(const TensorReport& t);
absl::StatusOr<TensorReport> TensorReportFromJson(const nlohmann::ordered_json& json);
nlohmann::ordered_json CheckpointReportToJson(const CheckpointReport& report);
absl::StatusOr<CheckpointReport> CheckpointReportFromJson(const nlohmann::ordered_json& json);
// Totals from the tensor rows (wall and phase times are left as they are).
void ComputeTotals(CheckpointReport& report);

// The totals as one tensor's metrics (elements: the quantized ones), for a job record.
TensorMetrics TotalsAsMetrics(const CheckpointReport& report);
// A fixed-width table: one row per quantized tensor, a count of passed-through ones, totals.
std::string FormatReportTable(const CheckpointReport& report);

}  // namespace nvfp4::checkpoint

#endif  // NVFP4_SERVER_CHECKPOINT_CHECKPOINT_REPORT_H_
