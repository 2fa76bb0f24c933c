// Scheduler unit tests: admission limits (queue slots, memory budget, per-job size), slot and
// memory release, cancellation of queued tasks, draining and stop.
#include <atomic>
#include <memory>
#include <vector>

#include "absl/synchronization/notification.h"
#include "gtest/gtest.h"
#include "server/engine/job_registry.h"
#include "server/engine/scheduler.h"

namespace nvfp4::server {
namespace {

class IdleEngine final : public QuantizerBackend {
 public:
  std::string_view name() const override { return "idle"; }
  absl::StatusOr<QuantizedTensor> Quantize(const TensorView&, const ImportanceView&,
                                           const QuantizeOptions&) override {
    return QuantizedTensor{};
  }
};

// Healthy until `broken` is set (as a GPU whose CUDA context was lost).
class BreakableEngine final : public QuantizerBackend {
 public:
  std::string_view name() const override { return "breakable"; }
  absl::StatusOr<QuantizedTensor> Quantize(const TensorView&, const ImportanceView&,
                                           const QuantizeOptions&) override {
    return QuantizedTensor{};
  }
  absl::Status health() const override {
    return broken.load() ? absl::UnavailableError("cuda:9 lost its CUDA context")
                         : absl::OkStatus();
  }
  std::atomic<bool> broken{false};
};

std::unique_ptr<Scheduler> Make(int max_queue, int64_t budget, int64_t max_job) {
  std::vector<std::unique_ptr<QuantizerBackend>> engines;
  engines.push_back(std::make_unique<IdleEngine>());
  return std::make_unique<Scheduler>(SchedulerOptions{max_queue, budget, max_job},
                                     std::move(engines), nullptr);
}

// The registry keeps `history` finished jobs: a job that finishes is forgotten by the next
// lookup beyond that, not only when another job is created.
TEST(JobRegistry, KeepsHistoryFinishedJobsAndEveryLiveOne) {
  JobRegistry none(0);
  std::shared_ptr<Job> job = none.Create(v1::JOB_KIND_TENSOR, "w", 16);
  EXPECT_EQ(none.Find(job->id()), job);  // live
  job->MarkFinished(absl::OkStatus(), std::nullopt, "cpu");
  EXPECT_EQ(none.Find(job->id()), nullptr);
  EXPECT_TRUE(none.List({}).empty());

  JobRegistry two(2);
  std::vector<std::shared_ptr<Job>> jobs;
  for (int i = 0; i < 4; ++i) jobs.push_back(two.Create(v1::JOB_KIND_TENSOR, "w", 16));
  for (int i = 0; i < 3; ++i) jobs[i]->MarkFinished(absl::OkStatus(), std::nullopt, "cpu");
  const std::vector<std::shared_ptr<Job>> listed = two.List({});
  ASSERT_EQ(listed.size(), 3u);  // newest first: the live one and the two newest finished
  EXPECT_EQ(listed[0], jobs[3]);
  EXPECT_EQ(listed[1], jobs[2]);
  EXPECT_EQ(listed[2], jobs[1]);
  EXPECT_EQ(two.Find(jobs[0]->id()), nullptr);
}

// The history keeps the jobs that finished last (not the last created), and Forget drops a job
// whatever its state.
TEST(JobRegistry, KeepsTheMostRecentlyFinishedAndForgets) {
  JobRegistry three(3);
  std::vector<std::shared_ptr<Job>> jobs;
  for (int i = 0; i < 8; ++i) jobs.push_back(three.Create(v1::JOB_KIND_TENSOR, "w", 16));
  for (int i = 7; i >= 0; --i) {
    jobs[i]->MarkFinished(absl::OkStatus(), std::nullopt, "cpu");
    EXPECT_EQ(three.Find(jobs[i]->id()), jobs[i]);  // just finished: kept
  }
  const std::vector<std::shared_ptr<Job>> listed = three.List({});
  ASSERT_EQ(listed.size(), 3u);
  EXPECT_EQ(listed[0], jobs[2]);
  EXPECT_EQ(listed[1], jobs[1]);
  EXPECT_EQ(listed[2], jobs[0]);

  std::shared_ptr<Job> live = three.Create(v1::JOB_KIND_TENSOR, "live", 16);
  three.Forget(live->id());
  three.Forget(jobs[1]->id());
  three.Forget("no-such-job");
  EXPECT_EQ(three.Find(live->id()), nullptr);
  EXPECT_EQ(three.Find(jobs[1]->id()), nullptr);
  EXPECT_EQ(three.List({}).size(), 2u);
  // A forgotten job that finishes later does not come back.
  live->MarkFinished(absl::OkStatus(), std::nullopt, "cpu");
  EXPECT_EQ(three.List({}).size(), 2u);
}

TEST(Scheduler, AdmissionLimits) {
  JobRegistry jobs(10);
  auto scheduler = Make(2, 1000, 600);
  auto too_big = scheduler->Admit(jobs.Create(v1::JOB_KIND_TENSOR, "a", 1), 601);
  EXPECT_EQ(too_big.status().code(), absl::StatusCode::kInvalidArgument);
  auto a = scheduler->Admit(jobs.Create(v1::JOB_KIND_TENSOR, "a", 1), 500);
  ASSERT_TRUE(a.ok());
  auto over_budget = scheduler->Admit(jobs.Create(v1::JOB_KIND_TENSOR, "b", 1), 501);
  EXPECT_EQ(over_budget.status().code(), absl::StatusCode::kResourceExhausted);
  auto b = scheduler->Admit(jobs.Create(v1::JOB_KIND_TENSOR, "b", 1), 500);
  ASSERT_TRUE(b.ok());
  EXPECT_EQ(scheduler->queue_depth(), 2);
  EXPECT_EQ(scheduler->reserved_bytes(), 1000);
  auto queue_full = scheduler->Admit(jobs.Create(v1::JOB_KIND_TENSOR, "c", 1), 0);
  EXPECT_EQ(queue_full.status().code(), absl::StatusCode::kResourceExhausted);
  a->reset();  // e.g. the client disconnected while uploading
  EXPECT_EQ(scheduler->queue_depth(), 1);
  EXPECT_EQ(scheduler->reserved_bytes(), 500);
  scheduler->StartDraining();
  auto draining = scheduler->Admit(jobs.Create(v1::JOB_KIND_TENSOR, "d", 1), 1);
  EXPECT_EQ(draining.status().code(), absl::StatusCode::kUnavailable);
}

TEST(Scheduler, RunsTasksAndReleasesOnCompletion) {
  JobRegistry jobs(10);
  auto scheduler = Make(4, 1000, 1000);
  absl::Notification done;
  auto job = jobs.Create(v1::JOB_KIND_TENSOR, "a", 1);
  auto admission = *scheduler->Admit(job, 100);
  scheduler->Submit(admission, {[&](QuantizerBackend& engine) {
                                  EXPECT_EQ(engine.name(), "idle");
                                  EXPECT_EQ(job->state(), v1::JOB_STATE_RUNNING);
                                  done.Notify();
                                },
                                [](const absl::Status&) { ADD_FAILURE() << "abandoned"; }});
  admission.reset();
  done.WaitForNotification();
  EXPECT_TRUE(scheduler->WaitIdle(absl::Now() + absl::Seconds(10)));
  EXPECT_EQ(scheduler->reserved_bytes(), 0);
}

TEST(Scheduler, CancelQueuedAndStopAbandonTasks) {
  JobRegistry jobs(10);
  auto scheduler = Make(4, 1000, 1000);
  // Occupy the only worker.
  absl::Notification release, started;
  auto blocker = jobs.Create(v1::JOB_KIND_TENSOR, "blocker", 1);
  scheduler->Submit(*scheduler->Admit(blocker, 1), {[&](QuantizerBackend&) {
                                                      started.Notify();
                                                      release.WaitForNotification();
                                                    },
                                                    [](const absl::Status&) {}});
  started.WaitForNotification();
  std::atomic<int> cancelled{0}, unavailable{0};
  auto queued = jobs.Create(v1::JOB_KIND_TENSOR, "queued", 1);
  auto other = jobs.Create(v1::JOB_KIND_TENSOR, "other", 1);
  auto abandon = [&](const absl::Status& s) {
    if (s.code() == absl::StatusCode::kCancelled) ++cancelled;
    if (s.code() == absl::StatusCode::kUnavailable) ++unavailable;
  };
  scheduler->Submit(*scheduler->Admit(queued, 10), {[](QuantizerBackend&) { FAIL(); }, abandon});
  scheduler->Submit(*scheduler->Admit(other, 10), {[](QuantizerBackend&) { FAIL(); }, abandon});
  EXPECT_EQ(scheduler->queue_depth(), 2);
  EXPECT_TRUE(scheduler->CancelQueued(*queued));
  EXPECT_FALSE(scheduler->CancelQueued(*queued));
  EXPECT_EQ(cancelled.load(), 1);
  EXPECT_EQ(scheduler->queue_depth(), 1);
  std::thread stopper([&] { scheduler->Stop(); });
  absl::SleepFor(absl::Milliseconds(50));
  release.Notify();
  stopper.join();
  EXPECT_EQ(unavailable.load(), 1);
  EXPECT_EQ(scheduler->reserved_bytes(), 0);
}

// A worker whose engine turns unhealthy takes no further job: the healthy one runs the rest.
TEST(Scheduler, AnUnhealthyEngineStopsTakingJobs) {
  JobRegistry jobs(100);
  std::vector<std::unique_ptr<QuantizerBackend>> engines;
  auto* breakable = new BreakableEngine;
  engines.emplace_back(breakable);
  engines.push_back(std::make_unique<IdleEngine>());
  Scheduler scheduler(SchedulerOptions{64, 1 << 20, 1 << 20}, std::move(engines), nullptr);
  std::atomic<int> on_breakable{0}, on_idle{0};
  for (int i = 0; i < 40; ++i) {
    auto job = jobs.Create(v1::JOB_KIND_TENSOR, "t", 1);
    scheduler.Submit(*scheduler.Admit(job, 1),
                     {[&](QuantizerBackend& engine) {
                        if (engine.name() == "breakable") {
                          ++on_breakable;
                          breakable->broken = true;  // fails as it finishes its job
                        } else {
                          ++on_idle;
                          absl::SleepFor(absl::Milliseconds(1));
                        }
                      },
                      [](const absl::Status& s) { ADD_FAILURE() << "abandoned: " << s; }});
  }
  ASSERT_TRUE(scheduler.WaitIdle(absl::Now() + absl::Seconds(30)));
  EXPECT_EQ(on_breakable.load(), 1);
  EXPECT_EQ(on_idle.load(), 39);
  // Still admitting: one engine is healthy.
  EXPECT_TRUE(scheduler.Admit(jobs.Create(v1::JOB_KIND_TENSOR, "u", 1), 1).ok());
}

// With no healthy engine left, queued jobs and new ones fail with UNAVAILABLE (retryable
// elsewhere) instead of waiting for a worker that will never come.
TEST(Scheduler, WithNoHealthyEngineQueuedAndNewJobsFailUnavailable) {
  JobRegistry jobs(10);
  std::vector<std::unique_ptr<QuantizerBackend>> engines;
  auto* breakable = new BreakableEngine;
  engines.emplace_back(breakable);
  Scheduler scheduler(SchedulerOptions{8, 1000, 1000}, std::move(engines), nullptr);
  absl::Notification started, release;
  scheduler.Submit(*scheduler.Admit(jobs.Create(v1::JOB_KIND_TENSOR, "first", 1), 10),
                   {[&](QuantizerBackend&) {
                      started.Notify();
                      release.WaitForNotification();
                      breakable->broken = true;
                    },
                    [](const absl::Status&) { ADD_FAILURE(); }});
  started.WaitForNotification();
  std::atomic<int> unavailable{0};
  for (int i = 0; i < 3; ++i) {
    scheduler.Submit(
        *scheduler.Admit(jobs.Create(v1::JOB_KIND_TENSOR, "queued", 1), 10),
        {[](QuantizerBackend&) { ADD_FAILURE() << "ran on a lost engine"; },
         [&](const absl::Status& s) {
           EXPECT_EQ(s.code(), absl::StatusCode::kUnavailable) << s;
           EXPECT_NE(s.message().find("lost its CUDA context"), absl::string_view::npos) << s;
           ++unavailable;
         }});
  }
  release.Notify();
  ASSERT_TRUE(scheduler.WaitIdle(absl::Now() + absl::Seconds(30)));
  EXPECT_EQ(unavailable.load(), 3);
  EXPECT_EQ(scheduler.queue_depth(), 0);
  EXPECT_EQ(scheduler.reserved_bytes(), 0);
  auto refused = scheduler.Admit(jobs.Create(v1::JOB_KIND_TENSOR, "late", 1), 1);
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kUnavailable) << refused.status();
}

}  // namespace
}  // namespace nvfp4::server
