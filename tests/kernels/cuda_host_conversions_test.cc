// Our E4M3/E2M1 encoders against the CUDA toolkit's own host-side conversions (cuda_fp8.h,
// cuda_fp4.h: __nv_cvt_float_to_fp8 with satfinite, __nv_cvt_float_to_fp4 round-to-nearest).
// These run on the CPU; they only need the toolkit headers, not a GPU.
#include <cmath>
#include <cstdint>
#include <cstring>
#include <random>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/numerics/e2m1.h"
#include "kernels/numerics/e4m3.h"
#include "kernels/numerics/half.h"

#if NVFP4_HAVE_CUDA_HEADERS
#include <cuda_fp16.h>
#include <cuda_fp4.h>
#include <cuda_fp8.h>
#endif

namespace nvfp4 {
namespace {

#if NVFP4_HAVE_CUDA_HEADERS

std::vector<float> E4M3TestValues() {
  std::vector<float> values;
  std::vector<float> grid;
  for (int c = 0; c <= 0x7E; ++c) grid.push_back(DecodeE4M3(static_cast<uint8_t>(c)));
  for (size_t i = 0; i + 1 < grid.size(); ++i) {
    const float mid = static_cast<float>((static_cast<double>(grid[i]) + grid[i + 1]) / 2);
    values.insert(values.end(),
                  {grid[i], std::nextafter(mid, 0.0f), mid, std::nextafter(mid, 1e9f)});
  }
  std::mt19937 rng(5);
  std::uniform_real_distribution<float> log_range(std::log(1e-4f), std::log(448.0f));
  for (int i = 0; i < 100000; ++i) values.push_back(std::exp(log_range(rng)));
  const size_t n = values.size();
  for (size_t i = 0; i < n; ++i) values.push_back(-values[i]);
  return values;
}

TEST(CudaHostConversions, E4M3MatchesCudaFp8) {
  int checked = 0;
  for (float x : E4M3TestValues()) {
    if (!(std::fabs(x) <= 448.0f)) continue;
    const __nv_fp8_storage_t cuda = __nv_cvt_float_to_fp8(x, __NV_SATFINITE, __NV_E4M3);
    ASSERT_EQ(EncodeE4M3Rne(x), cuda) << "x = " << x;
    ++checked;
  }
  EXPECT_GT(checked, 200000);
  for (float s : {1e-12f, 0.0f, 600.0f, 1e30f, 3.0f}) {
    const float clamped = std::fmin(std::fmax(s, 0.001953125f), 448.0f);
    EXPECT_EQ(EncodeScaleE4M3(s), __nv_cvt_float_to_fp8(clamped, __NV_SATFINITE, __NV_E4M3));
  }
}

TEST(CudaHostConversions, E2M1MatchesCudaFp4) {
  std::vector<float> values = {0.25f, 0.75f, 1.25f, 1.75f, 2.5f, 3.5f, 5.0f, 6.0f, 7.0f, 1e30f};
  std::mt19937 rng(9);
  std::uniform_real_distribution<float> range(0.0f, 7.0f);
  for (int i = 0; i < 100000; ++i) values.push_back(range(rng));
  const size_t n = values.size();
  for (size_t i = 0; i < n; ++i) {
    values.push_back(std::nextafter(values[i], 0.0f));
    values.push_back(std::nextafter(values[i], 10.0f));
  }
  for (size_t i = 0, m = values.size(); i < m; ++i) values.push_back(-values[i]);
  for (float x : values) {
    const __nv_fp4_storage_t cuda = __nv_cvt_float_to_fp4(x, __NV_E2M1, cudaRoundNearest);
    ASSERT_EQ(EncodeE2M1(x), cuda & 0xF) << "x = " << x;
  }
}

// The CUDA kernels widen fp16 with the hardware conversion (device_block.h Widen16); it must
// equal HalfBitsToFloat, the CPU's widening, for every pattern (NaN: both NaN).
TEST(CudaHostConversions, HalfWideningMatchesCudaFp16) {
  for (uint32_t h = 0; h < 0x10000u; ++h) {
    __half_raw raw;
    raw.x = static_cast<unsigned short>(h);
    const float cuda = __half2float(__half(raw));
    const float ours = HalfBitsToFloat(static_cast<uint16_t>(h));
    if (std::isnan(ours)) {
      ASSERT_TRUE(std::isnan(cuda)) << std::hex << h;
      continue;
    }
    uint32_t cuda_bits, our_bits;
    std::memcpy(&cuda_bits, &cuda, 4);
    std::memcpy(&our_bits, &ours, 4);
    ASSERT_EQ(our_bits, cuda_bits) << std::hex << "half 0x" << h;
  }
}

#else

TEST(CudaHostConversions, HalfWideningMatchesCudaFp16) {
  GTEST_SKIP() << "CUDA toolkit headers (cuda_fp16.h) not found: comparison skipped";
}
TEST(CudaHostConversions, E4M3MatchesCudaFp8) {
  GTEST_SKIP() << "CUDA toolkit headers (cuda_fp8.h) not found: comparison skipped";
}
TEST(CudaHostConversions, E2M1MatchesCudaFp4) {
  GTEST_SKIP() << "CUDA toolkit headers (cuda_fp4.h) not found: comparison skipped";
}

#endif

}  // namespace
}  // namespace nvfp4
