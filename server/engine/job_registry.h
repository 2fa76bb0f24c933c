// JobRegistry: all live jobs plus the most recent finished ones, by id, for GetJob / ListJobs /
// CancelJob. Ids are unique per server process ("t-<counter>-<random>").
//
// Cost: Create and Find look only at the live jobs (admitted, not yet seen finished: at most the
// queue plus the workers plus the uploads in flight) and forget finished ones beyond the history
// oldest-finished first, so neither grows with the history; List copies every kept job.
// Thread-safety: every method may be called from any thread.
#ifndef NVFP4_SERVER_ENGINE_JOB_REGISTRY_H_
#define NVFP4_SERVER_ENGINE_JOB_REGISTRY_H_

#include <cstdint>
#include <deque>
#include <map>
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
  // Drops a job at once, finished or not: one refused at admission never gave its client an id,
  // and kept, such records would push real jobs out of the history under overload.
  void Forget(const std::string& id);
  // Find and List first move the jobs that finished since into the history and trim it.
  std::shared_ptr<Job> Find(const std::string& id);  // nullptr when unknown
  // Newest first, optionally filtered by state.
  std::vector<std::shared_ptr<Job>> List(const std::vector<v1::JobState>& states);
  int history() const { return history_; }

 private:
  void TrimLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const int history_;
  mutable absl::Mutex mu_;
  uint64_t next_seq_ ABSL_GUARDED_BY(mu_) = 1;
  std::map<uint64_t, std::shared_ptr<Job>> by_seq_ ABSL_GUARDED_BY(mu_);  // creation order
  absl::flat_hash_map<std::string, uint64_t> seq_of_id_ ABSL_GUARDED_BY(mu_);
  std::vector<uint64_t> live_ ABSL_GUARDED_BY(mu_);     // not yet seen finished
  std::deque<uint64_t> finished_ ABSL_GUARDED_BY(mu_);  // in the order they were seen finished
};

}  // namespace nvfp4::server

#endif  // NVFP4_SERVER_ENGINE_JOB_REGISTRY_H_
