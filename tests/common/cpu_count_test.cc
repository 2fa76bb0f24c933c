// Tests for common/cpu_count.h: the cgroup quota parsers and the thread count they give.
#include "common/cpu_count.h"

#include <sched.h>

#include <gtest/gtest.h>

namespace nvfp4 {
namespace {

TEST(CpuCount, ParsesCgroupV2CpuMax) {
  EXPECT_EQ(CgroupV2CpuLimit("800000 100000"), 8.0);
  EXPECT_EQ(CgroupV2CpuLimit("150000 100000\n"), 1.5);
  EXPECT_EQ(CgroupV2CpuLimit("max 100000"), std::nullopt);
  for (const char* malformed : {"", "100000", "abc 100000", "100000 0", "-5 100000"}) {
    EXPECT_EQ(CgroupV2CpuLimit(malformed), std::nullopt) << malformed;
  }
}

TEST(CpuCount, ParsesCgroupV1Quota) {
  EXPECT_EQ(CgroupV1CpuLimit("400000", "100000"), 4.0);
  EXPECT_EQ(CgroupV1CpuLimit("-1", "100000"), std::nullopt);
  EXPECT_EQ(CgroupV1CpuLimit("", ""), std::nullopt);
}

TEST(CpuCount, QuotaRoundsUpAndAffinityBounds) {
  EXPECT_EQ(ThreadsForCpuLimit(8.0, 128), 8);   // a pod limited to 8 CPUs on a big node
  EXPECT_EQ(ThreadsForCpuLimit(1.5, 128), 2);   // a fraction rounds up
  EXPECT_EQ(ThreadsForCpuLimit(0.25, 128), 1);  // never below 1
  EXPECT_EQ(ThreadsForCpuLimit(64.0, 4), 4);    // pinned to 4 CPUs: the mask wins
  EXPECT_EQ(ThreadsForCpuLimit(std::nullopt, 6), 6);
  EXPECT_EQ(ThreadsForCpuLimit(std::nullopt, 0), 1);
}

TEST(CpuCount, ThisProcessGetsAtMostItsAffinity) {
  cpu_set_t set;
  ASSERT_EQ(sched_getaffinity(0, sizeof(set), &set), 0);
  const int count = UsableCpuCount();
  EXPECT_GE(count, 1);
  EXPECT_LE(count, CPU_COUNT(&set));
}

}  // namespace
}  // namespace nvfp4
