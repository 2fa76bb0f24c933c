// Conversions between the nvfp4.v1 API messages and the engine's types, shared by the server and
// the client library, plus the one mapping between absl::Status and grpc::Status.
// Pure functions; thread-safe.
#ifndef NVFP4_PROTO_CONVERT_H_
#define NVFP4_PROTO_CONVERT_H_

#include <cstdint>
#include <optional>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "grpcpp/support/status.h"
#include "kernels/metrics.h"
#include "kernels/quantize_options.h"
#include "kernels/tensor.h"
#include "nvfp4/v1/quantizer.pb.h"
#include "server/checkpoint/checkpoint_job.h"

namespace nvfp4::api {

// A validated TensorHeader in engine terms.
struct TensorSpec {
  std::string name;
  std::string request_id;
  DType dtype = DType::kF32;
  int64_t rows = 0;
  int64_t cols = 0;
  QuantizeOptions options;  // cancelled/want_dequantized filled from output_mode
  ImportanceLayout importance_layout = ImportanceLayout::kNone;
  bool want_packed = true;
  bool want_dequantized = false;
  bool dequantized_bf16 = false;

  int64_t elements() const { return rows * cols; }
  int64_t row_bytes() const { return cols * static_cast<int64_t>(DTypeSize(dtype)); }
  int64_t input_bytes() const { return rows * row_bytes(); }
  int64_t importance_values() const {
    return importance_layout == ImportanceLayout::kPerColumn    ? cols
           : importance_layout == ImportanceLayout::kPerElement ? elements()
                                                                : 0;
  }
  // Every output buffer the engine writes (packed, scales, f32 fake-quant when wanted).
  int64_t output_bytes() const;
  // Input, importance and every output of the job: what admission reserves (plus one more
  // output_bytes() on servers with an engine that does not write in place).
  int64_t job_bytes() const;
  // Bytes of the fake-quant output as sent.
  int64_t dequantized_bytes() const {
    return want_dequantized ? elements() * (dequantized_bf16 ? 2 : 4) : 0;
  }
};

// InvalidArgument naming the field ("header.shape ...") for anything malformed.
absl::StatusOr<TensorSpec> SpecFromHeader(const v1::TensorHeader& header);
v1::TensorHeader HeaderFromSpec(const TensorSpec& spec);

absl::StatusOr<Method> MethodFromProto(v1::Method method, std::string_view field);
v1::Method MethodToProto(Method method);
absl::StatusOr<Objective> ObjectiveFromProto(v1::Objective objective, std::string_view field);
v1::Objective ObjectiveToProto(Objective objective);

// A QuantizeCheckpoint request in job terms (paths as given: the server confines them), and
// back; InvalidArgument naming the field.
absl::StatusOr<checkpoint::CheckpointJobOptions> CheckpointOptionsFromRequest(
    const v1::QuantizeCheckpointRequest& request);
v1::QuantizeCheckpointRequest CheckpointRequestFromOptions(
    const checkpoint::CheckpointJobOptions& options);

// A checkpoint job's progress event as a CheckpointProgress message (the finished tensor as its
// report JSON), and back: `tensor` holds the report the event points to (none when the message
// has none or it does not parse; progress is informational).
void ProgressToProto(const checkpoint::CheckpointEvent& event, v1::CheckpointProgress* out);
checkpoint::CheckpointEvent ProgressFromProto(const v1::CheckpointProgress& progress,
                                              std::optional<checkpoint::TensorReport>* tensor);

void MetricsToProto(const TensorMetrics& metrics, v1::TensorMetrics* out);
TensorMetrics MetricsFromProto(const v1::TensorMetrics& metrics);

// absl and gRPC share the canonical code numbers; messages are cut to 1 KiB.
grpc::Status ToGrpcStatus(const absl::Status& status);
absl::Status FromGrpcStatus(const grpc::Status& status);

std::string StatusCodeName(absl::StatusCode code);  // "OK", "RESOURCE_EXHAUSTED", ...

}  // namespace nvfp4::api

#endif  // NVFP4_PROTO_CONVERT_H_
