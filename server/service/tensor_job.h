// Running one tensor job on an engine, and turning its result into response messages. Shared
// by the streaming and the unary RPC.
#ifndef NVFP4_SERVER_SERVICE_TENSOR_JOB_H_
#define NVFP4_SERVER_SERVICE_TENSOR_JOB_H_

#include <cstdint>
#include <memory>
#include <vector>

#include "absl/status/statusor.h"
#include "kernels/backend.h"
#include "kernels/quantized_tensor.h"
#include "proto/convert.h"
#include "server/engine/buffer_pool.h"
#include "server/engine/job.h"

namespace nvfp4::server {

// Input buffers of a tensor job, filled by the RPC (uninitialised until written).
struct TensorJobInput {
  api::TensorSpec spec;
  JobBufferPool::Buffer data;        // spec.input_bytes()
  JobBufferPool::Buffer importance;  // spec.importance_values() floats
};

// The engine's result in wire form.
struct TensorJobOutput {
  QuantizedTensor tensor;
  std::vector<uint16_t> dequantized_bf16;  // when spec.dequantized_bf16
  std::string backend;

  const uint8_t* dequantized_data() const;
  int64_t dequantized_bytes() const;
  int64_t result_bytes(const api::TensorSpec& spec) const;  // everything sent back
};

// Runs the job (honouring its cancel flag). Never throws.
absl::StatusOr<TensorJobOutput> RunTensorJob(const TensorJobInput& input, const Job& job,
                                             QuantizerBackend& engine);
// The same while the input is still arriving (QuantizerBackend::QuantizeStreaming).
absl::StatusOr<TensorJobOutput> RunTensorJobStreaming(
    const TensorJobInput& input, const Job& job, QuantizerBackend& engine,
    const QuantizerBackend::RowsReadyFn& rows_ready);

void FillResultHeader(const api::TensorSpec& spec, const TensorJobOutput& out,
                      v1::ResultHeader* header);
void FillMetrics(const TensorJobOutput& out, const Job& job, v1::TensorMetrics* metrics);

}  // namespace nvfp4::server

#endif  // NVFP4_SERVER_SERVICE_TENSOR_JOB_H_
