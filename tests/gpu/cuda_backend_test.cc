// GPU tests of cuda::CudaBackend against cpu::CpuBackend: identical bytes (packed, scales,
// global scale, dequantised values) for every method x objective x dtype x importance layout x
// padded/unpadded shape, adversarial blocks, both input paths (host and device-resident),
// multi-chunk pipelining, QuantizeInto from a streamed input, NaN/Inf and bad-importance
// messages, cancellation, bad requests, the device-built scale table, determinism and
// concurrent callers. NVFP4_GPU_LARGE=1 adds tensors
// of 64M+ elements. Every test skips with "no CUDA device: GPU test skipped" where
// CudaDeviceCount() is 0 (after checking that Create then fails cleanly).
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "gtest/gtest.h"
#include "kernels/cpu/cpu_backend.h"
#include "kernels/cuda/cuda_backend.h"
#include "kernels/cuda/cuda_raii.h"
#include "kernels/cuda/quantize_kernels.h"
#include "kernels/numerics/scale_table.h"
#include "tests/gpu/gpu_test_cases.h"
#include "tests/testing/row_sources.h"

namespace nvfp4 {
namespace {

using gpu_testing::Case;
using gpu_testing::HostTensor;

// A HostTensor copied into device memory.
struct DeviceTensor {
  cuda::DeviceBuffer data;
  cuda::DeviceBuffer importance;
  TensorView view;
  ImportanceView importance_view;
};

absl::StatusOr<DeviceTensor> Upload(const HostTensor& t) {
  DeviceTensor d;
  ASSIGN_OR_RETURN(d.data, cuda::DeviceBuffer::Create(t.bytes()));
  NVFP4_CUDA_RETURN_IF_ERROR(cudaMemcpy(d.data.get(), t.data(), t.bytes(), cudaMemcpyHostToDevice),
                             "cudaMemcpy");
  d.view = TensorView{t.dtype, t.rows, t.cols, d.data.get()};
  if (t.layout != ImportanceLayout::kNone) {
    const size_t bytes = t.importance.size() * sizeof(float);
    ASSIGN_OR_RETURN(d.importance, cuda::DeviceBuffer::Create(bytes));
    NVFP4_CUDA_RETURN_IF_ERROR(
        cudaMemcpy(d.importance.get(), t.importance.data(), bytes, cudaMemcpyHostToDevice),
        "cudaMemcpy");
    d.importance_view = ImportanceView{t.layout, d.importance.as<float>(),
                                       static_cast<int64_t>(t.importance.size())};
  }
  return d;
}

class CudaBackendTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (cuda::CudaDeviceCount() == 0) {
      // The no-device contract: Create fails with a Status, nothing aborts.
      auto backend = cuda::CudaBackend::Create(0);
      EXPECT_FALSE(backend.ok());
      EXPECT_EQ(backend.status().code(), absl::StatusCode::kUnavailable) << backend.status();
      // On a machine that has a GPU (tests/gpu/device_check.sh sets this when nvidia-smi lists
      // one), a runtime that sees none (e.g. a driver older than the runtime) is a failure, not
      // a skip.
      const char* require = std::getenv("NVFP4_REQUIRE_GPU");
      if (require != nullptr && *require != '\0' && std::string(require) != "0") {
        FAIL() << "NVFP4_REQUIRE_GPU is set but the CUDA runtime sees no device: "
               << backend.status();
      }
      GTEST_SKIP() << "no CUDA device: GPU test skipped (" << backend.status().message() << ")";
    }
    auto gpu = cuda::CudaBackend::Create(0);
    ASSERT_TRUE(gpu.ok()) << gpu.status();
    gpu_ = std::move(*gpu);
    auto cpu = cpu::CpuBackend::Create({0, cpu::CpuIsa::kAuto});
    ASSERT_TRUE(cpu.ok()) << cpu.status();
    cpu_ = std::move(*cpu);
  }

  // CPU reference vs the GPU host path and the GPU device path.
  void CheckAgainstCpu(const HostTensor& t, const QuantizeOptions& options, const std::string& what,
                       bool device_path = true) {
    auto expected = cpu_->Quantize(t.view(), t.importance_view(), options);
    ASSERT_TRUE(expected.ok()) << what << ": " << expected.status();
    auto host = gpu_->Quantize(t.view(), t.importance_view(), options);
    ASSERT_TRUE(host.ok()) << what << ": " << host.status();
    gpu_testing::ExpectSameQuantization(*expected, *host, what + " [host path]");
    if (!device_path) return;
    auto d = Upload(t);
    ASSERT_TRUE(d.ok()) << d.status();
    auto device = gpu_->QuantizeDevice(d->view, d->importance_view, options);
    ASSERT_TRUE(device.ok()) << what << ": " << device.status();
    gpu_testing::ExpectSameQuantization(*expected, *device, what + " [device path]");
  }

  std::string CpuError(const HostTensor& t, const QuantizeOptions& options) {
    auto q = cpu_->Quantize(t.view(), t.importance_view(), options);
    EXPECT_FALSE(q.ok());
    return q.ok() ? "" : std::string(q.status().message());
  }

  std::unique_ptr<cuda::CudaBackend> gpu_;
  std::unique_ptr<cpu::CpuBackend> cpu_;
};

TEST_F(CudaBackendTest, NameAndDevices) {
  EXPECT_EQ(std::string(gpu_->name()).rfind("cuda:0 ", 0), 0u) << gpu_->name();
  EXPECT_GE(cuda::CudaDeviceCount(), 1);
  auto missing = cuda::CudaBackend::Create(cuda::CudaDeviceCount());
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kInvalidArgument);
}

TEST_F(CudaBackendTest, EveryVariantIsByteIdenticalToTheCpu) {
  uint64_t seed = 1;
  for (const Case& c : gpu_testing::VariantMatrix()) {
    const HostTensor t = gpu_testing::MakeTensor(c, seed++);
    CheckAgainstCpu(t, gpu_testing::MakeOptions(c, t), c.Name());
  }
}

