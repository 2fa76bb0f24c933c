#include "server/engine/buffer_pool.h"

#include <algorithm>
#include <cstdlib>
#include <new>
#include <optional>
#include <utility>
#include <vector>

#include "absl/synchronization/mutex.h"
#include "common/large_buffer.h"

namespace nvfp4::server {

struct JobBufferPool::State {
  struct Idle {
    LargeBuffer<uint8_t> memory;
    size_t capacity;
    absl::Time since;
  };

  const size_t limit_bytes;
  const absl::Duration max_idle_age;
  const std::function<size_t()> committed_bytes;  // empty: in_use_bytes
  const size_t min_pooled_bytes;
  mutable absl::Mutex mu;
  std::vector<Idle> idle ABSL_GUARDED_BY(mu);
  size_t idle_bytes ABSL_GUARDED_BY(mu) = 0;
  size_t in_use_bytes ABSL_GUARDED_BY(mu) = 0;
  int64_t reuses ABSL_GUARDED_BY(mu) = 0;

  State(size_t limit, absl::Duration age, std::function<size_t()> committed, size_t min_pooled)
      : limit_bytes(limit),
        max_idle_age(age),
        committed_bytes(std::move(committed)),
        min_pooled_bytes(min_pooled) {}

  // Whether `extra` more bytes fit next to the idle ones. `external` is committed_bytes(),
  // taken before the lock; without it the pool's own in-use bytes count.
  bool FitsLocked(const std::optional<size_t>& external, size_t extra) const
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) {
    return external.value_or(in_use_bytes) + idle_bytes + extra <= limit_bytes;
  }

  std::optional<size_t> External() const {
    return committed_bytes ? std::optional<size_t>(committed_bytes()) : std::nullopt;
  }

  // Removes idle entry i; the caller frees its memory outside the lock.
  LargeBuffer<uint8_t> TakeLocked(size_t i) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) {
    LargeBuffer<uint8_t> memory = std::move(idle[i].memory);
    idle_bytes -= idle[i].capacity;
    idle[i] = std::move(idle.back());
    idle.pop_back();
    return memory;
  }

  void Return(uint8_t* data, size_t capacity) {
    LargeBuffer<uint8_t> memory(data, LargeBufferDeleter{capacity});
    const std::optional<size_t> external = External();
    absl::MutexLock lock(&mu);
    in_use_bytes -= capacity;
    // Freed on scope exit when keeping it would pass the limit, or when nothing is kept. (An
    // external count may still include the returning job: conservative.)
    if (max_idle_age <= absl::ZeroDuration() || !FitsLocked(external, capacity)) return;
    idle.push_back(Idle{std::move(memory), capacity, absl::Now()});
    idle_bytes += capacity;
  }
};

JobBufferPool::Buffer::Buffer(Buffer&& other) noexcept
    : state_(std::move(other.state_)),
      data_(std::exchange(other.data_, nullptr)),
      size_(std::exchange(other.size_, 0)),
      capacity_(std::exchange(other.capacity_, 0)) {}

JobBufferPool::Buffer& JobBufferPool::Buffer::operator=(Buffer&& other) noexcept {
  if (this != &other) {
    Reset();
    state_ = std::move(other.state_);
    data_ = std::exchange(other.data_, nullptr);
    size_ = std::exchange(other.size_, 0);
    capacity_ = std::exchange(other.capacity_, 0);
  }
  return *this;
}

JobBufferPool::Buffer::~Buffer() { Reset(); }

void JobBufferPool::Buffer::Reset() {
  if (data_ != nullptr) {
    if (state_) {
      state_->Return(data_, capacity_);
    } else {
      LargeBufferDeleter{capacity_}(data_);
    }
  }
  state_.reset();
  data_ = nullptr;
  size_ = capacity_ = 0;
}

JobBufferPool::JobBufferPool(size_t limit_bytes, absl::Duration max_idle_age,
                             std::function<size_t()> committed_bytes, size_t min_pooled_bytes)
    : state_(std::make_shared<State>(limit_bytes, max_idle_age, std::move(committed_bytes),
                                     min_pooled_bytes)) {}

JobBufferPool::~JobBufferPool() = default;

JobBufferPool::Buffer JobBufferPool::Acquire(size_t bytes) {
  Buffer buffer;
  buffer.size_ = bytes;
  if (bytes == 0) return buffer;
  if (bytes < state_->min_pooled_bytes) {
    buffer.data_ = AllocateLargeBuffer<uint8_t>(bytes).release();
    buffer.capacity_ = bytes;
    return buffer;
  }
  const size_t capacity = RoundUpToHugePage(bytes);  // what the mapping holds anyway
  std::vector<LargeBuffer<uint8_t>> evicted;         // freed after the lock is released
  State& s = *state_;
  // An external count already includes this request (nvfp4d admits the job first).
  const std::optional<size_t> external = s.External();
  const size_t extra = external ? 0 : capacity;
  {
    absl::MutexLock lock(&s.mu);
    size_t best = s.idle.size();
    for (size_t i = 0; i < s.idle.size(); ++i) {
      const size_t c = s.idle[i].capacity;
      if (c >= bytes && c <= 2 * capacity && (best == s.idle.size() || c < s.idle[best].capacity)) {
        best = i;
      }
    }
    if (best < s.idle.size()) {
      buffer.capacity_ = s.idle[best].capacity;
      buffer.data_ = s.TakeLocked(best).release();
      s.in_use_bytes += buffer.capacity_;
      ++s.reuses;
      buffer.state_ = state_;
      return buffer;
    }
    // A fresh allocation: first make room under the limit, oldest idle buffers first.
    while (!s.idle.empty() && !s.FitsLocked(external, extra)) {
      size_t oldest = 0;
      for (size_t i = 1; i < s.idle.size(); ++i) {
        if (s.idle[i].since < s.idle[oldest].since) oldest = i;
      }
      evicted.push_back(s.TakeLocked(oldest));
    }
    s.in_use_bytes += capacity;  // reserved before allocating, so concurrent calls see it
  }
  evicted.clear();
  try {
    buffer.data_ = AllocateLargeBuffer<uint8_t>(capacity).release();
  } catch (const std::bad_alloc&) {
    absl::MutexLock lock(&s.mu);
    s.in_use_bytes -= capacity;
    throw;
  }
  buffer.capacity_ = capacity;
  buffer.state_ = state_;
  return buffer;
}

void JobBufferPool::ReleaseStale(absl::Time now) {
  std::vector<LargeBuffer<uint8_t>> stale;
  State& s = *state_;
  absl::MutexLock lock(&s.mu);
  for (size_t i = 0; i < s.idle.size();) {
    if (now - s.idle[i].since >= s.max_idle_age) {
      stale.push_back(s.TakeLocked(i));
    } else {
      ++i;
    }
  }
  // `stale` is freed after the lock is released (declared before it).
}

size_t JobBufferPool::idle_bytes() const {
  absl::MutexLock lock(&state_->mu);
  return state_->idle_bytes;
}

size_t JobBufferPool::in_use_bytes() const {
  absl::MutexLock lock(&state_->mu);
  return state_->in_use_bytes;
}

int64_t JobBufferPool::reuses() const {
  absl::MutexLock lock(&state_->mu);
  return state_->reuses;
}

}  // namespace nvfp4::server
