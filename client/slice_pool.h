// SlicePool: reusable fixed-size buffers handed to gRPC as slices.
//
// The copying QuantizeTensor call copies each upload chunk once, into a pooled buffer that
// gRPC then sends without another copy (proto/chunk_wire.h); the zero-copy call, given the
// tensor's owner, sends slices of the tensor instead. A buffer comes back to the pool when
// gRPC drops its last reference to the slice, which may be after the call (or the client) is
// gone, so the pool is shared-owned by its slices. Reusing buffers also saves the page faults
// of fresh 4 MiB allocations. Thread-safe.
#ifndef NVFP4_CLIENT_SLICE_POOL_H_
#define NVFP4_CLIENT_SLICE_POOL_H_

#include <cstddef>
#include <cstdint>
#include <memory>
#include <vector>

#include "absl/synchronization/mutex.h"
#include "grpcpp/support/slice.h"

namespace nvfp4::client {

class SlicePool : public std::enable_shared_from_this<SlicePool> {
 public:
  // Buffers of buffer_bytes; at most max_idle of them are kept while unused.
  static std::shared_ptr<SlicePool> Create(size_t buffer_bytes, size_t max_idle);

  // A slice holding a copy of data[0, n). Throws std::bad_alloc like new. A chunk larger than
  // buffer_bytes() gets a one-off buffer.
  grpc::Slice Copy(const void* data, size_t n);

  size_t buffer_bytes() const { return buffer_bytes_; }
  size_t idle() const;

 private:
  struct Lease;
  SlicePool(size_t buffer_bytes, size_t max_idle)
      : buffer_bytes_(buffer_bytes), max_idle_(max_idle) {}
  static void Release(void* lease);

  const size_t buffer_bytes_;
  const size_t max_idle_;
  mutable absl::Mutex mu_;
  std::vector<std::unique_ptr<uint8_t[]>> idle_ ABSL_GUARDED_BY(mu_);
};

}  // namespace nvfp4::client

#endif  // NVFP4_CLIENT_SLICE_POOL_H_
