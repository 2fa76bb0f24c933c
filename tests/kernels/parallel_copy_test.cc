// cpu::ParallelCopy: every range lands exactly, whatever the mix of sizes and the thread count.
#include "kernels/cpu/parallel_copy.h"

#include <cstdint>
#include <random>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/cpu/thread_pool.h"

namespace nvfp4::cpu {
namespace {

TEST(ParallelCopy, CopiesEveryRangeExactly) {
  std::mt19937 rng(3);
  // Sizes around the piece size and odd ones: empty, 1 byte, 1 MiB +- 1, several MiB.
  const std::vector<size_t> sizes = {0,
                                     1,
                                     kParallelCopyPieceBytes - 1,
                                     kParallelCopyPieceBytes,
                                     kParallelCopyPieceBytes + 1,
                                     3 * kParallelCopyPieceBytes + 12345,
                                     77};
  size_t total = 0;
  for (size_t n : sizes) total += n;
  std::vector<uint8_t> src(total);
  for (uint8_t& b : src) b = static_cast<uint8_t>(rng());
  for (int threads : {1, 3}) {
    ThreadPool pool(threads);
    std::vector<uint8_t> dst(total + 64, 0xEE);
    // Ranges in reverse order, written to a destination offset by 7 (unaligned).
    std::vector<CopyRange> ranges;
    size_t at = 0;
    for (size_t n : sizes) {
      ranges.push_back({dst.data() + 7 + (total - at - n), src.data() + at, n});
      at += n;
    }
    std::vector<CopyRange> scratch;
    ParallelCopy(pool, ranges, &scratch);
    at = 0;
    for (size_t n : sizes) {
      for (size_t i = 0; i < n; ++i) {
        ASSERT_EQ(dst[7 + (total - at - n) + i], src[at + i])
            << "range of " << n << " bytes, byte " << i << ", threads " << threads;
      }
      at += n;
    }
    for (size_t i = 0; i < 7; ++i) EXPECT_EQ(dst[i], 0xEE) << "wrote before the ranges";
    for (size_t i = total + 7; i < dst.size(); ++i) EXPECT_EQ(dst[i], 0xEE) << "wrote past them";
  }
}

}  // namespace
}  // namespace nvfp4::cpu
