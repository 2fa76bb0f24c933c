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

std::unique_ptr<Scheduler> Make(int max_queue, int64_t budget, int64_t max_job) {
  std::vector<std::unique_ptr<QuantizerBackend>> engines;
  engines.push_back(std::make_unique<IdleEngine>());
  return std::make_unique<Scheduler>(SchedulerOptions{max_queue, budget, max_job},
                                     std::move(engines), nullptr);
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

}  // namespace
}  // namespace nvfp4::server
