// `nvfp4q quantize-tensor`: quantise one 2-D tensor file into a ModelOpt-layout safetensors
// file (weight U8 [N, K/2], weight_scale F8_E4M3 [N, K/16], weight_scale_2 F32 []).
#ifndef NVFP4_CLIENT_CLI_QUANTIZE_TENSOR_COMMAND_H_
#define NVFP4_CLIENT_CLI_QUANTIZE_TENSOR_COMMAND_H_

#include <functional>

#include "CLI/CLI.hpp"

namespace nvfp4::cli {

// Registers the subcommand; the returned callback runs it and returns the exit code.
std::function<int()> AddQuantizeTensorCommand(CLI::App& app);

}  // namespace nvfp4::cli

#endif  // NVFP4_CLIENT_CLI_QUANTIZE_TENSOR_COMMAND_H_
