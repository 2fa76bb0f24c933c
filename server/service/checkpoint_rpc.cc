#include "server/service/checkpoint_rpc.h"

#include <deque>
#include <memory>
#include <optional>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "common/status_macros.h"
#include "proto/convert.h"
#include "server/engine/job.h"
#include "server/engine/job_registry.h"
#include "server/engine/scheduler.h"
#include "server/metrics/server_metrics.h"
#include "server/service/call_status.h"
#include "server/service/quantizer_service.h"

namespace nvfp4::server {
namespace {

using Response = v1::QuantizeCheckpointResponse;

// Lifetime: gRPC deletes the reactor in OnDone, which comes after Finish; Finish is only called
// once the submitted job has reported (OnJobDone), so the worker never touches a dead reactor.
// All state is guarded by mu_; gRPC operations are started outside it (PumpAndUnlock).
class CheckpointReactor final : public grpc::ServerWriteReactor<Response> {
 public:
  CheckpointReactor(QuantizerService* service, grpc::CallbackServerContext* context,
                    const v1::QuantizeCheckpointRequest& request)
      : service_(service), context_(context), start_(absl::Now()) {
    const absl::Status started = Start(request);
    mu_.Lock();
    if (!started.ok()) SetFinalLocked(started);
    const bool submit = started.ok();
    mu_.Unlock();
    if (submit) Submit();
    mu_.Lock();
    PumpAndUnlock();
  }

  void OnWriteDone(bool ok) override {
    mu_.Lock();
    write_in_flight_ = false;
    if (!ok) {
      outbox_.clear();
      if (!final_status_) SetFinalLocked(absl::CancelledError("the client stopped reading"));
      StopJobLocked();
    }
    PumpAndUnlock();
  }

  void OnCancel() override {
    mu_.Lock();
    outbox_.clear();
    if (!final_status_) SetFinalLocked(ClientEndedCall(*context_));
    StopJobLocked();
    PumpAndUnlock();
  }

  void OnDone() override { delete this; }

 private:
  absl::Status Start(const v1::QuantizeCheckpointRequest& request) {
    RETURN_IF_ERROR(service_->Authenticate(*context_));
    if (!service_->options().paths.confined()) {
      return absl::FailedPreconditionError(
          "checkpoint jobs are disabled: start nvfp4d with --allowed-root DIR (the directories "
          "it may read models from and write outputs to), or use nvfp4q quantize "
          "--stream-tensors");
    }
    ASSIGN_OR_RETURN(options_, api::CheckpointOptionsFromRequest(request));
    options_.paths = service_->options().paths;
    // Check the paths now, so a bad request fails before it takes a queue slot.
    RETURN_IF_ERROR(options_.paths.CheckExisting(options_.model_dir).status());
    RETURN_IF_ERROR(options_.paths.CheckNew(options_.out_dir).status());
    const std::string name = request.name().empty() ? request.model_dir() : request.name();
    std::shared_ptr<Job> job = service_->jobs()->Create(v1::JOB_KIND_CHECKPOINT, name, 0);
    // The job streams tensors through mmap; its transient buffers are one tensor's results.
    absl::StatusOr<std::shared_ptr<Scheduler::Admission>> admitted =
        service_->scheduler()->Admit(job, 0);
    if (!admitted.ok()) {
      // Refused: no job id reached the client, so no record is kept (job_ stays null).
      job->MarkFinished(admitted.status(), std::nullopt, "");
      service_->jobs()->Forget(job->id());
      return admitted.status();
    }
    std::shared_ptr<Scheduler::Admission> admission = *std::move(admitted);
    absl::MutexLock lock(&mu_);
    job_ = std::move(job);
    admission_ = std::move(admission);
    Response accepted;
    accepted.mutable_accepted()->set_job_id(job_->id());
    accepted.mutable_accepted()->set_queue_position(
        static_cast<uint32_t>(admission_->queue_position()));
    outbox_.push_back(std::move(accepted));
    submitted_ = true;
    return absl::OkStatus();
  }

  void Submit() {
    Scheduler::Task task;
    task.run = [this](QuantizerBackend& engine) {
      engine_name_ = engine.name();
      absl::StatusOr<checkpoint::CheckpointReport> report = checkpoint::RunCheckpointJob(
          options_, engine, [this](const checkpoint::CheckpointEvent& e) { OnProgress(e); },
          job_->cancel_flag());
      OnJobDone(std::move(report));
    };
    task.abandon = [this](const absl::Status& status) { OnJobDone(status); };
    std::shared_ptr<Scheduler::Admission> admission;
    {
      absl::MutexLock lock(&mu_);
      admission = admission_;
    }
    service_->scheduler()->Submit(std::move(admission), std::move(task));
  }

