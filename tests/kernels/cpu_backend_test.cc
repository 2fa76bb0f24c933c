// CPU engine tests: byte identity of every ISA path and thread count with the scalar
// reference, dtype handling, padding, fused-group scales, dequantisation, and clear errors for
// bad inputs.
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstring>
#include <limits>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "kernels/cpu/cpu_backend.h"
#include "kernels/cpu/row_kernel.h"
#include "kernels/dequantize.h"
#include "kernels/numerics/half.h"
#include "kernels/row_source.h"
#include "tests/kernels/distributions.h"
#include "tests/testing/row_sources.h"

namespace nvfp4 {
namespace {

using ::testing::HasSubstr;
using testing_rows::PiecewiseRowSource;
using testing_rows::QuantizeIntoFresh;

std::unique_ptr<cpu::CpuBackend> MakeBackend(cpu::CpuIsa isa, int threads) {
  auto backend = cpu::CpuBackend::Create({threads, isa});
  EXPECT_TRUE(backend.ok()) << backend.status();
  return backend.ok() ? std::move(*backend) : nullptr;
}

std::vector<cpu::CpuIsa> SupportedIsas() {
  std::vector<cpu::CpuIsa> isas;
  for (auto isa : {cpu::CpuIsa::kScalar, cpu::CpuIsa::kAvx2, cpu::CpuIsa::kAvx512}) {
    if (cpu::CpuSupports(isa)) {
      isas.push_back(isa);
    } else {
      std::printf("[ SKIPPED  ] ISA %s: not supported by this CPU\n",
                  std::string(cpu::CpuIsaName(isa)).c_str());
    }
  }
  return isas;
}

uint32_t Bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}

void ExpectIdentical(const QuantizedTensor& a, const QuantizedTensor& b, const std::string& what) {
  EXPECT_EQ(Bits(a.global_scale), Bits(b.global_scale)) << what;
  EXPECT_TRUE(a.packed == b.packed) << what << ": packed values differ";
  EXPECT_TRUE(a.scales == b.scales) << what << ": scales differ";
  ASSERT_EQ(a.dequantized.size(), b.dequantized.size()) << what;
  EXPECT_EQ(0, std::memcmp(a.dequantized.data(), b.dequantized.data(),
                           a.dequantized.size() * sizeof(float)))
      << what << ": dequantized values differ";
  // Sums are accumulated per block in the defined tree order and merged per chunk, so the
  // metrics are identical too.
  EXPECT_EQ(a.metrics.mse, b.metrics.mse) << what;
  EXPECT_EQ(a.metrics.wmse, b.metrics.wmse) << what;
  EXPECT_EQ(a.metrics.absmax_mse, b.metrics.absmax_mse) << what;
  EXPECT_EQ(a.metrics.absmax_wmse, b.metrics.absmax_wmse) << what;
  EXPECT_EQ(a.metrics.max_abs_error, b.metrics.max_abs_error) << what;
  EXPECT_EQ(a.metrics.candidates_per_block, b.metrics.candidates_per_block) << what;
}

struct Case {
  Method method;
  Objective objective;
  ImportanceLayout layout;
  DType dtype;
  int64_t rows, cols;
  int scale_max;
};

std::vector<uint16_t> ToBits(const std::vector<float>& x, DType dtype) {
  std::vector<uint16_t> out(x.size());
  for (size_t i = 0; i < x.size(); ++i) {
    if (dtype == DType::kBF16) {
      out[i] = FloatToBf16Bits(x[i]);
    } else {  // f16 via exact round trip of small integers scaled by 2^-10
      const float v = std::nearbyint(x[i] * 1024.0f);
      const float clamped = std::fmax(-2000.0f, std::fmin(2000.0f, v));
      // Build the half from an fp32 that is exactly representable in binary16.
      const int sign = clamped < 0;
      float a = std::fabs(clamped) / 1024.0f;
      uint16_t h = 0;
      if (a != 0) {
        int e;
        const float m = std::frexp(a, &e);  // a = m * 2^e, m in [0.5, 1)
        const int exponent = e - 1 + 15;
        const uint16_t mantissa = static_cast<uint16_t>(std::ldexp(m * 2 - 1, 10));
        h = static_cast<uint16_t>((exponent << 10) | mantissa);
      }
      out[i] = static_cast<uint16_t>(h | (sign << 15));
    }
  }
  return out;
}

TEST(CpuBackend, EveryIsaAndThreadCountGivesTheSameBytes) {
  const std::vector<Case> cases = {
      {Method::kAbsMax, Objective::kMse, ImportanceLayout::kNone, DType::kF32, 67, 512, 448},
      {Method::kFourOverSix, Objective::kMse, ImportanceLayout::kNone, DType::kBF16, 33, 200, 256},
      {Method::kScaleSweep, Objective::kMse, ImportanceLayout::kNone, DType::kF32, 300, 1024, 256},
      {Method::kScaleSweep, Objective::kMse, ImportanceLayout::kNone, DType::kF16, 21, 37, 448},
      {Method::kScaleSweep, Objective::kWmse, ImportanceLayout::kPerColumn, DType::kBF16, 90, 784,
       256},
      {Method::kScaleSweep, Objective::kWmse, ImportanceLayout::kPerElement, DType::kF32, 40, 100,
       448},
      {Method::kExhaustive, Objective::kWmse, ImportanceLayout::kPerElement, DType::kF32, 7, 64,
       256},
      {Method::kScaleSweep, Objective::kMse, ImportanceLayout::kPerColumn, DType::kF32, 5, 1, 256},
  };
  const auto isas = SupportedIsas();
  uint64_t seed = 11;
  for (const Case& c : cases) {
    std::vector<float> x =
        testing::Sample(testing::Distribution::kStudentT3, c.rows * c.cols, seed++);
    for (size_t i = 0; i < x.size(); i += 97) x[i] = 0.0f;  // sprinkle exact zeros
    const int64_t weight_count = c.layout == ImportanceLayout::kPerColumn    ? c.cols
                                 : c.layout == ImportanceLayout::kPerElement ? c.rows * c.cols
                                                                             : 0;
    std::vector<float> w = testing::LognormalWeights(weight_count, 2.0, seed++);
    for (size_t i = 0; i < w.size(); i += 13) w[i] = 0.0f;
    std::vector<uint16_t> half_bits;
    const void* data = x.data();
    if (c.dtype != DType::kF32) {
      half_bits = ToBits(x, c.dtype);
      data = half_bits.data();
    }
    QuantizeOptions options;
    options.method = c.method;
    options.objective = c.objective;
    options.scale_max = c.scale_max;
    options.want_dequantized = true;
    const TensorView input{c.dtype, c.rows, c.cols, data};
    const ImportanceView importance{c.layout, w.empty() ? nullptr : w.data(), weight_count};
    auto reference = MakeBackend(cpu::CpuIsa::kScalar, 1)->Quantize(input, importance, options);
    ASSERT_TRUE(reference.ok()) << reference.status();
    EXPECT_EQ(reference->padded_cols, (c.cols + 15) / 16 * 16);
    // The fake-quant output equals an independent decode of the packed bytes.
    const std::vector<float> decoded = DequantizeToF32(*reference);
    EXPECT_EQ(0, std::memcmp(decoded.data(), reference->dequantized.data(),
                             decoded.size() * sizeof(float)));
    for (cpu::CpuIsa isa : isas) {
      for (int threads : {1, 2, 3}) {
        auto result = MakeBackend(isa, threads)->Quantize(input, importance, options);
        ASSERT_TRUE(result.ok()) << result.status();
        ExpectIdentical(*reference, *result,
                        std::string(MethodName(c.method)) + "/" +
                            std::string(ObjectiveName(c.objective)) + " " +
                            std::string(cpu::CpuIsaName(isa)) + " x" + std::to_string(threads));
      }
    }
  }
}

// The AbsMax baseline's WMSE of a run is the WMSE of an AbsMax run with the same g and
// importance (the same terms, summed the same way), and WMSE ScaleSweep beats it by about the
// theory's figure (scalesweep-theory.md section 5: -40.7 % for Gaussian data, lognormal sigma 1);
// its plain MSE need not beat AbsMax's, which is why the objective's gain is the WMSE one.
TEST(CpuBackend, WeightedRunsReportTheAbsMaxBaselinesWmse) {
  const int64_t rows = 256, cols = 1024;
  const std::vector<float> x = testing::Sample(testing::Distribution::kGaussian, rows * cols, 31);
  const std::vector<float> w = testing::LognormalWeights(rows * cols, 1.0, 32);
  const TensorView input{DType::kF32, rows, cols, x.data()};
  const ImportanceView importance{ImportanceLayout::kPerElement, w.data(), rows * cols};
  auto backend = MakeBackend(cpu::CpuIsa::kAuto, 2);
  QuantizeOptions sweep;
  sweep.objective = Objective::kWmse;
  QuantizeOptions absmax;
  absmax.method = Method::kAbsMax;
  for (cpu::CpuIsa isa : {cpu::CpuIsa::kScalar, cpu::CpuIsa::kAuto}) {
    auto engine = MakeBackend(isa, 2);
    auto a = engine->Quantize(input, importance, sweep);
    ASSERT_TRUE(a.ok()) << a.status();
    absmax.global_scale = a->global_scale;
    auto b = engine->Quantize(input, importance, absmax);
    ASSERT_TRUE(b.ok()) << b.status();
    EXPECT_TRUE(a->metrics.weighted && b->metrics.weighted);
    EXPECT_EQ(a->metrics.absmax_wmse, b->metrics.wmse);
    EXPECT_EQ(a->metrics.absmax_mse, b->metrics.mse);
    EXPECT_EQ(b->metrics.wmse_gain, 1.0);
    EXPECT_NEAR(a->metrics.wmse_gain, 1.0 - 0.407, 0.05) << a->metrics.wmse_gain;
    EXPECT_DOUBLE_EQ(a->metrics.wmse_gain, a->metrics.wmse / a->metrics.absmax_wmse);
    EXPECT_TRUE(a->metrics.wmse_objective);
    EXPECT_FALSE(b->metrics.wmse_objective);  // AbsMax with importance: MSE, weights measured
    EXPECT_EQ(ObjectiveGain(a->metrics), a->metrics.wmse_gain);
    EXPECT_EQ(ObjectiveGain(b->metrics), b->metrics.gain);
  }
  // Without importance there is no weighted baseline.
  auto plain = backend->Quantize(input, {}, {});
  ASSERT_TRUE(plain.ok());
  EXPECT_EQ(plain->metrics.absmax_wmse, 0.0);
  EXPECT_EQ(plain->metrics.wmse_gain, 1.0);
}

TEST(CpuBackend, PaddingIsZerosAndMatchesAnExplicitlyPaddedTensor) {
  const int64_t rows = 9, cols = 23;
  std::vector<float> x = testing::Sample(testing::Distribution::kGaussian, rows * cols, 3);
  std::vector<float> padded(rows * 32, 0.0f);
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t c = 0; c < cols; ++c) padded[r * 32 + c] = x[r * cols + c];
  }
  auto backend = MakeBackend(cpu::CpuIsa::kAuto, 2);
  QuantizeOptions options;
  options.amax = 4.0f;  // same g for both
  auto a = backend->Quantize({DType::kF32, rows, cols, x.data()}, {}, options);
  auto b = backend->Quantize({DType::kF32, rows, 32, padded.data()}, {}, options);
  ASSERT_TRUE(a.ok() && b.ok());
  EXPECT_EQ(a->packed, b->packed);
  EXPECT_EQ(a->scales, b->scales);
  EXPECT_EQ(a->packed.size(), static_cast<size_t>(rows * 16));
  EXPECT_EQ(a->metrics.elements, rows * cols);
}

