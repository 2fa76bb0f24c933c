// Tests for server/checkpoint/checkpoint_plan.h: which tensors are quantized (defaults,
// --include/--exclude, shapes and dtypes), fused groups, the output tensor layout of both
// formats, and how the outputs are laid into shards. The source checkpoints are small
// safetensors files written into a per-test temp directory.
#include "server/checkpoint/checkpoint_plan.h"

#include <unistd.h>

#include <cstdint>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "server/checkpoint/safetensors.h"
#include "server/checkpoint/source_checkpoint.h"

namespace nvfp4::checkpoint {
namespace {

namespace fs = std::filesystem;
using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::IsEmpty;

std::string TestDir() {
  const testing::TestInfo* info = testing::UnitTest::GetInstance()->current_test_info();
  const fs::path dir =
      fs::path(testing::TempDir()) /
      absl::StrCat("ckpt_plan_", info->test_suite_name(), "_", info->name(), "_", ::getpid());
  fs::remove_all(dir);
  fs::create_directories(dir);
  return dir.string();
}

struct Spec {
  std::string name;
  std::string dtype;
  std::vector<int64_t> shape;
};

// A checkpoint directory holding `specs` (zero-filled) in one model.safetensors, opened.
class Checkpoint {
 public:
  // `config_json`, when given, is written as config.json.
  explicit Checkpoint(const std::vector<Spec>& specs, const std::string& config_json = "")
      : dir_(TestDir()) {
    if (!config_json.empty()) {
      std::ofstream(dir_ + "/config.json") << config_json;
    }
    std::vector<std::vector<uint8_t>> storage;
    std::vector<SafetensorsBlob> blobs;
    storage.reserve(specs.size());
    for (const Spec& s : specs) {
      int64_t n = 1;
      for (int64_t d : s.shape) n *= d;
      const uint64_t bytes = static_cast<uint64_t>(n) * *SafetensorsDTypeBits(s.dtype) / 8;
      storage.emplace_back(bytes, 0);
      blobs.push_back({{s.name, s.dtype, s.shape}, storage.back().data(), bytes});
    }
    const absl::Status written = WriteSafetensors(dir_ + "/model.safetensors", blobs, {});
    EXPECT_TRUE(written.ok()) << written;
    absl::StatusOr<std::unique_ptr<SourceCheckpoint>> source = SourceCheckpoint::Open(dir_);
    EXPECT_TRUE(source.ok()) << source.status();
    if (source.ok()) source_ = *std::move(source);
  }
  ~Checkpoint() {
    source_.reset();  // unmaps the files first
    fs::remove_all(dir_);
  }
  Checkpoint(const Checkpoint&) = delete;
  Checkpoint& operator=(const Checkpoint&) = delete;

  const SourceCheckpoint& source() const { return *source_; }
  bool ok() const { return source_ != nullptr; }

