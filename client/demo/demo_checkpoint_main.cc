// nvfp4_demo_checkpoint: writes a deterministic, Llama-shaped Hugging Face checkpoint (bf16
// safetensors, sharded with an index when larger than --shard-size, config.json, tokenizer and
// generation configs) for `make demo`, the tests and the benchmarks. Weights look like trained
// ones where it matters to quantization: Gaussian bulk with per-output-row scale spread
// (lognormal), heavy-tailed (Student-t 5) projections, a few outlier input columns, norms near
// 1. Optionally MoE layers (--experts, with a router `mlp.gate`), a calibration file of
// activation amax per Linear (--calibration FILE, W4A4) and an importance file of per-column
// ||X[:, k]||^2 (--importance FILE, WMSE), both shaped like real calibration statistics.
#include <sys/stat.h>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "CLI/CLI.hpp"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "kernels/numerics/half.h"
#include "server/checkpoint/safetensors.h"

namespace {

namespace fs = std::filesystem;
using nvfp4::checkpoint::SafetensorsEntry;
using nvfp4::checkpoint::SafetensorsWriter;

struct Config {
  std::string out;
  int layers = 2;
  int hidden = 256;
  int intermediate = 688;
  int heads = 8;
  int kv_heads = 4;
  int vocab = 4096;
  int experts = 0;
  uint64_t seed = 1;
  std::string dtype = "bf16";
  double shard_gb = 0.0;  // 0: one file
  std::string calibration;
  std::string importance;
};

// xoshiro256** seeded by splitmix64: fast and identical on every platform.
class Rng {
 public:
  explicit Rng(uint64_t seed) {
    for (uint64_t& s : s_) {
      seed += 0x9E3779B97F4A7C15ull;
      uint64_t z = seed;
      z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
      z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
      s = z ^ (z >> 31);
    }
  }
  uint64_t Next() {
    const uint64_t result = Rotl(s_[1] * 5, 7) * 9;
    const uint64_t t = s_[1] << 17;
    s_[2] ^= s_[0];
    s_[3] ^= s_[1];
    s_[1] ^= s_[2];
    s_[0] ^= s_[3];
    s_[2] ^= t;
    s_[3] = Rotl(s_[3], 45);
    return result;
  }
  double Uniform() { return (Next() >> 11) * 0x1.0p-53; }  // [0, 1)
  double Normal() {
    if (has_spare_) {
      has_spare_ = false;
      return spare_;
    }
    const double u = 1.0 - Uniform(), v = Uniform();
    const double r = std::sqrt(-2.0 * std::log(u));
    spare_ = r * std::sin(2 * M_PI * v);
    has_spare_ = true;
    return r * std::cos(2 * M_PI * v);
  }
  // Student-t with 5 degrees of freedom, scaled to unit variance.
  double StudentT5() {
    double chi2 = 0;
    for (int i = 0; i < 5; ++i) {
      const double z = Normal();
      chi2 += z * z;
    }
    return Normal() / std::sqrt(chi2 / 5.0) * std::sqrt(3.0 / 5.0);
  }

 private:
  static uint64_t Rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }
  uint64_t s_[4];
  double spare_ = 0;
  bool has_spare_ = false;
};

enum class Kind { kLinear, kHeavyLinear, kEmbedding, kNorm, kRouter };

struct TensorSpec {
  std::string name;
  std::vector<int64_t> shape;
  Kind kind;
  uint64_t seed;
};

