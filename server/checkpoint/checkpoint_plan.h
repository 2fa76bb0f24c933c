// CheckpointPlan: what happens to every tensor of a checkpoint, and where each output lands.
//
// What: decides per tensor quantize / pass through (docs/checkpoints.md "Which tensors"):
// by default the 2-D floating-point `*.weight` of Linear layers are quantized; embeddings,
// LM and classification heads, norms, routers/gates, vision and audio towers, GPT-2's Conv1D
// weights and everything that is not a 2-D F32/BF16/F16 `.weight` pass through byte for byte.
// --include globs add modules the defaults leave out,
// --exclude globs drop modules (exclude wins) (globs match the module name, i.e. the tensor name
// without
// ".weight", or the tensor name). A weight whose row length K is not a multiple of 16 passes
// through with that reason (vLLM cannot load it quantized). Fused groups (q/k/v, query/key/
// value, gate/up, w1/w3, q_a_proj/kv_a_proj_with_mqa, per MoE expert too) share one global
// scale; if one member is not quantized, none is. Then lays the output tensors (ModelOpt or
// compressed-tensors names) into shards of at most shard_bytes (a tensor is never split).
// Ownership/thread-safety: a plain value; immutable once built.
// Errors: InvalidArgument for bad options (a glob that matches nothing is allowed).
#ifndef NVFP4_SERVER_CHECKPOINT_CHECKPOINT_PLAN_H_
#define NVFP4_SERVER_CHECKPOINT_CHECKPOINT_PLAN_H_

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "kernels/tensor.h"
#include "server/checkpoint/source_checkpoint.h"

namespace nvfp4::checkpoint {

enum class OutputFormat { kModelOpt, kCompressedTensors };
std::string_view OutputFormatName(OutputFormat format);  // "modelopt", "compressed-tensors"
std::optional<OutputFormat> ParseOutputFormat(std::string_view name);

struct PlanOptions {
  OutputFormat format = OutputFormat::kModelOpt;
  std::vector<std::string> include;
  std::vector<std::string> exclude;
  bool w4a4 = false;  // activation scales present (input_scale / input_global_scale)
  uint64_t shard_bytes = 5'000'000'000;  // "5GB" as Hugging Face and nvfp4q count it
};

// One output tensor: its safetensors layout and what produces its bytes.
struct OutputTensor {
  enum class Kind { kCopy, kPacked, kBlockScales, kWeightGlobalScale, kInputScale };
  std::string name;
  std::string dtype;
  std::vector<int64_t> shape;
  Kind kind = Kind::kCopy;
};

struct PlannedTensor {
  const SourceTensor* source = nullptr;
  std::string module;  // tensor name without ".weight" (the Linear layer)
  bool quantize = false;
  std::string reason;  // why it passes through (empty when quantized or a non-weight tensor)
  int group = -1;      // index into CheckpointPlan::groups, or -1
  DType dtype = DType::kF32;
  int64_t rows = 0, cols = 0;
  std::vector<OutputTensor> outputs;
  int shard = 0;
  uint64_t output_bytes = 0;
};

struct FusedGroup {
  std::string name;             // e.g. "model.layers.0.self_attn.{q,k,v}_proj"
  std::vector<size_t> members;  // indices into CheckpointPlan::tensors
};

struct CheckpointPlan {
  std::vector<PlannedTensor> tensors;  // in source name order
  std::vector<FusedGroup> groups;
  std::vector<std::string> shard_files;  // "model.safetensors" or "model-0000i-of-0000n..."
  std::vector<std::vector<size_t>> shard_tensors;  // tensor indices per shard, in write order
  std::vector<std::string> ignored_modules;        // 2-D weights left unquantized (config "ignore")
  int quantized_count = 0;
};

absl::StatusOr<CheckpointPlan> BuildCheckpointPlan(const SourceCheckpoint& source,
                                                   const PlanOptions& options);

// What the default rules take a module (a 2-D float weight's name without ".weight") for.
enum class ModuleRole {
  kLinear,  // quantized by default
  kVisionTower,
  kAudioTower,
  kLmHead,              // built by vLLM as an embedding (ParallelLMHead)
  kClassificationHead,  // classifier / score
  kEmbedding,
  kNorm,
  kRouter,  // MoE router or gate
};
ModuleRole DefaultModuleRole(std::string_view module);

// The default rule alone: why `module` (2-D float weight) is not quantized, or "" if it is.
std::string DefaultExclusionReason(std::string_view module);

// Why `module` cannot be quantized in a GPT-2 checkpoint (config model_type "gpt2"), or "": its
// c_attn / c_proj / c_fc are Conv1D weights stored [in, out].
std::string Gpt2Conv1DReason(std::string_view module, const nlohmann::ordered_json& config);

// The fused-group key of `module` ("<prefix>.{q,k,v}_proj" ...), or "" when it is in none.
std::string FusedGroupKey(std::string_view module);

}  // namespace nvfp4::checkpoint

#endif  // NVFP4_SERVER_CHECKPOINT_CHECKPOINT_PLAN_H_
