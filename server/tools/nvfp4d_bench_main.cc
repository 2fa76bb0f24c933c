// nvfp4d_bench: end-to-end throughput of a large bf16 tensor through nvfp4d on loopback,
// against the embedded engine on the same machine and against a gRPC-only run (an engine that
// returns without quantising), all measured in the same process run.
//
// The modes run in interleaved rounds (best round kept), and each reports the process CPU time
// of its best round: on a machine where client, server and engine share the cores, transport
// CPU is what the remote mode pays on top of the engine.
//
//   nvfp4d_bench [--gib 1.0] [--method scalesweep] [--repeat 3] [--socket tcp|unix] [--json]
#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <functional>
#include <limits>
#include <memory>
#include <string>
#include <vector>

#include "CLI/CLI.hpp"
#include "client/quantizer_client.h"
#include "common/cli_checks.h"
#include "common/malloc_tuning.h"
#include "kernels/cpu/cpu_backend.h"
#include "kernels/numerics/half.h"
#include "kernels/quantized_tensor.h"
#include "nlohmann/json.hpp"
#include "server/nvfp4_server.h"

namespace {

using nvfp4::QuantizedTensor;

// Quantises nothing: nvfp4d sends its (pooled) output buffers as they are, so what is left is
// transport. A streamed input is taken as fast as it arrives, a few rows at a time like the
// CPU engine takes it (so nvfp4d releases the received chunks as it goes). Quantize (never
// called by nvfp4d) returns all-zero outputs.
class TransportOnlyEngine final : public nvfp4::QuantizerBackend {
 public:
  std::string_view name() const override { return "transport-only"; }
  bool quantizes_in_place() const override { return true; }
  absl::StatusOr<nvfp4::QuantizedSummary> QuantizeInto(const nvfp4::TensorView& input,
                                                       const nvfp4::ImportanceView&,
                                                       const nvfp4::QuantizeOptions& options,
                                                       const nvfp4::QuantizedBuffers&,
                                                       nvfp4::RowSource* streamed,
                                                       const RowsDoneFn* rows_done) override {
    const int64_t step = std::max<int64_t>(1, (int64_t{1} << 16) / input.cols);
    for (int64_t r = 0; streamed != nullptr && r < input.rows; r += step) {
      const int64_t end = std::min(input.rows, r + step);
      if (!streamed->ReadRows(r, end, [](const uint8_t*, size_t) {})) {
        return absl::CancelledError("the input never completed");
      }
      if (rows_done != nullptr) (*rows_done)(end);
    }
    if (rows_done != nullptr) (*rows_done)(input.rows);
    nvfp4::QuantizedSummary summary;
    summary.amax = options.amax.value_or(0.0f);
    summary.global_scale = nvfp4::KnownGlobalScale(options).value_or(1.0f);
    return summary;
  }
  absl::StatusOr<QuantizedTensor> Quantize(const nvfp4::TensorView& input,
                                           const nvfp4::ImportanceView&,
                                           const nvfp4::QuantizeOptions&) override {
    QuantizedTensor q;
    q.rows = input.rows;
    q.cols = input.cols;
    q.padded_cols = nvfp4::PaddedCols(input.cols);
    nvfp4::ResizeOutputs(q, /*want_dequantized=*/false);
    return q;
  }
};

double CpuSeconds() {
  rusage usage{};
  getrusage(RUSAGE_SELF, &usage);
  return static_cast<double>(usage.ru_utime.tv_sec + usage.ru_stime.tv_sec) +
         static_cast<double>(usage.ru_utime.tv_usec + usage.ru_stime.tv_usec) * 1e-6;
}

double Seconds(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

}  // namespace

int main(int argc, char** argv) {
  nvfp4::TuneMallocForStreaming();  // as nvfp4d and nvfp4q do
  double gib = 1.0;
  std::string method_name = "scalesweep";
  int repeat = 3;
  int chunk_kib = 4096;
  bool json = false;
  bool copy_upload = false;
  std::string socket = "tcp";
  std::string only;
  int threads = 0;
  CLI::App app{"nvfp4d_bench: bf16 tensor through nvfp4d vs the embedded engine"};
  app.add_option("--gib", gib, "tensor size in GiB of bf16")->capture_default_str();
  app.add_option("--method", method_name, "quantisation method")->capture_default_str();
  app.add_option("--repeat", repeat, "rounds; each runs every mode once (best kept)")
      ->check(nvfp4::cli_checks::Positive())
      ->capture_default_str();
  app.add_option("--chunk-kib", chunk_kib, "upload chunk size in KiB")->capture_default_str();
  app.add_option("--threads", threads,
                 "engine threads, embedded and in nvfp4d (0: all cores; fewer leaves cores to "
                 "the transport, as on a host where client and engine do not share cores)")
      ->check(nvfp4::cli_checks::NonNegative())
      ->capture_default_str();
  app.add_flag("--json", json, "print JSON");
  app.add_flag("--copy-upload", copy_upload,
               "upload through the client's copying call (upload buffers) instead of sending "
               "the chunks straight from the tensor");
  app.add_option("--only", only, "run just this mode (0, 1 or 2: for profiling)");
  app.add_option("--socket", socket, "tcp (127.0.0.1) or unix (a unix-domain socket)")
      ->check(CLI::IsMember({"tcp", "unix"}))
      ->capture_default_str();
  CLI11_PARSE(app, argc, argv);

  const auto method = nvfp4::ParseMethod(method_name);
  if (!method) {
    std::fprintf(stderr, "unknown method %s\n", method_name.c_str());
    return 2;
  }

  const int64_t cols = 8192;
  const int64_t rows = static_cast<int64_t>(gib * (1 << 30) / 2 / cols);
  // Shared: the remote modes upload straight from it (QuantizeTensor with an owner) unless
  // --copy-upload asks for the copying call.
  auto owned = std::make_shared<std::vector<uint16_t>>(static_cast<size_t>(rows * cols));
  std::vector<uint16_t>& data = *owned;
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

  auto make_engine = [threads] {
    return std::move(*nvfp4::cpu::CpuBackend::Create({threads, nvfp4::cpu::CpuIsa::kAuto}));
  };

  // One server per remote mode, started up front, so the rounds below can interleave the modes:
  // on a shared machine the load drifts, and interleaving exposes every mode to the same drift.
  struct Remote {
    std::unique_ptr<nvfp4::server::Nvfp4Server> server;
    std::unique_ptr<nvfp4::client::QuantizerClient> client;
  };
  int next_socket = 0;
  auto start_remote = [&](std::unique_ptr<nvfp4::QuantizerBackend> engine) -> Remote {
    nvfp4::server::ServerOptions server_options;
    const std::string unix_path =
        "/tmp/nvfp4d_bench." + std::to_string(::getpid()) + "." + std::to_string(next_socket++);
    server_options.listen = socket == "unix" ? "unix:" + unix_path : "127.0.0.1:0";
    server_options.metrics_listen = "";
    server_options.scheduler.max_job_bytes = int64_t{16} << 30;
    server_options.scheduler.memory_budget_bytes = int64_t{16} << 30;
    std::vector<std::unique_ptr<nvfp4::QuantizerBackend>> engines;
    engines.push_back(std::move(engine));
    auto server = nvfp4::server::Nvfp4Server::Start(server_options, std::move(engines));
    if (!server.ok()) {
      std::fprintf(stderr, "%s\n", std::string(server.status().message()).c_str());
      std::exit(1);
    }
    nvfp4::client::ClientOptions client_options;
    client_options.target =
        socket == "unix" ? "unix:" + unix_path : "127.0.0.1:" + std::to_string((*server)->port());
    client_options.chunk_bytes = int64_t{chunk_kib} << 10;
    auto client = nvfp4::client::QuantizerClient::Connect(client_options);
    if (!client.ok()) std::exit(1);
    return Remote{std::move(*server), std::move(*client)};
  };

  struct Mode {
    std::string label;
    std::function<bool()> run;
    double seconds = std::numeric_limits<double>::infinity();  // best round
    double cpu_seconds = 0;                                    // of the best round
    std::vector<double> rounds = {};                           // seconds, every round
  };
  auto embedded_engine = make_engine();
  Remote quantizing = start_remote(make_engine());
  Remote transport_only = start_remote(std::make_unique<TransportOnlyEngine>());
  auto remote_job = [&](Remote& remote) {
    auto q = copy_upload ? remote.client->QuantizeTensor(input, {}, options, "bench")
                         : remote.client->QuantizeTensor(owned, input, {}, options, "bench");
    if (!q.ok()) std::fprintf(stderr, "%s\n", std::string(q.status().message()).c_str());
    return q.ok();
  };
  const std::string via = socket == "unix" ? "unix socket" : "TCP loopback";
  std::vector<Mode> modes;
  modes.push_back(
      {"embedded engine", [&] { return embedded_engine->Quantize(input, {}, options).ok(); }});
  modes.push_back({"nvfp4d, " + via, [&] { return remote_job(quantizing); }});
  modes.push_back(
      {"nvfp4d, " + via + ", transport only", [&] { return remote_job(transport_only); }});
  for (int round = 0; round < repeat; ++round) {
    for (Mode& mode : modes) {
      if (!only.empty() && std::to_string(&mode - &modes[0]) != only) continue;
      const auto start = std::chrono::steady_clock::now();
      const double cpu_start = CpuSeconds();
      if (!mode.run()) return 1;
      const double seconds = Seconds(start);
      mode.rounds.push_back(seconds);
      if (seconds < mode.seconds) {
        mode.seconds = seconds;
        mode.cpu_seconds = CpuSeconds() - cpu_start;
      }
    }
  }
  const double embedded = modes[0].seconds;
  const double remote = modes[1].seconds;
  // The same ratio per round (the two modes ran back to back, under about the same load): its
  // spread shows how far the best-of figure can be trusted on a machine whose speed drifts.
  std::vector<double> round_ratios;
  if (modes[0].rounds.size() == modes[1].rounds.size()) {
    for (size_t i = 0; i < modes[0].rounds.size(); ++i) {
      round_ratios.push_back(modes[0].rounds[i] / modes[1].rounds[i]);
    }
    std::sort(round_ratios.begin(), round_ratios.end());
  }
  const double median_ratio =
      round_ratios.empty() ? std::nan("") : round_ratios[round_ratios.size() / 2];
  const double transport = modes[2].seconds;

  if (json) {
    nlohmann::json out = {{"gib", gib},
                          {"method", method_name},
                          {"rows", rows},
                          {"cols", cols},
                          {"socket", socket},
                          {"upload", copy_upload ? "copy" : "borrowed"},
                          {"rounds", repeat},
                          {"engine_threads", embedded_engine->threads()},
                          {"embedded_seconds", embedded},
                          {"remote_seconds", remote},
                          {"transport_only_seconds", transport},
                          {"embedded_cpu_seconds", modes[0].cpu_seconds},
                          {"remote_cpu_seconds", modes[1].cpu_seconds},
                          {"transport_only_cpu_seconds", modes[2].cpu_seconds},
                          {"remote_to_embedded_throughput", embedded / remote},
                          {"remote_to_embedded_per_round", round_ratios},
                          {"transport_gb_per_second", bytes / transport / 1e9}};
    std::printf("%s\n", out.dump().c_str());
  } else {
    std::printf(
        "%.2f GiB bf16 [%lld, %lld], method %s, %d engine threads, %s upload, %d interleaved "
        "rounds, best kept\n",
        gib, static_cast<long long>(rows), static_cast<long long>(cols), method_name.c_str(),
        embedded_engine->threads(), copy_upload ? "copying" : "zero-copy", repeat);
    std::printf("%-40s %8s %8s %8s %12s\n", "mode", "seconds", "CPU s", "GB/s in", "vs embedded");
    for (const Mode& mode : modes) {
      if (std::isinf(mode.seconds)) continue;  // not run (--only)
      std::printf("%-40s %8.3f %8.2f %8.2f", mode.label.c_str(), mode.seconds, mode.cpu_seconds,
                  bytes / mode.seconds / 1e9);
      if (&mode == &modes[2]) {
        std::printf(" %12s\n", "-");
      } else {
        std::printf(" %12.3f\n", embedded / mode.seconds);
      }
    }
    if (!round_ratios.empty()) {
      std::printf("nvfp4d / embedded per round (back to back): min %.3f, median %.3f, max %.3f\n",
                  round_ratios.front(), median_ratio, round_ratios.back());
    }
  }
  return 0;
}
