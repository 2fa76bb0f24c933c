// Small POSIX file helpers shared by the file readers and writers of every layer (internal).
//
// What: ReadOnlyFile opens a regular file and reads exact byte ranges with pread(2);
// WriteFileAtomically writes a sequence of byte chunks to `path + ".tmp.<pid>"`, fsyncs it and
// renames it over `path`, so readers never observe a partially written file.
// Ownership: ReadOnlyFile owns its file descriptor (move-only, closed on destruction). Chunk
// pointers passed to WriteFileAtomically are borrowed for the duration of the call.
// Thread-safety: a ReadOnlyFile may be read from several threads at once (pread has no shared
// file offset). Concurrent WriteFileAtomically calls on the same `path` from one process share a
// temporary file name and are not supported; distinct paths are fine.
// Errors: absl::Status values whose messages start with the file path; errno is mapped with
// absl::ErrnoToStatus (ENOENT -> NotFound, EACCES -> PermissionDenied, ...) and marked as file
// errors (common/file_status.h). Short reads caused by a file shrinking underneath us are
// DataLoss. Nothing here throws.
#ifndef NVFP4_COMMON_POSIX_FILE_H_
#define NVFP4_COMMON_POSIX_FILE_H_

#include <errno.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "common/file_status.h"

namespace nvfp4::io::internal {

class ReadOnlyFile {
 public:
  // Opens `path` for reading; fails unless it is a regular file.
  static absl::StatusOr<ReadOnlyFile> Open(const std::string& path) {
    int fd;
    do {
      fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    } while (fd < 0 && errno == EINTR);
    if (fd < 0) return FileErrnoStatus(errno, path, "cannot open for reading");
    ReadOnlyFile file(fd, path);
    struct stat st;
    if (::fstat(fd, &st) != 0) return FileErrnoStatus(errno, path, "fstat failed");
    if (!S_ISREG(st.st_mode)) {
      return absl::InvalidArgumentError(absl::StrCat(path, ": not a regular file"));
    }
    file.size_ = static_cast<uint64_t>(st.st_size);
    return file;
  }

  ReadOnlyFile(ReadOnlyFile&& other) noexcept
      : fd_(std::exchange(other.fd_, -1)), size_(other.size_), path_(std::move(other.path_)) {}
  ReadOnlyFile& operator=(ReadOnlyFile&& other) noexcept {
    if (this != &other) {
      Close();
      fd_ = std::exchange(other.fd_, -1);
      size_ = other.size_;
      path_ = std::move(other.path_);
    }
    return *this;
  }
  ReadOnlyFile(const ReadOnlyFile&) = delete;
  ReadOnlyFile& operator=(const ReadOnlyFile&) = delete;
  ~ReadOnlyFile() { Close(); }

  // File size in bytes as reported by fstat at Open time.
  uint64_t size() const { return size_; }
  const std::string& path() const { return path_; }

  // Reads exactly `n` bytes starting at byte `offset` into `dst`.
  absl::Status ReadAt(uint64_t offset, void* dst, size_t n) const {
    auto* out = static_cast<unsigned char*>(dst);
    size_t done = 0;
    while (done < n) {
      const ssize_t got = ::pread(fd_, out + done, n - done, static_cast<off_t>(offset + done));
      if (got < 0) {
        if (errno == EINTR) continue;
        return FileErrnoStatus(errno, path_, "read failed");
      }
      if (got == 0) {
        return absl::DataLossError(absl::StrCat(path_, ": unexpected end of file at byte ",
                                                offset + done, " (file changed while reading?)"));
      }
      done += static_cast<size_t>(got);
    }
    return absl::OkStatus();
  }

 private:
  ReadOnlyFile(int fd, std::string path) : fd_(fd), path_(std::move(path)) {}
  void Close() {
    if (fd_ >= 0) ::close(fd_);
    fd_ = -1;
  }

  int fd_ = -1;
  uint64_t size_ = 0;
  std::string path_;
};

// The whole contents of a regular file.
inline absl::StatusOr<std::string> ReadFileToString(const std::string& path) {
  absl::StatusOr<ReadOnlyFile> file = ReadOnlyFile::Open(path);
  if (!file.ok()) return file.status();
  std::string bytes(static_cast<size_t>(file->size()), '\0');
  if (absl::Status status = file->ReadAt(0, bytes.data(), bytes.size()); !status.ok()) {
    return status;
  }
  return bytes;
}

// A borrowed byte range to be written.
// product(shape) * item_size, or nullopt on a negative dimension or uint64 overflow.
inline std::optional<uint64_t> CheckedByteCount(const std::vector<int64_t>& shape,
                                                uint64_t item_size) {
  uint64_t total = item_size;
  for (const int64_t dim : shape) {
    if (dim < 0) return std::nullopt;
    if (__builtin_mul_overflow(total, static_cast<uint64_t>(dim), &total)) return std::nullopt;
  }
  return total;
}

struct ByteChunk {
  const void* data;
  size_t size;
};

// Writes all of `size` bytes to `fd`, retrying on EINTR and partial writes.
inline absl::Status WriteAll(int fd, const void* data, size_t size, const std::string& path) {
  const auto* in = static_cast<const unsigned char*>(data);
  size_t done = 0;
  while (done < size) {
    const ssize_t put = ::write(fd, in + done, size - done);
    if (put < 0) {
      if (errno == EINTR) continue;
      return FileErrnoStatus(errno, path, "write failed");
    }
    done += static_cast<size_t>(put);
  }
  return absl::OkStatus();
}

// Best effort: persists the directory entry of `path` (after a rename). A failure here does not
// undo the write, so it is not reported.
inline void SyncParentDirectory(const std::string& path) {
  const size_t slash = path.find_last_of('/');
  const std::string dir =
      slash == std::string::npos ? std::string(".") : (slash == 0 ? "/" : path.substr(0, slash));
  const int dir_fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dir_fd >= 0) {
    ::fsync(dir_fd);
    ::close(dir_fd);
  }
}

// Writes the concatenation of `chunks` to `path` atomically (temporary file, fsync, rename).
// On failure the temporary file is removed and `path` is left untouched.
inline absl::Status WriteFileAtomically(const std::string& path,
                                        const std::vector<ByteChunk>& chunks) {
  const std::string tmp = absl::StrCat(path, ".tmp.", static_cast<long>(::getpid()));
  int fd;
  do {
    fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0666);
  } while (fd < 0 && errno == EINTR);
  if (fd < 0) return FileErrnoStatus(errno, tmp, "cannot create temporary file");

  absl::Status status;
  for (const ByteChunk& chunk : chunks) {
    status = WriteAll(fd, chunk.data, chunk.size, tmp);
    if (!status.ok()) break;
  }
  if (status.ok() && ::fsync(fd) != 0) status = FileErrnoStatus(errno, tmp, "fsync failed");
  if (::close(fd) != 0 && status.ok()) status = FileErrnoStatus(errno, tmp, "close failed");
  if (status.ok() && ::rename(tmp.c_str(), path.c_str()) != 0) {
    status = FileErrnoStatus(errno, path, absl::StrCat("cannot rename ", tmp, " to it"));
  }
  if (!status.ok()) {
    ::unlink(tmp.c_str());
    return status;
  }
  SyncParentDirectory(path);
  return absl::OkStatus();
}

}  // namespace nvfp4::io::internal

#endif  // NVFP4_COMMON_POSIX_FILE_H_
