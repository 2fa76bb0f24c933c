#include "kernels/cpu/parallel_copy.h"

#include <algorithm>
#include <cstring>

namespace nvfp4::cpu {

void ParallelCopy(ThreadPool& pool, const std::vector<CopyRange>& ranges,
                  std::vector<CopyRange>* pieces) {
  pieces->clear();
  for (const CopyRange& range : ranges) {
    for (size_t at = 0; at < range.bytes; at += kParallelCopyPieceBytes) {
      const size_t n = std::min(kParallelCopyPieceBytes, range.bytes - at);
      pieces->push_back({range.dst + at, range.src + at, n});
    }
  }
  if (pieces->size() <= 1 || pool.parallelism() == 1) {
    for (const CopyRange& piece : *pieces) std::memcpy(piece.dst, piece.src, piece.bytes);
    return;
  }
  pool.ParallelFor(static_cast<int64_t>(pieces->size()), [pieces](int64_t i) {
    const CopyRange& piece = (*pieces)[static_cast<size_t>(i)];
    std::memcpy(piece.dst, piece.src, piece.bytes);
  });
}

}  // namespace nvfp4::cpu
