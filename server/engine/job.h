// Job: the server-side record of one quantisation job (a tensor now, checkpoints later): its
// identity, state machine RECEIVING -> QUEUED -> RUNNING -> SUCCEEDED | FAILED | CANCELLED (any
// non-final state may go straight to CANCELLED or FAILED), timestamps, cancellation flag and
// final status. Shared (std::shared_ptr) between the RPC that owns it, the scheduler and the
// registry. Thread-safe.
#ifndef NVFP4_SERVER_ENGINE_JOB_H_
#define NVFP4_SERVER_ENGINE_JOB_H_

#include <atomic>
#include <cstdint>
#include <optional>
#include <string>

#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "kernels/metrics.h"
#include "nvfp4/v1/quantizer.pb.h"

namespace nvfp4::server {

class Job {
 public:
  Job(std::string id, v1::JobKind kind, std::string name, int64_t elements,
      std::string request_id = "");
  Job(const Job&) = delete;
  Job& operator=(const Job&) = delete;

  const std::string& id() const { return id_; }
  const std::string& name() const { return name_; }
  v1::JobKind kind() const { return kind_; }

  // Cooperative cancellation: engines poll cancel_flag() between work chunks.
  void RequestCancel() { cancelled_.store(true); }
  bool cancel_requested() const { return cancelled_.load(); }
  const std::atomic<bool>* cancel_flag() const { return &cancelled_; }

  void MarkQueued();
  void MarkRunning();
  // Final transition; later calls are ignored. metrics only for successful tensor jobs.
  void MarkFinished(const absl::Status& status, const std::optional<TensorMetrics>& metrics,
                    const std::string& backend);

  v1::JobState state() const;
  bool finished() const;
  // Seconds from creation (admission) to MarkRunning; 0 before that.
  double queue_seconds() const;
  v1::Job ToProto() const;

 private:
  const std::string id_;
  const v1::JobKind kind_;
  const std::string name_;
  const std::string request_id_;
  const int64_t elements_;
  std::atomic<bool> cancelled_{false};

  mutable absl::Mutex mu_;
  v1::JobState state_ ABSL_GUARDED_BY(mu_) = v1::JOB_STATE_RECEIVING;
  absl::Time created_ ABSL_GUARDED_BY(mu_);
  absl::Time started_ ABSL_GUARDED_BY(mu_) = absl::InfinitePast();
  absl::Time finished_at_ ABSL_GUARDED_BY(mu_) = absl::InfinitePast();
  absl::Status status_ ABSL_GUARDED_BY(mu_);
  std::optional<TensorMetrics> metrics_ ABSL_GUARDED_BY(mu_);
  std::string backend_ ABSL_GUARDED_BY(mu_);
};

}  // namespace nvfp4::server

#endif  // NVFP4_SERVER_ENGINE_JOB_H_
