// nvfp4_cuda_bench: device-resident NVFP4 quantisation throughput against the device-memory
// roofline.
//
//   nvfp4_cuda_bench [--rows N] [--cols N] [--iters N] [--warmup N] [--device D] [--json]
//                    [--json-file PATH] [--device-only] [--profile]
//
// --json prints JSON instead of the table; --json-file also writes it to PATH; --device-only
// skips the host path; --profile (for Nsight Compute) makes one held call each of absmax and
// scalesweep (mse) on the device and nothing else: exactly four kernels match the scan and
// quantize kernels' names, in that order.
// Measures the device-to-device copy bandwidth (cudaMemcpyAsync of the input tensor; bytes read
// plus written), then runs CudaBackend::QuantizeDeviceToDevice on a bf16 tensor already in
// device memory (default 8192 x 8192) for absmax, scalesweep (mse), then both again with the
// tensor's amax given (one pass: no scan of the input for g, as a calibrated or streaming job),
// four-over-six, scalesweep (wmse, per-column importance) and exhaustive. Each is warmed up, then
// the best of N runs is reported, timed with CUDA events around the backend's kernels
// (device_seconds) and, for reference, the host wall time of the whole call. For device_seconds
// the legacy stream is first held by a host function that sleeps 1 ms, which the backend's
// stream follows: every launch of the call is queued before the start event fires, so the time
// is the kernels' own, not the host's launch rate (a pipelined caller's case; a one-pass AbsMax
// is ~60 us, and each launch costs the host a few). Each iteration then runs the call again
// unheld for the wall time, and its device time is kept too (device_ms_as_called). Roofline
// fraction = (bytes a one-pass quantiser must move: input read once, packed values and scales
// written) / copy bandwidth / time; with g from the tensor the input is read twice, which caps that
// fraction near 56 % at 8192 x 8192 bf16. "x absmax" compares with the AbsMax run of the same
// pass count. The targets and the ratios to its PyTorch figures (plain AbsMax ~23
// Gelem/s, torch.compile sweep ~1.8 Gelem/s on an H100) follow the table.
// Host path: the pinned host-to-device copy bandwidth of the input, then CudaBackend::Quantize
// of the same tensor in ordinary (pageable) host memory, best wall time of N, as a fraction of
// that bandwidth (the host path's promise: large host tensors at PCIe/NVLink speed).
// Without a CUDA device it prints "no CUDA device" and exits 0 (1, with the CUDA runtime's
// reason, when NVFP4_REQUIRE_GPU is set).
#include <cuda_runtime.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <iterator>
#include <limits>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "kernels/cuda/cuda_backend.h"
#include "kernels/cuda/cuda_raii.h"
#include "kernels/numerics/half.h"
#include "kernels/numerics/method.h"

