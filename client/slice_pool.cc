#include "client/slice_pool.h"

#include <cstring>

namespace nvfp4::client {

struct SlicePool::Lease {
  std::shared_ptr<SlicePool> pool;
  std::unique_ptr<uint8_t[]> buffer;
  bool pooled = true;  // false for an oversized one-off buffer
};

std::shared_ptr<SlicePool> SlicePool::Create(size_t buffer_bytes, size_t max_idle) {
  return std::shared_ptr<SlicePool>(new SlicePool(buffer_bytes, max_idle));
}

grpc::Slice SlicePool::Copy(const void* data, size_t n) {
  auto lease = std::make_unique<Lease>();
  lease->pool = shared_from_this();
  if (n > buffer_bytes_) {
    lease->pooled = false;
    lease->buffer.reset(new uint8_t[n]);
  } else {
    absl::MutexLock lock(&mu_);
    if (!idle_.empty()) {
      lease->buffer = std::move(idle_.back());
      idle_.pop_back();
    }
  }
  // Default-initialised: no zeroing pass over memory that is overwritten next.
  if (!lease->buffer) lease->buffer.reset(new uint8_t[buffer_bytes_]);
  std::memcpy(lease->buffer.get(), data, n);
  uint8_t* bytes = lease->buffer.get();
  return grpc::Slice(bytes, n, &SlicePool::Release, lease.release());
}

void SlicePool::Release(void* opaque) {
  std::unique_ptr<Lease> lease(static_cast<Lease*>(opaque));
  SlicePool& pool = *lease->pool;
  absl::MutexLock lock(&pool.mu_);
  if (lease->pooled && pool.idle_.size() < pool.max_idle_)
    pool.idle_.push_back(std::move(lease->buffer));
}

size_t SlicePool::idle() const {
  absl::MutexLock lock(&mu_);
  return idle_.size();
}

}  // namespace nvfp4::client
