#include "kernels/validate.h"

#include <cmath>

#include "absl/strings/str_cat.h"
#include "kernels/numerics/global_scale.h"

namespace nvfp4 {

std::string DescribeElement(int64_t index, int64_t cols) {
  return absl::StrCat("element ", index, " (row ", index / cols, ", column ", index % cols, ")");
}

absl::Status NonFiniteInputError(int64_t index, int64_t cols, float value) {
  const char* what = std::isnan(value) ? "NaN" : (value > 0 ? "+Inf" : "-Inf");
  return absl::InvalidArgumentError(absl::StrCat("input ", DescribeElement(index, cols), " is ",
                                                 what, "; NVFP4 needs finite values"));
}

absl::Status ImportanceValueError(int64_t index, float value) {
  return absl::InvalidArgumentError(
      absl::StrCat("importance value ", index, " is ", value, "; weights must be finite and >= 0"));
}

absl::Status CheckImportanceValues(const ImportanceView& importance) {
  for (int64_t i = 0; i < importance.size; ++i) {
    const float w = importance.data[i];
    if (!std::isfinite(w) || w < 0.0f) return ImportanceValueError(i, w);
  }
  return absl::OkStatus();
}

absl::Status ValidateQuantizeRequest(const TensorView& input, const ImportanceView& importance,
                                     const QuantizeOptions& options, bool data_streamed) {
  if (input.rows <= 0 || input.cols <= 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "tensor shape must be [rows > 0, cols > 0], got [", input.rows, ", ", input.cols, "]"));
  }
  if (input.rows > kMaxElements / input.cols) {
    return absl::InvalidArgumentError(
        absl::StrCat("tensor [", input.rows, ", ", input.cols, "] exceeds 2^40 elements"));
  }
  if (!data_streamed && input.data == nullptr)
    return absl::InvalidArgumentError("tensor data is null");
  if (!IsSupportedScaleMax(options.scale_max)) {
    return absl::InvalidArgumentError(
        absl::StrCat("scale_max must be 448 or 256, got ", options.scale_max));
  }
  switch (importance.layout) {
    case ImportanceLayout::kNone:
      if (options.objective == Objective::kWmse) {
        return absl::InvalidArgumentError(
            "objective wmse needs importance weights (per column [cols] or per element "
            "[rows, cols])");
      }
      break;
    case ImportanceLayout::kPerColumn:
      if (importance.size != input.cols) {
        return absl::InvalidArgumentError(
            absl::StrCat("per-column importance has ", importance.size,
                         " values but the tensor has ", input.cols, " columns"));
      }
      break;
    case ImportanceLayout::kPerElement:
      if (importance.size != input.elements()) {
        return absl::InvalidArgumentError(
            absl::StrCat("per-element importance has ", importance.size,
                         " values but the tensor has ", input.elements(), " elements"));
      }
      break;
  }
  if (importance.present() && importance.data == nullptr) {
    return absl::InvalidArgumentError("importance data is null");
  }
  if (options.global_scale.has_value()) {
    const float g = *options.global_scale;
    if (!std::isfinite(g) || !(g >= kMinGlobalScale)) {
      return absl::InvalidArgumentError(
          absl::StrCat("global_scale must be finite and >= 2^-117, got ", g));
    }
  }
  if (options.amax.has_value()) {
    const float a = *options.amax;
    if (!std::isfinite(a) || a < 0) {
      return absl::InvalidArgumentError(absl::StrCat("amax must be finite and >= 0, got ", a));
    }
  }
  return absl::OkStatus();
}

}  // namespace nvfp4
