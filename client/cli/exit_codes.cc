#include "client/cli/exit_codes.h"

#include <cstdio>
#include <string>

#include "absl/strings/cord.h"
#include "absl/strings/string_view.h"
#include "common/file_status.h"

namespace nvfp4::cli {

namespace {
constexpr absl::string_view kUsagePayload = "type.nvfp4/cli.usage";
}  // namespace

absl::Status UsageError(std::string_view message) {
  absl::Status status = absl::InvalidArgumentError(std::string(message));
  status.SetPayload(kUsagePayload, absl::Cord("usage"));
  return status;
}

int ReportError(const absl::Status& status) {
  std::fprintf(stderr, "nvfp4q: %s\n", std::string(status.message()).c_str());
  if (status.GetPayload(kUsagePayload).has_value()) return kExitUsage;
  // This machine's file system (EACCES, ENOSPC, ...): not a refusal by a server, not memory.
  if (io::IsFileError(status)) return kExitIo;
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
    case absl::StatusCode::kAborted:  // another job holds the output's lock
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
