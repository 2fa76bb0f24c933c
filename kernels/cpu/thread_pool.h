// ThreadPool: a fixed set of worker threads for data-parallel loops.
//
// ParallelFor(n, fn) runs fn(i) for every i in [0, n) on the workers and the calling thread
// and returns when all calls have finished. Calls to ParallelFor from several threads are
// serialised. fn must not throw and must not call ParallelFor on the same pool.
#ifndef NVFP4_KERNELS_CPU_THREAD_POOL_H_
#define NVFP4_KERNELS_CPU_THREAD_POOL_H_

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace nvfp4::cpu {

class ThreadPool {
 public:
  // parallelism: total threads used by ParallelFor, including the caller (>= 1).
  explicit ThreadPool(int parallelism);
  ~ThreadPool();
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  int parallelism() const { return static_cast<int>(workers_.size()) + 1; }
  void ParallelFor(int64_t n, const std::function<void(int64_t)>& fn);

 private:
  void WorkerLoop();
  void RunItems();

  std::mutex call_mutex_;  // serialises ParallelFor calls
  std::mutex mutex_;
  std::condition_variable work_ready_;
  std::condition_variable work_done_;
  const std::function<void(int64_t)>* fn_ = nullptr;
  int64_t n_ = 0;
  std::atomic<int64_t> next_{0};
  uint64_t generation_ = 0;
  int busy_workers_ = 0;
  bool stopping_ = false;
  std::vector<std::thread> workers_;
};

}  // namespace nvfp4::cpu

#endif  // NVFP4_KERNELS_CPU_THREAD_POOL_H_
