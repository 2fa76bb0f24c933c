// nvfp4_demo_tensors DIR: writes a small, deterministic set of LLM-like tensors as .npy files
// to try `nvfp4q compare` and `quantize-tensor` on: Gaussian and heavy-tailed weights at realistic
// scales, weights with outlier input channels, and activations with outlier channels.
#include <sys/stat.h>
#include <cstdio>
#include <string>
#include <vector>

#include "client/cli/synthetic.h"
#include "client/io/npy.h"

namespace {

bool Write(const std::string& dir, const std::string& name, int64_t rows, int64_t cols,
           const std::vector<float>& values) {
  const std::string path = dir + "/" + name + ".npy";
  const absl::Status status =
      nvfp4::io::WriteNpy(path, "<f4", {rows, cols}, values.data(), values.size() * sizeof(float));
  if (!status.ok()) {
    std::fprintf(stderr, "nvfp4_demo_tensors: %s\n", std::string(status.message()).c_str());
    return false;
  }
  return true;
}

// Multiplies a few columns (input channels) by `factor`, as in real projection weights and
// activations.
void OutlierColumns(std::vector<float>& values, int64_t cols, int every, float factor) {
  for (size_t i = 0; i < values.size(); ++i) {
    if ((static_cast<int64_t>(i) % cols) % every == 3) values[i] *= factor;
  }
}

}  // namespace

int main(int argc, char** argv) {
  const std::string usage =
      "usage: nvfp4_demo_tensors OUTPUT_DIR\n"
      "writes a small deterministic set of LLM-like f32 tensors (.npy) to try nvfp4q compare on\n";
  if (argc == 2 && (std::string(argv[1]) == "--help" || std::string(argv[1]) == "-h")) {
    std::printf("%s", usage.c_str());
    return 0;
  }
  if (argc != 2 || argv[1][0] == '-') {  // never a directory named like a flag
    std::fprintf(stderr, "%s", usage.c_str());
    return 2;
  }
  const std::string dir = argv[1];
  mkdir(dir.c_str(), 0755);
  using nvfp4::cli::GaussianTensor;
  using nvfp4::cli::StudentT3Tensor;
  bool ok = true;
  ok &= Write(dir, "layers.0.self_attn.q_proj.weight", 1024, 1024,
              GaussianTensor(1024 * 1024, 0.02, 1));
  ok &= Write(dir, "layers.0.self_attn.o_proj.weight", 1024, 1024,
              StudentT3Tensor(1024 * 1024, 0.012, 2));
  std::vector<float> gate = GaussianTensor(2816 * 1024, 0.018, 3);
  OutlierColumns(gate, 1024, 97, 6.0f);
  ok &= Write(dir, "layers.0.mlp.gate_proj.weight", 2816, 1024, gate);
  ok &= Write(dir, "layers.0.mlp.down_proj.weight", 1024, 2816,
              StudentT3Tensor(1024 * 2816, 0.01, 4));
  std::vector<float> activations = StudentT3Tensor(512 * 1024, 1.0, 5);
  OutlierColumns(activations, 1024, 61, 20.0f);
  ok &= Write(dir, "layers.0.mlp.input_activations", 512, 1024, activations);
  ok &= Write(dir, "layers.0.self_attn.k_cache", 2048, 128, GaussianTensor(2048 * 128, 1.5, 6));
  if (ok) std::printf("wrote 6 demo tensors to %s\n", dir.c_str());
  return ok ? 0 : 1;
}
