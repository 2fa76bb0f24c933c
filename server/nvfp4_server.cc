#include "server/nvfp4_server.h"

#include <malloc.h>

#include <algorithm>
#include <cstdio>
#include <thread>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/strip.h"
#include "absl/time/clock.h"
#include "common/cpu_count.h"
#include "common/posix_file.h"
#include "common/status_macros.h"
#include "common/version.h"
#include "grpcpp/ext/proto_server_reflection_plugin.h"
#include "grpcpp/health_check_service_interface.h"
#include "kernels/cpu/cpu_backend.h"
#if NVFP4_WITH_CUDA
#include "kernels/cuda/cuda_backend.h"
#endif

namespace nvfp4::server {
namespace {

constexpr absl::Duration kShutdownLinger = absl::Milliseconds(500);
constexpr absl::Duration kIdleCallsGrace = absl::Milliseconds(200);

absl::StatusOr<std::string> ReadFile(const std::string& path, const char* what) {
  absl::StatusOr<std::string> bytes = io::internal::ReadFileToString(path);
  if (!bytes.ok()) {
    return absl::Status(bytes.status().code(), absl::StrCat("cannot read the ", what,
                                                            " file: ", bytes.status().message()));
  }
  return bytes;
}

// The address with the port the system chose when it asked for port 0 ("host:0").
std::string WithPort(const std::string& address, int port) {
  if (absl::EndsWith(address, ":0")) {
    return absl::StrCat(address.substr(0, address.size() - 1), port);
  }
  return address;
}

absl::StatusOr<std::vector<std::unique_ptr<QuantizerBackend>>> CreateEngines(
    const ServerOptions& options) {
  if (options.device != "auto" && options.device != "cpu" && options.device != "cuda") {
    return absl::InvalidArgumentError(
        absl::StrCat("--device must be auto, cpu or cuda, got '", options.device, "'"));
  }
  std::vector<std::unique_ptr<QuantizerBackend>> engines;
#if NVFP4_WITH_CUDA
  const int gpus = cuda::CudaDeviceCount();
  if (options.device == "cuda" || (options.device == "auto" && gpus > 0)) {
    if (gpus == 0) return absl::FailedPreconditionError("--device cuda: no CUDA device found");
    for (int gpu = 0; gpu < gpus; ++gpu) {
      ASSIGN_OR_RETURN(std::unique_ptr<cuda::CudaBackend> engine, cuda::CudaBackend::Create(gpu));
      engines.push_back(std::move(engine));
    }
    return engines;
  }
#else
  if (options.device == "cuda") {
    return absl::FailedPreconditionError("--device cuda: this nvfp4d was built without CUDA");
  }
#endif
  if (options.cpu_workers < 1) return absl::InvalidArgumentError("--cpu-workers must be >= 1");
  const std::optional<cpu::CpuIsa> isa = cpu::ParseCpuIsa(options.cpu_isa);
  if (!isa) return absl::InvalidArgumentError("--isa must be auto, scalar, avx2 or avx512");
  const int total = options.threads > 0 ? options.threads : UsableCpuCount();
  for (int i = 0; i < options.cpu_workers; ++i) {
    const int threads = std::max(1, total / options.cpu_workers);
    ASSIGN_OR_RETURN(std::unique_ptr<cpu::CpuBackend> backend,
                     cpu::CpuBackend::Create({threads, *isa}));
    engines.push_back(std::move(backend));
  }
  return engines;
}

}  // namespace

absl::StatusOr<std::unique_ptr<Nvfp4Server>> Nvfp4Server::Start(
    const ServerOptions& options, std::vector<std::unique_ptr<QuantizerBackend>> engines) {
  std::unique_ptr<Nvfp4Server> s(new Nvfp4Server());
  s->options_ = options;
  if (engines.empty()) {
    ASSIGN_OR_RETURN(engines, CreateEngines(options));
  }
  std::vector<std::string> names;
  for (const auto& e : engines) names.emplace_back(e->name());
  ASSIGN_OR_RETURN(s->metrics_, ServerMetrics::Create(names, kVersion));
  if (!options.metrics_listen.empty()) {
    RETURN_IF_ERROR(s->metrics_->StartExposer(options.metrics_listen));
  }
  s->jobs_ = std::make_unique<JobRegistry>(options.job_history);
  s->scheduler_ =
      std::make_unique<Scheduler>(options.scheduler, std::move(engines), s->metrics_.get());

  ServiceOptions service_options = options.service;
  if (!options.auth_token_file.empty()) {
    ASSIGN_OR_RETURN(std::string token, ReadFile(options.auth_token_file, "token"));
    service_options.auth_token = std::string(absl::StripAsciiWhitespace(token));
    if (service_options.auth_token.empty()) {
      return absl::InvalidArgumentError(
          absl::StrCat("token file ", options.auth_token_file, " is empty"));
    }
  }
  ASSIGN_OR_RETURN(service_options.paths, checkpoint::PathPolicy::Create(options.allowed_roots));
  s->service_ = std::make_unique<QuantizerService>(service_options, s->scheduler_.get(),
                                                   s->jobs_.get(), s->metrics_.get());

  std::shared_ptr<grpc::ServerCredentials> credentials;
  if (!options.tls_cert_file.empty() || !options.tls_key_file.empty()) {
    if (options.tls_cert_file.empty() || options.tls_key_file.empty()) {
      return absl::InvalidArgumentError("TLS needs both --tls-cert and --tls-key");
    }
    grpc::SslServerCredentialsOptions ssl;
    ASSIGN_OR_RETURN(std::string cert, ReadFile(options.tls_cert_file, "TLS certificate"));
    ASSIGN_OR_RETURN(std::string key, ReadFile(options.tls_key_file, "TLS key"));
    ssl.pem_key_cert_pairs.push_back({key, cert});
    credentials = grpc::SslServerCredentials(ssl);
  } else {
    credentials = grpc::InsecureServerCredentials();
  }

  grpc::EnableDefaultHealthCheckService(true);
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  grpc::ServerBuilder builder;
  builder.AddListeningPort(options.listen, credentials, &s->port_);
  builder.RegisterService(s->service_.get());
  builder.SetMaxReceiveMessageSize(static_cast<int>(std::min<int64_t>(
      service_options.max_message_bytes + (int64_t{64} << 10), int64_t{INT32_MAX})));
  builder.SetMaxSendMessageSize(static_cast<int>(std::min<int64_t>(
      service_options.max_message_bytes + (int64_t{64} << 10), int64_t{INT32_MAX})));
  // Dead peers (no FIN) are detected by pings, so their calls are cancelled and their jobs
  // and memory released.
  builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_TIME_MS, 60 * 1000);
  builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_TIMEOUT_MS, 20 * 1000);
  // Clients ping every 30 s to detect a frozen server (nvfp4q, nvfp4client); gRPC's default
  // policy answers pings more often than every 5 min on a call without data (a job running for
  // minutes) with GOAWAY "too_many_pings". Allow one per 10 s.
  builder.AddChannelArgument(GRPC_ARG_HTTP2_MIN_RECV_PING_INTERVAL_WITHOUT_DATA_MS, 10 * 1000);
  // Large tensors: let HTTP/2 keep several chunks in flight.
  builder.AddChannelArgument(GRPC_ARG_HTTP2_STREAM_LOOKAHEAD_BYTES, 64 << 20);
  builder.AddChannelArgument(GRPC_ARG_HTTP2_MAX_FRAME_SIZE, 16 << 20);
  builder.AddChannelArgument(GRPC_ARG_HTTP2_WRITE_BUFFER_SIZE, 8 << 20);
  // gRPC sets SO_REUSEPORT by default: a second nvfp4d on a busy port would start and take a
  // share of the connections (jobs, cancels and job lists reaching either server at random).
  builder.AddChannelArgument(GRPC_ARG_ALLOW_REUSEPORT, 0);
  s->server_ = builder.BuildAndStart();
  if (!s->server_ || s->port_ == 0) {
    // gRPC says only that the port could not be added. With TLS, find out whether the address
    // or the certificate is at fault: the same address without TLS.
    if (!options.tls_cert_file.empty()) {
      grpc::ServerBuilder probe;
      int probe_port = 0;
      probe.AddListeningPort(options.listen, grpc::InsecureServerCredentials(), &probe_port);
      probe.AddChannelArgument(GRPC_ARG_ALLOW_REUSEPORT, 0);
      if (std::unique_ptr<grpc::Server> plain = probe.BuildAndStart(); plain && probe_port != 0) {
        plain->Shutdown(std::chrono::system_clock::now());
        return absl::InvalidArgumentError(
            absl::StrCat("cannot serve TLS on ", options.listen, ": the certificate (",
                         options.tls_cert_file, ") or key (", options.tls_key_file,
                         ") is not valid PEM, or the key does not match the certificate"));
      }
    }
    return absl::UnavailableError(
        absl::StrCat("cannot listen on ", options.listen,
                     ": the address is in use, or not host:port or unix:path"));
  }
  std::vector<int> gpus;