std::vector<float> Generate(const TensorSpec& t) {
  int64_t n = 1;
  for (int64_t d : t.shape) n *= d;
  std::vector<float> v(static_cast<size_t>(n));
  Rng rng(t.seed);
  if (t.kind == Kind::kNorm) {
    for (float& x : v) x = static_cast<float>(1.0 + 0.05 * rng.Normal());
    return v;
  }
  const int64_t rows = t.shape[0], cols = t.shape.size() > 1 ? t.shape[1] : 1;
  const double sigma =
      t.kind == Kind::kEmbedding ? 0.02 : 1.0 / std::sqrt(static_cast<double>(cols));
  // A few outlier input columns, as trained projections have.
  std::vector<float> column_scale(static_cast<size_t>(cols), 1.0f);
  if (t.kind == Kind::kLinear || t.kind == Kind::kHeavyLinear) {
    for (int64_t c = 0; c < cols; ++c) {
      if (rng.Uniform() < 0.01) column_scale[c] = static_cast<float>(3.0 + 5.0 * rng.Uniform());
    }
  }
  for (int64_t r = 0; r < rows; ++r) {
    const double row_scale = sigma * std::exp(0.25 * rng.Normal());
    for (int64_t c = 0; c < cols; ++c) {
      const double z = t.kind == Kind::kHeavyLinear ? rng.StudentT5() : rng.Normal();
      v[r * cols + c] = static_cast<float>(row_scale * z * column_scale[c]);
    }
  }
  return v;
}

std::vector<TensorSpec> Layout(const Config& c) {
  std::vector<TensorSpec> specs;
  uint64_t seed = c.seed * 1000003;
  auto add = [&](std::string name, std::vector<int64_t> shape, Kind kind) {
    specs.push_back({std::move(name), std::move(shape), kind, ++seed});
  };
  const int64_t h = c.hidden, head_dim = c.hidden / c.heads, kv = head_dim * c.kv_heads;
  add("model.embed_tokens.weight", {c.vocab, h}, Kind::kEmbedding);
  for (int l = 0; l < c.layers; ++l) {
    const std::string p = absl::StrCat("model.layers.", l, ".");
    add(p + "input_layernorm.weight", {h}, Kind::kNorm);
    add(p + "self_attn.q_proj.weight", {h, h}, Kind::kLinear);
    add(p + "self_attn.k_proj.weight", {kv, h}, Kind::kLinear);
    add(p + "self_attn.v_proj.weight", {kv, h}, Kind::kLinear);
    add(p + "self_attn.o_proj.weight", {h, h}, Kind::kHeavyLinear);
    add(p + "post_attention_layernorm.weight", {h}, Kind::kNorm);
    if (c.experts > 0) {
      add(p + "mlp.gate.weight", {c.experts, h}, Kind::kRouter);
      for (int e = 0; e < c.experts; ++e) {
        const std::string q = absl::StrCat(p, "mlp.experts.", e, ".");
        add(q + "gate_proj.weight", {c.intermediate, h}, Kind::kLinear);
        add(q + "up_proj.weight", {c.intermediate, h}, Kind::kLinear);
        add(q + "down_proj.weight", {h, c.intermediate}, Kind::kHeavyLinear);
      }
    } else {
      add(p + "mlp.gate_proj.weight", {c.intermediate, h}, Kind::kLinear);
      add(p + "mlp.up_proj.weight", {c.intermediate, h}, Kind::kLinear);
      add(p + "mlp.down_proj.weight", {h, c.intermediate}, Kind::kHeavyLinear);
    }
  }
  add("model.norm.weight", {h}, Kind::kNorm);
  add("lm_head.weight", {c.vocab, h}, Kind::kEmbedding);
  return specs;
}

bool WriteText(const fs::path& path, const std::string& text) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out << text;
  return out.good();
}

int Fail(const absl::Status& status) {
  std::fprintf(stderr, "nvfp4_demo_checkpoint: %s\n", std::string(status.message()).c_str());
  return 1;
}

