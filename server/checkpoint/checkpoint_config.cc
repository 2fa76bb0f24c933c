#include "server/checkpoint/checkpoint_config.h"

#include "absl/strings/str_cat.h"
#include "common/version.h"

namespace nvfp4::checkpoint {
namespace {

using Json = nlohmann::ordered_json;

Json ToolRecord(const QuantizationRecipe& recipe) {
  Json tool = Json::object();
  tool["version"] = kVersion;
  tool["method"] = std::string(MethodName(recipe.method));
  tool["objective"] = std::string(ObjectiveName(recipe.objective));
  tool["scale_max"] = recipe.scale_max;
  return tool;
}

Json CompressedTensorsArgs(bool activations) {
  Json args = Json::object();
  args["num_bits"] = 4;
  args["type"] = "float";
  args["symmetric"] = true;
  args["group_size"] = 16;
  args["strategy"] = "tensor_group";
  args["dynamic"] = activations ? Json("local") : Json(false);
  args["actorder"] = nullptr;
  args["block_structure"] = nullptr;
  args["scale_dtype"] = "torch.float8_e4m3fn";
  args["zp_dtype"] = nullptr;
  args["observer"] = activations ? "static_minmax" : "memoryless_minmax";
  args["observer_kwargs"] = Json::object();
  return args;
}

}  // namespace

Json QuantizationConfig(const QuantizationRecipe& recipe) {
  Json config = Json::object();
  if (recipe.format == OutputFormat::kModelOpt) {
    Json fp4 = Json::object();
    fp4["dynamic"] = false;
    fp4["num_bits"] = 4;
    fp4["type"] = "float";
    fp4["group_size"] = 16;
    Json group = Json::object();
    if (recipe.w4a4) group["input_activations"] = fp4;
    group["weights"] = fp4;
    group["targets"] = Json::array({"Linear"});
    config["config_groups"] = Json::object({{"group_0", group}});
    config["ignore"] = recipe.ignore;
    config["quant_algo"] = recipe.w4a4 ? "NVFP4" : "W4A16_NVFP4";
    config["group_size"] = 16;
    config["kv_cache_scheme"] = nullptr;
    config["producer"] = Json::object(
        {{"name", "modelopt"}, {"version", absl::StrCat("nvfp4-scalesweep ", kVersion)}});
    config["quant_method"] = "modelopt";
  } else {
    Json group = Json::object();
    group["targets"] = Json::array({"Linear"});
    group["format"] = "nvfp4-pack-quantized";
    group["weights"] = CompressedTensorsArgs(false);
    group["input_activations"] = recipe.w4a4 ? CompressedTensorsArgs(true) : Json(nullptr);
    group["output_activations"] = nullptr;
    config["quant_method"] = "compressed-tensors";
    config["format"] = "nvfp4-pack-quantized";
    config["quantization_status"] = "compressed";
    config["ignore"] = recipe.ignore;
    config["kv_cache_scheme"] = nullptr;
    config["config_groups"] = Json::object({{"group_0", group}});
    config["sparsity_config"] = Json::object();
    config["transform_config"] = Json::object();
    config["version"] = absl::StrCat("nvfp4-scalesweep ", kVersion);
  }
  config["nvfp4_scalesweep"] = ToolRecord(recipe);
  return config;
}

std::optional<Json> HfQuantConfig(const QuantizationRecipe& recipe) {
  if (recipe.format != OutputFormat::kModelOpt) return std::nullopt;
  Json quantization = Json::object();
  quantization["quant_algo"] = recipe.w4a4 ? "NVFP4" : "W4A16_NVFP4";
  quantization["kv_cache_quant_algo"] = nullptr;
  quantization["group_size"] = 16;
  quantization["exclude_modules"] = recipe.ignore;
  Json config = Json::object();
  config["producer"] = Json::object(
      {{"name", "modelopt"}, {"version", absl::StrCat("nvfp4-scalesweep ", kVersion)}});
  config["quantization"] = quantization;
  config["nvfp4_scalesweep"] = ToolRecord(recipe);
  return config;
}

std::map<std::string, std::string> ShardMetadata(const QuantizationRecipe& recipe) {
  return {
      {"format", "pt"},
      {"nvfp4.producer", absl::StrCat("nvfp4-scalesweep ", kVersion)},
      {"nvfp4.layout", std::string(OutputFormatName(recipe.format))},
      {"nvfp4.method", std::string(MethodName(recipe.method))},
      {"nvfp4.objective", std::string(ObjectiveName(recipe.objective))},
      {"nvfp4.scale_max", absl::StrCat(recipe.scale_max)},
      {"nvfp4.activations", recipe.w4a4 ? "nvfp4" : "none"},
  };
}

}  // namespace nvfp4::checkpoint
