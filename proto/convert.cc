#include "proto/convert.h"

#include <cmath>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "kernels/numerics/global_scale.h"
#include "kernels/quantized_tensor.h"

namespace nvfp4::api {
namespace {

constexpr size_t kMaxStatusMessage = 1024;
constexpr size_t kMaxNameBytes = 256;

}  // namespace

int64_t TensorSpec::output_bytes() const {
  // The engine always produces packed values and scales, and an f32 fake-quant tensor when one
  // is wanted (bf16 output is converted in place).
  const int64_t encoded = PackedBytes(rows, cols) + ScaleBytes(rows, cols);
  const int64_t fake_quant = want_dequantized ? elements() * 4 : 0;
  return encoded + fake_quant;
}

int64_t TensorSpec::job_bytes() const {
  return input_bytes() + importance_values() * 4 + output_bytes();
}

absl::StatusOr<Method> MethodFromProto(v1::Method method, std::string_view field) {
  switch (method) {
    case v1::METHOD_UNSPECIFIED:
    case v1::METHOD_SCALESWEEP:
      return Method::kScaleSweep;
    case v1::METHOD_ABSMAX:
      return Method::kAbsMax;
    case v1::METHOD_FOUR_OVER_SIX:
      return Method::kFourOverSix;
    case v1::METHOD_EXHAUSTIVE:
      return Method::kExhaustive;
    default:
      return absl::InvalidArgumentError(
          absl::StrCat(std::string(field), ": unknown value ", static_cast<int>(method)));
  }
}

v1::Method MethodToProto(Method method) {
  switch (method) {
    case Method::kAbsMax:
      return v1::METHOD_ABSMAX;
    case Method::kFourOverSix:
      return v1::METHOD_FOUR_OVER_SIX;
    case Method::kExhaustive:
      return v1::METHOD_EXHAUSTIVE;
    case Method::kScaleSweep:
      return v1::METHOD_SCALESWEEP;
  }
  return v1::METHOD_SCALESWEEP;
}

absl::StatusOr<Objective> ObjectiveFromProto(v1::Objective objective, std::string_view field) {
  switch (objective) {
    case v1::OBJECTIVE_UNSPECIFIED:
    case v1::OBJECTIVE_MSE:
      return Objective::kMse;
    case v1::OBJECTIVE_WMSE:
      return Objective::kWmse;
    default:
      return absl::InvalidArgumentError(
          absl::StrCat(std::string(field), ": unknown value ", static_cast<int>(objective)));
  }
}

v1::Objective ObjectiveToProto(Objective objective) {
  return objective == Objective::kWmse ? v1::OBJECTIVE_WMSE : v1::OBJECTIVE_MSE;
}

absl::StatusOr<checkpoint::CheckpointJobOptions> CheckpointOptionsFromRequest(
    const v1::QuantizeCheckpointRequest& request) {
  checkpoint::CheckpointJobOptions options;
  if (request.model_dir().empty()) return absl::InvalidArgumentError("model_dir is required");
  if (request.out_dir().empty()) return absl::InvalidArgumentError("out_dir is required");
  options.model_dir = request.model_dir();
  options.out_dir = request.out_dir();
  switch (request.format()) {
    case v1::CHECKPOINT_FORMAT_UNSPECIFIED:
    case v1::CHECKPOINT_FORMAT_MODELOPT:
      options.format = checkpoint::OutputFormat::kModelOpt;
      break;
    case v1::CHECKPOINT_FORMAT_COMPRESSED_TENSORS:
      options.format = checkpoint::OutputFormat::kCompressedTensors;
      break;
    default:
      return absl::InvalidArgumentError(
          absl::StrCat("format: unknown value ", static_cast<int>(request.format())));
  }
  ASSIGN_OR_RETURN(options.method, MethodFromProto(request.method(), "method"));
  ASSIGN_OR_RETURN(options.objective, ObjectiveFromProto(request.objective(), "objective"));
  const uint32_t scale_max = request.scale_max() == 0 ? 256 : request.scale_max();
  if (scale_max != 256 && scale_max != 448) {
    return absl::InvalidArgumentError(
        absl::StrCat("scale_max must be 448 or 256 (0 = 256), got ", request.scale_max()));
  }
  options.scale_max = static_cast<int>(scale_max);
  options.include.assign(request.include().begin(), request.include().end());
  options.exclude.assign(request.exclude().begin(), request.exclude().end());
  options.importance_path = request.importance_path();
  options.calibration_path = request.calibration_path();
  if (request.shard_bytes() != 0) options.shard_bytes = request.shard_bytes();
  return options;
}

v1::QuantizeCheckpointRequest CheckpointRequestFromOptions(
    const checkpoint::CheckpointJobOptions& options) {
  v1::QuantizeCheckpointRequest request;
  request.set_model_dir(options.model_dir);
  request.set_out_dir(options.out_dir);
  request.set_format(options.format == checkpoint::OutputFormat::kModelOpt
                         ? v1::CHECKPOINT_FORMAT_MODELOPT
                         : v1::CHECKPOINT_FORMAT_COMPRESSED_TENSORS);
  request.set_method(MethodToProto(options.method));
  request.set_objective(ObjectiveToProto(options.objective));
  request.set_scale_max(static_cast<uint32_t>(options.scale_max));
  for (const std::string& glob : options.include) request.add_include(glob);
  for (const std::string& glob : options.exclude) request.add_exclude(glob);
  request.set_importance_path(options.importance_path);
  request.set_calibration_path(options.calibration_path);
  request.set_shard_bytes(options.shard_bytes);
  return request;
}

absl::StatusOr<TensorSpec> SpecFromHeader(const v1::TensorHeader& header) {
  TensorSpec spec;
  if (header.name().size() > kMaxNameBytes) {
    return absl::InvalidArgumentError("header.name is longer than 256 bytes");
  }
  spec.name = header.name();
  if (header.request_id().size() > 128) {
    return absl::InvalidArgumentError("header.request_id is longer than 128 bytes");
  }
  spec.request_id = header.request_id();
  switch (header.dtype()) {
    case v1::DTYPE_F32:
      spec.dtype = DType::kF32;
      break;
    case v1::DTYPE_BF16:
      spec.dtype = DType::kBF16;
      break;
    case v1::DTYPE_F16:
      spec.dtype = DType::kF16;
      break;
    default:
      return absl::InvalidArgumentError(
          absl::StrCat("header.dtype must be DTYPE_F32, DTYPE_BF16 or DTYPE_F16, got ",
                       static_cast<int>(header.dtype())));
  }
  if (header.shape_size() != 2) {
    return absl::InvalidArgumentError(
        absl::StrCat("header.shape must be [rows, cols] (send a 1-D tensor as [1, K]), got ",
                     header.shape_size(), " dimensions"));
  }
  spec.rows = header.shape(0);
  spec.cols = header.shape(1);
  if (spec.rows <= 0 || spec.cols <= 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("header.shape must be positive, got [", spec.rows, ", ", spec.cols, "]"));
  }
  if (spec.rows > (int64_t{1} << 40) / spec.cols) {
    return absl::InvalidArgumentError("header.shape exceeds 2^40 elements");
  }
  ASSIGN_OR_RETURN(spec.options.method, MethodFromProto(header.method(), "header.method"));
  ASSIGN_OR_RETURN(spec.options.objective,
                   ObjectiveFromProto(header.objective(), "header.objective"));
  const uint32_t scale_max = header.scale_max() == 0 ? 256 : header.scale_max();
  if (scale_max != 256 && scale_max != 448) {
    return absl::InvalidArgumentError(
        absl::StrCat("header.scale_max must be 448 or 256 (0 = 256), got ", header.scale_max()));
  }
  spec.options.scale_max = static_cast<int>(scale_max);
  if (header.has_amax()) {
    if (!std::isfinite(header.amax()) || header.amax() < 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("header.amax must be finite and >= 0, got ", header.amax()));
    }
    spec.options.amax = header.amax();
  }
  if (header.has_global_scale()) {
    if (!std::isfinite(header.global_scale()) || !(header.global_scale() >= kMinGlobalScale)) {
      return absl::InvalidArgumentError(absl::StrCat(
          "header.global_scale must be finite and >= 2^-117, got ", header.global_scale()));
    }
    spec.options.global_scale = header.global_scale();
  }
  switch (header.importance_layout()) {
    case v1::IMPORTANCE_LAYOUT_NONE:
      spec.importance_layout = ImportanceLayout::kNone;
      break;
    case v1::IMPORTANCE_LAYOUT_PER_COLUMN:
      spec.importance_layout = ImportanceLayout::kPerColumn;
      break;
    case v1::IMPORTANCE_LAYOUT_PER_ELEMENT:
      spec.importance_layout = ImportanceLayout::kPerElement;
      break;
    default:
      return absl::InvalidArgumentError(absl::StrCat("header.importance_layout: unknown value ",
                                                     static_cast<int>(header.importance_layout())));
  }
  if (spec.options.objective == Objective::kWmse &&
      spec.importance_layout == ImportanceLayout::kNone) {
    return absl::InvalidArgumentError(
        "header.objective is OBJECTIVE_WMSE but header.importance_layout is NONE");
  }
  switch (header.output_mode()) {
    case v1::OUTPUT_MODE_UNSPECIFIED:
    case v1::OUTPUT_MODE_PACKED:
      break;
    case v1::OUTPUT_MODE_DEQUANTIZED:
      spec.want_packed = false;
      spec.want_dequantized = true;
      break;
    case v1::OUTPUT_MODE_BOTH:
      spec.want_dequantized = true;
      break;
    default:
      return absl::InvalidArgumentError(absl::StrCat("header.output_mode: unknown value ",
                                                     static_cast<int>(header.output_mode())));
  }
  switch (header.dequantized_dtype()) {
    case v1::DTYPE_UNSPECIFIED:
    case v1::DTYPE_F32:
      break;
    case v1::DTYPE_BF16:
      spec.dequantized_bf16 = true;
      break;
    default:
      return absl::InvalidArgumentError("header.dequantized_dtype must be DTYPE_F32 or DTYPE_BF16");
  }
  spec.options.want_dequantized = spec.want_dequantized;
  return spec;
}

