// TuneMallocForStreaming: glibc heap settings for processes that stream tensors over gRPC
// (nvfp4d, nvfp4q, the benchmarks). Call once at the start of main, before other threads exist.
//
// Why: gRPC reads a streamed tensor into heap slices that are freed as soon as the chunk is
// copied out, and the freed space at the top of the heap went back to the kernel after a chunk
// or two (brk / madvise), so the next chunks faulted fresh pages in again: 135-200k page faults
// per GiB through nvfp4d_bench's transport-only mode. A 16 MiB pad at the top of the heap
// (M_TOP_PAD: left in place when the heap is trimmed, added when the main heap grows) brings
// that to 13-23k and the transport's CPU time down by a sixth or more (`perf stat -e
// page-faults nvfp4d_bench --only 2` against the same with NVFP4_MALLOC_TUNING=0;
// docs/benchmarks.md).
//
// Setting any of these turns off glibc's sliding mmap threshold (which otherwise rises to the
// size of the largest freed mapping, up to 32 MiB), so it is set explicitly to that maximum:
// blocks below 32 MiB are recycled inside the heap rather than mapped and faulted in afresh
// for every job. Blocks meant to live on huge pages get their own mappings
// (common/large_buffer.h), so huge-page advice never lands on the heap.
//
// One heap arena instead of glibc's up to 8 per core: with dozens of gRPC threads, freed memory
// otherwise fragments across arenas and the resident size creeps up under sustained load
// (measured: +90 MB over 40 s of 64 streams with the default). One arena also lets the idle
// malloc_trim of nvfp4d's housekeeping give everything back, pad included: malloc_trim cannot
// shrink the top of a secondary arena, and with two arenas the idle resident size sat at
// 28-39 MB depending on which arena the last job used (docs/operations.md has the soak figures).
//
// Each setting given in the environment (MALLOC_ARENA_MAX, MALLOC_TOP_PAD_,
// MALLOC_MMAP_THRESHOLD_, or the matching glibc.malloc.* entry of GLIBC_TUNABLES) wins over
// ours; NVFP4_MALLOC_TUNING=0 leaves glibc's defaults alone. A no-op on other C libraries.
#ifndef NVFP4_COMMON_MALLOC_TUNING_H_
#define NVFP4_COMMON_MALLOC_TUNING_H_

#include <cstdlib>
#include <cstring>
#include <optional>

#if defined(__GLIBC__)
#include <malloc.h>
#endif

namespace nvfp4 {

inline constexpr int kMallocArenaMax = 1;
inline constexpr int kMallocTopPadBytes = 16 << 20;
inline constexpr int kMallocMmapThresholdBytes = 32 << 20;  // glibc's largest sliding value

// What TuneMallocForStreaming sets (nullopt: left to glibc).
struct MallocTuning {
  std::optional<int> arena_max;
  std::optional<int> top_pad_bytes;
  std::optional<int> mmap_threshold_bytes;
};

// The plan for an environment; `getenv` looks a variable up (nullptr when unset).
template <typename GetEnv>
MallocTuning PlanMallocTuning(GetEnv getenv) {
  MallocTuning plan;
  const char* off = getenv("NVFP4_MALLOC_TUNING");
  if (off != nullptr && std::strcmp(off, "0") == 0) return plan;
  const char* tunables = getenv("GLIBC_TUNABLES");
  auto given = [&](const char* variable, const char* tunable) {
    return getenv(variable) != nullptr ||
           (tunables != nullptr && std::strstr(tunables, tunable) != nullptr);
  };
  if (!given("MALLOC_ARENA_MAX", "glibc.malloc.arena_max=")) plan.arena_max = kMallocArenaMax;
  if (!given("MALLOC_TOP_PAD_", "glibc.malloc.top_pad=")) plan.top_pad_bytes = kMallocTopPadBytes;
  if (!given("MALLOC_MMAP_THRESHOLD_", "glibc.malloc.mmap_threshold=")) {
    plan.mmap_threshold_bytes = kMallocMmapThresholdBytes;
  }
  return plan;
}

inline void TuneMallocForStreaming() {
#if defined(__GLIBC__) && defined(M_ARENA_MAX)
  const MallocTuning plan = PlanMallocTuning([](const char* name) { return std::getenv(name); });
  if (plan.arena_max) ::mallopt(M_ARENA_MAX, *plan.arena_max);
  if (plan.top_pad_bytes) ::mallopt(M_TOP_PAD, *plan.top_pad_bytes);
  if (plan.mmap_threshold_bytes) ::mallopt(M_MMAP_THRESHOLD, *plan.mmap_threshold_bytes);
#endif
}

}  // namespace nvfp4

#endif  // NVFP4_COMMON_MALLOC_TUNING_H_