TEST_F(CudaBackendTest, AdversarialBlocksAreByteIdenticalToTheCpu) {
  uint64_t seed = 500;
  for (const Case& c : gpu_testing::AdversarialCases()) {
    const HostTensor t = gpu_testing::MakeTensor(c, seed++);
    CheckAgainstCpu(t, gpu_testing::MakeOptions(c, t), c.Name());
  }
}

TEST_F(CudaBackendTest, AllZeroTensor) {
  HostTensor t = gpu_testing::MakeTensor(DType::kF32, 3, 48, ImportanceLayout::kNone, 1);
  std::fill(t.f32.begin(), t.f32.end(), 0.0f);
  for (Method m :
       {Method::kAbsMax, Method::kFourOverSix, Method::kExhaustive, Method::kScaleSweep}) {
    QuantizeOptions options;
    options.method = m;
    CheckAgainstCpu(t, options, std::string(MethodName(m)) + " all zero");
    auto q = gpu_->Quantize(t.view(), {}, options);
    ASSERT_TRUE(q.ok());
    EXPECT_EQ(q->global_scale, 1.0f);
    for (uint8_t s : q->scales) EXPECT_EQ(s, 0x38);
  }
}

TEST_F(CudaBackendTest, ScaleTableBuiltOnTheDeviceEqualsTheHostTable) {
  auto result = cuda::DeviceBuffer::Create(sizeof(cuda::internal::DeviceResult));
  auto table = cuda::DeviceBuffer::Create(sizeof(ScaleTable));
  ASSERT_TRUE(result.ok() && table.ok());
  for (float g :
       {6.018531076210112e-36f, 1e-30f, 1e-3f, 1.0f / 2688.0f, 0.37f, 1.0f, 3.7f, 1e20f, 2.2e35f}) {
    cuda::GlobalScaleSource source;
    source.has_global_scale = true;
    source.global_scale = g;
    auto* r = result->as<cuda::internal::DeviceResult>();
    ASSERT_EQ(cuda::internal::LaunchInitResult(r, nullptr), cudaSuccess);
    ASSERT_EQ(cuda::internal::LaunchBuildScaleTable(source, r, table->as<ScaleTable>(), nullptr),
              cudaSuccess);
    auto device = std::make_unique<ScaleTable>();
    auto host = std::make_unique<ScaleTable>();
    ASSERT_EQ(cudaMemcpy(device.get(), table->get(), sizeof(ScaleTable), cudaMemcpyDeviceToHost),
              cudaSuccess);
    BuildScaleTable(g, host.get());
    EXPECT_EQ(gpu_testing::Bits(host->global_scale), gpu_testing::Bits(device->global_scale));
    for (int c = 1; c < kNumScaleCodes; ++c) {
      ASSERT_EQ(gpu_testing::Bits(host->effective_scale[c]),
                gpu_testing::Bits(device->effective_scale[c]))
          << "g " << g << " code " << c;
      for (int k = 0; k < 8; ++k) {
        ASSERT_EQ(gpu_testing::Bits(host->threshold[c][k]),
                  gpu_testing::Bits(device->threshold[c][k]))
            << "g " << g << " code " << c << " threshold " << k;
      }
    }
  }
}

TEST_F(CudaBackendTest, MultiChunkHostPathInEveryScaleMode) {
  // 2,500 x 2,048 is three host chunks (1,024 rows each); 2,047 columns adds padding.
  for (int64_t cols : {2048, 2047}) {
    for (gpu_testing::ScaleMode mode :
         {gpu_testing::ScaleMode::kFromTensor, gpu_testing::ScaleMode::kGivenAmax,
          gpu_testing::ScaleMode::kGivenGlobalScale}) {
      Case c;
      c.method = Method::kScaleSweep;
      c.objective = Objective::kWmse;
      c.layout = ImportanceLayout::kPerElement;
      c.dtype = cols == 2048 ? DType::kBF16 : DType::kF32;
      c.rows = 2500;
      c.cols = cols;
      c.scale_mode = mode;
      const HostTensor t = gpu_testing::MakeTensor(c, 99);
      CheckAgainstCpu(t, gpu_testing::MakeOptions(c, t), c.Name());
    }
  }
}