namespace nvfp4::cuda {
namespace {

struct Flags {
  int64_t rows = 8192;
  int64_t cols = 8192;
  int iters = 10;
  int warmup = 2;
  int device = 0;
  bool json = false;
  bool device_only = false;
  bool profile = false;
  std::string json_file;
};

bool ParseFlags(int argc, char** argv, Flags* flags) {
  for (int i = 1; i < argc; ++i) {
    const std::string_view arg = argv[i];
    const auto value = [&]() -> const char* { return i + 1 < argc ? argv[++i] : nullptr; };
    if (arg == "--json") {
      flags->json = true;
    } else if (arg == "--device-only") {
      flags->device_only = true;
    } else if (arg == "--profile") {
      flags->profile = true;
      flags->device_only = true;
    } else if (arg == "--json-file") {
      const char* v = value();
      if (v == nullptr) return false;
      flags->json_file = v;
    } else if (arg == "--rows" || arg == "--cols" || arg == "--iters" || arg == "--warmup" ||
               arg == "--device") {
      const char* v = value();
      if (v == nullptr) return false;
      const long long n = std::atoll(v);
      if (arg == "--rows") flags->rows = n;
      if (arg == "--cols") flags->cols = n;
      if (arg == "--iters") flags->iters = static_cast<int>(n);
      if (arg == "--warmup") flags->warmup = static_cast<int>(n);
      if (arg == "--device") flags->device = static_cast<int>(n);
    } else {
      return false;
    }
  }
  return flags->rows > 0 && flags->cols > 0 && flags->iters > 0 && flags->warmup >= 0;
}

// Deterministic heavy-tailed data: Gaussian values with a per-row scale and ~0.1% outliers, so
// blocks differ and the search has work to do (never time on zeros).
uint64_t SplitMix(uint64_t* state) {
  uint64_t z = (*state += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

double Uniform01(uint64_t* state) {
  return (static_cast<double>(SplitMix(state) >> 11) + 0.5) * (1.0 / 9007199254740992.0);
}

std::vector<uint16_t> MakeBf16Tensor(int64_t rows, int64_t cols) {
  std::vector<uint16_t> out(static_cast<size_t>(rows * cols));
  uint64_t state = 12345;
  for (int64_t r = 0; r < rows; ++r) {
    const double row_scale = std::exp(2.0 * (Uniform01(&state) - 0.5));
    for (int64_t c = 0; c < cols; c += 2) {
      const double u1 = Uniform01(&state), u2 = Uniform01(&state);
      const double radius = std::sqrt(-2.0 * std::log(u1)) * row_scale;
      double v[2] = {radius * std::cos(6.283185307179586 * u2),
                     radius * std::sin(6.283185307179586 * u2)};
      for (int j = 0; j < 2 && c + j < cols; ++j) {
        if ((SplitMix(&state) & 1023) == 0) v[j] *= 20.0;
        out[static_cast<size_t>(r * cols + c + j)] = FloatToBf16Bits(static_cast<float>(v[j]));
      }
    }
  }
  return out;
}

struct Config {
  const char* label;
  Method method;
  Objective objective;
  bool importance;
  bool given_amax;  // one pass; else g from the tensor (a scan pass first)
};

// The PyTorch reference figures on an H100 (not measured here).
constexpr double kTorchAbsMaxGelemPerS = 23.0;
constexpr double kTorchCompileSweepGelemPerS = 1.8;

struct Row {
  std::string label;
  bool given_amax = false;
  double device_seconds = 0;            // launches queued ahead (the legacy stream held)
  double device_seconds_as_called = 0;  // the same call unheld
  double wall_seconds = 0;
  double candidates_per_block = 0;
  double gain = 0;
};

int Fail(const absl::Status& status) {
  std::fprintf(stderr, "nvfp4_cuda_bench: %s\n", status.ToString().c_str());
  return 1;
}

void SleepOneMillisecond(void*) { std::this_thread::sleep_for(std::chrono::milliseconds(1)); }

// Holds the legacy stream (which the backend's calls follow) for 1 ms, so that a call made now
// has queued all its launches before its first kernel can start.
absl::Status HoldLegacyStream() {
  const cudaError_t error = cudaLaunchHostFunc(cudaStreamLegacy, SleepOneMillisecond, nullptr);
  if (error == cudaSuccess) return absl::OkStatus();
  return absl::InternalError(absl::StrCat("cudaLaunchHostFunc: ", cudaGetErrorString(error)));
}

int Run(const Flags& flags) {
  if (CudaDeviceCount() == 0) {
    // NVFP4_REQUIRE_GPU (device_check.sh, on a machine that lists a GPU): not seeing it is an
    // error, with the runtime's reason.
    const char* require = std::getenv("NVFP4_REQUIRE_GPU");
    if (require != nullptr && *require != '\0' && std::string_view(require) != "0") {
      return Fail(CudaBackend::Create(flags.device).status());
    }
    std::printf("no CUDA device\n");
    return 0;
  }
  auto backend_or = CudaBackend::Create(flags.device);
  if (!backend_or.ok()) return Fail(backend_or.status());
  CudaBackend& backend = **backend_or;
  if (cudaSetDevice(flags.device) != cudaSuccess) return Fail(absl::InternalError("cudaSetDevice"));

  const int64_t rows = flags.rows, cols = flags.cols;
  const int64_t elements = rows * cols;
  const int64_t padded_cols = (cols + 15) / 16 * 16;
  const size_t input_bytes = static_cast<size_t>(elements) * 2;
  const std::vector<uint16_t> host = MakeBf16Tensor(rows, cols);
  std::vector<float> column_importance(static_cast<size_t>(cols));
  uint64_t state = 777;
  for (float& w : column_importance)
    w = static_cast<float>(std::exp(2.0 * (Uniform01(&state) - 0.5)));

  auto input = DeviceBuffer::Create(input_bytes);
  auto copy = DeviceBuffer::Create(input_bytes);
  auto importance = DeviceBuffer::Create(static_cast<size_t>(cols) * 4);
  auto packed = DeviceBuffer::Create(static_cast<size_t>(rows * padded_cols / 2));
  auto scales = DeviceBuffer::Create(static_cast<size_t>(rows * padded_cols / 16));
  for (const auto* buffer : {&input, &copy, &importance, &packed, &scales}) {
    if (!buffer->ok()) return Fail(buffer->status());
  }
  if (auto s = CudaStatus(
          cudaMemcpy(input->get(), host.data(), input_bytes, cudaMemcpyHostToDevice), "cudaMemcpy");
      !s.ok()) {
    return Fail(s);
  }
  if (auto s = CudaStatus(cudaMemcpy(importance->get(), column_importance.data(),
                                     column_importance.size() * 4, cudaMemcpyHostToDevice),
                          "cudaMemcpy");
      !s.ok()) {
    return Fail(s);
  }

  // Copy roofline: best of N device-to-device copies of the input, read + write bytes.
  auto stream = Stream::Create();
  auto begin = Event::Create(true);
  auto end = Event::Create(true);
  if (!stream.ok() || !begin.ok() || !end.ok()) return Fail(absl::InternalError("stream/event"));
  double copy_seconds = std::numeric_limits<double>::infinity();
  for (int i = 0; i < flags.warmup + flags.iters; ++i) {
    cudaEventRecord(begin->get(), stream->get());
    cudaMemcpyAsync(copy->get(), input->get(), input_bytes, cudaMemcpyDeviceToDevice,
                    stream->get());
    cudaEventRecord(end->get(), stream->get());
    if (auto s = CudaStatus(cudaEventSynchronize(end->get()), "copy"); !s.ok()) return Fail(s);
    float ms = 0;
    cudaEventElapsedTime(&ms, begin->get(), end->get());
    if (i >= flags.warmup) copy_seconds = std::min(copy_seconds, ms * 1e-3);
  }
  const double copy_bandwidth = 2.0 * static_cast<double>(input_bytes) / copy_seconds;

  const Config configs[] = {
      {"absmax", Method::kAbsMax, Objective::kMse, false, false},
      {"scalesweep-mse", Method::kScaleSweep, Objective::kMse, false, false},
      {"absmax amax", Method::kAbsMax, Objective::kMse, false, true},
      {"scalesweep amax", Method::kScaleSweep, Objective::kMse, false, true},
      {"four-over-six", Method::kFourOverSix, Objective::kMse, false, false},
      {"scalesweep-wmse", Method::kScaleSweep, Objective::kWmse, true, false},
      {"exhaustive", Method::kExhaustive, Objective::kMse, false, false},
  };
  float tensor_amax = 0.0f;
  for (uint16_t bits : host) tensor_amax = std::max(tensor_amax, std::fabs(Bf16BitsToFloat(bits)));
  // Host path: pinned host-to-device bandwidth of the input, then the host-memory entry point.
  // (--device-only: neither; h2d_bandwidth_gbs is then 0 and host_path empty.)
  double h2d_seconds = std::numeric_limits<double>::infinity();
  if (!flags.device_only) {
    auto pinned = PinnedBuffer::Create(input_bytes);
    if (!pinned.ok()) return Fail(pinned.status());
    std::memcpy(pinned->get(), host.data(), input_bytes);
    for (int i = 0; i < flags.warmup + flags.iters; ++i) {
      cudaEventRecord(begin->get(), stream->get());
      cudaMemcpyAsync(copy->get(), pinned->get(), input_bytes, cudaMemcpyHostToDevice,
                      stream->get());
      cudaEventRecord(end->get(), stream->get());
      if (auto s = CudaStatus(cudaEventSynchronize(end->get()), "h2d copy"); !s.ok()) {
        return Fail(s);
      }
      float ms = 0;
      cudaEventElapsedTime(&ms, begin->get(), end->get());
      if (i >= flags.warmup) h2d_seconds = std::min(h2d_seconds, ms * 1e-3);
    }
  }
  const double h2d_bandwidth = static_cast<double>(input_bytes) / h2d_seconds;
  struct HostConfig {
    const char* label;
    Method method;
    bool given_amax;  // one pass (as a streaming nvfp4d job); else g from the tensor, two passes
  };
  const HostConfig host_configs[] = {
      {"absmax", Method::kAbsMax, false},
      {"absmax amax", Method::kAbsMax, true},
      {"scalesweep amax", Method::kScaleSweep, true},
  };
  std::vector<Row> host_results;
  for (const HostConfig& config : host_configs) {
    if (flags.device_only) break;
    QuantizeOptions options;
    options.method = config.method;
    if (config.given_amax) options.amax = tensor_amax;
    Row row;
    row.label = config.label;
    row.wall_seconds = std::numeric_limits<double>::infinity();
    for (int i = 0; i < flags.warmup + flags.iters; ++i) {
      auto result = backend.Quantize({DType::kBF16, rows, cols, host.data()}, {}, options);
      if (!result.ok()) return Fail(result.status());
      if (i >= flags.warmup) row.wall_seconds = std::min(row.wall_seconds, result->metrics.seconds);
      row.gain = ObjectiveGain(result->metrics);
    }
    host_results.push_back(row);
  }

  std::vector<Row> results;
  for (const Config& config : configs) {
    if (flags.profile && results.size() == 2) break;  // absmax and scalesweep-mse
    QuantizeOptions options;
    options.method = config.method;
    options.objective = config.objective;
    if (config.given_amax) options.amax = tensor_amax;
    const TensorView view{DType::kBF16, rows, cols, input->get()};
    ImportanceView weights;
    if (config.importance) {
      weights = {ImportanceLayout::kPerColumn, importance->as<float>(), cols};
    }
    DeviceOutputs outputs;
    outputs.packed = packed->as<uint8_t>();
    outputs.scales = scales->as<uint8_t>();
    Row row;
    row.label = config.label;
    row.given_amax = config.given_amax;
    row.device_seconds = row.wall_seconds = row.device_seconds_as_called =
        std::numeric_limits<double>::infinity();
    // The call with its launches queued behind the 1 ms hold.
    const auto held_call = [&]() -> absl::StatusOr<DeviceQuantizeResult> {
      if (absl::Status held = HoldLegacyStream(); !held.ok()) return held;
      return backend.QuantizeDeviceToDevice(view, weights, options, outputs);
    };
    if (flags.profile) {
      if (auto result = held_call(); !result.ok()) return Fail(result.status());
      results.push_back(row);
      continue;
    }
    for (int i = 0; i < flags.warmup + flags.iters; ++i) {
      auto result = held_call();
      if (!result.ok()) return Fail(result.status());
      auto as_called = backend.QuantizeDeviceToDevice(view, weights, options, outputs);
      if (!as_called.ok()) return Fail(as_called.status());
      if (i < flags.warmup) continue;
      row.device_seconds = std::min(row.device_seconds, result->device_seconds);
      row.device_seconds_as_called =
          std::min(row.device_seconds_as_called, as_called->device_seconds);
      row.wall_seconds = std::min(row.wall_seconds, as_called->metrics.seconds);
      row.candidates_per_block = result->metrics.candidates_per_block;
      row.gain = ObjectiveGain(result->metrics);
    }
    results.push_back(row);
  }
  if (flags.profile) {
    std::printf("profile run: one held call each of absmax and scalesweep-mse on %s\n",
                std::string(backend.name()).c_str());
    return 0;
  }

  // Bytes a single-pass quantiser must move: input once, packed values and scales once.
  const double bytes = static_cast<double>(input_bytes) +
                       static_cast<double>(rows * padded_cols / 2) +
                       static_cast<double>(rows * padded_cols / 16);
  const double roofline_seconds = bytes / copy_bandwidth;
  const auto find = [&](std::string_view label) -> const Row& {
    for (const Row& r : results) {
      if (r.label == label) return r;
    }
    return results.front();
  };
  const Row& absmax = find("absmax");
  const Row& absmax_one_pass = find("absmax amax");
  // The AbsMax run with the same pass count.
  const auto vs_absmax = [&](const Row& r) {
    return r.device_seconds / (r.given_amax ? absmax_one_pass : absmax).device_seconds;
  };
  const auto gelem_per_s = [&](const Row& r) {
    return static_cast<double>(elements) / r.device_seconds / 1e9;
  };
  const auto roofline_fraction = [&](const Row& r) { return roofline_seconds / r.device_seconds; };
  struct Target {
    std::string name;
    double value;
    double goal;
    bool at_most;  // value <= goal (else >=)
  };
  const Target targets[] = {
      {"absmax one pass, roofline fraction", roofline_fraction(absmax_one_pass), 0.80, false},
      {"scalesweep-mse / absmax (g from the tensor)", vs_absmax(find("scalesweep-mse")), 1.5, true},
      {"scalesweep-mse / absmax (amax given)", vs_absmax(find("scalesweep amax")), 1.5, true},
      {"scalesweep-wmse / absmax", vs_absmax(find("scalesweep-wmse")), 2.0, true},
  };
  // A plain PyTorch AbsMax reads the tensor for its amax first too: compare the two-pass runs.
  const double torch_absmax_ratio = gelem_per_s(absmax) / kTorchAbsMaxGelemPerS;
  const double torch_sweep_ratio =
      gelem_per_s(find("scalesweep-mse")) / kTorchCompileSweepGelemPerS;

  std::string json = absl::StrFormat(
      "{\"device\": \"%s\", \"rows\": %d, \"cols\": %d, \"dtype\": \"bf16\", "
      "\"copy_bandwidth_gbs\": %.3f, \"roofline_ms\": %.6f, \"methods\": [",
      std::string(backend.name()), rows, cols, copy_bandwidth / 1e9, roofline_seconds * 1e3);
  for (size_t i = 0; i < results.size(); ++i) {
    const Row& r = results[i];
    absl::StrAppendFormat(&json,
                          "%s{\"method\": \"%s\", \"one_pass\": %s, \"device_ms\": %.6f, "
                          "\"device_ms_as_called\": %.6f, \"wall_ms\": %.6f, "
                          "\"gelem_per_s\": %.4f, \"roofline_fraction\": %.4f, "
                          "\"vs_absmax\": %.4f, \"candidates_per_block\": %.4f, \"gain\": %.6f}",
                          i == 0 ? "" : ", ", r.label, r.given_amax ? "true" : "false",
                          r.device_seconds * 1e3, r.device_seconds_as_called * 1e3,
                          r.wall_seconds * 1e3, gelem_per_s(r), roofline_fraction(r), vs_absmax(r),
                          r.candidates_per_block, r.gain);
  }
  json += "], \"targets\": [";
  for (size_t i = 0; i < std::size(targets); ++i) {
    const Target& t = targets[i];
    const bool met = t.at_most ? t.value <= t.goal : t.value >= t.goal;
    absl::StrAppendFormat(&json,
                          "%s{\"name\": \"%s\", \"value\": %.4f, \"goal\": %.2f, "
                          "\"at_most\": %s, \"met\": %s}",
                          i == 0 ? "" : ", ", t.name, t.value, t.goal, t.at_most ? "true" : "false",
                          met ? "true" : "false");
  }
  absl::StrAppendFormat(&json,
                        "], \"vs_torch_absmax\": %.3f, \"vs_torch_compile_sweep\": %.3f, "
                        "\"h2d_bandwidth_gbs\": %.3f, \"host_path\": [",
                        torch_absmax_ratio, torch_sweep_ratio, h2d_bandwidth / 1e9);
  for (size_t i = 0; i < host_results.size(); ++i) {
    const Row& r = host_results[i];
    absl::StrAppendFormat(&json,
                          "%s{\"method\": \"%s\", \"wall_ms\": %.6f, \"input_gbs\": %.3f, "
                          "\"h2d_fraction\": %.4f}",
                          i == 0 ? "" : ", ", r.label, r.wall_seconds * 1e3,
                          static_cast<double>(input_bytes) / r.wall_seconds / 1e9,
                          h2d_seconds / r.wall_seconds);
  }
  json += "]}\n";
  if (!flags.json_file.empty()) {
    std::FILE* file = std::fopen(flags.json_file.c_str(), "w");
    if (file == nullptr) return Fail(absl::InternalError("cannot write " + flags.json_file));
    std::fputs(json.c_str(), file);
    std::fclose(file);
  }
  if (flags.json) {
    std::fputs(json.c_str(), stdout);
    return 0;
  }
  std::printf(
      "%s, bf16 [%lld, %lld] device-resident; copy bandwidth %.1f GB/s (read+write), "
      "roofline %.3f ms for %.1f MB\n",
      std::string(backend.name()).c_str(), static_cast<long long>(rows),
      static_cast<long long>(cols), copy_bandwidth / 1e9, roofline_seconds * 1e3, bytes / 1e6);
  std::printf("%-16s %5s %10s %10s %10s %9s %9s %9s %8s %8s\n", "method", "pass", "device ms",
              "as called", "wall ms", "Gelem/s", "roofline", "x absmax", "cand/blk", "gain");
  for (const Row& r : results) {
    std::printf("%-16s %5s %10.3f %10.3f %10.3f %9.2f %8.1f%% %9.2f %8.2f %8.4f\n", r.label.c_str(),
                r.given_amax ? "one" : "two", r.device_seconds * 1e3,
                r.device_seconds_as_called * 1e3, r.wall_seconds * 1e3, gelem_per_s(r),
                100.0 * roofline_fraction(r), vs_absmax(r), r.candidates_per_block, r.gain);
  }
  for (const Row& r : results) {
    // The hold can only remove launch gaps: a held time clearly above the unheld one means it
    // did not take, and the device figures then include the host's launch rate.
    if (r.device_seconds > 1.03 * r.device_seconds_as_called) {
      std::printf("note: %s: held %.3f ms > as called %.3f ms (+3 %%): did the stream hold take?\n",
                  r.label.c_str(), r.device_seconds * 1e3, r.device_seconds_as_called * 1e3);
    }
  }
  std::printf("\ntargets (issue, H100):\n");
  for (const Target& t : targets) {
    const bool met = t.at_most ? t.value <= t.goal : t.value >= t.goal;
    std::printf("  %-46s %7.3f  goal %s %.2f  %s\n", t.name.c_str(), t.value,
                t.at_most ? "<=" : ">=", t.goal, met ? "met" : "MISSED");
  }
  std::printf(
      "  vs the issue's PyTorch figures: absmax %.1fx a plain PyTorch AbsMax (%.0f Gelem/s), "
      "scalesweep-mse %.1fx a torch.compile sweep (%.1f Gelem/s)\n",
      torch_absmax_ratio, kTorchAbsMaxGelemPerS, torch_sweep_ratio, kTorchCompileSweepGelemPerS);
  if (!host_results.empty()) {
    std::printf("\nhost path (pageable host bf16 in, host out): pinned H2D %.1f GB/s\n",
                h2d_bandwidth / 1e9);
    std::printf("%-16s %10s %12s %9s\n", "method", "wall ms", "input GB/s", "x H2D");
    for (const Row& r : host_results) {
      std::printf("%-16s %10.3f %12.2f %8.1f%%\n", r.label.c_str(), r.wall_seconds * 1e3,
                  static_cast<double>(input_bytes) / r.wall_seconds / 1e9,
                  100.0 * h2d_seconds / r.wall_seconds);
    }
  }
  return 0;
}

}  // namespace
}  // namespace nvfp4::cuda

int main(int argc, char** argv) {
  nvfp4::cuda::Flags flags;
  if (!nvfp4::cuda::ParseFlags(argc, argv, &flags)) {
    std::fprintf(stderr,
                 "usage: nvfp4_cuda_bench [--rows N] [--cols N] [--iters N] [--warmup N] "
                 "[--device D] [--json] [--json-file PATH] [--device-only] [--profile]\n");
    return 2;
  }
  return nvfp4::cuda::Run(flags);
}
