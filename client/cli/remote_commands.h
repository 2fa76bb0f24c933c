// nvfp4q subcommands that talk to nvfp4d: `info`, `jobs`, `cancel`; and the Ctrl-C guard used
// by remote quantisation.
#ifndef NVFP4_CLIENT_CLI_REMOTE_COMMANDS_H_
#define NVFP4_CLIENT_CLI_REMOTE_COMMANDS_H_

#include <pthread.h>
#include <atomic>
#include <functional>

#include "CLI/CLI.hpp"
#include "client/quantizer_client.h"

namespace nvfp4::cli {

std::function<int()> AddInfoCommand(CLI::App& app);
std::function<int()> AddJobsCommand(CLI::App& app);
std::function<int()> AddHealthCommand(CLI::App& app);
std::function<int()> AddCancelCommand(CLI::App& app);

// While alive, Ctrl-C (SIGINT) cancels the client's calls in flight (so the server cancels the
// job) and sets *flag, instead of killing the process. Either may be null. Create it before the
// client starts any call.
class InterruptCancels {
 public:
  explicit InterruptCancels(client::QuantizerClient* client, std::atomic<bool>* flag = nullptr);
  ~InterruptCancels();
  InterruptCancels(const InterruptCancels&) = delete;
  InterruptCancels& operator=(const InterruptCancels&) = delete;
  bool interrupted() const;

 private:
  friend void* WatchInterrupts(void* arg);
  client::QuantizerClient* client_;
  std::atomic<bool>* flag_;
  pthread_t watcher_;
  sigset_t previous_;
};

}  // namespace nvfp4::cli

#endif  // NVFP4_CLIENT_CLI_REMOTE_COMMANDS_H_