TEST(CpuBackend, FusedGroupScaleOverridesTheTensorAmax) {
  std::vector<float> x = testing::Sample(testing::Distribution::kGaussian, 4 * 64, 8);
  auto backend = MakeBackend(cpu::CpuIsa::kAuto, 1);
  QuantizeOptions options;
  options.scale_max = 448;
  options.amax = 100.0f;
  auto by_amax = backend->Quantize({DType::kF32, 4, 64, x.data()}, {}, options);
  ASSERT_TRUE(by_amax.ok());
  EXPECT_EQ(by_amax->global_scale, 100.0f / 2688.0f);
  EXPECT_EQ(by_amax->amax, 100.0f);
  options.global_scale = 0.5f;
  auto by_g = backend->Quantize({DType::kF32, 4, 64, x.data()}, {}, options);
  ASSERT_TRUE(by_g.ok());
  EXPECT_EQ(by_g->global_scale, 0.5f);
}

TEST(CpuBackend, CancellationStopsBetweenChunks) {
  std::vector<float> x = testing::Sample(testing::Distribution::kGaussian, 512 * 1024, 4);
  auto backend = MakeBackend(cpu::CpuIsa::kAuto, 2);
  std::atomic<bool> cancelled{true};
  QuantizeOptions options;
  options.cancelled = &cancelled;
  auto q = backend->Quantize({DType::kF32, 512, 1024, x.data()}, {}, options);
  ASSERT_FALSE(q.ok());
  EXPECT_EQ(q.status().code(), absl::StatusCode::kCancelled);
  cancelled = false;
  EXPECT_TRUE(backend->Quantize({DType::kF32, 512, 1024, x.data()}, {}, options).ok());
}