// QuantizeInto as nvfp4d calls it: rows arrive in pieces that split rows and elements (input.data
// is null), outputs go into the caller's buffers, finished rows are reported chunk by chunk.
// Same bytes as the CPU engine; rows reported done are final and never read again.
TEST_F(CudaBackendTest, StreamedQuantizeIntoMatchesTheCpu) {
  // 2,500 rows of 2,047 columns: three host chunks of 1,024 rows, padded blocks.
  const int64_t rows = 2500, cols = 2047;
  for (DType dtype : {DType::kBF16, DType::kF16, DType::kF32}) {
    const HostTensor t = gpu_testing::MakeTensor(dtype, rows, cols, ImportanceLayout::kNone, 31);
    QuantizeOptions options;
    options.amax = gpu_testing::MaxAbs(t);  // streaming needs g up front
    options.want_dequantized = dtype == DType::kF32;
    auto expected = cpu_->Quantize(t.view(), {}, options);
    ASSERT_TRUE(expected.ok()) << expected.status();

    QuantizedTensor out;
    out.rows = rows;
    out.cols = cols;
    out.padded_cols = PaddedCols(cols);
    ResizeOutputs(out, options.want_dequantized);
    std::fill(out.packed.begin(), out.packed.end(), 0xAB);
    std::fill(out.scales.begin(), out.scales.end(), 0xCD);
    testing_rows::PiecewiseRowSource source(t.data(), rows, cols * DTypeSize(dtype), 17);
    std::vector<int64_t> reports;
    int not_final = 0;
    const int64_t packed_row = out.padded_cols / 2;
    const QuantizerBackend::RowsDoneFn rows_done = [&](int64_t done) {
      reports.push_back(done);
      if (std::memcmp(out.packed.data(), expected->packed.data(),
                      static_cast<size_t>(done * packed_row)) != 0) {
        ++not_final;
      }
      source.released = done;
    };
    auto summary = gpu_->QuantizeInto({dtype, rows, cols, nullptr}, {}, options, BuffersOf(out),
                                      &source, &rows_done);
    ASSERT_TRUE(summary.ok()) << summary.status();
    out.amax = summary->amax;
    out.global_scale = summary->global_scale;
    out.metrics = summary->metrics;
    const std::string what = std::string(DTypeName(dtype)) + " streamed";
    gpu_testing::ExpectSameQuantization(*expected, out, what);
    EXPECT_EQ(reports, (std::vector<int64_t>{1024, 2048, 2500})) << what;
    EXPECT_EQ(not_final, 0) << what << ": rows reported done before their bytes were final";
    EXPECT_EQ(source.reads_of_released.load(), 0) << what;
    EXPECT_GT(source.pieces.load(), rows / 3) << what;

    // The whole tensor in host memory, into caller buffers.
    auto into = testing_rows::QuantizeIntoFresh(*gpu_, t.view(), options, nullptr, nullptr);
    ASSERT_TRUE(into.ok()) << into.status();
    gpu_testing::ExpectSameQuantization(*expected, *into, what + " (host tensor)");
  }

  // A NaN in the second chunk: the CPU's message, and no rows reported past the first chunk.
  HostTensor bad = gpu_testing::MakeTensor(DType::kBF16, rows, cols, ImportanceLayout::kNone, 32);
  QuantizeOptions options;
  options.amax = gpu_testing::MaxAbs(bad);
  bad.bits16[1500 * cols + 3] = 0x7FC0;
  const std::string expected = CpuError(bad, options);
  testing_rows::PiecewiseRowSource source(bad.data(), rows, cols * 2, 18);
  int64_t last_report = 0;
  const QuantizerBackend::RowsDoneFn rows_done = [&](int64_t done) { last_report = done; };
  auto failed = testing_rows::QuantizeIntoFresh(*gpu_, {DType::kBF16, rows, cols, nullptr}, options,
                                                &source, &rows_done);
  ASSERT_FALSE(failed.ok());
  EXPECT_EQ(failed.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(std::string(failed.status().message()), expected);
  EXPECT_LE(last_report, 1024);

  // Bad importance fails before any row is reported, with the CPU's message.
  HostTensor weighted =
      gpu_testing::MakeTensor(DType::kBF16, rows, cols, ImportanceLayout::kPerElement, 33);
  weighted.importance[2400 * cols + 5] = std::nanf("");
  QuantizeOptions wmse;
  wmse.objective = Objective::kWmse;
  wmse.amax = gpu_testing::MaxAbs(weighted);
  auto cpu_weighted = cpu_->Quantize(weighted.view(), weighted.importance_view(), wmse);
  ASSERT_FALSE(cpu_weighted.ok());
  testing_rows::PiecewiseRowSource weighted_source(weighted.data(), rows, cols * 2, 20);
  int reports = 0;
  const QuantizerBackend::RowsDoneFn count_reports = [&](int64_t) { ++reports; };
  QuantizedTensor sink;
  sink.rows = rows;
  sink.cols = cols;
  sink.padded_cols = PaddedCols(cols);
  ResizeOutputs(sink, false);
  auto bad_weights =
      gpu_->QuantizeInto({DType::kBF16, rows, cols, nullptr}, weighted.importance_view(), wmse,
                         BuffersOf(sink), &weighted_source, &count_reports);
  ASSERT_FALSE(bad_weights.ok());
  EXPECT_EQ(std::string(bad_weights.status().message()),
            std::string(cpu_weighted.status().message()));
  EXPECT_EQ(reports, 0);

  // An upload that never completes; streaming without a known g.
  testing_rows::PiecewiseRowSource never(bad.data(), rows, cols * 2, 19);
  never.never = true;
  auto cancelled = testing_rows::QuantizeIntoFresh(*gpu_, {DType::kBF16, rows, cols, nullptr},
                                                   options, &never, nullptr);
  EXPECT_EQ(cancelled.status().code(), absl::StatusCode::kCancelled) << cancelled.status();
  auto no_g = testing_rows::QuantizeIntoFresh(*gpu_, {DType::kBF16, rows, cols, nullptr}, {},
                                              &source, nullptr);
  EXPECT_EQ(no_g.status().code(), absl::StatusCode::kInvalidArgument) << no_g.status();
  // The backend stays usable.
  CheckAgainstCpu(gpu_testing::MakeTensor(DType::kF32, 4, 64, ImportanceLayout::kNone, 5), {},
                  "after streaming errors");
}

TEST_F(CudaBackendTest, RejectsNonFiniteInputsNamingTheFirstBadElement) {
  HostTensor t = gpu_testing::MakeTensor(DType::kF32, 10, 300, ImportanceLayout::kNone, 2);
  t.f32[2 * 300 + 17] = std::numeric_limits<float>::infinity();
  t.f32[5 * 300 + 1] = std::nanf("");
  auto d = Upload(t);
  ASSERT_TRUE(d.ok());
  for (bool given_g : {false, true}) {
    QuantizeOptions options;
    if (given_g) options.global_scale = 0.01f;  // single pass: the quantize kernel finds it
    const std::string expected = CpuError(t, options);
    EXPECT_NE(expected.find("element 617 (row 2, column 17) is +Inf"), std::string::npos);
    auto host = gpu_->Quantize(t.view(), {}, options);
    ASSERT_FALSE(host.ok());
    EXPECT_EQ(host.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_EQ(std::string(host.status().message()), expected);
    auto device = gpu_->QuantizeDevice(d->view, {}, options);
    ASSERT_FALSE(device.ok());
    EXPECT_EQ(std::string(device.status().message()), expected);
  }
  // bf16 NaN, and a bad value in the last of several host chunks.
  HostTensor b = gpu_testing::MakeTensor(DType::kBF16, 2, 32, ImportanceLayout::kNone, 3);
  b.bits16[40] = 0x7FC0;
  EXPECT_EQ(std::string(gpu_->Quantize(b.view(), {}, {}).status().message()), CpuError(b, {}));
  QuantizeOptions single_pass;
  single_pass.global_scale = 0.01f;
  HostTensor big = gpu_testing::MakeTensor(DType::kF16, 3000, 1024, ImportanceLayout::kNone, 4);
  big.bits16[2999 * 1024 + 1000] = 0xFC00;  // -Inf
  EXPECT_EQ(std::string(gpu_->Quantize(big.view(), {}, {}).status().message()), CpuError(big, {}));
  // With g given there is no scan: the quantize pass of the last chunk finds it, and names it by
  // its index in the tensor, not in the chunk.
  EXPECT_EQ(std::string(gpu_->Quantize(big.view(), {}, single_pass).status().message()),
            CpuError(big, single_pass));
  // A NaN alone, at every position of a block, found by the quantize kernel's one test of the
  // block maximum (max.NaN).
  for (int position = 0; position < 16; ++position) {
    HostTensor n = gpu_testing::MakeTensor(DType::kBF16, 4, 64, ImportanceLayout::kNone, 5);
    n.bits16[2 * 64 + 32 + position] = 0x7FC1;
    const std::string expected = CpuError(n, single_pass);
    EXPECT_EQ(std::string(gpu_->Quantize(n.view(), {}, single_pass).status().message()), expected)
        << "position " << position;
  }
  // The backend stays usable.
  CheckAgainstCpu(gpu_testing::MakeTensor(DType::kF32, 4, 64, ImportanceLayout::kNone, 5), {},
                  "after errors");
}

// The backend's streams are non-blocking; a device call must still see what the caller enqueued
// before it on the default stream (cudaMemcpy/cudaMemset and PyTorch's default stream use it).
// Here the input's upload waits 200 ms behind a host callback on a default stream, so a call that
// did not follow that stream would quantise the zeros written before. The outputs are allocated
// beforehand: an allocation between the upload and the kernels could order them by itself.
TEST_F(CudaBackendTest, DevicePathsFollowTheCallersDefaultStreamWork) {
  const HostTensor t = gpu_testing::MakeTensor(DType::kBF16, 256, 1024, ImportanceLayout::kNone, 9);
  auto expected = cpu_->Quantize(t.view(), {}, {});
  ASSERT_TRUE(expected.ok()) << expected.status();
  auto device = cuda::DeviceBuffer::Create(t.bytes());
  auto pinned = cuda::PinnedBuffer::Create(t.bytes());
  auto packed = cuda::DeviceBuffer::Create(expected->packed.size());
  auto scales = cuda::DeviceBuffer::Create(expected->scales.size());
  ASSERT_TRUE(device.ok() && pinned.ok() && packed.ok() && scales.ok());
  std::memcpy(pinned->get(), t.data(), t.bytes());
  cuda::DeviceOutputs outputs;
  outputs.packed = packed->as<uint8_t>();
  outputs.scales = scales->as<uint8_t>();
  for (bool per_thread_stream : {false, true}) {
    SCOPED_TRACE(per_thread_stream ? "per-thread default stream" : "legacy default stream");
    ASSERT_EQ(cudaMemset(device->get(), 0, t.bytes()), cudaSuccess);
    ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
    const cudaStream_t caller = per_thread_stream ? cudaStreamPerThread : cudaStreamLegacy;
    ASSERT_EQ(
        cudaLaunchHostFunc(
            caller, [](void*) { std::this_thread::sleep_for(std::chrono::milliseconds(200)); },
            nullptr),
        cudaSuccess);
    ASSERT_EQ(
        cudaMemcpyAsync(device->get(), pinned->get(), t.bytes(), cudaMemcpyHostToDevice, caller),
        cudaSuccess);
    auto q = gpu_->QuantizeDeviceToDevice(TensorView{t.dtype, t.rows, t.cols, device->get()}, {},
                                          {}, outputs);
    ASSERT_TRUE(q.ok()) << q.status();
    EXPECT_EQ(q->amax, expected->amax);
    std::vector<uint8_t> got_packed(expected->packed.size()), got_scales(expected->scales.size());
    ASSERT_EQ(
        cudaMemcpy(got_packed.data(), packed->get(), got_packed.size(), cudaMemcpyDeviceToHost),
        cudaSuccess);
    ASSERT_EQ(
        cudaMemcpy(got_scales.data(), scales->get(), got_scales.size(), cudaMemcpyDeviceToHost),
        cudaSuccess);
    EXPECT_TRUE(got_packed == expected->packed);
    EXPECT_TRUE(got_scales == expected->scales);
  }
}

TEST_F(CudaBackendTest, RejectsBadImportanceLikeTheCpu) {
  HostTensor t = gpu_testing::MakeTensor(DType::kF32, 4, 32, ImportanceLayout::kPerColumn, 6);
  t.importance[3] = -2.0f;
  QuantizeOptions wmse;
  wmse.objective = Objective::kWmse;
  const std::string expected = CpuError(t, wmse);
  EXPECT_NE(expected.find("importance value 3"), std::string::npos);
  EXPECT_EQ(std::string(gpu_->Quantize(t.view(), t.importance_view(), wmse).status().message()),
            expected);
  auto d = Upload(t);
  ASSERT_TRUE(d.ok());
  EXPECT_EQ(std::string(gpu_->QuantizeDevice(d->view, d->importance_view, wmse).status().message()),
            expected);

  HostTensor e = gpu_testing::MakeTensor(DType::kBF16, 6, 40, ImportanceLayout::kPerElement, 7);
  e.importance[200] = std::nanf("");
  e.importance[100] = std::numeric_limits<float>::infinity();
  EXPECT_EQ(std::string(gpu_->Quantize(e.view(), e.importance_view(), {}).status().message()),
            CpuError(e, {}));

  // A bad per-element weight in the second of two host chunks, with and without the scan pass:
  // named by its index in the tensor.
  HostTensor chunked =
      gpu_testing::MakeTensor(DType::kBF16, 3000, 1024, ImportanceLayout::kPerElement, 8);
  chunked.importance[2500 * 1024 + 7] = -1.0f;
  QuantizeOptions given_g = wmse;
  given_g.global_scale = 0.01f;
  for (const QuantizeOptions& options : {wmse, given_g}) {
    const std::string chunk_expected = CpuError(chunked, options);
    EXPECT_NE(chunk_expected.find("importance value 2560007"), std::string::npos) << chunk_expected;
    EXPECT_EQ(
        std::string(
            gpu_->Quantize(chunked.view(), chunked.importance_view(), options).status().message()),
        chunk_expected);
  }
}

// Out of device memory is a clean ResourceExhausted from both paths, and the backend works
// again once memory is free. The test takes all but ~1 MiB of the device's free memory (plain
// cudaMalloc, never touched), so every call's first sizeable allocation fails before any launch.
TEST_F(CudaBackendTest, OutOfDeviceMemoryIsResourceExhausted) {
  const HostTensor t =
      gpu_testing::MakeTensor(DType::kBF16, 2048, 4096, ImportanceLayout::kNone, 12);
  auto d = Upload(t);
  ASSERT_TRUE(d.ok()) << d.status();
  constexpr size_t kLeaveFree = size_t{1} << 20;
  std::vector<cuda::DeviceBuffer> filler;
  for (size_t step = size_t{1} << 40; step >= kLeaveFree;) {
    size_t free_bytes = 0, total_bytes = 0;
    ASSERT_EQ(cudaMemGetInfo(&free_bytes, &total_bytes), cudaSuccess);
    if (free_bytes <= 2 * kLeaveFree) break;
    const size_t size = std::min(step, free_bytes - kLeaveFree);
    auto block = cuda::DeviceBuffer::Create(size);
    if (block.ok()) {
      filler.push_back(std::move(*block));
    } else {
      ASSERT_EQ(block.status().code(), absl::StatusCode::kResourceExhausted) << block.status();
      step = size / 2;
    }
  }
  ASSERT_FALSE(filler.empty());
  QuantizeOptions given_g;  // one pass: the host path needs no resident copy to fail
  given_g.global_scale = 0.01f;
  for (const QuantizeOptions& options : {QuantizeOptions{}, given_g}) {
    auto host = gpu_->Quantize(t.view(), {}, options);
    EXPECT_EQ(host.status().code(), absl::StatusCode::kResourceExhausted) << host.status();
    auto device = gpu_->QuantizeDevice(d->view, {}, options);
    EXPECT_EQ(device.status().code(), absl::StatusCode::kResourceExhausted) << device.status();
  }
  filler.clear();
  CheckAgainstCpu(t, {}, "after running out of device memory");
}

TEST_F(CudaBackendTest, CancellationStopsAndLeavesTheBackendUsable) {
  const HostTensor t = gpu_testing::MakeTensor(DType::kF32, 3000, 1024, ImportanceLayout::kNone, 8);
  auto d = Upload(t);
  ASSERT_TRUE(d.ok());
  std::atomic<bool> cancelled{true};
  QuantizeOptions options;
  options.cancelled = &cancelled;
  for (bool given_g : {false, true}) {
    if (given_g) options.global_scale = 0.05f;
    auto host = gpu_->Quantize(t.view(), {}, options);
    EXPECT_EQ(host.status().code(), absl::StatusCode::kCancelled);
    auto device = gpu_->QuantizeDevice(d->view, {}, options);
    EXPECT_EQ(device.status().code(), absl::StatusCode::kCancelled);
  }
  // Cancelling from another thread while the host path runs: either outcome is fine, but the
  // call must return cleanly.
  cancelled = false;
  std::thread canceller([&] { cancelled = true; });
  auto racing = gpu_->Quantize(t.view(), {}, options);
  canceller.join();
  EXPECT_TRUE(racing.ok() || racing.status().code() == absl::StatusCode::kCancelled);
  cancelled = false;
  CheckAgainstCpu(t, options, "after cancellation");
}

TEST_F(CudaBackendTest, RejectsBadRequestsWithClearMessages) {
  const HostTensor t = gpu_testing::MakeTensor(DType::kF32, 4, 32, ImportanceLayout::kNone, 9);
  const auto code_and_message = [&](const TensorView& in, const ImportanceView& imp,
                                    const QuantizeOptions& o) {
    auto gpu = gpu_->Quantize(in, imp, o);
    auto cpu = cpu_->Quantize(in, imp, o);
    EXPECT_FALSE(gpu.ok());
    EXPECT_EQ(gpu.status().code(), cpu.status().code());
    EXPECT_EQ(gpu.status().message(), cpu.status().message());
  };
  std::vector<float> w(31, 1.0f);
  code_and_message({DType::kF32, 0, 32, t.data()}, {}, {});
  code_and_message({DType::kF32, 4, 32, nullptr}, {}, {});
  code_and_message(t.view(), {ImportanceLayout::kPerColumn, w.data(), 31}, {});
  QuantizeOptions wmse;
  wmse.objective = Objective::kWmse;
  code_and_message(t.view(), {}, wmse);
  QuantizeOptions bad_f;
  bad_f.scale_max = 300;
  code_and_message(t.view(), {}, bad_f);

  // Host memory on the device path, device memory on the host path.
  auto host_on_device_path = gpu_->QuantizeDevice(t.view(), {}, {});
  EXPECT_EQ(host_on_device_path.status().code(), absl::StatusCode::kInvalidArgument);
  auto d = Upload(t);
  ASSERT_TRUE(d.ok());
  auto device_on_host_path = gpu_->Quantize(d->view, {}, {});
  EXPECT_EQ(device_on_host_path.status().code(), absl::StatusCode::kInvalidArgument);
  auto no_outputs = gpu_->QuantizeDeviceToDevice(d->view, {}, {}, {});
  EXPECT_EQ(no_outputs.status().code(), absl::StatusCode::kInvalidArgument);

  // The kernels' one limit (a row's blocks fit 31 bits), checked before any memory is read.
  const int64_t too_long = (int64_t{1} << 35) - 15;
  auto long_row = gpu_->QuantizeDevice({DType::kBF16, 1, too_long, d->view.data}, {}, {});
  EXPECT_EQ(long_row.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(long_row.status().message().find("at most 2^35 - 16"), absl::string_view::npos)
      << long_row.status();
}

TEST_F(CudaBackendTest, DeviceOutputsArePoisonFreeAndAlignmentIndependent) {
  Case c;
  c.method = Method::kScaleSweep;
  c.objective = Objective::kWmse;
  c.layout = ImportanceLayout::kPerColumn;
  c.dtype = DType::kBF16;
  c.rows = 33;
  c.cols = 512;
  const HostTensor t = gpu_testing::MakeTensor(c, 10);
  QuantizeOptions options = gpu_testing::MakeOptions(c, t);
  options.want_dequantized = true;
  auto expected = cpu_->Quantize(t.view(), t.importance_view(), options);
  ASSERT_TRUE(expected.ok());
  auto d = Upload(t);
  ASSERT_TRUE(d.ok());
  const size_t packed_bytes = expected->packed.size(), scale_bytes = expected->scales.size();
  const size_t dequantized_bytes = expected->dequantized.size() * sizeof(float);
  auto packed = cuda::DeviceBuffer::Create(packed_bytes + 16);
  auto scales = cuda::DeviceBuffer::Create(scale_bytes + 16);
  auto dequantized = cuda::DeviceBuffer::Create(dequantized_bytes + 16);
  ASSERT_TRUE(packed.ok() && scales.ok() && dequantized.ok());
  for (size_t offset : {size_t{0}, size_t{4}}) {  // 4: no 16-byte (vector) accesses
    ASSERT_EQ(cudaMemset(packed->get(), 0xEE, packed_bytes + 16), cudaSuccess);
    ASSERT_EQ(cudaMemset(scales->get(), 0xEE, scale_bytes + 16), cudaSuccess);
    ASSERT_EQ(cudaMemset(dequantized->get(), 0xEE, dequantized_bytes + 16), cudaSuccess);
    cuda::DeviceOutputs outputs;
    outputs.packed = packed->as<uint8_t>() + offset;
    outputs.scales = scales->as<uint8_t>() + offset;
    outputs.dequantized = reinterpret_cast<float*>(dequantized->as<uint8_t>() + offset);
    auto result = gpu_->QuantizeDeviceToDevice(d->view, d->importance_view, options, outputs);
    ASSERT_TRUE(result.ok()) << result.status();
    EXPECT_GT(result->device_seconds, 0.0);
    EXPECT_EQ(gpu_testing::Bits(result->global_scale), gpu_testing::Bits(expected->global_scale));
    std::vector<uint8_t> p(packed_bytes), s(scale_bytes);
    std::vector<float> q(expected->dequantized.size());
    ASSERT_EQ(cudaMemcpy(p.data(), outputs.packed, packed_bytes, cudaMemcpyDeviceToHost),
              cudaSuccess);
    ASSERT_EQ(cudaMemcpy(s.data(), outputs.scales, scale_bytes, cudaMemcpyDeviceToHost),
              cudaSuccess);
    ASSERT_EQ(cudaMemcpy(q.data(), outputs.dequantized, dequantized_bytes, cudaMemcpyDeviceToHost),
              cudaSuccess);
    EXPECT_TRUE(p == expected->packed) << "offset " << offset;
    EXPECT_TRUE(s == expected->scales) << "offset " << offset;
    EXPECT_EQ(0, std::memcmp(q.data(), expected->dequantized.data(), dequantized_bytes))
        << "offset " << offset;
  }
  // An input view that starts one element into the buffer (not 16-byte aligned).
  HostTensor shifted = t;
  shifted.rows = t.rows - 1;
  shifted.bits16.erase(shifted.bits16.begin());
  shifted.bits16.resize(static_cast<size_t>(shifted.rows * shifted.cols));
  auto shifted_expected = cpu_->Quantize(shifted.view(), t.importance_view(), options);
  ASSERT_TRUE(shifted_expected.ok());
  TensorView view = d->view;
  view.rows = shifted.rows;
  view.data = d->data.as<uint16_t>() + 1;
  auto shifted_actual = gpu_->QuantizeDevice(view, d->importance_view, options);
  ASSERT_TRUE(shifted_actual.ok()) << shifted_actual.status();
  gpu_testing::ExpectSameQuantization(*shifted_expected, *shifted_actual, "unaligned input");
}

// A device pointer off its element alignment would make the kernels fault (a sticky error that
// loses the context): refused before any launch, naming the field, and the backend stays usable.
TEST_F(CudaBackendTest, MisalignedDevicePointersAreInvalidArgument) {
  Case c;
  c.dtype = DType::kBF16;
  c.layout = ImportanceLayout::kPerElement;
  c.objective = Objective::kWmse;
  c.rows = 4;
  c.cols = 64;
  const HostTensor t = gpu_testing::MakeTensor(c, 12);
  QuantizeOptions options = gpu_testing::MakeOptions(c, t);
  auto d = Upload(t);
  ASSERT_TRUE(d.ok()) << d.status();
  const auto expect_refused = [&](const TensorView& in, const ImportanceView& imp,
                                  const QuantizeOptions& o, const char* field) {
    auto q = gpu_->QuantizeDevice(in, imp, o);
    ASSERT_FALSE(q.ok()) << field;
    EXPECT_EQ(q.status().code(), absl::StatusCode::kInvalidArgument) << q.status();
    const std::string message(q.status().message());
    EXPECT_NE(message.find(field), std::string::npos) << message;
    EXPECT_NE(message.find("not aligned"), std::string::npos) << message;
  };
  TensorView odd_input = d->view;
  odd_input.data = d->data.as<uint8_t>() + 1;
  odd_input.rows = 2;
  expect_refused(odd_input, {}, {}, "input.data");
  TensorView short_view = d->view;
  short_view.rows = 2;
  ImportanceView odd_importance = d->importance_view;
  odd_importance.data = reinterpret_cast<const float*>(d->importance.as<uint8_t>() + 2);
  odd_importance.size = short_view.elements();
  expect_refused(short_view, odd_importance, options, "importance.data");
  auto buffers = cuda::DeviceBuffer::Create(4096);
  ASSERT_TRUE(buffers.ok());
  cuda::DeviceOutputs outputs;
  outputs.packed = buffers->as<uint8_t>();
  outputs.scales = buffers->as<uint8_t>() + 1024;
  outputs.dequantized = reinterpret_cast<float*>(buffers->as<uint8_t>() + 2048 + 2);
  QuantizeOptions dequantize = options;
  dequantize.want_dequantized = true;
  auto q = gpu_->QuantizeDeviceToDevice(d->view, d->importance_view, dequantize, outputs);
  ASSERT_FALSE(q.ok());
  EXPECT_EQ(q.status().code(), absl::StatusCode::kInvalidArgument) << q.status();
  EXPECT_NE(std::string(q.status().message()).find("outputs.dequantized"), std::string::npos)
      << q.status();
  // Still usable, and byte-identical.
  CheckAgainstCpu(t, options, "after the refusals");
}

// A kernel fault loses the CUDA context: every later call on the device fails. The backend says
// so (Unavailable, "the CUDA context is lost"), then refuses work with Unavailable naming the
// first error, and health() reports it, so a service can ask to be restarted. Provoked on the
// simulated device only: on a GPU the fault would also break every later test in this process.
TEST_F(CudaBackendTest, AKernelFaultLosesTheContextAndTheBackendSaysSo) {
  if (gpu_->name().find("simulated") == std::string_view::npos) {
    GTEST_SKIP() << "provoking a kernel fault on a real GPU would break the later tests";
  }
  const HostTensor t = gpu_testing::MakeTensor(DType::kF32, 64, 64, ImportanceLayout::kNone, 13);
  {
    auto d = Upload(t);
    ASSERT_TRUE(d.ok()) << d.status();
    auto too_small = cuda::DeviceBuffer::Create(16);  // the outputs need 2048 + 256 bytes
    ASSERT_TRUE(too_small.ok());
    cuda::DeviceOutputs outputs;
    outputs.packed = too_small->as<uint8_t>();
    outputs.scales = too_small->as<uint8_t>();
    auto faulted = gpu_->QuantizeDeviceToDevice(d->view, {}, {}, outputs);
    ASSERT_FALSE(faulted.ok());
    EXPECT_EQ(faulted.status().code(), absl::StatusCode::kUnavailable) << faulted.status();
    const std::string first(faulted.status().message());
    EXPECT_NE(first.find("cudaErrorIllegalAddress"), std::string::npos) << first;
    EXPECT_NE(first.find("the CUDA context is lost"), std::string::npos) << first;
  }
  EXPECT_EQ(gpu_->health().code(), absl::StatusCode::kUnavailable) << gpu_->health();
  for (int attempt = 0; attempt < 2; ++attempt) {
    auto refused = gpu_->Quantize(t.view(), {}, {});
    ASSERT_FALSE(refused.ok());
    EXPECT_EQ(refused.status().code(), absl::StatusCode::kUnavailable) << refused.status();
    const std::string message(refused.status().message());
    EXPECT_NE(message.find("lost its CUDA context"), std::string::npos) << message;
    EXPECT_NE(message.find("cudaErrorIllegalAddress"), std::string::npos) << message;
  }
  // What a new process would get: a fresh context (here: the simulated device reset).
  gpu_.reset();
  ASSERT_EQ(cudaDeviceReset(), cudaSuccess);
  auto fresh = cuda::CudaBackend::Create(0);
  ASSERT_TRUE(fresh.ok()) << fresh.status();
  gpu_ = std::move(*fresh);
  EXPECT_TRUE(gpu_->health().ok());
  CheckAgainstCpu(t, {}, "after a reset");
}

// With a data-dependent g a host input stays on the device between its two passes. Up to 256
// MiB it lives in a buffer the backend keeps (no cudaMalloc/cudaFree per call): device memory
// in use grows by at least the input on the first call, then stays put through a smaller and
// the same call, whose bytes are still the CPU's.
TEST_F(CudaBackendTest, HostCallsKeepTheirResidentInputBuffer) {
  const HostTensor big =
      gpu_testing::MakeTensor(DType::kF32, 512, 4096, ImportanceLayout::kNone, 23);
  const HostTensor small =
      gpu_testing::MakeTensor(DType::kBF16, 100, 1000, ImportanceLayout::kNone, 24);
  // Both dtypes' kernels run once through the device path first (it keeps no input buffer): a
  // lazily loaded module takes device memory on first use, which must not count below, also
  // when this test runs alone.
  for (const HostTensor* t : {&big, &small}) {
    auto d = Upload(*t);
    ASSERT_TRUE(d.ok()) << d.status();
    ASSERT_TRUE(gpu_->QuantizeDevice(d->view, {}, {}).ok());
  }
  auto before = cuda::CudaMemoryUsedBytes(gpu_->device());
  ASSERT_TRUE(before.ok()) << before.status();
  CheckAgainstCpu(big, {}, "first call", /*device_path=*/false);
  auto after_first = cuda::CudaMemoryUsedBytes(gpu_->device());
  ASSERT_TRUE(after_first.ok()) << after_first.status();
  EXPECT_GE(*after_first - *before, static_cast<int64_t>(big.view().bytes()));
  CheckAgainstCpu(small, {}, "smaller call", /*device_path=*/false);
  CheckAgainstCpu(big, {}, "same call again", /*device_path=*/false);
  // Unchanged up to the driver's own small allocations (device memory moves in 2 MiB pages): a
  // second buffer would add the input's 8 MiB.
  const int64_t drift = *cuda::CudaMemoryUsedBytes(gpu_->device()) - *after_first;
  EXPECT_LT(drift < 0 ? -drift : drift, static_cast<int64_t>(big.view().bytes() / 2));
  // An input above 256 MiB is resident for its call only, and the kept buffer is freed first
  // (the large one may need its memory): afterwards the device holds about the kept buffer less
  // than before it (the per-chunk metric records grew by a few KiB).
  const HostTensor huge =
      gpu_testing::MakeTensor(DType::kF32, 8200, 8192, ImportanceLayout::kNone, 25);
  ASSERT_GT(huge.view().bytes(), size_t{256} << 20);
  QuantizeOptions absmax;  // the fastest method: the test is about the buffers
  absmax.method = Method::kAbsMax;
  CheckAgainstCpu(huge, absmax, "input above the kept size", /*device_path=*/false);
  auto after_huge = cuda::CudaMemoryUsedBytes(gpu_->device());
  ASSERT_TRUE(after_huge.ok()) << after_huge.status();
  EXPECT_LT(*after_huge, *after_first - static_cast<int64_t>(big.view().bytes() / 2));
}

TEST_F(CudaBackendTest, RepeatedCallsGiveIdenticalMetrics) {
  Case c;
  c.layout = ImportanceLayout::kPerElement;
  c.objective = Objective::kWmse;
  c.rows = 700;
  c.cols = 1000;
  const HostTensor t = gpu_testing::MakeTensor(c, 11);
  const QuantizeOptions options = gpu_testing::MakeOptions(c, t);
  auto a = gpu_->Quantize(t.view(), t.importance_view(), options);
  auto b = gpu_->Quantize(t.view(), t.importance_view(), options);
  ASSERT_TRUE(a.ok() && b.ok());
  EXPECT_EQ(a->metrics.mse, b->metrics.mse);
  EXPECT_EQ(a->metrics.wmse, b->metrics.wmse);
  EXPECT_EQ(a->metrics.absmax_mse, b->metrics.absmax_mse);
  EXPECT_EQ(a->packed, b->packed);
}

TEST_F(CudaBackendTest, ConcurrentCallersGetCorrectResults) {
  std::vector<HostTensor> tensors;
  for (int i = 0; i < 4; ++i) {
    tensors.push_back(
        gpu_testing::MakeTensor(DType::kBF16, 300 + i, 528, ImportanceLayout::kNone, 20 + i));
  }
  std::vector<absl::StatusOr<QuantizedTensor>> results(tensors.size());
  std::vector<std::thread> threads;
  for (size_t i = 0; i < tensors.size(); ++i) {
    threads.emplace_back([&, i] { results[i] = gpu_->Quantize(tensors[i].view(), {}, {}); });
  }
  for (std::thread& thread : threads) thread.join();
  for (size_t i = 0; i < tensors.size(); ++i) {
    ASSERT_TRUE(results[i].ok()) << results[i].status();
    auto expected = cpu_->Quantize(tensors[i].view(), {}, {});
    ASSERT_TRUE(expected.ok());
    gpu_testing::ExpectSameQuantization(*expected, *results[i], "thread " + std::to_string(i));
  }
}

bool LargeMode() {
  const char* large = std::getenv("NVFP4_GPU_LARGE");
  return large != nullptr && std::string(large) == "1";
}

TEST_F(CudaBackendTest, LargeTensorsAreByteIdenticalToTheCpu) {
  if (!LargeMode()) GTEST_SKIP() << "set NVFP4_GPU_LARGE=1 for the 64M-element tensors";
  // 8192 x 8192 bf16 (67.1M elements), both paths, the methods the benchmark runs.
  {
    const HostTensor t =
        gpu_testing::MakeTensor(DType::kBF16, 8192, 8192, ImportanceLayout::kPerColumn, 31);
    for (Case c : {Case{Method::kAbsMax}, Case{Method::kFourOverSix}, Case{Method::kScaleSweep},
                   Case{Method::kScaleSweep, Objective::kWmse}, Case{Method::kExhaustive}}) {
      c.dtype = DType::kBF16;
      c.layout = ImportanceLayout::kPerColumn;
      c.rows = c.cols = 8192;
      c.want_dequantized = c.method == Method::kScaleSweep;
      CheckAgainstCpu(t, gpu_testing::MakeOptions(c, t), c.Name() + " (large)",
                      /*device_path=*/c.method != Method::kExhaustive);
    }
  }
  // 4099 x 16383 f32 (67.2M elements, padded rows), per-element importance, given amax.
  {
    Case c;
    c.method = Method::kScaleSweep;
    c.objective = Objective::kWmse;
    c.layout = ImportanceLayout::kPerElement;
    c.dtype = DType::kF32;
    c.rows = 4099;
    c.cols = 16383;
    c.scale_mode = gpu_testing::ScaleMode::kGivenAmax;
    c.want_dequantized = false;
    const HostTensor t = gpu_testing::MakeTensor(c, 32);
    CheckAgainstCpu(t, gpu_testing::MakeOptions(c, t), c.Name() + " (large)");
  }
}

}  // namespace
}  // namespace nvfp4