#if NVFP4_WITH_CUDA
  for (const auto& engine : s->scheduler_->engines()) {
    if (auto* gpu = dynamic_cast<cuda::CudaBackend*>(engine.get())) gpus.push_back(gpu->device());
  }
#endif
  grpc::HealthCheckServiceInterface* health = s->server_->GetHealthCheckService();
  health->SetServingStatus("", true);
  health->SetServingStatus("nvfp4.v1.Quantizer", true);
  health->SetServingStatus("liveness", true);
  // After the statuses above: housekeeping may turn them to NOT_SERVING (a lost engine).
  s->housekeeping_ = std::thread([server = s.get(), gpus] { server->Housekeeping(gpus); });
  return s;
}

Nvfp4Server::~Nvfp4Server() { Shutdown(absl::ZeroDuration()); }

void Nvfp4Server::Housekeeping(const std::vector<int>& gpus) {
  for (;;) {
#if NVFP4_WITH_CUDA
    for (int gpu : gpus) {
      if (auto used = cuda::CudaMemoryUsedBytes(gpu); used.ok() && metrics_) {
        metrics_->SetGpuMemoryUsed(gpu, static_cast<double>(*used));
      }
    }
#else
    (void)gpus;
#endif
    CheckEngineHealth();
    service_->ExpireStalledUploads();
    // While idle, hand the heap pages freed by finished jobs (gRPC and protobuf buffers; job
    // tensors have their own mappings) back to the OS, so the resident size follows the load
    // rather than its peak. Connections wind down after their last job, so this repeats on
    // every idle tick; on a small idle heap it costs well under a millisecond.
    service_->buffer_pool()->ReleaseStale();
    if (metrics_)
      metrics_->SetBufferPoolIdleBytes(static_cast<double>(service_->buffer_pool()->idle_bytes()));
    if (scheduler_->queue_depth() == 0 && scheduler_->running() == 0 &&
        scheduler_->reserved_bytes() == 0) {
      ::malloc_trim(0);
    }
    absl::MutexLock lock(&shutdown_mu_);
    if (shutdown_mu_.AwaitWithTimeout(absl::Condition(&housekeeping_done_),
                                      options_.housekeeping_period)) {
      return;
    }
  }
}

