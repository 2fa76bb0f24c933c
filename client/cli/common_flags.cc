#include "client/cli/common_flags.h"

#include "absl/strings/str_cat.h"

namespace nvfp4::cli {

void EngineFlags::Register(CLI::App* command) {
  command->add_option("--threads", threads, "CPU threads (0 = all cores)")
      ->check(CLI::NonNegativeNumber);
  command->add_option("--isa", isa, "CPU kernels: auto, scalar, avx2, avx512")
      ->check(CLI::IsMember({"auto", "scalar", "avx2", "avx512"}));
}

absl::StatusOr<std::unique_ptr<cpu::CpuBackend>> EngineFlags::MakeBackend() const {
  return cpu::CpuBackend::Create({threads, cpu::ParseCpuIsa(isa).value_or(cpu::CpuIsa::kAuto)});
}

void QuantizeFlags::Register(CLI::App* command) {
  command->add_option("--method", method, "absmax, four-over-six, exhaustive, scalesweep")
      ->check(CLI::IsMember({"absmax", "four-over-six", "exhaustive", "scalesweep"}));
  command->add_option("--objective", objective, "mse, or wmse (needs --importance)")
      ->check(CLI::IsMember({"mse", "wmse"}));
  command->add_option("--scale-max", scale_max, "F in g = amax / (6 F): 448 or 256")
      ->check(CLI::IsMember({448, 256}));
}

absl::StatusOr<QuantizeOptions> QuantizeFlags::ToOptions() const {
  QuantizeOptions options;
  const auto m = ParseMethod(method);
  const auto o = ParseObjective(objective);
  if (!m || !o) return absl::InvalidArgumentError("unknown method or objective");
  options.method = *m;
  options.objective = *o;
  options.scale_max = scale_max;
  return options;
}

}  // namespace nvfp4::cli
