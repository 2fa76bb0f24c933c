#include "server/checkpoint/checkpoint_plan.h"

#include <fnmatch.h>

#include <algorithm>
#include <map>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"

namespace nvfp4::checkpoint {
namespace {

bool GlobMatches(const std::string& glob, const std::string& module, const std::string& tensor) {
  return ::fnmatch(glob.c_str(), module.c_str(), 0) == 0 ||
         ::fnmatch(glob.c_str(), tensor.c_str(), 0) == 0;
}

// Members of each fused family, by the last name component.
struct FusedFamily {
  absl::string_view label;
  std::vector<absl::string_view> leaves;
};
const std::vector<FusedFamily>& FusedFamilies() {
  static const std::vector<FusedFamily> kFamilies = {
      {"{q,k,v}_proj", {"q_proj", "k_proj", "v_proj"}},
      {"{query,key,value}", {"query", "key", "value"}},
      {"{gate,up}_proj", {"gate_proj", "up_proj"}},
      {"{w1,w3}", {"w1", "w3"}},
      {"{q_a_proj,kv_a_proj_with_mqa}", {"q_a_proj", "kv_a_proj_with_mqa"}},
  };
  return kFamilies;
}

}  // namespace

std::string_view OutputFormatName(OutputFormat format) {
  return format == OutputFormat::kModelOpt ? "modelopt" : "compressed-tensors";
}

std::optional<OutputFormat> ParseOutputFormat(std::string_view name) {
  if (name == "modelopt") return OutputFormat::kModelOpt;
  if (name == "compressed-tensors") return OutputFormat::kCompressedTensors;
  return std::nullopt;
}

std::string FusedGroupKey(std::string_view module_name) {
  const absl::string_view module(module_name.data(), module_name.size());
  const size_t dot = module.rfind('.');
  const absl::string_view prefix = dot == absl::string_view::npos ? "" : module.substr(0, dot + 1);
  const absl::string_view leaf = dot == absl::string_view::npos ? module : module.substr(dot + 1);
  for (const FusedFamily& family : FusedFamilies()) {
    if (std::find(family.leaves.begin(), family.leaves.end(), leaf) != family.leaves.end()) {
      return absl::StrCat(prefix, family.label);
    }
  }
  return "";
}

ModuleRole DefaultModuleRole(std::string_view module) {
  const std::string lower = absl::AsciiStrToLower(absl::string_view(module.data(), module.size()));
  const std::vector<absl::string_view> parts = absl::StrSplit(lower, '.');
  const absl::string_view leaf = parts.back();
  for (absl::string_view part : parts) {
    if (absl::StrContains(part, "vision") || part == "visual" || part == "multi_modal_projector" ||
        part == "mm_projector" || part == "image_encoder") {
      return ModuleRole::kVisionTower;
    }
    if (absl::StrContains(part, "audio")) return ModuleRole::kAudioTower;
  }
  // vLLM builds these as ParallelLMHead (an embedding), which has no NVFP4 form. `output` is
  // InternLM2's head when it is top-level; `shared_head` is DeepSeek-V3's MTP head.
  if (leaf == "lm_head" || leaf == "embed_out" || leaf == "output_layer" ||
      (parts.size() == 1 && leaf == "output") ||
      std::find(parts.begin(), parts.end(), "shared_head") != parts.end()) {
    return ModuleRole::kLmHead;
  }
  // Sequence-classification and reward heads: a few rows, kept exact like the LM head.
  if (leaf == "classifier" || leaf == "score") return ModuleRole::kClassificationHead;
  for (absl::string_view part : parts) {
    if (absl::StrContains(part, "embed") || part == "wte" || part == "wpe") {
      return ModuleRole::kEmbedding;
    }
  }
  // T5/BART's shared token embedding ("shared", "model.shared").
  if (leaf == "shared" && parts.size() <= 2) return ModuleRole::kEmbedding;
  if (absl::StrContains(leaf, "norm") || absl::StartsWith(leaf, "ln_") || leaf == "ln") {
    return ModuleRole::kNorm;
  }
  if (leaf == "gate" || absl::StrContains(leaf, "router") || leaf == "shared_expert_gate") {
    return ModuleRole::kRouter;
  }
  return ModuleRole::kLinear;
}

std::string DefaultExclusionReason(std::string_view module) {
  switch (DefaultModuleRole(module)) {
    case ModuleRole::kLinear:
      return "";
    case ModuleRole::kVisionTower:
      return "vision tower (default exclusion)";
    case ModuleRole::kAudioTower:
      return "audio tower (default exclusion)";
    case ModuleRole::kLmHead:
      return "lm_head (default exclusion)";
    case ModuleRole::kClassificationHead:
      return "classification head (default exclusion)";
    case ModuleRole::kEmbedding:
      return "embedding (default exclusion)";
    case ModuleRole::kNorm:
      return "norm (default exclusion)";
    case ModuleRole::kRouter:
      return "router/gate (default exclusion)";
  }
  return "";
}

std::string Gpt2Conv1DReason(std::string_view module, const nlohmann::ordered_json& config) {
  const auto model_type = config.find("model_type");
  if (model_type == config.end() || !model_type->is_string() || *model_type != "gpt2") return "";
  const size_t dot = module.rfind('.');
  const std::string_view leaf = dot == std::string_view::npos ? module : module.substr(dot + 1);
  if (leaf != "c_attn" && leaf != "c_proj" && leaf != "c_fc") return "";
  return "GPT-2 Conv1D weight, stored [in, out]: its 16-element blocks would run along the "
         "output features, and vLLM transposes it on load, so it cannot be loaded quantized";
}

absl::StatusOr<CheckpointPlan> BuildCheckpointPlan(const SourceCheckpoint& source,
                                                   const PlanOptions& options) {
  for (const auto* globs : {&options.include, &options.exclude}) {
    for (const std::string& glob : *globs) {
      if (glob.empty()) return absl::InvalidArgumentError("empty --include/--exclude pattern");
    }
  }
  if (options.shard_bytes < (uint64_t{1} << 20)) {
    return absl::InvalidArgumentError("the shard size must be at least 1 MiB");
  }
  CheckpointPlan plan;
  std::map<std::string, size_t> group_of_key;
  for (const SourceTensor& source_tensor : source.tensors()) {
    PlannedTensor t;
    t.source = &source_tensor;
    const std::string& name = source_tensor.name;
    const SafetensorsTensorInfo& info = *source_tensor.info;
    const bool is_weight = absl::EndsWith(name, ".weight");
    t.module = is_weight ? name.substr(0, name.size() - 7) : name;
    const std::optional<DType> dtype = ParseDType(info.dtype);
    if (is_weight && info.shape.size() == 2 && dtype.has_value()) {
      t.dtype = *dtype;
      t.rows = info.shape[0];
      t.cols = info.shape[1];
      bool included = false;
      for (const std::string& glob : options.include) {
        if (GlobMatches(glob, t.module, name)) included = true;
      }
      // --include adds to the default selection; --exclude wins over both. A transposed
      // Conv1D weight cannot be quantized at all.
      std::string reason = included ? "" : DefaultExclusionReason(t.module);
      for (const std::string& glob : options.exclude) {
        if (GlobMatches(glob, t.module, name))
          reason = absl::StrCat("excluded by --exclude '", glob, "'");
      }
      if (std::string conv1d = Gpt2Conv1DReason(t.module, source.config()); !conv1d.empty()) {
        reason = std::move(conv1d);
      }
      if (reason.empty() && (t.cols % 16 != 0 || t.rows == 0 || t.cols == 0)) {
        reason = absl::StrCat("shape [", t.rows, ", ", t.cols,
                              "]: the row length is not a positive multiple of 16");
      }
      t.quantize = reason.empty();
      t.reason = std::move(reason);
    } else if (is_weight && info.shape.size() == 2) {
      t.reason = absl::StrCat("dtype ", info.dtype, " (only F32, BF16 and F16 are quantized)");
    } else if (is_weight) {
      t.reason =
          absl::StrCat(info.shape.size(), "-D weight (only 2-D Linear weights are quantized)");
    }
    // Every weight joins its fused group, the ones that cannot be quantized too: they keep the
    // whole group unquantized (below).
    if (const std::string key = is_weight ? FusedGroupKey(t.module) : ""; !key.empty()) {
      auto [it, inserted] = group_of_key.emplace(key, plan.groups.size());
      if (inserted) plan.groups.push_back({key, {}});
      t.group = static_cast<int>(it->second);
      plan.groups[it->second].members.push_back(plan.tensors.size());
    }
    plan.tensors.push_back(std::move(t));
  }

  // A fused group is quantized as a whole or not at all.
  for (FusedGroup& group : plan.groups) {
    std::string blocker;
    for (size_t m : group.members) {
      if (!plan.tensors[m].quantize) blocker = plan.tensors[m].module;
    }
    if (blocker.empty()) continue;
    for (size_t m : group.members) {
      PlannedTensor& t = plan.tensors[m];
      if (t.quantize) {
        t.quantize = false;
        t.reason = absl::StrCat("fused with ", blocker, ", which is not quantized");
      }
    }
  }
  // Groups of one are not groups.
  for (FusedGroup& group : plan.groups) {
    if (group.members.size() == 1) plan.tensors[group.members[0]].group = -1;
  }

  const bool modelopt = options.format == OutputFormat::kModelOpt;
  const std::vector<int64_t> scalar_shape =
      modelopt ? std::vector<int64_t>{} : std::vector<int64_t>{1};
  for (PlannedTensor& t : plan.tensors) {
    const SafetensorsTensorInfo& info = *t.source->info;
    if (!t.quantize) {
      if (absl::EndsWith(t.source->name, ".weight") && info.shape.size() == 2) {
        plan.ignored_modules.push_back(t.module);
      }
      t.outputs.push_back({t.source->name, info.dtype, info.shape, OutputTensor::Kind::kCopy});
      t.output_bytes = info.bytes();
      continue;
    }
    ++plan.quantized_count;
    const std::string& m = t.module;
    t.outputs.push_back({absl::StrCat(m, modelopt ? ".weight" : ".weight_packed"),
                         "U8",
                         {t.rows, t.cols / 2},
                         OutputTensor::Kind::kPacked});
    t.outputs.push_back({absl::StrCat(m, ".weight_scale"),
                         "F8_E4M3",
                         {t.rows, t.cols / 16},
                         OutputTensor::Kind::kBlockScales});
    t.outputs.push_back({absl::StrCat(m, modelopt ? ".weight_scale_2" : ".weight_global_scale"),
                         "F32", scalar_shape, OutputTensor::Kind::kWeightGlobalScale});
    if (options.w4a4) {
      t.outputs.push_back({absl::StrCat(m, modelopt ? ".input_scale" : ".input_global_scale"),
                           "F32", scalar_shape, OutputTensor::Kind::kInputScale});
    }
    t.output_bytes = static_cast<uint64_t>(t.rows) * static_cast<uint64_t>(t.cols) / 2 +
                     static_cast<uint64_t>(t.rows) * static_cast<uint64_t>(t.cols) / 16 +
                     4 * (options.w4a4 ? 2 : 1);
  }

  // Shards in source order; a new shard starts when the next tensor would overflow this one.
  uint64_t in_shard = 0;
  for (size_t i = 0; i < plan.tensors.size(); ++i) {
    PlannedTensor& t = plan.tensors[i];
    if (plan.shard_tensors.empty() ||
        (in_shard > 0 && in_shard + t.output_bytes > options.shard_bytes)) {
      plan.shard_tensors.emplace_back();
      in_shard = 0;
    }
    t.shard = static_cast<int>(plan.shard_tensors.size() - 1);
    plan.shard_tensors.back().push_back(i);
    in_shard += t.output_bytes;
  }
  const size_t n = plan.shard_tensors.size();
  for (size_t s = 0; s < n; ++s) {
    plan.shard_files.push_back(
        n == 1 ? "model.safetensors" : absl::StrFormat("model-%05d-of-%05d.safetensors", s + 1, n));
  }
  std::sort(plan.ignored_modules.begin(), plan.ignored_modules.end());
  return plan;
}

}  // namespace nvfp4::checkpoint
