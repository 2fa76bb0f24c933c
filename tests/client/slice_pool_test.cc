// client/slice_pool: upload buffers are copied into, reused once gRPC drops the slice, bounded
// while idle, and safe to release after the pool object is gone.
#include "client/slice_pool.h"

#include <cstring>
#include <string>
#include <vector>

#include "gtest/gtest.h"

namespace nvfp4::client {
namespace {

std::string Contents(const grpc::Slice& slice) {
  return std::string(reinterpret_cast<const char*>(slice.begin()), slice.size());
}

TEST(SlicePool, SlicesHoldACopyAndTheirBuffersAreReused) {
  auto pool = SlicePool::Create(64, 2);
  std::string source = "hello, chunk";
  const uint8_t* first_buffer;
  {
    grpc::Slice slice = pool->Copy(source.data(), source.size());
    source[0] = 'J';  // the slice owns a copy
    EXPECT_EQ(Contents(slice), "hello, chunk");
    first_buffer = slice.begin();
    EXPECT_EQ(pool->idle(), 0u);
  }
  EXPECT_EQ(pool->idle(), 1u);  // back when the last reference went
  grpc::Slice again = pool->Copy("xyz", 3);
  EXPECT_EQ(again.begin(), first_buffer);
  EXPECT_EQ(Contents(again), "xyz");
  EXPECT_EQ(pool->idle(), 0u);
}

TEST(SlicePool, IdleBuffersAreBoundedAndOversizedChunksAreOneOffs) {
  auto pool = SlicePool::Create(16, 2);
  {
    std::vector<grpc::Slice> slices;
    for (int i = 0; i < 5; ++i) slices.push_back(pool->Copy("0123456789", 10));
    const std::string big(100, 'b');
    slices.push_back(pool->Copy(big.data(), big.size()));
    EXPECT_EQ(Contents(slices.back()), big);
  }
  EXPECT_EQ(pool->idle(), 2u);
}

TEST(SlicePool, ASliceMayOutliveThePoolHandle) {
  auto pool = SlicePool::Create(32, 4);
  grpc::Slice slice = pool->Copy("still here", 10);
  pool.reset();  // the client went away while gRPC still holds the chunk
  EXPECT_EQ(Contents(slice), "still here");
  grpc::Slice copy = slice;  // references keep counting
  slice = grpc::Slice();
  EXPECT_EQ(Contents(copy), "still here");
}

}  // namespace
}  // namespace nvfp4::client
