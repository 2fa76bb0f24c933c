#include "client/cli/verify_command.h"

#include <fnmatch.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <regex>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "client/cli/exit_codes.h"
#include "common/cpu_count.h"
#include "common/status_macros.h"
#include "kernels/cpu/cpu_backend.h"
#include "kernels/encoding_check.h"
#include "kernels/numerics/method.h"
#include "kernels/tensor.h"
#include "server/checkpoint/checkpoint_plan.h"
#include "server/checkpoint/source_checkpoint.h"

namespace nvfp4::cli {
namespace {

using checkpoint::SourceCheckpoint;
using checkpoint::SourceTensor;

struct VerifyFlags {
  std::string model;
  std::string quantized;
  bool json = false;
};

struct Names {
  std::string packed, scales, global, input;
  bool reciprocal = false;  // compressed-tensors stores 1/g
};

// The global scales a stored value can stand for: g itself (ModelOpt), or for compressed-tensors'
// 1/g every float whose reciprocal rounds to the stored value (1/(1/g) need not be g: the
// writer quantised with g, a loader divides by the stored value).
std::vector<float> GlobalScaleCandidates(float stored, bool reciprocal) {
  if (!reciprocal) return {stored};
  const float g = 1.0f / stored;
  std::vector<float> out;
  for (float c : {g, std::nextafter(g, 0.0f), std::nextafter(g, INFINITY),
                  std::nextafter(std::nextafter(g, 0.0f), 0.0f),
                  std::nextafter(std::nextafter(g, INFINITY), INFINITY)}) {
    if (1.0f / c == stored) out.push_back(c);
  }
  if (out.empty()) out.push_back(g);
  return out;
}

// What the tool record of one of our checkpoints says about how its scales were chosen.
struct Recipe {
  Method method = Method::kScaleSweep;
  Objective objective = Objective::kMse;
  int scale_max = 256;
};

std::optional<Recipe> RecipeOf(const nlohmann::ordered_json& quantization_config) {
  if (!quantization_config.contains("nvfp4_scalesweep")) return std::nullopt;
  const auto& tool = quantization_config["nvfp4_scalesweep"];
  if (!tool.is_object()) return std::nullopt;
  const std::optional<Method> method = ParseMethod(tool.value("method", ""));
  const std::optional<Objective> objective = ParseObjective(tool.value("objective", ""));
  if (!method || !objective) return std::nullopt;
  return Recipe{*method, *objective, tool.value("scale_max", 256)};
}

// Whether a config's exclusion entry covers `module`, as vLLM matches them: compressed-tensors
// `ignore` by exact name or a "re:" regular expression matched from the start of the name
// (Python's re.match; the pattern is read as an ECMAScript regex here, which agrees for the
// usual patterns); ModelOpt `ignore` / `exclude_modules` by exact name, substring or fnmatch
// wildcard.
bool ExclusionCovers(const std::string& entry, const std::string& module, bool compressed_tensors) {
  if (compressed_tensors) {
    if (!absl::StartsWith(entry, "re:")) return entry == module;
    try {
      return std::regex_search(module, std::regex(entry.substr(3)),
                               std::regex_constants::match_continuous);
    } catch (const std::regex_error&) {
      return false;  // an unusable pattern covers nothing (and is reported by the caller)
    }
  }
  return absl::StrContains(module, entry) || ::fnmatch(entry.c_str(), module.c_str(), 0) == 0;
}

// A config's list of excluded modules: `key` of `object`, which must be a list of strings.
struct Exclusions {
  std::string where;  // e.g. "config.json quantization_config.ignore"
  std::vector<std::string> entries;
};

// What a checkpoint's configs declare, checked against its tensors by CheckDeclarations.
struct Declarations {
  bool compressed_tensors = false;
  std::optional<bool> w4a4;  // from quant_algo / input_activations; unset when undeclared
  std::vector<Exclusions> exclusions;
};

// Reads what the configs declare, reporting malformed or missing parts as problems.
Declarations ReadDeclarations(const nlohmann::ordered_json& quantization_config,
                              const std::string& quantized_dir, bool compressed_tensors,
                              const std::function<void(std::string)>& problem) {
  Declarations d;
  d.compressed_tensors = compressed_tensors;
  const auto read_list = [&](const nlohmann::ordered_json& object, const std::string& key,
                             const std::string& where) {
    Exclusions e{where, {}};
    const auto it = object.find(key);
    if (it == object.end() || it->is_null()) {
      d.exclusions.push_back(std::move(e));
      return;
    }
    if (!it->is_array()) {
      problem(absl::StrCat(where, " is not a list"));
      return;
    }
    for (const auto& entry : *it) {
      if (!entry.is_string()) {
        problem(absl::StrCat(where, " holds a non-string entry"));
        continue;
      }
      e.entries.push_back(entry.get<std::string>());
      if (compressed_tensors && absl::StartsWith(e.entries.back(), "re:")) {
        try {
          std::regex(e.entries.back().substr(3));
        } catch (const std::regex_error&) {
          problem(absl::StrCat(where, ": '", e.entries.back(), "' is not a valid regex"));
        }
      }
    }
    d.exclusions.push_back(std::move(e));
  };
  read_list(quantization_config, "ignore", "config.json quantization_config.ignore");
  if (compressed_tensors) {
    if (const auto groups = quantization_config.find("config_groups");
        groups != quantization_config.end() && groups->is_object()) {
      for (const auto& [name, group] : groups->items()) {
        if (!group.is_object() || !group.contains("input_activations")) continue;
        const bool activations = !group["input_activations"].is_null();
        if (d.w4a4.has_value() && *d.w4a4 != activations) {
          problem("config.json config_groups disagree on input_activations");
        }
        d.w4a4 = activations;
      }
    }
    return d;
  }
  if (const auto algo = quantization_config.find("quant_algo");
      algo != quantization_config.end() && algo->is_string()) {
    if (*algo == "NVFP4") d.w4a4 = true;
    if (*algo == "W4A16_NVFP4") d.w4a4 = false;
  }
  // ModelOpt: hf_quant_config.json must exist with these keys (docs/checkpoints.md; older vLLM
  // and TensorRT-LLM read it).
  const std::filesystem::path hf_path =
      std::filesystem::path(quantized_dir) / "hf_quant_config.json";
  std::ifstream file(hf_path);
  if (!file) {
    problem("hf_quant_config.json is missing (a ModelOpt checkpoint needs it)");
    return d;
  }
  const nlohmann::ordered_json hf = nlohmann::ordered_json::parse(file, nullptr, false);
  if (!hf.is_object() || !hf.contains("quantization") || !hf["quantization"].is_object()) {
    problem("hf_quant_config.json has no \"quantization\" object");
    return d;
  }
  const nlohmann::ordered_json& q = hf["quantization"];
  for (const char* key : {"quant_algo", "group_size", "kv_cache_quant_algo", "exclude_modules"}) {
    if (!q.contains(key)) problem(absl::StrCat("hf_quant_config.json lacks quantization.", key));
  }
  if (q.contains("quant_algo") && quantization_config.contains("quant_algo") &&
      q["quant_algo"] != quantization_config["quant_algo"]) {
    problem("hf_quant_config.json and config.json name different quant_algo");
  }
  read_list(q, "exclude_modules", "hf_quant_config.json quantization.exclude_modules");
  return d;
}

// Each declared exclusion list must cover every unquantized Linear-like weight (a loader would
// otherwise build an NVFP4 layer for it) and no quantized module. Embeddings and LM or
// classification heads are not Linear layers to vLLM and need not be listed.
void CheckExclusions(const Declarations& d, const std::vector<std::string>& quantized_modules,
                     const std::vector<std::string>& unquantized_linear,
                     const std::function<void(std::string)>& problem) {
  for (const Exclusions& e : d.exclusions) {
    const auto covered = [&](const std::string& module) {
      return std::any_of(e.entries.begin(), e.entries.end(), [&](const std::string& entry) {
        return ExclusionCovers(entry, module, d.compressed_tensors);
      });
    };
    for (const std::string& m : quantized_modules) {
      if (covered(m)) problem(absl::StrCat(m, ": quantized, but ", e.where, " excludes it"));
    }
    for (const std::string& m : unquantized_linear) {
      if (!covered(m)) {
        problem(absl::StrCat(m, ": not quantized, and ", e.where,
                             " does not list it (a loader would expect NVFP4 tensors)"));
      }
    }
  }
}

// A per-tensor scale on disk: 0-d (ModelOpt) or [1] (compressed-tensors); loaders take both.
bool IsScalarShape(const std::vector<int64_t>& shape) {
  return shape.empty() || shape == std::vector<int64_t>{1};
}

float ScalarF32(const SourceTensor& t) {
  float v;
  std::memcpy(&v, t.data(), 4);
  return v;
}

absl::StatusOr<int> Run(const VerifyFlags& flags) {
  ASSIGN_OR_RETURN(std::unique_ptr<SourceCheckpoint> source, SourceCheckpoint::Open(flags.model));
  ASSIGN_OR_RETURN(std::unique_ptr<SourceCheckpoint> output,
                   SourceCheckpoint::Open(flags.quantized));
  std::vector<std::string> problems;
  auto problem = [&](std::string text) {
    if (problems.size() < 50) problems.push_back(std::move(text));
  };

  const nlohmann::ordered_json& config = output->config();
  if (!config.is_object() || !config.contains("quantization_config")) {
    return absl::InvalidArgumentError(
        absl::StrCat(flags.quantized, "/config.json has no quantization_config"));
  }
  const std::string method = config["quantization_config"].value("quant_method", "");
  Names names;
  if (method == "modelopt") {
    names = {".weight", ".weight_scale", ".weight_scale_2", ".input_scale", false};
  } else if (method == "compressed-tensors") {
    names = {".weight_packed", ".weight_scale", ".weight_global_scale", ".input_global_scale",
             true};
  } else {
    return absl::InvalidArgumentError(absl::StrCat("unknown quant_method '", method, "'"));
  }

  const Declarations declarations =
      ReadDeclarations(config["quantization_config"], flags.quantized, names.reciprocal, problem);
  std::vector<std::string> quantized_modules, unquantized_linear;

  // Our own checkpoints record how the scales were chosen; with an MSE objective they can be
  // chosen again from the source and must come out identical (WMSE would need the importance).
  const std::optional<Recipe> recipe = RecipeOf(config["quantization_config"]);
  const bool rederive = recipe.has_value() && recipe->objective == Objective::kMse;
  std::unique_ptr<cpu::CpuBackend> engine;
  if (rederive) {
    ASSIGN_OR_RETURN(engine, cpu::CpuBackend::Create({0, cpu::CpuIsa::kAuto}));
  }
  int rederived = 0;
  cpu::ThreadPool pool(UsableCpuCount());
  int64_t value_mismatches = 0;

  std::map<std::string, bool> expected_outputs;  // output tensor name -> seen in source walk
  std::map<std::string, std::vector<float>> group_scales;
  // Fused groups are quantized whole or not at all: per group, its weights and the quantized.
  std::map<std::string, std::pair<int, int>> group_members;
  int quantized = 0, passed = 0;
  double sq = 0, nmse_weighted = 0;
  int64_t elements = 0;
  for (const SourceTensor& s : source->tensors()) {
    const bool weight = absl::EndsWith(s.name, ".weight");
    const std::string module = weight ? s.name.substr(0, s.name.size() - 7) : s.name;
    const SourceTensor* scales = output->Find(module + names.scales);
    if (const std::string group = weight ? checkpoint::FusedGroupKey(module) : ""; !group.empty()) {
      ++group_members[group].first;
      if (scales != nullptr) ++group_members[group].second;
    }
    if (!weight || scales == nullptr) {
      ++passed;
      if (weight && s.info->shape.size() == 2 && ParseDType(s.info->dtype).has_value()) {
        const checkpoint::ModuleRole role = checkpoint::DefaultModuleRole(module);
        if (role != checkpoint::ModuleRole::kEmbedding && role != checkpoint::ModuleRole::kLmHead &&
            role != checkpoint::ModuleRole::kClassificationHead) {
          unquantized_linear.push_back(module);
        }
      }
      expected_outputs[s.name] = true;
      const SourceTensor* o = output->Find(s.name);
      if (o == nullptr) {
        problem(absl::StrCat(s.name, ": missing from the output"));
      } else if (o->info->dtype != s.info->dtype || o->info->shape != s.info->shape ||
                 o->info->bytes() != s.info->bytes() ||
                 std::memcmp(o->data(), s.data(), s.info->bytes()) != 0) {
        problem(absl::StrCat(s.name, ": passed through but not byte-identical"));
      }
      continue;
    }
    ++quantized;
    quantized_modules.push_back(module);
    const SourceTensor* packed = output->Find(module + names.packed);
    const SourceTensor* global = output->Find(module + names.global);
    const SourceTensor* input = output->Find(module + names.input);
    for (const std::string& n : {names.packed, names.scales, names.global, names.input}) {
      expected_outputs[module + n] = true;
    }
    if (s.info->shape.size() != 2) {
      problem(absl::StrCat(s.name, ": quantized but not 2-D"));
      continue;
    }
    const int64_t rows = s.info->shape[0], cols = s.info->shape[1];
    if (packed == nullptr || global == nullptr) {
      problem(absl::StrCat(module, ": incomplete quantized module"));
      continue;
    }
    if (cols % 16 != 0) {
      problem(absl::StrCat(module, ": quantized, but its rows of ", cols,
                           " are not a multiple of the 16-element block"));
      continue;
    }
    if (packed->info->dtype != "U8" ||
        packed->info->shape != std::vector<int64_t>{rows, cols / 2} ||
        scales->info->dtype != "F8_E4M3" ||
        scales->info->shape != std::vector<int64_t>{rows, cols / 16} ||
        global->info->dtype != "F32" || !IsScalarShape(global->info->shape) ||
        (input != nullptr && (input->info->dtype != "F32" || !IsScalarShape(input->info->shape)))) {
      problem(absl::StrCat(module, ": wrong dtype or shape of a quantized tensor"));
      continue;
    }
    if (declarations.w4a4.has_value() && *declarations.w4a4 != (input != nullptr)) {
      problem(absl::StrCat(module, *declarations.w4a4 ? ": no activation scale, though the config "
                                                        "declares W4A4"
                                                      : ": an activation scale, though the config "
                                                        "declares weight-only (W4A16)"));
    }
    const float stored = ScalarF32(*global);
    if (input != nullptr && !(ScalarF32(*input) > 0 && std::isfinite(ScalarF32(*input)))) {
      problem(absl::StrCat(module, ": activation scale is not positive and finite"));
    }
    if (const std::string group = checkpoint::FusedGroupKey(module); !group.empty()) {
      group_scales[group].push_back(stored);
    }
    const uint8_t* scale_bytes = scales->data();  // NaN or negative ones: CheckStoredTensor
    const float g0 = names.reciprocal ? 1.0f / stored : stored;
    if (!std::isfinite(g0) || g0 <= 0) {
      problem(absl::StrCat(module, ": global scale ", stored, " is not positive and finite"));
      continue;
    }
    const std::optional<DType> dtype = ParseDType(s.info->dtype);
    if (!dtype) {
      problem(absl::StrCat(s.name, ": quantized from an unsupported dtype ", s.info->dtype));
      continue;
    }
    const TensorView source_view{*dtype, rows, cols, s.data()};
    // The values must be the rounding of the source under the stored scales, whoever chose them.
    // Every g the stored value can stand for is tried; those under which all values match are
    // the writer's possible g (compressed-tensors stores 1/g).
    std::optional<StoredTensorCheck> check;
    std::vector<float> matching_g;
    for (float candidate : GlobalScaleCandidates(stored, names.reciprocal)) {
      absl::StatusOr<StoredTensorCheck> c =
          CheckStoredTensor(source_view, packed->data(), scale_bytes, candidate, &pool);
      if (!c.ok()) {
        problem(absl::StrCat(module, ": ", c.status().message()));
        break;
      }
      if (!check || c->mismatches < check->mismatches) check = *c;
      if (c->mismatches == 0) matching_g.push_back(candidate);
    }
    if (!check) continue;
    sq += check->squared_error;
    // As in the job's report: the element-weighted mean of the tensors' NMSE.
    if (check->squared_signal > 0) {
      nmse_weighted +=
          static_cast<double>(rows * cols) * (check->squared_error / check->squared_signal);
    }
    elements += rows * cols;
    if (check->mismatches > 0) {
      value_mismatches += check->mismatches;
      problem(absl::StrCat(module, ": ", check->mismatches, " of ", rows * cols,
                           " values are not the E2M1 rounding of the source under their block "
                           "scale (first at row ",
                           check->first_mismatch / cols, ", column ", check->first_mismatch % cols,
                           ")"));
    } else if (rederive) {
      // The scales chosen again under each matching g; they must equal the stored ones for one.
      int64_t differing = -1, first = -1, blocks = 0;
      for (float g : matching_g) {
        QuantizeOptions options;
        options.method = recipe->method;
        options.objective = Objective::kMse;
        options.scale_max = recipe->scale_max;
        options.global_scale = g;
        absl::StatusOr<QuantizedTensor> fresh = engine->Quantize(source_view, {}, options);
        if (!fresh.ok()) {
          problem(
              absl::StrCat(module, ": cannot choose its scales again: ", fresh.status().message()));
          differing = -1;  // reported
          break;
        }
        int64_t here = 0, first_here = -1;
        for (size_t b = 0; b < fresh->scales.size(); ++b) {
          if (fresh->scales[b] != scale_bytes[b] && here++ == 0) {
            first_here = static_cast<int64_t>(b);
          }
        }
        blocks = static_cast<int64_t>(fresh->scales.size());
        if (differing < 0 || here < differing) {
          differing = here;
          first = first_here;
        }
        if (here == 0) break;
      }
      if (differing >= 0) ++rederived;
      if (differing > 0) {
        problem(absl::StrCat(module, ": ", differing, " of ", blocks, " block scales are not what ",
                             std::string(MethodName(recipe->method)),
                             " (MSE) chooses for the source (first: block ", first, ")"));
      }
    }
  }
  for (const auto& [group, scales] : group_scales) {
    for (float v : scales) {
      if (std::memcmp(&v, &scales[0], 4) != 0) {
        problem(absl::StrCat(group, ": fused modules have different global scales"));
        break;
      }
    }
  }
  for (const auto& [group, counts] : group_members) {
    if (counts.second > 0 && counts.second < counts.first) {
      problem(absl::StrCat(group, ": ", counts.second, " of the ", counts.first,
                           " fused modules are quantized (a fused group is quantized whole or not "
                           "at all)"));
    }
  }
  for (const SourceTensor& o : output->tensors()) {
    if (!expected_outputs.contains(o.name)) problem(absl::StrCat(o.name, ": unexpected tensor"));
  }
  CheckExclusions(declarations, quantized_modules, unquantized_linear, problem);
  const double mse = elements > 0 ? sq / static_cast<double>(elements) : 0;
  const double nmse = elements > 0 ? nmse_weighted / static_cast<double>(elements) : 0;
  if (flags.json) {
    nlohmann::ordered_json j = {{"ok", problems.empty()},
                                {"format", method},
                                {"quantized", quantized},
                                {"passed_through", passed},
                                {"quantized_elements", elements},
                                {"mse", mse},
                                {"nmse", nmse},
                                {"value_mismatches", value_mismatches},
                                {"scales_rederived", rederived},
                                {"problems", problems}};
    std::printf("%s\n", j.dump().c_str());
  } else {
    std::printf("%s: %s checkpoint, %d quantized modules, %d tensors passed through\n",
                flags.quantized.c_str(), method.c_str(), quantized, passed);
    std::printf("  dequantized vs %s: MSE %.4e, NMSE %.4e (SQNR %.2f dB)\n", flags.model.c_str(),
                mse, nmse, nmse > 0 ? -10 * std::log10(nmse) : INFINITY);
    if (rederive) {
      std::printf("  block scales re-derived with %s (MSE) for %d of %d modules\n",
                  std::string(MethodName(recipe->method)).c_str(), rederived, quantized);
    } else {
      std::printf("  block scales not re-derived (%s); values checked against them\n",
                  recipe ? "WMSE needs the importance" : "no nvfp4_scalesweep record");
    }
    for (const std::string& p : problems) std::printf("  PROBLEM %s\n", p.c_str());
    std::printf("  %s\n", problems.empty() ? "OK" : "FAILED");
  }
  return problems.empty() ? kExitOk : kExitInvalidInput;
}

}  // namespace

std::function<int()> AddVerifyCommand(CLI::App& app) {
  auto flags = std::make_shared<VerifyFlags>();
  CLI::App* cmd = app.add_subcommand(
      "verify",
      "Check an NVFP4 checkpoint against its source: layout, every value the rounding of its "
      "source under its block scale, the scales re-derived (our MSE checkpoints), fused "
      "scales, passthrough bytes, dequantization error");
  cmd->add_option("--model", flags->model, "the source checkpoint directory")->required();
  cmd->add_option("--quantized", flags->quantized, "the NVFP4 checkpoint directory")->required();
  cmd->add_flag("--json", flags->json, "print one JSON object");
  return SubcommandRunner(cmd, flags, &Run);
}

}  // namespace nvfp4::cli
