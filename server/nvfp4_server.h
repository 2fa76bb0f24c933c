// Nvfp4Server: assembles and runs nvfp4d: engines, scheduler, job registry, metrics (with their
// HTTP exposer), the Quantizer service, grpc.health.v1 and server reflection.
//
// Health: service "" and "nvfp4.v1.Quantizer" are SERVING while accepting jobs and NOT_SERVING
// once draining; "liveness" stays SERVING until the process stops (for liveness probes).
// Shutdown(drain): NOT_SERVING, refuse new jobs (UNAVAILABLE), let running calls finish for up
// to `drain`, then cancel what is left, stop the workers. Thread-safe; Shutdown is idempotent.
#ifndef NVFP4_SERVER_NVFP4_SERVER_H_
#define NVFP4_SERVER_NVFP4_SERVER_H_

#include <cstdint>
#include <memory>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "grpcpp/grpcpp.h"
#include "kernels/backend.h"
#include "server/engine/job_registry.h"
#include "server/engine/scheduler.h"
#include "server/metrics/server_metrics.h"
#include "server/service/quantizer_service.h"

namespace nvfp4::server {

struct ServerOptions {
  std::string listen = "127.0.0.1:50051";         // host:port; port 0 picks a free port
  std::string metrics_listen = "127.0.0.1:9400";  // empty: no metrics endpoint
  std::string device = "auto";                    // auto | cpu | cuda
  int cpu_workers = 1;                            // concurrent CPU jobs
  int threads = 0;                                // CPU threads in total (0: all cores)
  std::string cpu_isa = "auto";
  SchedulerOptions scheduler;
  ServiceOptions service;
  int job_history = 1000;
  std::string tls_cert_file;  // both set: TLS
  std::string tls_key_file;
  std::string auth_token_file;  // set: bearer-token auth
  // QuantizeCheckpoint reads and writes only inside these directories; none: RPC disabled.
  std::vector<std::string> allowed_roots;
  // How often the housekeeping thread runs: GPU memory gauge, engine health, stalled uploads,
  // idle buffers (tests lengthen it to drive those by hand).
  absl::Duration housekeeping_period = absl::Seconds(2);
};

class Nvfp4Server {
 public:
  // engines: when non-empty, used instead of creating them from options (tests).
  static absl::StatusOr<std::unique_ptr<Nvfp4Server>> Start(
      const ServerOptions& options, std::vector<std::unique_ptr<QuantizerBackend>> engines = {});
  ~Nvfp4Server();  // Shutdown(absl::ZeroDuration()) if still running

  int port() const { return port_; }
  int metrics_port() const { return metrics_ ? metrics_->exposer_port() : 0; }
  Scheduler& scheduler() { return *scheduler_; }
  QuantizerService& service() { return *service_; }
  ServerMetrics* metrics() { return metrics_.get(); }
  // Human-readable effective configuration (printed by nvfp4d at start).
  std::string Describe() const;

  void Shutdown(absl::Duration drain);
  void Wait();

 private:
  Nvfp4Server() = default;

  ServerOptions options_;
  int port_ = 0;
  std::unique_ptr<ServerMetrics> metrics_;
  std::unique_ptr<JobRegistry> jobs_;
  std::unique_ptr<Scheduler> scheduler_;
  std::unique_ptr<QuantizerService> service_;
  std::unique_ptr<grpc::Server> server_;
  absl::Mutex shutdown_mu_;
  bool shut_down_ ABSL_GUARDED_BY(shutdown_mu_) = false;
  // Set once the gRPC server has shut down (after the drain): housekeeping runs until then.
  bool housekeeping_done_ ABSL_GUARDED_BY(shutdown_mu_) = false;
  // Every 2 s, also while draining: refreshes nvfp4_gpu_memory_used_bytes and
  // nvfp4_worker_healthy, turns health to NOT_SERVING (liveness too) once an engine cannot take
  // work, fails uploads stalled for --upload-idle-timeout (so that a client that stopped
  // sending cannot hold a drain to its deadline), frees job buffers idle for longer than
  // --buffer-idle-release, and trims the heap while the server is idle.
  void Housekeeping(const std::vector<int>& gpus);
  void CheckEngineHealth();
  std::set<size_t> lost_engines_;  // reported already; Housekeeping's thread only
  std::thread housekeeping_;
};

}  // namespace nvfp4::server

#endif  // NVFP4_SERVER_NVFP4_SERVER_H_