// Rows "arrive" from another thread, in pieces that split rows and elements anywhere; the
// engine must wait for them, read them where they lie (input.data is null) and produce exactly
// the bytes and metrics of the one-shot call with the same amax, report finished rows only once
// their bytes are final, and never read rows it reported done.
TEST(CpuBackend, StreamingMatchesOneShotAndWaitsForRows) {
  const int64_t rows = 700, cols = 300;
  std::vector<float> x = testing::Sample(testing::Distribution::kLaplace, rows * cols, 21);
  std::vector<uint16_t> bf16 = ToBits(x, DType::kBF16);
  std::vector<uint16_t> arriving(bf16.size(), 0x7FC0);  // NaN until a row has "arrived"
  auto backend = MakeBackend(cpu::CpuIsa::kAuto, 2);
  const TensorView complete{DType::kBF16, rows, cols, bf16.data()};
  const TensorView shape_only{DType::kBF16, rows, cols, nullptr};
  const size_t row_bytes = cols * sizeof(uint16_t);
  auto amax = backend->ComputeAmax(complete);
  ASSERT_TRUE(amax.ok());
  QuantizeOptions options;
  options.amax = *amax;
  options.want_dequantized = true;
  auto reference = backend->Quantize(complete, {}, options);
  ASSERT_TRUE(reference.ok());
  EXPECT_EQ(Bits(reference->global_scale), Bits(*KnownGlobalScale(options)));

  PiecewiseRowSource source(arriving.data(), rows, row_bytes, 1);
  source.arrived = 0;
  std::thread feeder([&] {
    for (int64_t r = 0; r < rows; r += 37) {
      const int64_t end = std::min(rows, r + 37);
      std::copy(bf16.begin() + r * cols, bf16.begin() + end * cols, arriving.begin() + r * cols);
      source.arrived.store(end);
      std::this_thread::sleep_for(std::chrono::microseconds(200));
    }
  });
  // Each report: the reported rows' packed values and scales already equal the reference.
  const int64_t packed_row = PaddedCols(cols) / 2, scale_row = PaddedCols(cols) / 16;
  std::atomic<int64_t> bad_reports{0};
  std::atomic<uint8_t*> packed_out{nullptr}, scales_out{nullptr};
  const QuantizerBackend::RowsDoneFn rows_done = [&](int64_t done) {
    int64_t seen = source.released.load();
    while (done > seen && !source.released.compare_exchange_weak(seen, done)) {
    }
    if (done < 0 || done > rows || done > source.arrived.load() ||
        std::memcmp(packed_out.load(), reference->packed.data(), done * packed_row) != 0 ||
        std::memcmp(scales_out.load(), reference->scales.data(), done * scale_row) != 0) {
      bad_reports.fetch_add(1);
    }
  };
  // The buffers are known only inside the helper: a wrapper publishes them first.
  class Publishing final : public QuantizerBackend {
   public:
    Publishing(QuantizerBackend& inner, std::atomic<uint8_t*>& packed,
               std::atomic<uint8_t*>& scales)
        : inner_(inner), packed_(packed), scales_(scales) {}
    std::string_view name() const override { return "publishing"; }
    absl::StatusOr<QuantizedTensor> Quantize(const TensorView& input, const ImportanceView& imp,
                                             const QuantizeOptions& o) override {
      return inner_.Quantize(input, imp, o);
    }
    absl::StatusOr<QuantizedSummary> QuantizeInto(const TensorView& input,
                                                  const ImportanceView& imp,
                                                  const QuantizeOptions& o,
                                                  const QuantizedBuffers& out, RowSource* streamed,
                                                  const RowsDoneFn* done) override {
      packed_.store(out.packed);
      scales_.store(out.scales);
      return inner_.QuantizeInto(input, imp, o, out, streamed, done);
    }

   private:
    QuantizerBackend& inner_;
    std::atomic<uint8_t*>& packed_;
    std::atomic<uint8_t*>& scales_;
  } publishing(*backend, packed_out, scales_out);
  auto streamed = QuantizeIntoFresh(publishing, shape_only, options, &source, &rows_done);
  feeder.join();
  ASSERT_TRUE(streamed.ok()) << streamed.status();
  ExpectIdentical(*reference, *streamed, "streaming");
  EXPECT_EQ(source.max_requested.load(), rows);
  EXPECT_EQ(source.released.load(), rows);
  EXPECT_EQ(bad_reports.load(), 0) << "rows reported done before their bytes were final";
  EXPECT_EQ(source.reads_of_released.load(), 0) << "rows read after they were reported done";
  EXPECT_GT(source.pieces.load(), rows / 3);  // the pieces did split the rows

  // Other piece cuts, f32 and f16 (f32 rows are never read in place by the one-shot call).
  for (DType dtype : {DType::kF32, DType::kF16}) {
    for (uint32_t seed : {2u, 3u}) {
      std::vector<uint16_t> half = ToBits(x, DType::kF16);
      const void* data = dtype == DType::kF32 ? static_cast<const void*>(x.data()) : half.data();
      const TensorView view{dtype, rows, cols, data};
      auto one_shot = backend->Quantize(view, {}, options);
      ASSERT_TRUE(one_shot.ok());
      PiecewiseRowSource cut(data, rows, cols * DTypeSize(dtype), seed);
      auto pieces =
          QuantizeIntoFresh(*backend, {dtype, rows, cols, nullptr}, options, &cut, nullptr);
      ASSERT_TRUE(pieces.ok()) << pieces.status();
      ExpectIdentical(*one_shot, *pieces,
                      absl::StrCat(std::string(DTypeName(dtype)), " seed ", seed));
    }
  }

  // One engine thread finishes the row chunks in order: every chunk is reported as it
  // finishes (not only the whole tensor at the end), in increasing order.
  std::vector<int64_t> in_order;
  const QuantizerBackend::RowsDoneFn collect = [&](int64_t done) { in_order.push_back(done); };
  auto serial =
      QuantizeIntoFresh(*MakeBackend(cpu::CpuIsa::kAuto, 1), complete, options, nullptr, &collect);
  ASSERT_TRUE(serial.ok()) << serial.status();
  ExpectIdentical(*reference, *serial, "one thread");
  ASSERT_GE(in_order.size(), 2u);
  EXPECT_TRUE(std::is_sorted(in_order.begin(), in_order.end()) &&
              std::adjacent_find(in_order.begin(), in_order.end()) == in_order.end());
  EXPECT_EQ(in_order.back(), rows);

  // The one-shot form into caller buffers: same bytes, every byte written.
  auto into = QuantizeIntoFresh(*backend, complete, options, nullptr, nullptr);
  ASSERT_TRUE(into.ok()) << into.status();
  ExpectIdentical(*reference, *into, "into caller buffers");

  // With only g given, the streamed result still reports the tensor's amax.
  PiecewiseRowSource all_there(bf16.data(), rows, row_bytes, 4);
  QuantizeOptions by_g;
  by_g.global_scale = reference->global_scale;
  auto streamed_g = QuantizeIntoFresh(*backend, shape_only, by_g, &all_there, nullptr);
  ASSERT_TRUE(streamed_g.ok()) << streamed_g.status();
  EXPECT_EQ(streamed_g->amax, *amax);
  EXPECT_EQ(streamed_g->packed, reference->packed);

  // A NaN in a late row is reported like the one-shot call reports it, and the rows after the
  // bad chunk are never reported done.
  bf16[650 * cols + 7] = 0x7FC0;
  auto one_shot = backend->Quantize(complete, {}, options);
  source.released = 0;
  PiecewiseRowSource late_source(bf16.data(), rows, row_bytes, 5);
  auto late = QuantizeIntoFresh(*backend, shape_only, options, &late_source, &rows_done);
  ASSERT_FALSE(one_shot.ok());
  ASSERT_FALSE(late.ok());
  EXPECT_EQ(late.status(), one_shot.status());
  EXPECT_THAT(std::string(late.status().message()), HasSubstr("row 650, column 7"));
  EXPECT_LE(source.released.load(), 650);

  // An early NaN: the first one is named, and one engine thread reads no chunk after it (the
  // call fails anyway; an upload need not be waited for).
  bf16[20 * cols + 3] = 0x7F80;  // +Inf
  PiecewiseRowSource early_source(bf16.data(), rows, row_bytes, 6);
  auto early = QuantizeIntoFresh(*MakeBackend(cpu::CpuIsa::kAuto, 1), shape_only, options,
                                 &early_source, nullptr);
  ASSERT_FALSE(early.ok());
  EXPECT_THAT(std::string(early.status().message()), HasSubstr("(row 20, column 3) is +Inf"));
  EXPECT_LT(early_source.max_requested.load(), rows);

  // Rows that never come: cancelled. Without a known scale: refused.
  PiecewiseRowSource none(bf16.data(), rows, row_bytes, 7);
  none.never = true;
  EXPECT_EQ(QuantizeIntoFresh(*backend, shape_only, options, &none, nullptr).status().code(),
            absl::StatusCode::kCancelled);
  EXPECT_EQ(QuantizeIntoFresh(*backend, shape_only, {}, &all_there, nullptr).status().code(),
            absl::StatusCode::kInvalidArgument);
}

