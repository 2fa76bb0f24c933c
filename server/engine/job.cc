#include "server/engine/job.h"

#include <utility>

#include "proto/convert.h"

namespace nvfp4::server {
namespace {

double UnixSeconds(absl::Time t) {
  return t == absl::InfinitePast() ? 0.0 : absl::ToDoubleSeconds(t - absl::UnixEpoch());
}

}  // namespace

Job::Job(std::string id, v1::JobKind kind, std::string name, int64_t elements,
         std::string request_id)
    : id_(std::move(id)),
      kind_(kind),
      name_(std::move(name)),
      request_id_(std::move(request_id)),
      elements_(elements) {
  absl::MutexLock lock(&mu_);
  created_ = absl::Now();
}

void Job::MarkQueued() {
  absl::MutexLock lock(&mu_);
  if (state_ == v1::JOB_STATE_RECEIVING) state_ = v1::JOB_STATE_QUEUED;
}

void Job::MarkRunning() {
  absl::MutexLock lock(&mu_);
  if (state_ == v1::JOB_STATE_RECEIVING || state_ == v1::JOB_STATE_QUEUED) {
    state_ = v1::JOB_STATE_RUNNING;
    started_ = absl::Now();
  }
}

void Job::MarkFinished(const absl::Status& status, const std::optional<TensorMetrics>& metrics,
                       const std::string& backend) {
  absl::MutexLock lock(&mu_);
  if (state_ == v1::JOB_STATE_SUCCEEDED || state_ == v1::JOB_STATE_FAILED ||
      state_ == v1::JOB_STATE_CANCELLED) {
    return;
  }
  state_ = status.ok() ? v1::JOB_STATE_SUCCEEDED
           : status.code() == absl::StatusCode::kCancelled ||
                   status.code() == absl::StatusCode::kDeadlineExceeded
               ? v1::JOB_STATE_CANCELLED
               : v1::JOB_STATE_FAILED;
  finished_at_ = absl::Now();
  status_ = status;
  metrics_ = metrics;
  backend_ = backend;
}

v1::JobState Job::state() const {
  absl::MutexLock lock(&mu_);
  return state_;
}

bool Job::finished() const {
  const v1::JobState s = state();
  return s == v1::JOB_STATE_SUCCEEDED || s == v1::JOB_STATE_FAILED || s == v1::JOB_STATE_CANCELLED;
}

double Job::queue_seconds() const {
  absl::MutexLock lock(&mu_);
  return started_ == absl::InfinitePast() ? 0.0 : absl::ToDoubleSeconds(started_ - created_);
}

v1::Job Job::ToProto() const {
  absl::MutexLock lock(&mu_);
  v1::Job job;
  job.set_id(id_);
  job.set_kind(kind_);
  job.set_state(state_);
  job.set_name(name_);
  job.set_request_id(request_id_);
  job.set_created_unix(UnixSeconds(created_));
  job.set_started_unix(UnixSeconds(started_));
  job.set_finished_unix(UnixSeconds(finished_at_));
  // A checkpoint job learns its element count (the quantized ones) when it ends.
  job.set_elements(elements_ == 0 && metrics_.has_value() ? metrics_->elements : elements_);
  if (!status_.ok()) {
    job.set_error_code(api::StatusCodeName(status_.code()));
    job.set_error_message(std::string(status_.message()));
  }
  if (metrics_.has_value()) {
    api::MetricsToProto(*metrics_, job.mutable_metrics());
    job.mutable_metrics()->set_backend(backend_);
    if (started_ != absl::InfinitePast()) {
      job.mutable_metrics()->set_queue_seconds(absl::ToDoubleSeconds(started_ - created_));
    }
  }
  return job;
}

}  // namespace nvfp4::server
