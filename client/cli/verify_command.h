// `nvfp4q verify`: checks an NVFP4 checkpoint against the checkpoint it came from, reading
// only the files (independent of the report the quantizer printed): every shard passes the
// strict safetensors reader; config.json carries a quantization_config (ModelOpt or
// compressed-tensors); each quantized module has its packed values, E4M3 block scales (no NaN
// or negative bytes) and global scale with the right dtypes and shapes, fused groups share the
// global scale, and its dequantized values are compared with the source (MSE, NMSE); every
// other tensor is byte-identical to the source; no tensor is missing or extra.
#ifndef NVFP4_CLIENT_CLI_VERIFY_COMMAND_H_
#define NVFP4_CLIENT_CLI_VERIFY_COMMAND_H_

#include <functional>

#include "CLI/CLI.hpp"

namespace nvfp4::cli {

std::function<int()> AddVerifyCommand(CLI::App& app);

}  // namespace nvfp4::cli

#endif  // NVFP4_CLIENT_CLI_VERIFY_COMMAND_H_
