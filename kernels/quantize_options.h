// What to do with a tensor: method, objective, F, fused-group scale, outputs.
#ifndef NVFP4_KERNELS_QUANTIZE_OPTIONS_H_
#define NVFP4_KERNELS_QUANTIZE_OPTIONS_H_

#include <atomic>
#include <optional>
#include <string>

#include "kernels/numerics/global_scale.h"
#include "kernels/numerics/method.h"

namespace nvfp4 {

struct QuantizeOptions {
  Method method = Method::kScaleSweep;
  Objective objective = Objective::kMse;
  // F in g = amax / (6 F): 448 (ModelOpt default, bit-exact AbsMax export) or 256 (default:
  // head-room for the sweep, scalesweep-theory.md section 4).
  int scale_max = 256;
  // Fused groups (q/k/v, gate/up, ...) must share g: pass the group's amax, or g itself.
  // global_scale wins when both are set. Values must be finite; amax >= 0, g >= 2^-117.
  std::optional<float> amax;
  std::optional<float> global_scale;
  // Also produce the dequantised (fake-quant) tensor, f32 [rows, cols].
  bool want_dequantized = false;
  // What the caller calls the tensor (e.g. its checkpoint name), for job records and logs of
  // a remote engine; the numerics ignore it.
  std::string label;
  // Cooperative cancellation: when set and it becomes true, the backend stops between work
  // chunks and returns absl::CancelledError. Not owned; must outlive the call.
  const std::atomic<bool>* cancelled = nullptr;
};

// g when it does not depend on the data (given, or derived from the given amax); every engine
// derives it this way, so a caller can announce it before the engine has run.
inline std::optional<float> KnownGlobalScale(const QuantizeOptions& options) {
  if (options.global_scale.has_value()) return options.global_scale;
  if (options.amax.has_value()) return GlobalScaleFromAmax(*options.amax, options.scale_max);
  return std::nullopt;
}

}  // namespace nvfp4

#endif  // NVFP4_KERNELS_QUANTIZE_OPTIONS_H_