v1::TensorHeader HeaderFromSpec(const TensorSpec& spec) {
  v1::TensorHeader header;
  header.set_name(spec.name);
  header.set_request_id(spec.request_id);
  header.set_dtype(spec.dtype == DType::kF32    ? v1::DTYPE_F32
                   : spec.dtype == DType::kBF16 ? v1::DTYPE_BF16
                                                : v1::DTYPE_F16);
  header.add_shape(spec.rows);
  header.add_shape(spec.cols);
  header.set_method(MethodToProto(spec.options.method));
  header.set_objective(ObjectiveToProto(spec.options.objective));
  header.set_scale_max(static_cast<uint32_t>(spec.options.scale_max));
  if (spec.options.amax) header.set_amax(*spec.options.amax);
  if (spec.options.global_scale) header.set_global_scale(*spec.options.global_scale);
  header.set_importance_layout(
      spec.importance_layout == ImportanceLayout::kPerColumn    ? v1::IMPORTANCE_LAYOUT_PER_COLUMN
      : spec.importance_layout == ImportanceLayout::kPerElement ? v1::IMPORTANCE_LAYOUT_PER_ELEMENT
                                                                : v1::IMPORTANCE_LAYOUT_NONE);
  header.set_output_mode(spec.want_packed && spec.want_dequantized ? v1::OUTPUT_MODE_BOTH
                         : spec.want_dequantized                   ? v1::OUTPUT_MODE_DEQUANTIZED
                                                                   : v1::OUTPUT_MODE_PACKED);
  header.set_dequantized_dtype(spec.dequantized_bf16 ? v1::DTYPE_BF16 : v1::DTYPE_F32);
  return header;
}

