// Test inputs shared by the GPU tests (cuda_backend_test.cc) and the host emulation of the
// device code (device_code_test.cc): the variant matrix (method x objective x dtype x
// importance layout x padded/unpadded shape) and tensors made of adversarial blocks (all-zero,
// tiny, outliers, E4M3-subnormal and clamped block scales, exact grid points and ties, -0.0,
// wide dynamic range, blocks that saturate under a small fixed global scale), plus byte and
// metric comparisons. Deterministic (mt19937_64 via tests/kernels/distributions.h). No CUDA.
#ifndef NVFP4_TESTS_GPU_GPU_TEST_CASES_H_
#define NVFP4_TESTS_GPU_GPU_TEST_CASES_H_

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/numerics/half.h"
#include "kernels/numerics/method.h"
#include "kernels/quantize_options.h"
#include "kernels/quantized_tensor.h"
#include "kernels/tensor.h"
#include "tests/kernels/distributions.h"

namespace nvfp4::gpu_testing {

// How g is chosen: from the tensor (two passes on the GPU), from a given amax, or given.
enum class ScaleMode { kFromTensor, kGivenAmax, kGivenGlobalScale };

struct Case {
  Method method = Method::kScaleSweep;
  Objective objective = Objective::kMse;
  ImportanceLayout layout = ImportanceLayout::kNone;
  DType dtype = DType::kF32;
  int64_t rows = 1;
  int64_t cols = 16;
  int scale_max = 256;
  ScaleMode scale_mode = ScaleMode::kFromTensor;
  // A global scale 64x below the tensor's: the largest blocks clamp at scale 448 and saturate.
  bool saturate = false;
  bool want_dequantized = true;

  std::string Name() const {
    static constexpr const char* kLayouts[] = {"none", "per-column", "per-element"};
    static constexpr const char* kModes[] = {"g-from-tensor", "given-amax", "given-g"};
    return std::string(MethodName(method)) + "/" + std::string(ObjectiveName(objective)) + " " +
           std::string(DTypeName(dtype)) + " importance=" + kLayouts[static_cast<int>(layout)] +
           " [" + std::to_string(rows) + ", " + std::to_string(cols) +
           "] F=" + std::to_string(scale_max) + " " + kModes[static_cast<int>(scale_mode)] +
           (saturate ? " saturated" : "");
  }
};

// IEEE binary16 bits of f, round to nearest even (|f| must stay below 65520).
inline uint16_t FloatToHalfBits(float f) {
  uint32_t x;
  std::memcpy(&x, &f, 4);
  const uint16_t sign = static_cast<uint16_t>((x >> 16) & 0x8000u);
  x &= 0x7FFFFFFFu;
  if (x >= 0x477FF000u) return static_cast<uint16_t>(sign | 0x7C00u);  // rounds to inf
  if (x < 0x38800000u) {  // below 2^-14: a subnormal half, a multiple of 2^-24
    float a;
    std::memcpy(&a, &x, 4);
    return static_cast<uint16_t>(sign | static_cast<uint16_t>(std::nearbyint(a * 16777216.0f)));
  }
  uint32_t r = x - (112u << 23);
  r = (r + 0xFFFu + ((r >> 13) & 1u)) >> 13;
  return static_cast<uint16_t>(sign | r);
}

// One 16-value block of the given kind (0..9), see the header comment.
inline void AdversarialBlock(int kind, testing::Rng& rng, float* v) {
  static constexpr float kGrid[8] = {0.0f, 0.5f, 1.0f, 1.5f, 2.0f, 3.0f, 4.0f, 6.0f};
  for (int i = 0; i < 16; ++i) {
    const double n = rng.Normal();
    switch (kind) {
      case 0:
        v[i] = static_cast<float>(n);
        break;
      case 1:
        v[i] = 0.0f;
        break;
      case 2:
        v[i] = static_cast<float>(n * 1e-30);  // tiny: g's 2^-117 floor territory
        break;
      case 3:
        v[i] = static_cast<float>(i == 5 ? 100.0 * n : n);
        break;
      case 4:
        v[i] = static_cast<float>(n * 3e-5);  // block scale below 2^-6: E4M3 subnormal
        break;
      case 5:
        v[i] = static_cast<float>(n * 1e-8);  // block scale clamps at 2^-9
        break;
      case 6: {  // grid points and ties of some power-of-two scale
        const float g = kGrid[rng.Next() % 8];
        const float tie = (rng.Next() % 3 == 0) ? 0.25f : 0.0f;
        v[i] = (g + tie) * std::ldexp(1.0f, static_cast<int>(rng.Next() % 7) - 3) *
               ((rng.Next() & 1) ? -1.0f : 1.0f);
        break;
      }
      case 7:  // constant magnitude, both zero signs
        v[i] = i % 4 == 0 ? -0.0f : (i % 2 ? 1.75f : -1.75f);
        break;
      case 8:
        v[i] = static_cast<float>(std::pow(10.0, -4.0 + 6.0 * rng.Uniform01()) *
                                  ((rng.Next() & 1) ? -1.0 : 1.0));
        break;
      default:
        v[i] = static_cast<float>(30.0 * n);  // the tensor's largest blocks
        break;
    }
  }
}

// [rows, cols] values made of adversarial blocks (the last block of a row is cut at cols).
inline std::vector<float> AdversarialValues(int64_t rows, int64_t cols, uint64_t seed) {
  testing::Rng rng(seed);
  std::vector<float> x(static_cast<size_t>(rows * cols));
  const int64_t blocks_per_row = (cols + 15) / 16;
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t j = 0; j < blocks_per_row; ++j) {
      float v[16];
      AdversarialBlock(static_cast<int>((r * 7 + j * 3 + static_cast<int64_t>(seed)) % 10), rng, v);
      for (int i = 0; i < 16 && j * 16 + i < cols; ++i) x[r * cols + j * 16 + i] = v[i];
    }
  }
  return x;
}

