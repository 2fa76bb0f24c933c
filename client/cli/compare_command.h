// `nvfp4q compare`: quantise each given .npy tensor with several methods and print one table
// (MSE, change vs AbsMax, SQNR, candidates per block, throughput), to choose a method.
#ifndef NVFP4_CLIENT_CLI_COMPARE_COMMAND_H_
#define NVFP4_CLIENT_CLI_COMPARE_COMMAND_H_

#include <functional>

#include "CLI/CLI.hpp"

namespace nvfp4::cli {

std::function<int()> AddCompareCommand(CLI::App& app);

}  // namespace nvfp4::cli

#endif  // NVFP4_CLIENT_CLI_COMPARE_COMMAND_H_
