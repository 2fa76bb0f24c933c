#include "kernels/encoding_check.h"

#include <cstdint>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/cpu/cpu_backend.h"
#include "kernels/numerics/half.h"
#include "tests/kernels/distributions.h"

namespace nvfp4 {
namespace {

QuantizedTensor QuantizeWith(const TensorView& input, Method method, Objective objective,
                             const ImportanceView& importance = {}) {
  auto backend = cpu::CpuBackend::Create({2, cpu::CpuIsa::kAuto});
  EXPECT_TRUE(backend.ok());
  QuantizeOptions options;
  options.method = method;
  options.objective = objective;
  auto q = (*backend)->Quantize(input, importance, options);
  EXPECT_TRUE(q.ok()) << q.status();
  return *std::move(q);
}

StoredTensorCheck Check(const TensorView& input, const QuantizedTensor& q,
                        cpu::ThreadPool* pool = nullptr) {
  auto m = CheckStoredTensor(input, q.packed.data(), q.scales.data(), q.global_scale, pool);
  EXPECT_TRUE(m.ok()) << m.status();
  return m.ok() ? *m : StoredTensorCheck{-1, -1, 0, 0};
}

// Whatever scales a method chose, the values are the rounding under them: no mismatch, for
// every method, both objectives, bf16 and a padded width.
TEST(EncodingCheck, EveryMethodsOutputIsItsOwnRounding) {
  const int64_t rows = 24, cols = 72;  // 72: the last block of each row is padded
  const std::vector<float> x = testing::Sample(testing::Distribution::kStudentT3, rows * cols, 21);
  std::vector<uint16_t> bf16(x.size());
  for (size_t i = 0; i < x.size(); ++i) bf16[i] = FloatToBf16Bits(x[i]);
  std::vector<float> w(static_cast<size_t>(cols));
  for (int64_t c = 0; c < cols; ++c) w[c] = 0.1f + static_cast<float>(c % 7);
  for (const TensorView& input : {TensorView{DType::kF32, rows, cols, x.data()},
                                  TensorView{DType::kBF16, rows, cols, bf16.data()}}) {
    for (Method method :
         {Method::kAbsMax, Method::kFourOverSix, Method::kExhaustive, Method::kScaleSweep}) {
      const QuantizedTensor mse = QuantizeWith(input, method, Objective::kMse);
      EXPECT_EQ(Check(input, mse).mismatches, 0) << MethodName(method);
      const QuantizedTensor wmse = QuantizeWith(input, method, Objective::kWmse,
                                                {ImportanceLayout::kPerColumn, w.data(), cols});
      EXPECT_EQ(Check(input, wmse).mismatches, 0) << MethodName(method) << " wmse";
    }
  }
}

TEST(EncodingCheck, FindsAFlippedValueAndACorruptedScale) {
  const int64_t rows = 8, cols = 64;
  const std::vector<float> x = testing::Sample(testing::Distribution::kGaussian, rows * cols, 22);
  const TensorView input{DType::kF32, rows, cols, x.data()};
  QuantizedTensor q = QuantizeWith(input, Method::kScaleSweep, Objective::kMse);

  QuantizedTensor flipped = q;
  flipped.packed[37] ^= 0x20;  // element 75's magnitude (high nibble of byte 37)
  StoredTensorCheck m = Check(input, flipped);
  EXPECT_EQ(m.mismatches, 1);
  EXPECT_EQ(m.first_mismatch, 75);

  QuantizedTensor rescaled = q;
  rescaled.scales[5] = 0x7E;  // 448: every element of block 5 rounds to 0 under it
  m = Check(input, rescaled);
  EXPECT_GT(m.mismatches, 8);
  EXPECT_GE(m.first_mismatch, 5 * 16);
  EXPECT_LT(m.first_mismatch, 6 * 16);

  // Another tensor's values under these scales (a checkpoint checked against a wrong source).
  const std::vector<float> other =
      testing::Sample(testing::Distribution::kGaussian, rows * cols, 23);
  EXPECT_GT(Check({DType::kF32, rows, cols, other.data()}, q).mismatches, rows * cols / 2);

  // Bytes that are not scales at all are an error, not a count.
  QuantizedTensor bad_scale = q;
  bad_scale.scales[0] = 0x7F;
  EXPECT_FALSE(
      CheckStoredTensor(input, bad_scale.packed.data(), bad_scale.scales.data(), q.global_scale)
          .ok());
  EXPECT_FALSE(CheckStoredTensor(input, q.packed.data(), q.scales.data(), 0.0f).ok());
}

// The error sums are those of the dequantised values, whatever the thread count.
TEST(EncodingCheck, ErrorSumsMatchTheDequantisedTensorOnAnyPool) {
  const int64_t rows = 100, cols = 40;
  const std::vector<float> x = testing::Sample(testing::Distribution::kLaplace, rows * cols, 24);
  const TensorView input{DType::kF32, rows, cols, x.data()};
  QuantizeOptions options;
  options.want_dequantized = true;
  auto backend = cpu::CpuBackend::Create({1, cpu::CpuIsa::kAuto});
  ASSERT_TRUE(backend.ok());
  auto q = (*backend)->Quantize(input, {}, options);
  ASSERT_TRUE(q.ok());
  double squared_error = 0, squared_signal = 0;
  for (size_t i = 0; i < x.size(); ++i) {
    const double e = static_cast<double>(x[i]) - q->dequantized[i];
    squared_error += e * e;
    squared_signal += static_cast<double>(x[i]) * x[i];
  }
  const StoredTensorCheck serial = Check(input, *q);
  EXPECT_EQ(serial.mismatches, 0);
  // Summed per 16-row chunk, then over the chunks: the same terms in another association.
  EXPECT_NEAR(serial.squared_error, squared_error, squared_error * 1e-12);
  EXPECT_NEAR(serial.squared_signal, squared_signal, squared_signal * 1e-12);
  EXPECT_NEAR(serial.squared_error / rows / cols, q->metrics.mse, q->metrics.mse * 1e-6);
  cpu::ThreadPool pool(3);
  const StoredTensorCheck pooled = Check(input, *q, &pool);
  EXPECT_EQ(pooled.squared_error, serial.squared_error);
  EXPECT_EQ(pooled.squared_signal, serial.squared_signal);
}

// -0.0 and +0.0 nibbles of a zero magnitude are equivalent.
TEST(EncodingCheck, EitherSignOfZeroIsAccepted) {
  std::vector<float> x(16, 0.0f);
  x[0] = 1.0f;
  x[3] = -1e-9f;  // rounds to magnitude 0; the encoder writes 0x8 (negative zero)
  const TensorView input{DType::kF32, 1, 16, x.data()};
  QuantizedTensor q = QuantizeWith(input, Method::kAbsMax, Objective::kMse);
  ASSERT_EQ(q.packed[1] >> 4, 0x8);
  q.packed[1] &= 0x0F;  // +0 instead
  EXPECT_EQ(Check(input, q).mismatches, 0);
}

}  // namespace
}  // namespace nvfp4