void MetricsToProto(const TensorMetrics& m, v1::TensorMetrics* out) {
  out->set_elements(m.elements);
  out->set_blocks(m.blocks);
  out->set_mse(m.mse);
  if (m.weighted) out->set_wmse(m.wmse);
  out->set_nmse(m.nmse);
  out->set_sqnr_db(m.sqnr_db);
  out->set_max_abs_error(m.max_abs_error);
  out->set_absmax_mse(m.absmax_mse);
  out->set_gain(m.gain);
  if (m.weighted) {
    out->set_absmax_wmse(m.absmax_wmse);
    out->set_wmse_gain(m.wmse_gain);
  }
  out->set_objective(m.wmse_objective ? v1::OBJECTIVE_WMSE : v1::OBJECTIVE_MSE);
  out->set_candidates_per_block(m.candidates_per_block);
  out->set_quantize_seconds(m.seconds);
}

void ProgressToProto(const checkpoint::CheckpointEvent& e, v1::CheckpointProgress* p) {
  p->set_phase(e.phase);
  p->set_done(e.done);
  p->set_total(e.total);
  p->set_bytes_done(e.bytes_done);
  p->set_bytes_total(e.bytes_total);
  p->set_message(e.message);
  p->set_warning(e.warning);
  if (e.tensor != nullptr) {
    p->set_tensor_report_json(checkpoint::TensorReportToJson(*e.tensor).dump());
  }
}

