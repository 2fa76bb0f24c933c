// Deterministic synthetic tensors for the CLI's bench and demo: mt19937_64 with explicit
// transforms, so every platform produces the same data for a seed.
#ifndef NVFP4_CLIENT_CLI_SYNTHETIC_H_
#define NVFP4_CLIENT_CLI_SYNTHETIC_H_

#include <cstdint>
#include <vector>

namespace nvfp4::cli {

// n samples of sigma * N(0, 1).
std::vector<float> GaussianTensor(int64_t n, double sigma, uint64_t seed);
// n samples of sigma * Student-t with 3 degrees of freedom (heavy tails).
std::vector<float> StudentT3Tensor(int64_t n, double sigma, uint64_t seed);
// n samples of exp(sigma * N(0, 1)).
std::vector<float> LognormalTensor(int64_t n, double sigma, uint64_t seed);

}  // namespace nvfp4::cli

#endif  // NVFP4_CLIENT_CLI_SYNTHETIC_H_
