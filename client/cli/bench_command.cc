#include "client/cli/bench_command.h"

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <limits>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "client/cli/common_flags.h"
#include "client/cli/exit_codes.h"
#include "client/cli/report.h"
#include "client/cli/synthetic.h"
#include "common/cpu_count.h"
#include "common/status_macros.h"

namespace nvfp4::cli {
namespace {

struct BenchFlags {
  int64_t rows = 4096;
  int64_t cols = 4096;
  std::vector<int> threads;
  std::vector<std::string> methods = {"absmax", "four-over-six", "scalesweep", "exhaustive"};
  std::vector<std::string> objectives = {"mse", "wmse"};
  int repeat = 3;
  int scale_max = 256;
  std::string isa = "auto";
  bool json = false;
};

double Seconds(std::chrono::steady_clock::duration d) {
  return std::chrono::duration<double>(d).count();
}

// Best-of-`repeat` single-threaded copy of the input (destination pre-faulted).
double MemcpyElementsPerSecond(const std::vector<float>& input, int repeat) {
  std::vector<float> destination(input.size(), 1.0f);
  double best = std::numeric_limits<double>::infinity();
  for (int i = 0; i < std::max(repeat, 3); ++i) {
    const auto start = std::chrono::steady_clock::now();
    std::memcpy(destination.data(), input.data(), input.size() * sizeof(float));
    best = std::min(best, Seconds(std::chrono::steady_clock::now() - start));
  }
  volatile float sink = destination[destination.size() / 2];
  (void)sink;
  return static_cast<double>(input.size()) / best;
}

absl::StatusOr<int> Run(const BenchFlags& flags) {
  if (flags.rows <= 0 || flags.cols <= 0 || flags.repeat <= 0) {
    return UsageError("--rows, --cols and --repeat must be positive");
  }
  // Every name is checked before anything runs.
  for (const std::string& name : flags.methods) {
    if (!ParseMethod(name)) return UsageError(absl::StrCat("unknown method '", name, "'"));
  }
  for (const std::string& name : flags.objectives) {
    if (!ParseObjective(name)) return UsageError(absl::StrCat("unknown objective '", name, "'"));
  }
  const int64_t n = flags.rows * flags.cols;
  const std::vector<float> input = GaussianTensor(n, 1.0, 42);
  const std::vector<float> importance = LognormalTensor(flags.cols, 1.0, 43);
  std::vector<int> thread_counts = flags.threads;
  if (thread_counts.empty()) {
    const int all = UsableCpuCount();
    thread_counts = all > 1 ? std::vector<int>{1, all} : std::vector<int>{1};
  }
  const double memcpy_eps = MemcpyElementsPerSecond(input, flags.repeat);

  nlohmann::json results = nlohmann::json::array();
  std::string isa_name;
  if (!flags.json) {
    std::printf("%-14s %-9s %7s %12s %9s %11s %8s\n", "method", "objective", "threads", "Melem/s",
                "x memcpy", "cand/block", "gain");
  }
  for (int threads : thread_counts) {
    ASSIGN_OR_RETURN(auto backend,
                     cpu::CpuBackend::Create(
                         {threads, cpu::ParseCpuIsa(flags.isa).value_or(cpu::CpuIsa::kAuto)}));
    isa_name = std::string(cpu::CpuIsaName(backend->isa()));
    for (const std::string& method_name : flags.methods) {
      const auto method = ParseMethod(method_name);
      if (!method) return absl::InvalidArgumentError(absl::StrCat("unknown method ", method_name));
      for (const std::string& objective_name : flags.objectives) {
        const auto objective = ParseObjective(objective_name);
        if (!objective) {
          return absl::InvalidArgumentError(absl::StrCat("unknown objective ", objective_name));
        }
        // AbsMax ignores the objective: measure it once.
        if (*method == Method::kAbsMax && *objective != Objective::kMse &&
            std::find(flags.objectives.begin(), flags.objectives.end(), "mse") !=
                flags.objectives.end()) {
          continue;
        }
        QuantizeOptions options;
        options.method = *method;
        options.objective = *objective;
        options.scale_max = flags.scale_max;
        const ImportanceView weights =
            *objective == Objective::kWmse
                ? ImportanceView{ImportanceLayout::kPerColumn, importance.data(), flags.cols}
                : ImportanceView{};
        double best = std::numeric_limits<double>::infinity();
        TensorMetrics metrics;
        const int repeats = *method == Method::kExhaustive ? 1 : flags.repeat;
        for (int i = 0; i < repeats; ++i) {
          const auto start = std::chrono::steady_clock::now();
          ASSIGN_OR_RETURN(QuantizedTensor q,
                           backend->Quantize({DType::kF32, flags.rows, flags.cols, input.data()},
                                             weights, options));
          best = std::min(best, Seconds(std::chrono::steady_clock::now() - start));
          metrics = q.metrics;
        }
        const double eps = static_cast<double>(n) / best;
        if (flags.json) {
          results.push_back({{"method", method_name},
                             {"objective", objective_name},
                             {"threads", backend->threads()},
                             {"elements_per_second", eps},
                             {"memcpy_ratio", eps / memcpy_eps},
                             {"seconds", best},
                             {"candidates_per_block", metrics.candidates_per_block},
                             {"gain", Number(ObjectiveGain(metrics))}});
        } else {
          std::printf("%-14s %-9s %7d %12.1f %9.3f %11.2f %8.4f\n", method_name.c_str(),
                      objective_name.c_str(), backend->threads(), eps / 1e6, eps / memcpy_eps,
                      metrics.candidates_per_block, ObjectiveGain(metrics));
          std::fflush(stdout);
        }
      }
    }
  }
  if (flags.json) {
    nlohmann::json out = {{"rows", flags.rows},     {"cols", flags.cols},
                          {"dtype", "F32"},         {"distribution", "N(0,1)"},
                          {"isa", isa_name},        {"scale_max", flags.scale_max},
                          {"repeat", flags.repeat}, {"memcpy_elements_per_second", memcpy_eps},
                          {"results", results}};
    std::printf("%s\n", out.dump().c_str());
  } else {
    std::printf(
        "memcpy of the same f32 input (1 thread): %.1f Melem/s; %lld x %lld N(0,1), isa "
        "%s, F = %d, best of %d (exhaustive: 1)\n",
        memcpy_eps / 1e6, static_cast<long long>(flags.rows), static_cast<long long>(flags.cols),
        isa_name.c_str(), flags.scale_max, flags.repeat);
  }
  return kExitOk;
}

}  // namespace

std::function<int()> AddBenchCommand(CLI::App& app) {
  auto flags = std::make_shared<BenchFlags>();
  CLI::App* cmd = app.add_subcommand(
      "bench", "Measure quantisation throughput on a synthetic N(0,1) f32 tensor against memcpy");
  cmd->add_option("--rows", flags->rows, "tensor rows")->capture_default_str();
  cmd->add_option("--cols", flags->cols, "tensor columns")->capture_default_str();
  cmd->add_option("--threads", flags->threads, "thread counts, e.g. 1,2 (default: 1 and all)")
      ->delimiter(',');
  cmd->add_option("--methods", flags->methods, "methods to run")
      ->delimiter(',')
      ->capture_default_str();
  cmd->add_option("--objectives", flags->objectives, "objectives to run (mse, wmse)")
      ->delimiter(',')
      ->capture_default_str();
  cmd->add_option("--repeat", flags->repeat, "runs per measurement; the best is kept")
      ->capture_default_str();
  cmd->add_option("--scale-max", flags->scale_max, "F: 448 or 256")
      ->check(CLI::IsMember({448, 256}));
  cmd->add_option("--isa", flags->isa, "CPU kernels: auto, scalar, avx2, avx512")
      ->check(CLI::IsMember({"auto", "scalar", "avx2", "avx512"}));
  cmd->add_flag("--json", flags->json, "print one JSON object");
  return SubcommandRunner(cmd, flags, &Run);
}

}  // namespace nvfp4::cli
