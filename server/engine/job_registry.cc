#include "server/engine/job_registry.h"

#include <algorithm>
#include <random>

#include "absl/strings/str_format.h"

namespace nvfp4::server {

JobRegistry::JobRegistry(int history) : history_(history) {}

std::shared_ptr<Job> JobRegistry::Create(v1::JobKind kind, std::string name, int64_t elements,
                                         std::string request_id) {
  static thread_local std::mt19937_64 rng(std::random_device{}());
  absl::MutexLock lock(&mu_);
  const uint64_t seq = next_seq_++;
  const std::string id = absl::StrFormat("%s-%d-%08x", kind == v1::JOB_KIND_CHECKPOINT ? "c" : "t",
                                         seq, static_cast<uint32_t>(rng()));
  auto job = std::make_shared<Job>(id, kind, std::move(name), elements, std::move(request_id));
  by_seq_.emplace(seq, job);
  seq_of_id_.emplace(id, seq);
  live_.push_back(seq);
  TrimLocked();
  return job;
}

void JobRegistry::Forget(const std::string& id) {
  absl::MutexLock lock(&mu_);
  const auto it = seq_of_id_.find(id);
  if (it == seq_of_id_.end()) return;
  const uint64_t seq = it->second;
  seq_of_id_.erase(it);
  by_seq_.erase(seq);
  // A refused job is live (the common case, cheap); only a finished one costs a history scan.
  if (const auto live = std::find(live_.begin(), live_.end(), seq); live != live_.end()) {
    live_.erase(live);
  } else {
    finished_.erase(std::remove(finished_.begin(), finished_.end(), seq), finished_.end());
  }
}

void JobRegistry::TrimLocked() {
  // Live jobs that finished since the last look join the history, in the order seen.
  size_t kept = 0;
  for (const uint64_t seq : live_) {
    if (by_seq_.at(seq)->finished()) {
      finished_.push_back(seq);
    } else {
      live_[kept++] = seq;
    }
  }
  live_.resize(kept);
  while (finished_.size() > static_cast<size_t>(std::max(history_, 0))) {
    const auto it = by_seq_.find(finished_.front());
    seq_of_id_.erase(it->second->id());
    by_seq_.erase(it);
    finished_.pop_front();
  }
}

std::shared_ptr<Job> JobRegistry::Find(const std::string& id) {
  absl::MutexLock lock(&mu_);
  TrimLocked();
  const auto it = seq_of_id_.find(id);
  return it == seq_of_id_.end() ? nullptr : by_seq_.at(it->second);
}

std::vector<std::shared_ptr<Job>> JobRegistry::List(const std::vector<v1::JobState>& states) {
  absl::MutexLock lock(&mu_);
  TrimLocked();
  std::vector<std::shared_ptr<Job>> out;
  for (auto it = by_seq_.rbegin(); it != by_seq_.rend(); ++it) {
    const std::shared_ptr<Job>& job = it->second;
    if (states.empty() || std::find(states.begin(), states.end(), job->state()) != states.end()) {
      out.push_back(job);
    }
  }
  return out;
}

}  // namespace nvfp4::server
