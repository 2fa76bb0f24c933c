// Running one tensor job on an engine, and turning its result into response messages. Shared
// by the streaming and the unary RPC.
#ifndef NVFP4_SERVER_SERVICE_TENSOR_JOB_H_
#define NVFP4_SERVER_SERVICE_TENSOR_JOB_H_

#include <cstdint>
#include <optional>
#include <string>

#include "absl/status/status.h"
#include "kernels/backend.h"
#include "kernels/quantized_tensor.h"
#include "kernels/row_source.h"
#include "proto/convert.h"
#include "server/engine/buffer_pool.h"
#include "server/engine/job.h"

namespace nvfp4::server {

// Input buffers of a tensor job, filled by the RPC (uninitialised until written).
struct TensorJobInput {
  api::TensorSpec spec;
  JobBufferPool::Buffer data;        // spec.input_bytes(); empty when the data is streamed
  JobBufferPool::Buffer importance;  // spec.importance_values() floats
};

// Output buffers of a tensor job (pooled, so a busy server reuses warm memory), written by the
// engine; `summary` and `backend` are set once the job succeeded.
struct TensorJobOutput {
  JobBufferPool::Buffer packed;  // PackedBytes(rows, cols)
  JobBufferPool::Buffer scales;  // ScaleBytes(rows, cols)
  // rows * cols f32 when the fake-quant tensor is wanted; holds bf16 in its first half
  // afterwards when spec.dequantized_bf16 (converted in place).
  JobBufferPool::Buffer dequantized;
  QuantizedSummary summary;
  std::string backend;
};

// Acquires the output buffers of a job described by `spec`. Throws std::bad_alloc.
TensorJobOutput AcquireTensorJobOutput(JobBufferPool& pool, const api::TensorSpec& spec);

// Runs the job (honouring its cancel flag) into `output`. streamed: nullptr when input.data
// holds the complete input, else the source of the rows (QuantizerBackend::QuantizeInto's
// streaming contract), as is rows_done (may be nullptr). Never throws.
absl::Status RunTensorJob(const TensorJobInput& input, TensorJobOutput& output, const Job& job,
                          QuantizerBackend& engine, RowSource* streamed = nullptr,
                          const QuantizerBackend::RowsDoneFn* rows_done = nullptr);

// The global scale and amax the job will report, when the header fixes them before it runs
// (amax given: g is KnownGlobalScale's); otherwise nullopt.
std::optional<QuantizedSummary> AnnouncedScales(const api::TensorSpec& spec);

// Bytes of the result sections the client asked for.
int64_t ResultPackedBytes(const api::TensorSpec& spec);
int64_t ResultScaleBytes(const api::TensorSpec& spec);
int64_t ResultBytes(const api::TensorSpec& spec);  // everything sent back

void FillResultHeader(const api::TensorSpec& spec, float global_scale, float amax,
                      v1::ResultHeader* header);
void FillMetrics(const TensorJobOutput& out, const Job& job, v1::TensorMetrics* metrics);

}  // namespace nvfp4::server

#endif  // NVFP4_SERVER_SERVICE_TENSOR_JOB_H_
