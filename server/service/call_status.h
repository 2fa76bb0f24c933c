// ClientEndedCall: the status of a call that gRPC cancelled (OnCancel) — the client cancelled
// it, its deadline passed, or the server is shutting down; gRPC reports all of them the same
// way. DeadlineExceeded when the call's deadline has passed or is less than 0.5 s away (the
// server's copy of the deadline starts when the call arrived, so the client's copy fires, and
// its cancel arrives, a little before it), else Cancelled. The job record and the outcome
// metrics then say which. Call it when the cancel arrives (from OnCancel), not later.
// Thread-safe (reads the context's deadline only).
#ifndef NVFP4_SERVER_SERVICE_CALL_STATUS_H_
#define NVFP4_SERVER_SERVICE_CALL_STATUS_H_

#include <chrono>

#include "absl/status/status.h"
#include "grpcpp/grpcpp.h"

namespace nvfp4::server {

inline absl::Status ClientEndedCall(const grpc::CallbackServerContext& context) {
  constexpr auto kDeadlineSkew = std::chrono::milliseconds(500);
  if (context.deadline() <= std::chrono::system_clock::now() + kDeadlineSkew) {
    return absl::DeadlineExceededError("the client's deadline passed before the job finished");
  }
  return absl::CancelledError("the call was cancelled (by the client, or a server shutdown)");
}

}  // namespace nvfp4::server

#endif  // NVFP4_SERVER_SERVICE_CALL_STATUS_H_
