// Non-owning views of the tensors a quantizer reads.
//
// TensorView: a row-major, contiguous 2-D tensor [rows, cols] of F32, BF16 or F16 values
// (little-endian, host memory). ImportanceView: optional WMSE weights, either one f32 per
// column (length cols, broadcast over rows) or one per element (rows * cols). Views never own
// their data; the caller keeps it alive for the duration of the call.
#ifndef NVFP4_KERNELS_TENSOR_H_
#define NVFP4_KERNELS_TENSOR_H_

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string_view>

namespace nvfp4 {

enum class DType : int { kF32 = 0, kBF16 = 1, kF16 = 2 };

constexpr size_t DTypeSize(DType dtype) { return dtype == DType::kF32 ? 4 : 2; }

// safetensors spelling: "F32", "BF16", "F16".
constexpr std::string_view DTypeName(DType dtype) {
  switch (dtype) {
    case DType::kF32:
      return "F32";
    case DType::kBF16:
      return "BF16";
    case DType::kF16:
      return "F16";
  }
  return "unknown";
}

// Accepts the safetensors names and the lower-case forms f32/bf16/f16.
constexpr std::optional<DType> ParseDType(std::string_view name) {
  if (name == "F32" || name == "f32") return DType::kF32;
  if (name == "BF16" || name == "bf16") return DType::kBF16;
  if (name == "F16" || name == "f16") return DType::kF16;
  return std::nullopt;
}

struct TensorView {
  DType dtype = DType::kF32;
  int64_t rows = 0;
  int64_t cols = 0;
  const void* data = nullptr;

  int64_t elements() const { return rows * cols; }
  size_t bytes() const { return static_cast<size_t>(elements()) * DTypeSize(dtype); }
};

enum class ImportanceLayout : int { kNone = 0, kPerColumn = 1, kPerElement = 2 };

struct ImportanceView {
  ImportanceLayout layout = ImportanceLayout::kNone;
  const float* data = nullptr;
  int64_t size = 0;  // number of floats at data

  bool present() const { return layout != ImportanceLayout::kNone; }
};

}  // namespace nvfp4

#endif  // NVFP4_KERNELS_TENSOR_H_
