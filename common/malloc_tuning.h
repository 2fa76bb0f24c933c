// TuneMallocForStreaming: glibc heap settings for processes that stream tensors over gRPC
// (nvfp4d, nvfp4q, the benchmarks). Call once at the start of main, before other threads exist.
//
// Why: gRPC reads a streamed tensor into heap slices that are freed as soon as the chunk is
// copied out. With glibc's defaults the free space at the top of a heap is handed back to the
// kernel at once (brk / madvise), so the next chunk faults fresh pages in again: 135-200k page
// faults per GiB through nvfp4d_bench's transport-only mode. Keeping a 16 MiB pad at the top of
// each heap (M_TOP_PAD: kept when a heap shrinks, added when it grows) brings that to 13-23k and
// the transport's CPU time down by ~15 % (`perf stat -e page-faults nvfp4d_bench --only 2`,
// against GLIBC_TUNABLES=glibc.malloc.check=0 for glibc's defaults; docs/benchmarks.md). The cost
// is up to one pad of resident memory while busy; idle, nvfp4d trims it (below).
//
// One heap arena instead of glibc's up to 8 per core: with dozens of gRPC threads, freed memory
// otherwise fragments across arenas and the resident size creeps up under sustained load
// (measured: +90 MB over 40 s of 64 streams with the default). One arena also lets the idle
// malloc_trim (nvfp4d's housekeeping) give back everything, pad included: malloc_trim cannot
// shrink the top of a secondary arena, and with two arenas the idle resident size sat at
// 28-39 MB depending on which arena the last job used; with one it is ~22 MB before and after
// the integration soak, at the same throughput (small blocks come from per-thread caches, and
// job tensors have their own mappings).
//
// Settings given in the environment (MALLOC_ARENA_MAX, MALLOC_TOP_PAD_, glibc.malloc.* in
// GLIBC_TUNABLES) win. A no-op on other C libraries.
#ifndef NVFP4_COMMON_MALLOC_TUNING_H_
#define NVFP4_COMMON_MALLOC_TUNING_H_

#include <cstdlib>
#include <cstring>

#if defined(__GLIBC__)
#include <malloc.h>
#endif

namespace nvfp4 {

inline constexpr int kMallocArenaMax = 1;
inline constexpr int kMallocTopPadBytes = 16 << 20;

inline void TuneMallocForStreaming() {
#if defined(__GLIBC__)
  if (std::getenv("MALLOC_ARENA_MAX") == nullptr) ::mallopt(M_ARENA_MAX, kMallocArenaMax);
  const char* tunables = std::getenv("GLIBC_TUNABLES");
  if (tunables != nullptr && std::strstr(tunables, "glibc.malloc.") != nullptr) return;
  if (std::getenv("MALLOC_TOP_PAD_") == nullptr) ::mallopt(M_TOP_PAD, kMallocTopPadBytes);
#endif
}

}  // namespace nvfp4

#endif  // NVFP4_COMMON_MALLOC_TUNING_H_
