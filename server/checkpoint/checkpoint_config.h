// The configuration files of an NVFP4 checkpoint (nvfp4-formats.md section 7):
// config.json["quantization_config"] for ModelOpt (quant_method "modelopt", quant_algo NVFP4 or
// W4A16_NVFP4) or compressed-tensors (format "nvfp4-pack-quantized", W4A4 or W4A16), the
// ModelOpt hf_quant_config.json, and the safetensors metadata of every shard. Each records the
// producing tool, method, objective and F under "nvfp4_scalesweep" / "nvfp4.*" keys, which
// loaders ignore.
// Thread-safety: pure functions.
#ifndef NVFP4_SERVER_CHECKPOINT_CHECKPOINT_CONFIG_H_
#define NVFP4_SERVER_CHECKPOINT_CHECKPOINT_CONFIG_H_

#include <map>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "kernels/quantize_options.h"
#include "server/checkpoint/checkpoint_plan.h"

namespace nvfp4::checkpoint {

struct QuantizationRecipe {
  OutputFormat format = OutputFormat::kModelOpt;
  bool w4a4 = false;
  Method method = Method::kScaleSweep;
  Objective objective = Objective::kMse;
  int scale_max = 256;
  std::vector<std::string> ignore;  // unquantized 2-D weights (module names)
};

// The value of config.json["quantization_config"].
nlohmann::ordered_json QuantizationConfig(const QuantizationRecipe& recipe);
// hf_quant_config.json for the ModelOpt format; nullopt for compressed-tensors.
std::optional<nlohmann::ordered_json> HfQuantConfig(const QuantizationRecipe& recipe);
// __metadata__ of every output shard ("format": "pt" as transformers expects, plus ours).
std::map<std::string, std::string> ShardMetadata(const QuantizationRecipe& recipe);

}  // namespace nvfp4::checkpoint

#endif  // NVFP4_SERVER_CHECKPOINT_CHECKPOINT_CONFIG_H_
