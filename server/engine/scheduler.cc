#include "server/engine/scheduler.h"

#include <utility>

#include "absl/strings/str_cat.h"
#include "server/metrics/server_metrics.h"

namespace nvfp4::server {

Scheduler::Admission::Admission(Scheduler* scheduler, std::shared_ptr<Job> job, int64_t bytes,
                                int position)
    : scheduler_(scheduler), job_(std::move(job)), bytes_(bytes), queue_position_(position) {}

Scheduler::Admission::~Admission() { scheduler_->Release(this); }

Scheduler::Scheduler(const SchedulerOptions& options,
                     std::vector<std::unique_ptr<QuantizerBackend>> engines, ServerMetrics* metrics)
    : options_(options), engines_(std::move(engines)), metrics_(metrics) {
  if (metrics_) metrics_->SetMemoryBudget(static_cast<double>(options_.memory_budget_bytes));
  {
    absl::MutexLock lock(&mu_);
    healthy_workers_ = static_cast<int>(engines_.size());
    PublishGauges();
  }
  for (size_t i = 0; i < engines_.size(); ++i) {
    workers_.emplace_back([this, i] { WorkerLoop(static_cast<int>(i)); });
  }
}

Scheduler::~Scheduler() { Stop(); }

absl::StatusOr<std::shared_ptr<Scheduler::Admission>> Scheduler::Admit(std::shared_ptr<Job> job,
                                                                       int64_t bytes) {
  if (bytes > options_.max_job_bytes) {
    return absl::InvalidArgumentError(absl::StrCat("the job needs ", bytes,
                                                   " bytes (input, importance and outputs); this "
                                                   "server accepts at most ",
                                                   options_.max_job_bytes, " per job"));
  }
  if (bytes > options_.memory_budget_bytes) {
    return absl::InvalidArgumentError(
        absl::StrCat("the job needs ", bytes, " bytes but the server's whole memory budget is ",
                     options_.memory_budget_bytes));
  }
  absl::MutexLock lock(&mu_);
  if (draining_ || stopping_) return absl::UnavailableError("server is draining");
  if (healthy_workers_ == 0) return NoEngineError();
  if (slots_used_ >= options_.max_queue) {
    if (metrics_) metrics_->RejectedQueueFull();
    return absl::ResourceExhaustedError(
        absl::StrCat("admission queue is full (", options_.max_queue, " jobs); retry later"));
  }
  if (reserved_ + bytes > options_.memory_budget_bytes) {
    if (metrics_) metrics_->RejectedMemory();
    return absl::ResourceExhaustedError(absl::StrCat(
        "server memory budget is full (", reserved_, " of ", options_.memory_budget_bytes,
        " bytes reserved, job needs ", bytes, "); retry later"));
  }
  const int position = slots_used_;
  ++slots_used_;
  reserved_ += bytes;
  PublishGauges();
  return std::shared_ptr<Admission>(new Admission(this, std::move(job), bytes, position));
}

void Scheduler::Release(Admission* admission) {
  absl::MutexLock lock(&mu_);
  if (admission->holds_slot_) --slots_used_;
  admission->holds_slot_ = false;
  reserved_ -= admission->bytes_;
  PublishGauges();
}

void Scheduler::Submit(std::shared_ptr<Admission> admission, Task task) {
  admission->job()->MarkQueued();
  absl::Status refused;
  {
    absl::MutexLock lock(&mu_);
    if (!stopping_ && healthy_workers_ > 0) {
      queue_.push_back(Queued{std::move(admission), std::move(task)});
      return;
    }
    refused = stopping_ ? absl::UnavailableError("server is shutting down") : NoEngineError();
  }
  task.abandon(refused);
}

absl::Status Scheduler::NoEngineError() const {
  return absl::UnavailableError(absl::StrCat("no engine of this server can take work (",
                                             last_engine_failure_.message(),
                                             "); retry on another replica"));
}

bool Scheduler::CancelQueued(const Job& job) {
  Queued victim;
  {
    absl::MutexLock lock(&mu_);
    auto it = queue_.begin();
    while (it != queue_.end() && it->admission->job().get() != &job) ++it;
    if (it == queue_.end()) return false;
    victim = std::move(*it);
    queue_.erase(it);
    victim.admission->holds_slot_ = false;  // the queue slot frees now, the memory with the RPC
    --slots_used_;
    PublishGauges();
  }
  victim.task.abandon(absl::CancelledError("job cancelled while queued"));
  victim.admission.reset();
  return true;
}

void Scheduler::WorkerLoop(int index) {
  QuantizerBackend& engine = *engines_[index];
  for (;;) {
    Queued item;
    {
      absl::MutexLock lock(&mu_);
      mu_.Await(absl::Condition(
          +[](Scheduler* s)
               ABSL_NO_THREAD_SAFETY_ANALYSIS { return s->stopping_ || !s->queue_.empty(); },
          this));
      if (queue_.empty()) return;  // stopping
      item = std::move(queue_.front());
      queue_.pop_front();
      item.admission->holds_slot_ = false;
      --slots_used_;
      ++running_;
      PublishGauges();
    }
    item.admission->job()->MarkRunning();
    if (metrics_) {
      metrics_->JobStarted(item.admission->job()->queue_seconds());
      metrics_->WorkerBusy(index, true);
    }
    item.task.run(engine);
    if (metrics_) metrics_->WorkerBusy(index, false);
    item.admission.reset();
    const absl::Status health = engine.health();
    std::deque<Queued> orphans;
    absl::Status refusal;
    {
      absl::MutexLock lock(&mu_);
      if (health.ok()) {
        --running_;
      } else {  // still counted as running until the orphans are abandoned
        --healthy_workers_;
        last_engine_failure_ = health;
        refusal = NoEngineError();
        if (healthy_workers_ == 0) {
          orphans.swap(queue_);
          for (Queued& q : orphans) {
            q.admission->holds_slot_ = false;
            --slots_used_;
          }
        }
      }
      PublishGauges();
    }
    if (health.ok()) continue;
    // This worker retires; with no other left, nothing would ever run the queued jobs.
    for (Queued& q : orphans) {
      q.task.abandon(refusal);
      q.admission.reset();
    }
    absl::MutexLock lock(&mu_);
    --running_;  // WaitIdle returns once the orphans have heard
    PublishGauges();
    return;
  }
}

void Scheduler::StartDraining() {
  absl::MutexLock lock(&mu_);
  draining_ = true;
}

bool Scheduler::draining() const {
  absl::MutexLock lock(&mu_);
  return draining_;
}

bool Scheduler::WaitIdle(absl::Time deadline) {
  absl::MutexLock lock(&mu_);
  return mu_.AwaitWithDeadline(absl::Condition(
                                   +[](Scheduler* s) ABSL_NO_THREAD_SAFETY_ANALYSIS {
                                     return s->slots_used_ == 0 && s->running_ == 0 &&
                                            s->queue_.empty();
                                   },
                                   this),
                               deadline);
}

void Scheduler::Stop() {
  std::deque<Queued> abandoned;
  {
    absl::MutexLock lock(&mu_);
    if (stopping_ && workers_.empty()) return;
    stopping_ = true;
    abandoned.swap(queue_);
  }
  for (Queued& item : abandoned) {
    item.task.abandon(absl::UnavailableError("server is shutting down"));
    item.admission.reset();
  }
  for (std::thread& worker : workers_) worker.join();
  workers_.clear();
}

int Scheduler::queue_depth() const {
  absl::MutexLock lock(&mu_);
  return slots_used_;
}

int Scheduler::running() const {
  absl::MutexLock lock(&mu_);
  return running_;
}

int64_t Scheduler::reserved_bytes() const {
  absl::MutexLock lock(&mu_);
  return reserved_;
}

void Scheduler::PublishGauges() {
  if (!metrics_) return;
  metrics_->SetQueue(slots_used_, options_.max_queue);
  metrics_->SetRunning(running_);
  metrics_->SetReservedBytes(reserved_);
}

}  // namespace nvfp4::server
