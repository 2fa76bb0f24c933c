#include "server/service/tensor_job.h"

#include <cstring>

#include "kernels/numerics/half.h"

namespace nvfp4::server {

TensorJobOutput AcquireTensorJobOutput(JobBufferPool& pool, const api::TensorSpec& spec) {
  TensorJobOutput out;
  out.packed = pool.Acquire(static_cast<size_t>(PackedBytes(spec.rows, spec.cols)));
  out.scales = pool.Acquire(static_cast<size_t>(ScaleBytes(spec.rows, spec.cols)));
  if (spec.want_dequantized) {
    out.dequantized = pool.Acquire(static_cast<size_t>(spec.elements()) * sizeof(float));
  }
  return out;
}

absl::Status RunTensorJob(const TensorJobInput& input, TensorJobOutput& output, const Job& job,
                          QuantizerBackend& engine, RowSource* streamed,
                          const QuantizerBackend::RowsDoneFn* rows_done) {
  if (job.cancel_requested()) return absl::CancelledError("job cancelled before it started");
  const api::TensorSpec& spec = input.spec;
  QuantizeOptions options = spec.options;
  options.cancelled = job.cancel_flag();
  options.want_dequantized = spec.want_dequantized;
  const ImportanceView importance{spec.importance_layout, input.importance.as<const float>(),
                                  spec.importance_values()};
  const TensorView view{spec.dtype, spec.rows, spec.cols, input.data.data()};
  const QuantizedBuffers buffers{output.packed.data(), output.scales.data(),
                                 output.dequantized.as<float>()};
  absl::StatusOr<QuantizedSummary> summary =
      engine.QuantizeInto(view, importance, options, buffers, streamed, rows_done);
  if (!summary.ok()) return summary.status();
  output.summary = *summary;
  output.backend = std::string(engine.name());
  if (spec.want_dequantized && spec.dequantized_bf16) {
    // In place, front to back: element i's bf16 (bytes 2i..2i+1) lands on f32 elements that
    // were already read (index <= i).
    uint8_t* bytes = output.dequantized.data();
    for (int64_t i = 0; i < spec.elements(); ++i) {
      float value;
      std::memcpy(&value, bytes + 4 * i, sizeof(value));
      const uint16_t bits = FloatToBf16Bits(value);
      std::memcpy(bytes + 2 * i, &bits, sizeof(bits));
    }
  }
  return absl::OkStatus();
}

std::optional<QuantizedSummary> AnnouncedScales(const api::TensorSpec& spec) {
  if (!spec.options.amax.has_value()) return std::nullopt;
  QuantizedSummary announced;
  announced.amax = *spec.options.amax;
  announced.global_scale = *KnownGlobalScale(spec.options);
  return announced;
}

int64_t ResultPackedBytes(const api::TensorSpec& spec) {
  return spec.want_packed ? PackedBytes(spec.rows, spec.cols) : 0;
}

int64_t ResultScaleBytes(const api::TensorSpec& spec) {
  return spec.want_packed ? ScaleBytes(spec.rows, spec.cols) : 0;
}

int64_t ResultBytes(const api::TensorSpec& spec) {
  return ResultPackedBytes(spec) + ResultScaleBytes(spec) + spec.dequantized_bytes();
}

void FillResultHeader(const api::TensorSpec& spec, float global_scale, float amax,
                      v1::ResultHeader* header) {
  header->set_rows(spec.rows);
  header->set_cols(spec.cols);
  header->set_padded_cols(PaddedCols(spec.cols));
  header->set_global_scale(global_scale);
  header->set_amax(amax);
  header->set_packed_bytes(ResultPackedBytes(spec));
  header->set_scales_bytes(ResultScaleBytes(spec));
  header->set_dequantized_bytes(spec.dequantized_bytes());
  header->set_dequantized_dtype(spec.dequantized_bf16 ? v1::DTYPE_BF16 : v1::DTYPE_F32);
}

void FillMetrics(const TensorJobOutput& out, const Job& job, v1::TensorMetrics* metrics) {
  api::MetricsToProto(out.summary.metrics, metrics);
  metrics->set_queue_seconds(job.queue_seconds());
  metrics->set_backend(out.backend);
}

}  // namespace nvfp4::server
