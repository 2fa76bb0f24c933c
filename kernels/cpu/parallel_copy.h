// ParallelCopy: copies a list of host byte ranges with the threads of a ThreadPool.
//
// What for: the CUDA host path stages every chunk through pinned memory (input in, outputs
// out). One thread's memcpy moves ~10-15 GB/s, below a PCIe 5 x16 link (~50 GB/s), so a single
// copying thread, not the link, would set the host path's speed. Ranges are cut into pieces of
// kPieceBytes so that a few large ranges and many small ones (a streamed input's received
// messages) spread alike. Same contract as memcpy per range (no overlap between any source and
// destination). Thread-safety: as ThreadPool::ParallelFor (calls on one pool are serialised).
#ifndef NVFP4_KERNELS_CPU_PARALLEL_COPY_H_
#define NVFP4_KERNELS_CPU_PARALLEL_COPY_H_

#include <cstddef>
#include <cstdint>
#include <vector>

#include "kernels/cpu/thread_pool.h"

namespace nvfp4::cpu {

struct CopyRange {
  uint8_t* dst;
  const uint8_t* src;
  size_t bytes;
};

inline constexpr size_t kParallelCopyPieceBytes = size_t{1} << 20;

// Copies every range; `pieces` is scratch space the caller may keep between calls.
void ParallelCopy(ThreadPool& pool, const std::vector<CopyRange>& ranges,
                  std::vector<CopyRange>* pieces);

}  // namespace nvfp4::cpu

#endif  // NVFP4_KERNELS_CPU_PARALLEL_COPY_H_
