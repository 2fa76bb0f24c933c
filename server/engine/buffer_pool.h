// JobBufferPool: recycles the large input and output buffers of tensor jobs.
//
// The first touch of fresh memory costs page faults (and, in a VM, the hypervisor backing each
// page): 0.2-1.3 s per GiB on the 2-core CI VM against 0.1 s to rewrite warm memory, so landing
// a 1 GiB upload in a fresh buffer cost nvfp4d about as much CPU as the transfer itself. Buffers
// of finished jobs are kept and handed to the next job they fit (capacity between the request
// and twice it; the smallest such one).
//
// Bounds: idle bytes plus committed bytes never exceed limit_bytes. Committed bytes are what
// the owner says is already in use (nvfp4d: its memory budget as the limit and the scheduler's
// reserved bytes, which count every admitted job's input, importance and outputs; by default
// the pool's own buffers in use). Idle buffers are freed before a new allocation would pass
// the limit, and a buffer that comes back when keeping it would pass the limit is freed. Idle
// buffers unused for max_idle_age are freed by ReleaseStale (the server's housekeeping), so an idle
// server shrinks back; a zero max_idle_age keeps nothing. Requests below min_pooled_bytes (by
// default 2 MiB, where LargeBuffer switches from malloc to mappings of its own) are plain
// allocations: the malloc heap recycles them anyway, and pooling them as 2 MiB-aligned heap
// blocks only fragmented that heap.
// Thread-safe; a Buffer may outlive the pool object (they share the pool's state).
#ifndef NVFP4_SERVER_ENGINE_BUFFER_POOL_H_
#define NVFP4_SERVER_ENGINE_BUFFER_POOL_H_

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>

#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "common/large_buffer.h"

namespace nvfp4::server {

class JobBufferPool {
 public:
  static constexpr size_t kDefaultMinPooledBytes = kHugePageBytes;

  struct State;

  // Owns size() bytes (uninitialised on first use, stale data when recycled); returns them to
  // the pool on destruction. Move-only.
  class Buffer {
   public:
    Buffer() = default;
    Buffer(Buffer&& other) noexcept;
    Buffer& operator=(Buffer&& other) noexcept;
    ~Buffer();

    uint8_t* data() const { return data_; }
    size_t size() const { return size_; }
    template <typename T>
    T* as() const {
      return reinterpret_cast<T*>(data_);
    }

   private:
    friend class JobBufferPool;
    void Reset();
    std::shared_ptr<State> state_;  // null: not pooled (small, or empty)
    uint8_t* data_ = nullptr;
    size_t size_ = 0;
    size_t capacity_ = 0;
  };

  // committed_bytes: called outside the pool's lock; empty means in_use_bytes().
  JobBufferPool(size_t limit_bytes, absl::Duration max_idle_age,
                std::function<size_t()> committed_bytes = {},
                size_t min_pooled_bytes = kDefaultMinPooledBytes);
  ~JobBufferPool();

  // A buffer of at least `bytes` (0 gives an empty buffer). Throws std::bad_alloc when memory
  // runs out (callers map it to RESOURCE_EXHAUSTED).
  Buffer Acquire(size_t bytes);

  // Frees idle buffers unused since before now - max_idle_age.
  void ReleaseStale(absl::Time now = absl::Now());

  size_t idle_bytes() const;
  size_t in_use_bytes() const;  // pooled buffers currently handed out
  int64_t reuses() const;       // Acquire calls served by an idle buffer

 private:
  std::shared_ptr<State> state_;
};

}  // namespace nvfp4::server

#endif  // NVFP4_SERVER_ENGINE_BUFFER_POOL_H_
