// PlanMallocTuning: our heap settings apply unless the environment sets the same knob (as a
// MALLOC_* variable or a glibc.malloc.* tunable), and NVFP4_MALLOC_TUNING=0 turns all off.
#include "common/malloc_tuning.h"

#include <map>
#include <string>

#include "gtest/gtest.h"

namespace nvfp4 {
namespace {

MallocTuning PlanFor(const std::map<std::string, std::string>& env) {
  return PlanMallocTuning([&](const char* name) -> const char* {
    auto it = env.find(name);
    return it == env.end() ? nullptr : it->second.c_str();
  });
}

TEST(MallocTuning, CleanEnvironmentGetsEverySetting) {
  const MallocTuning plan = PlanFor({});
  EXPECT_EQ(plan.arena_max, kMallocArenaMax);
  EXPECT_EQ(plan.top_pad_bytes, kMallocTopPadBytes);
  EXPECT_EQ(plan.mmap_threshold_bytes, kMallocMmapThresholdBytes);
}

TEST(MallocTuning, EachVariableOverridesItsOwnSettingOnly) {
  MallocTuning plan = PlanFor({{"MALLOC_ARENA_MAX", "4"}});
  EXPECT_FALSE(plan.arena_max.has_value());
  EXPECT_TRUE(plan.top_pad_bytes.has_value());
  EXPECT_TRUE(plan.mmap_threshold_bytes.has_value());
  plan = PlanFor({{"MALLOC_TOP_PAD_", "0"}});
  EXPECT_TRUE(plan.arena_max.has_value());
  EXPECT_FALSE(plan.top_pad_bytes.has_value());
  plan = PlanFor({{"MALLOC_MMAP_THRESHOLD_", "131072"}});
  EXPECT_FALSE(plan.mmap_threshold_bytes.has_value());
  EXPECT_TRUE(plan.top_pad_bytes.has_value());
}

TEST(MallocTuning, TunablesOverrideTheMatchingSettings) {
  MallocTuning plan = PlanFor({{"GLIBC_TUNABLES", "glibc.malloc.arena_max=4"}});
  EXPECT_FALSE(plan.arena_max.has_value());
  EXPECT_TRUE(plan.top_pad_bytes.has_value());
  plan = PlanFor({{"GLIBC_TUNABLES", "glibc.malloc.top_pad=0:glibc.malloc.mmap_threshold=65536"}});
  EXPECT_TRUE(plan.arena_max.has_value());
  EXPECT_FALSE(plan.top_pad_bytes.has_value());
  EXPECT_FALSE(plan.mmap_threshold_bytes.has_value());
  // Unrelated tunables leave ours alone.
  plan = PlanFor({{"GLIBC_TUNABLES", "glibc.malloc.check=0:glibc.cpu.hwcaps=-AVX512F"}});
  EXPECT_TRUE(plan.arena_max.has_value());
  EXPECT_TRUE(plan.top_pad_bytes.has_value());
  EXPECT_TRUE(plan.mmap_threshold_bytes.has_value());
}

TEST(MallocTuning, OptOutLeavesGlibcDefaults) {
  MallocTuning plan = PlanFor({{"NVFP4_MALLOC_TUNING", "0"}});
  EXPECT_FALSE(plan.arena_max.has_value());
  EXPECT_FALSE(plan.top_pad_bytes.has_value());
  EXPECT_FALSE(plan.mmap_threshold_bytes.has_value());
  plan = PlanFor({{"NVFP4_MALLOC_TUNING", "1"}});
  EXPECT_TRUE(plan.arena_max.has_value());
}

}  // namespace
}  // namespace nvfp4