// An engine that cannot take work any more (a GPU whose CUDA context was lost: only a new
// process recovers it) makes the server report NOT_SERVING on every health service, liveness
// included, so that the orchestrator replaces the process. Its jobs fail with UNAVAILABLE
// (clients retry on another replica); the other engines keep serving until then.
void Nvfp4Server::CheckEngineHealth() {
  const auto& engines = scheduler_->engines();
  for (size_t i = 0; i < engines.size(); ++i) {
    const absl::Status health = engines[i]->health();
    if (metrics_) metrics_->SetWorkerHealthy(static_cast<int>(i), health.ok());
    if (health.ok() || lost_engines_.contains(i)) continue;
    lost_engines_.insert(i);
    std::fprintf(stderr,
                 "nvfp4d: engine %d (%s) cannot take work: %s; health is NOT_SERVING (liveness "
                 "too) so that this process is replaced\n",
                 static_cast<int>(i), std::string(engines[i]->name()).c_str(),
                 std::string(health.message()).c_str());
    std::fflush(stderr);
    server_->GetHealthCheckService()->SetServingStatus(false);
  }
}

std::string Nvfp4Server::Describe() const {
  std::string engines;
  for (const auto& e : scheduler_->engines()) {
    absl::StrAppend(&engines, engines.empty() ? "" : ", ", std::string(e->name()));
    // The default follows the CPUs this process may use (cpuset, cgroup quota): say how many.
    if (const auto* cpu = dynamic_cast<const cpu::CpuBackend*>(e.get())) {
      absl::StrAppend(&engines, " (", cpu->threads(),
                      cpu->threads() == 1 ? " thread)" : " threads)");
    }
  }
  const SchedulerOptions& so = scheduler_->options();
  return absl::StrFormat(
      "nvfp4d %s\n"
      "  listen            %s%s\n"
      "  metrics           %s\n"
      "  engines           %s\n"
      "  max queue         %d jobs\n"
      "  memory budget     %d bytes (max %d per job)\n"
      "  chunk / message   %d / %d bytes\n"
      "  auth              %s\n"
      "  checkpoint roots  %s\n",
      kVersion,
      // A Unix socket has no port (gRPC reports 1 for it).
      absl::StartsWith(options_.listen, "unix:")
          ? options_.listen
          : absl::StrCat(WithPort(options_.listen, port_), " (port ", port_, ")"),
      options_.tls_cert_file.empty() ? "" : ", TLS",
      options_.metrics_listen.empty()
          ? std::string("off")
          : absl::StrCat("http://", WithPort(options_.metrics_listen, metrics_->exposer_port()),
                         "/metrics (port ", metrics_->exposer_port(), ")"),
      engines, so.max_queue, so.memory_budget_bytes, so.max_job_bytes,
      // The service's own limits: it lowers the chunk size to fit a small message limit.
      service_->options().max_chunk_bytes, service_->options().max_message_bytes,
      options_.auth_token_file.empty() ? "off" : "bearer token",
      options_.allowed_roots.empty() ? std::string("none (QuantizeCheckpoint disabled)")
                                     : absl::StrJoin(options_.allowed_roots, ", "));
}

