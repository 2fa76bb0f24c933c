// LargeBuffer: an uninitialised array for big payloads (uploaded tensors, job buffers). From
// 2 MiB on it is a private anonymous mapping of its own, 2 MiB aligned and advised for
// transparent huge pages (THP "madvise" mode): filling a fresh 1 GiB buffer with 4 KiB pages
// costs ~260k page faults, about a third of nvfp4d's CPU time while a tensor streams in. Smaller
// ones come from malloc. Owns its memory (the deleter knows the size); not thread-safe (a plain
// array).
//
// ReserveOnHugePages gives the storage of a big std::vector (quantised outputs, received
// results) the same advice when it is certainly a mapping of its own.
#ifndef NVFP4_COMMON_LARGE_BUFFER_H_
#define NVFP4_COMMON_LARGE_BUFFER_H_

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <memory>
#include <new>
#include <vector>

#if defined(__linux__)
#include <sys/mman.h>
#endif

namespace nvfp4 {

inline constexpr size_t kHugePageBytes = size_t{2} << 20;

// x rounded up to a multiple of 2 MiB (a size, or an address).
constexpr std::uintptr_t RoundUpToHugePage(std::uintptr_t x) {
  return (x + kHugePageBytes - 1) & ~std::uintptr_t{kHugePageBytes - 1};
}

namespace large_buffer_internal {

// Null when memory runs out.
inline void* Allocate(size_t bytes) {
#if defined(__linux__)
  if (bytes >= kHugePageBytes) {
    // Over-map by one huge page and cut the unaligned ends off: THP needs 2 MiB alignment.
    const size_t mapped = RoundUpToHugePage(bytes);
    void* raw = mmap(nullptr, mapped + kHugePageBytes, PROT_READ | PROT_WRITE,
                     MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (raw == MAP_FAILED) return nullptr;
    const auto begin = reinterpret_cast<std::uintptr_t>(raw);
    const std::uintptr_t aligned = RoundUpToHugePage(begin);
    if (aligned > begin) munmap(raw, aligned - begin);
    const size_t tail = begin + mapped + kHugePageBytes - (aligned + mapped);
    if (tail > 0) munmap(reinterpret_cast<void*>(aligned + mapped), tail);
#if defined(MADV_HUGEPAGE)
    madvise(reinterpret_cast<void*>(aligned), mapped, MADV_HUGEPAGE);  // advisory
#endif
    return reinterpret_cast<void*>(aligned);
  }
#endif
  return std::malloc(bytes > 0 ? bytes : 1);
}

inline void Free(void* p, size_t bytes) {
  if (p == nullptr) return;
#if defined(__linux__)
  if (bytes >= kHugePageBytes) {
    munmap(p, RoundUpToHugePage(bytes));
    return;
  }
#endif
  std::free(p);
}

}  // namespace large_buffer_internal

// Frees what AllocateLargeBuffer returned for `bytes` bytes.
struct LargeBufferDeleter {
  size_t bytes = 0;
  void operator()(void* p) const { large_buffer_internal::Free(p, bytes); }
};

template <typename T>
using LargeBuffer = std::unique_ptr<T[], LargeBufferDeleter>;

// Throws std::bad_alloc like new[] when memory runs out (callers map it to RESOURCE_EXHAUSTED).
template <typename T>
LargeBuffer<T> AllocateLargeBuffer(size_t count) {
  const size_t bytes = count * sizeof(T);
  void* p = large_buffer_internal::Allocate(bytes);
  if (!p) throw std::bad_alloc();
  return LargeBuffer<T>(static_cast<T*>(p), LargeBufferDeleter{bytes});
}

// Vectors from this size on are their own mappings (twice glibc's largest mmap threshold, so
// also when a free heap block of that size happens to exist is unlikely); smaller storage may
// lie inside malloc's heap, where huge-page advice would outlive the vector.
inline constexpr size_t kHugePageVectorMinBytes = size_t{64} << 20;

// Reserves room for `count` elements in `v` and, from kHugePageVectorMinBytes on, asks for
// transparent huge pages over the 2 MiB aligned part of it before anything is written there:
// for outputs of hundreds of MiB this turns ~500 page faults per 2 MiB into one (measured:
// 0.06 vs 0.16 CPU s for 288 MiB on the 2-core CI machine). Advisory.
template <typename T>
void ReserveOnHugePages(std::vector<T>& v, size_t count) {
  v.reserve(count);
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  const size_t bytes = v.capacity() * sizeof(T);
  if (bytes < kHugePageVectorMinBytes) return;
  const auto begin = reinterpret_cast<std::uintptr_t>(v.data());
  const std::uintptr_t first = RoundUpToHugePage(begin);
  const std::uintptr_t last = (begin + bytes) & ~(kHugePageBytes - 1);
  if (last > first) madvise(reinterpret_cast<void*>(first), last - first, MADV_HUGEPAGE);
#endif
}

// ReserveOnHugePages, then resize (value-initialising the new elements).
template <typename T>
void ResizeOnHugePages(std::vector<T>& v, size_t count) {
  ReserveOnHugePages(v, count);
  v.resize(count);
}

}  // namespace nvfp4

#endif  // NVFP4_COMMON_LARGE_BUFFER_H_
