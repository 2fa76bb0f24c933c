// Portability layer for the shared numerics: NVFP4_HD marks functions that are compiled for
// both the host (CPU engine, tests) and the device (CUDA kernels), so every backend runs the
// very same arithmetic. No CUDA types appear here; including this from plain C++ is fine.
#ifndef NVFP4_KERNELS_NUMERICS_HD_H_
#define NVFP4_KERNELS_NUMERICS_HD_H_

#include <cstdint>
#include <cstring>

// On the host, free functions get internal linkage (static): the SIMD translation units are
// compiled with AVX2/AVX-512 flags, and a shared inline definition could otherwise be merged
// by the linker into the baseline (scalar) path and fault on CPUs without those instructions.
// NVFP4_HD_METHOD is the member-function form (members cannot be static).
#if defined(__CUDACC__)
#define NVFP4_HD static __host__ __device__ __forceinline__
#define NVFP4_HD_METHOD __host__ __device__ __forceinline__
#else
#define NVFP4_HD static inline
#define NVFP4_HD_METHOD inline
#endif

namespace nvfp4 {

NVFP4_HD uint32_t FloatToBits(float f) {
#if defined(__CUDA_ARCH__)
  return __float_as_uint(f);
#else
  uint32_t u;
  std::memcpy(&u, &f, sizeof(u));
  return u;
#endif
}

NVFP4_HD float BitsToFloat(uint32_t u) {
#if defined(__CUDA_ARCH__)
  return __uint_as_float(u);
#else
  float f;
  std::memcpy(&f, &u, sizeof(f));
  return f;
#endif
}

// Next representable float towards +inf / -inf for finite non-negative a (a > 0 for down).
NVFP4_HD float NextUpNonNegative(float a) { return BitsToFloat(FloatToBits(a) + 1u); }
NVFP4_HD float NextDownPositive(float a) { return BitsToFloat(FloatToBits(a) - 1u); }

NVFP4_HD float MaxF(float a, float b) { return a > b ? a : b; }
// |a| by clearing the sign bit (as fabsf and the SIMD engines' and-not): -0.0 -> +0.0, NaN stays
// NaN. On the GPU it folds into the consuming instruction as an operand modifier.
NVFP4_HD float AbsF(float a) {
#if defined(__CUDA_ARCH__)
  return fabsf(a);  // the same bits; nvcc folds it into the consumer as an |operand| modifier
#else
  return BitsToFloat(FloatToBits(a) & 0x7FFFFFFFu);
#endif
}
NVFP4_HD float MinF(float a, float b) { return a < b ? a : b; }

// max of two magnitudes (>= 0, not NaN): MaxF's value, in one instruction on the GPU (fmaxf;
// MaxF's NaN order costs a compare and a select there). With a NaN the two may differ; callers
// only pass NaN for inputs that fail the call anyway.
NVFP4_HD float MaxMagnitude(float a, float b) {
#if defined(__CUDA_ARCH__)
  return fmaxf(a, b);
#else
  return MaxF(a, b);
#endif
}

// max of two magnitudes (>= 0) where a NaN operand makes the result NaN: one instruction on the
// GPU (max.NaN, sm_80+), so that a single test of a block's maximum finds NaN anywhere in it.
NVFP4_HD float MaxMagnitudeOrNaN(float a, float b) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  float result;
  asm("max.NaN.f32 %0, %1, %2;" : "=f"(result) : "f"(a), "f"(b));
  return result;
#else
  return (a > b || a != a) ? a : b;
#endif
}

}  // namespace nvfp4

#endif  // NVFP4_KERNELS_NUMERICS_HD_H_