// Engines that only implement Quantize get QuantizeInto from the interface: the same bytes,
// one final rows_done report, a streamed input gathered from its pieces, and the streaming
// preconditions.
TEST(QuantizerBackend, DefaultQuantizeIntoCopiesQuantize) {
  class OneShotOnly final : public QuantizerBackend {
   public:
    explicit OneShotOnly(QuantizerBackend& inner) : inner_(inner) {}
    std::string_view name() const override { return "one-shot"; }
    absl::StatusOr<QuantizedTensor> Quantize(const TensorView& input, const ImportanceView& imp,
                                             const QuantizeOptions& o) override {
      ++calls;
      return inner_.Quantize(input, imp, o);
    }
    int calls = 0;

   private:
    QuantizerBackend& inner_;
  };
  auto backend = MakeBackend(cpu::CpuIsa::kAuto, 1);
  OneShotOnly one_shot(*backend);
  const int64_t rows = 40, cols = 50;
  std::vector<float> x = testing::Sample(testing::Distribution::kGaussian, rows * cols, 5);
  const TensorView view{DType::kF32, rows, cols, x.data()};
  const TensorView shape_only{DType::kF32, rows, cols, nullptr};
  QuantizeOptions options;
  options.want_dequantized = true;
  auto reference = backend->Quantize(view, {}, options);
  ASSERT_TRUE(reference.ok());
  std::vector<int64_t> reports;
  const QuantizerBackend::RowsDoneFn rows_done = [&](int64_t n) { reports.push_back(n); };
  auto into = QuantizeIntoFresh(one_shot, view, options, nullptr, &rows_done);
  ASSERT_TRUE(into.ok()) << into.status();
  ExpectIdentical(*reference, *into, "default QuantizeInto");
  EXPECT_EQ(into->amax, reference->amax);
  EXPECT_EQ(reports, std::vector<int64_t>{rows});

  PiecewiseRowSource source(x.data(), rows, cols * sizeof(float), 8);
  options.amax = reference->amax;
  auto gathered = QuantizeIntoFresh(one_shot, shape_only, options, &source, nullptr);
  ASSERT_TRUE(gathered.ok()) << gathered.status();
  ExpectIdentical(*reference, *gathered, "default QuantizeInto, streamed");
  EXPECT_EQ(source.max_requested.load(), rows);
  PiecewiseRowSource never(x.data(), rows, cols * sizeof(float), 9);
  never.never = true;
  EXPECT_EQ(QuantizeIntoFresh(one_shot, shape_only, options, &never, nullptr).status().code(),
            absl::StatusCode::kCancelled);
  EXPECT_EQ(QuantizeIntoFresh(one_shot, shape_only, {}, &source, nullptr).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(one_shot.calls, 2);
}

TEST(CpuBackend, AllZeroTensor) {
  std::vector<float> x(3 * 48, 0.0f);
  auto backend = MakeBackend(cpu::CpuIsa::kAuto, 1);
  for (Method m :
       {Method::kAbsMax, Method::kFourOverSix, Method::kExhaustive, Method::kScaleSweep}) {
    QuantizeOptions options;
    options.method = m;
    auto q = backend->Quantize({DType::kF32, 3, 48, x.data()}, {}, options);
    ASSERT_TRUE(q.ok());
    EXPECT_EQ(q->global_scale, 1.0f);
    for (uint8_t s : q->scales) EXPECT_EQ(s, 0x38);
    for (uint8_t p : q->packed) EXPECT_EQ(p, 0);
    EXPECT_EQ(q->metrics.mse, 0.0);
    EXPECT_EQ(q->metrics.gain, 1.0);
  }
}

// The 16-bit scans read bits instead of widening; they must report what widening reports, for
// every bit pattern and at every tail length.
TEST(CpuBackend, HalfScansMatchTheWideningScanOnEveryBitPattern) {
  std::vector<std::pair<cpu::CpuIsa, cpu::ScanHalfFn>> scans;
  for (cpu::CpuIsa isa : SupportedIsas()) {
    scans.emplace_back(isa, isa == cpu::CpuIsa::kAvx512 ? cpu::ScanHalfAvx512
                            : isa == cpu::CpuIsa::kAvx2 ? cpu::ScanHalfAvx2
                                                        : cpu::ScanHalfScalar);
  }
  for (DType dtype : {DType::kBF16, DType::kF16}) {
    std::vector<uint16_t> bits(65536);
    for (size_t i = 0; i < bits.size(); ++i) bits[i] = static_cast<uint16_t>(i * 40503u);
    std::vector<float> wide(bits.size());
    cpu::ConvertToF32Scalar(dtype, bits.data(), static_cast<int64_t>(bits.size()), wide.data());
    // Windows: the whole range, and short ones at many offsets (tails, one-lane vectors).
    std::vector<std::pair<int64_t, int64_t>> windows = {{0, 65536}};
    for (int64_t n = 0; n <= 70; ++n) {
      for (int64_t offset : {int64_t{0}, int64_t{3}, int64_t{1000}, int64_t{65536} - n}) {
        windows.emplace_back(offset, n);
      }
    }
    // Finite-only windows too, so max_abs is exercised on large finite magnitudes.
    std::vector<uint16_t> finite;
    for (uint16_t b : bits) {
      if ((b & 0x7fff) < cpu::HalfInfinityBits(dtype)) finite.push_back(b);
    }
    std::vector<float> finite_wide(finite.size());
    cpu::ConvertToF32Scalar(dtype, finite.data(), static_cast<int64_t>(finite.size()),
                            finite_wide.data());
    for (const auto& [isa, scan] : scans) {
      for (const auto& [offset, n] : windows) {
        const cpu::ScanResult want = cpu::ScanF32Scalar(wide.data() + offset, n);
        const cpu::ScanResult got = scan(dtype, bits.data() + offset, n);
        ASSERT_EQ(got.max_abs, want.max_abs) << cpu::CpuIsaName(isa) << " " << offset << "+" << n;
        ASSERT_EQ(got.non_finite, want.non_finite) << cpu::CpuIsaName(isa) << " " << offset;
      }
      const int64_t n = static_cast<int64_t>(finite.size());
      const cpu::ScanResult want = cpu::ScanF32Scalar(finite_wide.data(), n);
      const cpu::ScanResult got = scan(dtype, finite.data(), n);
      EXPECT_EQ(got.max_abs, want.max_abs) << cpu::CpuIsaName(isa);
      EXPECT_GT(got.max_abs, 1e4f);  // the largest finite value of the format is in there
      EXPECT_EQ(got.non_finite, 0);
    }
  }
}

TEST(CpuBackend, RejectsNonFiniteInputsNamingTheFirstBadElement) {
  auto backend = MakeBackend(cpu::CpuIsa::kAuto, 2);
  std::vector<float> x(10 * 300, 1.0f);
  x[2 * 300 + 17] = std::numeric_limits<float>::infinity();
  x[5 * 300 + 1] = std::nanf("");
  auto q = backend->Quantize({DType::kF32, 10, 300, x.data()}, {}, {});
  ASSERT_FALSE(q.ok());
  EXPECT_EQ(q.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(q.status().message()), HasSubstr("element 617 (row 2, column 17)"));
  EXPECT_THAT(std::string(q.status().message()), HasSubstr("+Inf"));

  std::vector<uint16_t> bf16(64, 0x3F80);
  bf16[40] = 0x7FC0;  // NaN
  q = backend->Quantize({DType::kBF16, 2, 32, bf16.data()}, {}, {});
  ASSERT_FALSE(q.ok());
  EXPECT_THAT(std::string(q.status().message()), HasSubstr("element 40 (row 1, column 8) is NaN"));
}

TEST(CpuBackend, RejectsBadRequestsWithClearMessages) {
  auto backend = MakeBackend(cpu::CpuIsa::kAuto, 1);
  std::vector<float> x(4 * 32, 1.0f);
  std::vector<float> w(31, 1.0f);
  const TensorView input{DType::kF32, 4, 32, x.data()};
  auto message = [&](const TensorView& in, const ImportanceView& imp, const QuantizeOptions& o) {
    auto q = backend->Quantize(in, imp, o);
    EXPECT_FALSE(q.ok());
    EXPECT_EQ(q.status().code(), absl::StatusCode::kInvalidArgument);
    return std::string(q.status().message());
  };
  EXPECT_THAT(message({DType::kF32, 0, 32, x.data()}, {}, {}), HasSubstr("shape"));
  EXPECT_THAT(message({DType::kF32, 4, 32, nullptr}, {}, {}), HasSubstr("null"));
  EXPECT_THAT(message(input, {ImportanceLayout::kPerColumn, w.data(), 31}, {}),
              HasSubstr("31 values but the tensor has 32 columns"));
  EXPECT_THAT(message(input, {ImportanceLayout::kPerElement, w.data(), 31}, {}),
              HasSubstr("128 elements"));
  QuantizeOptions wmse;
  wmse.objective = Objective::kWmse;
  EXPECT_THAT(message(input, {}, wmse), HasSubstr("needs importance"));
  QuantizeOptions bad_f;
  bad_f.scale_max = 300;
  EXPECT_THAT(message(input, {}, bad_f), HasSubstr("448 or 256"));
  QuantizeOptions bad_g;
  bad_g.global_scale = 0.0f;
  EXPECT_THAT(message(input, {}, bad_g), HasSubstr("global_scale"));
  QuantizeOptions bad_amax;
  bad_amax.amax = -1.0f;
  EXPECT_THAT(message(input, {}, bad_amax), HasSubstr("amax"));
  std::vector<float> negative(32, 1.0f);
  negative[3] = -2.0f;
  EXPECT_THAT(message(input, {ImportanceLayout::kPerColumn, negative.data(), 32}, wmse),
              HasSubstr("importance value 3"));
  EXPECT_FALSE(cpu::CpuBackend::Create({-1, cpu::CpuIsa::kAuto}).ok());
}

}  // namespace
}  // namespace nvfp4