  // Worker thread.
  void OnProgress(const checkpoint::CheckpointEvent& e) {
    Response r;
    api::ProgressToProto(e, r.mutable_progress());
    ServerMetrics* m = service_->metrics();
    if (m != nullptr && e.tensor != nullptr && e.tensor->quantized) {
      const TensorMetrics& tm = e.tensor->metrics;
      m->TensorQuantized(static_cast<double>(tm.elements),
                         static_cast<double>(e.tensor->input_bytes),
                         static_cast<double>(e.tensor->output_bytes), tm.nmse, ObjectiveGain(tm));
    }
    mu_.Lock();
    // A client that stopped reading gets nothing more; the job goes on until cancelled.
    if (!final_status_) outbox_.push_back(std::move(r));
    PumpAndUnlock();
  }

  // Worker thread (or where a queued job is abandoned); the last thing the job does.
  void OnJobDone(absl::StatusOr<checkpoint::CheckpointReport> report) {
    mu_.Lock();
    job_reported_ = true;
    if (!report.ok()) {
      SetFinalLocked(report.status());
    } else if (!final_status_) {
      Response r;
      r.set_report_json(checkpoint::CheckpointReportToJson(*report).dump());
      outbox_.push_back(std::move(r));
      job_->MarkFinished(absl::OkStatus(), checkpoint::TotalsAsMetrics(*report),
                         std::string(engine_name_));
      SetFinalLocked(absl::OkStatus());
    }
    admission_.reset();
    PumpAndUnlock();
  }

  void StopJobLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (!job_ || job_reported_ || cancel_sent_) return;
    cancel_sent_ = true;
    job_->RequestCancel();
    cancel_queued_ = true;  // CancelQueued may call OnJobDone: done outside the lock
  }

  void SetFinalLocked(const absl::Status& status) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (final_status_) return;
    final_status_ = status;
    if (!status.ok() && job_) job_->MarkFinished(status, std::nullopt, "");
    service_->RecordOutcome(status, job_.get(), absl::ToDoubleSeconds(absl::Now() - start_),
                            "checkpoint");
  }

  void PumpAndUnlock() ABSL_UNLOCK_FUNCTION(mu_) {
    if (cancel_queued_) {
      // The job reports (OnJobDone, which pumps) whether it was queued (abandoned right here)
      // or running (when it stops), and a write in flight pumps in OnWriteDone: nothing is
      // left to do here, and `this` may be gone once CancelQueued returns.
      cancel_queued_ = false;
      std::shared_ptr<Job> job = job_;
      mu_.Unlock();
      service_->scheduler()->CancelQueued(*job);
      return;
    }
    if (finished_ || write_in_flight_) {
      mu_.Unlock();
      return;
    }
    if (!outbox_.empty()) {
      current_ = std::move(outbox_.front());
      outbox_.pop_front();
      write_in_flight_ = true;
      mu_.Unlock();
      StartWrite(&current_);
      return;
    }
    if (!final_status_ || (submitted_ && !job_reported_)) {
      mu_.Unlock();
      return;
    }
    finished_ = true;
    const grpc::Status status = api::ToGrpcStatus(*final_status_);
    mu_.Unlock();
    Finish(status);
  }

  QuantizerService* const service_;
  const QuantizerService::ActiveCall active_call_{service_};
  grpc::CallbackServerContext* const context_;
  const absl::Time start_;
  checkpoint::CheckpointJobOptions options_;  // set before submission, read by the worker
  std::string_view engine_name_;              // the worker's engine; set when the job starts
  Response current_;                          // the write in flight

  absl::Mutex mu_;
  bool write_in_flight_ ABSL_GUARDED_BY(mu_) = false;
  bool finished_ ABSL_GUARDED_BY(mu_) = false;
  bool submitted_ ABSL_GUARDED_BY(mu_) = false;
  bool job_reported_ ABSL_GUARDED_BY(mu_) = false;
  bool cancel_sent_ ABSL_GUARDED_BY(mu_) = false;
  bool cancel_queued_ ABSL_GUARDED_BY(mu_) = false;
  std::optional<absl::Status> final_status_ ABSL_GUARDED_BY(mu_);
  std::deque<Response> outbox_ ABSL_GUARDED_BY(mu_);
  std::shared_ptr<Job> job_;  // set in Start, before any other thread sees the reactor
  std::shared_ptr<Scheduler::Admission> admission_ ABSL_GUARDED_BY(mu_);
};

}  // namespace

grpc::ServerWriteReactor<v1::QuantizeCheckpointResponse>* StartCheckpointRpc(
    QuantizerService* service, grpc::CallbackServerContext* context,
    const v1::QuantizeCheckpointRequest* request) {
  return new CheckpointReactor(service, context, *request);
}

}  // namespace nvfp4::server
