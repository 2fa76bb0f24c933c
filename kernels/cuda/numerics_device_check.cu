// Compiles the shared block numerics for the device: one thread quantises one 16-element
// block with exactly the functions the CPU reference uses (ScalarBlock + ChooseBlockScale).
#include <cstdint>

#include "kernels/numerics/block_math.h"
#include "kernels/numerics/global_scale.h"
#include "kernels/numerics/scale_search.h"
#include "kernels/numerics/scale_table.h"

namespace nvfp4 {

__global__ void QuantizeBlocksReferenceKernel(const float* x, const float* weights, int64_t blocks,
                                              const ScaleTable* table, ScaleSearchParams params,
                                              uint8_t* packed, uint8_t* scales) {
  const int64_t b = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (b >= blocks) return;
  ScalarBlock block;
  PrepareScalarBlock(x + b * kBlockSize, weights ? weights + b * kBlockSize : nullptr, *table,
                     params, &block);
  const BlockChoice choice = ChooseBlockScale(block, params);
  scales[b] = choice.code;
  EncodeBlock(x + b * kBlockSize, *table, choice.code, packed + b * (kBlockSize / 2));
}

__global__ void BuildScaleTableKernel(float global_scale, ScaleTable* table) {
  if (blockIdx.x == 0 && threadIdx.x == 0) BuildScaleTable(global_scale, table);
}

}  // namespace nvfp4
