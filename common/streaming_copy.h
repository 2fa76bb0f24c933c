// CopyBypassingCache: memcpy with non-temporal stores, for filling big buffers that are read
// much later (an uploaded tensor landing in its job buffer while the engine is busy elsewhere).
//
// Plain memcpy (glibc uses non-temporal stores only above ~3/4 of the last-level cache) pulls
// each destination line into the cache first and then evicts the engine's working set; on the
// 2-core CI VM that made the concurrently running quantisation kernel ~30 % slower. Streaming
// stores skip the read-for-ownership and leave the caches to the engine. Same contract as
// memcpy (no overlap). Header-only; SSE2 (baseline x86-64), plain memcpy elsewhere.
#ifndef NVFP4_COMMON_STREAMING_COPY_H_
#define NVFP4_COMMON_STREAMING_COPY_H_

#include <cstddef>
#include <cstdint>
#include <cstring>

#if defined(__SSE2__)
#include <emmintrin.h>
#endif

namespace nvfp4 {

inline void CopyBypassingCache(void* dst, const void* src, size_t n) {
#if defined(__SSE2__)
  constexpr size_t kMinBytes = 64 << 10;  // below this the cache is the better place
  if (n >= kMinBytes) {
    auto* d = static_cast<uint8_t*>(dst);
    const auto* s = static_cast<const uint8_t*>(src);
    const size_t head = (16 - (reinterpret_cast<uintptr_t>(d) & 15)) & 15;
    std::memcpy(d, s, head);
    d += head;
    s += head;
    n -= head;
    size_t i = 0;
    for (; i + 64 <= n; i += 64) {
      const __m128i a = _mm_loadu_si128(reinterpret_cast<const __m128i*>(s + i));
      const __m128i b = _mm_loadu_si128(reinterpret_cast<const __m128i*>(s + i + 16));
      const __m128i c = _mm_loadu_si128(reinterpret_cast<const __m128i*>(s + i + 32));
      const __m128i e = _mm_loadu_si128(reinterpret_cast<const __m128i*>(s + i + 48));
      _mm_stream_si128(reinterpret_cast<__m128i*>(d + i), a);
      _mm_stream_si128(reinterpret_cast<__m128i*>(d + i + 16), b);
      _mm_stream_si128(reinterpret_cast<__m128i*>(d + i + 32), c);
      _mm_stream_si128(reinterpret_cast<__m128i*>(d + i + 48), e);
    }
    _mm_sfence();  // streaming stores are weakly ordered: publish them before the caller does
    std::memcpy(d + i, s + i, n - i);
    return;
  }
#endif
  std::memcpy(dst, src, n);
}

}  // namespace nvfp4

#endif  // NVFP4_COMMON_STREAMING_COPY_H_
