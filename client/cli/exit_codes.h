// nvfp4q exit codes, a stable interface for scripts:
//   0 success; 1 internal error; 2 usage error (bad flags); 3 invalid input (bad tensor, NaN,
//   shape mismatch); 4 I/O error (any local file-system error, a missing file or job id; server
//   unreachable or draining); 5 resources exhausted or busy (out of memory, server queue or
//   memory budget full, another job writing the same output: retry later); 6 refused by the
//   server (token, --allowed-root); 7 cancelled or deadline exceeded.
#ifndef NVFP4_CLIENT_CLI_EXIT_CODES_H_
#define NVFP4_CLIENT_CLI_EXIT_CODES_H_

#include <functional>
#include <memory>
#include <string_view>

#include "CLI/CLI.hpp"
#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace nvfp4::cli {

inline constexpr int kExitOk = 0;
inline constexpr int kExitInternal = 1;
inline constexpr int kExitUsage = 2;
inline constexpr int kExitInvalidInput = 3;
inline constexpr int kExitIo = 4;
inline constexpr int kExitOutOfMemory = 5;
inline constexpr int kExitUnauthenticated = 6;
inline constexpr int kExitCancelled = 7;

// A flag value found wrong after parsing (an unknown name, a malformed size or shape, flags
// that need each other): InvalidArgument marked so that ReportError answers kExitUsage rather
// than kExitInvalidInput (which is for bad data).
absl::Status UsageError(std::string_view message);

// Prints "nvfp4q: <message>" to stderr and returns the exit code for the status.
int ReportError(const absl::Status& status);

// The callback each subcommand registers: -1 when `command` was not the one parsed, else the
// exit code of run(*flags) (errors reported on stderr).
template <typename Flags>
std::function<int()> SubcommandRunner(CLI::App* command, std::shared_ptr<Flags> flags,
                                      absl::StatusOr<int> (*run)(const Flags&)) {
  return [command, flags, run]() -> int {
    if (!command->parsed()) return -1;
    absl::StatusOr<int> code = run(*flags);
    return code.ok() ? *code : ReportError(code.status());
  };
}

}  // namespace nvfp4::cli

#endif  // NVFP4_CLIENT_CLI_EXIT_CODES_H_
