// ServerMetrics: the Prometheus metrics of nvfp4d (prometheus-cpp), served over HTTP on their own
// port at /metrics. Names follow Prometheus conventions (base units, _total counters, low
// cardinality labels); the list is in docs/service.md. Every method is thread-safe and cheap
// (children are created once, up front).
#ifndef NVFP4_SERVER_METRICS_SERVER_METRICS_H_
#define NVFP4_SERVER_METRICS_SERVER_METRICS_H_

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "prometheus/counter.h"
#include "prometheus/gauge.h"
#include "prometheus/histogram.h"
#include "prometheus/registry.h"

namespace prometheus {
class Exposer;
}

namespace nvfp4::server {

class ServerMetrics {
 public:
  // workers: worker count (labels of the per-worker busy counter). backend names each worker.
  static absl::StatusOr<std::unique_ptr<ServerMetrics>> Create(
      const std::vector<std::string>& worker_backends, const std::string& version);
  ~ServerMetrics();

  // Serves /metrics on `address` ("127.0.0.1:9400"); Unavailable if the port cannot be bound.
  absl::Status StartExposer(const std::string& address);
  // The bound port (after StartExposer), for tests that listen on port 0.
  int exposer_port() const;
  std::shared_ptr<prometheus::Registry> registry() const { return registry_; }

  // kind: "tensor" or "checkpoint"; code: gRPC code name.
  // admitted_seconds: nullopt for a call refused before admission (counted, no duration).
  void JobFinished(const std::string& kind, const std::string& code,
                   std::optional<double> admitted_seconds);
  void JobStarted(double queue_wait_seconds);
  void TensorQuantized(double elements, double input_bytes, double output_bytes, double nmse,
                       double gain);
  void RejectedQueueFull();
  void RejectedMemory();
  void SetQueue(int depth, int capacity);
  void SetRunning(int running);
  void SetReservedBytes(double bytes);
  void SetMemoryBudget(double bytes);
  // Idle job buffers kept for reuse (server/engine/buffer_pool.h).
  void SetBufferPoolIdleBytes(double bytes);
  // Received tensor data that streaming jobs hold until their engine has read it.
  void SetStreamHeldBytes(double bytes);
  void WorkerBusy(int worker, bool busy);
  // 1 while the worker's engine can take work (QuantizerBackend::health), else 0.
  void SetWorkerHealthy(int worker, bool healthy);
  // Device memory in use on GPU `gpu` (refreshed periodically by the server when it has GPUs).
  void SetGpuMemoryUsed(int gpu, double bytes);

 private:
  ServerMetrics() = default;
  prometheus::Counter& JobCounter(const std::string& kind, const std::string& code);

  std::shared_ptr<prometheus::Registry> registry_;
  std::unique_ptr<prometheus::Exposer> exposer_;
  prometheus::Family<prometheus::Counter>* jobs_total_ = nullptr;
  prometheus::Family<prometheus::Histogram>* job_duration_ = nullptr;
  prometheus::Histogram* queue_wait_ = nullptr;
  prometheus::Histogram* tensor_nmse_ = nullptr;
  prometheus::Histogram* tensor_gain_ = nullptr;
  prometheus::Counter* elements_total_ = nullptr;
  prometheus::Counter* input_bytes_total_ = nullptr;
  prometheus::Counter* output_bytes_total_ = nullptr;
  prometheus::Counter* rejected_queue_full_ = nullptr;
  prometheus::Counter* rejected_memory_ = nullptr;
  prometheus::Gauge* queue_depth_ = nullptr;
  prometheus::Gauge* queue_capacity_ = nullptr;
  prometheus::Gauge* jobs_in_flight_ = nullptr;
  prometheus::Gauge* reserved_bytes_ = nullptr;
  prometheus::Gauge* memory_budget_bytes_ = nullptr;
  prometheus::Gauge* buffer_pool_idle_bytes_ = nullptr;
  prometheus::Gauge* stream_held_bytes_ = nullptr;
  prometheus::Family<prometheus::Gauge>* gpu_memory_ = nullptr;
  std::vector<prometheus::Gauge*> worker_busy_;
  std::vector<prometheus::Gauge*> worker_healthy_;
  std::vector<prometheus::Counter*> worker_busy_seconds_;
  std::vector<double> worker_busy_since_;
};

}  // namespace nvfp4::server

#endif  // NVFP4_SERVER_METRICS_SERVER_METRICS_H_
