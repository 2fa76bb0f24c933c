// Minimal safetensors writer plus a small, strict reader for tests and output verification.
//
// What: WriteSafetensors lays tensors out contiguously in the given order behind a JSON header
// ({"__metadata__": {...}, "<name>": {"dtype", "shape", "data_offsets": [begin, end]}, ...})
// padded with spaces so the data section starts on an 8-byte boundary. The file is written
// atomically: `path + ".tmp.<pid>"`, fsync, rename. ReadSafetensorsSimple loads a whole file
// (header and data section) into memory and validates it.
// Ownership: SafetensorsEntry::data is borrowed for the duration of WriteSafetensors. A
// SafetensorsFile owns its copy of the data section.
// Thread-safety: functions are reentrant; concurrent writes must target distinct paths.
// Errors: absl::Status; invalid entries (unknown dtype, byte size != product(shape) * dtype
// size, duplicate or reserved names, invalid UTF-8) are InvalidArgument naming the tensor;
// malformed files are InvalidArgument naming the file; I/O failures map errno. No exceptions
// escape.
#ifndef NVFP4_CLIENT_IO_SAFETENSORS_WRITER_H_
#define NVFP4_CLIENT_IO_SAFETENSORS_WRITER_H_

#include <cstddef>
#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace nvfp4::io {

// Bytes per element of a safetensors dtype name ("U8" -> 1, "BF16" -> 2, ...), or nullopt for
// names outside: BOOL U8 I8 F8_E4M3 F8_E5M2 I16 U16 F16 BF16 I32 U32 F32 F64 I64 U64.
std::optional<size_t> SafetensorsDTypeSize(std::string_view dtype);

struct SafetensorsEntry {
  std::string name;
  std::string dtype;           // "U8", "F8_E4M3", "F32", "BF16", "F16", ...
  std::vector<int64_t> shape;  // May be empty for a 0-d scalar.
  const void* data = nullptr;  // Not owned; may be null only when bytes == 0.
  size_t bytes = 0;
};

// Writes `entries` (in order, contiguous) and `metadata` (omitted from the header when empty)
// to `path` atomically.
absl::Status WriteSafetensors(const std::string& path, const std::vector<SafetensorsEntry>& entries,
                              const std::map<std::string, std::string>& metadata);

// One tensor described by a safetensors header.
struct SafetensorsTensorInfo {
  std::string name;
  std::string dtype;
  std::vector<int64_t> shape;
  uint64_t begin = 0;  // Byte offset of the first element within the data section.
  uint64_t end = 0;    // One past the last byte within the data section.
};

struct SafetensorsFile {
  uint64_t header_size = 0;  // N: length of the JSON header in bytes, including padding.
  uint64_t data_start = 0;   // 8 + N: file offset at which the data section begins.
  std::vector<SafetensorsTensorInfo> tensors;   // Sorted by data offset (= write order).
  std::map<std::string, std::string> metadata;  // "__metadata__"; empty if absent.
  std::vector<uint8_t> data;                    // The whole data section.

  // Returns the tensor called `name`, or nullptr.
  const SafetensorsTensorInfo* Find(std::string_view name) const;
  // Pointer to the tensor's bytes inside `data` (valid while this object is alive).
  const uint8_t* TensorData(const SafetensorsTensorInfo& tensor) const {
    return data.data() + tensor.begin;
  }
};

// Reads and validates a safetensors file: header length <= 100,000,000 bytes and within the file,
// valid JSON object without duplicate keys, known dtypes, non-negative shapes, offsets
// contiguous from 0 with end - begin == product(shape) * dtype size, and file size exactly
// 8 + N + data section size.
absl::StatusOr<SafetensorsFile> ReadSafetensorsSimple(const std::string& path);

}  // namespace nvfp4::io

#endif  // NVFP4_CLIENT_IO_SAFETENSORS_WRITER_H_
