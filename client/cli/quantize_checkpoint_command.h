// `nvfp4q quantize`: a Hugging Face safetensors checkpoint in, an NVFP4 checkpoint (ModelOpt or
// compressed-tensors layout) out, embedded or through nvfp4d; prints the per-tensor report.
#ifndef NVFP4_CLIENT_CLI_QUANTIZE_CHECKPOINT_COMMAND_H_
#define NVFP4_CLIENT_CLI_QUANTIZE_CHECKPOINT_COMMAND_H_

#include <cstdint>
#include <functional>
#include <string>

#include "CLI/CLI.hpp"
#include "absl/status/statusor.h"

namespace nvfp4::cli {

std::function<int()> AddQuantizeCheckpointCommand(CLI::App& app);

// "5GB" -> 5e9, "512MiB" -> 2^29, "1000" -> 1000 (B, KB/MB/GB/TB = 10^3k, KiB/MiB/GiB/TiB = 2^10k).
absl::StatusOr<uint64_t> ParseByteSize(const std::string& text);

}  // namespace nvfp4::cli

#endif  // NVFP4_CLIENT_CLI_QUANTIZE_CHECKPOINT_COMMAND_H_
