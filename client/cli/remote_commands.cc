#include "client/cli/remote_commands.h"

#include <pthread.h>
#include <signal.h>

#include <atomic>
#include <cstdio>
#include <memory>
#include <string>

#include "absl/base/thread_annotations.h"
#include "absl/strings/str_format.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "client/cli/common_flags.h"
#include "client/cli/exit_codes.h"
#include "client/cli/report.h"
#include "common/status_macros.h"
#include "google/protobuf/util/json_util.h"
#include "kernels/metrics.h"
#include "proto/convert.h"

namespace nvfp4::cli {
namespace {

// The InterruptCancels alive now, if any (guarded by g_handler_mu).
absl::Mutex g_handler_mu;
InterruptCancels* g_handler ABSL_GUARDED_BY(g_handler_mu) = nullptr;

std::string ToJson(const google::protobuf::Message& message) {
  std::string json;
  google::protobuf::util::JsonPrintOptions options;
  options.preserve_proto_field_names = true;
  (void)google::protobuf::util::MessageToJsonString(message, &json, options);
  return json;
}

std::string StateName(v1::JobState state) {
  std::string name = v1::JobState_Name(state);
  const std::string prefix = "JOB_STATE_";
  if (name.rfind(prefix, 0) == 0) name = name.substr(prefix.size());
  for (char& c : name) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return name;
}

std::string FormatTime(double unix_seconds) {
  if (unix_seconds <= 0) return "-";
  return absl::FormatTime("%H:%M:%S", absl::FromUnixSeconds(static_cast<int64_t>(unix_seconds)),
                          absl::LocalTimeZone());
}

struct InfoFlags {
  RemoteFlags remote;
  bool json = false;
};

struct HealthFlags {
  RemoteFlags remote;
  std::string service;
};

// Exit 0 when SERVING; otherwise prints the status and exits 4 (for container HEALTHCHECKs).
absl::StatusOr<int> RunHealth(const HealthFlags& flags) {
  ASSIGN_OR_RETURN(auto client, flags.remote.Connect());
  ASSIGN_OR_RETURN(const std::string status, client->CheckHealth(flags.service));
  std::printf("%s\n", status.c_str());
  return status == "SERVING" ? kExitOk : kExitIo;
}

absl::StatusOr<int> RunInfo(const InfoFlags& flags) {
  ASSIGN_OR_RETURN(auto client, flags.remote.Connect());
  ASSIGN_OR_RETURN(v1::ServerInfo info, client->GetServerInfo());
  if (flags.json) {
    std::printf("%s\n", ToJson(info).c_str());
    return kExitOk;
  }
  std::printf("nvfp4d %s at %s%s%s\n", info.version().c_str(), flags.remote.server.c_str(),
              info.auth_required() ? " (auth)" : "", info.draining() ? " DRAINING" : "");
  for (const auto& d : info.devices())
    std::printf("  device  %s (%s)\n", d.name().c_str(), d.kind().c_str());
  std::string methods;
  for (const auto& m : info.methods()) methods += (methods.empty() ? "" : ", ") + m;
  std::printf("  methods %s\n", methods.c_str());
  const v1::Limits& l = info.limits();
  std::printf(
      "  limits  queue %d, job %lld MiB, memory %lld MiB, chunk %lld KiB, message %lld MiB\n",
      l.max_queue(), static_cast<long long>(l.max_tensor_bytes() >> 20),
      static_cast<long long>(l.memory_budget_bytes() >> 20),
      static_cast<long long>(l.max_chunk_bytes() >> 10),
      static_cast<long long>(l.max_message_bytes() >> 20));
  return kExitOk;
}

struct JobsFlags {
  RemoteFlags remote;
  std::string job_id;
  bool json = false;
};

void PrintJobRow(const v1::Job& job) {
  std::printf("%-22s %-10s %-28.28s %12lld %9s %9s %10s %s\n", job.id().c_str(),
              StateName(job.state()).c_str(), job.name().c_str(),
              static_cast<long long>(job.elements()), FormatTime(job.created_unix()).c_str(),
              FormatTime(job.finished_unix()).c_str(),
              job.has_metrics()
                  ? absl::StrFormat("%+.1f%%",
                                    100 * (ObjectiveGain(api::MetricsFromProto(job.metrics())) - 1))
                        .c_str()
                  : "-",
              job.error_code().c_str());
}

absl::StatusOr<int> RunJobs(const JobsFlags& flags) {
  ASSIGN_OR_RETURN(auto client, flags.remote.Connect());
  std::vector<v1::Job> jobs;
  if (!flags.job_id.empty()) {
    ASSIGN_OR_RETURN(v1::Job job, client->GetJob(flags.job_id));
    jobs.push_back(job);
  } else {
    ASSIGN_OR_RETURN(jobs, client->ListJobs());
  }
  if (flags.json) {
    v1::ListJobsResponse all;
    for (const auto& j : jobs) *all.add_jobs() = j;
    std::printf("%s\n", ToJson(all).c_str());
    return kExitOk;
  }
  std::printf("%-22s %-10s %-28s %12s %9s %9s %10s %s\n", "job", "state", "name", "elements",
              "created", "finished", "vs AbsMax", "error");
  for (const auto& j : jobs) PrintJobRow(j);
  return kExitOk;
}

absl::StatusOr<int> RunCancel(const JobsFlags& flags) {
  ASSIGN_OR_RETURN(auto client, flags.remote.Connect());
  ASSIGN_OR_RETURN(v1::Job job, client->CancelJob(flags.job_id));
  if (flags.json) {
    std::printf("%s\n", ToJson(job).c_str());
  } else if (job.state() == v1::JOB_STATE_QUEUED || job.state() == v1::JOB_STATE_RUNNING) {
    // The server stops the job between chunks: it is still queued or running at this instant.
    std::printf("%s: cancel requested (was %s)\n", job.id().c_str(),
                StateName(job.state()).c_str());
  } else {
    std::printf("%s: %s\n", job.id().c_str(), StateName(job.state()).c_str());
  }
  return kExitOk;
}

}  // namespace

void* WatchInterrupts(void*) {
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGINT);
  for (;;) {
    int signal_number = 0;
    if (sigwait(&set, &signal_number) != 0) continue;
    {
      absl::MutexLock lock(&g_handler_mu);
      if (g_handler != nullptr && !g_handler->interrupted()) {
        g_handler->Interrupt();
        continue;
      }
    }
    // Nothing to cancel, or a second Ctrl-C: the default action (the process dies of SIGINT).
    signal(SIGINT, SIG_DFL);
    pthread_sigmask(SIG_UNBLOCK, &set, nullptr);
    raise(SIGINT);
  }
}

