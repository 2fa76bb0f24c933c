#include "client/cli/synthetic.h"

#include <cmath>
#include <random>

namespace nvfp4::cli {
namespace {

class Normal {
 public:
  explicit Normal(uint64_t seed) : engine_(seed) {}
  double operator()() {
    const double u1 = Uniform(), u2 = Uniform();
    return std::sqrt(-2.0 * std::log(u1)) * std::cos(6.283185307179586 * u2);
  }

 private:
  double Uniform() { return (static_cast<double>(engine_() >> 11) + 0.5) / 9007199254740992.0; }
  std::mt19937_64 engine_;
};

}  // namespace

std::vector<float> GaussianTensor(int64_t n, double sigma, uint64_t seed) {
  Normal normal(seed);
  std::vector<float> out(static_cast<size_t>(n));
  for (float& v : out) v = static_cast<float>(sigma * normal());
  return out;
}

std::vector<float> StudentT3Tensor(int64_t n, double sigma, uint64_t seed) {
  Normal normal(seed);
  std::vector<float> out(static_cast<size_t>(n));
  for (float& v : out) {
    const double z = normal(), a = normal(), b = normal(), c = normal();
    v = static_cast<float>(sigma * z / std::sqrt((a * a + b * b + c * c) / 3.0));
  }
  return out;
}

std::vector<float> LognormalTensor(int64_t n, double sigma, uint64_t seed) {
  Normal normal(seed);
  std::vector<float> out(static_cast<size_t>(n));
  for (float& v : out) v = static_cast<float>(std::exp(sigma * normal()));
  return out;
}

}  // namespace nvfp4::cli
