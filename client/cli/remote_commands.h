// nvfp4q subcommands that talk to nvfp4d: `info`, `jobs`, `cancel`; and the Ctrl-C guard used
// by remote quantisation.
#ifndef NVFP4_CLIENT_CLI_REMOTE_COMMANDS_H_
#define NVFP4_CLIENT_CLI_REMOTE_COMMANDS_H_

#include <atomic>
#include <functional>

#include "CLI/CLI.hpp"
#include "client/quantizer_client.h"

namespace nvfp4::cli {

std::function<int()> AddInfoCommand(CLI::App& app);
std::function<int()> AddJobsCommand(CLI::App& app);
std::function<int()> AddHealthCommand(CLI::App& app);
std::function<int()> AddCancelCommand(CLI::App& app);

// Ctrl-C for the whole process. InstallInterruptWatcher() must run first in main, before any
// thread exists (gRPC starts threads as soon as a channel is made): it blocks SIGINT in the
// calling thread, so every later thread inherits the mask, and one watcher thread takes the
// signal with sigwait. While an InterruptCancels is alive, the first Ctrl-C cancels the
// client's calls in flight (so the server cancels the job) and sets *flag, instead of killing
// the process; the command then ends with exit code 7. Otherwise, and on a second Ctrl-C, the
// process dies of SIGINT as it would by default. A process started with SIGINT ignored keeps
// ignoring it (no watcher). Thread-safe; at most one InterruptCancels at a time.
void InstallInterruptWatcher();

class InterruptCancels {
 public:
  // client and flag may each be null; they must outlive this object.
  explicit InterruptCancels(client::QuantizerClient* client, std::atomic<bool>* flag = nullptr);
  ~InterruptCancels();
  InterruptCancels(const InterruptCancels&) = delete;
  InterruptCancels& operator=(const InterruptCancels&) = delete;
  // Whether a Ctrl-C arrived while this object was alive.
  bool interrupted() const { return interrupted_.load(); }

 private:
  friend void* WatchInterrupts(void* arg);
  void Interrupt();
  client::QuantizerClient* const client_;
  std::atomic<bool>* const flag_;
  std::atomic<bool> interrupted_{false};
};

}  // namespace nvfp4::cli

#endif  // NVFP4_CLIENT_CLI_REMOTE_COMMANDS_H_
