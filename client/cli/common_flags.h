// Flags shared by the nvfp4q subcommands that quantise: method, objective, F, threads, ISA.
#ifndef NVFP4_CLIENT_CLI_COMMON_FLAGS_H_
#define NVFP4_CLIENT_CLI_COMMON_FLAGS_H_

#include <memory>
#include <string>

#include "CLI/CLI.hpp"
#include "absl/status/statusor.h"
#include "client/quantizer_client.h"
#include "kernels/cpu/cpu_backend.h"
#include "kernels/quantize_options.h"

namespace nvfp4::cli {

struct EngineFlags {
  int threads = 0;
  std::string isa = "auto";

  void Register(CLI::App* command);
  absl::StatusOr<std::unique_ptr<cpu::CpuBackend>> MakeBackend() const;
};

// Where nvfp4d is and how to reach it.
struct RemoteFlags {
  std::string server;      // host:port; empty: quantise locally
  std::string token_file;  // bearer token file
  std::string tls_ca;      // PEM CA bundle: use TLS
  double timeout_seconds = 3600;

  // required: the subcommand only works against a server.
  void Register(CLI::App* command, bool required);
  absl::StatusOr<std::unique_ptr<client::QuantizerClient>> Connect() const;
};

struct QuantizeFlags {
  std::string method = "scalesweep";
  std::string objective = "mse";
  int scale_max = 256;

  void Register(CLI::App* command);
  absl::StatusOr<QuantizeOptions> ToOptions() const;
};

}  // namespace nvfp4::cli

#endif  // NVFP4_CLIENT_CLI_COMMON_FLAGS_H_
