#include "server/engine/job_registry.h"

#include <algorithm>
#include <random>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace nvfp4::server {

JobRegistry::JobRegistry(int history) : history_(history) {}

std::shared_ptr<Job> JobRegistry::Create(v1::JobKind kind, std::string name, int64_t elements,
                                         std::string request_id) {
  static thread_local std::mt19937_64 rng(std::random_device{}());
  absl::MutexLock lock(&mu_);
  const std::string id = absl::StrFormat("%s-%d-%08x", kind == v1::JOB_KIND_CHECKPOINT ? "c" : "t",
                                         next_id_++, static_cast<uint32_t>(rng()));
  auto job = std::make_shared<Job>(id, kind, std::move(name), elements, std::move(request_id));
  order_.push_back(job);
  by_id_[id] = job;
  TrimLocked();
  return job;
}

void JobRegistry::TrimLocked() {
  // Forget the oldest finished jobs beyond the history size; live jobs always stay.
  int finished = 0;
  for (const auto& job : order_) finished += job->finished() ? 1 : 0;
  for (auto it = order_.begin(); finished > history_ && it != order_.end();) {
    if ((*it)->finished()) {
      by_id_.erase((*it)->id());
      it = order_.erase(it);
      --finished;
    } else {
      ++it;
    }
  }
}

std::shared_ptr<Job> JobRegistry::Find(const std::string& id) {
  absl::MutexLock lock(&mu_);
  TrimLocked();
  auto it = by_id_.find(id);
  return it == by_id_.end() ? nullptr : it->second;
}

std::vector<std::shared_ptr<Job>> JobRegistry::List(const std::vector<v1::JobState>& states) {
  absl::MutexLock lock(&mu_);
  TrimLocked();
  std::vector<std::shared_ptr<Job>> out;
  for (auto it = order_.rbegin(); it != order_.rend(); ++it) {
    if (states.empty() || std::find(states.begin(), states.end(), (*it)->state()) != states.end()) {
      out.push_back(*it);
    }
  }
  return out;
}

}  // namespace nvfp4::server