checkpoint::CheckpointEvent ProgressFromProto(const v1::CheckpointProgress& p,
                                              std::optional<checkpoint::TensorReport>* tensor) {
  checkpoint::CheckpointEvent e;
  e.phase = p.phase();
  e.done = p.done();
  e.total = p.total();
  e.bytes_done = p.bytes_done();
  e.bytes_total = p.bytes_total();
  e.message = p.message();
  e.warning = p.warning();
  tensor->reset();
  if (!p.tensor_report_json().empty()) {
    const nlohmann::ordered_json json =
        nlohmann::ordered_json::parse(p.tensor_report_json(), nullptr, false);
    if (!json.is_discarded()) {
      absl::StatusOr<checkpoint::TensorReport> row = checkpoint::TensorReportFromJson(json);
      if (row.ok()) *tensor = *std::move(row);
    }
  }
  if (tensor->has_value()) e.tensor = &**tensor;
  return e;
}

TensorMetrics MetricsFromProto(const v1::TensorMetrics& p) {
  TensorMetrics m;
  m.elements = p.elements();
  m.blocks = p.blocks();
  m.weighted = p.has_wmse();
  m.mse = p.mse();
  m.wmse = p.has_wmse() ? p.wmse() : 0.0;
  m.nmse = p.nmse();
  m.sqnr_db = p.sqnr_db();
  m.max_abs_error = p.max_abs_error();
  m.absmax_mse = p.absmax_mse();
  m.gain = p.gain();
  m.absmax_wmse = p.has_absmax_wmse() ? p.absmax_wmse() : 0.0;
  m.wmse_gain = p.has_wmse_gain() ? p.wmse_gain() : 1.0;
  m.wmse_objective = m.weighted && p.objective() == v1::OBJECTIVE_WMSE;
  m.candidates_per_block = p.candidates_per_block();
  m.seconds = p.quantize_seconds();
  m.elements_per_second = m.seconds > 0 ? static_cast<double>(m.elements) / m.seconds : 0;
  return m;
}

grpc::Status ToGrpcStatus(const absl::Status& status) {
  if (status.ok()) return grpc::Status::OK;
  std::string message(status.message());
  if (message.size() > kMaxStatusMessage) message = message.substr(0, kMaxStatusMessage) + "...";
  return grpc::Status(static_cast<grpc::StatusCode>(status.code()), message);
}

absl::Status FromGrpcStatus(const grpc::Status& status) {
  if (status.ok()) return absl::OkStatus();
  const auto code = static_cast<absl::StatusCode>(status.error_code());
  // gRPC's own terse messages, in words a user can act on.
  std::string message = status.error_message();
  if (message == "Cancelling all calls") {
    message =
        "the server shut down before the call finished (its drain timeout ran out); retry, on "
        "another replica if there is one";
  } else if (code == absl::StatusCode::kCancelled && (message.empty() || message == "CANCELLED")) {
    message = "the call was cancelled";
  }
  return absl::Status(code, message);
}

std::string StatusCodeName(absl::StatusCode code) {
  switch (code) {
    case absl::StatusCode::kOk:
      return "OK";
    case absl::StatusCode::kCancelled:
      return "CANCELLED";
    case absl::StatusCode::kUnknown:
      return "UNKNOWN";
    case absl::StatusCode::kInvalidArgument:
      return "INVALID_ARGUMENT";
    case absl::StatusCode::kDeadlineExceeded:
      return "DEADLINE_EXCEEDED";
    case absl::StatusCode::kNotFound:
      return "NOT_FOUND";
    case absl::StatusCode::kAlreadyExists:
      return "ALREADY_EXISTS";
    case absl::StatusCode::kPermissionDenied:
      return "PERMISSION_DENIED";
    case absl::StatusCode::kResourceExhausted:
      return "RESOURCE_EXHAUSTED";
    case absl::StatusCode::kFailedPrecondition:
      return "FAILED_PRECONDITION";
    case absl::StatusCode::kAborted:
      return "ABORTED";
    case absl::StatusCode::kOutOfRange:
      return "OUT_OF_RANGE";
    case absl::StatusCode::kUnimplemented:
      return "UNIMPLEMENTED";
    case absl::StatusCode::kInternal:
      return "INTERNAL";
    case absl::StatusCode::kUnavailable:
      return "UNAVAILABLE";
    case absl::StatusCode::kDataLoss:
      return "DATA_LOSS";
    case absl::StatusCode::kUnauthenticated:
      return "UNAUTHENTICATED";
    default:
      return "UNKNOWN";
  }
}

}  // namespace nvfp4::api
