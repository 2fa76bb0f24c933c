#include "server/metrics/server_metrics.h"

#include <chrono>
#include <cmath>
#include <exception>

#include "absl/strings/str_cat.h"
#include "prometheus/exposer.h"

namespace nvfp4::server {
namespace {

double NowSeconds() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

// Exponential bucket boundaries start, start*factor, ... (count of them).
// NVFP4 NMSE lies around 1e-3..1e-1 (N(0,1) weights: ~0.007 with ScaleSweep, ~0.009 with
// AbsMax): 8 buckets per decade from 1e-4 to 1, so a 1.3x change moves the quantiles by a
// bucket and a regression alert sees it (decade buckets hid a 2x change inside 1e-3..1e-2).
prometheus::Histogram::BucketBoundaries NmseBuckets() {
  prometheus::Histogram::BucketBoundaries bounds;
  for (int i = 0; i <= 32; ++i) bounds.push_back(std::pow(10.0, -4.0 + i / 8.0));
  return bounds;
}

prometheus::Histogram::BucketBoundaries ExponentialBuckets(double start, double factor, int count) {
  prometheus::Histogram::BucketBoundaries bounds;
  double b = start;
  for (int i = 0; i < count; ++i, b *= factor) bounds.push_back(b);
  return bounds;
}

}  // namespace

ServerMetrics::~ServerMetrics() = default;

absl::StatusOr<std::unique_ptr<ServerMetrics>> ServerMetrics::Create(
    const std::vector<std::string>& worker_backends, const std::string& version) {
  std::unique_ptr<ServerMetrics> m(new ServerMetrics());
  // prometheus-cpp reports bad names and duplicates by throwing; keep that inside this module.
  try {
    using prometheus::BuildCounter;
    using prometheus::BuildGauge;
    using prometheus::BuildHistogram;
    auto& r = *(m->registry_ = std::make_shared<prometheus::Registry>());
    m->jobs_total_ = &BuildCounter()
                          .Name("nvfp4_jobs_total")
                          .Help("Jobs finished, by kind and gRPC status code")
                          .Register(r);
    m->job_duration_ = &BuildHistogram()
                            .Name("nvfp4_job_duration_seconds")
                            .Help("Time from admission to the end of a job")
                            .Register(r);
    m->queue_wait_ = &BuildHistogram()
                          .Name("nvfp4_queue_wait_seconds")
                          .Help("Time from admission to the start of a job on a worker")
                          .Register(r)
                          .Add({}, ExponentialBuckets(0.001, 4, 10));
    m->tensor_nmse_ = &BuildHistogram()
                           .Name("nvfp4_tensor_nmse")
                           .Help("Normalised MSE (sum e^2 / sum x^2) of each quantised tensor")
                           .Register(r)
                           .Add({}, NmseBuckets());
    m->tensor_gain_ =
        &BuildHistogram()
             .Name("nvfp4_tensor_gain_vs_absmax_ratio")
             .Help(
                 "Error of each quantised tensor divided by AbsMax's with the "
                 "same global scale, for the objective its scales minimised "
                 "(MSE, or WMSE with importance)")
             .Register(r)
             .Add({}, prometheus::Histogram::BucketBoundaries{0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.75,
                                                              0.8, 0.85, 0.9, 0.95, 1.0, 1.05});
    m->elements_total_ = &BuildCounter()
                              .Name("nvfp4_elements_quantized_total")
                              .Help("Tensor elements quantised")
                              .Register(r)
                              .Add({});
    m->input_bytes_total_ = &BuildCounter()
                                 .Name("nvfp4_input_bytes_total")
                                 .Help("Tensor and importance bytes received by finished jobs")
                                 .Register(r)
                                 .Add({});
    m->output_bytes_total_ = &BuildCounter()
                                  .Name("nvfp4_output_bytes_total")
                                  .Help("Result bytes (packed, scales, dequantized) produced")
                                  .Register(r)
                                  .Add({});
    auto& rejected = BuildCounter()
                         .Name("nvfp4_admission_rejections_total")
                         .Help("Jobs rejected at admission, by reason")
                         .Register(r);
    m->rejected_queue_full_ = &rejected.Add({{"reason", "queue_full"}});
    m->rejected_memory_ = &rejected.Add({{"reason", "memory"}});
    m->queue_depth_ = &BuildGauge()
                           .Name("nvfp4_queue_depth")
                           .Help("Admitted jobs not yet running (receiving input or queued)")
                           .Register(r)
                           .Add({});
    m->queue_capacity_ = &BuildGauge()
                              .Name("nvfp4_queue_capacity")
                              .Help("Admission queue capacity")
                              .Register(r)
                              .Add({});
    m->jobs_in_flight_ = &BuildGauge()
                              .Name("nvfp4_jobs_in_flight")
                              .Help("Jobs running on a worker")
                              .Register(r)
                              .Add({});
    m->reserved_bytes_ = &BuildGauge()
                              .Name("nvfp4_memory_reserved_bytes")
                              .Help("Host memory reserved by admitted jobs")
                              .Register(r)
                              .Add({});
    m->memory_budget_bytes_ = &BuildGauge()
                                   .Name("nvfp4_memory_budget_bytes")
                                   .Help("Host memory all admitted jobs may reserve (--memory-mib)")
                                   .Register(r)
                                   .Add({});
    m->buffer_pool_idle_bytes_ =
        &BuildGauge()
             .Name("nvfp4_buffer_pool_idle_bytes")
             .Help("Host memory of finished jobs' buffers kept for reuse (freed after idling)")
             .Register(r)
             .Add({});
    m->stream_held_bytes_ =
        &BuildGauge()
             .Name("nvfp4_stream_held_bytes")
             .Help("Received tensor data held by streaming jobs until their engine has read it")
             .Register(r)
             .Add({});
    m->gpu_memory_ = &BuildGauge()
                          .Name("nvfp4_gpu_memory_used_bytes")
                          .Help("Device memory in use per GPU (total - free)")
                          .Register(r);
    auto& busy =
        BuildGauge().Name("nvfp4_worker_busy").Help("1 while the worker runs a job").Register(r);
    auto& busy_seconds = BuildCounter()
                             .Name("nvfp4_worker_busy_seconds_total")
                             .Help("Time each worker spent running jobs (utilisation = rate)")
                             .Register(r);
    auto& healthy = BuildGauge()
                        .Name("nvfp4_worker_healthy")
                        .Help(
                            "1 while the worker's engine can take work; 0 once it cannot (a GPU "
                            "whose CUDA context was lost: the process must be replaced)")
                        .Register(r);
    for (size_t i = 0; i < worker_backends.size(); ++i) {
      const prometheus::Labels labels = {{"worker", absl::StrCat(i)},
                                         {"backend", worker_backends[i]}};
      m->worker_busy_.push_back(&busy.Add(labels));
      m->worker_healthy_.push_back(&healthy.Add(labels));
      m->worker_healthy_.back()->Set(1);
      m->worker_busy_seconds_.push_back(&busy_seconds.Add(labels));
      m->worker_busy_since_.push_back(0.0);
    }
    BuildGauge()
        .Name("nvfp4_build_info")
        .Help("Build information (value 1)")
        .Register(r)
        .Add({{"version", version}})
        .Set(1);
    for (const char* kind : {"tensor", "checkpoint"}) {
      for (const char* code : {"OK", "CANCELLED", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED",
                               "RESOURCE_EXHAUSTED", "UNAVAILABLE", "INTERNAL"}) {
        m->jobs_total_->Add({{"kind", kind}, {"code", code}});
      }
    }
  } catch (const std::exception& e) {
    return absl::InternalError(absl::StrCat("metrics registration failed: ", e.what()));
  }
  return m;
}

absl::Status ServerMetrics::StartExposer(const std::string& address) {
  try {
    exposer_ = std::make_unique<prometheus::Exposer>(address);
    exposer_->RegisterCollectable(registry_);
  } catch (const std::exception& e) {
    return absl::UnavailableError(absl::StrCat("cannot serve metrics on ", address,
                                               ": the address is in use, or not host:port (",
                                               e.what(), ")"));
  }
  return absl::OkStatus();
}

int ServerMetrics::exposer_port() const {
  if (!exposer_) return 0;
  const std::vector<int> ports = exposer_->GetListeningPorts();
  return ports.empty() ? 0 : ports.front();
}

prometheus::Counter& ServerMetrics::JobCounter(const std::string& kind, const std::string& code) {
  return jobs_total_->Add({{"kind", kind}, {"code", code}});
}

void ServerMetrics::JobFinished(const std::string& kind, const std::string& code,
                                std::optional<double> admitted_seconds) {
  JobCounter(kind, code).Increment();
  // Refusals take no time: observed, they would pull the percentiles toward zero exactly when
  // the server is overloaded.
  if (admitted_seconds.has_value()) {
    job_duration_->Add({{"kind", kind}}, ExponentialBuckets(0.001, 4, 12))
        .Observe(*admitted_seconds);
  }
}

void ServerMetrics::JobStarted(double queue_wait_seconds) {
  queue_wait_->Observe(queue_wait_seconds);
}

void ServerMetrics::TensorQuantized(double elements, double input_bytes, double output_bytes,
                                    double nmse, double gain) {
  elements_total_->Increment(elements);
  input_bytes_total_->Increment(input_bytes);
  output_bytes_total_->Increment(output_bytes);
  tensor_nmse_->Observe(nmse);
  tensor_gain_->Observe(gain);
}

void ServerMetrics::RejectedQueueFull() { rejected_queue_full_->Increment(); }

void ServerMetrics::RejectedMemory() { rejected_memory_->Increment(); }

void ServerMetrics::SetQueue(int depth, int capacity) {
  queue_depth_->Set(depth);
  queue_capacity_->Set(capacity);
}

void ServerMetrics::SetRunning(int running) { jobs_in_flight_->Set(running); }

void ServerMetrics::SetReservedBytes(double bytes) { reserved_bytes_->Set(bytes); }

void ServerMetrics::SetMemoryBudget(double bytes) { memory_budget_bytes_->Set(bytes); }

void ServerMetrics::SetBufferPoolIdleBytes(double bytes) { buffer_pool_idle_bytes_->Set(bytes); }

void ServerMetrics::SetStreamHeldBytes(double bytes) { stream_held_bytes_->Set(bytes); }

void ServerMetrics::SetGpuMemoryUsed(int gpu, double bytes) {
  gpu_memory_->Add({{"gpu", absl::StrCat(gpu)}}).Set(bytes);
}

void ServerMetrics::SetWorkerHealthy(int worker, bool healthy) {
  if (worker < 0 || worker >= static_cast<int>(worker_healthy_.size())) return;
  worker_healthy_[worker]->Set(healthy ? 1 : 0);
}

void ServerMetrics::WorkerBusy(int worker, bool busy) {
  if (worker < 0 || worker >= static_cast<int>(worker_busy_.size())) return;
  worker_busy_[worker]->Set(busy ? 1 : 0);
  const double now = NowSeconds();
  if (busy) {
    worker_busy_since_[worker] = now;
  } else {
    worker_busy_seconds_[worker]->Increment(now - worker_busy_since_[worker]);
  }
}

}  // namespace nvfp4::server
