#include "client/cli/common_flags.h"

#include <fstream>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"
#include "client/cli/exit_codes.h"
#include "common/cli_checks.h"

namespace nvfp4::cli {

void EngineFlags::Register(CLI::App* command) {
  command
      ->add_option("--threads", threads,
                   "CPU threads (0 = the CPUs this process may use: affinity, cgroup quota)")
      ->check(nvfp4::cli_checks::NonNegative());
  command->add_option("--isa", isa, "CPU kernels: auto, scalar, avx2, avx512")
      ->check(CLI::IsMember({"auto", "scalar", "avx2", "avx512"}));
}

absl::StatusOr<std::unique_ptr<cpu::CpuBackend>> EngineFlags::MakeBackend() const {
  return cpu::CpuBackend::Create({threads, cpu::ParseCpuIsa(isa).value_or(cpu::CpuIsa::kAuto)});
}

void RemoteFlags::Register(CLI::App* command, bool required) {
  CLI::Option* server_option = command->add_option(
      "--server", server,
      required ? "nvfp4d address host:port" : "quantise on nvfp4d at host:port instead of locally");
  if (required) server_option->required();
  // Without --server they would be ignored silently: refused instead.
  command->add_option("--token-file", token_file, "file with the server's bearer token")
      ->needs(server_option);
  command->add_option("--tls-ca", tls_ca, "PEM CA bundle; connects with TLS")->needs(server_option);
  command->add_option("--timeout", timeout_seconds, "deadline of each call in seconds")
      ->check(nvfp4::cli_checks::Positive())
      ->needs(server_option);
}

absl::StatusOr<std::unique_ptr<client::QuantizerClient>> RemoteFlags::Connect() const {
  client::ClientOptions options;
  options.target = server;
  options.tls_ca_file = tls_ca;
  options.timeout = absl::Seconds(timeout_seconds);
  if (!token_file.empty()) {
    std::ifstream in(token_file);
    if (!in) return absl::NotFoundError(absl::StrCat("cannot read token file ", token_file));
    std::stringstream text;
    text << in.rdbuf();
    options.token = std::string(absl::StripAsciiWhitespace(text.str()));
  }
  return client::QuantizerClient::Connect(options);
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
  if (!m || !o) return UsageError("unknown method or objective");
  options.method = *m;
  options.objective = *o;
  options.scale_max = scale_max;
  return options;
}

}  // namespace nvfp4::cli