int Run(const Config& c) {
  if (c.hidden % c.heads != 0 || c.heads % c.kv_heads != 0) {
    std::fprintf(stderr, "nvfp4_demo_checkpoint: heads must divide hidden, kv_heads heads\n");
    return 2;
  }
  const fs::path out(c.out);
  fs::create_directories(out);
  const std::string st_dtype = c.dtype == "f32" ? "F32" : (c.dtype == "f16" ? "F16" : "BF16");
  const size_t item = st_dtype == "F32" ? 4 : 2;
  const std::vector<TensorSpec> specs = Layout(c);

  // Shards in order, each at most shard_gb (HF naming; one file without an index otherwise).
  std::vector<std::vector<size_t>> shards(1);
  uint64_t in_shard = 0, total = 0;
  const uint64_t limit = c.shard_gb > 0 ? static_cast<uint64_t>(c.shard_gb * 1e9) : UINT64_MAX;
  for (size_t i = 0; i < specs.size(); ++i) {
    uint64_t bytes = item;
    for (int64_t d : specs[i].shape) bytes *= d;
    if (in_shard > 0 && in_shard + bytes > limit) {
      shards.emplace_back();
      in_shard = 0;
    }
    shards.back().push_back(i);
    in_shard += bytes;
    total += bytes;
  }
  nlohmann::ordered_json weight_map = nlohmann::ordered_json::object();
  for (size_t s = 0; s < shards.size(); ++s) {
    const std::string file = shards.size() == 1 ? "model.safetensors"
                                                : absl::StrFormat("model-%05d-of-%05d.safetensors",
                                                                  s + 1, shards.size());
    std::vector<SafetensorsEntry> entries;
    for (size_t i : shards[s]) {
      entries.push_back({specs[i].name, st_dtype, specs[i].shape});
      weight_map[specs[i].name] = file;
    }
    auto writer = SafetensorsWriter::Create((out / file).string(), entries, {{"format", "pt"}});
    if (!writer.ok()) return Fail(writer.status());
    for (size_t i : shards[s]) {
      const std::vector<float> v = Generate(specs[i]);
      absl::Status status;
      if (item == 4) {
        status = (*writer)->Write(v.data(), v.size() * 4);
      } else {
        std::vector<uint16_t> half(v.size());
        for (size_t k = 0; k < v.size(); ++k) {
          if (st_dtype == "BF16") {
            half[k] = nvfp4::FloatToBf16Bits(v[k]);
          } else {
            const _Float16 f = static_cast<_Float16>(v[k]);  // IEEE RNE (GCC)
            std::memcpy(&half[k], &f, 2);
          }
        }
        status = (*writer)->Write(half.data(), half.size() * 2);
      }
      if (!status.ok()) return Fail(status);
    }
    if (absl::Status status = (*writer)->Commit(); !status.ok()) return Fail(status);
  }
  if (shards.size() > 1) {
    nlohmann::ordered_json index = {{"metadata", {{"total_size", total}}},
                                    {"weight_map", weight_map}};
    WriteText(out / "model.safetensors.index.json", index.dump(2) + "\n");
  }

  nlohmann::ordered_json config = {
      {"architectures", {c.experts > 0 ? "MixtralForCausalLM" : "LlamaForCausalLM"}},
      {"model_type", c.experts > 0 ? "mixtral" : "llama"},
      {"hidden_size", c.hidden},
      {"intermediate_size", c.intermediate},
      {"num_hidden_layers", c.layers},
      {"num_attention_heads", c.heads},
      {"num_key_value_heads", c.kv_heads},
      {"vocab_size", c.vocab},
      {"max_position_embeddings", 2048},
      {"rms_norm_eps", 1e-5},
      {"rope_theta", 10000.0},
      {"hidden_act", "silu"},
      {"tie_word_embeddings", false},
      {"torch_dtype", c.dtype == "f32" ? "float32" : (c.dtype == "f16" ? "float16" : "bfloat16")},
      {"bos_token_id", 1},
      {"eos_token_id", 2},
  };
  if (c.experts > 0) {
    config["num_local_experts"] = c.experts;
    config["num_experts_per_tok"] = 2;
  }
  WriteText(out / "config.json", config.dump(2) + "\n");
  WriteText(out / "generation_config.json",
            nlohmann::ordered_json({{"bos_token_id", 1}, {"eos_token_id", 2}}).dump(2) + "\n");
  WriteText(out / "tokenizer_config.json",
            nlohmann::ordered_json({{"bos_token", "<s>"},
                                    {"eos_token", "</s>"},
                                    {"model_max_length", 2048},
                                    {"tokenizer_class", "LlamaTokenizer"}})
                    .dump(2) +
                "\n");
  WriteText(out / "special_tokens_map.json",
            nlohmann::ordered_json({{"bos_token", "<s>"}, {"eos_token", "</s>"}}).dump(2) + "\n");

  // Calibration statistics shaped like real ones: activation amax per Linear input (larger
  // after attention than before the MLP), importance = per-column sum of squares with a few
  // dominant channels.
  if (!c.calibration.empty() || !c.importance.empty()) {
    nlohmann::ordered_json amax = nlohmann::ordered_json::object();
    std::vector<nvfp4::checkpoint::SafetensorsBlob> blobs;
    std::vector<std::vector<float>> keep;
    Rng rng(c.seed * 7919 + 3);
    for (const TensorSpec& t : specs) {
      if (t.kind != Kind::kLinear && t.kind != Kind::kHeavyLinear) continue;
      const std::string module = t.name.substr(0, t.name.size() - 7);
      amax[module] = std::round((4.0 + 60.0 * rng.Uniform()) * 1000.0) / 1000.0;
      std::vector<float> importance(static_cast<size_t>(t.shape[1]));
      for (float& w : importance) {
        const double z = rng.Normal();
        w = static_cast<float>(std::exp(1.5 * z) * (rng.Uniform() < 0.01 ? 100.0 : 1.0));
      }
      keep.push_back(std::move(importance));
      blobs.push_back({{module + ".importance", "F32", {t.shape[1]}},
                       keep.back().data(),
                       keep.back().size() * 4});
    }
    if (!c.calibration.empty()) WriteText(c.calibration, amax.dump(1) + "\n");
    if (!c.importance.empty()) {
      // keep's buffers moved into the vector may have been reallocated: rebuild the pointers.
      for (size_t i = 0; i < blobs.size(); ++i) blobs[i].data = keep[i].data();
      if (absl::Status s = nvfp4::checkpoint::WriteSafetensors(c.importance, blobs, {}); !s.ok()) {
        return Fail(s);
      }
    }
  }
  std::printf("wrote a %d-layer %s checkpoint (%.1f MB, %zu tensors, %zu shard(s)) to %s\n",
              c.layers, c.experts > 0 ? "MoE" : "Llama", total / 1e6, specs.size(), shards.size(),
              c.out.c_str());
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  Config c;
  CLI::App app{"nvfp4_demo_checkpoint: write a synthetic Llama-shaped HF checkpoint"};
  app.add_option("--out", c.out, "output directory")->required();
  app.add_option("--layers", c.layers)->check(CLI::Range(1, 1000));
  app.add_option("--hidden", c.hidden)->check(CLI::Range(16, 65536));
  app.add_option("--intermediate", c.intermediate)->check(CLI::Range(16, 262144));
  app.add_option("--heads", c.heads)->check(CLI::Range(1, 1024));
  app.add_option("--kv-heads", c.kv_heads)->check(CLI::Range(1, 1024));
  app.add_option("--vocab", c.vocab)->check(CLI::Range(16, 1 << 20));
  app.add_option("--experts", c.experts, "MoE experts per layer (0: dense)")
      ->check(CLI::Range(0, 256));
  app.add_option("--seed", c.seed);
  app.add_option("--dtype", c.dtype)->check(CLI::IsMember({"bf16", "f16", "f32"}));
  app.add_option("--shard-gb", c.shard_gb, "shard the weights at this size (GB)");
  app.add_option("--calibration", c.calibration, "also write activation amax JSON here");
  app.add_option("--importance", c.importance, "also write WMSE importance safetensors here");
  CLI11_PARSE(app, argc, argv);
  return Run(c);
}
