// End-to-end tests for server/checkpoint/checkpoint_job.h (RunCheckpointJob) on tiny Llama-like
// checkpoints written by the tests, run through the CPU engine: output files and configs,
// byte-identical pass-through, fused global scales, bytes against a direct CpuBackend::Quantize,
// the compressed-tensors layout, W4A4 calibration, WMSE importance, resume after cancellation,
// and the error statuses.
#include "server/checkpoint/checkpoint_job.h"

#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "kernels/cpu/cpu_backend.h"
#include "kernels/dequantize.h"
#include "kernels/numerics/global_scale.h"
#include "kernels/numerics/half.h"
#include "server/checkpoint/safetensors.h"
#include "tests/testing/files.h"

namespace nvfp4::checkpoint {
namespace {

namespace fs = std::filesystem;
using Json = nlohmann::ordered_json;
using ::testing::AllOf;
using ::testing::Contains;
using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::IsEmpty;
using ::testing::Not;

// ---------------------------------------------------------------------------------------------
// Source checkpoints.

struct Tensor {
  std::string dtype = "BF16";
  std::vector<int64_t> shape;
  std::vector<uint8_t> bytes;

  int64_t rows() const { return shape[0]; }
  int64_t cols() const { return shape.size() > 1 ? shape[1] : 1; }
  float at(size_t i) const {
    uint16_t bits;
    std::memcpy(&bits, bytes.data() + 2 * i, 2);
    return Bf16BitsToFloat(bits);
  }
  size_t elements() const { return bytes.size() / 2; }
};

struct ModelSpec {
  int layers = 2;
  int hidden = 64;
  int intermediate = 96;
  int vocab = 128;
  int kv = 32;  // k/v_proj rows (GQA)
};

uint64_t SplitMix(uint64_t& state) {
  uint64_t z = (state += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

// Deterministic bf16 values: a triangular distribution of width `scale`, plus a few outliers.
Tensor RandomBf16(std::vector<int64_t> shape, float scale, uint64_t seed) {
  Tensor t;
  t.shape = std::move(shape);
  int64_t n = 1;
  for (int64_t d : t.shape) n *= d;
  t.bytes.resize(static_cast<size_t>(n) * 2);
  uint64_t state = seed * 0x100000001B3ull + 12345;
  for (int64_t i = 0; i < n; ++i) {
    const uint64_t r = SplitMix(state);
    const float u1 = static_cast<float>(r & 0xFFFFFF) / 16777216.0f;
    const float u2 = static_cast<float>((r >> 24) & 0xFFFFFF) / 16777216.0f;
    float v = scale * (u1 + u2 - 1.0f);
    if (((r >> 48) & 0x3FF) == 7) v *= 6.0f;  // ~0.1 % outliers
    const uint16_t bits = FloatToBf16Bits(v);
    std::memcpy(t.bytes.data() + 2 * i, &bits, 2);
  }
  return t;
}

using Model = std::map<std::string, Tensor>;  // sorted by name, like the job

Model MakeLlama(const ModelSpec& spec, uint64_t seed = 1) {
  Model m;
  const int64_t h = spec.hidden, f = spec.intermediate;
  m["model.embed_tokens.weight"] = RandomBf16({spec.vocab, h}, 0.5f, seed * 1000 + 1);
  m["lm_head.weight"] = RandomBf16({spec.vocab, h}, 0.1f, seed * 1000 + 2);
  m["model.norm.weight"] = RandomBf16({h}, 1.0f, seed * 1000 + 3);
  for (int l = 0; l < spec.layers; ++l) {
    const std::string p = absl::StrCat("model.layers.", l, ".");
    const uint64_t s = seed * 1000 + 100 * (l + 1);
    m[p + "input_layernorm.weight"] = RandomBf16({h}, 1.0f, s + 1);
    m[p + "post_attention_layernorm.weight"] = RandomBf16({h}, 1.0f, s + 2);
    // Different ranges so the fused group's amax comes from one member only.
    m[p + "self_attn.q_proj.weight"] = RandomBf16({h, h}, 0.02f, s + 3);
    m[p + "self_attn.k_proj.weight"] = RandomBf16({spec.kv, h}, l == 0 ? 0.08f : 0.03f, s + 4);
    m[p + "self_attn.v_proj.weight"] = RandomBf16({spec.kv, h}, l == 0 ? 0.03f : 0.09f, s + 5);
    m[p + "self_attn.o_proj.weight"] = RandomBf16({h, h}, 0.02f, s + 6);
    m[p + "mlp.gate_proj.weight"] = RandomBf16({f, h}, 0.02f, s + 7);
    m[p + "mlp.up_proj.weight"] = RandomBf16({f, h}, 0.05f, s + 8);
    m[p + "mlp.down_proj.weight"] = RandomBf16({h, f}, 0.03f, s + 9);
  }
  return m;
}

const std::vector<std::string>& LinearLeaves() {
  static const std::vector<std::string> kLeaves = {
      "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
      "mlp.gate_proj",    "mlp.up_proj",      "mlp.down_proj"};
  return kLeaves;
}

std::vector<std::string> QuantizedModules(int layers) {
  std::vector<std::string> modules;
  for (int l = 0; l < layers; ++l) {
    for (const std::string& leaf : LinearLeaves()) {
      modules.push_back(absl::StrCat("model.layers.", l, ".", leaf));
    }
  }
  return modules;
}

using testing_files::ReadBytes;
using testing_files::WriteBytes;

absl::Status WriteTensors(const std::string& path, const Model& model,
                          const std::vector<std::string>& names) {
  std::vector<SafetensorsBlob> blobs;
  for (const std::string& name : names) {
    const Tensor& t = model.at(name);
    blobs.push_back({{name, t.dtype, t.shape}, t.bytes.data(), t.bytes.size()});
  }
  return WriteSafetensors(path, blobs, {{"format", "pt"}});
}

Json SourceConfig(const ModelSpec& spec) {
  Json config = Json::object();
  config["architectures"] = Json::array({"LlamaForCausalLM"});
  config["hidden_size"] = spec.hidden;
  config["intermediate_size"] = spec.intermediate;
  config["num_hidden_layers"] = spec.layers;
  config["torch_dtype"] = "bfloat16";
  config["vocab_size"] = spec.vocab;
  return config;
}

// The files besides the weights that must be copied byte for byte (relative paths).
const std::vector<std::string>& CopiedFiles() {
  static const std::vector<std::string> kFiles = {
      "generation_config.json", "special_tokens_map.json", "tokenizer.json",
      "tokenizer_config.json", "extra/chat_template.jinja"};
  return kFiles;
}

// Writes `model` into `dir`: one model.safetensors (files == 1) or two shards + index.
void WriteModel(const std::string& dir, const Model& model, const ModelSpec& spec, int files = 1) {
  fs::create_directories(dir);
  std::vector<std::string> names;
  for (const auto& [name, t] : model) names.push_back(name);
  if (files == 1) {
    const absl::Status s = WriteTensors(dir + "/model.safetensors", model, names);
    ASSERT_TRUE(s.ok()) << s;
  } else {
    // Reverse-ish split: layers in the second file, everything else in the first.
    std::vector<std::string> a, b;
    for (const std::string& n : names) (absl::StrContains(n, "layers.") ? b : a).push_back(n);
    const std::string fa = "model-00001-of-00002.safetensors";
    const std::string fb = "model-00002-of-00002.safetensors";
    absl::Status s = WriteTensors(dir + "/" + fa, model, a);
    ASSERT_TRUE(s.ok()) << s;
    s = WriteTensors(dir + "/" + fb, model, b);
    ASSERT_TRUE(s.ok()) << s;
    Json index = Json::object();
    Json map = Json::object();
    for (const std::string& n : a) map[n] = fa;
    for (const std::string& n : b) map[n] = fb;
    index["metadata"] = Json::object({{"total_size", 0}});
    index["weight_map"] = map;
    WriteBytes(dir + "/model.safetensors.index.json", index.dump(2));
  }
  WriteBytes(dir + "/config.json", SourceConfig(spec).dump(2));
  WriteBytes(dir + "/generation_config.json", "{\"bos_token_id\": 1, \"eos_token_id\": 2}\n");
  WriteBytes(dir + "/special_tokens_map.json", "{\"bos_token\": \"<s>\"}");
  WriteBytes(dir + "/tokenizer.json", std::string("{\"version\": \"1.0\", \"raw\": \"\xff\x01\"}"));
  WriteBytes(dir + "/tokenizer_config.json", "{\"model_max_length\": 4096}\r\n");
  WriteBytes(dir + "/extra/chat_template.jinja", "{% for m in messages %}{{ m }}{% endfor %}");
  // Not copied: other weight formats and hidden files.
  WriteBytes(dir + "/pytorch_model.bin", "not a real pickle");
  WriteBytes(dir + "/.gitattributes", "*.safetensors filter=lfs");
}

// ---------------------------------------------------------------------------------------------
// Output checkpoints.

struct OutTensor {
  std::string dtype;
  std::vector<int64_t> shape;
  std::string bytes;
  std::string file;

  float f32() const {
    EXPECT_EQ(dtype, "F32");
    EXPECT_EQ(bytes.size(), 4u);
    float v = 0;
    if (bytes.size() == 4) std::memcpy(&v, bytes.data(), 4);
    return v;
  }
  uint32_t bits() const {
    uint32_t v = 0;
    if (bytes.size() == 4) std::memcpy(&v, bytes.data(), 4);
    return v;
  }
};

struct Output {
  std::map<std::string, OutTensor> tensors;
  std::map<std::string, std::map<std::string, std::string>> metadata;  // per shard file
  uint64_t data_bytes = 0;
};

Output ReadOutput(const std::string& dir) {
  Output out;
  std::vector<std::string> files;
  for (const auto& entry : fs::directory_iterator(dir)) {
    const std::string name = entry.path().filename().string();
    if (absl::EndsWith(name, ".safetensors")) files.push_back(name);
  }
  std::sort(files.begin(), files.end());
  for (const std::string& file : files) {
    absl::StatusOr<MappedSafetensors> mapped = MappedSafetensors::Open(dir + "/" + file);
    EXPECT_TRUE(mapped.ok()) << mapped.status();
    if (!mapped.ok()) continue;
    out.metadata[file] = mapped->header().metadata;
    out.data_bytes += mapped->file_size() - mapped->header().data_start;
    for (const SafetensorsTensorInfo& info : mapped->header().tensors) {
      OutTensor t;
      t.dtype = info.dtype;
      t.shape = info.shape;
      t.bytes.assign(reinterpret_cast<const char*>(mapped->data(info)), info.bytes());
      t.file = file;
      const bool inserted = out.tensors.emplace(info.name, std::move(t)).second;
      EXPECT_TRUE(inserted) << info.name << " twice in the output";
    }
  }
  return out;
}

Json ReadJson(const std::string& path) {
  const Json json = Json::parse(ReadBytes(path), nullptr, false);
  EXPECT_FALSE(json.is_discarded()) << path;
  return json;
}

// Every regular file under `dir` (relative path -> bytes).
std::map<std::string, std::string> Tree(const std::string& dir) {
  std::map<std::string, std::string> files;
  for (const auto& entry : fs::recursive_directory_iterator(dir)) {
    if (entry.is_regular_file()) {
      files[fs::relative(entry.path(), dir).string()] = ReadBytes(entry.path().string());
    }
  }
  return files;
}

void ExpectSameTree(const std::string& a, const std::string& b) {
  const std::map<std::string, std::string> ta = Tree(a), tb = Tree(b);
  std::vector<std::string> na, nb;
  for (const auto& [n, bytes] : ta) na.push_back(n);
  for (const auto& [n, bytes] : tb) nb.push_back(n);
  ASSERT_EQ(na, nb);
  for (const auto& [n, bytes] : ta) EXPECT_TRUE(bytes == tb.at(n)) << n << " differs";
}

float Amax(const Tensor& t) {
  float m = 0;
  for (size_t i = 0; i < t.elements(); ++i) m = std::max(m, std::fabs(t.at(i)));
  return m;
}

const TensorReport* Row(const CheckpointReport& report, const std::string& name) {
  for (const TensorReport& r : report.tensors) {
    if (r.name == name) return &r;
  }
  ADD_FAILURE() << "no report row for " << name;
  return nullptr;
}

// ---------------------------------------------------------------------------------------------
// The fixture: a temp dir, the CPU engine, and a recorded progress callback.

struct Event {
  std::string phase;
  int64_t done = 0, total = 0;
  uint64_t bytes_done = 0, bytes_total = 0;
  std::string tensor;
  int shard = -1;
  std::string message;
};

class CheckpointJobTest : public ::testing::Test {
 protected:
  void SetUp() override {
    const testing::TestInfo* info = testing::UnitTest::GetInstance()->current_test_info();
    dir_ = (fs::path(testing::TempDir()) / absl::StrCat("ckpt_job_", info->name(), "_", ::getpid()))
               .string();
    fs::remove_all(dir_);
    fs::create_directories(dir_);
    absl::StatusOr<std::unique_ptr<cpu::CpuBackend>> backend = cpu::CpuBackend::Create({});
    ASSERT_TRUE(backend.ok()) << backend.status();
    backend_ = *std::move(backend);
  }
  void TearDown() override { fs::remove_all(dir_); }

  std::string Path(const std::string& name) const { return dir_ + "/" + name; }

  // Writes the default tiny model to <dir>/model and returns its tensors.
  Model TinyModel(int files = 1) {
    const Model model = MakeLlama(spec_);
    WriteModel(Path("model"), model, spec_, files);
    return model;
  }

  CheckpointJobOptions Options(const std::string& out) const {
    CheckpointJobOptions options;
    options.model_dir = Path("model");
    options.out_dir = Path(out);
    return options;
  }

  absl::StatusOr<CheckpointReport> Run(const CheckpointJobOptions& options,
                                       const std::atomic<bool>* cancelled = nullptr,
                                       int cancel_after_shard = -1) {
    events_.clear();
    cancel_flag_ = false;
    const CheckpointProgressFn progress = [&](const CheckpointEvent& e) {
      Event copy{e.phase, e.done, e.total, e.bytes_done, e.bytes_total, "", -1, e.message};
      if (e.tensor != nullptr) {
        copy.tensor = e.tensor->name;
        copy.shard = e.tensor->shard;
        // The first tensor of shard `cancel_after_shard + 1` is done: that shard is committed.
        if (cancel_after_shard >= 0 && e.tensor->shard > cancel_after_shard) cancel_flag_ = true;
      }
      events_.push_back(std::move(copy));
    };
    return RunCheckpointJob(options, *backend_, progress,
                            cancel_after_shard >= 0 ? &cancel_flag_ : cancelled);
  }

  CheckpointReport RunOk(const CheckpointJobOptions& options) {
    absl::StatusOr<CheckpointReport> report = Run(options);
    EXPECT_TRUE(report.ok()) << report.status();
    return report.ok() ? *std::move(report) : CheckpointReport{};
  }

  QuantizedTensor Direct(const Tensor& t, const QuantizeOptions& q,
                         const ImportanceView& importance = {}) {
    absl::StatusOr<QuantizedTensor> r =
        backend_->Quantize({DType::kBF16, t.rows(), t.cols(), t.bytes.data()}, importance, q);
    EXPECT_TRUE(r.ok()) << r.status();
    return r.ok() ? *std::move(r) : QuantizedTensor{};
  }

  ModelSpec spec_;
  std::string dir_;
  std::unique_ptr<cpu::CpuBackend> backend_;
  std::vector<Event> events_;
  std::atomic<bool> cancel_flag_{false};
};

// ---------------------------------------------------------------------------------------------
// Output files and configs.

TEST_F(CheckpointJobTest, ModelOptOutputFilesAndConfigs) {
  const Model model = TinyModel();
  const CheckpointReport report = RunOk(Options("out"));
  const std::string out = Path("out");

  // One shard, no index; the staging directory and its journal are gone.
  EXPECT_TRUE(fs::is_regular_file(out + "/model.safetensors"));
  EXPECT_FALSE(fs::exists(out + "/model.safetensors.index.json"));
  EXPECT_FALSE(fs::exists(StagingDirFor(out)));
  EXPECT_FALSE(fs::exists(out + "/.nvfp4-journal.json"));
  // Copied byte for byte; other weight formats and hidden files are not.
  for (const std::string& f : CopiedFiles()) {
    ASSERT_TRUE(fs::exists(out + "/" + f)) << f;
    EXPECT_EQ(ReadBytes(out + "/" + f), ReadBytes(Path("model/" + f))) << f;
  }
  EXPECT_FALSE(fs::exists(out + "/pytorch_model.bin"));
  EXPECT_FALSE(fs::exists(out + "/.gitattributes"));

  // config.json: the source's keys, in order, plus quantization_config.
  const Json config = ReadJson(out + "/config.json");
  const Json source_config = SourceConfig(spec_);
  std::vector<std::string> keys;
  for (const auto& item : config.items()) keys.push_back(item.key());
  std::vector<std::string> expected_keys;
  for (const auto& item : source_config.items()) expected_keys.push_back(item.key());
  expected_keys.push_back("quantization_config");
  EXPECT_EQ(keys, expected_keys);
  EXPECT_EQ(config["hidden_size"], 64);
  const Json& qc = config["quantization_config"];
  EXPECT_EQ(qc["quant_method"], "modelopt");
  EXPECT_EQ(qc["quant_algo"], "W4A16_NVFP4");
  EXPECT_EQ(qc["ignore"], Json::array({"lm_head", "model.embed_tokens"}));
  EXPECT_EQ(qc["group_size"], 16);
  EXPECT_TRUE(qc["config_groups"]["group_0"].contains("weights"));
  EXPECT_FALSE(qc["config_groups"]["group_0"].contains("input_activations"));
  EXPECT_EQ(qc["nvfp4_scalesweep"]["method"], "scalesweep");
  EXPECT_EQ(qc["nvfp4_scalesweep"]["scale_max"], 256);

  const Json hf = ReadJson(out + "/hf_quant_config.json");
  EXPECT_EQ(hf["quantization"]["quant_algo"], "W4A16_NVFP4");
  EXPECT_EQ(hf["quantization"]["group_size"], 16);
  EXPECT_TRUE(hf["quantization"].contains("kv_cache_quant_algo"));
  EXPECT_EQ(hf["quantization"]["exclude_modules"], Json::array({"lm_head", "model.embed_tokens"}));

  // The tensors: exactly the planned names, dtypes and shapes.
  const Output output = ReadOutput(out);
  std::map<std::string, std::pair<std::string, std::vector<int64_t>>> expected;
  for (const auto& [name, t] : model) expected[name] = {t.dtype, t.shape};
  for (const std::string& m : QuantizedModules(2)) {
    const Tensor& t = model.at(m + ".weight");
    expected[m + ".weight"] = {"U8", {t.rows(), t.cols() / 2}};
    expected[m + ".weight_scale"] = {"F8_E4M3", {t.rows(), t.cols() / 16}};
    expected[m + ".weight_scale_2"] = {"F32", {}};
  }
  std::map<std::string, std::pair<std::string, std::vector<int64_t>>> actual;
  for (const auto& [name, t] : output.tensors) actual[name] = {t.dtype, t.shape};
  EXPECT_EQ(actual, expected);
  ASSERT_EQ(output.metadata.size(), 1u);
  const auto& metadata = output.metadata.at("model.safetensors");
  EXPECT_EQ(metadata.at("format"), "pt");
  EXPECT_EQ(metadata.at("nvfp4.layout"), "modelopt");
  EXPECT_EQ(metadata.at("nvfp4.activations"), "none");

  // Pass-through tensors are byte-identical.
  for (const char* name : {"model.embed_tokens.weight", "lm_head.weight", "model.norm.weight",
                           "model.layers.0.input_layernorm.weight",
                           "model.layers.1.post_attention_layernorm.weight"}) {
    const Tensor& t = model.at(name);
    EXPECT_TRUE(output.tensors.at(name).bytes ==
                std::string(reinterpret_cast<const char*>(t.bytes.data()), t.bytes.size()))
        << name;
  }
  // Scale bytes are never NaN (0x7F/0xFF) nor negative.
  for (const std::string& m : QuantizedModules(2)) {
    for (char c : output.tensors.at(m + ".weight_scale").bytes) {
      ASSERT_LT(static_cast<uint8_t>(c), 0x7F) << m;
    }
  }

  // The report.
  EXPECT_EQ(report.format, "modelopt");
  EXPECT_EQ(report.method, "scalesweep");
  EXPECT_EQ(report.objective, "mse");
  EXPECT_EQ(report.scale_max, 256);
  EXPECT_FALSE(report.w4a4);
  EXPECT_EQ(report.totals.tensors, static_cast<int>(model.size()));
  EXPECT_EQ(report.totals.quantized, 14);
  EXPECT_EQ(report.totals.passed_through, static_cast<int>(model.size()) - 14);
  EXPECT_EQ(report.totals.shards, 1);
  EXPECT_EQ(report.totals.shards_resumed, 0);
  EXPECT_EQ(report.totals.output_bytes, output.data_bytes);
  ASSERT_EQ(report.tensors.size(), model.size());
  size_t i = 0;
  for (const auto& [name, t] : model) {
    const TensorReport& r = report.tensors[i++];
    EXPECT_EQ(r.name, name);
    EXPECT_EQ(r.shape, t.shape);
    EXPECT_EQ(r.input_bytes, t.bytes.size());
  }
  EXPECT_THAT(Row(report, "lm_head.weight")->reason, HasSubstr("lm_head"));
  EXPECT_FALSE(Row(report, "lm_head.weight")->quantized);
  const TensorReport* o = Row(report, "model.layers.0.self_attn.o_proj.weight");
  ASSERT_NE(o, nullptr);
  EXPECT_TRUE(o->quantized);
  EXPECT_EQ(o->objective, "mse");
  EXPECT_EQ(o->group, "");
  EXPECT_EQ(o->input_amax, -1.0f);
  EXPECT_GT(o->metrics.mse, 0.0);
  EXPECT_LE(o->metrics.gain, 1.0);
  EXPECT_EQ(Row(report, "model.layers.1.self_attn.k_proj.weight")->group,
            "model.layers.1.self_attn.{q,k,v}_proj");

  // Progress: every tensor once in the quantize phase, bytes monotonic, "done" last.
  ASSERT_FALSE(events_.empty());
  EXPECT_EQ(events_.back().phase, "done");
  std::vector<std::string> quantized_events;
  uint64_t last_bytes = 0;
  for (const Event& e : events_) {
    if (e.phase != "quantize" || e.tensor.empty()) continue;
    quantized_events.push_back(e.tensor);
    EXPECT_GE(e.bytes_done, last_bytes);
    last_bytes = e.bytes_done;
    EXPECT_EQ(e.total, static_cast<int64_t>(model.size()));
    EXPECT_EQ(e.done, static_cast<int64_t>(quantized_events.size()));
  }
  std::vector<std::string> names;
  for (const auto& [name, t] : model) names.push_back(name);
  EXPECT_EQ(quantized_events, names);
  EXPECT_EQ(last_bytes, report.totals.input_bytes);
}

TEST_F(CheckpointJobTest, ExistingEmptyOutputDirectoryIsReplaced) {
  TinyModel();
  fs::create_directories(Path("out"));
  RunOk(Options("out/"));  // a trailing slash too
  EXPECT_TRUE(fs::is_regular_file(Path("out/model.safetensors")));
  EXPECT_FALSE(fs::exists(StagingDirFor(Path("out/"))));
  EXPECT_EQ(StagingDirFor(Path("out/")), Path(".out.nvfp4-partial"));
  EXPECT_EQ(StagingDirFor("/a/b/out"), "/a/b/.out.nvfp4-partial");
}

TEST_F(CheckpointJobTest, ShardedSourceGivesTheSameOutput) {
  TinyModel(/*files=*/2);
  RunOk(Options("out_sharded"));
  fs::remove_all(Path("model"));
  TinyModel(/*files=*/1);
  RunOk(Options("out_single"));
  ExpectSameTree(Path("out_sharded"), Path("out_single"));
}

TEST_F(CheckpointJobTest, ModelWithoutConfigGetsOneWithQuantizationConfigOnly) {
  TinyModel();
  fs::remove(Path("model/config.json"));
  const CheckpointReport report = RunOk(Options("out"));
  const Json config = ReadJson(Path("out/config.json"));
  ASSERT_EQ(config.size(), 1u);
  EXPECT_EQ(config["quantization_config"]["quant_method"], "modelopt");
  EXPECT_THAT(report.notes, ::testing::Contains(HasSubstr("config.json")));
}

// ---------------------------------------------------------------------------------------------
// Values.

TEST_F(CheckpointJobTest, FusedGroupsShareOneGlobalScale) {
  const Model model = TinyModel();
  const CheckpointReport report = RunOk(Options("out"));
  const Output output = ReadOutput(Path("out"));
  for (int l = 0; l < 2; ++l) {
    SCOPED_TRACE(absl::StrCat("layer ", l));
    const std::string p = absl::StrCat("model.layers.", l, ".");
    auto s2 = [&](const std::string& leaf) {
      return output.tensors.at(p + leaf + ".weight_scale_2");
    };
    auto amax = [&](const std::string& leaf) { return Amax(model.at(p + leaf + ".weight")); };
    const float qkv_amax =
        std::max({amax("self_attn.q_proj"), amax("self_attn.k_proj"), amax("self_attn.v_proj")});
    const float g_qkv = GlobalScaleFromAmax(qkv_amax, 256);
    EXPECT_EQ(s2("self_attn.q_proj").bits(), s2("self_attn.k_proj").bits());
    EXPECT_EQ(s2("self_attn.q_proj").bits(), s2("self_attn.v_proj").bits());
    EXPECT_EQ(s2("self_attn.q_proj").f32(), g_qkv);
    EXPECT_EQ(s2("self_attn.q_proj").f32(), qkv_amax / (6.0f * 256.0f));
    // The group max is not q's own: the sharing is visible.
    EXPECT_NE(GlobalScaleFromAmax(amax("self_attn.q_proj"), 256), g_qkv);
    const float gu_amax = std::max(amax("mlp.gate_proj"), amax("mlp.up_proj"));
    EXPECT_EQ(s2("mlp.gate_proj").bits(), s2("mlp.up_proj").bits());
    EXPECT_EQ(s2("mlp.gate_proj").f32(), GlobalScaleFromAmax(gu_amax, 256));
    // Non-fused layers use their own amax.
    EXPECT_EQ(s2("self_attn.o_proj").f32(), GlobalScaleFromAmax(amax("self_attn.o_proj"), 256));
    EXPECT_EQ(s2("mlp.down_proj").f32(), GlobalScaleFromAmax(amax("mlp.down_proj"), 256));
    // The report agrees.
    for (const char* leaf : {"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"}) {
      const TensorReport* r = Row(report, p + leaf + ".weight");
      ASSERT_NE(r, nullptr);
      EXPECT_EQ(r->amax, qkv_amax) << leaf;
      EXPECT_EQ(r->global_scale, g_qkv) << leaf;
    }
  }
}

TEST_F(CheckpointJobTest, DequantizedOutputGivesTheReportedMse) {
  const Model model = TinyModel();
  const CheckpointReport report = RunOk(Options("out"));
  const Output output = ReadOutput(Path("out"));
  for (const std::string& m : QuantizedModules(2)) {
    SCOPED_TRACE(m);
    const Tensor& src = model.at(m + ".weight");
    const OutTensor& packed = output.tensors.at(m + ".weight");
    const OutTensor& scales = output.tensors.at(m + ".weight_scale");
    const float g = output.tensors.at(m + ".weight_scale_2").f32();
    std::vector<float> deq(src.elements());
    DequantizeToF32(reinterpret_cast<const uint8_t*>(packed.bytes.data()),
                    reinterpret_cast<const uint8_t*>(scales.bytes.data()), g, src.rows(),
                    src.cols(), deq.data());
    double sq = 0;
    for (size_t i = 0; i < deq.size(); ++i) {
      const double e = static_cast<double>(src.at(i)) - static_cast<double>(deq[i]);
      sq += e * e;
    }
    const double mse = sq / static_cast<double>(deq.size());
    const TensorReport* r = Row(report, m + ".weight");
    ASSERT_NE(r, nullptr);
    EXPECT_EQ(r->metrics.elements, static_cast<int64_t>(deq.size()));
    ASSERT_GT(mse, 0.0);
    // The engine accumulates the squared errors in fp32 lanes folded into fp64 every 64 blocks
    // (kernels/numerics/block_math.h, "relative rounding error around 1e-6 or better"): an fp64
    // reference agrees to that bound, not to 1e-9 (observed: a few 1e-8).
    EXPECT_NEAR(r->metrics.mse, mse, 1e-6 * mse);
  }
}

TEST_F(CheckpointJobTest, QuantizedBytesEqualADirectQuantize) {
  const Model model = TinyModel();
  const CheckpointReport report = RunOk(Options("out"));
  const Output output = ReadOutput(Path("out"));
  QuantizeOptions q;  // the job's defaults: scalesweep, mse, F = 256
  for (const char* m : {"model.layers.0.self_attn.o_proj", "model.layers.1.mlp.down_proj"}) {
    SCOPED_TRACE(m);
    const QuantizedTensor direct = Direct(model.at(std::string(m) + ".weight"), q);
    EXPECT_TRUE(output.tensors.at(std::string(m) + ".weight").bytes ==
                std::string(direct.packed.begin(), direct.packed.end()));
    EXPECT_TRUE(output.tensors.at(std::string(m) + ".weight_scale").bytes ==
                std::string(direct.scales.begin(), direct.scales.end()));
    EXPECT_EQ(output.tensors.at(std::string(m) + ".weight_scale_2").f32(), direct.global_scale);
    const TensorReport* r = Row(report, std::string(m) + ".weight");
    ASSERT_NE(r, nullptr);
    EXPECT_EQ(r->metrics.mse, direct.metrics.mse);  // same engine, same sums
    EXPECT_EQ(r->metrics.absmax_mse, direct.metrics.absmax_mse);
  }
  // A fused member equals a direct quantize given the group's amax.
  const std::string p = "model.layers.1.self_attn.";
  q.amax = std::max({Amax(model.at(p + "q_proj.weight")), Amax(model.at(p + "k_proj.weight")),
                     Amax(model.at(p + "v_proj.weight"))});
  const QuantizedTensor k = Direct(model.at(p + "k_proj.weight"), q);
  EXPECT_TRUE(output.tensors.at(p + "k_proj.weight").bytes ==
              std::string(k.packed.begin(), k.packed.end()));
  EXPECT_TRUE(output.tensors.at(p + "k_proj.weight_scale").bytes ==
              std::string(k.scales.begin(), k.scales.end()));
}

TEST_F(CheckpointJobTest, ScaleMax448AndAbsMaxReproduceTheModelOptRule) {
  const Model model = TinyModel();
  CheckpointJobOptions options = Options("out");
  options.method = Method::kAbsMax;
  options.scale_max = 448;
  options.concurrency = 4;
  RunOk(options);
  const Output output = ReadOutput(Path("out"));
  const std::string m = "model.layers.0.mlp.down_proj";
  const Tensor& src = model.at(m + ".weight");
  const float amax = Amax(src);
  EXPECT_EQ(output.tensors.at(m + ".weight_scale_2").f32(), amax / 2688.0f);
  QuantizeOptions q;
  q.method = Method::kAbsMax;
  q.scale_max = 448;
  const QuantizedTensor direct = Direct(src, q);
  EXPECT_TRUE(output.tensors.at(m + ".weight").bytes ==
              std::string(direct.packed.begin(), direct.packed.end()));
  EXPECT_EQ(ReadJson(Path("out/config.json"))["quantization_config"]["nvfp4_scalesweep"]["method"],
            "absmax");
  EXPECT_EQ(output.metadata.at("model.safetensors").at("nvfp4.scale_max"), "448");
}

// ---------------------------------------------------------------------------------------------
// compressed-tensors.

TEST_F(CheckpointJobTest, CompressedTensorsHasTheModelOptBytesUnderItsNames) {
  const Model model = TinyModel();
  RunOk(Options("modelopt"));
  CheckpointJobOptions options = Options("ct");
  options.format = OutputFormat::kCompressedTensors;
  const CheckpointReport report = RunOk(options);
  EXPECT_EQ(report.format, "compressed-tensors");
  const Output mo = ReadOutput(Path("modelopt"));
  const Output ct = ReadOutput(Path("ct"));
  EXPECT_EQ(ct.tensors.size(), mo.tensors.size());
  for (const std::string& m : QuantizedModules(2)) {
    SCOPED_TRACE(m);
    ASSERT_TRUE(ct.tensors.contains(m + ".weight_packed"));
    EXPECT_FALSE(ct.tensors.contains(m + ".weight"));
    EXPECT_FALSE(ct.tensors.contains(m + ".weight_scale_2"));
    EXPECT_TRUE(ct.tensors.at(m + ".weight_packed").bytes == mo.tensors.at(m + ".weight").bytes);
    EXPECT_EQ(ct.tensors.at(m + ".weight_packed").dtype, "U8");
    EXPECT_TRUE(ct.tensors.at(m + ".weight_scale").bytes ==
                mo.tensors.at(m + ".weight_scale").bytes);
    EXPECT_EQ(ct.tensors.at(m + ".weight_scale").dtype, "F8_E4M3");
    const OutTensor& global = ct.tensors.at(m + ".weight_global_scale");
    EXPECT_EQ(global.shape, std::vector<int64_t>{1});
    const float s2 = mo.tensors.at(m + ".weight_scale_2").f32();
    EXPECT_EQ(global.f32(), 1.0f / s2);
  }
  for (const char* name : {"lm_head.weight", "model.embed_tokens.weight", "model.norm.weight"}) {
    EXPECT_TRUE(ct.tensors.at(name).bytes == mo.tensors.at(name).bytes) << name;
  }
  EXPECT_FALSE(fs::exists(Path("ct/hf_quant_config.json")));
  EXPECT_TRUE(fs::exists(Path("modelopt/hf_quant_config.json")));
  const Json qc = ReadJson(Path("ct/config.json"))["quantization_config"];
  EXPECT_EQ(qc["quant_method"], "compressed-tensors");
  EXPECT_EQ(qc["format"], "nvfp4-pack-quantized");
  EXPECT_EQ(qc["quantization_status"], "compressed");
  EXPECT_EQ(qc["ignore"], Json::array({"lm_head", "model.embed_tokens"}));
  EXPECT_EQ(qc["config_groups"]["group_0"]["format"], "nvfp4-pack-quantized");
  EXPECT_TRUE(qc["config_groups"]["group_0"]["input_activations"].is_null());
  EXPECT_EQ(ct.metadata.at("model.safetensors").at("nvfp4.layout"), "compressed-tensors");
}

// ---------------------------------------------------------------------------------------------
// W4A4.

TEST_F(CheckpointJobTest, W4A4InputScalesComeFromTheCalibrationGroupMax) {
  const Model model = TinyModel();
  Json calibration = Json::object();
  std::map<std::string, float> amax_x;
  float v = 1.5f;
  for (const std::string& m : QuantizedModules(2)) {
    amax_x[m] = v;
    calibration[m] = v;
    v += 0.75f;  // exactly representable; q < k < v so the group max is v_proj's
  }
  calibration["model.layers.9.unused"] = 100.0;  // extra entries are ignored, with a note
  WriteBytes(Path("calib.json"), calibration.dump());
  CheckpointJobOptions options = Options("out");
  options.calibration_path = Path("calib.json");
  const CheckpointReport report = RunOk(options);
  EXPECT_TRUE(report.w4a4);
  EXPECT_THAT(report.notes, Contains(AllOf(HasSubstr("calib.json: 1 entry matches no quantized"),
                                           HasSubstr("model.layers.9.unused"))));
  const Output output = ReadOutput(Path("out"));
  for (int l = 0; l < 2; ++l) {
    const std::string p = absl::StrCat("model.layers.", l, ".");
    const float qkv = std::max({amax_x[p + "self_attn.q_proj"], amax_x[p + "self_attn.k_proj"],
                                amax_x[p + "self_attn.v_proj"]});
    const float gu = std::max(amax_x[p + "mlp.gate_proj"], amax_x[p + "mlp.up_proj"]);
    const std::map<std::string, float> expected = {
        {"self_attn.q_proj", qkv},
        {"self_attn.k_proj", qkv},
        {"self_attn.v_proj", qkv},
        {"self_attn.o_proj", amax_x[p + "self_attn.o_proj"]},
        {"mlp.gate_proj", gu},
        {"mlp.up_proj", gu},
        {"mlp.down_proj", amax_x[p + "mlp.down_proj"]}};
    for (const auto& [leaf, a] : expected) {
      const OutTensor& s = output.tensors.at(p + leaf + ".input_scale");
      EXPECT_TRUE(s.shape.empty()) << leaf;
      EXPECT_EQ(s.f32(), a / 2688.0f) << p << leaf;
      const TensorReport* r = Row(report, p + leaf + ".weight");
      ASSERT_NE(r, nullptr);
      EXPECT_EQ(r->input_amax, a) << p << leaf;
    }
  }
  EXPECT_FALSE(output.tensors.contains("lm_head.input_scale"));
  const Json qc = ReadJson(Path("out/config.json"))["quantization_config"];
  EXPECT_EQ(qc["quant_algo"], "NVFP4");
  EXPECT_TRUE(qc["config_groups"]["group_0"].contains("input_activations"));
  EXPECT_EQ(ReadJson(Path("out/hf_quant_config.json"))["quantization"]["quant_algo"], "NVFP4");
  EXPECT_EQ(output.metadata.at("model.safetensors").at("nvfp4.activations"), "nvfp4");

  // compressed-tensors stores the reciprocal, [1].
  CheckpointJobOptions ct_options = options;
  ct_options.out_dir = Path("out_ct");
  ct_options.format = OutputFormat::kCompressedTensors;
  RunOk(ct_options);
  const Output ct = ReadOutput(Path("out_ct"));
  const std::string o = "model.layers.1.self_attn.o_proj";
  EXPECT_EQ(ct.tensors.at(o + ".input_global_scale").shape, std::vector<int64_t>{1});
  EXPECT_EQ(ct.tensors.at(o + ".input_global_scale").f32(), 2688.0f / amax_x[o]);
  const std::string k = "model.layers.0.self_attn.k_proj";
  EXPECT_EQ(ct.tensors.at(k + ".input_global_scale").f32(),
            2688.0f / amax_x["model.layers.0.self_attn.v_proj"]);
  EXPECT_FALSE(ReadJson(Path(
      "out_ct/config.json"))["quantization_config"]["config_groups"]["group_0"]["input_activations"]
                   .is_null());
}

TEST_F(CheckpointJobTest, W4A4ZeroActivationAmaxGivesScaleOne) {
  TinyModel();
  Json calibration = Json::object();
  for (const std::string& m : QuantizedModules(2)) calibration[m] = 4.0;
  calibration["model.layers.0.self_attn.o_proj"] = 0.0;
  WriteBytes(Path("calib.json"), calibration.dump());
  CheckpointJobOptions options = Options("out");
  options.calibration_path = Path("calib.json");
  RunOk(options);
  const Output output = ReadOutput(Path("out"));
  EXPECT_EQ(output.tensors.at("model.layers.0.self_attn.o_proj.input_scale").f32(), 1.0f);
  EXPECT_EQ(output.tensors.at("model.layers.1.self_attn.o_proj.input_scale").f32(), 4.0f / 2688.0f);
  options.out_dir = Path("out_ct");
  options.format = OutputFormat::kCompressedTensors;
  RunOk(options);
  const Output ct = ReadOutput(Path("out_ct"));
  EXPECT_EQ(ct.tensors.at("model.layers.0.self_attn.o_proj.input_global_scale").f32(), 1.0f);
  EXPECT_EQ(ct.tensors.at("model.layers.1.self_attn.o_proj.input_global_scale").f32(),
            2688.0f / 4.0f);
}

TEST_F(CheckpointJobTest, W4A4MissingModuleIsInvalidArgumentNamingIt) {
  TinyModel();
  Json calibration = Json::object();
  for (const std::string& m : QuantizedModules(2)) {
    if (m != "model.layers.1.mlp.down_proj") calibration[m] = 2.0;
  }
  WriteBytes(Path("calib.json"), calibration.dump());
  CheckpointJobOptions options = Options("out");
  options.calibration_path = Path("calib.json");
  absl::StatusOr<CheckpointReport> report = Run(options);
  EXPECT_EQ(report.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(report.status().message(), HasSubstr("model.layers.1.mlp.down_proj"));
  EXPECT_FALSE(fs::exists(Path("out")));

  // A negative amax, or not an object at all.
  calibration["model.layers.1.mlp.down_proj"] = -1.0;
  WriteBytes(Path("calib.json"), calibration.dump());
  report = Run(options);
  EXPECT_EQ(report.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(report.status().message(), HasSubstr("model.layers.1.mlp.down_proj"));
  WriteBytes(Path("calib.json"), "[1, 2]");
  EXPECT_EQ(Run(options).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_FALSE(fs::exists(Path("out")));
}

// ---------------------------------------------------------------------------------------------
// WMSE.

TEST_F(CheckpointJobTest, WmseUsesImportanceWhereGivenAndFallsBackElsewhere) {
  const Model model = TinyModel();
  // Importance for three modules only, one of them a fused member.
  std::map<std::string, std::vector<float>> importance;
  for (const auto& [m, k] :
       std::vector<std::pair<std::string, int>>{{"model.layers.0.self_attn.o_proj", 64},
                                                {"model.layers.0.mlp.down_proj", 96},
                                                {"model.layers.0.self_attn.q_proj", 64}}) {
    std::vector<float> w(k);
    for (int i = 0; i < k; ++i) w[i] = (i % 7 == 0) ? 50.0f : 0.5f + 0.01f * i;
    importance[m] = w;
  }
  std::vector<SafetensorsBlob> blobs;
  for (const auto& [m, w] : importance) {
    blobs.push_back(
        {{m + ".importance", "F32", {static_cast<int64_t>(w.size())}}, w.data(), w.size() * 4});
  }
  ASSERT_TRUE(WriteSafetensors(Path("importance.safetensors"), blobs, {}).ok());

  CheckpointJobOptions options = Options("out");
  options.objective = Objective::kWmse;
  options.importance_path = Path("importance.safetensors");
  const CheckpointReport report = RunOk(options);
  EXPECT_EQ(report.objective, "wmse");
  int weighted = 0, fallback = 0;
  for (const std::string& m : QuantizedModules(2)) {
    const TensorReport* r = Row(report, m + ".weight");
    ASSERT_NE(r, nullptr);
    if (importance.contains(m)) {
      EXPECT_EQ(r->objective, "wmse") << m;
      EXPECT_GT(r->metrics.wmse, 0.0) << m;
      ++weighted;
    } else {
      EXPECT_EQ(r->objective, "mse (no importance)") << m;
      ++fallback;
    }
  }
  EXPECT_EQ(weighted, 3);
  EXPECT_EQ(fallback, 11);
  EXPECT_THAT(report.notes, ::testing::Contains(HasSubstr("11 of 14")));
  EXPECT_EQ(
      ReadJson(Path("out/config.json"))["quantization_config"]["nvfp4_scalesweep"]["objective"],
      "wmse");

  // The weighted bytes are the engine's WMSE result with that importance.
  const Output output = ReadOutput(Path("out"));
  const std::string down = "model.layers.0.mlp.down_proj";
  QuantizeOptions q;
  q.objective = Objective::kWmse;
  const std::vector<float>& w = importance.at(down);
  const QuantizedTensor direct =
      Direct(model.at(down + ".weight"), q,
             {ImportanceLayout::kPerColumn, w.data(), static_cast<int64_t>(w.size())});
  EXPECT_TRUE(output.tensors.at(down + ".weight").bytes ==
              std::string(direct.packed.begin(), direct.packed.end()));
  EXPECT_TRUE(output.tensors.at(down + ".weight_scale").bytes ==
              std::string(direct.scales.begin(), direct.scales.end()));
  // A fallback module has the plain MSE bytes.
  const std::string other = "model.layers.1.mlp.down_proj";
  const QuantizedTensor plain = Direct(model.at(other + ".weight"), QuantizeOptions{});
  EXPECT_TRUE(output.tensors.at(other + ".weight_scale").bytes ==
              std::string(plain.scales.begin(), plain.scales.end()));
}

TEST_F(CheckpointJobTest, WmseOptionErrors) {
  TinyModel();
  CheckpointJobOptions options = Options("out");
  options.objective = Objective::kWmse;  // no importance file
  absl::StatusOr<CheckpointReport> report = Run(options);
  EXPECT_EQ(report.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(report.status().message(), HasSubstr("importance"));

  // The wrong length, named.
  std::vector<float> w(64, 1.0f);
  ASSERT_TRUE(
      WriteSafetensors(
          Path("imp.safetensors"),
          {{{"model.layers.0.mlp.down_proj.importance", "F32", {64}}, w.data(), w.size() * 4}}, {})
          .ok());
  options.importance_path = Path("imp.safetensors");
  report = Run(options);
  EXPECT_EQ(report.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(report.status().message(), HasSubstr("model.layers.0.mlp.down_proj.importance"));

  // A wrong length is an error with the MSE objective too.
  options.objective = Objective::kMse;
  report = Run(options);
  EXPECT_EQ(report.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(report.status().message(), HasSubstr("model.layers.0.mlp.down_proj.importance"));
  EXPECT_FALSE(fs::exists(Path("out")));
}

// With the MSE objective an importance file changes no byte; it adds the WMSE figures (AbsMax's
// too) to the tensors it covers, as `quantize-tensor --importance` does.
TEST_F(CheckpointJobTest, MseWithImportanceKeepsTheMseBytesAndReportsWmse) {
  TinyModel();
  const std::string down = "model.layers.0.mlp.down_proj";
  std::vector<float> w(96);
  for (int i = 0; i < 96; ++i) w[i] = (i % 5 == 0) ? 20.0f : 1.0f;
  ASSERT_TRUE(WriteSafetensors(Path("imp.safetensors"),
                               {{{down + ".importance", "F32", {96}}, w.data(), w.size() * 4}}, {})
                  .ok());
  CheckpointJobOptions plain_options = Options("plain");
  const CheckpointReport plain = RunOk(plain_options);
  CheckpointJobOptions options = Options("out");
  options.importance_path = Path("imp.safetensors");
  const CheckpointReport report = RunOk(options);
  EXPECT_EQ(report.objective, "mse");
  const TensorReport* r = Row(report, down + ".weight");
  ASSERT_NE(r, nullptr);
  EXPECT_EQ(r->objective, "mse");
  EXPECT_TRUE(r->metrics.weighted);
  EXPECT_FALSE(r->metrics.wmse_objective);
  EXPECT_GT(r->metrics.wmse, 0.0);
  EXPECT_GT(r->metrics.absmax_wmse, 0.0);
  EXPECT_EQ(r->metrics.mse, Row(plain, down + ".weight")->metrics.mse);
  const TensorReport* other = Row(report, "model.layers.1.mlp.down_proj.weight");
  ASSERT_NE(other, nullptr);
  EXPECT_FALSE(other->metrics.weighted);
  EXPECT_THAT(report.notes, ::testing::Contains(HasSubstr("no WMSE figures")));
  const Output a = ReadOutput(Path("plain"));
  const Output b = ReadOutput(Path("out"));
  ASSERT_EQ(a.tensors.size(), b.tensors.size());
  for (const auto& [name, tensor] : a.tensors) {
    EXPECT_TRUE(b.tensors.at(name).bytes == tensor.bytes) << name;
  }
}

// ---------------------------------------------------------------------------------------------
// Shards, cancellation and resume.

class CheckpointJobShardTest : public CheckpointJobTest {
 protected:
  void SetUp() override {
    CheckpointJobTest::SetUp();
    // ~2.9 MB of outputs: four 1 MiB shards.
    spec_ = {.layers = 2, .hidden = 512, .intermediate = 1024, .vocab = 128, .kv = 512};
    model_ = MakeLlama(spec_, 7);
    WriteModel(Path("model"), model_, spec_);
  }
  CheckpointJobOptions ShardOptions(const std::string& out) const {
    CheckpointJobOptions options = Options(out);
    options.shard_bytes = uint64_t{1} << 20;
    return options;
  }
  // Runs until the first shard is committed, then cancels.
  void RunCancelled(const CheckpointJobOptions& options) {
    absl::StatusOr<CheckpointReport> report = Run(options, nullptr, /*cancel_after_shard=*/0);
    ASSERT_EQ(report.status().code(), absl::StatusCode::kCancelled) << report.status();
    EXPECT_FALSE(fs::exists(options.out_dir));
    const std::string staging = StagingDirFor(options.out_dir);
    ASSERT_TRUE(fs::is_directory(staging));
    EXPECT_TRUE(fs::is_regular_file(staging + "/model-00001-of-00004.safetensors"));
    EXPECT_FALSE(fs::exists(staging + "/model-00002-of-00004.safetensors"));
    EXPECT_FALSE(fs::exists(staging + "/config.json"));
    for (const auto& entry : fs::directory_iterator(staging)) {
      EXPECT_THAT(entry.path().filename().string(), ::testing::Not(HasSubstr(".tmp.")));
    }
  }

  Model model_;
};

TEST_F(CheckpointJobShardTest, ShardedOutputHasACompleteIndex) {
  const CheckpointReport report = RunOk(ShardOptions("out"));
  const std::string out = Path("out");
  ASSERT_EQ(report.totals.shards, 4);
  EXPECT_FALSE(fs::exists(out + "/model.safetensors"));
  const Json index = ReadJson(out + "/model.safetensors.index.json");
  const Output output = ReadOutput(out);
  ASSERT_EQ(output.metadata.size(), 4u);
  for (int s = 1; s <= 4; ++s) {
    EXPECT_TRUE(output.metadata.contains(absl::StrFormat("model-%05d-of-00004.safetensors", s)));
  }
  // weight_map: every output tensor, in the file that holds it, and nothing else.
  ASSERT_TRUE(index["weight_map"].is_object());
  EXPECT_EQ(index["weight_map"].size(), output.tensors.size());
  for (const auto& [name, t] : output.tensors) {
    ASSERT_TRUE(index["weight_map"].contains(name)) << name;
    EXPECT_EQ(index["weight_map"][name], t.file) << name;
  }
  EXPECT_EQ(index["metadata"]["total_size"].get<uint64_t>(), output.data_bytes);
  EXPECT_EQ(report.totals.output_bytes, output.data_bytes);
  // Shards hold tensors in source-name order; no shard but a lone tensor's is over 1 MiB.
  std::string last_name;
  std::string last_file;
  for (const TensorReport& r : report.tensors) {
    EXPECT_GT(r.name, last_name);
    last_name = r.name;
    const std::string file = output.tensors.at(r.name).file;
    EXPECT_GE(file, last_file) << r.name;
    last_file = file;
    EXPECT_EQ(file, absl::StrFormat("model-%05d-of-00004.safetensors", r.shard + 1)) << r.name;
  }
  for (const char* name : {"lm_head.weight", "model.norm.weight"}) {
    const Tensor& t = model_.at(name);
    EXPECT_TRUE(output.tensors.at(name).bytes ==
                std::string(reinterpret_cast<const char*>(t.bytes.data()), t.bytes.size()));
  }
}

TEST_F(CheckpointJobShardTest, CancelThenResumeGivesTheFreshOutput) {
  const CheckpointReport fresh = RunOk(ShardOptions("fresh"));
  ASSERT_EQ(fresh.totals.shards, 4);

  RunCancelled(ShardOptions("out"));
  const std::string staging = StagingDirFor(Path("out"));
  EXPECT_TRUE(fs::is_regular_file(staging + "/.nvfp4-journal.json"));

  CheckpointJobOptions resume = ShardOptions("out");
  resume.concurrency = 3;  // not part of the job's identity: same bytes
  const CheckpointReport resumed = RunOk(resume);
  EXPECT_EQ(resumed.totals.shards_resumed, 1);
  EXPECT_EQ(resumed.totals.shards, 4);
  bool resume_event = false;
  for (const Event& e : events_) {
    if (absl::StrContains(e.message, "resumed model-00001-of-00004.safetensors")) {
      resume_event = true;
    }
    // The resumed shard's tensors are not quantized again.
    if (e.phase == "quantize" && !e.tensor.empty()) {
      EXPECT_NE(e.shard, 0) << e.tensor;
    }
  }
  EXPECT_TRUE(resume_event);
  EXPECT_FALSE(fs::exists(staging));
  ExpectSameTree(Path("out"), Path("fresh"));

  // The report rows of the resumed shard come back from the journal unchanged.
  ASSERT_EQ(resumed.tensors.size(), fresh.tensors.size());
  for (size_t i = 0; i < fresh.tensors.size(); ++i) {
    const TensorReport& a = fresh.tensors[i];
    const TensorReport& b = resumed.tensors[i];
    EXPECT_EQ(a.name, b.name);
    EXPECT_EQ(a.quantized, b.quantized) << a.name;
    EXPECT_EQ(a.reason, b.reason) << a.name;
    EXPECT_EQ(a.shard, b.shard) << a.name;
    EXPECT_EQ(a.group, b.group) << a.name;
    EXPECT_EQ(a.objective, b.objective) << a.name;
    EXPECT_EQ(a.amax, b.amax) << a.name;
    EXPECT_EQ(a.global_scale, b.global_scale) << a.name;
    EXPECT_EQ(a.metrics.mse, b.metrics.mse) << a.name;
    EXPECT_EQ(a.metrics.absmax_mse, b.metrics.absmax_mse) << a.name;
    EXPECT_EQ(a.metrics.elements, b.metrics.elements) << a.name;
    EXPECT_EQ(a.output_bytes, b.output_bytes) << a.name;
  }
  EXPECT_EQ(resumed.totals.mse, fresh.totals.mse);
  EXPECT_EQ(resumed.totals.quantized, fresh.totals.quantized);
}

TEST_F(CheckpointJobShardTest, CorruptedStagedShardIsRedone) {
  RunOk(ShardOptions("fresh"));
  RunCancelled(ShardOptions("out"));
  const std::string shard = StagingDirFor(Path("out")) + "/model-00001-of-00004.safetensors";
  {
    std::fstream f(shard, std::ios::in | std::ios::out | std::ios::binary);
    f.seekg(-100, std::ios::end);
    char c = 0;
    f.read(&c, 1);
    c = static_cast<char>(c ^ 0x10);
    f.seekp(-100, std::ios::end);
    f.write(&c, 1);
    ASSERT_TRUE(f.good());
  }
  const CheckpointReport report = RunOk(ShardOptions("out"));
  EXPECT_EQ(report.totals.shards_resumed, 0);
  ExpectSameTree(Path("out"), Path("fresh"));
}

TEST_F(CheckpointJobShardTest, StagingOfOtherOptionsIsDiscarded) {
  RunCancelled(ShardOptions("out"));  // scalesweep
  CheckpointJobOptions absmax = ShardOptions("out");
  absmax.method = Method::kAbsMax;
  const CheckpointReport report = RunOk(absmax);
  EXPECT_EQ(report.totals.shards_resumed, 0);
  bool discarded = false;
  for (const Event& e : events_) discarded |= absl::StrContains(e.message, "discarding");
  EXPECT_TRUE(discarded);
  CheckpointJobOptions fresh = ShardOptions("fresh_absmax");
  fresh.method = Method::kAbsMax;
  RunOk(fresh);
  ExpectSameTree(Path("out"), Path("fresh_absmax"));
  EXPECT_EQ(
      ReadOutput(Path("out")).metadata.at("model-00001-of-00004.safetensors").at("nvfp4.method"),
      "absmax");
}

TEST_F(CheckpointJobShardTest, StagingOfChangedInputsIsDiscarded) {
  RunCancelled(ShardOptions("out"));
  // Same options, but the source shard was touched since (its mtime is in the job's key).
  const std::string shard = Path("model/model.safetensors");
  fs::last_write_time(shard, fs::last_write_time(shard) + std::chrono::seconds(5));
  const CheckpointReport report = RunOk(ShardOptions("out"));
  EXPECT_EQ(report.totals.shards_resumed, 0);
  bool discarded = false;
  for (const Event& e : events_) discarded |= absl::StrContains(e.message, "discarding");
  EXPECT_TRUE(discarded);
}

TEST_F(CheckpointJobTest, CancelledBeforeStartLeavesNoOutput) {
  TinyModel();
  std::atomic<bool> cancelled{true};
  absl::StatusOr<CheckpointReport> report = Run(Options("out"), &cancelled);
  EXPECT_EQ(report.status().code(), absl::StatusCode::kCancelled);
  EXPECT_FALSE(fs::exists(Path("out")));
}

// ---------------------------------------------------------------------------------------------
// Errors.

TEST_F(CheckpointJobTest, NonEmptyOutputDirectoryIsFailedPrecondition) {
  TinyModel();
  WriteBytes(Path("out/keep.txt"), "mine");
  absl::StatusOr<CheckpointReport> report = Run(Options("out"));
  EXPECT_EQ(report.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(ReadBytes(Path("out/keep.txt")), "mine");
  EXPECT_FALSE(fs::exists(StagingDirFor(Path("out"))));
  // A file in the way is no better.
  WriteBytes(Path("file_out"), "x");
  EXPECT_EQ(Run(Options("file_out")).status().code(), absl::StatusCode::kFailedPrecondition);
}

TEST_F(CheckpointJobTest, AlreadyQuantizedSourceIsFailedPrecondition) {
  TinyModel();
  Json config = SourceConfig(spec_);
  config["quantization_config"] = Json::object({{"quant_method", "fp8"}});
  WriteBytes(Path("model/config.json"), config.dump());
  absl::StatusOr<CheckpointReport> report = Run(Options("out"));
  EXPECT_EQ(report.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(report.status().message(), HasSubstr("quantization_config"));
  EXPECT_FALSE(fs::exists(Path("out")));
  // "quantization_config": null (written by some exporters) means unquantized.
  config["quantization_config"] = nullptr;
  WriteBytes(Path("model/config.json"), config.dump());
  RunOk(Options("out"));
  EXPECT_EQ(ReadJson(Path("out/config.json"))["quantization_config"]["quant_method"], "modelopt");
}

TEST_F(CheckpointJobTest, OutputInsideTheModelIsInvalidArgument) {
  TinyModel();
  for (const std::string& out :
       {Path("model"), Path("model/"), Path("model/quantized"), Path("model/../model/sub/q")}) {
    CheckpointJobOptions options = Options("out");
    options.out_dir = out;
    absl::StatusOr<CheckpointReport> report = Run(options);
    EXPECT_EQ(report.status().code(), absl::StatusCode::kInvalidArgument) << out;
    EXPECT_THAT(report.status().message(), HasSubstr("inside")) << out;
  }
  EXPECT_FALSE(fs::exists(Path("model/quantized")));
  EXPECT_FALSE(fs::exists(Path("model/sub")));
  // A sibling whose name merely starts with the model's is fine.
  CheckpointJobOptions sibling = Options("out");
  sibling.out_dir = Path("model-nvfp4");
  RunOk(sibling);
}

TEST_F(CheckpointJobTest, WeightFilesInSubdirectoriesAreReportedNotCopied) {
  const Model model = TinyModel();
  // A sentence-transformers layout: a Dense head with its own config and weights.
  fs::create_directories(Path("model/2_Dense"));
  ASSERT_TRUE(
      WriteTensors(Path("model/2_Dense/model.safetensors"), model, {"model.norm.weight"}).ok());
  WriteBytes(Path("model/2_Dense/config.json"), "{}");
  const CheckpointReport report = RunOk(Options("out"));
  EXPECT_TRUE(fs::exists(Path("out/2_Dense/config.json")));
  EXPECT_FALSE(fs::exists(Path("out/2_Dense/model.safetensors")));
  EXPECT_THAT(report.notes, Contains(HasSubstr("2_Dense/model.safetensors")));
  bool warned = false;
  for (const Event& e : events_) warned = warned || absl::StrContains(e.message, "2_Dense");
  EXPECT_TRUE(warned);
}

TEST_F(CheckpointJobTest, IncludingAnLmHeadIsNoted) {
  TinyModel();
  CheckpointJobOptions options = Options("out");
  options.include = {"lm_head"};
  const CheckpointReport report = RunOk(options);
  EXPECT_THAT(report.notes, Contains(AllOf(HasSubstr("--include"), HasSubstr("lm_head"))));
  EXPECT_THAT(RunOk(Options("out2")).notes, Not(Contains(HasSubstr("--include"))));
}

TEST_F(CheckpointJobTest, ModelWithoutSafetensorsIsNotFound) {
  WriteBytes(Path("model/config.json"), SourceConfig(spec_).dump());
  WriteBytes(Path("model/pytorch_model.bin"), "pickle");
  EXPECT_EQ(Run(Options("out")).status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(Run([&] {
              CheckpointJobOptions o = Options("out");
              o.model_dir = Path("no_such_model");
              return o;
            }())
                .status()
                .code(),
            absl::StatusCode::kNotFound);
  EXPECT_FALSE(fs::exists(Path("out")));
}

TEST_F(CheckpointJobTest, IndexListingAMissingTensorIsInvalidArgument) {
  TinyModel(/*files=*/2);
  Json index = ReadJson(Path("model/model.safetensors.index.json"));
  index["weight_map"]["model.layers.0.self_attn.ghost.weight"] = "model-00002-of-00002.safetensors";
  WriteBytes(Path("model/model.safetensors.index.json"), index.dump());
  absl::StatusOr<CheckpointReport> report = Run(Options("out"));
  EXPECT_EQ(report.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(report.status().message(), HasSubstr("model.layers.0.self_attn.ghost.weight"));
  EXPECT_FALSE(fs::exists(Path("out")));
}

TEST_F(CheckpointJobTest, IndexListingATensorInTheWrongShardIsInvalidArgument) {
  TinyModel(/*files=*/2);
  Json index = ReadJson(Path("model/model.safetensors.index.json"));
  index["weight_map"]["lm_head.weight"] = "model-00002-of-00002.safetensors";
  WriteBytes(Path("model/model.safetensors.index.json"), index.dump());
  absl::StatusOr<CheckpointReport> report = Run(Options("out"));
  EXPECT_EQ(report.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(report.status().message(), HasSubstr("lm_head.weight"));
}

TEST_F(CheckpointJobTest, SameTensorInTwoShardsIsInvalidArgument) {
  const Model model = TinyModel();
  // A second weight file (no index) that repeats model.norm.weight.
  ASSERT_TRUE(
      WriteTensors(Path("model/model-extra.safetensors"), model, {"model.norm.weight"}).ok());
  absl::StatusOr<CheckpointReport> report = Run(Options("out"));
  EXPECT_EQ(report.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(report.status().message(), HasSubstr("model.norm.weight"));
  EXPECT_FALSE(fs::exists(Path("out")));
}

TEST_F(CheckpointJobTest, NoTensorSelectedIsInvalidArgument) {
  TinyModel();
  CheckpointJobOptions options = Options("out");
  options.exclude = {"model.layers.*"};
  absl::StatusOr<CheckpointReport> report = Run(options);
  EXPECT_EQ(report.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(report.status().message(), HasSubstr("no tensor"));
  // It says why for the first weights.
  EXPECT_THAT(report.status().message(), HasSubstr("excluded by --exclude 'model.layers.*'"));
  EXPECT_FALSE(fs::exists(Path("out")));
  EXPECT_FALSE(fs::exists(StagingDirFor(Path("out"))));
}

TEST_F(CheckpointJobTest, BadOptionsAreInvalidArgument) {
  TinyModel();
  CheckpointJobOptions options = Options("out");
  options.scale_max = 300;
  EXPECT_EQ(Run(options).status().code(), absl::StatusCode::kInvalidArgument);
  options = Options("out");
  options.concurrency = 0;
  EXPECT_EQ(Run(options).status().code(), absl::StatusCode::kInvalidArgument);
  options = Options("out");
  options.shard_bytes = 1000;
  EXPECT_EQ(Run(options).status().code(), absl::StatusCode::kInvalidArgument);
  options = Options("out");
  options.out_dir = "";
  EXPECT_EQ(Run(options).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_FALSE(fs::exists(Path("out")));
}

TEST_F(CheckpointJobTest, NonFiniteWeightIsInvalidArgumentNamingTheTensor) {
  Model model = MakeLlama(spec_);
  const uint16_t nan = 0x7FC0;
  std::memcpy(model.at("model.layers.1.self_attn.o_proj.weight").bytes.data() + 2 * 77, &nan, 2);
  WriteModel(Path("model"), model, spec_);
  absl::StatusOr<CheckpointReport> report = Run(Options("out"));
  EXPECT_EQ(report.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(report.status().message(), HasSubstr("model.layers.1.self_attn.o_proj.weight"));
  EXPECT_FALSE(fs::exists(Path("out")));
  // No shard was finished: no staging directory is left behind either.
  EXPECT_FALSE(fs::exists(StagingDirFor(Path("out"))));
}

TEST_F(CheckpointJobTest, HuggingFaceCacheSnapshotIsFollowedAndCopiedAsFiles) {
  // A Hugging Face cache snapshot: every file is a relative symlink into ../../blobs/<hash>.
  const std::string snapshot = Path("hub/snapshots/abc123");
  const Model model = MakeLlama(spec_);
  WriteModel(snapshot, model, spec_);
  fs::create_directories(Path("hub/blobs"));
  int n = 0;
  for (const std::string& f :
       {std::string("model.safetensors"), std::string("config.json"), std::string("tokenizer.json"),
        std::string("tokenizer_config.json")}) {
    const std::string blob = absl::StrCat("blob", n++);
    fs::rename(snapshot + "/" + f, Path("hub/blobs/" + blob));
    fs::create_symlink("../../blobs/" + blob, snapshot + "/" + f);
  }
  CheckpointJobOptions options = Options("x/y/out");
  options.model_dir = snapshot;
  const CheckpointReport report = RunOk(options);
  EXPECT_EQ(report.totals.quantized, 14);
  const Output output = ReadOutput(Path("x/y/out"));
  const Tensor& norm = model.at("model.norm.weight");
  EXPECT_TRUE(output.tensors.at("model.norm.weight").bytes ==
              std::string(reinterpret_cast<const char*>(norm.bytes.data()), norm.bytes.size()));
  // config.json through its symlink: the source's keys are kept.
  EXPECT_EQ(ReadJson(Path("x/y/out/config.json"))["hidden_size"], 64);
  // Symlinked files (an HF cache snapshot links into ../../blobs/) are copied under their own
  // names into the output, never written next to their targets.
  EXPECT_FALSE(fs::is_symlink(Path("x/y/out/tokenizer.json")));
  EXPECT_EQ(ReadBytes(Path("x/y/out/tokenizer.json")), ReadBytes(Path("hub/blobs/blob2")));
  EXPECT_EQ(ReadBytes(Path("x/y/out/tokenizer_config.json")), ReadBytes(Path("hub/blobs/blob3")));
  EXPECT_FALSE(fs::exists(Path("x/blobs")));  // nothing written outside the output
}

TEST_F(CheckpointJobTest, ConfinedPathsAreEnforced) {
  TinyModel();
  fs::create_directories(Path("allowed"));
  absl::StatusOr<PathPolicy> policy = PathPolicy::Create({Path("allowed")});
  ASSERT_TRUE(policy.ok()) << policy.status();
  CheckpointJobOptions options = Options("allowed/out");
  options.paths = *policy;
  // The model lies outside the allowed root.
  EXPECT_EQ(Run(options).status().code(), absl::StatusCode::kPermissionDenied);
  EXPECT_FALSE(fs::exists(Path("allowed/out")));
  // Both inside: fine.
  fs::rename(Path("model"), Path("allowed/model"));
  options.model_dir = Path("allowed/model");
  RunOk(options);
  EXPECT_TRUE(fs::is_regular_file(Path("allowed/out/model.safetensors")));
  // The output outside.
  options.out_dir = Path("out2");
  EXPECT_EQ(Run(options).status().code(), absl::StatusCode::kPermissionDenied);
  EXPECT_FALSE(fs::exists(Path("out2")));
  // A calibration file outside.
  Json calibration = Json::object();
  for (const std::string& m : QuantizedModules(2)) calibration[m] = 1.0;
  WriteBytes(Path("calib.json"), calibration.dump());
  options.out_dir = Path("allowed/out3");
  options.calibration_path = Path("calib.json");
  EXPECT_EQ(Run(options).status().code(), absl::StatusCode::kPermissionDenied);
  options.calibration_path.clear();
  // A file of the model symlinked out of the root: a shard, or a file to copy.
  fs::rename(Path("allowed/model/tokenizer.json"), Path("tokenizer.json"));
  fs::create_symlink(Path("tokenizer.json"), Path("allowed/model/tokenizer.json"));
  absl::StatusOr<CheckpointReport> report = Run(options);
  EXPECT_EQ(report.status().code(), absl::StatusCode::kPermissionDenied);
  EXPECT_THAT(report.status().message(), HasSubstr("tokenizer.json"));
  fs::remove(Path("allowed/model/tokenizer.json"));
  fs::rename(Path("allowed/model/model.safetensors"), Path("model.safetensors"));
  fs::create_symlink(Path("model.safetensors"), Path("allowed/model/model.safetensors"));
  report = Run(options);
  EXPECT_EQ(report.status().code(), absl::StatusCode::kPermissionDenied);
  EXPECT_THAT(report.status().message(), HasSubstr("model.safetensors"));
  EXPECT_FALSE(fs::exists(Path("allowed/out3")));
}

// A second job on the same output fails fast (ABORTED) while the first holds its staging
// directory; once the first ends (here: cancelled), the output is free again.
TEST_F(CheckpointJobTest, ConcurrentJobsOnOneOutputAreRefused) {
  TinyModel();
  class BlockingBackend final : public QuantizerBackend {
   public:
    explicit BlockingBackend(QuantizerBackend* inner) : inner_(inner) {}
    std::string_view name() const override { return "blocking"; }
    absl::StatusOr<QuantizedTensor> Quantize(const TensorView& input, const ImportanceView& imp,
                                             const QuantizeOptions& options) override {
      entered.store(true);
      while (!options.cancelled->load()) std::this_thread::sleep_for(std::chrono::milliseconds(1));
      return inner_->Quantize(input, imp, options);
    }
    std::atomic<bool> entered{false};

   private:
    QuantizerBackend* inner_;
  } blocking(backend_.get());
  std::atomic<bool> stop{false};
  absl::StatusOr<CheckpointReport> first = absl::UnknownError("not run");
  std::thread runner([&] { first = RunCheckpointJob(Options("out"), blocking, {}, &stop); });
  while (!blocking.entered.load()) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  absl::StatusOr<CheckpointReport> second =
      RunCheckpointJob(Options("out"), *backend_, {}, nullptr);
  EXPECT_EQ(second.status().code(), absl::StatusCode::kAborted) << second.status();
  EXPECT_THAT(std::string(second.status().message()), HasSubstr("another job is writing"));
  stop.store(true);
  runner.join();
  EXPECT_EQ(first.status().code(), absl::StatusCode::kCancelled) << first.status();
  RunOk(Options("out"));
  EXPECT_TRUE(fs::exists(Path("out/model.safetensors")));
}

}  // namespace
}  // namespace nvfp4::checkpoint
