// LargeBuffer helpers: contents and sizes behave like the plain std::vector calls, and the
// 2 MiB-aligned part of a big reservation carries the kernel's huge-page advice (VmFlags "hg" in
// /proc/self/smaps), which is the whole point of the helpers.
#include "common/large_buffer.h"

#include <sys/mman.h>

#include <cstdint>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "gtest/gtest.h"

namespace nvfp4 {
namespace {

constexpr size_t kHugePage = size_t{2} << 20;

// The VmFlags line of the mapping that contains `address`; empty when not found.
std::string VmFlagsOf(const void* address) {
  const auto a = reinterpret_cast<uintptr_t>(address);
  std::ifstream smaps("/proc/self/smaps");
  std::string line;
  bool inside = false;
  while (std::getline(smaps, line)) {
    uintptr_t begin = 0, end = 0;
    char dash = 0;
    std::istringstream range(line);
    if (range >> std::hex >> begin >> dash >> end && dash == '-') {
      inside = a >= begin && a < end;
    } else if (inside && line.rfind("VmFlags:", 0) == 0) {
      return line;
    }
  }
  return "";
}

bool KernelHasHugePages() {
  // madvise(MADV_HUGEPAGE) fails with EINVAL on kernels built without THP.
  void* probe =
      mmap(nullptr, 2 * kHugePage, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (probe == MAP_FAILED) return false;
  const bool ok = madvise(probe, 2 * kHugePage, MADV_HUGEPAGE) == 0;
  munmap(probe, 2 * kHugePage);
  return ok;
}

TEST(LargeBuffer, ReserveKeepsContentsAndGrowsCapacity) {
  std::vector<uint16_t> v = {1, 2, 3};
  ReserveOnHugePages(v, size_t{3} << 20);
  EXPECT_GE(v.capacity(), size_t{3} << 20);
  EXPECT_EQ(v, (std::vector<uint16_t>{1, 2, 3}));
  ReserveOnHugePages(v, 2);  // smaller than the size: nothing changes
  EXPECT_EQ(v, (std::vector<uint16_t>{1, 2, 3}));
}

TEST(LargeBuffer, ResizeValueInitialisesNewElements) {
  std::vector<float> v = {5.0f};
  ResizeOnHugePages(v, size_t{1} << 20);
  ASSERT_EQ(v.size(), size_t{1} << 20);
  EXPECT_EQ(v[0], 5.0f);
  for (size_t i = 1; i < v.size(); i += 4099) ASSERT_EQ(v[i], 0.0f) << i;
  EXPECT_EQ(v.back(), 0.0f);
  std::vector<uint8_t> empty;
  ResizeOnHugePages(empty, 0);
  EXPECT_TRUE(empty.empty());
}

TEST(LargeBuffer, BigReservationsAreAdvisedForHugePages) {
  if (!KernelHasHugePages()) GTEST_SKIP() << "kernel without transparent huge pages";
  std::vector<uint8_t> v;
  ReserveOnHugePages(v, size_t{64} << 20);
  const auto begin = reinterpret_cast<uintptr_t>(v.data());
  const uintptr_t first_aligned = (begin + kHugePage - 1) & ~(kHugePage - 1);
  const std::string flags = VmFlagsOf(reinterpret_cast<const void*>(first_aligned + kHugePage));
  ASSERT_FALSE(flags.empty()) << "no mapping found in /proc/self/smaps";
  EXPECT_NE(flags.find(" hg"), std::string::npos) << flags;
}

TEST(LargeBuffer, AllocatedBuffersAreAdvisedForHugePages) {
  if (!KernelHasHugePages()) GTEST_SKIP() << "kernel without transparent huge pages";
  LargeBuffer<uint8_t> buffer = AllocateLargeBuffer<uint8_t>(size_t{16} << 20);
  ASSERT_EQ(reinterpret_cast<uintptr_t>(buffer.get()) % kHugePage, 0u);
  const std::string flags = VmFlagsOf(buffer.get() + kHugePage);
  EXPECT_NE(flags.find(" hg"), std::string::npos) << flags;
}

}  // namespace
}  // namespace nvfp4
