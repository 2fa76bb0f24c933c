#include "client/cli/compare_command.h"

#include <cstdio>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "client/cli/common_flags.h"
#include "client/cli/exit_codes.h"
#include "client/cli/report.h"
#include "client/cli/tensor_input.h"
#include "common/status_macros.h"

namespace nvfp4::cli {
namespace {

struct CompareFlags {
  std::vector<std::string> inputs;
  std::vector<std::string> methods = {"absmax", "four-over-six", "scalesweep"};
  int scale_max = 256;
  bool json = false;
  EngineFlags engine;
};

std::string Basename(const std::string& path) {
  const size_t slash = path.find_last_of('/');
  return slash == std::string::npos ? path : path.substr(slash + 1);
}

absl::StatusOr<int> Run(const CompareFlags& flags) {
  for (const std::string& name : flags.methods) {  // before anything runs or prints
    if (!ParseMethod(name)) return UsageError(absl::StrCat("unknown method '", name, "'"));
  }
  ASSIGN_OR_RETURN(std::unique_ptr<cpu::CpuBackend> backend, flags.engine.MakeBackend());
  nlohmann::json rows = nlohmann::json::array();
  if (!flags.json) {
    std::printf("%-40s %-13s %-13s %12s %9s %9s %10s %10s\n", "tensor", "shape", "method", "MSE",
                "vs AbsMax", "SQNR dB", "cand/block", "Melem/s");
  }
  // Mean over tensors of each method's MSE change vs AbsMax (tensors of very different scales
  // would make a pooled squared error mean "the largest tensor").
  std::vector<double> change_sum(flags.methods.size(), 0.0);
  int tensors = 0;
  for (const std::string& path : flags.inputs) {
    ASSIGN_OR_RETURN(LoadedTensor tensor, LoadTensor(path, std::nullopt, std::nullopt));
    ++tensors;
    const std::string shape = absl::StrCat(tensor.rows, "x", tensor.cols);
    for (size_t i = 0; i < flags.methods.size(); ++i) {
      QuantizeOptions options;
      const auto method = ParseMethod(flags.methods[i]);
      if (!method) return absl::InvalidArgumentError("unknown method " + flags.methods[i]);
      options.method = *method;
      options.scale_max = flags.scale_max;
      ASSIGN_OR_RETURN(QuantizedTensor q, backend->Quantize(tensor.view(), {}, options));
      const TensorMetrics& m = q.metrics;
      change_sum[i] += 100.0 * (m.gain - 1.0);
      if (flags.json) {
        nlohmann::json j = QuantizationJson(options, q);
        j["tensor"] = path;
        j["backend"] = std::string(backend->name());
        j["threads"] = backend->threads();
        rows.push_back(j);
      } else {
        std::printf("%-40s %-13s %-13s %12.5g %+8.1f%% %9.2f %10.2f %10.1f\n",
                    Basename(path).substr(0, 40).c_str(), shape.c_str(), flags.methods[i].c_str(),
                    m.mse, 100.0 * (m.gain - 1.0), m.sqnr_db, m.candidates_per_block,
                    m.elements_per_second / 1e6);
      }
    }
  }
  if (flags.json) {
    std::printf("%s\n", nlohmann::json{{"results", rows}}.dump().c_str());
  } else if (tensors > 0) {
    std::printf("mean MSE change vs AbsMax over %d tensors:", tensors);
    for (size_t i = 0; i < flags.methods.size(); ++i) {
      std::printf("  %s %+.1f%%", flags.methods[i].c_str(), change_sum[i] / tensors);
    }
    std::printf("\n");
  }
  return kExitOk;
}

}  // namespace

std::function<int()> AddCompareCommand(CLI::App& app) {
  auto flags = std::make_shared<CompareFlags>();
  CLI::App* cmd = app.add_subcommand(
      "compare", "Quantise .npy tensors with several methods and compare their error");
  cmd->add_option("inputs", flags->inputs, "tensors (.npy, 2-D f32/f16)")->required();
  cmd->add_option("--methods", flags->methods, "methods to compare")
      ->delimiter(',')
      ->capture_default_str();
  cmd->add_option("--scale-max", flags->scale_max, "F: 448 or 256")
      ->check(CLI::IsMember({448, 256}));
  cmd->add_flag("--json", flags->json, "print one JSON object");
  flags->engine.Register(cmd);
  return SubcommandRunner(cmd, flags, &Run);
}

}  // namespace nvfp4::cli
