// JobRegistry: all live jobs plus the most recent finished ones, by id, for GetJob / ListJobs /
// CancelJob. Ids are unique per server process ("t-<counter>-<random>"). Thread-safe.
#ifndef NVFP4_SERVER_ENGINE_JOB_REGISTRY_H_
#define NVFP4_SERVER_ENGINE_JOB_REGISTRY_H_

#include <cstdint>
#include <deque>
#include <memory>
#include <string>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/synchronization/mutex.h"
#include "server/engine/job.h"

namespace nvfp4::server {

class JobRegistry {
 public:
  // history: finished jobs kept for inspection (older ones are forgotten).
  explicit JobRegistry(int history);

  std::shared_ptr<Job> Create(v1::JobKind kind, std::string name, int64_t elements,
                              std::string request_id = "");
  // Find and List first forget the finished jobs beyond the history (jobs finish between calls).
  std::shared_ptr<Job> Find(const std::string& id);  // nullptr when unknown
  // Newest first, optionally filtered by state.
  std::vector<std::shared_ptr<Job>> List(const std::vector<v1::JobState>& states);
  int history() const { return history_; }

 private:
  void TrimLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const int history_;
  mutable absl::Mutex mu_;
  uint64_t next_id_ ABSL_GUARDED_BY(mu_) = 1;
  std::deque<std::shared_ptr<Job>> order_ ABSL_GUARDED_BY(mu_);  // oldest first
  absl::flat_hash_map<std::string, std::shared_ptr<Job>> by_id_ ABSL_GUARDED_BY(mu_);
};

}  // namespace nvfp4::server

#endif  // NVFP4_SERVER_ENGINE_JOB_REGISTRY_H_
