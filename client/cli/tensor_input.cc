#include "client/cli/tensor_input.h"

#include <cstring>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "client/cli/exit_codes.h"
#include "client/io/npy.h"
#include "common/status_macros.h"

namespace nvfp4::cli {

absl::StatusOr<LoadedTensor> LoadTensor(const std::string& path,
                                        const std::optional<std::string>& raw_dtype,
                                        const std::optional<std::string>& raw_shape) {
  LoadedTensor tensor;
  if (raw_dtype.has_value() || raw_shape.has_value()) {
    if (!raw_dtype.has_value() || !raw_shape.has_value()) {
      return UsageError("raw input needs both --dtype and --shape N,K");
    }
    const std::optional<DType> dtype = ParseDType(*raw_dtype);
    if (!dtype.has_value()) {
      return UsageError(absl::StrCat("--dtype must be bf16, f16 or f32, got '", *raw_dtype, "'"));
    }
    const std::vector<std::string> dims = absl::StrSplit(*raw_shape, ',');
    int64_t rows = 0, cols = 0;
    if (dims.size() != 2 || !absl::SimpleAtoi(dims[0], &rows) ||
        !absl::SimpleAtoi(dims[1], &cols) || rows <= 0 || cols <= 0) {
      return UsageError(
          absl::StrCat("--shape must be N,K with positive integers, got '", *raw_shape, "'"));
    }
    tensor.dtype = *dtype;
    tensor.rows = rows;
    tensor.cols = cols;
    ASSIGN_OR_RETURN(tensor.bytes,
                     io::ReadRawFile(path, static_cast<size_t>(rows * cols) * DTypeSize(*dtype)));
    return tensor;
  }
  ASSIGN_OR_RETURN(io::NpyArray array, io::ReadNpy(path));
  if (array.descr == "<f4") {
    tensor.dtype = DType::kF32;
  } else if (array.descr == "<f2") {
    tensor.dtype = DType::kF16;
  } else {
    return absl::InvalidArgumentError(absl::StrCat(
        path, ": dtype '", array.descr,
        "' is not supported; use float32 or float16 (.npy), or a raw bf16 file with --dtype bf16 "
        "--shape N,K"));
  }
  if (array.shape.size() != 2) {
    return absl::InvalidArgumentError(
        absl::StrCat(path, ": expected a 2-D array, got ", array.shape.size(), " dimensions"));
  }
  tensor.rows = array.shape[0];
  tensor.cols = array.shape[1];
  tensor.bytes = std::move(array.data);
  return tensor;
}

absl::StatusOr<LoadedImportance> LoadImportance(const std::string& path, int64_t rows,
                                                int64_t cols) {
  ASSIGN_OR_RETURN(io::NpyArray array, io::ReadNpy(path));
  if (array.descr != "<f4") {
    return absl::InvalidArgumentError(
        absl::StrCat(path, ": importance must be float32, got '", array.descr, "'"));
  }
  LoadedImportance importance;
  if (array.shape.size() == 1 && array.shape[0] == cols) {
    importance.layout = ImportanceLayout::kPerColumn;
  } else if (array.shape.size() == 2 && array.shape[0] == rows && array.shape[1] == cols) {
    importance.layout = ImportanceLayout::kPerElement;
  } else {
    std::string shape;
    for (size_t i = 0; i < array.shape.size(); ++i) {
      absl::StrAppend(&shape, i ? ", " : "", array.shape[i]);
    }
    return absl::InvalidArgumentError(absl::StrCat(path, ": importance shape [", shape,
                                                   "] does not match the tensor: expected [", cols,
                                                   "] or [", rows, ", ", cols, "]"));
  }
  importance.values.resize(array.data.size() / sizeof(float));
  std::memcpy(importance.values.data(), array.data.data(), array.data.size());
  return importance;
}

}  // namespace nvfp4::cli
