// LargeBuffer and the vector helpers: contents and sizes behave like the plain calls, big
// buffers are 2 MiB-aligned mappings of their own carrying the kernel's huge-page advice
// (VmFlags "hg" in /proc/self/smaps, the point of the helpers), and advice never reaches memory
// outside them (e.g. malloc's heap). Linux only, like the helpers' mapping code.
#include "common/large_buffer.h"

#include <sys/mman.h>

#include <cstdint>
#include <cstring>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "gtest/gtest.h"

namespace nvfp4 {
namespace {

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

// Whether advice shows up at all: madvise(MADV_HUGEPAGE) fails on kernels built without THP,
// and sandboxed kernels may not report VmFlags.
bool KernelHasHugePages() {
  void* probe =
      mmap(nullptr, 2 * kHugePageBytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (probe == MAP_FAILED) return false;
  const bool ok = madvise(probe, 2 * kHugePageBytes, MADV_HUGEPAGE) == 0 &&
                  VmFlagsOf(probe).find(" hg") != std::string::npos;
  munmap(probe, 2 * kHugePageBytes);
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

bool HasHugePageAdvice(const void* address) {
  return VmFlagsOf(address).find(" hg") != std::string::npos;
}

TEST(LargeBuffer, BigReservationsAreAdvisedOnTheirAlignedPartOnly) {
  if (!KernelHasHugePages()) GTEST_SKIP() << "no huge-page advice visible in /proc/self/smaps";
  std::vector<uint8_t> v;
  ReserveOnHugePages(v, kHugePageVectorMinBytes + 12345);
  const auto begin = reinterpret_cast<uintptr_t>(v.data());
  const uintptr_t end = begin + v.capacity();
  const uintptr_t first_aligned = (begin + kHugePageBytes - 1) & ~(kHugePageBytes - 1);
  const uintptr_t last_aligned = end & ~(kHugePageBytes - 1);
  EXPECT_TRUE(HasHugePageAdvice(reinterpret_cast<const void*>(first_aligned)));
  EXPECT_TRUE(HasHugePageAdvice(reinterpret_cast<const void*>(last_aligned - 1)));
  // Nothing outside the aligned part (it may share a mapping with other memory).
  if (begin < first_aligned) {
    EXPECT_FALSE(HasHugePageAdvice(v.data()));
  }
  if (last_aligned < end) {
    EXPECT_FALSE(HasHugePageAdvice(reinterpret_cast<const void*>(end - 1)));
  }
}

TEST(LargeBuffer, SmallerReservationsGetNoAdvice) {
  if (!KernelHasHugePages()) GTEST_SKIP() << "no huge-page advice visible in /proc/self/smaps";
  // Below the threshold the storage may lie in malloc's heap, where advice would outlive it.
  std::vector<uint8_t> v;
  ReserveOnHugePages(v, kHugePageVectorMinBytes / 2);
  const auto begin = reinterpret_cast<uintptr_t>(v.data());
  for (uintptr_t a = begin; a < begin + v.capacity(); a += kHugePageBytes) {
    ASSERT_FALSE(HasHugePageAdvice(reinterpret_cast<const void*>(a))) << a - begin;
  }
}

TEST(LargeBuffer, BigBuffersAreAlignedMappingsOfTheirOwn) {
  if (!KernelHasHugePages()) GTEST_SKIP() << "no huge-page advice visible in /proc/self/smaps";
  for (size_t bytes : {kHugePageBytes, kHugePageBytes + 1, size_t{16} << 20}) {
    LargeBuffer<uint8_t> buffer = AllocateLargeBuffer<uint8_t>(bytes);
    ASSERT_EQ(reinterpret_cast<uintptr_t>(buffer.get()) % kHugePageBytes, 0u) << bytes;
    EXPECT_TRUE(HasHugePageAdvice(buffer.get())) << bytes;
    EXPECT_TRUE(HasHugePageAdvice(buffer.get() + bytes - 1)) << bytes;
    std::memset(buffer.get(), 0x5A, bytes);  // the whole size is usable
    EXPECT_EQ(buffer[bytes - 1], 0x5A);
    EXPECT_EQ(buffer.get_deleter().bytes, bytes);
  }
  const void* gone;
  {
    LargeBuffer<uint8_t> buffer = AllocateLargeBuffer<uint8_t>(4 * kHugePageBytes);
    gone = buffer.get();
  }
  EXPECT_EQ(VmFlagsOf(gone), "") << "the mapping is unmapped with the buffer";
}

TEST(LargeBuffer, SmallBuffersComeFromMalloc) {
  LargeBuffer<float> buffer = AllocateLargeBuffer<float>(1000);
  ASSERT_NE(buffer.get(), nullptr);
  buffer[999] = 1.5f;
  EXPECT_EQ(buffer[999], 1.5f);
  LargeBuffer<float> empty = AllocateLargeBuffer<float>(0);
  EXPECT_NE(empty.get(), nullptr);
}

}  // namespace
}  // namespace nvfp4