void Nvfp4Server::Shutdown(absl::Duration drain) {
  {
    absl::MutexLock lock(&shutdown_mu_);
    if (shut_down_) return;
    shut_down_ = true;
  }
  if (server_) {
    grpc::HealthCheckServiceInterface* health = server_->GetHealthCheckService();
    health->SetServingStatus("", false);
    health->SetServingStatus("nvfp4.v1.Quantizer", false);
  }
  if (scheduler_) scheduler_->StartDraining();
  if (server_) {
    const absl::Time deadline = absl::Now() + drain;
    if (drain > absl::ZeroDuration() && service_) {
      // Lame duck: gRPC closes its connections as soon as Shutdown sees the last call over,
      // while clients are still acknowledging that call's final frames (HTTP/2 window
      // updates); such a frame meets a closed socket and draws a TCP reset, and a client that
      // has not yet taken the trailers off its socket fails a call that succeeded with
      // UNAVAILABLE "Stream removed" (seen in test_sigterm_during_a_job_drains_and_exits_zero
      // under load). So the calls in flight end first (new ones are refused: the scheduler is
      // draining), then the clients get a moment, then the connections close.
      while (service_->active_calls() > 0 && absl::Now() < deadline) {
        absl::SleepFor(absl::Milliseconds(10));
      }
      absl::SleepFor(std::min(kShutdownLinger, deadline - absl::Now()));
    }
    // Waits for in-flight calls until the deadline, then cancels them (their jobs see the
    // cancel flag and stop between chunks). Once no tensor or checkpoint call is left, what
    // remains is health Watch streams (client-side health checking keeps one open per
    // connection; they have seen NOT_SERVING) and instant job queries: they get a moment, not
    // the rest of the drain timeout.
    absl::Time end = deadline;
    if (service_ && service_->active_calls() == 0) {
      end = std::min(deadline, absl::Now() + kIdleCallsGrace);
    }
    server_->Shutdown(absl::ToChronoTime(end));
  }
  {
    absl::MutexLock lock(&shutdown_mu_);
    housekeeping_done_ = true;
  }
  if (housekeeping_.joinable()) housekeeping_.join();
  if (scheduler_) scheduler_->Stop();
}

void Nvfp4Server::Wait() {
  if (server_) server_->Wait();
}

}  // namespace nvfp4::server