// A host tensor in the case's dtype plus its importance.
struct HostTensor {
  DType dtype = DType::kF32;
  int64_t rows = 0;
  int64_t cols = 0;
  std::vector<float> f32;        // the values (dtype F32) or their 16-bit source
  std::vector<uint16_t> bits16;  // BF16 / F16 bits
  ImportanceLayout layout = ImportanceLayout::kNone;
  std::vector<float> importance;

  const void* data() const {
    return dtype == DType::kF32 ? static_cast<const void*>(f32.data())
                                : static_cast<const void*>(bits16.data());
  }
  size_t bytes() const { return static_cast<size_t>(rows * cols) * DTypeSize(dtype); }
  TensorView view() const { return TensorView{dtype, rows, cols, data()}; }
  ImportanceView importance_view() const {
    if (layout == ImportanceLayout::kNone) return ImportanceView{};
    return ImportanceView{layout, importance.data(), static_cast<int64_t>(importance.size())};
  }
  // Value of element i after widening (what every backend sees).
  float value(int64_t i) const {
    if (dtype == DType::kF32) return f32[i];
    return dtype == DType::kBF16 ? Bf16BitsToFloat(bits16[i]) : HalfBitsToFloat(bits16[i]);
  }
};

inline HostTensor MakeTensor(DType dtype, int64_t rows, int64_t cols, ImportanceLayout layout,
                             uint64_t seed) {
  HostTensor t;
  t.dtype = dtype;
  t.rows = rows;
  t.cols = cols;
  t.f32 = AdversarialValues(rows, cols, seed);
  if (dtype != DType::kF32) {
    t.bits16.resize(t.f32.size());
    for (size_t i = 0; i < t.f32.size(); ++i) {
      const float v = std::max(-60000.0f, std::min(60000.0f, t.f32[i]));
      t.bits16[i] = dtype == DType::kBF16 ? FloatToBf16Bits(v) : FloatToHalfBits(v);
    }
  }
  t.layout = layout;
  const int64_t count = layout == ImportanceLayout::kPerColumn    ? cols
                        : layout == ImportanceLayout::kPerElement ? rows * cols
                                                                  : 0;
  t.importance = testing::LognormalWeights(count, 2.0, seed + 1000);
  for (size_t i = 0; i < t.importance.size(); ++i) {
    if (i % 13 == 0) t.importance[i] = 0.0f;
    if (i % 101 == 7) t.importance[i] = 1e20f;
    if (i % 103 == 9) t.importance[i] = 1e-20f;
  }
  return t;
}

