// CopyBypassingCache has memcpy's contract: every size and alignment around the 64 KiB switch to
// streaming stores (the aligned head, 64-byte body and tail paths) copies exactly the bytes asked
// for and nothing next to them.
#include "common/streaming_copy.h"

#include <cstdint>
#include <vector>

#include "gtest/gtest.h"

namespace nvfp4 {
namespace {

TEST(StreamingCopy, CopiesExactlyLikeMemcpy) {
  constexpr size_t kMax = (64 << 10) + 300;
  std::vector<uint8_t> source(kMax + 64);
  for (size_t i = 0; i < source.size(); ++i) source[i] = static_cast<uint8_t>(i * 131 + 7);
  for (size_t size : {size_t{0}, size_t{1}, size_t{63}, size_t{64 << 10} - 1, size_t{64 << 10},
                      size_t{64 << 10} + 1, size_t{64 << 10} + 63, kMax}) {
    for (size_t dst_offset : {0, 1, 8, 15, 16, 33}) {
      for (size_t src_offset : {0, 3, 16}) {
        std::vector<uint8_t> dest(kMax + 128, 0xEE);
        CopyBypassingCache(dest.data() + dst_offset, source.data() + src_offset, size);
        for (size_t i = 0; i < dest.size(); ++i) {
          const bool inside = i >= dst_offset && i < dst_offset + size;
          const uint8_t want = inside ? source[i - dst_offset + src_offset] : 0xEE;
          ASSERT_EQ(dest[i], want)
              << "size " << size << " dst+" << dst_offset << " src+" << src_offset << " byte " << i;
        }
      }
    }
  }
}

}  // namespace
}  // namespace nvfp4
