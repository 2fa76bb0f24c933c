// Scheduler: admission control and the worker pool.
//
// A job is first *admitted* (Admit): it takes one of max_queue queue slots and reserves its
// memory (input, importance and outputs) from the global budget, or is rejected at once:
// RESOURCE_EXHAUSTED when the queue or the budget is full, INVALID_ARGUMENT when one job alone
// exceeds max_job_bytes, UNAVAILABLE while draining. The returned Admission is an RAII handle:
// dropping it (for example when the client disconnects while uploading) releases both. Once the
// input is complete, Submit() hands the admission and a task to the workers; each worker owns
// one engine (a CPU backend, or one GPU) and runs one task at a time. A task's slot is released
// when it starts running, its memory when the last reference to its admission goes. A worker
// whose engine reports itself unhealthy after a task (QuantizerBackend::health: a lost GPU
// context) takes no further task; with no healthy worker left, queued tasks are abandoned and
// new admissions refused, both with UNAVAILABLE.
//
// Cancel(job) removes a still-queued task and calls its `abandon` callback with CANCELLED (on the
// calling thread); running tasks see the job's cancel flag. Thread-safe.
#ifndef NVFP4_SERVER_ENGINE_SCHEDULER_H_
#define NVFP4_SERVER_ENGINE_SCHEDULER_H_

#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "kernels/backend.h"
#include "server/engine/job.h"

namespace nvfp4::server {

class ServerMetrics;

struct SchedulerOptions {
  int max_queue = 64;                              // admitted jobs not yet running
  int64_t memory_budget_bytes = int64_t{8} << 30;  // all admitted jobs together
  int64_t max_job_bytes = int64_t{4} << 30;        // one job
};

class Scheduler {
 public:
  class Admission {
   public:
    ~Admission();
    Admission(const Admission&) = delete;
    Admission& operator=(const Admission&) = delete;
    const std::shared_ptr<Job>& job() const { return job_; }
    int64_t bytes() const { return bytes_; }
    int queue_position() const { return queue_position_; }

   private:
    friend class Scheduler;
    Admission(Scheduler* scheduler, std::shared_ptr<Job> job, int64_t bytes, int position);
    Scheduler* scheduler_;
    std::shared_ptr<Job> job_;
    int64_t bytes_;
    int queue_position_;
    bool holds_slot_ = true;  // guarded by the scheduler's mutex
  };

  // run: executes the job on a worker's engine. abandon: the job will never run (cancelled
  // while queued, or the scheduler stopped); called with the reason.
  struct Task {
    std::function<void(QuantizerBackend&)> run;
    std::function<void(const absl::Status&)> abandon;
  };

  // One worker thread per engine. metrics may be nullptr.
  Scheduler(const SchedulerOptions& options, std::vector<std::unique_ptr<QuantizerBackend>> engines,
            ServerMetrics* metrics);
  ~Scheduler();  // Stop()s
  Scheduler(const Scheduler&) = delete;
  Scheduler& operator=(const Scheduler&) = delete;

  // The memory stays reserved while any reference to the admission lives (the RPC keeps one
  // until its results are sent).
  absl::StatusOr<std::shared_ptr<Admission>> Admit(std::shared_ptr<Job> job, int64_t bytes);
  void Submit(std::shared_ptr<Admission> admission, Task task);
  // Removes the job's queued task, if any, and abandons it with CANCELLED; true if it did.
  bool CancelQueued(const Job& job);

  // New admissions fail with UNAVAILABLE from now on.
  void StartDraining();
  bool draining() const;
  // Waits until no job is admitted, queued or running, or the deadline passes; true if idle.
  bool WaitIdle(absl::Time deadline);
  // Abandons queued tasks (UNAVAILABLE), waits for running ones, joins the workers.
  void Stop();

  int queue_depth() const;  // admitted, not yet running
  int running() const;
  int64_t reserved_bytes() const;
  const SchedulerOptions& options() const { return options_; }
  const std::vector<std::unique_ptr<QuantizerBackend>>& engines() const { return engines_; }

 private:
  struct Queued {
    std::shared_ptr<Admission> admission;
    Task task;
  };
  void Release(Admission* admission);
  void WorkerLoop(int index);
  absl::Status NoEngineError() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void PublishGauges() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const SchedulerOptions options_;
  std::vector<std::unique_ptr<QuantizerBackend>> engines_;
  ServerMetrics* const metrics_;

  mutable absl::Mutex mu_;
  int slots_used_ ABSL_GUARDED_BY(mu_) = 0;
  int64_t reserved_ ABSL_GUARDED_BY(mu_) = 0;
  int running_ ABSL_GUARDED_BY(mu_) = 0;
  bool draining_ ABSL_GUARDED_BY(mu_) = false;
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  // Workers whose engine can take work (QuantizerBackend::health). A worker whose engine turns
  // unhealthy (a lost GPU context) stops taking jobs, so it cannot drain the queue by failing
  // them fast; with none left, queued jobs and new admissions fail with UNAVAILABLE.
  int healthy_workers_ ABSL_GUARDED_BY(mu_) = 0;
  absl::Status last_engine_failure_ ABSL_GUARDED_BY(mu_);
  std::deque<Queued> queue_ ABSL_GUARDED_BY(mu_);
  std::vector<std::thread> workers_;
};

}  // namespace nvfp4::server

#endif  // NVFP4_SERVER_ENGINE_SCHEDULER_H_