 private:
  std::string dir_;
  std::unique_ptr<SourceCheckpoint> source_;
};

const PlannedTensor& Find(const CheckpointPlan& plan, const std::string& name) {
  for (const PlannedTensor& t : plan.tensors) {
    if (t.source->name == name) return t;
  }
  ADD_FAILURE() << "no planned tensor " << name;
  static const PlannedTensor kNone;
  return kNone;
}

std::vector<Spec> LlamaLayer(int layer, int hidden = 64, int inter = 96, int kv = 32) {
  const std::string p = absl::StrCat("model.layers.", layer, ".");
  return {
      {p + "input_layernorm.weight", "BF16", {hidden}},
      {p + "self_attn.q_proj.weight", "BF16", {hidden, hidden}},
      {p + "self_attn.k_proj.weight", "BF16", {kv, hidden}},
      {p + "self_attn.v_proj.weight", "BF16", {kv, hidden}},
      {p + "self_attn.o_proj.weight", "BF16", {hidden, hidden}},
      {p + "post_attention_layernorm.weight", "BF16", {hidden}},
      {p + "mlp.gate_proj.weight", "BF16", {inter, hidden}},
      {p + "mlp.up_proj.weight", "BF16", {inter, hidden}},
      {p + "mlp.down_proj.weight", "BF16", {hidden, inter}},
  };
}

std::vector<Spec> LlamaModel(int layers) {
  std::vector<Spec> specs = {
      {"model.embed_tokens.weight", "BF16", {128, 64}},
      {"model.norm.weight", "BF16", {64}},
      {"lm_head.weight", "BF16", {128, 64}},
  };
  for (int l = 0; l < layers; ++l) {
    for (Spec& s : LlamaLayer(l)) specs.push_back(std::move(s));
  }
  return specs;
}

CheckpointPlan Plan(const Checkpoint& ckpt, const PlanOptions& options = {}) {
  absl::StatusOr<CheckpointPlan> plan = BuildCheckpointPlan(ckpt.source(), options);
  EXPECT_TRUE(plan.ok()) << plan.status();
  return plan.ok() ? *std::move(plan) : CheckpointPlan{};
}

// ---------------------------------------------------------------------------------------------
// Default selection.

TEST(CheckpointPlanTest, DefaultSelectionOnLlamaQuantizesLinearLayersOnly) {
  std::vector<Spec> specs = LlamaModel(2);
  // Extra tensors the defaults must leave alone.
  specs.push_back({"model.layers.0.self_attn.q_proj.bias", "BF16", {64}});
  specs.push_back({"model.layers.0.mlp.gate.weight", "BF16", {8, 64}});     // MoE router
  specs.push_back({"model.layers.0.extra_norm.weight", "BF16", {64, 64}});  // 2-D norm
  specs.push_back({"vision_tower.encoder.layers.0.fc1.weight", "BF16", {64, 64}});
  specs.push_back({"model.layers.0.experts_stacked.weight", "BF16", {4, 64, 64}});  // 3-D
  specs.push_back({"model.layers.0.int_proj.weight", "I32", {64, 64}});
  specs.push_back({"model.layers.0.odd_proj.weight", "F32", {64, 40}});  // K % 16 != 0
  Checkpoint ckpt(specs);
  ASSERT_TRUE(ckpt.ok());
  const CheckpointPlan plan = Plan(ckpt);
  ASSERT_EQ(plan.tensors.size(), specs.size());

  // Source name order.
  for (size_t i = 1; i < plan.tensors.size(); ++i) {
    EXPECT_LT(plan.tensors[i - 1].source->name, plan.tensors[i].source->name);
  }
  for (int l = 0; l < 2; ++l) {
    for (const char* leaf : {"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj",
                             "self_attn.o_proj", "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"}) {
      const std::string module = absl::StrCat("model.layers.", l, ".", leaf);
      const PlannedTensor& t = Find(plan, module + ".weight");
      EXPECT_TRUE(t.quantize) << module << ": " << t.reason;
      EXPECT_EQ(t.module, module);
      EXPECT_THAT(t.reason, IsEmpty()) << module;
      EXPECT_EQ(t.dtype, DType::kBF16);
    }
  }
  EXPECT_EQ(Find(plan, "model.layers.0.mlp.down_proj.weight").rows, 64);
  EXPECT_EQ(Find(plan, "model.layers.0.mlp.down_proj.weight").cols, 96);
  EXPECT_EQ(plan.quantized_count, 14);

  struct Expect {
    std::string name;
    std::string reason_part;
  };
  const std::vector<Expect> passed = {
      {"model.embed_tokens.weight", "embedding"},
      {"lm_head.weight", "lm_head"},
      {"model.layers.0.extra_norm.weight", "norm"},
      {"model.layers.0.mlp.gate.weight", "router"},
      {"vision_tower.encoder.layers.0.fc1.weight", "vision"},
      {"model.layers.0.experts_stacked.weight", "3-D"},
      {"model.layers.0.int_proj.weight", "I32"},
      {"model.layers.0.odd_proj.weight", "16"},
  };
  for (const Expect& e : passed) {
    const PlannedTensor& t = Find(plan, e.name);
    EXPECT_FALSE(t.quantize) << e.name;
    EXPECT_THAT(t.reason, HasSubstr(e.reason_part)) << e.name;
    ASSERT_EQ(t.outputs.size(), 1u) << e.name;
    EXPECT_EQ(t.outputs[0].kind, OutputTensor::Kind::kCopy);
    EXPECT_EQ(t.outputs[0].name, e.name);
    EXPECT_EQ(t.outputs[0].dtype, t.source->info->dtype);
    EXPECT_EQ(t.outputs[0].shape, t.source->info->shape);
    EXPECT_EQ(t.output_bytes, t.source->info->bytes());
  }
  EXPECT_THAT(Find(plan, "model.layers.0.odd_proj.weight").reason, HasSubstr("[64, 40]"));
  // Biases and 1-D weights (norms) pass through untouched, with a single copy output.
  for (const char* name : {"model.layers.0.self_attn.q_proj.bias", "model.norm.weight",
                           "model.layers.1.input_layernorm.weight"}) {
    const PlannedTensor& t = Find(plan, name);
    EXPECT_FALSE(t.quantize) << name;
    EXPECT_EQ(t.group, -1) << name;
    ASSERT_EQ(t.outputs.size(), 1u) << name;
    EXPECT_EQ(t.outputs[0].kind, OutputTensor::Kind::kCopy) << name;
    EXPECT_EQ(t.outputs[0].name, name);
  }
  // The bias is not a weight: it keeps its own name as module and has no reason.
  EXPECT_EQ(Find(plan, "model.layers.0.self_attn.q_proj.bias").module,
            "model.layers.0.self_attn.q_proj.bias");
  EXPECT_THAT(Find(plan, "model.layers.0.self_attn.q_proj.bias").reason, IsEmpty());

  // ignored_modules: exactly the unquantized 2-D weights, sorted (not the 1-D or 3-D ones).
  EXPECT_THAT(plan.ignored_modules,
              ElementsAre("lm_head", "model.embed_tokens", "model.layers.0.extra_norm",
                          "model.layers.0.int_proj", "model.layers.0.mlp.gate",
                          "model.layers.0.odd_proj", "vision_tower.encoder.layers.0.fc1"));
}

TEST(CheckpointPlanTest, OneDimensionalWeightsPassThroughWithAReason) {
  Checkpoint ckpt({{"model.norm.weight", "BF16", {64}},
                   {"model.layers.0.input_layernorm.weight", "F32", {64}},
                   {"model.layers.0.mlp.down_proj.weight", "BF16", {64, 64}}});
  ASSERT_TRUE(ckpt.ok());
  const CheckpointPlan plan = Plan(ckpt);
  for (const char* name : {"model.norm.weight", "model.layers.0.input_layernorm.weight"}) {
    const PlannedTensor& t = Find(plan, name);
    EXPECT_FALSE(t.quantize) << name;
    ASSERT_EQ(t.outputs.size(), 1u);
    EXPECT_EQ(t.outputs[0].kind, OutputTensor::Kind::kCopy);
  }
  // Not Linear weights: not in the config's ignore list.
  EXPECT_THAT(plan.ignored_modules, IsEmpty());
  const std::string reason = Find(plan, "model.norm.weight").reason;
  EXPECT_THAT(reason, HasSubstr("1-D"));
}

TEST(CheckpointPlanTest, DefaultExclusionReasonRules) {
  EXPECT_THAT(DefaultExclusionReason("model.layers.3.self_attn.q_proj"), IsEmpty());
  EXPECT_THAT(DefaultExclusionReason("model.layers.3.mlp.gate_proj"), IsEmpty());
  EXPECT_THAT(DefaultExclusionReason("model.layers.3.mlp.experts.7.down_proj"), IsEmpty());
  EXPECT_THAT(DefaultExclusionReason("lm_head"), HasSubstr("lm_head"));
  EXPECT_THAT(DefaultExclusionReason("embed_out"), HasSubstr("lm_head"));
  EXPECT_THAT(DefaultExclusionReason("model.embed_tokens"), HasSubstr("embedding"));
  EXPECT_THAT(DefaultExclusionReason("transformer.wte"), HasSubstr("embedding"));
  EXPECT_THAT(DefaultExclusionReason("model.layers.0.mlp.gate"), HasSubstr("router"));
  EXPECT_THAT(DefaultExclusionReason("model.layers.0.mlp.shared_expert_gate"), HasSubstr("router"));
  EXPECT_THAT(DefaultExclusionReason("model.layers.0.mlp.router"), HasSubstr("router"));
  EXPECT_THAT(DefaultExclusionReason("model.layers.0.q_a_layernorm"), HasSubstr("norm"));
  EXPECT_THAT(DefaultExclusionReason("model.vision_tower.blocks.0.attn.qkv"), HasSubstr("vision"));
  EXPECT_THAT(DefaultExclusionReason("visual.blocks.0.mlp.fc1"), HasSubstr("vision"));
  EXPECT_THAT(DefaultExclusionReason("model.multi_modal_projector.linear_1"), HasSubstr("vision"));
  // Heads and embeddings of other families: InternLM2's top-level `output`, DeepSeek-V3's MTP
  // head, classification/reward heads, T5/BART's shared embedding, audio towers.
  EXPECT_THAT(DefaultExclusionReason("output"), HasSubstr("lm_head"));
  EXPECT_THAT(DefaultExclusionReason("model.layers.61.shared_head.head"), HasSubstr("lm_head"));
  EXPECT_THAT(DefaultExclusionReason("classifier"), HasSubstr("classification head"));
  EXPECT_THAT(DefaultExclusionReason("score"), HasSubstr("classification head"));
  EXPECT_THAT(DefaultExclusionReason("shared"), HasSubstr("embedding"));
  EXPECT_THAT(DefaultExclusionReason("model.shared"), HasSubstr("embedding"));
  EXPECT_THAT(DefaultExclusionReason("model.audio_tower.layers.0.fc1"), HasSubstr("audio"));
  // ... but not Linear layers whose names merely contain those words.
  EXPECT_THAT(DefaultExclusionReason("bert.encoder.layer.0.output.dense"), IsEmpty());
  EXPECT_THAT(DefaultExclusionReason("model.layers.0.attention.output"), IsEmpty());
  EXPECT_THAT(DefaultExclusionReason("model.layers.0.mlp.shared_experts.gate_proj"), IsEmpty());
  EXPECT_THAT(DefaultExclusionReason("model.layers.0.mlp.shared_expert.up_proj"), IsEmpty());
}

// GPT-2's Conv1D weights are stored [in, out]: never quantized, even when --include names them;
// the same names in other families (GPTBigCode, Qwen) are ordinary Linear weights.
TEST(CheckpointPlanTest, Gpt2Conv1DWeightsAreNotQuantized) {
  const std::vector<Spec> specs = {{"transformer.h.0.attn.c_attn.weight", "F32", {64, 192}},
                                   {"transformer.h.0.attn.c_proj.weight", "F32", {64, 64}},
                                   {"transformer.h.0.mlp.c_fc.weight", "F32", {64, 256}}};
  Checkpoint gpt2(specs, R"({"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"]})");
  ASSERT_TRUE(gpt2.ok());
  PlanOptions options;
  options.include = {"*"};
  const CheckpointPlan plan = Plan(gpt2, options);
  EXPECT_EQ(plan.quantized_count, 0);
  EXPECT_THAT(Find(plan, "transformer.h.0.mlp.c_fc.weight").reason, HasSubstr("Conv1D"));
  Checkpoint bigcode(specs, R"({"model_type": "gpt_bigcode"})");
  ASSERT_TRUE(bigcode.ok());
  EXPECT_EQ(Plan(bigcode, {}).quantized_count, 3);
}

// ---------------------------------------------------------------------------------------------
// --include / --exclude.

TEST(CheckpointPlanTest, IncludeAddsLmHeadByModuleName) {
  Checkpoint ckpt(LlamaModel(1));
  ASSERT_TRUE(ckpt.ok());
  PlanOptions options;
  options.include = {"lm_head"};
  const CheckpointPlan plan = Plan(ckpt, options);
  const PlannedTensor& head = Find(plan, "lm_head.weight");
  EXPECT_TRUE(head.quantize) << head.reason;
  EXPECT_THAT(head.reason, IsEmpty());
  EXPECT_EQ(plan.quantized_count, 8);
  EXPECT_THAT(plan.ignored_modules, ElementsAre("model.embed_tokens"));
  // The embedding is still left out.
  EXPECT_FALSE(Find(plan, "model.embed_tokens.weight").quantize);
}

TEST(CheckpointPlanTest, IncludeGlobMatchesTensorName) {
  Checkpoint ckpt(LlamaModel(1));
  ASSERT_TRUE(ckpt.ok());
  PlanOptions options;
  options.include = {"*head.weight"};  // only the tensor name ends in ".weight"
  const CheckpointPlan plan = Plan(ckpt, options);
  EXPECT_TRUE(Find(plan, "lm_head.weight").quantize);
}

TEST(CheckpointPlanTest, ExcludeRemovesALayerByGlob) {
  Checkpoint ckpt(LlamaModel(2));
  ASSERT_TRUE(ckpt.ok());
  PlanOptions options;
  options.exclude = {"model.layers.1.*"};
  const CheckpointPlan plan = Plan(ckpt, options);
  EXPECT_EQ(plan.quantized_count, 7);
  for (const PlannedTensor& t : plan.tensors) {
    if (absl::StartsWith(t.source->name, "model.layers.1.") && t.source->info->shape.size() == 2) {
      EXPECT_FALSE(t.quantize) << t.source->name;
      EXPECT_THAT(t.reason, HasSubstr("model.layers.1.*")) << t.source->name;
    }
    if (absl::StartsWith(t.source->name, "model.layers.0.") && t.source->info->shape.size() == 2) {
      EXPECT_TRUE(t.quantize) << t.source->name;
    }
  }
  // The excluded 2-D weights are listed as ignored.
  EXPECT_EQ(plan.ignored_modules.size(), 2u + 7u);
}

TEST(CheckpointPlanTest, ExcludeMatchesTensorNameAndWinsOverInclude) {
  Checkpoint ckpt(LlamaModel(1));
  ASSERT_TRUE(ckpt.ok());
  PlanOptions options;
  options.include = {"lm_head", "*.o_proj"};
  options.exclude = {"lm_head*", "*.o_proj.weight"};
  const CheckpointPlan plan = Plan(ckpt, options);
  const PlannedTensor& head = Find(plan, "lm_head.weight");
  EXPECT_FALSE(head.quantize);
  EXPECT_THAT(head.reason, HasSubstr("--exclude"));
  EXPECT_THAT(head.reason, HasSubstr("lm_head*"));
  const PlannedTensor& o = Find(plan, "model.layers.0.self_attn.o_proj.weight");
  EXPECT_FALSE(o.quantize);
  EXPECT_THAT(o.reason, HasSubstr("*.o_proj.weight"));
  EXPECT_EQ(plan.quantized_count, 6);
}

TEST(CheckpointPlanTest, IncludeCannotOverrideShapeRule) {
  Checkpoint ckpt({{"model.layers.0.mlp.gate.weight", "BF16", {8, 40}},
                   {"model.layers.0.mlp.down_proj.weight", "BF16", {64, 64}}});
  ASSERT_TRUE(ckpt.ok());
  PlanOptions options;
  options.include = {"*.mlp.gate"};
  const CheckpointPlan plan = Plan(ckpt, options);
  const PlannedTensor& gate = Find(plan, "model.layers.0.mlp.gate.weight");
  EXPECT_FALSE(gate.quantize);
  EXPECT_THAT(gate.reason, HasSubstr("16"));
}

TEST(CheckpointPlanTest, IncludeAddsRouter) {
  Checkpoint ckpt({{"model.layers.0.mlp.gate.weight", "BF16", {8, 64}}});
  ASSERT_TRUE(ckpt.ok());
  PlanOptions options;
  options.include = {"*.mlp.gate"};
  const CheckpointPlan plan = Plan(ckpt, options);
  EXPECT_TRUE(Find(plan, "model.layers.0.mlp.gate.weight").quantize);
  EXPECT_THAT(plan.ignored_modules, IsEmpty());
}

TEST(CheckpointPlanTest, BadOptionsAreInvalidArgument) {
  Checkpoint ckpt(LlamaModel(1));
  ASSERT_TRUE(ckpt.ok());
  PlanOptions empty_glob;
  empty_glob.exclude = {""};
  EXPECT_EQ(BuildCheckpointPlan(ckpt.source(), empty_glob).status().code(),
            absl::StatusCode::kInvalidArgument);
  PlanOptions tiny_shards;
  tiny_shards.shard_bytes = (uint64_t{1} << 20) - 1;
  EXPECT_EQ(BuildCheckpointPlan(ckpt.source(), tiny_shards).status().code(),
            absl::StatusCode::kInvalidArgument);
  // A glob that matches nothing is fine.
  PlanOptions nothing;
  nothing.exclude = {"no.such.module"};
  EXPECT_TRUE(BuildCheckpointPlan(ckpt.source(), nothing).ok());
}

// ---------------------------------------------------------------------------------------------
// Fused groups.

TEST(CheckpointPlanTest, FusedGroupKeys) {
  EXPECT_EQ(FusedGroupKey("model.layers.0.self_attn.k_proj"),
            "model.layers.0.self_attn.{q,k,v}_proj");
  EXPECT_EQ(FusedGroupKey("model.layers.0.mlp.up_proj"), "model.layers.0.mlp.{gate,up}_proj");
  EXPECT_EQ(FusedGroupKey("model.layers.0.mlp.experts.3.gate_proj"),
            "model.layers.0.mlp.experts.3.{gate,up}_proj");
  EXPECT_EQ(FusedGroupKey("bert.encoder.layer.0.attention.self.value"),
            "bert.encoder.layer.0.attention.self.{query,key,value}");
  EXPECT_EQ(FusedGroupKey("model.layers.0.block_sparse_moe.experts.1.w3"),
            "model.layers.0.block_sparse_moe.experts.1.{w1,w3}");
  EXPECT_EQ(FusedGroupKey("model.layers.0.self_attn.kv_a_proj_with_mqa"),
            "model.layers.0.self_attn.{q_a_proj,kv_a_proj_with_mqa}");
  EXPECT_EQ(FusedGroupKey("model.layers.0.self_attn.o_proj"), "");
  EXPECT_EQ(FusedGroupKey("model.layers.0.mlp.down_proj"), "");
  EXPECT_EQ(FusedGroupKey("model.layers.0.block_sparse_moe.experts.1.w2"), "");
}

TEST(CheckpointPlanTest, FusedGroupsLlamaMoeBertMixtral) {
  std::vector<Spec> specs = LlamaLayer(0);
  for (int e = 0; e < 2; ++e) {
    const std::string p = absl::StrCat("model.layers.1.mlp.experts.", e, ".");
    specs.push_back({p + "gate_proj.weight", "BF16", {32, 64}});
    specs.push_back({p + "up_proj.weight", "BF16", {32, 64}});
    specs.push_back({p + "down_proj.weight", "BF16", {64, 32}});
  }
  specs.push_back({"model.layers.1.mlp.gate.weight", "BF16", {2, 64}});
  const std::string bert = "bert.encoder.layer.0.attention.self.";
  for (const char* leaf : {"query", "key", "value"}) {
    specs.push_back({bert + leaf + ".weight", "F32", {64, 64}});
    specs.push_back({bert + leaf + ".bias", "F32", {64}});
  }
  const std::string mixtral = "model.layers.2.block_sparse_moe.experts.0.";
  for (const char* leaf : {"w1", "w2", "w3"})
    specs.push_back({mixtral + leaf + ".weight", "F16", {64, 64}});
  specs.push_back({"lonely.q_proj.weight", "BF16", {64, 64}});  // a group of one is no group
  Checkpoint ckpt(specs);
  ASSERT_TRUE(ckpt.ok());
  const CheckpointPlan plan = Plan(ckpt);

  auto group_of = [&](const std::string& name) -> std::string {
    const PlannedTensor& t = Find(plan, name);
    if (t.group < 0) return "";
    EXPECT_LT(static_cast<size_t>(t.group), plan.groups.size());
    return plan.groups[t.group].name;
  };
  auto members_of = [&](const std::string& group) {
    std::vector<std::string> names;
    for (const FusedGroup& g : plan.groups) {
      if (g.name != group) continue;
      for (size_t m : g.members) names.push_back(plan.tensors[m].source->name);
    }
    return names;
  };
  const std::string qkv = "model.layers.0.self_attn.{q,k,v}_proj";
  EXPECT_EQ(group_of("model.layers.0.self_attn.q_proj.weight"), qkv);
  EXPECT_EQ(group_of("model.layers.0.self_attn.k_proj.weight"), qkv);
  EXPECT_EQ(group_of("model.layers.0.self_attn.v_proj.weight"), qkv);
  EXPECT_THAT(members_of(qkv), ElementsAre("model.layers.0.self_attn.k_proj.weight",
                                           "model.layers.0.self_attn.q_proj.weight",
                                           "model.layers.0.self_attn.v_proj.weight"));
  EXPECT_EQ(group_of("model.layers.0.self_attn.o_proj.weight"), "");
  EXPECT_EQ(group_of("model.layers.0.mlp.gate_proj.weight"), "model.layers.0.mlp.{gate,up}_proj");
  EXPECT_EQ(group_of("model.layers.0.mlp.up_proj.weight"), "model.layers.0.mlp.{gate,up}_proj");
  EXPECT_EQ(group_of("model.layers.0.mlp.down_proj.weight"), "");
  for (int e = 0; e < 2; ++e) {
    const std::string p = absl::StrCat("model.layers.1.mlp.experts.", e, ".");
    const std::string key = p + "{gate,up}_proj";
    EXPECT_EQ(group_of(p + "gate_proj.weight"), key);
    EXPECT_EQ(group_of(p + "up_proj.weight"), key);
    EXPECT_THAT(members_of(key), ElementsAre(p + "gate_proj.weight", p + "up_proj.weight"));
    EXPECT_EQ(group_of(p + "down_proj.weight"), "");
    EXPECT_TRUE(Find(plan, p + "gate_proj.weight").quantize);
  }
  EXPECT_NE(Find(plan, "model.layers.1.mlp.experts.0.gate_proj.weight").group,
            Find(plan, "model.layers.1.mlp.experts.1.gate_proj.weight").group);
  EXPECT_FALSE(Find(plan, "model.layers.1.mlp.gate.weight").quantize);  // router
  const std::string qkv_bert = bert + "{query,key,value}";
  EXPECT_EQ(group_of(bert + "query.weight"), qkv_bert);
  EXPECT_EQ(group_of(bert + "key.weight"), qkv_bert);
  EXPECT_EQ(group_of(bert + "value.weight"), qkv_bert);
  EXPECT_EQ(group_of(bert + "query.bias"), "");  // biases are never grouped
  EXPECT_THAT(members_of(qkv_bert),
              ElementsAre(bert + "key.weight", bert + "query.weight", bert + "value.weight"));
  EXPECT_EQ(group_of(mixtral + "w1.weight"), mixtral + "{w1,w3}");
  EXPECT_EQ(group_of(mixtral + "w3.weight"), mixtral + "{w1,w3}");
  EXPECT_EQ(group_of(mixtral + "w2.weight"), "");
  EXPECT_EQ(Find(plan, mixtral + "w1.weight").dtype, DType::kF16);
  EXPECT_EQ(group_of("lonely.q_proj.weight"), "");
  EXPECT_TRUE(Find(plan, "lonely.q_proj.weight").quantize);
}

TEST(CheckpointPlanTest, ExcludedMemberBlocksItsWholeGroup) {
  std::vector<Spec> specs = LlamaLayer(0);
  for (Spec& s : LlamaLayer(1)) specs.push_back(std::move(s));
  Checkpoint ckpt(specs);
  ASSERT_TRUE(ckpt.ok());
  PlanOptions options;
  options.exclude = {"model.layers.0.self_attn.k_proj"};
  const CheckpointPlan plan = Plan(ckpt, options);
  const PlannedTensor& k = Find(plan, "model.layers.0.self_attn.k_proj.weight");
  EXPECT_FALSE(k.quantize);
  EXPECT_THAT(k.reason, HasSubstr("--exclude"));
  for (const char* leaf : {"q_proj", "v_proj"}) {
    const PlannedTensor& t = Find(plan, absl::StrCat("model.layers.0.self_attn.", leaf, ".weight"));
    EXPECT_FALSE(t.quantize) << leaf;
    EXPECT_THAT(t.reason, HasSubstr("fused with model.layers.0.self_attn.k_proj")) << leaf;
    ASSERT_EQ(t.outputs.size(), 1u);
    EXPECT_EQ(t.outputs[0].kind, OutputTensor::Kind::kCopy);
  }
  // The other layer and the non-fused o_proj are untouched.
  EXPECT_TRUE(Find(plan, "model.layers.0.self_attn.o_proj.weight").quantize);
  EXPECT_TRUE(Find(plan, "model.layers.1.self_attn.q_proj.weight").quantize);
  EXPECT_EQ(plan.quantized_count, 14 - 3);
  EXPECT_THAT(plan.ignored_modules,
              ElementsAre("model.layers.0.self_attn.k_proj", "model.layers.0.self_attn.q_proj",
                          "model.layers.0.self_attn.v_proj"));
}

TEST(CheckpointPlanTest, MemberWithBadRowLengthBlocksItsWholeGroup) {
  const std::string p = "model.layers.0.block_sparse_moe.experts.0.";
  Checkpoint ckpt({{p + "w1.weight", "BF16", {32, 40}},  // K % 16 != 0
                   {p + "w3.weight", "BF16", {32, 48}},
                   {p + "w2.weight", "BF16", {48, 32}},
                   {"model.layers.0.mlp.experts.0.gate_proj.weight", "BF16", {32, 64}},
                   {"model.layers.0.mlp.experts.0.up_proj.weight", "F32", {32, 72}}});
  ASSERT_TRUE(ckpt.ok());
  const CheckpointPlan plan = Plan(ckpt);
  EXPECT_FALSE(Find(plan, p + "w1.weight").quantize);
  EXPECT_THAT(Find(plan, p + "w1.weight").reason, HasSubstr("16"));
  EXPECT_FALSE(Find(plan, p + "w3.weight").quantize);
  EXPECT_THAT(Find(plan, p + "w3.weight").reason, HasSubstr("fused with " + p + "w1"));
  EXPECT_TRUE(Find(plan, p + "w2.weight").quantize);
  EXPECT_FALSE(Find(plan, "model.layers.0.mlp.experts.0.gate_proj.weight").quantize);
  EXPECT_THAT(Find(plan, "model.layers.0.mlp.experts.0.gate_proj.weight").reason,
              HasSubstr("fused with model.layers.0.mlp.experts.0.up_proj"));
  EXPECT_EQ(plan.quantized_count, 1);
}

// A member the quantizer cannot take at all (an F64 weight, a 3-D one) blocks its group too.
TEST(CheckpointPlanTest, MemberWithAnUnquantizableDtypeOrRankBlocksItsWholeGroup) {
  Checkpoint ckpt({{"model.layers.0.mlp.gate_proj.weight", "F32", {32, 64}},
                   {"model.layers.0.mlp.up_proj.weight", "F64", {32, 64}},
                   {"model.layers.0.mlp.down_proj.weight", "F32", {64, 32}},
                   {"model.layers.1.self_attn.q_proj.weight", "BF16", {64, 64}},
                   {"model.layers.1.self_attn.k_proj.weight", "BF16", {2, 16, 64}},
                   {"model.layers.1.self_attn.v_proj.weight", "BF16", {16, 64}}});
  ASSERT_TRUE(ckpt.ok());
  const CheckpointPlan plan = Plan(ckpt);
  EXPECT_THAT(Find(plan, "model.layers.0.mlp.up_proj.weight").reason, HasSubstr("dtype F64"));
  const PlannedTensor& gate = Find(plan, "model.layers.0.mlp.gate_proj.weight");
  EXPECT_FALSE(gate.quantize);
  EXPECT_THAT(gate.reason, HasSubstr("fused with model.layers.0.mlp.up_proj"));
  EXPECT_TRUE(Find(plan, "model.layers.0.mlp.down_proj.weight").quantize);
  for (const char* leaf : {"q_proj", "v_proj"}) {
    const PlannedTensor& t = Find(plan, absl::StrCat("model.layers.1.self_attn.", leaf, ".weight"));
    EXPECT_FALSE(t.quantize) << leaf;
    EXPECT_THAT(t.reason, HasSubstr("fused with model.layers.1.self_attn.k_proj")) << leaf;
  }
  EXPECT_EQ(plan.quantized_count, 1);
}

// ---------------------------------------------------------------------------------------------
// Output tensors.

void ExpectOutput(const OutputTensor& o, const std::string& name, const std::string& dtype,
                  const std::vector<int64_t>& shape, OutputTensor::Kind kind) {
  EXPECT_EQ(o.name, name);
  EXPECT_EQ(o.dtype, dtype) << name;
  EXPECT_EQ(o.shape, shape) << name;
  EXPECT_EQ(o.kind, kind) << name;
}

TEST(CheckpointPlanTest, ModelOptOutputs) {
  Checkpoint ckpt({{"layer.down_proj.weight", "BF16", {48, 96}}});
  ASSERT_TRUE(ckpt.ok());
  using Kind = OutputTensor::Kind;
  for (bool w4a4 : {false, true}) {
    SCOPED_TRACE(w4a4 ? "w4a4" : "w4a16");
    PlanOptions options;
    options.w4a4 = w4a4;
    const CheckpointPlan plan = Plan(ckpt, options);
    ASSERT_EQ(plan.tensors.size(), 1u);
    const PlannedTensor& t = plan.tensors[0];
    ASSERT_TRUE(t.quantize);
    ASSERT_EQ(t.outputs.size(), w4a4 ? 4u : 3u);
    ExpectOutput(t.outputs[0], "layer.down_proj.weight", "U8", {48, 48}, Kind::kPacked);
    ExpectOutput(t.outputs[1], "layer.down_proj.weight_scale", "F8_E4M3", {48, 6},
                 Kind::kBlockScales);
    ExpectOutput(t.outputs[2], "layer.down_proj.weight_scale_2", "F32", {},
                 Kind::kWeightGlobalScale);
    if (w4a4)
      ExpectOutput(t.outputs[3], "layer.down_proj.input_scale", "F32", {}, Kind::kInputScale);
    EXPECT_EQ(t.output_bytes, 48u * 48 + 48u * 6 + (w4a4 ? 8 : 4));
    EXPECT_THAT(plan.shard_files, ElementsAre("model.safetensors"));
  }
}

TEST(CheckpointPlanTest, CompressedTensorsOutputs) {
  Checkpoint ckpt(
      {{"layer.down_proj.weight", "F32", {32, 160}}, {"layer.norm.weight", "F32", {32}}});
  ASSERT_TRUE(ckpt.ok());
  using Kind = OutputTensor::Kind;
  for (bool w4a4 : {false, true}) {
    SCOPED_TRACE(w4a4 ? "w4a4" : "w4a16");
    PlanOptions options;
    options.format = OutputFormat::kCompressedTensors;
    options.w4a4 = w4a4;
    const CheckpointPlan plan = Plan(ckpt, options);
    const PlannedTensor& t = Find(plan, "layer.down_proj.weight");
    ASSERT_TRUE(t.quantize);
    ASSERT_EQ(t.outputs.size(), w4a4 ? 4u : 3u);
    ExpectOutput(t.outputs[0], "layer.down_proj.weight_packed", "U8", {32, 80}, Kind::kPacked);
    ExpectOutput(t.outputs[1], "layer.down_proj.weight_scale", "F8_E4M3", {32, 10},
                 Kind::kBlockScales);
    ExpectOutput(t.outputs[2], "layer.down_proj.weight_global_scale", "F32", {1},
                 Kind::kWeightGlobalScale);
    if (w4a4) {
      ExpectOutput(t.outputs[3], "layer.down_proj.input_global_scale", "F32", {1},
                   Kind::kInputScale);
    }
    EXPECT_EQ(t.output_bytes, 32u * 80 + 32u * 10 + (w4a4 ? 8 : 4));
    const PlannedTensor& norm = Find(plan, "layer.norm.weight");
    ASSERT_EQ(norm.outputs.size(), 1u);
    ExpectOutput(norm.outputs[0], "layer.norm.weight", "F32", {32}, Kind::kCopy);
  }
  EXPECT_EQ(OutputFormatName(OutputFormat::kCompressedTensors), "compressed-tensors");
  EXPECT_EQ(OutputFormatName(OutputFormat::kModelOpt), "modelopt");
  EXPECT_EQ(ParseOutputFormat("compressed-tensors"), OutputFormat::kCompressedTensors);
  EXPECT_EQ(ParseOutputFormat("modelopt"), OutputFormat::kModelOpt);
  EXPECT_EQ(ParseOutputFormat("gguf"), std::nullopt);
}

// ---------------------------------------------------------------------------------------------
// Sharding.

TEST(CheckpointPlanTest, ShardsInSourceOrderNeverSplittingATensor) {
  constexpr uint64_t kMiB = uint64_t{1} << 20;
  // Output sizes: 1-D F32 passthroughs of the given bytes, one quantized weight.
  Checkpoint ckpt({
      {"a.bias", "F32", {600 * 1024 / 4}},                 // 600 KiB
      {"b.bias", "F32", {600 * 1024 / 4}},                 // 600 KiB
      {"c.down_proj.weight", "F32", {1024, 512}},          // quantized: 262144 + 32768 + 4
      {"d.bias", "U8", {static_cast<int64_t>(2 * kMiB)}},  // larger than a shard: alone
      {"e.bias", "F32", {100 * 1024 / 4}},                 // 100 KiB
      {"f.bias", "F32", {100 * 1024 / 4}},                 // 100 KiB
  });
  ASSERT_TRUE(ckpt.ok());
  PlanOptions options;
  options.shard_bytes = kMiB;
  const CheckpointPlan plan = Plan(ckpt, options);
  ASSERT_EQ(plan.tensors.size(), 6u);
  EXPECT_EQ(plan.tensors[2].output_bytes, 262144u + 32768u + 4u);
  // a | b + c (600 KiB + 288 KiB) | d | e + f
  ASSERT_EQ(plan.shard_tensors.size(), 4u);
  EXPECT_THAT(plan.shard_tensors[0], ElementsAre(0u));
  EXPECT_THAT(plan.shard_tensors[1], ElementsAre(1u, 2u));
  EXPECT_THAT(plan.shard_tensors[2], ElementsAre(3u));
  EXPECT_THAT(plan.shard_tensors[3], ElementsAre(4u, 5u));
  EXPECT_THAT(plan.shard_files,
              ElementsAre("model-00001-of-00004.safetensors", "model-00002-of-00004.safetensors",
                          "model-00003-of-00004.safetensors", "model-00004-of-00004.safetensors"));
  for (size_t s = 0; s < plan.shard_tensors.size(); ++s) {
    uint64_t bytes = 0;
    for (size_t i : plan.shard_tensors[s]) {
      EXPECT_EQ(plan.tensors[i].shard, static_cast<int>(s));
      bytes += plan.tensors[i].output_bytes;
    }
    if (plan.shard_tensors[s].size() > 1) {
      EXPECT_LE(bytes, kMiB) << s;
    }
  }

  // Everything in one shard when it fits.
  PlanOptions big;
  big.shard_bytes = 64 * kMiB;
  const CheckpointPlan one = Plan(ckpt, big);
  EXPECT_THAT(one.shard_files, ElementsAre("model.safetensors"));
  ASSERT_EQ(one.shard_tensors.size(), 1u);
  EXPECT_THAT(one.shard_tensors[0], ElementsAre(0u, 1u, 2u, 3u, 4u, 5u));
  for (const PlannedTensor& t : one.tensors) EXPECT_EQ(t.shard, 0);
}

TEST(CheckpointPlanTest, ShardingCoversEveryTensorExactlyOnceInOrder) {
  // 12 layers of 256-wide Llama blocks: outputs of ~0.5 MiB per layer over 1 MiB shards.
  std::vector<Spec> specs;
  for (int l = 0; l < 12; ++l) {
    for (Spec& s : LlamaLayer(l, 256, 512, 128)) specs.push_back(std::move(s));
  }
  Checkpoint ckpt(specs);
  ASSERT_TRUE(ckpt.ok());
  PlanOptions options;
  options.shard_bytes = uint64_t{1} << 20;
  const CheckpointPlan plan = Plan(ckpt, options);
  ASSERT_GE(plan.shard_files.size(), 3u);
  const size_t n = plan.shard_files.size();
  std::vector<size_t> order;
  for (size_t s = 0; s < n; ++s) {
    EXPECT_EQ(plan.shard_files[s], absl::StrFormat("model-%05d-of-%05d.safetensors", s + 1, n));
    uint64_t bytes = 0;
    for (size_t i : plan.shard_tensors[s]) {
      order.push_back(i);
      bytes += plan.tensors[i].output_bytes;
    }
    EXPECT_LE(bytes, options.shard_bytes);
    // Greedy: the first tensor of the next shard did not fit into this one.
    if (s + 1 < n) {
      EXPECT_GT(bytes + plan.tensors[plan.shard_tensors[s + 1][0]].output_bytes,
                options.shard_bytes);
    }
  }
  ASSERT_EQ(order.size(), plan.tensors.size());
  for (size_t i = 0; i < order.size(); ++i) EXPECT_EQ(order[i], i);
  EXPECT_THAT(plan.ignored_modules, IsEmpty());
  EXPECT_EQ(plan.quantized_count, 12 * 7);
}

}  // namespace
}  // namespace nvfp4::checkpoint
