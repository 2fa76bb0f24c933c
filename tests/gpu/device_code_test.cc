// Runs the CUDA backend's per-thread code (kernels/cuda/device_block.h: the scan step, the
// table-entry build, QuantizeThreadBlocks with its block walk, loads one block ahead, stores and
// metric terms, in the variant DispatchBlockVariant picks) on the host, mapped
// onto "threads" and row-chunk launches the way quantize_kernels.cu maps it onto the GPU, and
// checks the result against cpu::CpuBackend: identical bytes, close metrics, the same first bad
// element. Needs no GPU, so it runs in CI; the GPU itself is covered by gpu_test.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <memory>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/cpu/cpu_backend.h"
#include "kernels/cuda/device_block.h"
#include "kernels/metrics.h"
#include "kernels/numerics/scale_table.h"
#include "tests/gpu/gpu_test_cases.h"

namespace nvfp4 {
namespace {

using cuda::BlockJob;
using cuda::ThreadTotals;
using gpu_testing::Case;
using gpu_testing::HostTensor;

std::unique_ptr<cpu::CpuBackend> ScalarReference() {
  auto backend = cpu::CpuBackend::Create({1, cpu::CpuIsa::kScalar});
  EXPECT_TRUE(backend.ok()) << backend.status();
  return backend.ok() ? std::move(*backend) : nullptr;
}

// How the emulation maps work: rows per launch (the host path's chunks) and threads per launch
// (the persistent grid), and whether 16-byte accesses may be used where aligned.
struct Mapping {
  int64_t rows_per_launch;
  int threads;
  bool allow_vector;
};

struct Emulated {
  QuantizedTensor tensor;
  uint64_t first_bad_input = cuda::kNoBadElement;
  uint64_t first_bad_weight = cuda::kNoBadElement;
};

void MergeTotals(const ThreadTotals& t, ThreadTotals* into) {
  for (int k = 0; k < kMetricSums; ++k) into->sum[k] += t.sum[k];
  into->max_abs_error = MaxF(into->max_abs_error, t.max_abs_error);
  into->amax = MaxF(into->amax, t.amax);
  into->candidates += t.candidates;
  into->first_bad_input = cuda::MinIndex(into->first_bad_input, t.first_bad_input);
  into->first_bad_weight = cuda::MinIndex(into->first_bad_weight, t.first_bad_weight);
}

// One scan kernel thread (ScanThreadElements) for a run-time dtype.
void ScanAny(DType dtype, const void* data, int64_t n, bool vector, int64_t thread, int64_t threads,
             float* amax, uint64_t* first_bad) {
  cuda::DispatchDtype(dtype, [&](auto dtype_tag) {
    cuda::ScanThreadElements<decltype(dtype_tag)::value>(data, n, 0, vector, thread, threads, amax,
                                                         first_bad);
  });
}

bool Aligned(const void* p, size_t a) { return reinterpret_cast<uintptr_t>(p) % a == 0; }

Emulated Emulate(const HostTensor& t, const QuantizeOptions& options, const Mapping& mapping) {
  Emulated out;
  QuantizedTensor& q = out.tensor;
  const int64_t pc = PaddedCols(t.cols);
  q.rows = t.rows;
  q.cols = t.cols;
  q.padded_cols = pc;
  q.packed.assign(static_cast<size_t>(t.rows * pc / 2), 0xEE);  // poisoned
  q.scales.assign(static_cast<size_t>(t.rows * pc / 16), 0xEE);
  if (options.want_dequantized) {
    q.dequantized.assign(static_cast<size_t>(t.rows * t.cols),
                         std::numeric_limits<float>::quiet_NaN());
  }

  // Scan kernel: every thread's grid-stride share, as ScanKernel runs it (16-byte vectors when
  // the data is aligned).
  float amax = 0.0f;
  uint64_t first_bad = cuda::kNoBadElement;
  const bool scan_vector = mapping.allow_vector && Aligned(t.data(), 16);
  for (int thread = 0; thread < mapping.threads; ++thread) {
    ScanAny(t.dtype, t.data(), t.rows * t.cols, scan_vector, thread, mapping.threads, &amax,
            &first_bad);
  }
  // Table kernel: one entry per (code, column).
  cuda::GlobalScaleSource source;
  source.has_global_scale = options.global_scale.has_value();
  source.global_scale = options.global_scale.value_or(1.0f);
  source.has_amax = options.amax.has_value();
  source.amax = options.amax.value_or(0.0f);
  source.scale_max = options.scale_max;
  const float g = cuda::ResolveGlobalScale(source, amax);
  auto table = std::make_unique<ScaleTable>();
  for (int c = 0; c < kNumScaleCodes; ++c) {
    for (int k = 0; k < 8; ++k) cuda::BuildScaleTableEntry(g, c, k, table.get());
  }
  const ScaleSearchParams params =
      MakeScaleSearchParams(options.method, options.objective, table->global_scale);

  // Quantize launches over row chunks, each a grid-stride loop over `threads` threads.
  ThreadTotals totals;
  cuda::ClearThreadTotals(&totals);
  const size_t element_size = DTypeSize(t.dtype);
  const bool weights = t.layout != ImportanceLayout::kNone;
  for (int64_t r0 = 0; r0 < t.rows; r0 += mapping.rows_per_launch) {
    BlockJob job;
    job.dtype = t.dtype;
    job.x = static_cast<const uint8_t*>(t.data()) + static_cast<size_t>(r0 * t.cols) * element_size;
    job.weights = t.layout == ImportanceLayout::kPerColumn    ? t.importance.data()
                  : t.layout == ImportanceLayout::kPerElement ? t.importance.data() + r0 * t.cols
                                                              : nullptr;
    job.packed = q.packed.data() + r0 * (pc / 2);
    job.scales = q.scales.data() + r0 * (pc / 16);
    job.dequantized = options.want_dequantized ? q.dequantized.data() + r0 * t.cols : nullptr;
    job.row0 = r0;
    job.rows = std::min(mapping.rows_per_launch, t.rows - r0);
    job.cols = t.cols;
    job.padded_cols = pc;
    job.layout = t.layout;
    job.method = options.method;
    job.objective = options.objective;
    job.vector_access = mapping.allow_vector && t.cols % 16 == 0 && Aligned(job.x, 16) &&
                        (job.weights == nullptr || Aligned(job.weights, 16)) &&
                        (job.dequantized == nullptr || Aligned(job.dequantized, 16)) &&
                        Aligned(job.packed, 8);
    for (int thread = 0; thread < mapping.threads; ++thread) {
      ThreadTotals mine;
      cuda::ClearThreadTotals(&mine);
      cuda::DispatchBlockVariant(job, [&](auto dtype_tag, auto weights_tag, auto search_tag) {
        cuda::QuantizeThreadBlocks<decltype(dtype_tag)::value, decltype(weights_tag)::value,
                                   decltype(search_tag)::value>(
            job, *table, params, thread, cuda::MakeBlockSpan(job, mapping.threads), &mine);
      });
      MergeTotals(mine, &totals);
    }
  }
  out.first_bad_input = cuda::MinIndex(first_bad, totals.first_bad_input);
  out.first_bad_weight = totals.first_bad_weight;
  q.amax = options.amax.value_or(amax);
  EXPECT_EQ(totals.amax, amax) << "the quantize pass sees the same amax as the scan";
  q.global_scale = table->global_scale;
  const ErrorAccumulator sums =
      MakeErrorAccumulator(totals.sum, totals.max_abs_error, totals.candidates, t.rows * (pc / 16));
  q.metrics =
      FinalizeMetrics(sums, t.rows * t.cols, weights, options.objective == Objective::kWmse, 0.0);
  return out;
}

void CheckCase(cpu::CpuBackend& reference, const Case& c, uint64_t seed, const Mapping& mapping) {
  const HostTensor t = gpu_testing::MakeTensor(c, seed);
  const QuantizeOptions options = gpu_testing::MakeOptions(c, t);
  auto expected = reference.Quantize(t.view(), t.importance_view(), options);
  ASSERT_TRUE(expected.ok()) << c.Name() << ": " << expected.status();
  const Emulated actual = Emulate(t, options, mapping);
  EXPECT_EQ(actual.first_bad_input, cuda::kNoBadElement) << c.Name();
  EXPECT_EQ(actual.first_bad_weight, cuda::kNoBadElement) << c.Name();
  gpu_testing::ExpectSameQuantization(*expected, actual.tensor,
                                      c.Name() + " (threads " + std::to_string(mapping.threads) +
                                          ", rows/launch " +
                                          std::to_string(mapping.rows_per_launch) + ")");
}

// The kernel's walk visits exactly the blocks first, first + stride, ... below rows *
// blocks_per_row, in that order, at the right (row, column block) and element offset.
TEST(DeviceCode, BlockWalkVisitsTheGridStrideBlocks) {
  for (int64_t cols : {1, 16, 17, 48, 1000}) {
    for (int64_t rows : {1, 3, 37}) {
      BlockJob job;
      job.rows = rows;
      job.cols = cols;
      job.padded_cols = (cols + 15) / 16 * 16;
      const int64_t per_row = job.padded_cols / 16;
      const int64_t blocks = rows * per_row;
      for (int64_t stride :
           {int64_t{1}, int64_t{2}, per_row, per_row + 1, 3 * per_row - 1, blocks, blocks + 5}) {
        for (int64_t first : {int64_t{0}, int64_t{1}, stride - 1, blocks - 1, blocks}) {
          if (first < 0 || first >= stride) continue;
          std::vector<int64_t> visited;
          const cuda::BlockSpan step = cuda::MakeBlockSpan(job, stride);
          for (cuda::BlockWalk walk = cuda::StartBlockWalk(job, first); !walk.done(job);
               walk.Advance(job, step)) {
            const cuda::BlockSite site = walk.site(job);
            const int64_t r = site.b / per_row;
            const int64_t col0 = (site.b % per_row) * 16;
            ASSERT_EQ(site.col0, col0);
            ASSERT_EQ(site.e0, r * cols + col0);
            ASSERT_EQ(site.n, std::min<int64_t>(16, cols - col0));
            visited.push_back(site.b);
            ASSERT_LE(visited.size(), static_cast<size_t>(blocks));
          }
          std::vector<int64_t> expected;
          for (int64_t b = first; b < blocks; b += stride) expected.push_back(b);
          EXPECT_EQ(visited, expected)
              << "cols " << cols << " rows " << rows << " stride " << stride << " first " << first;
        }
      }
    }
  }
}

// At the CUDA backend's row limit (2^31 - 1 blocks per row) a column block plus a step exceeds
// INT32_MAX; the walk must still wrap to the next row. Only positions are computed: no memory.
TEST(DeviceCode, BlockWalkWrapsRowsAtTheRowLimit) {
  BlockJob job;
  job.rows = 3;
  job.padded_cols = int64_t{16} * ((int64_t{1} << 31) - 1);
  const int64_t per_row = job.padded_cols / 16;
  for (int64_t cols : {job.padded_cols, job.padded_cols - 5}) {
    job.cols = cols;
    for (int64_t stride : {int64_t{67584}, per_row - 1, per_row + 67584}) {
      const cuda::BlockSpan step = cuda::MakeBlockSpan(job, stride);
      const int64_t first = per_row - 3;  // near the end of row 0: the next step wraps
      cuda::BlockWalk walk = cuda::StartBlockWalk(job, first);
      for (int64_t b = first; b < job.rows * per_row; b += stride) {
        ASSERT_FALSE(walk.done(job));
        const cuda::BlockSite site = walk.site(job);
        const int64_t col0 = (b % per_row) * 16;
        ASSERT_EQ(site.b, b) << "stride " << stride;
        ASSERT_EQ(site.col0, col0) << "block " << b << " stride " << stride;
        ASSERT_EQ(site.e0, b / per_row * cols + col0) << "block " << b << " stride " << stride;
        ASSERT_EQ(site.n, std::min<int64_t>(16, cols - col0));
        walk.Advance(job, step);
      }
      EXPECT_TRUE(walk.done(job));
    }
  }
}

TEST(DeviceCode, TableEntriesEqualBuildScaleTable) {
  for (float g :
       {6.018531076210112e-36f, 1e-30f, 1e-3f, 1.0f / 2688.0f, 0.37f, 1.0f, 3.7f, 1e20f, 2.2e35f}) {
    auto expected = std::make_unique<ScaleTable>();
    auto actual = std::make_unique<ScaleTable>();
    BuildScaleTable(g, expected.get());
    std::memset(actual.get(), 0xCD, sizeof(ScaleTable));
    for (int c = 0; c < kNumScaleCodes; ++c) {
      for (int k = 0; k < 8; ++k) cuda::BuildScaleTableEntry(g, c, k, actual.get());
    }
    EXPECT_EQ(gpu_testing::Bits(expected->global_scale), gpu_testing::Bits(actual->global_scale));
    for (int c = 0; c < 128; ++c) {
      EXPECT_EQ(gpu_testing::Bits(expected->effective_scale[c]),
                gpu_testing::Bits(actual->effective_scale[c]))
          << "g " << g << " code " << c;
    }
    for (int c = 0; c < kNumScaleCodes; ++c) {
      for (int k = 0; k < 8; ++k) {
        ASSERT_EQ(gpu_testing::Bits(expected->threshold[c][k]),
                  gpu_testing::Bits(actual->threshold[c][k]))
            << "g " << g << " code " << c << " k " << k;
      }
    }
  }
}

TEST(DeviceCode, GlobalScaleFollowsTheCpuRules) {
  cuda::GlobalScaleSource source;
  source.scale_max = 448;
  EXPECT_EQ(cuda::ResolveGlobalScale(source, 2688.0f), 1.0f);
  EXPECT_EQ(cuda::ResolveGlobalScale(source, 0.0f), 1.0f);
  source.has_amax = true;
  source.amax = 100.0f;
  EXPECT_EQ(cuda::ResolveGlobalScale(source, 2688.0f), 100.0f / 2688.0f);
  source.has_global_scale = true;
  source.global_scale = 0.5f;
  EXPECT_EQ(cuda::ResolveGlobalScale(source, 2688.0f), 0.5f);
}

TEST(DeviceCode, EveryVariantMatchesTheCpuReference) {
  auto reference = ScalarReference();
  ASSERT_NE(reference, nullptr);
  uint64_t seed = 1;
  for (const Case& c : gpu_testing::VariantMatrix()) {
    CheckCase(*reference, c, seed++, {1 << 20, 64, true});
  }
}

TEST(DeviceCode, AdversarialCasesMatchTheCpuReference) {
  auto reference = ScalarReference();
  ASSERT_NE(reference, nullptr);
  uint64_t seed = 500;
  for (const Case& c : gpu_testing::AdversarialCases()) {
    CheckCase(*reference, c, seed++, {1 << 20, 7, true});
  }
}

TEST(DeviceCode, ChunkingThreadsAndAlignmentDoNotChangeBytes) {
  auto reference = ScalarReference();
  ASSERT_NE(reference, nullptr);
  for (DType dtype : {DType::kF32, DType::kBF16, DType::kF16}) {
    for (ImportanceLayout layout : {ImportanceLayout::kPerColumn, ImportanceLayout::kPerElement}) {
      Case c;
      c.method = Method::kScaleSweep;
      c.objective = Objective::kWmse;
      c.dtype = dtype;
      c.layout = layout;
      c.rows = 29;
      c.cols = 96;
      for (const Mapping& m : {Mapping{1, 1, true}, Mapping{5, 3, true}, Mapping{7, 256, false},
                               Mapping{29, 1000, true}}) {
        CheckCase(*reference, c, 77, m);
      }
    }
  }
}

TEST(DeviceCode, FindsTheFirstBadInputAndWeight) {
  HostTensor t = gpu_testing::MakeTensor(DType::kF32, 10, 300, ImportanceLayout::kPerElement, 3);
  t.f32[5 * 300 + 1] = std::nanf("");
  t.f32[2 * 300 + 17] = std::numeric_limits<float>::infinity();
  t.importance[9 * 300 + 299] = -1.0f;
  t.importance[4 * 300 + 3] = std::nanf("");
  QuantizeOptions options;
  options.global_scale = 0.01f;  // the single-pass path: the quantize pass finds them
  const Emulated e = Emulate(t, options, {3, 17, true});
  EXPECT_EQ(e.first_bad_input, uint64_t{2 * 300 + 17});
  EXPECT_EQ(e.first_bad_weight, uint64_t{4 * 300 + 3});
  // The CPU names the same element.
  auto reference = ScalarReference();
  auto q = reference->Quantize(t.view(), t.importance_view(), options);
  ASSERT_FALSE(q.ok());
  EXPECT_NE(std::string(q.status().message()).find("element 617 (row 2, column 17)"),
            std::string::npos);

  // Per-column importance: the index is the column.
  HostTensor c = gpu_testing::MakeTensor(DType::kBF16, 6, 70, ImportanceLayout::kPerColumn, 4);
  c.importance[37] = -1.0f;
  c.importance[69] = std::numeric_limits<float>::infinity();
  const Emulated ec = Emulate(c, QuantizeOptions{}, {2, 5, true});
  EXPECT_EQ(ec.first_bad_input, cuda::kNoBadElement);
  EXPECT_EQ(ec.first_bad_weight, uint64_t{37});
}

// A block's (the quantize kernel) or a 16-byte vector's (the scan kernel) NaN/Inf test is one test
// of its maximum, taken with NaN propagated: a NaN must be found wherever it lies, whatever the
// other elements hold.
TEST(DeviceCode, FindsANaNAtEveryPositionOfABlock) {
  EXPECT_TRUE(std::isnan(MaxMagnitudeOrNaN(std::nanf(""), 1.0f)));
  EXPECT_TRUE(std::isnan(MaxMagnitudeOrNaN(1.0f, std::nanf(""))));
  EXPECT_EQ(MaxMagnitudeOrNaN(2.0f, 3.0f), 3.0f);
  EXPECT_EQ(MaxMagnitudeOrNaN(3.0f, 2.0f), 3.0f);
  QuantizeOptions single_pass;
  single_pass.global_scale = 0.01f;  // the quantize kernel finds it
  for (const QuantizeOptions& options : {single_pass, QuantizeOptions{}}) {  // {}: the scan does
    for (DType dtype : {DType::kF32, DType::kBF16, DType::kF16}) {
      // [5, 63]: 315 elements, so the scan's 16-byte vectors end at element 312 and it takes
      // the last three one by one; the positions run over columns 43..62 of the last row,
      // vectors, tail and the quantize kernel's last (partial) block.
      for (int position = 0; position < 20; ++position) {
        HostTensor t = gpu_testing::MakeTensor(dtype, 5, 63, ImportanceLayout::kNone, 5);
        const int64_t bad = 4 * 63 + 43 + position;
        if (dtype == DType::kF32) {
          t.f32[bad] = std::nanf("");
          t.f32[bad - 1] = 1e30f;  // a large finite neighbour
        } else {
          t.bits16[bad] = dtype == DType::kBF16 ? 0x7FC1 : 0x7E01;
        }
        const Emulated e = Emulate(t, options, {4, 3, true});
        EXPECT_EQ(e.first_bad_input, static_cast<uint64_t>(bad))
            << DTypeName(dtype) << " position " << position
            << (options.global_scale ? " (quantize pass)" : " (scan pass)");
      }
    }
  }
}

}  // namespace
}  // namespace nvfp4
