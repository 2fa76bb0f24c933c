// NumPy .npy reader/writer and a raw-file reader.
//
// What: ReadNpy parses .npy format versions 1.0, 2.0 and 3.0 (C-order, little-endian or 1-byte
// numeric dtypes only) and returns the array's descr, shape and raw data bytes. WriteNpy writes a
// version 1.0 file (header padded to 64 bytes, as NumPy does) atomically via a temporary file
// and rename. ReadRawFile reads a headerless file whose size must match exactly.
// Supported descr strings: byte order '<' (any size), '|' / '>' / '=' (1-byte types only),
// kinds b1, i1/i2/i4/i8, u1/u2/u4/u8, f2/f4/f8, c8/c16. Object, string, datetime and
// structured dtypes, big-endian multi-byte data and Fortran-order arrays are rejected.
// Ownership: NpyArray owns its data. WriteNpy borrows `data` for the duration of the call.
// Thread-safety: all functions are reentrant; concurrent WriteNpy calls must target distinct
// paths.
// Errors: absl::Status with the file path in the message. Malformed, truncated or oversized
// files and unsupported dtypes are InvalidArgument; open failures map errno (NotFound,
// PermissionDenied, ...). No exceptions escape.
#ifndef NVFP4_CLIENT_IO_NPY_H_
#define NVFP4_CLIENT_IO_NPY_H_

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace nvfp4::io {

struct NpyArray {
  std::string descr;           // NumPy dtype string as stored in the file, e.g. "<f4", "|u1".
  std::vector<int64_t> shape;  // C order; empty for a 0-d array.
  std::vector<uint8_t> data;   // Raw little-endian element bytes, row-major.

  // Bytes per element derived from `descr` (0 if `descr` is not a supported dtype).
  size_t element_size() const;
  // Product of `shape` (1 for a 0-d array; -1 if a dimension is negative or it overflows).
  int64_t element_count() const;
};

// Validates a .npy descr string and returns its item size in bytes, e.g. "<f4" -> 4.
absl::StatusOr<size_t> NpyDescrItemSize(std::string_view descr);

// Reads a .npy file. The file size must equal header size + product(shape) * itemsize exactly.
absl::StatusOr<NpyArray> ReadNpy(const std::string& path);

// Writes a C-order .npy (format 1.0) file. `bytes` must equal product(shape) * itemsize(descr).
absl::Status WriteNpy(const std::string& path, const std::string& descr,
                      const std::vector<int64_t>& shape, const void* data, size_t bytes);

// Reads a headerless binary file (e.g. raw bf16) that must be exactly `expected_bytes` long.
absl::StatusOr<std::vector<uint8_t>> ReadRawFile(const std::string& path, size_t expected_bytes);

// Writes `bytes` raw bytes to `path` atomically (temporary file, fsync, rename).
absl::Status WriteRawFile(const std::string& path, const void* data, size_t bytes);

}  // namespace nvfp4::io

#endif  // NVFP4_CLIENT_IO_NPY_H_
