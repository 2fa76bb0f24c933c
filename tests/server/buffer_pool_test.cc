// server/engine/buffer_pool: reuse, fit, the limit, idle release, and thread safety (this file
// is part of scheduler_test, which the TSan build runs).
#include "server/engine/buffer_pool.h"

#include <cstring>
#include <thread>
#include <vector>

#include "gtest/gtest.h"

namespace nvfp4::server {
namespace {

constexpr size_t kMiB = size_t{1} << 20;
// Small sizes keep the tests light; nvfp4d pools from 2 MiB (kDefaultMinPooledBytes).
constexpr size_t kMinPooled = kMiB;

TEST(JobBufferPool, AFinishedJobsBufferServesTheNextJobThatFits) {
  JobBufferPool pool(size_t{1} << 30, absl::Seconds(10), {}, kMinPooled);
  const uint8_t* first;
  {
    JobBufferPool::Buffer a = pool.Acquire(8 * kMiB);
    ASSERT_NE(a.data(), nullptr);
    EXPECT_EQ(a.size(), 8 * kMiB);
    std::memset(a.data(), 1, a.size());  // writable end to end
    first = a.data();
    EXPECT_EQ(pool.in_use_bytes(), 8 * kMiB);
  }
  EXPECT_EQ(pool.in_use_bytes(), 0u);
  EXPECT_EQ(pool.idle_bytes(), 8 * kMiB);
  // Smaller but more than half: reused (size() is what was asked for).
  JobBufferPool::Buffer b = pool.Acquire(5 * kMiB);
  EXPECT_EQ(b.data(), first);
  EXPECT_EQ(b.size(), 5 * kMiB);
  EXPECT_EQ(pool.reuses(), 1);
  EXPECT_EQ(pool.idle_bytes(), 0u);
}

TEST(JobBufferPool, TooSmallOrFarTooLargeBuffersAreNotReused) {
  JobBufferPool pool(size_t{1} << 30, absl::Seconds(10), {}, kMinPooled);
  { JobBufferPool::Buffer a = pool.Acquire(32 * kMiB); }
  { JobBufferPool::Buffer small = pool.Acquire(4 * kMiB); }  // 32 MiB would waste 8x
  EXPECT_EQ(pool.reuses(), 0);
  { JobBufferPool::Buffer large = pool.Acquire(64 * kMiB); }  // none big enough
  EXPECT_EQ(pool.reuses(), 0);
  EXPECT_EQ(pool.idle_bytes(), (32 + 4 + 64) * kMiB);
  // The smallest that fits wins.
  JobBufferPool::Buffer c = pool.Acquire(20 * kMiB);
  EXPECT_EQ(pool.reuses(), 1);
  EXPECT_EQ(pool.idle_bytes(), (4 + 64) * kMiB);
}

TEST(JobBufferPool, InUsePlusIdleStaysUnderTheLimit) {
  JobBufferPool pool(64 * kMiB, absl::Seconds(10), {}, kMinPooled);
  { JobBufferPool::Buffer a = pool.Acquire(40 * kMiB); }
  EXPECT_EQ(pool.idle_bytes(), 40 * kMiB);
  // 10 MiB does not fit the 40 MiB buffer's reuse window (> 2x) and 40 + 10 fits the limit.
  JobBufferPool::Buffer b = pool.Acquire(10 * kMiB);
  EXPECT_EQ(pool.idle_bytes(), 40 * kMiB);
  // 16 more (too small to take the 40 MiB buffer) would make 40 idle + 10 + 16 in use > 64:
  // the idle buffer is freed first.
  JobBufferPool::Buffer c = pool.Acquire(16 * kMiB);
  EXPECT_EQ(pool.idle_bytes(), 0u);
  EXPECT_EQ(pool.in_use_bytes(), 26 * kMiB);
  c = {};
  EXPECT_EQ(pool.idle_bytes(), 16 * kMiB);
  b = {};
  EXPECT_EQ(pool.idle_bytes(), 26 * kMiB);
}

TEST(JobBufferPool, ABufferReturnedOverTheLimitIsFreed) {
  // The scheduler's budget, not the pool, decides admission: allocations may pass the limit,
  // and what comes back then is not kept.
  JobBufferPool pool(64 * kMiB, absl::Seconds(10), {}, kMinPooled);
  JobBufferPool::Buffer a = pool.Acquire(50 * kMiB);
  JobBufferPool::Buffer b = pool.Acquire(30 * kMiB);
  EXPECT_EQ(pool.in_use_bytes(), 80 * kMiB);
  a = {};  // 30 in use + 50 > 64
  EXPECT_EQ(pool.idle_bytes(), 0u);
  b = {};
  EXPECT_EQ(pool.idle_bytes(), 30 * kMiB);
}

TEST(JobBufferPool, AnExternalCommittedCountBoundsTheIdleBuffers) {
  // nvfp4d: the scheduler's reservations (inputs and outputs of admitted jobs) plus the idle
  // buffers stay within the budget.
  size_t reserved = 0;
  JobBufferPool pool(
      64 * kMiB, absl::Seconds(10), [&reserved] { return reserved; }, kMinPooled);
  reserved = 20 * kMiB;  // a job with a 20 MiB input is admitted...
  { JobBufferPool::Buffer a = pool.Acquire(20 * kMiB); }
  EXPECT_EQ(pool.idle_bytes(), 20 * kMiB);  // ...and returns it while still reserved: 40 <= 64
  reserved = 50 * kMiB;  // a job with a 5 MiB input and large outputs is admitted
  JobBufferPool::Buffer b = pool.Acquire(5 * kMiB);
  EXPECT_EQ(pool.idle_bytes(), 0u);  // 50 + 20 idle > 64: the idle buffer made room
  reserved = 60 * kMiB;
  b = {};
  EXPECT_EQ(pool.idle_bytes(), 0u);  // 60 + 6 > 64: not kept
}

TEST(JobBufferPool, IdleBuffersAreReleasedAfterTheirAge) {
  JobBufferPool pool(size_t{1} << 30, absl::Seconds(10), {}, kMinPooled);
  { JobBufferPool::Buffer a = pool.Acquire(4 * kMiB); }
  pool.ReleaseStale(absl::Now() + absl::Seconds(5));
  EXPECT_EQ(pool.idle_bytes(), 4 * kMiB);
  pool.ReleaseStale(absl::Now() + absl::Seconds(11));
  EXPECT_EQ(pool.idle_bytes(), 0u);
}

TEST(JobBufferPool, ZeroIdleAgeKeepsNothing) {
  JobBufferPool pool(size_t{1} << 30, absl::ZeroDuration(), {}, kMinPooled);
  { JobBufferPool::Buffer a = pool.Acquire(4 * kMiB); }
  EXPECT_EQ(pool.idle_bytes(), 0u);
}

TEST(JobBufferPool, Nvfp4dPoolsOnlyLargeBuffers) {
  JobBufferPool pool(size_t{1} << 30, absl::Seconds(10));
  { JobBufferPool::Buffer a = pool.Acquire(JobBufferPool::kDefaultMinPooledBytes - 1); }
  EXPECT_EQ(pool.idle_bytes(), 0u);
  { JobBufferPool::Buffer b = pool.Acquire(JobBufferPool::kDefaultMinPooledBytes); }
  EXPECT_EQ(pool.idle_bytes(), JobBufferPool::kDefaultMinPooledBytes);
}

TEST(JobBufferPool, SmallAndEmptyRequestsBypassThePool) {
  JobBufferPool pool(size_t{1} << 30, absl::Seconds(10), {}, kMinPooled);
  JobBufferPool::Buffer empty = pool.Acquire(0);
  EXPECT_EQ(empty.data(), nullptr);
  EXPECT_EQ(empty.size(), 0u);
  {
    JobBufferPool::Buffer small = pool.Acquire(1000);
    ASSERT_NE(small.data(), nullptr);
    std::memset(small.data(), 7, 1000);
    EXPECT_EQ(pool.in_use_bytes(), 0u);
  }
  EXPECT_EQ(pool.idle_bytes(), 0u);
}

TEST(JobBufferPool, BuffersMayOutliveThePoolAndMoveAround) {
  auto pool =
      std::make_unique<JobBufferPool>(size_t{1} << 30, absl::Seconds(10), nullptr, kMinPooled);
  JobBufferPool::Buffer a = pool->Acquire(3 * kMiB);
  JobBufferPool::Buffer b = std::move(a);
  EXPECT_EQ(a.data(), nullptr);
  pool.reset();
  std::memset(b.data(), 0, b.size());
  b = {};  // returns into the orphaned state, freed with it
}

TEST(JobBufferPool, ConcurrentJobsShareItSafely) {
  JobBufferPool pool(256 * kMiB, absl::Seconds(10), {}, kMinPooled);
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&pool, t] {
      for (int i = 0; i < 50; ++i) {
        JobBufferPool::Buffer b = pool.Acquire((2 + (i + t) % 5) * kMiB);
        b.data()[0] = static_cast<uint8_t>(i);
        b.data()[b.size() - 1] = static_cast<uint8_t>(t);
        if (i % 10 == 0) pool.ReleaseStale(absl::Now() + absl::Seconds(60));
      }
    });
  }
  for (auto& thread : threads) thread.join();
  EXPECT_EQ(pool.in_use_bytes(), 0u);
  EXPECT_LE(pool.idle_bytes(), 256 * kMiB);
  EXPECT_GT(pool.reuses(), 0);
}

}  // namespace
}  // namespace nvfp4::server
