// nvfp4d: the NVFP4 quantisation server. Prints its effective configuration, serves until
// SIGTERM/SIGINT, then drains (health NOT_SERVING, new jobs UNAVAILABLE, running calls get up to
// --drain-timeout) and exits 0.
#include <pthread.h>
#include <signal.h>

#include <cstdio>
#include <cstdlib>
#include <string>

#include "CLI/CLI.hpp"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "common/cli_checks.h"
#include "common/malloc_tuning.h"
#include "common/version.h"
#include "server/nvfp4_server.h"

int main(int argc, char** argv) {
  nvfp4::TuneMallocForStreaming();
  // Debian builds Abseil without NDEBUG, so every absl::Mutex taken while another is held adds
  // an edge to a process-wide lock graph (deadlock detection): with thousands of job records
  // alive, that graph cost nvfp4d half its small-job throughput (perf: GraphCycles::InsertEdge).
  // The tests keep the detection on.
  absl::SetMutexDeadlockDetectionMode(absl::OnDeadlockCycle::kIgnore);
  nvfp4::server::ServerOptions options;
  double drain_seconds = 30;
  int64_t memory_mib = options.scheduler.memory_budget_bytes >> 20;
  int64_t max_job_mib = options.scheduler.max_job_bytes >> 20;
  int64_t max_message_mib = options.service.max_message_bytes >> 20;

  CLI::App app{"nvfp4d: NVFP4 quantisation server (gRPC nvfp4.v1.Quantizer)"};
  app.set_version_flag("--version", std::string("nvfp4d ") + nvfp4::kVersion);
  app.add_option("--listen", options.listen,
                 "gRPC address host:port (port 0: a free port, printed at start; unix:PATH: a "
                 "Unix socket)")
      ->capture_default_str();
  app.add_option("--metrics-listen", options.metrics_listen,
                 "Prometheus /metrics address host:port (empty: off)")
      ->capture_default_str();
  app.add_option("--device", options.device, "engines: auto, cpu or cuda")
      ->check(CLI::IsMember({"auto", "cpu", "cuda"}))
      ->capture_default_str();
  app.add_option("--cpu-workers", options.cpu_workers, "concurrent CPU jobs")
      ->check(nvfp4::cli_checks::Positive())
      ->capture_default_str();
  app.add_option("--threads", options.threads,
                 "CPU threads in total (0: the CPUs this process may use: affinity, cgroup quota)")
      ->check(nvfp4::cli_checks::NonNegative())
      ->capture_default_str();
  app.add_option("--isa", options.cpu_isa, "CPU kernels: auto, scalar, avx2, avx512")
      ->check(CLI::IsMember({"auto", "scalar", "avx2", "avx512"}))
      ->capture_default_str();
  app.add_option("--max-queue", options.scheduler.max_queue,
                 "admitted jobs not yet running; beyond: RESOURCE_EXHAUSTED")
      ->check(nvfp4::cli_checks::Positive())
      ->capture_default_str();
  app.add_option("--memory-mib", memory_mib, "memory budget of all admitted jobs (MiB)")
      ->check(nvfp4::cli_checks::Positive())
      ->capture_default_str();
  app.add_option("--max-job-mib", max_job_mib, "largest job: input + importance + outputs (MiB)")
      ->check(nvfp4::cli_checks::Positive())
      ->capture_default_str();
  app.add_option("--max-message-mib", max_message_mib,
                 "largest message either way: a unary request or its response (MiB); "
                 "stream chunks are at most min(4, this)")
      ->check(CLI::Range(1, 2000))
      ->capture_default_str();
  std::string job_log = "failed";
  app.add_option("--log-jobs", job_log,
                 "finished calls logged on stderr, one line each: none, failed (jobs ending "
                 "neither OK nor CANCELLED), all (refusals too)")
      ->check(CLI::IsMember({"none", "failed", "all"}))
      ->capture_default_str();
  app.add_option("--drain-timeout", drain_seconds, "seconds running calls get on SIGTERM")
      ->check(nvfp4::cli_checks::NonNegative())
      ->capture_default_str();
  double upload_idle_seconds = absl::ToDoubleSeconds(options.service.upload_idle_timeout);
  double buffer_idle_seconds = absl::ToDoubleSeconds(options.service.buffer_idle_release);
  app.add_option(
         "--buffer-idle-release", buffer_idle_seconds,
         "seconds a finished job's input and output buffers are kept for reuse by later jobs")
      ->check(nvfp4::cli_checks::NonNegative())
      ->capture_default_str();
  app.add_option("--upload-idle-timeout", upload_idle_seconds,
                 "seconds an upload may make no progress before its job fails (and gives "
                 "back its worker and memory reservation)")
      ->check(nvfp4::cli_checks::Positive())
      ->capture_default_str();
  int64_t stream_window_mib = options.service.stream_window_bytes >> 20;
  app.add_option("--stream-window-mib", stream_window_mib,
                 "received data a streaming job may hold ahead of its engine (MiB); beyond, "
                 "flow control holds the client back")
      ->check(CLI::Range(1, 65536))
      ->capture_default_str();
  app.add_option("--job-history", options.job_history, "finished jobs kept for GetJob/ListJobs")
      ->check(nvfp4::cli_checks::NonNegative())
      ->capture_default_str();
  CLI::Option* tls_cert =
      app.add_option("--tls-cert", options.tls_cert_file, "PEM certificate chain (enables TLS)");
  CLI::Option* tls_key = app.add_option("--tls-key", options.tls_key_file, "PEM private key");
  tls_cert->needs(tls_key);
  tls_key->needs(tls_cert);
  app.add_option("--auth-token-file", options.auth_token_file,
                 "file holding the bearer token clients must send");
  app.add_option("--allowed-root", options.allowed_roots,
                 "directory checkpoint jobs may read and write under (repeatable; none: "
                 "QuantizeCheckpoint is disabled)");
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    // --help and --version exit 0; a usage error exits 2 (CLI11's own codes are > 100).
    return app.exit(e) == 0 ? 0 : 2;
  }
  options.scheduler.memory_budget_bytes = memory_mib << 20;
  options.scheduler.max_job_bytes = max_job_mib << 20;
  options.service.max_message_bytes = max_message_mib << 20;
  options.service.job_log = job_log == "none"  ? nvfp4::server::JobLog::kNone
                            : job_log == "all" ? nvfp4::server::JobLog::kAll
                                               : nvfp4::server::JobLog::kFailed;
  options.service.upload_idle_timeout = absl::Seconds(upload_idle_seconds);
  options.service.buffer_idle_release = absl::Seconds(buffer_idle_seconds);
  options.service.stream_window_bytes = stream_window_mib << 20;

  // Signals are taken synchronously by one thread: block them before any thread starts.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGINT);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);

  auto server = nvfp4::server::Nvfp4Server::Start(options);
  if (!server.ok()) {
    std::fprintf(stderr, "nvfp4d: %s\n", std::string(server.status().message()).c_str());
    return 1;
  }
  std::printf("%s", (*server)->Describe().c_str());
  std::printf("nvfp4d: serving\n");
  std::fflush(stdout);

  int signal_number = 0;
  sigwait(&signals, &signal_number);
  std::printf("nvfp4d: %s received, draining for up to %.0f s\n",
              signal_number == SIGTERM ? "SIGTERM" : "SIGINT", drain_seconds);
  std::fflush(stdout);
  (*server)->Shutdown(absl::Seconds(drain_seconds));
  std::printf("nvfp4d: stopped\n");
  return 0;
}