inline HostTensor MakeTensor(const Case& c, uint64_t seed) {
  return MakeTensor(c.dtype, c.rows, c.cols, c.layout, seed);
}

inline float MaxAbs(const HostTensor& t) {
  float m = 0.0f;
  for (int64_t i = 0; i < t.rows * t.cols; ++i) m = std::max(m, std::fabs(t.value(i)));
  return m;
}

inline QuantizeOptions MakeOptions(const Case& c, const HostTensor& t) {
  QuantizeOptions options;
  options.method = c.method;
  options.objective = c.objective;
  options.scale_max = c.scale_max;
  options.want_dequantized = c.want_dequantized;
  const float amax = MaxAbs(t);
  if (c.saturate) {
    options.global_scale = std::max(6.1e-36f, amax / (6.0f * c.scale_max) / 64.0f);
  } else if (c.scale_mode == ScaleMode::kGivenAmax) {
    options.amax = 2.0f * amax + 1.0f;  // a fused group's larger amax
  } else if (c.scale_mode == ScaleMode::kGivenGlobalScale) {
    options.global_scale = 0.75f * std::max(amax, 1.0f) / (6.0f * c.scale_max);
  }
  return options;
}

// Every method x objective x dtype x importance layout (WMSE needs importance) x
// {padded, unpadded} shape, rotating the scale mode and F.
inline std::vector<Case> VariantMatrix() {
  std::vector<Case> cases;
  int i = 0;
  for (Method method :
       {Method::kAbsMax, Method::kFourOverSix, Method::kExhaustive, Method::kScaleSweep}) {
    for (Objective objective : {Objective::kMse, Objective::kWmse}) {
      for (DType dtype : {DType::kF32, DType::kBF16, DType::kF16}) {
        for (ImportanceLayout layout : {ImportanceLayout::kNone, ImportanceLayout::kPerColumn,
                                        ImportanceLayout::kPerElement}) {
          if (objective == Objective::kWmse && layout == ImportanceLayout::kNone) continue;
          for (bool padded : {true, false}) {
            Case c;
            c.method = method;
            c.objective = objective;
            c.dtype = dtype;
            c.layout = layout;
            c.rows = padded ? 37 : 24;
            c.cols = padded ? 200 : 256;
            c.scale_max = i % 2 ? 448 : 256;
            c.scale_mode = static_cast<ScaleMode>(i % 3);
            c.want_dequantized = i % 4 != 3;
            cases.push_back(c);
            ++i;
          }
        }
      }
    }
  }
  return cases;
}

// Saturation under a small fixed g, odd shapes (one column, one row, 16k + 1 columns).
inline std::vector<Case> AdversarialCases() {
  std::vector<Case> cases;
  for (Method method :
       {Method::kAbsMax, Method::kFourOverSix, Method::kExhaustive, Method::kScaleSweep}) {
    for (Objective objective : {Objective::kMse, Objective::kWmse}) {
      Case c;
      c.method = method;
      c.objective = objective;
      c.layout =
          objective == Objective::kWmse ? ImportanceLayout::kPerElement : ImportanceLayout::kNone;
      c.rows = 19;
      c.cols = 160;
      c.saturate = true;
      c.scale_max = 448;
      cases.push_back(c);
      for (auto [rows, cols] : {std::pair<int64_t, int64_t>{5, 1}, {1, 33}, {3, 17}, {64, 48}}) {
        Case odd = c;
        odd.saturate = false;
        odd.scale_max = 256;
        odd.rows = rows;
        odd.cols = cols;
        odd.dtype = cols == 33 ? DType::kBF16 : DType::kF32;
        odd.layout =
            objective == Objective::kWmse ? ImportanceLayout::kPerColumn : ImportanceLayout::kNone;
        cases.push_back(odd);
      }
    }
  }
  return cases;
}