void InstallInterruptWatcher() {
  // Started with SIGINT ignored (a background job of a non-interactive shell): keep it so.
  struct sigaction current;
  if (sigaction(SIGINT, nullptr, &current) == 0 && current.sa_handler == SIG_IGN) return;
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGINT);
  pthread_sigmask(SIG_BLOCK, &set, nullptr);
  pthread_t watcher;
  if (pthread_create(&watcher, nullptr, WatchInterrupts, nullptr) == 0) {
    pthread_detach(watcher);
  } else {
    pthread_sigmask(SIG_UNBLOCK, &set, nullptr);  // no watcher: keep the default action
  }
}

InterruptCancels::InterruptCancels(client::QuantizerClient* client, std::atomic<bool>* flag)
    : client_(client), flag_(flag) {
  absl::MutexLock lock(&g_handler_mu);
  g_handler = this;
}

InterruptCancels::~InterruptCancels() {
  absl::MutexLock lock(&g_handler_mu);
  if (g_handler == this) g_handler = nullptr;
}

void InterruptCancels::Interrupt() {
  interrupted_.store(true);
  std::fprintf(stderr, "\nnvfp4q: interrupted, cancelling the job (Ctrl-C again to quit now)\n");
  if (flag_ != nullptr) flag_->store(true);
  if (client_ != nullptr) client_->CancelInFlight();
}

std::function<int()> AddInfoCommand(CLI::App& app) {
  auto flags = std::make_shared<InfoFlags>();
  CLI::App* cmd = app.add_subcommand("info", "Show an nvfp4d server's version, devices, limits");
  flags->remote.Register(cmd, true);
  cmd->add_flag("--json", flags->json, "print JSON");
  return SubcommandRunner(cmd, flags, &RunInfo);
}

std::function<int()> AddHealthCommand(CLI::App& app) {
  auto flags = std::make_shared<HealthFlags>();
  CLI::App* cmd = app.add_subcommand(
      "health", "Check an nvfp4d's grpc.health.v1 status (exit 0 when SERVING, else 4)");
  flags->remote.Register(cmd, true);
  cmd->add_option("--service", flags->service,
                  "\"\" (the server, default), nvfp4.v1.Quantizer (ready), liveness");
  return SubcommandRunner(cmd, flags, &RunHealth);
}

std::function<int()> AddJobsCommand(CLI::App& app) {
  auto flags = std::make_shared<JobsFlags>();
  CLI::App* cmd = app.add_subcommand("jobs", "List an nvfp4d server's jobs (or show one)");
  flags->remote.Register(cmd, true);
  cmd->add_option("job", flags->job_id, "show only this job");
  cmd->add_flag("--json", flags->json, "print JSON");
  return SubcommandRunner(cmd, flags, &RunJobs);
}

std::function<int()> AddCancelCommand(CLI::App& app) {
  auto flags = std::make_shared<JobsFlags>();
  CLI::App* cmd = app.add_subcommand("cancel", "Cancel a queued or running job on nvfp4d");
  flags->remote.Register(cmd, true);
  cmd->add_option("job", flags->job_id, "job id")->required();
  cmd->add_flag("--json", flags->json, "print JSON");
  return SubcommandRunner(cmd, flags, &RunCancel);
}

}  // namespace nvfp4::cli
