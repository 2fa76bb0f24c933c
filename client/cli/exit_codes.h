// nvfp4q exit codes, a stable interface for scripts:
//   0 success; 1 internal error; 2 usage error (bad flags); 3 invalid input (bad tensor, NaN,
//   shape mismatch); 4 I/O error (file missing, unreadable, unwritable); 5 out of memory.
#ifndef NVFP4_CLIENT_CLI_EXIT_CODES_H_
#define NVFP4_CLIENT_CLI_EXIT_CODES_H_

#include "absl/status/status.h"

namespace nvfp4::cli {

inline constexpr int kExitOk = 0;
inline constexpr int kExitInternal = 1;
inline constexpr int kExitUsage = 2;
inline constexpr int kExitInvalidInput = 3;
inline constexpr int kExitIo = 4;
inline constexpr int kExitOutOfMemory = 5;

// Prints "nvfp4q: <message>" to stderr and returns the exit code for the status.
int ReportError(const absl::Status& status);

}  // namespace nvfp4::cli

#endif  // NVFP4_CLIENT_CLI_EXIT_CODES_H_
