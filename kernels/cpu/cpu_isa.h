// Instruction-set selection for the CPU engine: what this CPU supports and the names used in
// options, logs and benchmark output ("scalar", "avx2", "avx512").
#ifndef NVFP4_KERNELS_CPU_CPU_ISA_H_
#define NVFP4_KERNELS_CPU_CPU_ISA_H_

#include <optional>
#include <string_view>

namespace nvfp4::cpu {

enum class CpuIsa : int { kAuto = 0, kScalar = 1, kAvx2 = 2, kAvx512 = 3 };

std::string_view CpuIsaName(CpuIsa isa);
std::optional<CpuIsa> ParseCpuIsa(std::string_view name);  // "auto", "scalar", "avx2", "avx512"
bool CpuSupports(CpuIsa isa);
CpuIsa BestCpuIsa();

}  // namespace nvfp4::cpu

#endif  // NVFP4_KERNELS_CPU_CPU_ISA_H_
