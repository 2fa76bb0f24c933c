// Deterministic synthetic data for the numerics tests: the distributions of
// scalesweep-theory.md section 5 plus adversarial block shapes. Uses only mt19937_64 and
// explicit transforms, so the data is identical on every platform.
#ifndef NVFP4_TESTS_KERNELS_DISTRIBUTIONS_H_
#define NVFP4_TESTS_KERNELS_DISTRIBUTIONS_H_

#include <cmath>
#include <cstdint>
#include <random>
#include <string>
#include <vector>

namespace nvfp4::testing {

class Rng {
 public:
  explicit Rng(uint64_t seed) : engine_(seed) {}
  double Uniform01() {  // (0, 1)
    return (static_cast<double>(engine_() >> 11) + 0.5) * (1.0 / 9007199254740992.0);
  }
  double Normal() {  // Box-Muller
    const double u1 = Uniform01(), u2 = Uniform01();
    return std::sqrt(-2.0 * std::log(u1)) * std::cos(6.283185307179586 * u2);
  }
  double Laplace() {
    const double u = Uniform01() - 0.5;
    return u < 0 ? std::log(1.0 + 2.0 * u) : -std::log(1.0 - 2.0 * u);
  }
  double StudentT3() {
    const double z = Normal();
    const double a = Normal(), b = Normal(), c = Normal();
    return z / std::sqrt((a * a + b * b + c * c) / 3.0);
  }
  uint64_t Next() { return engine_(); }

 private:
  std::mt19937_64 engine_;
};

enum class Distribution {
  kGaussian,
  kLaplace,
  kStudentT3,
  kUniform,
  kGaussianOneOutlier,  // one element of each block multiplied by 10
};

inline std::string DistributionName(Distribution d) {
  switch (d) {
    case Distribution::kGaussian:
      return "N(0,1)";
    case Distribution::kLaplace:
      return "Laplace";
    case Distribution::kStudentT3:
      return "Student-t(3)";
    case Distribution::kUniform:
      return "Uniform(-1,1)";
    case Distribution::kGaussianOneOutlier:
      return "N(0,1) one x10";
  }
  return "?";
}

inline std::vector<float> Sample(Distribution d, int64_t n, uint64_t seed) {
  Rng rng(seed);
  std::vector<float> out(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) {
    double v = 0;
    switch (d) {
      case Distribution::kGaussian:
      case Distribution::kGaussianOneOutlier:
        v = rng.Normal();
        break;
      case Distribution::kLaplace:
        v = rng.Laplace();
        break;
      case Distribution::kStudentT3:
        v = rng.StudentT3();
        break;
      case Distribution::kUniform:
        v = 2.0 * rng.Uniform01() - 1.0;
        break;
    }
    out[i] = static_cast<float>(v);
  }
  if (d == Distribution::kGaussianOneOutlier) {
    for (int64_t b = 0; b + 16 <= n; b += 16)
      out[b + static_cast<int64_t>(rng.Next() % 16)] *= 10.0f;
  }
  return out;
}

// Lognormal weights exp(sigma * N(0,1)).
inline std::vector<float> LognormalWeights(int64_t n, double sigma, uint64_t seed) {
  Rng rng(seed);
  std::vector<float> out(static_cast<size_t>(n));
  for (auto& w : out) w = static_cast<float>(std::exp(sigma * rng.Normal()));
  return out;
}

}  // namespace nvfp4::testing

#endif  // NVFP4_TESTS_KERNELS_DISTRIBUTIONS_H_
