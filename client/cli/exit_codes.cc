#include "client/cli/exit_codes.h"

#include <cstdio>
#include <string>

namespace nvfp4::cli {

int ReportError(const absl::Status& status) {
  std::fprintf(stderr, "nvfp4q: %s\n", std::string(status.message()).c_str());
  switch (status.code()) {
    case absl::StatusCode::kOk:
      return kExitOk;
    case absl::StatusCode::kInvalidArgument:
    case absl::StatusCode::kFailedPrecondition:
    case absl::StatusCode::kOutOfRange:
      return kExitInvalidInput;
    case absl::StatusCode::kNotFound:
    case absl::StatusCode::kDataLoss:
    case absl::StatusCode::kUnavailable:
      return kExitIo;
    case absl::StatusCode::kResourceExhausted:
      return kExitOutOfMemory;
    case absl::StatusCode::kUnauthenticated:
    case absl::StatusCode::kPermissionDenied:
      return kExitUnauthenticated;
    case absl::StatusCode::kCancelled:
    case absl::StatusCode::kDeadlineExceeded:
      return kExitCancelled;
    default:
      return kExitInternal;
  }
}

}  // namespace nvfp4::cli
