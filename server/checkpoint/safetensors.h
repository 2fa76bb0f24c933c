// safetensors I/O: a strict, zero-copy reader and a streaming, crash-safe writer.
//
// What: ParseSafetensors validates a whole file image with the ten checks of the reference
// reader (huggingface/safetensors `read_metadata` + `Metadata::validate`, see
// docs/checkpoints.md) plus duplicate-key rejection:
//   1 file >= 8 bytes; 2 header length N <= 100,000,000; 3 8 + N <= file size; 4 header is
//   UTF-8; 5 header is a JSON object of {dtype, shape, data_offsets} entries (+ an optional
//   string->string "__metadata__") with known dtypes; 6 entries sorted by offset are contiguous
//   from 0; 7 element and bit counts do not overflow; 8 bit count is a multiple of 8;
//   9 end - begin == the computed byte size; 10 8 + N + last end == file size.
// MappedSafetensors mmaps a file read-only and parses it; tensor bytes are pointers into the
// mapping. SafetensorsWriter writes a file whose layout (names, dtypes, shapes) is known up
// front and whose bytes arrive in order: header padded so the data starts 8-byte aligned, data
// streamed to `<path>.tmp.<pid>`, fsync, rename into place on Commit (a crash or an abandoned
// writer never leaves a file at `path`).
// Ownership: MappedSafetensors owns its mapping (move-only); pointers from data() die with it.
// SafetensorsWriter owns its temporary file and removes it unless committed.
// Thread-safety: a MappedSafetensors may be read from many threads; a writer is single-threaded.
// Errors: malformed files are InvalidArgument "<file>: ..." naming the tensor where there is
// one; I/O errors map errno (NotFound, PermissionDenied, ...). Nothing throws.
#ifndef NVFP4_SERVER_CHECKPOINT_SAFETENSORS_H_
#define NVFP4_SERVER_CHECKPOINT_SAFETENSORS_H_

#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "server/checkpoint/content_hash.h"

namespace nvfp4::checkpoint {

inline constexpr uint64_t kSafetensorsMaxHeaderBytes = 100'000'000;

// Bits per element of a safetensors dtype name ("F4" -> 4, "F6_E2M3" -> 6, "U8" -> 8,
// "BF16" -> 16, ...), or nullopt for an unknown name.
std::optional<int> SafetensorsDTypeBits(std::string_view dtype);

struct SafetensorsTensorInfo {
  std::string name;
  std::string dtype;
  std::vector<int64_t> shape;  // empty for a 0-d scalar
  uint64_t begin = 0;          // byte offsets within the data section
  uint64_t end = 0;

  uint64_t bytes() const { return end - begin; }
  int64_t elements() const;
};

struct SafetensorsHeader {
  uint64_t header_size = 0;                     // N
  uint64_t data_start = 0;                      // 8 + N
  std::vector<SafetensorsTensorInfo> tensors;   // sorted by data offset
  std::map<std::string, std::string> metadata;  // "__metadata__"

  const SafetensorsTensorInfo* Find(std::string_view name) const;

 private:
  friend absl::StatusOr<SafetensorsHeader> ParseSafetensors(std::string_view, const uint8_t*,
                                                            uint64_t);
  absl::flat_hash_map<std::string, size_t> index_;
};

// Validates the image `bytes[0, size)` of a whole file; `file_name` prefixes every message.
absl::StatusOr<SafetensorsHeader> ParseSafetensors(std::string_view file_name, const uint8_t* bytes,
                                                   uint64_t size);

class MappedSafetensors {
 public:
  static absl::StatusOr<MappedSafetensors> Open(const std::string& path);

  MappedSafetensors(MappedSafetensors&& other) noexcept;
  MappedSafetensors& operator=(MappedSafetensors&& other) noexcept;
  MappedSafetensors(const MappedSafetensors&) = delete;
  MappedSafetensors& operator=(const MappedSafetensors&) = delete;
  ~MappedSafetensors();

  const std::string& path() const { return path_; }
  uint64_t file_size() const { return size_; }
  const SafetensorsHeader& header() const { return header_; }
  const uint8_t* data(const SafetensorsTensorInfo& tensor) const {
    return base_ + header_.data_start + tensor.begin;
  }

 private:
  MappedSafetensors() = default;
  void Unmap();

  std::string path_;
  const uint8_t* base_ = nullptr;
  uint64_t size_ = 0;
  SafetensorsHeader header_;
};

// One tensor of a file being written: its layout only; bytes come through Write.
struct SafetensorsEntry {
  std::string name;
  std::string dtype;
  std::vector<int64_t> shape;
};

class SafetensorsWriter {
 public:
  // Validates the layout (non-empty unique UTF-8 names, known dtypes, no overflow), creates the
  // temporary file and writes the header.
  static absl::StatusOr<std::unique_ptr<SafetensorsWriter>> Create(
      const std::string& path, const std::vector<SafetensorsEntry>& entries,
      const std::map<std::string, std::string>& metadata);
  ~SafetensorsWriter();  // removes the temporary file unless committed

  // Appends data bytes in entry order (a call may span tensors). Fails past the end.
  absl::Status Write(const void* data, size_t size);
  // The byte count every entry needs, in order.
  const std::vector<uint64_t>& entry_bytes() const { return entry_bytes_; }
  // Checks every byte arrived, fsyncs, renames to `path`, fsyncs the directory.
  absl::Status Commit();
  // The content hash (content_hash.h) of the file's bytes, computed while writing: equals
  // HashFile(path) after a successful Commit, without reading the file back.
  std::string content_hash() const { return hasher_.HexDigest(); }

 private:
  SafetensorsWriter() = default;
  absl::Status Flush();

  std::string path_;
  std::string tmp_path_;
  int fd_ = -1;
  bool committed_ = false;
  uint64_t data_bytes_ = 0;
  uint64_t written_ = 0;
  std::vector<uint64_t> entry_bytes_;
  std::string buffer_;  // small writes are coalesced
  ContentHasher hasher_;
};

// A tensor with its bytes, for WriteSafetensors.
struct SafetensorsBlob {
  SafetensorsEntry entry;
  const void* data = nullptr;  // not owned
  size_t size = 0;             // must equal the layout's byte count
};

// Writes a whole file atomically (Create + Write per blob + Commit).
absl::Status WriteSafetensors(const std::string& path, const std::vector<SafetensorsBlob>& blobs,
                              const std::map<std::string, std::string>& metadata);

}  // namespace nvfp4::checkpoint

#endif  // NVFP4_SERVER_CHECKPOINT_SAFETENSORS_H_
