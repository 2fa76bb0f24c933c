// Codec and scale-table tests: hand-checked values from the format spec, the worked example of
// nvfp4-formats.md section 7, and the equivalence of the threshold table with the defining
// division fl32(x / S) at and around every rounding boundary.
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <memory>
#include <random>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/cpu/cpu_backend.h"
#include "kernels/numerics/block_math.h"
#include "kernels/numerics/e2m1.h"
#include "kernels/numerics/e4m3.h"
#include "kernels/numerics/global_scale.h"
#include "kernels/numerics/half.h"
#include "kernels/numerics/scale_table.h"

namespace nvfp4 {
namespace {

uint32_t Bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}

TEST(E4M3, KnownCodes) {
  EXPECT_EQ(EncodeE4M3Rne(1.0f), 0x38);
  EXPECT_EQ(EncodeE4M3Rne(448.0f), 0x7E);
  EXPECT_EQ(EncodeE4M3Rne(0.125f), 0x20);
  EXPECT_EQ(EncodeE4M3Rne(0.001953125f), 0x01);  // 2^-9
  EXPECT_EQ(EncodeE4M3Rne(-1.0f), 0xB8);
  EXPECT_EQ(EncodeE4M3Rne(0.0f), 0x00);
  // Ties to even: 1.0625 is halfway between 1.0 (0x38) and 1.125 (0x39).
  EXPECT_EQ(EncodeE4M3Rne(1.0625f), 0x38);
  EXPECT_EQ(EncodeE4M3Rne(1.1875f), 0x3A);  // halfway 1.125/1.25 -> even 1.25
  // Subnormal ties: 2^-10 (half of the smallest subnormal) -> 0; 3 * 2^-10 -> 2 * 2^-9.
  EXPECT_EQ(EncodeE4M3Rne(0.0009765625f), 0x00);
  EXPECT_EQ(EncodeE4M3Rne(0.0029296875f), 0x02);
  // Rounding up across a binade and into the normal range.
  EXPECT_EQ(EncodeE4M3Rne(1.96875f), 0x40);  // halfway 1.875/2.0 -> 2.0
  EXPECT_EQ(EncodeE4M3Rne(0.0151f), 0x08);   // just below 2^-6 rounds to the smallest normal
  EXPECT_EQ(EncodeE4M3Rne(464.0f), 0x7E);    // tie between 448 and 480 -> 448 (even)
}

TEST(E4M3, ScaleClampRule) {
  EXPECT_EQ(EncodeScaleE4M3(1e-12f), 0x01);
  EXPECT_EQ(EncodeScaleE4M3(0.0f), 0x01);
  EXPECT_EQ(EncodeScaleE4M3(1e9f), 0x7E);
  EXPECT_EQ(EncodeScaleE4M3(470.0f), 0x7E);
}

TEST(E4M3, DecodeRoundTripsEveryCode) {
  for (int code = 0; code < 256; ++code) {
    const float v = DecodeE4M3(static_cast<uint8_t>(code));
    if ((code & 0x7F) == 0x7F) {
      EXPECT_TRUE(std::isnan(v)) << code;
      continue;
    }
    if (code == 0x80) {
      EXPECT_EQ(Bits(v), 0x80000000u);
      continue;
    }
    EXPECT_EQ(EncodeE4M3Rne(v), code) << "code " << code << " value " << v;
  }
  EXPECT_EQ(DecodeE4M3(0x7E), 448.0f);
  EXPECT_EQ(DecodeE4M3(0x01), 0.001953125f);
  EXPECT_EQ(DecodeE4M3(0x08), 0.015625f);
}

TEST(E2M1, TieTableAndSaturation) {
  const std::vector<std::pair<float, uint8_t>> cases = {
      {0.0f, 0},  {0.25f, 0}, {0.2501f, 1}, {0.75f, 2},  {0.7499f, 1}, {1.25f, 2}, {1.2501f, 3},
      {1.75f, 4}, {2.5f, 4},  {2.5001f, 5}, {3.5f, 6},   {3.4999f, 5}, {5.0f, 6},  {5.0001f, 7},
      {6.0f, 7},  {1e30f, 7}, {-0.3f, 9},   {-6.5f, 15}, {-0.1f, 8},   {-0.0f, 0}};
  for (const auto& [value, code] : cases) EXPECT_EQ(EncodeE2M1(value), code) << value;
  for (int n = 0; n < 16; ++n) {
    const float v = DecodeE2M1(static_cast<uint8_t>(n));
    if (n != 8) {
      EXPECT_EQ(EncodeE2M1(v), n) << n;
    }
  }
}

TEST(E2M1, MagnitudesOfTheGrid) {
  const float grid[8] = {0.0f, 0.5f, 1.0f, 1.5f, 2.0f, 3.0f, 4.0f, 6.0f};
  for (uint32_t i = 0; i < 16; ++i) EXPECT_EQ(Bits(E2M1Magnitude(i)), Bits(grid[i & 7])) << i;
}

// The GPU's encode takes magnitudes from the index bits (a subnormal float times 2^126): the
// same values on the whole domain.
TEST(E2M1, MagnitudesFromBitsEqualTheGrid) {
  for (uint32_t i = 0; i < 16; ++i) {
    EXPECT_EQ(Bits(E2M1MagnitudeFromBits(i)), Bits(E2M1Magnitude(i))) << i;
  }
}

TEST(GlobalScale, Rules) {
  EXPECT_EQ(Bits(GlobalScaleFromAmax(6.0f, 448)), 0x3B124925u);
  EXPECT_EQ(GlobalScaleFromAmax(0.0f, 448), 1.0f);
  EXPECT_EQ(GlobalScaleFromAmax(1536.0f, 256), 1.0f);
  EXPECT_EQ(GlobalScaleFromAmax(1e-37f, 256), kMinGlobalScale);
}

TEST(Half, Conversions) {
  EXPECT_EQ(HalfBitsToFloat(0x3C00), 1.0f);
  EXPECT_EQ(HalfBitsToFloat(0xC000), -2.0f);
  EXPECT_EQ(HalfBitsToFloat(0x0001), 5.9604644775390625e-08f);
  EXPECT_EQ(HalfBitsToFloat(0x7BFF), 65504.0f);
  EXPECT_TRUE(std::isinf(HalfBitsToFloat(0x7C00)));
  EXPECT_TRUE(std::isnan(HalfBitsToFloat(0x7E00)));
  EXPECT_EQ(Bf16BitsToFloat(0x3F80), 1.0f);
  EXPECT_EQ(FloatToBf16Bits(1.0f), 0x3F80);
  EXPECT_EQ(FloatToBf16Bits(1.00390625f), 0x3F80);  // tie -> even
  EXPECT_EQ(FloatToBf16Bits(1.01171875f), 0x3F82);  // tie -> even (up)
}

// The threshold table must reproduce EncodeE2M1(fl32(a / S)) exactly.
void ExpectTableMatchesDivision(float g, std::mt19937& rng) {
  auto table = std::make_unique<ScaleTable>();
  BuildScaleTable(g, table.get());
  std::uniform_real_distribution<float> unit(0.0f, 7.0f);
  for (int c = 1; c < kNumScaleCodes; ++c) {
    const float s = table->effective_scale[c];
    ASSERT_EQ(Bits(s), Bits(DecodeE4M3(static_cast<uint8_t>(c)) * g));
    auto check = [&](float a) {
      const uint32_t index = E2M1MagnitudeIndex(a / s);
      const E2M1Rounding rounding = E2M1RoundByThreshold(a, table->threshold[c]);
      ASSERT_EQ(rounding.index, index) << "g=" << g << " code=" << c << " a=" << a;
      ASSERT_EQ(Bits(rounding.magnitude), Bits(E2M1Magnitude(index))) << "index " << index;
      ASSERT_EQ(E2M1IndexByThreshold(a, table->threshold[c]), index);
    };
    for (int k = 0; k < 7; ++k) {
      float a = table->threshold[c][k];
      if (!std::isfinite(a)) continue;
      for (int step = 0; step < 3; ++step) a = NextDownPositive(a);
      for (int step = 0; step < 7; ++step, a = NextUpNonNegative(a)) check(a);
    }
    for (int i = 0; i < 64; ++i) check(unit(rng) * s);
    check(0.0f);
    check(std::numeric_limits<float>::max());
  }
}

TEST(ScaleTable, ThresholdsEqualDivision) {
  std::mt19937 rng(7);
  for (float g : {1.0f, 6.0f / 2688.0f, 0.0123456f, 3.3e-5f, 7.77e3f, kMinGlobalScale, 1e30f}) {
    ExpectTableMatchesDivision(g, rng);
  }
  std::uniform_real_distribution<float> log_g(-80.0f, 80.0f);
  for (int i = 0; i < 20; ++i) ExpectTableMatchesDivision(std::exp2(log_g(rng)), rng);
}

// nvfp4-formats.md section 7: amax = block amax = 6 -> g = 0x3B124925, scale 0x7E, d = 1.0.
TEST(WorkedExample, ModelOptSection7) {
  const std::vector<float> row = {0,   .5f,  -1,  1.5f,  2,    -3, 4,    6,
                                  .2f, -.3f, .8f, -2.6f, 5.2f, -6, 1.1f, -1.9f};
  const std::vector<uint8_t> expected = {0x10, 0x3A, 0xD4, 0x76, 0x90, 0xD2, 0xF7, 0xC2};
  for (auto isa : {cpu::CpuIsa::kScalar, cpu::CpuIsa::kAvx2, cpu::CpuIsa::kAvx512}) {
    if (!cpu::CpuSupports(isa)) {
      GTEST_LOG_(INFO) << "skipping " << cpu::CpuIsaName(isa) << ": not supported by this CPU";
      continue;
    }
    auto backend = cpu::CpuBackend::Create({1, isa});
    ASSERT_TRUE(backend.ok()) << backend.status();
    QuantizeOptions options;
    options.method = Method::kAbsMax;
    options.scale_max = 448;
    auto q = (*backend)->Quantize({DType::kF32, 1, 16, row.data()}, {}, options);
    ASSERT_TRUE(q.ok()) << q.status();
    EXPECT_EQ(Bits(q->global_scale), 0x3B124925u);
    ASSERT_EQ(q->scales.size(), 1u);
    EXPECT_EQ(q->scales[0], 0x7E);
    EXPECT_EQ(q->packed, expected) << cpu::CpuIsaName(isa);
  }
}

}  // namespace
}  // namespace nvfp4
