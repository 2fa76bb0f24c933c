// Per-tensor (global) FP32 scale g = amax / (6 * F).
//
// F is the largest E4M3 block scale the AbsMax rule may produce: 448 reproduces ModelOpt's
// export (g = amax / 2688), 256 (the default) leaves the sweep head-room above every block's
// AbsMax scale (scalesweep-theory.md section 3, caveat iii). amax == 0 gives g = 1 (the
// compressed-tensors rule). g is never below kMinGlobalScale = 2^-117, so every effective scale
// fl(s * g) with s >= 2^-9 is a normal float and halving/doubling a scale is exact; only tensors
// with amax < 6 * F * 2^-117 (~1e-32) are affected. Pure, thread-safe.
#ifndef NVFP4_KERNELS_NUMERICS_GLOBAL_SCALE_H_
#define NVFP4_KERNELS_NUMERICS_GLOBAL_SCALE_H_

#include "kernels/numerics/hd.h"

namespace nvfp4 {

inline constexpr float kMinGlobalScale = 6.018531076210112e-36f;  // 2^-117

NVFP4_HD bool IsSupportedScaleMax(int scale_max) { return scale_max == 448 || scale_max == 256; }

// g for a tensor (or a fused group) whose max |x| is amax; scale_max is F (448 or 256).
NVFP4_HD float GlobalScaleFromAmax(float amax, int scale_max) {
  if (amax == 0.0f) return 1.0f;
  const float g = amax / (6.0f * static_cast<float>(scale_max));
  return g < kMinGlobalScale ? kMinGlobalScale : g;
}

}  // namespace nvfp4

#endif  // NVFP4_KERNELS_NUMERICS_GLOBAL_SCALE_H_
