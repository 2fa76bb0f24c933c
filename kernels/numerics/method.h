// Scale-selection methods and objectives (scalesweep-theory.md section 2), with their stable
// names used by the CLI, the JSON output and (later) the gRPC API.
#ifndef NVFP4_KERNELS_NUMERICS_METHOD_H_
#define NVFP4_KERNELS_NUMERICS_METHOD_H_

#include <optional>
#include <string_view>

namespace nvfp4 {

enum class Method : int {
  kAbsMax = 0,       // ModelOpt rule: block max maps to 6
  kFourOverSix = 1,  // better of "max -> 6" and "max -> 4"
  kExhaustive = 2,   // all 126 E4M3 scales
  kScaleSweep = 3,   // the proven window [L, U] plus format exceptions; equals exhaustive
};

enum class Objective : int {
  kMse = 0,   // sum of squared errors
  kWmse = 1,  // importance-weighted sum of squared errors
};

constexpr std::string_view MethodName(Method method) {
  switch (method) {
    case Method::kAbsMax:
      return "absmax";
    case Method::kFourOverSix:
      return "four-over-six";
    case Method::kExhaustive:
      return "exhaustive";
    case Method::kScaleSweep:
      return "scalesweep";
  }
  return "unknown";
}

constexpr std::string_view ObjectiveName(Objective objective) {
  return objective == Objective::kMse ? "mse" : "wmse";
}

constexpr std::optional<Method> ParseMethod(std::string_view name) {
  for (Method m :
       {Method::kAbsMax, Method::kFourOverSix, Method::kExhaustive, Method::kScaleSweep}) {
    if (MethodName(m) == name) return m;
  }
  return std::nullopt;
}

constexpr std::optional<Objective> ParseObjective(std::string_view name) {
  if (name == "mse") return Objective::kMse;
  if (name == "wmse") return Objective::kWmse;
  return std::nullopt;
}

}  // namespace nvfp4

#endif  // NVFP4_KERNELS_NUMERICS_METHOD_H_
