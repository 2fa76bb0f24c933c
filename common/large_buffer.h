// LargeBuffer: an uninitialised heap array for big payloads (uploaded tensors), backed by
// transparent huge pages where the kernel offers them (THP "madvise" mode). Filling a fresh
// 1 GiB buffer otherwise costs ~260k page faults, about a third of nvfp4d's CPU time while a
// tensor streams in. Owns its memory; not thread-safe (a plain array).
#ifndef NVFP4_COMMON_LARGE_BUFFER_H_
#define NVFP4_COMMON_LARGE_BUFFER_H_

#include <cstddef>
#include <cstdlib>
#include <memory>
#include <new>

#if defined(__linux__)
#include <sys/mman.h>
#endif

namespace nvfp4 {

struct LargeBufferDeleter {
  void operator()(void* p) const { std::free(p); }
};

template <typename T>
using LargeBuffer = std::unique_ptr<T[], LargeBufferDeleter>;

// Throws std::bad_alloc like new[] when memory runs out (callers map it to RESOURCE_EXHAUSTED).
template <typename T>
LargeBuffer<T> AllocateLargeBuffer(size_t count) {
  constexpr size_t kHugePage = size_t{2} << 20;
  const size_t bytes = count * sizeof(T);
  void* p = nullptr;
  if (bytes >= kHugePage) {
    const size_t rounded = (bytes + kHugePage - 1) / kHugePage * kHugePage;
    p = std::aligned_alloc(kHugePage, rounded);
#if defined(__linux__) && defined(MADV_HUGEPAGE)
    if (p) madvise(p, rounded, MADV_HUGEPAGE);  // advisory: ignored where THP is off
#endif
  } else {
    p = std::malloc(bytes > 0 ? bytes : 1);
  }
  if (!p) throw std::bad_alloc();
  return LargeBuffer<T>(static_cast<T*>(p));
}

}  // namespace nvfp4

#endif  // NVFP4_COMMON_LARGE_BUFFER_H_
