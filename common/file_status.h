// Statuses for failed file-system calls on this machine (open, read, write, list, create).
//
// What: FileErrnoStatus / FileErrorCodeStatus build "<path>: <what>: <strerror>" with the code
// absl::ErrnoToStatus derives from the errno (ENOENT -> NotFound, EACCES -> PermissionDenied,
// ENOSPC -> ResourceExhausted, ...) and mark the status as a local file error (ENOMEM aside),
// so that a front end can tell "this machine's file system said no" from the same code coming
// from a server (a token refused, a path outside --allowed-root): nvfp4q exits 4 for every
// local file error. The mark is a status payload; it does not cross gRPC.
// Thread-safety: plain functions. Errors: these build them; nothing here throws.
#ifndef NVFP4_COMMON_FILE_STATUS_H_
#define NVFP4_COMMON_FILE_STATUS_H_

#include <cerrno>
#include <system_error>

#include "absl/status/status.h"
#include "absl/strings/cord.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"

namespace nvfp4::io {

inline constexpr absl::string_view kFileErrorPayload = "type.nvfp4/io.file";

inline absl::Status FileErrnoStatus(int err, absl::string_view path, absl::string_view what) {
  absl::Status status = absl::ErrnoToStatus(err, absl::StrCat(path, ": ", what));
  // ENOMEM (an mmap of a large file, say) is this machine's memory, not its file system.
  if (err != ENOMEM) status.SetPayload(kFileErrorPayload, absl::Cord("file"));
  return status;
}

// The same for a std::filesystem failure; error codes outside the generic and system
// categories become Unknown.
inline absl::Status FileErrorCodeStatus(const std::error_code& error, absl::string_view path,
                                        absl::string_view what) {
  if (error.category() == std::generic_category() || error.category() == std::system_category()) {
    return FileErrnoStatus(error.value(), path, what);
  }
  absl::Status status = absl::UnknownError(absl::StrCat(path, ": ", what, ": ", error.message()));
  status.SetPayload(kFileErrorPayload, absl::Cord("file"));
  return status;
}

inline bool IsFileError(const absl::Status& status) {
  return status.GetPayload(kFileErrorPayload).has_value();
}

}  // namespace nvfp4::io

#endif  // NVFP4_COMMON_FILE_STATUS_H_
