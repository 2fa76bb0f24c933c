// nvfp4q: the NVFP4 quantisation command line. Subcommands register themselves and return the
// callback that runs them; exit codes are in client/cli/exit_codes.h.
#include <cstdio>
#include <functional>
#include <vector>

#include "CLI/CLI.hpp"
#include "absl/synchronization/mutex.h"
#include "client/cli/bench_command.h"
#include "client/cli/compare_command.h"
#include "client/cli/exit_codes.h"
#include "client/cli/quantize_checkpoint_command.h"
#include "client/cli/quantize_tensor_command.h"
#include "client/cli/remote_commands.h"
#include "client/cli/verify_command.h"
#include "common/malloc_tuning.h"
#include "common/version.h"

int main(int argc, char** argv) {
  nvfp4::cli::InstallInterruptWatcher();  // before any thread: they inherit the signal mask
  nvfp4::TuneMallocForStreaming();
  // Debian builds Abseil without NDEBUG: every absl::Mutex taken while another is held would
  // add an edge to a process-wide deadlock-detection graph (docs/benchmarks.md, "Small jobs").
  // The tests keep the detection on.
  absl::SetMutexDeadlockDetectionMode(absl::OnDeadlockCycle::kIgnore);
  CLI::App app{"nvfp4q: quantise tensors to NVFP4 with ScaleSweep block scales"};
  app.set_version_flag("--version", std::string("nvfp4q ") + nvfp4::kVersion);
  app.require_subcommand(1);
  std::vector<std::function<int()>> commands = {
      nvfp4::cli::AddQuantizeCheckpointCommand(app),
      nvfp4::cli::AddQuantizeTensorCommand(app),
      nvfp4::cli::AddVerifyCommand(app),
      nvfp4::cli::AddBenchCommand(app),
      nvfp4::cli::AddCompareCommand(app),
      nvfp4::cli::AddInfoCommand(app),
      nvfp4::cli::AddJobsCommand(app),
      nvfp4::cli::AddCancelCommand(app),
      nvfp4::cli::AddHealthCommand(app),
  };
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    const int code = app.exit(e);
    return code == 0 ? nvfp4::cli::kExitOk : nvfp4::cli::kExitUsage;
  }
  for (const auto& command : commands) {
    const int code = command();
    if (code >= 0) return code;
  }
  return nvfp4::cli::kExitUsage;
}