inline uint32_t Bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}

// Relative agreement for metrics (the backends reduce in different orders).
inline bool Close(double a, double b, double relative = 2e-6) {
  if (a == b) return true;  // also equal infinities
  return std::fabs(a - b) <= relative * std::max(std::fabs(a), std::fabs(b)) + 1e-37;
}

// Bytes identical, metrics close (what the backends promise).
inline void ExpectSameQuantization(const QuantizedTensor& expected, const QuantizedTensor& actual,
                                   const std::string& what) {
  EXPECT_EQ(expected.rows, actual.rows) << what;
  EXPECT_EQ(expected.cols, actual.cols) << what;
  EXPECT_EQ(expected.padded_cols, actual.padded_cols) << what;
  EXPECT_EQ(Bits(expected.global_scale), Bits(actual.global_scale)) << what;
  EXPECT_EQ(Bits(expected.amax), Bits(actual.amax)) << what;
  EXPECT_TRUE(expected.scales == actual.scales) << what << ": scales differ";
  EXPECT_TRUE(expected.packed == actual.packed) << what << ": packed values differ";
  ASSERT_EQ(expected.dequantized.size(), actual.dequantized.size()) << what;
  // Bytes, not values (-0.0 and NaN payloads count); memcmp must not see an empty vector's null.
  if (!expected.dequantized.empty()) {
    EXPECT_EQ(0, std::memcmp(expected.dequantized.data(), actual.dequantized.data(),
                             expected.dequantized.size() * sizeof(float)))
        << what << ": dequantized values differ";
  }
  const TensorMetrics& e = expected.metrics;
  const TensorMetrics& a = actual.metrics;
  EXPECT_EQ(e.elements, a.elements) << what;
  EXPECT_EQ(e.blocks, a.blocks) << what;
  EXPECT_EQ(e.weighted, a.weighted) << what;
  EXPECT_EQ(e.wmse_objective, a.wmse_objective) << what;
  EXPECT_TRUE(Close(e.mse, a.mse)) << what << ": mse " << e.mse << " vs " << a.mse;
  EXPECT_TRUE(Close(e.wmse, a.wmse)) << what << ": wmse " << e.wmse << " vs " << a.wmse;
  EXPECT_TRUE(Close(e.nmse, a.nmse)) << what << ": nmse " << e.nmse << " vs " << a.nmse;
  EXPECT_TRUE(Close(e.absmax_mse, a.absmax_mse))
      << what << ": absmax_mse " << e.absmax_mse << " vs " << a.absmax_mse;
  EXPECT_TRUE(Close(e.gain, a.gain, 1e-5)) << what << ": gain " << e.gain << " vs " << a.gain;
  EXPECT_TRUE(Close(e.absmax_wmse, a.absmax_wmse))
      << what << ": absmax_wmse " << e.absmax_wmse << " vs " << a.absmax_wmse;
  EXPECT_TRUE(Close(e.wmse_gain, a.wmse_gain, 1e-5))
      << what << ": wmse_gain " << e.wmse_gain << " vs " << a.wmse_gain;
  // SQNR in dB can be near 0 (saturation): an absolute bound (1e-6 relative sums give ~4e-6 dB).
  EXPECT_TRUE(e.sqnr_db == a.sqnr_db || std::fabs(e.sqnr_db - a.sqnr_db) <= 1e-4)
      << what << ": sqnr " << e.sqnr_db << " vs " << a.sqnr_db;
  EXPECT_EQ(e.max_abs_error, a.max_abs_error) << what;
  EXPECT_EQ(e.candidates_per_block, a.candidates_per_block) << what;
}

}  // namespace nvfp4::gpu_testing

#endif  // NVFP4_TESTS_GPU_GPU_TEST_CASES_H_
