// `nvfp4q bench`: throughput of each method on a synthetic Gaussian f32 tensor, with a memcpy of
// the same input measured in the same run as the yardstick.
#ifndef NVFP4_CLIENT_CLI_BENCH_COMMAND_H_
#define NVFP4_CLIENT_CLI_BENCH_COMMAND_H_

#include <functional>

#include "CLI/CLI.hpp"

namespace nvfp4::cli {

std::function<int()> AddBenchCommand(CLI::App& app);

}  // namespace nvfp4::cli

#endif  // NVFP4_CLIENT_CLI_BENCH_COMMAND_H_
