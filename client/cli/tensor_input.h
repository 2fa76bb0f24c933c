// Loading the CLI's input tensors: a 2-D .npy (f32 or f16), or a raw little-endian file with
// an explicit dtype and shape (bf16, f16, f32), plus the optional importance .npy (f32 [K] per
// column or [N, K] per element). Owns the loaded bytes. Errors name the file and the problem.
#ifndef NVFP4_CLIENT_CLI_TENSOR_INPUT_H_
#define NVFP4_CLIENT_CLI_TENSOR_INPUT_H_

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "kernels/tensor.h"

namespace nvfp4::cli {

struct LoadedTensor {
  DType dtype = DType::kF32;
  int64_t rows = 0;
  int64_t cols = 0;
  std::vector<uint8_t> bytes;

  TensorView view() const { return {dtype, rows, cols, bytes.data()}; }
};

// raw_dtype/raw_shape set: read `path` as raw bytes; otherwise as .npy.
absl::StatusOr<LoadedTensor> LoadTensor(const std::string& path,
                                        const std::optional<std::string>& raw_dtype,
                                        const std::optional<std::string>& raw_shape);

struct LoadedImportance {
  ImportanceLayout layout = ImportanceLayout::kNone;
  std::vector<float> values;

  ImportanceView view() const {
    return {layout, values.empty() ? nullptr : values.data(), static_cast<int64_t>(values.size())};
  }
};

absl::StatusOr<LoadedImportance> LoadImportance(const std::string& path, int64_t rows,
                                                int64_t cols);

}  // namespace nvfp4::cli

#endif  // NVFP4_CLIENT_CLI_TENSOR_INPUT_H_
