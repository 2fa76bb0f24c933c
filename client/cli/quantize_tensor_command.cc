#include "client/cli/quantize_tensor_command.h"

#include <atomic>
#include <cstdio>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "client/cli/common_flags.h"
#include "client/cli/exit_codes.h"
#include "client/cli/progress.h"
#include "client/cli/remote_commands.h"
#include "client/cli/report.h"
#include "client/cli/tensor_input.h"
#include "client/io/npy.h"
#include "common/cli_checks.h"
#include "common/path_checks.h"
#include "common/status_macros.h"
#include "common/version.h"
#include "kernels/cpu/row_kernel.h"
#include "kernels/dequantize.h"
#include "server/checkpoint/safetensors.h"

namespace nvfp4::cli {
namespace {

struct QuantizeTensorFlags {
  std::string input;
  std::string output;
  std::optional<std::string> dtype;
  std::optional<std::string> shape;
  std::optional<std::string> importance;
  std::optional<float> amax;
  std::optional<float> global_scale;
  std::optional<std::string> dequantized;
  std::string dequantized_dtype = "f32";
  bool json = false;
  EngineFlags engine;
  QuantizeFlags quantize;
  RemoteFlags remote;
};

absl::Status WriteModelOptTensor(const std::string& path, const QuantizeOptions& options,
                                 const QuantizedTensor& q) {
  const std::vector<checkpoint::SafetensorsBlob> blobs = {
      {{"weight", "U8", {q.rows, q.padded_cols / 2}}, q.packed.data(), q.packed.size()},
      {{"weight_scale", "F8_E4M3", {q.rows, q.padded_cols / 16}}, q.scales.data(), q.scales.size()},
      {{"weight_scale_2", "F32", {}}, &q.global_scale, sizeof(float)},
  };
  const std::map<std::string, std::string> metadata = {
      {"format", "pt"},  // the safetensors key's meaning (framework), as in our checkpoints
      {"producer", absl::StrCat("nvfp4-scalesweep ", kVersion)},
      {"method", std::string(MethodName(options.method))},
      {"objective", std::string(ObjectiveName(options.objective))},
      {"scale_max", absl::StrCat(options.scale_max)},
      {"cols", absl::StrCat(q.cols)},
  };
  return checkpoint::WriteSafetensors(path, blobs, metadata);
}

// The flags naming two files the command would write over each other, or over one it reads
// (a usage error: exit code 2, before anything is read or written); empty when none do.
std::string PathClash(const QuantizeTensorFlags& flags) {
  using Flag = std::pair<std::string, std::string>;  // flag, path
  std::vector<Flag> files = {{"--input", flags.input}};
  if (flags.importance) files.push_back({"--importance", *flags.importance});
  std::vector<Flag> written = {{"--output", flags.output}};
  if (flags.dequantized) written.push_back({"--dequantized", *flags.dequantized});
  // Each output against the inputs and the outputs before it.
  for (const auto& [out_flag, out_path] : written) {
    for (const auto& [flag, path] : files) {
      if (SameFile(out_path, path)) {
        return absl::StrCat(out_flag, " and ", flag, " name the same file (", path, ")");
      }
    }
    files.push_back({out_flag, out_path});
  }
  return "";
}

// A given --amax below the tensor's, or a small --global-scale, makes the largest values
// saturate at 6 * 448 * g: legitimate for a fused group, but worth saying.
void WarnIfSaturated(const LoadedTensor& tensor, float g) {
  const int64_t n = tensor.rows * tensor.cols;
  const cpu::ScanResult scan =
      tensor.dtype == DType::kF32
          ? cpu::ScanF32Scalar(reinterpret_cast<const float*>(tensor.bytes.data()), n)
          : cpu::ScanHalfScalar(tensor.dtype,
                                reinterpret_cast<const uint16_t*>(tensor.bytes.data()), n);
  const double largest = 6.0 * 448.0 * static_cast<double>(g);
  // g = fl(amax / (6 F)) may round below amax / (6 F): allow for that rounding.
  if (static_cast<double>(scan.max_abs) > largest * (1.0 + 1e-6)) {
    std::fprintf(stderr,
                 "nvfp4q: warning: the tensor's max |x| %.6g is above the largest value the "
                 "global scale %.8g represents (6 * 448 * g = %.6g): larger values saturate\n",
                 scan.max_abs, g, largest);
  }
}

absl::StatusOr<int> Run(const QuantizeTensorFlags& flags) {
  if (const std::string clash = PathClash(flags); !clash.empty()) return UsageError(clash);
  ASSIGN_OR_RETURN(QuantizeOptions options, flags.quantize.ToOptions());
  if (options.objective == Objective::kWmse && !flags.importance.has_value()) {
    return UsageError("--objective wmse needs --importance");
  }
  ASSIGN_OR_RETURN(LoadedTensor loaded, LoadTensor(flags.input, flags.dtype, flags.shape));
  // Shared, so a remote upload can send the chunks straight from it (no copy).
  const auto shared_tensor = std::make_shared<const LoadedTensor>(std::move(loaded));
  const LoadedTensor& tensor = *shared_tensor;
  LoadedImportance importance;
  if (flags.importance.has_value()) {
    ASSIGN_OR_RETURN(importance, LoadImportance(*flags.importance, tensor.rows, tensor.cols));
  }
  options.amax = flags.amax;
  options.global_scale = flags.global_scale;
  options.want_dequantized = flags.dequantized.has_value();
  QuantizedTensor q;
  std::string backend_name;
  int threads = 0;
  std::string job_id;
  if (!flags.remote.server.empty()) {
    ASSIGN_OR_RETURN(std::unique_ptr<client::QuantizerClient> client, flags.remote.Connect());
    InterruptCancels interrupt(client.get());
    ProgressBar bar("nvfp4q");
    ASSIGN_OR_RETURN(q, client->QuantizeTensor(
                            shared_tensor, tensor.view(), importance.view(), options, flags.input,
                            [&bar](int64_t done, int64_t total, std::string_view phase) {
                              bar.Update(done, total, phase);
                            },
                            &job_id));
    if (interrupt.interrupted()) return absl::CancelledError("interrupted");
    backend_name = "nvfp4d " + flags.remote.server;
  } else {
    ASSIGN_OR_RETURN(std::unique_ptr<cpu::CpuBackend> backend, flags.engine.MakeBackend());
    std::atomic<bool> cancelled{false};
    options.cancelled = &cancelled;
    InterruptCancels interrupt(nullptr, &cancelled);  // Ctrl-C: the engine stops, exit 7
    ASSIGN_OR_RETURN(q, backend->Quantize(tensor.view(), importance.view(), options));
    options.cancelled = nullptr;
    // A Ctrl-C as the engine finished: still nothing written.
    if (interrupt.interrupted()) return absl::CancelledError("interrupted");
    backend_name = std::string(backend->name());
    threads = backend->threads();
  }
  RETURN_IF_ERROR(WriteModelOptTensor(flags.output, options, q));
  if (flags.amax.has_value() || flags.global_scale.has_value()) {
    WarnIfSaturated(tensor, q.global_scale);
  }
  if (flags.dequantized.has_value()) {
    if (flags.dequantized_dtype == "bf16") {
      // NumPy has no bf16 dtype: raw little-endian bf16 bits, row-major [rows, cols].
      std::vector<uint16_t> bf16(q.dequantized.size());
      DequantizeToBf16(q.packed.data(), q.scales.data(), q.global_scale, q.rows, q.cols,
                       bf16.data());
      RETURN_IF_ERROR(io::WriteRawFile(*flags.dequantized, bf16.data(), bf16.size() * 2));
    } else {
      RETURN_IF_ERROR(io::WriteNpy(*flags.dequantized, "<f4", {q.rows, q.cols},
                                   q.dequantized.data(), q.dequantized.size() * sizeof(float)));
    }
  }
  if (flags.json) {
    nlohmann::json j = QuantizationJson(options, q);
    j["input"] = flags.input;
    j["output"] = flags.output;
    j["backend"] = backend_name;
    if (threads > 0) j["threads"] = threads;
    if (!job_id.empty()) j["job_id"] = job_id;
    std::printf("%s\n", j.dump().c_str());
  } else {
    const TensorMetrics& m = q.metrics;
    std::printf("%s [%lld, %lld] -> %s\n", flags.input.c_str(), static_cast<long long>(q.rows),
                static_cast<long long>(q.cols), flags.output.c_str());
    std::printf("  method %s/%s, F = %d, global scale %.8g (amax %.6g)\n",
                std::string(MethodName(options.method)).c_str(),
                std::string(ObjectiveName(options.objective)).c_str(), options.scale_max,
                q.global_scale, q.amax);
    std::printf("  MSE %.6g  NMSE %.6g  SQNR %.2f dB  max |err| %.6g\n", m.mse, m.nmse, m.sqnr_db,
                m.max_abs_error);
    if (m.weighted) std::printf("  WMSE %.6g\n", m.wmse);
    if (m.wmse_objective) {  // the objective first: its MSE may well exceed AbsMax's
      std::printf("  vs AbsMax: WMSE %.6g, gain %.4f (%+.1f %%); MSE %.6g, gain %.4f (%+.1f %%)\n",
                  m.absmax_wmse, m.wmse_gain, 100.0 * (m.wmse_gain - 1.0), m.absmax_mse, m.gain,
                  100.0 * (m.gain - 1.0));
      std::printf("  %.2f candidates/block\n", m.candidates_per_block);
    } else {
      std::printf("  vs AbsMax: MSE %.6g, gain %.4f (%+.1f %%), %.2f candidates/block\n",
                  m.absmax_mse, m.gain, 100.0 * (m.gain - 1.0), m.candidates_per_block);
    }
    std::printf("  %.3f s, %selem/s on %s%s\n", m.seconds, HumanRate(m.elements_per_second).c_str(),
                backend_name.c_str(), threads > 0 ? absl::StrCat(" x", threads).c_str() : "");
  }
  return kExitOk;
}

}  // namespace

std::function<int()> AddQuantizeTensorCommand(CLI::App& app) {
  auto flags = std::make_shared<QuantizeTensorFlags>();
  CLI::App* cmd =
      app.add_subcommand("quantize-tensor",
                         "Quantise one 2-D tensor (.npy f32/f16, or raw with --dtype/--shape) to "
                         "an NVFP4 safetensors file in ModelOpt layout");
  cmd->add_option("--input", flags->input, "input tensor (.npy, or raw with --dtype/--shape)")
      ->required();
  cmd->add_option("--output", flags->output, "output .safetensors")->required();
  cmd->add_option("--dtype", flags->dtype, "raw input dtype: bf16, f16, f32");
  cmd->add_option("--shape", flags->shape, "raw input shape N,K");
  cmd->add_option("--importance", flags->importance,
                  "WMSE weights .npy, f32 [K] (per column) or [N, K] (per element)");
  CLI::Option* amax =
      cmd->add_option("--amax", flags->amax, "fused group: use this amax for the global scale")
          ->check(nvfp4::cli_checks::NonNegative());
  cmd->add_option("--global-scale", flags->global_scale, "fused group: use this global scale g")
      ->check(nvfp4::cli_checks::Positive())
      ->excludes(amax);
  CLI::Option* dequantized =
      cmd->add_option("--dequantized", flags->dequantized,
                      "also write the fake-quant tensor: .npy (f32) or raw bf16 bits");
  cmd->add_option("--dequantized-dtype", flags->dequantized_dtype,
                  "f32 (.npy) or bf16 (raw little-endian, [N, K])")
      ->check(CLI::IsMember({"f32", "bf16"}))
      ->needs(dequantized);
  cmd->add_flag("--json", flags->json, "print one JSON object instead of text");
  flags->quantize.Register(cmd);
  flags->engine.Register(cmd);
  flags->remote.Register(cmd, false);
  return SubcommandRunner(cmd, flags, &Run);
}

}  // namespace nvfp4::cli
