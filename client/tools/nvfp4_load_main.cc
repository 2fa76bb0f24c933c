// nvfp4_load: a load generator for nvfp4d. N concurrent streams (one client connection each, so
// the server sees N independent callers) send QuantizeTensor jobs back to back for a bounded
// time and count every outcome by gRPC code. Prints one JSON object: jobs, throughput,
// latency percentiles of the successful jobs, and the codes with a sample message each.
// Used by tests/integration (load/soak) and for capacity planning:
//   nvfp4_load --server 127.0.0.1:50051 --streams 64 --seconds 30 --rows 256 --cols 1024
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include <nlohmann/json.hpp>

#include "CLI/CLI.hpp"
#include "client/quantizer_client.h"
#include "common/cli_checks.h"
#include "proto/convert.h"

namespace {

struct Flags {
  std::string server = "127.0.0.1:50051";
  int streams = 64;
  double seconds = 10;
  int64_t rows = 256;
  int64_t cols = 1024;
  std::string method = "scalesweep";
};

struct Outcome {
  int64_t count = 0;
  std::string sample;
};

}  // namespace

int main(int argc, char** argv) {
  Flags flags;
  CLI::App app{"nvfp4_load: concurrent QuantizeTensor streams against nvfp4d"};
  app.add_option("--server", flags.server, "nvfp4d address")->capture_default_str();
  app.add_option("--streams", flags.streams, "concurrent streams")->check(CLI::Range(1, 4096));
  app.add_option("--seconds", flags.seconds, "how long to send")
      ->check(nvfp4::cli_checks::Positive());
  app.add_option("--rows", flags.rows, "tensor rows")->check(CLI::Range(1, 1 << 20));
  app.add_option("--cols", flags.cols, "tensor cols")->check(CLI::Range(16, 1 << 20));
  app.add_option("--method", flags.method, "absmax, four-over-six, exhaustive, scalesweep");
  CLI11_PARSE(app, argc, argv);
  const std::optional<nvfp4::Method> method = nvfp4::ParseMethod(flags.method);
  if (!method) {
    std::fprintf(stderr, "nvfp4_load: unknown method %s\n", flags.method.c_str());
    return 2;
  }

  // One deterministic bf16-range f32 tensor shared by every stream (read-only).
  std::vector<float> tensor(static_cast<size_t>(flags.rows * flags.cols));
  uint64_t state = 0x9E3779B97F4A7C15ull;
  for (float& x : tensor) {
    state = state * 6364136223846793005ull + 1442695040888963407ull;
    x = static_cast<float>(static_cast<int64_t>(state >> 40) - (1 << 23)) / (1 << 23) * 0.05f;
  }
  nvfp4::QuantizeOptions options;
  options.method = *method;

  std::mutex mu;
  std::map<std::string, Outcome> outcomes;
  std::vector<double> latencies;
  std::atomic<bool> stop{false};
  const auto start = std::chrono::steady_clock::now();
  std::vector<std::thread> threads;
  for (int s = 0; s < flags.streams; ++s) {
    threads.emplace_back([&] {
      nvfp4::client::ClientOptions client_options;
      client_options.target = flags.server;
      client_options.timeout = absl::Seconds(120);
      auto client = nvfp4::client::QuantizerClient::Connect(client_options);
      if (!client.ok()) {
        std::lock_guard lock(mu);
        outcomes["CONNECT"].count++;
        outcomes["CONNECT"].sample = std::string(client.status().message());
        return;
      }
      std::vector<double> mine;
      std::map<std::string, Outcome> my_outcomes;
      while (!stop.load()) {
        const auto t0 = std::chrono::steady_clock::now();
        auto result = (*client)->QuantizeTensor(
            {nvfp4::DType::kF32, flags.rows, flags.cols, tensor.data()}, {}, options, "load");
        const double seconds =
            std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
        const std::string code = nvfp4::api::StatusCodeName(result.status().code());
        Outcome& o = my_outcomes[code];
        o.count++;
        if (!result.ok() && o.sample.empty()) o.sample = std::string(result.status().message());
        if (result.ok()) {
          mine.push_back(seconds);
        } else {
          // A refused job (queue full) is retried after a short pause, as a client should.
          std::this_thread::sleep_for(std::chrono::milliseconds(20));
        }
      }
      std::lock_guard lock(mu);
      latencies.insert(latencies.end(), mine.begin(), mine.end());
      for (auto& [code, o] : my_outcomes) {
        outcomes[code].count += o.count;
        if (outcomes[code].sample.empty()) outcomes[code].sample = o.sample;
      }
    });
  }
  std::this_thread::sleep_for(std::chrono::duration<double>(flags.seconds));
  stop.store(true);
  for (std::thread& t : threads) t.join();
  const double wall =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();

  std::sort(latencies.begin(), latencies.end());
  auto percentile = [&](double p) {
    if (latencies.empty()) return 0.0;
    const size_t i =
        std::min(latencies.size() - 1, static_cast<size_t>(std::ceil(p * latencies.size())) - 1);
    return latencies[i];
  };
  nlohmann::ordered_json j;
  j["server"] = flags.server;
  j["streams"] = flags.streams;
  j["seconds"] = wall;
  j["tensor"] = {flags.rows, flags.cols};
  j["ok"] = latencies.size();
  j["jobs_per_second"] = latencies.size() / wall;
  j["elements_per_second"] = latencies.size() * static_cast<double>(flags.rows * flags.cols) / wall;
  j["latency_seconds"] = {{"p50", percentile(0.50)},
                          {"p90", percentile(0.90)},
                          {"p99", percentile(0.99)},
                          {"max", latencies.empty() ? 0.0 : latencies.back()}};
  nlohmann::ordered_json codes = nlohmann::ordered_json::object();
  for (const auto& [code, o] : outcomes) {
    codes[code] = {{"count", o.count}, {"sample", o.sample}};
  }
  j["codes"] = codes;
  std::printf("%s\n", j.dump().c_str());
  return 0;
}
