#include "server/service/tensor_job.h"

#include <string>

#include "common/large_buffer.h"
#include "kernels/numerics/half.h"

namespace nvfp4::server {

const uint8_t* TensorJobOutput::dequantized_data() const {
  return dequantized_bf16.empty() ? reinterpret_cast<const uint8_t*>(tensor.dequantized.data())
                                  : reinterpret_cast<const uint8_t*>(dequantized_bf16.data());
}

int64_t TensorJobOutput::dequantized_bytes() const {
  return dequantized_bf16.empty() ? static_cast<int64_t>(tensor.dequantized.size() * 4)
                                  : static_cast<int64_t>(dequantized_bf16.size() * 2);
}

int64_t TensorJobOutput::result_bytes(const api::TensorSpec& spec) const {
  const int64_t packed =
      spec.want_packed ? static_cast<int64_t>(tensor.packed.size() + tensor.scales.size()) : 0;
  return packed + dequantized_bytes();
}

namespace {

absl::StatusOr<TensorJobOutput> Run(const TensorJobInput& input, const Job& job,
                                    QuantizerBackend& engine,
                                    const QuantizerBackend::RowsReadyFn* rows_ready) {
  if (job.cancel_requested()) return absl::CancelledError("job cancelled before it started");
  const api::TensorSpec& spec = input.spec;
  QuantizeOptions options = spec.options;
  options.cancelled = job.cancel_flag();
  options.want_dequantized = spec.want_dequantized;
  const ImportanceView importance{spec.importance_layout, input.importance.as<const float>(),
                                  spec.importance_values()};
  const TensorView view{spec.dtype, spec.rows, spec.cols, input.data.data()};
  absl::StatusOr<QuantizedTensor> tensor =
      rows_ready ? engine.QuantizeStreaming(view, importance, options, *rows_ready)
                 : engine.Quantize(view, importance, options);
  if (!tensor.ok()) return tensor.status();
  TensorJobOutput out;
  out.tensor = std::move(*tensor);
  out.backend = std::string(engine.name());
  if (spec.want_dequantized && spec.dequantized_bf16) {
    ResizeOnHugePages(out.dequantized_bf16, out.tensor.dequantized.size());
    for (size_t i = 0; i < out.dequantized_bf16.size(); ++i) {
      out.dequantized_bf16[i] = FloatToBf16Bits(out.tensor.dequantized[i]);
    }
    out.tensor.dequantized = {};
  }
  return out;
}

}  // namespace

absl::StatusOr<TensorJobOutput> RunTensorJob(const TensorJobInput& input, const Job& job,
                                             QuantizerBackend& engine) {
  return Run(input, job, engine, nullptr);
}

absl::StatusOr<TensorJobOutput> RunTensorJobStreaming(
    const TensorJobInput& input, const Job& job, QuantizerBackend& engine,
    const QuantizerBackend::RowsReadyFn& rows_ready) {
  return Run(input, job, engine, &rows_ready);
}

void FillResultHeader(const api::TensorSpec& spec, const TensorJobOutput& out,
                      v1::ResultHeader* header) {
  const QuantizedTensor& t = out.tensor;
  header->set_rows(t.rows);
  header->set_cols(t.cols);
  header->set_padded_cols(t.padded_cols);
  header->set_global_scale(t.global_scale);
  header->set_amax(t.amax);
  header->set_packed_bytes(spec.want_packed ? static_cast<int64_t>(t.packed.size()) : 0);
  header->set_scales_bytes(spec.want_packed ? static_cast<int64_t>(t.scales.size()) : 0);
  header->set_dequantized_bytes(out.dequantized_bytes());
  header->set_dequantized_dtype(spec.dequantized_bf16 ? v1::DTYPE_BF16 : v1::DTYPE_F32);
}

void FillMetrics(const TensorJobOutput& out, const Job& job, v1::TensorMetrics* metrics) {
  api::MetricsToProto(out.tensor.metrics, metrics);
  metrics->set_queue_seconds(job.queue_seconds());
  metrics->set_backend(out.backend);
}

}  // namespace nvfp4::server
