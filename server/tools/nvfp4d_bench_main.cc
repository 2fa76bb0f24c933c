// nvfp4d_bench: end-to-end throughput of a large bf16 tensor through nvfp4d on loopback,
// against the embedded engine on the same machine and against a gRPC-only run (an engine that
// returns without quantising), all measured in the same process run.
//
//   nvfp4d_bench [--gib 1.0] [--method scalesweep] [--repeat 2] [--json]
#include <chrono>
#include <cmath>
#include <cstdio>
#include <limits>
#include <memory>
#include <string>
#include <vector>

#include "CLI/CLI.hpp"
#include "client/quantizer_client.h"
#include "kernels/cpu/cpu_backend.h"
#include "kernels/numerics/half.h"
#include "kernels/quantized_tensor.h"
#include "nlohmann/json.hpp"
#include "server/nvfp4_server.h"

namespace {

using nvfp4::QuantizedTensor;

// Produces correctly sized (all-zero) outputs without quantising: what is left is transport.
class TransportOnlyEngine final : public nvfp4::QuantizerBackend {
 public:
  std::string_view name() const override { return "transport-only"; }
  absl::StatusOr<QuantizedTensor> Quantize(const nvfp4::TensorView& input,
                                           const nvfp4::ImportanceView&,
                                           const nvfp4::QuantizeOptions&) override {
    QuantizedTensor q;
    q.rows = input.rows;
    q.cols = input.cols;
    q.padded_cols = nvfp4::PaddedCols(input.cols);
    q.packed.assign(static_cast<size_t>(q.rows * q.padded_cols / 2), 0);
    q.scales.assign(static_cast<size_t>(q.rows * q.padded_cols / 16), 0x38);
    return q;
  }
};

double Seconds(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

}  // namespace

int main(int argc, char** argv) {
  double gib = 1.0;
  std::string method_name = "scalesweep";
  int repeat = 2;
  int chunk_kib = 4096;
  bool json = false;
  CLI::App app{"nvfp4d_bench: bf16 tensor through nvfp4d vs the embedded engine"};
  app.add_option("--gib", gib, "tensor size in GiB of bf16")->capture_default_str();
  app.add_option("--method", method_name, "quantisation method")->capture_default_str();
  app.add_option("--repeat", repeat, "runs per mode (best kept)")->capture_default_str();
  app.add_option("--chunk-kib", chunk_kib, "upload chunk size in KiB")->capture_default_str();
  app.add_flag("--json", json, "print JSON");
  CLI11_PARSE(app, argc, argv);
  const auto method = nvfp4::ParseMethod(method_name);
  if (!method) {
    std::fprintf(stderr, "unknown method %s\n", method_name.c_str());
    return 2;
  }

  const int64_t cols = 8192;
  const int64_t rows = static_cast<int64_t>(gib * (1 << 30) / 2 / cols);
  std::vector<uint16_t> data(static_cast<size_t>(rows * cols));
  uint64_t state = 12345;
  for (auto& v : data) {  // cheap deterministic pseudo-Gaussian (sum of uniforms)
    double s = 0;
    for (int k = 0; k < 4; ++k) {
      state = state * 6364136223846793005ULL + 1442695040888963407ULL;
      s += static_cast<double>(state >> 40) / 16777216.0;
    }
    v = nvfp4::FloatToBf16Bits(static_cast<float>((s - 2.0) * 1.7));
  }
  const nvfp4::TensorView input{nvfp4::DType::kBF16, rows, cols, data.data()};
  nvfp4::QuantizeOptions options;
  options.method = *method;
  const double bytes = static_cast<double>(input.bytes());

  auto make_engine = [] {
    return std::move(*nvfp4::cpu::CpuBackend::Create({0, nvfp4::cpu::CpuIsa::kAuto}));
  };
  auto best_of = [&](auto run) {
    double best = std::numeric_limits<double>::infinity();
    for (int i = 0; i < repeat; ++i) {
      const auto start = std::chrono::steady_clock::now();
      if (!run()) return -1.0;
      best = std::min(best, Seconds(start));
    }
    return best;
  };

  auto embedded_engine = make_engine();
  const double embedded =
      best_of([&] { return embedded_engine->Quantize(input, {}, options).ok(); });
  embedded_engine.reset();

  auto remote_run = [&](std::unique_ptr<nvfp4::QuantizerBackend> engine) {
    nvfp4::server::ServerOptions server_options;
    server_options.listen = "127.0.0.1:0";
    server_options.metrics_listen = "";
    server_options.scheduler.max_job_bytes = int64_t{16} << 30;
    server_options.scheduler.memory_budget_bytes = int64_t{16} << 30;
    std::vector<std::unique_ptr<nvfp4::QuantizerBackend>> engines;
    engines.push_back(std::move(engine));
    auto server = nvfp4::server::Nvfp4Server::Start(server_options, std::move(engines));
    if (!server.ok()) return -1.0;
    nvfp4::client::ClientOptions client_options;
    client_options.target = "127.0.0.1:" + std::to_string((*server)->port());
    client_options.chunk_bytes = int64_t{chunk_kib} << 10;
    auto client = std::move(*nvfp4::client::QuantizerClient::Connect(client_options));
    return best_of([&] {
      auto q = client->QuantizeTensor(input, {}, options, "bench");
      if (!q.ok()) std::fprintf(stderr, "%s\n", std::string(q.status().message()).c_str());
      return q.ok();
    });
  };
  const double remote = remote_run(make_engine());
  const double transport = remote_run(std::make_unique<TransportOnlyEngine>());
  if (embedded < 0 || remote < 0 || transport < 0) return 1;

  if (json) {
    nlohmann::json out = {{"gib", gib},
                          {"method", method_name},
                          {"rows", rows},
                          {"cols", cols},
                          {"embedded_seconds", embedded},
                          {"remote_seconds", remote},
                          {"transport_only_seconds", transport},
                          {"remote_to_embedded_throughput", embedded / remote},
                          {"transport_gb_per_second", bytes / transport / 1e9}};
    std::printf("%s\n", out.dump().c_str());
  } else {
    std::printf("%.2f GiB bf16 [%lld, %lld], method %s, best of %d\n", gib,
                static_cast<long long>(rows), static_cast<long long>(cols), method_name.c_str(),
                repeat);
    std::printf("%-34s %9s %10s %12s\n", "mode", "seconds", "GB/s in", "vs embedded");
    std::printf("%-34s %9.3f %10.2f %12.3f\n", "embedded engine", embedded, bytes / embedded / 1e9,
                1.0);
    std::printf("%-34s %9.3f %10.2f %12.3f\n", "nvfp4d on loopback", remote, bytes / remote / 1e9,
                embedded / remote);
    std::printf("%-34s %9.3f %10.2f %12s\n", "nvfp4d, transport only (no quant.)", transport,
                bytes / transport / 1e9, "-");
  }
  return 0;
}
