// In-process nvfp4d on loopback: results over gRPC equal the embedded engine's bytes, and the
// service behaves under overload, cancellation (queued and running), deadlines, client
// disconnects, bad requests and authentication; /metrics shows the counts.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "client/blocking_raw_stream.h"
#include "client/quantizer_client.h"
#include "gmock/gmock.h"
#include "grpcpp/grpcpp.h"
#include "grpcpp/health_check_service_interface.h"
#include "gtest/gtest.h"
#include "kernels/cpu/cpu_backend.h"
#include "kernels/numerics/half.h"
#include "server/checkpoint/checkpoint_job.h"
#include "server/checkpoint/safetensors.h"
#include "server/nvfp4_server.h"

namespace nvfp4 {
namespace {

using ::testing::HasSubstr;

std::vector<float> Gaussian(int64_t n, uint64_t seed, float sigma = 1.0f) {
  std::vector<float> out(static_cast<size_t>(n));
  uint64_t state = seed * 6364136223846793005ULL + 1442695040888963407ULL;
  for (size_t i = 0; i < out.size(); i += 2) {
    auto uniform = [&] {
      state = state * 6364136223846793005ULL + 1442695040888963407ULL;
      return (static_cast<double>(state >> 11) + 0.5) / 9007199254740992.0;
    };
    const double r = std::sqrt(-2 * std::log(uniform())), t = 6.283185307179586 * uniform();
    out[i] = static_cast<float>(sigma * r * std::cos(t));
    if (i + 1 < out.size()) out[i + 1] = static_cast<float>(sigma * r * std::sin(t));
  }
  return out;
}

// Wraps a CPU engine; each Quantize waits at a gate until the test opens it or the job is
// cancelled, so tests can hold jobs "running" deterministically.
class GatedEngine final : public QuantizerBackend {
 public:
  explicit GatedEngine(std::unique_ptr<QuantizerBackend> inner) : inner_(std::move(inner)) {}
  std::string_view name() const override { return "gated-cpu"; }
  absl::StatusOr<QuantizedTensor> Quantize(const TensorView& input, const ImportanceView& imp,
                                           const QuantizeOptions& options) override {
    entered_.fetch_add(1);
    while (!open_.load()) {
      if (options.cancelled && options.cancelled->load()) {
        return absl::CancelledError("cancelled at the gate");
      }
      absl::SleepFor(absl::Milliseconds(2));
    }
    return inner_->Quantize(input, imp, options);
  }
  void Open() { open_.store(true); }
  int entered() const { return entered_.load(); }

 private:
  std::unique_ptr<QuantizerBackend> inner_;
  std::atomic<bool> open_{false};
  std::atomic<int> entered_{0};
};

std::unique_ptr<QuantizerBackend> Cpu() {
  return std::move(*cpu::CpuBackend::Create({2, cpu::CpuIsa::kAuto}));
}

// Base of the test engines that wrap a CPU engine writing in place: Quantize passes through;
// each subclass changes QuantizeInto.
class InPlaceCpuWrapper : public QuantizerBackend {
 public:
  bool quantizes_in_place() const override { return true; }
  absl::StatusOr<QuantizedTensor> Quantize(const TensorView& input, const ImportanceView& imp,
                                           const QuantizeOptions& options) override {
    return inner_->Quantize(input, imp, options);
  }

 protected:
  std::unique_ptr<QuantizerBackend> inner_ = Cpu();
};

struct Harness {
  std::unique_ptr<server::Nvfp4Server> server;
  std::unique_ptr<client::QuantizerClient> client;
  GatedEngine* gate = nullptr;
  std::string target;
};

// A server with one engine and a client sending 64 KiB chunks (many chunks even for small
// tensors). with_metrics: also serve /metrics (its HTTP server takes ~2 s to stop, so only the
// tests that scrape it pay for it).
Harness StartServerWith(std::unique_ptr<QuantizerBackend> engine, server::ServerOptions options,
                        bool with_metrics = false) {
  Harness h;
  options.listen = "127.0.0.1:0";
  options.metrics_listen = with_metrics ? "127.0.0.1:0" : "";
  std::vector<std::unique_ptr<QuantizerBackend>> engines;
  engines.push_back(std::move(engine));
  auto server = server::Nvfp4Server::Start(options, std::move(engines));
  EXPECT_TRUE(server.ok()) << server.status();
  h.server = std::move(*server);
  h.target = "127.0.0.1:" + std::to_string(h.server->port());
  client::ClientOptions client_options;
  client_options.target = h.target;
  client_options.chunk_bytes = 64 << 10;
  h.client = std::move(*client::QuantizerClient::Connect(client_options));
  return h;
}

// gated: the engine waits for GatedEngine::Open (Harness::gate); otherwise a CPU engine.
Harness StartServer(bool gated, server::ServerOptions options = {}, bool with_metrics = false) {
  std::unique_ptr<QuantizerBackend> engine = Cpu();
  GatedEngine* gate = nullptr;
  if (gated) {
    auto gated_engine = std::make_unique<GatedEngine>(std::move(engine));
    gate = gated_engine.get();
    engine = std::move(gated_engine);
  }
  Harness h = StartServerWith(std::move(engine), std::move(options), with_metrics);
  h.gate = gate;
  return h;
}

void WaitFor(const std::function<bool()>& condition) {
  const absl::Time deadline = absl::Now() + absl::Seconds(20);
  while (!condition() && absl::Now() < deadline) absl::SleepFor(absl::Milliseconds(5));
  ASSERT_TRUE(condition()) << "condition not reached in 20 s";
}

// The server's only job ended CANCELLED with DEADLINE_EXCEEDED and a message containing `text`.
void ExpectTheOnlyJobTimedOut(Harness& h, const std::string& text) {
  auto jobs = h.client->ListJobs();
  ASSERT_TRUE(jobs.ok() && jobs->size() == 1);
  EXPECT_EQ((*jobs)[0].state(), v1::JOB_STATE_CANCELLED);
  EXPECT_EQ((*jobs)[0].error_code(), "DEADLINE_EXCEEDED");
  EXPECT_THAT((*jobs)[0].error_message(), HasSubstr(text));
}

std::unique_ptr<v1::Quantizer::Stub> StubFor(const std::string& target) {
  return v1::Quantizer::NewStub(grpc::CreateChannel(target, grpc::InsecureChannelCredentials()));
}

std::string HttpGet(int port, const std::string& path) {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(port));
  inet_pton(AF_INET, "127.0.0.1", &addr.sin_addr);
  if (connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
    close(fd);
    return "";
  }
  const std::string request = "GET " + path + " HTTP/1.0\r\nHost: localhost\r\n\r\n";
  (void)!write(fd, request.data(), request.size());
  std::string response;
  char buffer[4096];
  for (ssize_t n; (n = read(fd, buffer, sizeof(buffer))) > 0;) response.append(buffer, n);
  close(fd);
  return response;
}

double MetricValue(const std::string& text, const std::string& series) {
  const size_t at = text.find("\n" + series + " ");
  if (at == std::string::npos) return -1;
  return std::stod(text.substr(at + series.size() + 2));
}

TEST(Service, ResultsAreByteIdenticalToTheEmbeddedEngine) {
  Harness h = StartServer(false);
  auto local = Cpu();
  struct Case {
    Method method;
    Objective objective;
    DType dtype;
    ImportanceLayout layout;
    int64_t rows, cols;
  };
  const std::vector<Case> cases = {
      {Method::kAbsMax, Objective::kMse, DType::kF32, ImportanceLayout::kNone, 64, 256},
      {Method::kFourOverSix, Objective::kMse, DType::kBF16, ImportanceLayout::kNone, 33, 200},
      {Method::kScaleSweep, Objective::kMse, DType::kF16, ImportanceLayout::kNone, 48, 512},
      {Method::kScaleSweep, Objective::kWmse, DType::kBF16, ImportanceLayout::kPerColumn, 96, 384},
      {Method::kScaleSweep, Objective::kWmse, DType::kF32, ImportanceLayout::kPerElement, 20, 100},
      {Method::kExhaustive, Objective::kMse, DType::kF32, ImportanceLayout::kNone, 8, 64},
  };
  uint64_t seed = 1;
  for (const Case& c : cases) {
    std::vector<float> x = Gaussian(c.rows * c.cols, seed++, 0.05f);
    std::vector<uint16_t> half(x.size());
    const void* data = x.data();
    if (c.dtype == DType::kBF16) {
      for (size_t i = 0; i < x.size(); ++i) half[i] = FloatToBf16Bits(x[i]);
      data = half.data();
    } else if (c.dtype == DType::kF16) {
      for (size_t i = 0; i < x.size(); ++i) {  // small integers / 256: exact in binary16
        const float v = std::nearbyint(x[i] * 2048.0f) / 256.0f;
        const uint32_t b = [&] {
          uint32_t u;
          std::memcpy(&u, &v, 4);
          return u;
        }();
        const uint32_t sign = (b >> 16) & 0x8000u;
        const int e = static_cast<int>((b >> 23) & 0xFF) - 127 + 15;
        half[i] = v == 0 ? static_cast<uint16_t>(sign)
                         : static_cast<uint16_t>(sign | (e << 10) | ((b >> 13) & 0x3FF));
      }
      data = half.data();
    }
    const int64_t w_count = c.layout == ImportanceLayout::kPerColumn    ? c.cols
                            : c.layout == ImportanceLayout::kPerElement ? c.rows * c.cols
                                                                        : 0;
    std::vector<float> w(static_cast<size_t>(w_count));
    for (size_t i = 0; i < w.size(); ++i) w[i] = std::exp(std::sin(static_cast<double>(i)));
    const TensorView input{c.dtype, c.rows, c.cols, data};
    const ImportanceView importance{c.layout, w.empty() ? nullptr : w.data(), w_count};
    QuantizeOptions options;
    options.method = c.method;
    options.objective = c.objective;
    options.want_dequantized = true;
    auto remote = h.client->QuantizeTensor(input, importance, options, "case");
    auto embedded = local->Quantize(input, importance, options);
    ASSERT_TRUE(remote.ok()) << remote.status();
    ASSERT_TRUE(embedded.ok()) << embedded.status();
    EXPECT_EQ(remote->packed, embedded->packed);
    EXPECT_EQ(remote->scales, embedded->scales);
    EXPECT_EQ(remote->global_scale, embedded->global_scale);
    EXPECT_EQ(remote->padded_cols, embedded->padded_cols);
    ASSERT_EQ(remote->dequantized.size(), embedded->dequantized.size());
    EXPECT_EQ(0, std::memcmp(remote->dequantized.data(), embedded->dequantized.data(),
                             embedded->dequantized.size() * 4));
    EXPECT_EQ(remote->metrics.mse, embedded->metrics.mse);
    EXPECT_EQ(remote->metrics.gain, embedded->metrics.gain);
    EXPECT_EQ(remote->metrics.weighted, embedded->metrics.weighted);
  }
}

// A unary request for the f32 tensor x of shape [rows, cols].
v1::QuantizeTensorUnaryRequest UnaryRequest(const std::vector<float>& x, int64_t rows,
                                            int64_t cols) {
  v1::QuantizeTensorUnaryRequest request;
  request.mutable_header()->set_dtype(v1::DTYPE_F32);
  request.mutable_header()->add_shape(rows);
  request.mutable_header()->add_shape(cols);
  request.set_data(x.data(), x.size() * 4);
  return request;
}

TEST(Service, UnaryCallMatchesTheStream) {
  Harness h = StartServer(false);
  auto stub = StubFor(h.target);
  std::vector<float> x = Gaussian(32 * 128, 9);
  v1::QuantizeTensorUnaryRequest request = UnaryRequest(x, 32, 128);
  request.mutable_header()->set_output_mode(v1::OUTPUT_MODE_BOTH);
  request.mutable_header()->set_dequantized_dtype(v1::DTYPE_BF16);
  v1::QuantizeTensorUnaryResponse response;
  grpc::ClientContext context;
  ASSERT_TRUE(stub->QuantizeTensorUnary(&context, request, &response).ok());
  QuantizeOptions with_dequantized;
  with_dequantized.want_dequantized = true;
  auto embedded = Cpu()->Quantize({DType::kF32, 32, 128, x.data()}, {}, with_dequantized);
  ASSERT_TRUE(embedded.ok());
  EXPECT_EQ(response.packed(), std::string(embedded->packed.begin(), embedded->packed.end()));
  EXPECT_EQ(response.scales(), std::string(embedded->scales.begin(), embedded->scales.end()));
  ASSERT_EQ(response.dequantized().size(), x.size() * 2);
  for (size_t i = 0; i < x.size(); ++i) {
    uint16_t bits;
    std::memcpy(&bits, response.dequantized().data() + 2 * i, 2);
    ASSERT_EQ(bits, FloatToBf16Bits(embedded->dequantized[i])) << i;
  }
  EXPECT_EQ(response.result().dequantized_dtype(), v1::DTYPE_BF16);
  EXPECT_FALSE(response.job_id().empty());
}

TEST(Service, QueueFullIsResourceExhaustedAndCounted) {
  server::ServerOptions options;
  options.scheduler.max_queue = 1;
  Harness h = StartServer(true, options, /*with_metrics=*/true);
  std::vector<float> x = Gaussian(16 * 64, 3);
  const TensorView input{DType::kF32, 16, 64, x.data()};
  absl::Status first, second;
  std::thread a([&] { first = h.client->QuantizeTensor(input, {}, {}).status(); });
  WaitFor([&] { return h.gate->entered() == 1; });  // job 1 running
  std::thread b([&] { second = h.client->QuantizeTensor(input, {}, {}).status(); });
  WaitFor([&] { return h.server->scheduler().queue_depth() == 1; });  // job 2 queued
  auto third = h.client->QuantizeTensor(input, {}, {});
  EXPECT_EQ(third.status().code(), absl::StatusCode::kResourceExhausted) << third.status();
  EXPECT_THAT(std::string(third.status().message()), HasSubstr("queue is full"));
  const std::string metrics = HttpGet(h.server->metrics_port(), "/metrics");
  EXPECT_EQ(MetricValue(metrics, "nvfp4_admission_rejections_total{reason=\"queue_full\"}"), 1);
  EXPECT_EQ(MetricValue(metrics, "nvfp4_queue_depth"), 1);
  h.gate->Open();
  a.join();
  b.join();
  EXPECT_TRUE(first.ok()) << first;
  EXPECT_TRUE(second.ok()) << second;
  const std::string after = HttpGet(h.server->metrics_port(), "/metrics");
  EXPECT_EQ(MetricValue(after, "nvfp4_jobs_total{code=\"OK\",kind=\"tensor\"}"), 2);
  EXPECT_EQ(MetricValue(after, "nvfp4_jobs_total{code=\"RESOURCE_EXHAUSTED\",kind=\"tensor\"}"), 1);
  // The refusal is no job: no duration (it would drag the percentiles toward zero under
  // overload) and no record (it would push real jobs out of the history).
  EXPECT_EQ(MetricValue(after, "nvfp4_job_duration_seconds_count{kind=\"tensor\"}"), 2);
  auto jobs = h.client->ListJobs();
  ASSERT_TRUE(jobs.ok());
  EXPECT_EQ(jobs->size(), 2u);
  for (const v1::Job& job : *jobs) EXPECT_EQ(job.state(), v1::JOB_STATE_SUCCEEDED);
  EXPECT_EQ(MetricValue(after, "nvfp4_elements_quantized_total"), 2 * 16 * 64);
  // Both jobs started: the second after waiting in the queue for the gate.
  EXPECT_EQ(MetricValue(after, "nvfp4_queue_wait_seconds_count"), 2);
  EXPECT_GT(MetricValue(after, "nvfp4_queue_wait_seconds_sum"), 0);
  EXPECT_EQ(MetricValue(after, "nvfp4_memory_budget_bytes"),
            static_cast<double>(h.server->scheduler().options().memory_budget_bytes));
}

TEST(Service, CancelWhileQueuedAndWhileRunningReleasesResources) {
  Harness h = StartServer(true);
  std::vector<float> x = Gaussian(16 * 64, 4);
  const TensorView input{DType::kF32, 16, 64, x.data()};
  absl::Status running_status, queued_status;
  std::thread a(
      [&] { running_status = h.client->QuantizeTensor(input, {}, {}, "running").status(); });
  WaitFor([&] { return h.gate->entered() == 1; });
  std::thread b(
      [&] { queued_status = h.client->QuantizeTensor(input, {}, {}, "queued").status(); });
  WaitFor([&] { return h.server->scheduler().queue_depth() == 1; });
  // The gated engine only implements Quantize (its QuantizeInto gathers the streamed input and
  // holds a second copy of the outputs), so each job reserves its input and outputs twice.
  const int64_t outputs = PackedBytes(16, 64) + ScaleBytes(16, 64);
  EXPECT_EQ(h.server->scheduler().reserved_bytes(), 2 * (2 * 16 * 64 * 4 + 2 * outputs));
  auto jobs = h.client->ListJobs();
  ASSERT_TRUE(jobs.ok());
  ASSERT_EQ(jobs->size(), 2u);
  std::string queued_id, running_id;
  for (const auto& j : *jobs) (j.name() == "queued" ? queued_id : running_id) = j.id();
  EXPECT_EQ((*h.client->GetJob(queued_id)).state(), v1::JOB_STATE_QUEUED);
  EXPECT_EQ((*h.client->GetJob(running_id)).state(), v1::JOB_STATE_RUNNING);

  ASSERT_TRUE(h.client->CancelJob(queued_id).ok());
  b.join();
  EXPECT_EQ(queued_status.code(), absl::StatusCode::kCancelled) << queued_status;
  EXPECT_EQ(h.server->scheduler().queue_depth(), 0);

  ASSERT_TRUE(h.client->CancelJob(running_id).ok());
  a.join();
  EXPECT_EQ(running_status.code(), absl::StatusCode::kCancelled) << running_status;
  WaitFor([&] { return h.server->scheduler().reserved_bytes() == 0; });
  EXPECT_EQ(h.server->scheduler().running(), 0);
  EXPECT_EQ((*h.client->GetJob(running_id)).state(), v1::JOB_STATE_CANCELLED);
  EXPECT_EQ(h.client->GetJob("nope").status().code(), absl::StatusCode::kNotFound);
}

TEST(Service, DeadlineExceededCancelsTheJob) {
  Harness h = StartServer(true);
  client::ClientOptions options;
  options.target = h.target;
  options.timeout = absl::Milliseconds(300);
  auto impatient = std::move(*client::QuantizerClient::Connect(options));
  std::vector<float> x = Gaussian(16 * 64, 5);
  auto q = impatient->QuantizeTensor({DType::kF32, 16, 64, x.data()}, {}, {});
  EXPECT_EQ(q.status().code(), absl::StatusCode::kDeadlineExceeded) << q.status();
  WaitFor([&] { return h.server->scheduler().reserved_bytes() == 0; });
  WaitFor([&] { return h.server->scheduler().running() == 0; });
  // The job record says the deadline ended it, not that someone cancelled it.
  ExpectTheOnlyJobTimedOut(h, "deadline passed");
}

TEST(Service, UnaryDeadlineIsRecordedAsSuch) {
  Harness h = StartServer(true);
  auto stub = StubFor(h.target);
  const v1::QuantizeTensorUnaryRequest request = UnaryRequest(Gaussian(16 * 64, 6), 16, 64);
  v1::QuantizeTensorUnaryResponse response;
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + std::chrono::milliseconds(300));
  const grpc::Status status = stub->QuantizeTensorUnary(&context, request, &response);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::DEADLINE_EXCEEDED) << status.error_message();
  WaitFor([&] { return h.server->scheduler().running() == 0; });
  ExpectTheOnlyJobTimedOut(h, "deadline passed");
}

TEST(Service, ClientDisconnectMidUploadReleasesTheAdmission) {
  Harness h = StartServer(false);
  auto stub = StubFor(h.target);
  grpc::ClientContext context;
  auto stream = stub->QuantizeTensor(&context);
  v1::QuantizeTensorRequest request;
  request.mutable_header()->set_dtype(v1::DTYPE_F32);
  request.mutable_header()->add_shape(1024);
  request.mutable_header()->add_shape(1024);
  ASSERT_TRUE(stream->Write(request));
  request.Clear();
  request.set_data(std::string(1 << 20, '\0'));
  ASSERT_TRUE(stream->Write(request));
  WaitFor([&] { return h.server->scheduler().reserved_bytes() > 0; });
  context.TryCancel();
  (void)stream->Finish();
  WaitFor([&] { return h.server->scheduler().reserved_bytes() == 0; });
  EXPECT_EQ(h.server->scheduler().queue_depth(), 0);
}

// Sends a header (and optional raw chunks) and returns the final status.
grpc::Status SendRaw(const std::string& target,
                     const std::vector<v1::QuantizeTensorRequest>& messages) {
  auto stub = StubFor(target);
  grpc::ClientContext context;
  auto stream = stub->QuantizeTensor(&context);
  for (const auto& m : messages) {
    if (!stream->Write(m)) break;
  }
  stream->WritesDone();
  v1::QuantizeTensorResponse response;
  while (stream->Read(&response)) {
  }
  return stream->Finish();
}

v1::QuantizeTensorRequest Header(v1::DType dtype, std::vector<int64_t> shape) {
  v1::QuantizeTensorRequest r;
  r.mutable_header()->set_dtype(dtype);
  for (int64_t d : shape) r.mutable_header()->add_shape(d);
  return r;
}

v1::QuantizeTensorRequest Data(const std::string& bytes) {
  v1::QuantizeTensorRequest r;
  r.set_data(bytes);
  return r;
}

TEST(Service, BadRequestsAreInvalidArgumentNamingTheField) {
  Harness h = StartServer(false);
  auto expect = [&](const std::vector<v1::QuantizeTensorRequest>& messages,
                    const std::string& text) {
    const grpc::Status s = SendRaw(h.target, messages);
    EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT)
        << text << ": " << s.error_message();
    EXPECT_THAT(s.error_message(), HasSubstr(text));
  };
  expect({Header(v1::DTYPE_UNSPECIFIED, {4, 16})}, "header.dtype");
  expect({Header(v1::DTYPE_F32, {4, 16, 2})}, "header.shape");
  expect({Header(v1::DTYPE_F32, {0, 16})}, "header.shape");
  auto bad_method = Header(v1::DTYPE_F32, {4, 16});
  bad_method.mutable_header()->set_method(static_cast<v1::Method>(42));
  expect({bad_method}, "header.method");
  auto wmse = Header(v1::DTYPE_F32, {4, 16});
  wmse.mutable_header()->set_objective(v1::OBJECTIVE_WMSE);
  expect({wmse}, "importance_layout");
  auto scale = Header(v1::DTYPE_F32, {4, 16});
  scale.mutable_header()->set_scale_max(300);
  expect({scale}, "header.scale_max");
  expect({Data("abcd")}, "first message must carry the header");
  expect({Header(v1::DTYPE_F32, {4, 16}), Data(std::string(4 * 16 * 4 + 4, '\0'))}, "exceed");
  expect({Header(v1::DTYPE_F32, {4, 16}), Data(std::string(100, '\0'))}, "ended early");
  expect({Header(v1::DTYPE_F32, {2048, 1024}), Data(std::string((4 << 20) + 4, '\0'))},
         "exceeds the limit");
  expect({Header(v1::DTYPE_F32, {4, 16}), Data("")}, "empty data chunk");
  expect({Header(v1::DTYPE_F32, {4, 16}), Header(v1::DTYPE_F32, {4, 16})}, "second header");
  std::vector<float> nan(4 * 16, 1.0f);
  nan[21] = std::nanf("");
  expect({Header(v1::DTYPE_F32, {4, 16}),
          Data(std::string(reinterpret_cast<char*>(nan.data()), nan.size() * 4))},
         "element 21 (row 1, column 5) is NaN");
  WaitFor([&] { return h.server->scheduler().reserved_bytes() == 0; });
}

// Sends serialised messages as given (not necessarily what generated code would write) and
// collects the parsed responses.
grpc::Status SendWire(const std::string& target, const std::vector<std::string>& messages,
                      std::vector<v1::QuantizeTensorResponse>* responses) {
  auto channel = grpc::CreateChannel(target, grpc::InsecureChannelCredentials());
  grpc::ClientContext context;
  client::BlockingRawStream stream(channel, &context, "/nvfp4.v1.Quantizer/QuantizeTensor");
  for (const std::string& m : messages) {
    grpc::Slice slice(m.data(), m.size());
    if (!stream.Write(grpc::ByteBuffer(&slice, 1))) break;
  }
  stream.WritesDone();
  grpc::ByteBuffer raw;
  while (stream.Read(&raw)) {
    std::vector<grpc::Slice> slices;
    (void)raw.Dump(&slices);
    std::string wire;
    for (const auto& piece : slices) {
      wire.append(reinterpret_cast<const char*>(piece.begin()), piece.size());
    }
    responses->emplace_back();
    EXPECT_TRUE(responses->back().ParseFromString(wire));
  }
  return stream.Finish();
}

// A client with gRPC's default 4 MiB receive limit (SendWire's channel) reads every response
// message: a 4 MiB packed section used to go out as one chunk of 4 MiB + 5 bytes of framing.
TEST(Service, ResultChunksFitADefaultClientsReceiveLimit) {
  Harness h = StartServer(false);
  const int64_t rows = 2048, cols = 4096;  // packed output: exactly 4 MiB
  std::vector<float> x = Gaussian(rows * cols, 91);
  const std::string bytes(reinterpret_cast<const char*>(x.data()), x.size() * 4);
  v1::QuantizeTensorRequest header = Header(v1::DTYPE_F32, {rows, cols});
  header.mutable_header()->set_method(v1::METHOD_ABSMAX);
  std::vector<std::string> messages = {header.SerializeAsString()};
  for (size_t at = 0; at < bytes.size(); at += 4 << 20) {
    messages.push_back(Data(bytes.substr(at, 4 << 20)).SerializeAsString());
  }
  std::vector<v1::QuantizeTensorResponse> responses;
  const grpc::Status status = SendWire(h.target, messages, &responses);
  ASSERT_TRUE(status.ok()) << status.error_message();
  std::string packed;
  for (const auto& r : responses) {
    EXPECT_LE(r.ByteSizeLong(), size_t{4} << 20);
    packed += r.packed();
  }
  QuantizeOptions absmax;
  absmax.method = Method::kAbsMax;
  auto embedded = Cpu()->Quantize({DType::kF32, rows, cols, x.data()}, {}, absmax);
  ASSERT_TRUE(embedded.ok());
  EXPECT_TRUE(packed == std::string(embedded->packed.begin(), embedded->packed.end()));
}

// --max-message-mib below 4 lowers the advertised chunk size with it, and a unary call whose
// response would not fit one message is refused before any work (not RESOURCE_EXHAUSTED after).
TEST(Service, MessageLimitBoundsChunksAndUnaryResponses) {
  server::ServerOptions options;
  options.service.max_message_bytes = 1 << 20;
  Harness h = StartServer(false, options);
  auto info = h.client->GetServerInfo();
  ASSERT_TRUE(info.ok()) << info.status();
  EXPECT_EQ(info->limits().max_chunk_bytes(), 1 << 20);
  EXPECT_EQ(info->limits().max_message_bytes(), 1 << 20);
  // 0.94 MiB of bf16 in; with the f32 fake-quant output the response is about 2.2 MiB.
  auto stub = StubFor(h.target);
  const std::vector<float> x = Gaussian(240 * 2048, 7);
  std::vector<uint16_t> bf16(x.size());
  for (size_t i = 0; i < x.size(); ++i) {
    uint32_t bits;
    std::memcpy(&bits, &x[i], 4);
    bf16[i] = static_cast<uint16_t>(bits >> 16);
  }
  v1::QuantizeTensorUnaryRequest request;
  request.mutable_header()->set_dtype(v1::DTYPE_BF16);
  request.mutable_header()->add_shape(240);
  request.mutable_header()->add_shape(2048);
  request.set_data(bf16.data(), bf16.size() * 2);
  request.mutable_header()->set_output_mode(v1::OUTPUT_MODE_BOTH);
  request.mutable_header()->set_dequantized_dtype(v1::DTYPE_F32);
  v1::QuantizeTensorUnaryResponse response;
  grpc::ClientContext context;
  const grpc::Status status = stub->QuantizeTensorUnary(&context, request, &response);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << status.error_message();
  EXPECT_THAT(status.error_message(), HasSubstr("use the streamed QuantizeTensor"));
  // The packed result alone fits.
  request.mutable_header()->set_output_mode(v1::OUTPUT_MODE_PACKED);
  grpc::ClientContext again;
  EXPECT_TRUE(stub->QuantizeTensorUnary(&again, request, &response).ok());
}

// The server reads byte chunks straight from the wire when a message is exactly one field and
// hands anything else to the generated parser: other valid encodings must work the same.
TEST(Service, ChunksInOtherValidEncodingsTakeTheGeneratedParser) {
  Harness h = StartServer(false);
  std::vector<float> x = Gaussian(8 * 64, 77, 0.1f);
  const std::string bytes(reinterpret_cast<const char*>(x.data()), x.size() * 4);
  const std::string unknown_field("\x78\x01", 2);  // field 15, varint 1: skipped by parsers
  std::vector<v1::QuantizeTensorResponse> responses;
  const grpc::Status status =
      SendWire(h.target,
               {Header(v1::DTYPE_F32, {8, 64}).SerializeAsString(),
                Data(bytes.substr(0, 1000)).SerializeAsString() + unknown_field,
                unknown_field + Data(bytes.substr(1000)).SerializeAsString()},
               &responses);
  ASSERT_TRUE(status.ok()) << status.error_message();
  std::string packed, scales;
  for (const auto& r : responses) {
    packed += r.packed();
    scales += r.scales();
  }
  auto embedded = Cpu()->Quantize({DType::kF32, 8, 64, x.data()}, {}, {});
  ASSERT_TRUE(embedded.ok());
  EXPECT_EQ(packed, std::string(embedded->packed.begin(), embedded->packed.end()));
  EXPECT_EQ(scales, std::string(embedded->scales.begin(), embedded->scales.end()));

  responses.clear();
  const grpc::Status garbage = SendWire(
      h.target, {Header(v1::DTYPE_F32, {8, 64}).SerializeAsString(), "\xff\xff\xff"}, &responses);
  EXPECT_EQ(garbage.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(garbage.error_message(), HasSubstr("not a valid nvfp4.v1.QuantizeTensorRequest"));
  WaitFor([&] { return h.server->scheduler().reserved_bytes() == 0; });
}

TEST(Service, BearerTokenAuthentication) {
  const std::string token_file = ::testing::TempDir() + "/token";
  FILE* f = std::fopen(token_file.c_str(), "w");
  std::fputs("s3cret\n", f);
  std::fclose(f);
  server::ServerOptions options;
  options.auth_token_file = token_file;
  Harness h = StartServer(false, options);
  std::vector<float> x = Gaussian(4 * 16, 6);
  auto denied = h.client->QuantizeTensor({DType::kF32, 4, 16, x.data()}, {}, {});
  EXPECT_EQ(denied.status().code(), absl::StatusCode::kUnauthenticated) << denied.status();
  EXPECT_EQ(h.client->ListJobs().status().code(), absl::StatusCode::kUnauthenticated);
  client::ClientOptions wrong;
  wrong.target = h.target;
  wrong.token = "s3cres";
  EXPECT_EQ((*client::QuantizerClient::Connect(wrong))->GetServerInfo().status().code(),
            absl::StatusCode::kUnauthenticated);
  client::ClientOptions right = wrong;
  right.token = "s3cret";
  auto ok = (*client::QuantizerClient::Connect(right))
                ->QuantizeTensor({DType::kF32, 4, 16, x.data()}, {}, {});
  EXPECT_TRUE(ok.ok()) << ok.status();
  // The scheme name is case-insensitive (RFC 7235); the token is not.
  auto stub = StubFor(h.target);
  for (const auto& [header, code] : std::vector<std::pair<std::string, grpc::StatusCode>>{
           {"bearer s3cret", grpc::StatusCode::OK},
           {"BEARER s3cret", grpc::StatusCode::OK},
           {"Bearer S3CRET", grpc::StatusCode::UNAUTHENTICATED},
           {"Basic s3cret", grpc::StatusCode::UNAUTHENTICATED},
           {"Bearer", grpc::StatusCode::UNAUTHENTICATED},
           {"s3cret", grpc::StatusCode::UNAUTHENTICATED}}) {
    grpc::ClientContext context;
    context.AddMetadata("authorization", header);
    v1::ServerInfo info;
    EXPECT_EQ(stub->GetServerInfo(&context, {}, &info).error_code(), code) << header;
  }
  // (Health checks stay unauthenticated: tests/python/test_grpc_interop.py checks them.)
}

TEST(Service, ListJobsRefusesUnknownStates) {
  Harness h = StartServer(false);
  auto stub = StubFor(h.target);
  for (int state : {0, 99}) {
    grpc::ClientContext context;
    v1::ListJobsRequest request;
    request.add_states(static_cast<v1::JobState>(state));
    v1::ListJobsResponse response;
    const grpc::Status status = stub->ListJobs(&context, request, &response);
    EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << state;
    EXPECT_THAT(status.error_message(), HasSubstr("unknown job state")) << state;
  }
}

v1::QuantizeTensorRequest StreamingHeader(int64_t rows, int64_t cols) {
  v1::QuantizeTensorRequest r;
  r.mutable_header()->set_dtype(v1::DTYPE_F32);
  r.mutable_header()->add_shape(rows);
  r.mutable_header()->add_shape(cols);
  r.mutable_header()->set_amax(4.0f);  // scale known: the job starts before the data is in
  return r;
}

// The other side of the deadline tests: a client's cancel far from its deadline is recorded as
// CANCELLED, for the streamed and the unary call.
TEST(Service, AClientCancelFarFromTheDeadlineIsRecordedAsACancel) {
  Harness h = StartServer(true);
  auto stub = StubFor(h.target);
  const auto deadline = std::chrono::system_clock::now() + std::chrono::seconds(30);
  {
    grpc::ClientContext context;
    context.set_deadline(deadline);
    auto stream = stub->QuantizeTensor(&context);
    ASSERT_TRUE(stream->Write(Header(v1::DTYPE_F32, {16, 64})));
    ASSERT_TRUE(stream->Write(Data(std::string(16 * 64 * 4, '\0'))));
    WaitFor([&] { return h.gate->entered() == 1; });
    context.TryCancel();
    EXPECT_EQ(stream->Finish().error_code(), grpc::StatusCode::CANCELLED);
  }
  {
    grpc::ClientContext context;
    context.set_deadline(deadline);
    const v1::QuantizeTensorUnaryRequest request = UnaryRequest(Gaussian(16 * 64, 7), 16, 64);
    v1::QuantizeTensorUnaryResponse response;
    std::thread canceller([&] {
      WaitFor([&] { return h.gate->entered() == 2; });
      context.TryCancel();
    });
    EXPECT_EQ(stub->QuantizeTensorUnary(&context, request, &response).error_code(),
              grpc::StatusCode::CANCELLED);
    canceller.join();
  }
  WaitFor([&] { return h.server->scheduler().running() == 0; });
  auto jobs = h.client->ListJobs();
  ASSERT_TRUE(jobs.ok() && jobs->size() == 2);
  for (const v1::Job& job : *jobs) {
    EXPECT_EQ(job.state(), v1::JOB_STATE_CANCELLED);
    EXPECT_EQ(job.error_code(), "CANCELLED") << job.error_message();
  }
}

// Without amax in the header the job waits for all its data before it starts; its memory is
// reserved from the header on. A client that stops sending holds that reservation only for the
// idle timeout (checked every 2 s), not until its connection dies.
// A QuantizeTensor call whose header has no amax, with 1 of its 4 MiB sent and then nothing:
// its job holds a memory reservation while it waits for the rest. Without the server's check
// the call would wait for the client's deadline (and fail the tests that use this).
using UploadStream = std::unique_ptr<
    grpc::ClientReaderWriter<v1::QuantizeTensorRequest, v1::QuantizeTensorResponse>>;
UploadStream StartStalledUpload(Harness& h, v1::Quantizer::Stub* stub,
                                grpc::ClientContext* context) {
  context->set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(60));
  UploadStream stream = stub->QuantizeTensor(context);
  EXPECT_TRUE(stream->Write(Header(v1::DTYPE_F32, {1024, 1024})));
  EXPECT_TRUE(stream->Write(Data(std::string(1 << 20, '\0'))));
  WaitFor([&] { return h.server->scheduler().reserved_bytes() > 0; });
  return stream;
}

TEST(Service, StalledUploadBeforeTheJobStartsGivesBackItsReservation) {
  server::ServerOptions options;
  options.service.upload_idle_timeout = absl::Milliseconds(300);
  Harness h = StartServer(false, options);
  auto stub = StubFor(h.target);
  grpc::ClientContext context;
  UploadStream stream = StartStalledUpload(h, stub.get(), &context);
  EXPECT_EQ(h.server->scheduler().running(), 0);  // nothing runs: the data is not complete
  v1::QuantizeTensorResponse response;
  while (stream->Read(&response)) {
  }
  const grpc::Status status = stream->Finish();
  EXPECT_EQ(status.error_code(), grpc::StatusCode::CANCELLED) << status.error_message();
  WaitFor([&] { return h.server->scheduler().reserved_bytes() == 0; });
  EXPECT_EQ(h.server->scheduler().reserved_bytes(), 0);
  ExpectTheOnlyJobTimedOut(h, "1048576 of 4194304 data bytes received");
  std::vector<float> x = Gaussian(16 * 64, 13);
  EXPECT_TRUE(h.client->QuantizeTensor({DType::kF32, 16, 64, x.data()}, {}, {}).ok());
}

// The sweep itself (nvfp4d's housekeeping calls it every 2 s): an upload that keeps sending,
// however slowly, is never expired; one that stops is, once; calls starting and ending while
// sweeps run concurrently all complete (under ASan, a sweep touching a finished call fails).
TEST(Service, UploadSweepExpiresOnlyIdleUploadsAndToleratesChurn) {
  server::ServerOptions options;
  options.service.upload_idle_timeout = absl::Milliseconds(400);
  options.housekeeping_period = absl::Hours(1);  // only this test sweeps (after the first tick)
  Harness h = StartServer(false, options);
  server::QuantizerService& service = h.server->service();
  auto stub = StubFor(h.target);
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(20));
  auto stream = stub->QuantizeTensor(&context);
  ASSERT_TRUE(stream->Write(Header(v1::DTYPE_F32, {1024, 1024})));
  for (int i = 0; i < 5; ++i) {
    absl::SleepFor(absl::Milliseconds(150));
    ASSERT_TRUE(stream->Write(Data(std::string(256 << 10, '\0'))));
    absl::SleepFor(absl::Milliseconds(50));  // the chunk is read
    EXPECT_EQ(service.ExpireStalledUploads(), 0) << "chunk " << i;
  }
  absl::SleepFor(absl::Milliseconds(600));
  EXPECT_EQ(service.ExpireStalledUploads(), 1);
  EXPECT_EQ(service.ExpireStalledUploads(), 0);  // already failed
  v1::QuantizeTensorResponse response;
  while (stream->Read(&response)) {
  }
  EXPECT_EQ(stream->Finish().error_code(), grpc::StatusCode::CANCELLED);
  ExpectTheOnlyJobTimedOut(h, "1310720 of 4194304 data bytes received");

  std::atomic<bool> stop{false};
  std::thread sweeper([&] {
    while (!stop.load()) service.ExpireStalledUploads();
  });
  std::vector<float> x = Gaussian(64 * 256, 14);
  for (int i = 0; i < 40; ++i) {
    EXPECT_TRUE(h.client->QuantizeTensor({DType::kF32, 64, 256, x.data()}, {}, {}).ok()) << i;
  }
  stop.store(true);
  sweeper.join();
  WaitFor([&] { return h.server->scheduler().reserved_bytes() == 0; });
  EXPECT_EQ(h.server->scheduler().reserved_bytes(), 0);
}

// Housekeeping keeps failing stalled uploads while nvfp4d drains: a client that stopped sending
// cannot hold a SIGTERM drain to its deadline (before, the drain waited all of it).
TEST(Service, AStalledUploadDoesNotHoldTheDrainToItsDeadline) {
  server::ServerOptions options;
  options.service.upload_idle_timeout = absl::Milliseconds(300);
  options.housekeeping_period = absl::Milliseconds(100);
  Harness h = StartServer(false, options);
  auto stub = StubFor(h.target);
  grpc::ClientContext context;
  UploadStream stream = StartStalledUpload(h, stub.get(), &context);
  const absl::Time start = absl::Now();
  h.server->Shutdown(absl::Seconds(30));
  EXPECT_LT(absl::Now() - start, absl::Seconds(10));
  v1::QuantizeTensorResponse response;
  while (stream->Read(&response)) {
  }
  EXPECT_EQ(stream->Finish().error_code(), grpc::StatusCode::CANCELLED);
  EXPECT_EQ(h.server->scheduler().reserved_bytes(), 0);
}

// Client-side health checking keeps a grpc.health.v1 Watch open per connection: it sees
// NOT_SERVING and then ends with the drain, which does not wait its full timeout for it.
TEST(Service, AnOpenHealthWatchDoesNotHoldTheDrain) {
  Harness h = StartServer(false);
  auto channel = grpc::CreateChannel(h.target, grpc::InsecureChannelCredentials());
  grpc::ClientContext context;
  client::BlockingRawStream watch(channel, &context, "/grpc.health.v1.Health/Watch");
  grpc::Slice empty_request("", 0);  // HealthCheckRequest{service: ""}
  ASSERT_TRUE(watch.Write(grpc::ByteBuffer(&empty_request, 1)));
  ASSERT_TRUE(watch.WritesDone());
  grpc::ByteBuffer update;
  ASSERT_TRUE(watch.Read(&update));  // SERVING
  const absl::Time start = absl::Now();
  h.server->Shutdown(absl::Seconds(20));
  EXPECT_LT(absl::Now() - start, absl::Seconds(5));
  int updates = 0;
  while (watch.Read(&update)) ++updates;
  EXPECT_GE(updates, 1);  // NOT_SERVING came before the end
}

// A stream that never sends its header holds no job, but it held its call (and a drain) until
// the client's own deadline.
TEST(Service, AStreamWithoutAHeaderTimesOut) {
  server::ServerOptions options;
  options.service.upload_idle_timeout = absl::Milliseconds(300);
  options.housekeeping_period = absl::Milliseconds(100);
  Harness h = StartServer(false, options);
  auto stub = StubFor(h.target);
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(15));
  auto stream = stub->QuantizeTensor(&context);
  const absl::Time start = absl::Now();
  v1::QuantizeTensorResponse response;
  while (stream->Read(&response)) {
  }
  const grpc::Status status = stream->Finish();
  EXPECT_EQ(status.error_code(), grpc::StatusCode::CANCELLED) << status.error_message();
  EXPECT_LT(absl::Now() - start, absl::Seconds(10));
  auto jobs = h.client->ListJobs();
  ASSERT_TRUE(jobs.ok());
  EXPECT_TRUE(jobs->empty());
}

TEST(Service, StalledStreamingUploadTimesOutAndFreesTheWorker) {
  server::ServerOptions options;
  options.service.upload_idle_timeout = absl::Milliseconds(300);
  Harness h = StartServer(false, options);
  auto stub = StubFor(h.target);
  grpc::ClientContext context;
  auto stream = stub->QuantizeTensor(&context);
  ASSERT_TRUE(stream->Write(StreamingHeader(1024, 1024)));
  ASSERT_TRUE(stream->Write(Data(std::string(1 << 20, '\0'))));
  WaitFor([&] { return h.server->scheduler().running() == 1; });  // waiting for rows
  // The client stalls without closing: the job must give the worker back.
  v1::QuantizeTensorResponse response;
  while (stream->Read(&response)) {
  }
  // The server cancels the call (the client sees CANCELLED); the job record says why.
  const grpc::Status status = stream->Finish();
  EXPECT_EQ(status.error_code(), grpc::StatusCode::CANCELLED) << status.error_message();
  WaitFor([&] { return h.server->scheduler().running() == 0; });
  ExpectTheOnlyJobTimedOut(h, "no tensor data");
  WaitFor([&] { return h.server->scheduler().reserved_bytes() == 0; });
  std::vector<float> x = Gaussian(16 * 64, 12);
  EXPECT_TRUE(h.client->QuantizeTensor({DType::kF32, 16, 64, x.data()}, {}, {}).ok());
}

// Cancels the server's only job by id while its client sends nothing more: the call must end
// by itself, CANCELLED, and the job's record must not blame the client.
template <typename Stream>
void ExpectCancelJobEndsTheCall(Harness& h, Stream& stream) {
  auto jobs = h.client->ListJobs();
  ASSERT_TRUE(jobs.ok() && jobs->size() == 1);
  ASSERT_TRUE(h.client->CancelJob((*jobs)[0].id()).ok());
  const absl::Time start = absl::Now();
  v1::QuantizeTensorResponse response;
  while (stream->Read(&response)) {
  }
  const grpc::Status status = stream->Finish();
  EXPECT_EQ(status.error_code(), grpc::StatusCode::CANCELLED) << status.error_message();
  EXPECT_LT(absl::Now() - start, absl::Seconds(5));
  WaitFor([&] { return h.server->scheduler().reserved_bytes() == 0; });
  const v1::Job job = *h.client->GetJob((*jobs)[0].id());
  EXPECT_EQ(job.state(), v1::JOB_STATE_CANCELLED);
  EXPECT_THAT(job.error_message(), Not(HasSubstr("client")));
}

TEST(Service, CancelJobStopsAStreamingJobWaitingForRows) {
  Harness h = StartServer(false);
  auto stub = StubFor(h.target);
  grpc::ClientContext context;
  auto stream = stub->QuantizeTensor(&context);
  ASSERT_TRUE(stream->Write(StreamingHeader(1024, 1024)));
  WaitFor([&] { return h.server->scheduler().running() == 1; });
  ExpectCancelJobEndsTheCall(h, stream);
}

TEST(Service, CancelJobEndsAQueuedJobWhoseUploadStalled) {
  Harness h = StartServer(false);
  auto stub = StubFor(h.target);
  grpc::ClientContext context;
  UploadStream stream = StartStalledUpload(h, stub.get(), &context);  // no amax: not submitted
  ExpectCancelJobEndsTheCall(h, stream);
}

// The cancel flag of a job whose tensor is still arriving (no amax: not submitted) is seen at
// the next chunk, without CancelJob's sweep (which skips a call busy with a chunk) and without
// the housekeeping sweep: the rest of the upload is not read.
TEST(Service, ACancelledUploadStopsAtItsNextChunk) {
  server::ServerOptions options;
  options.housekeeping_period = absl::Hours(1);
  Harness h = StartServer(false, options);
  auto stub = StubFor(h.target);
  grpc::ClientContext context;
  UploadStream stream = StartStalledUpload(h, stub.get(), &context);
  auto jobs = h.client->ListJobs();
  ASSERT_TRUE(jobs.ok() && jobs->size() == 1);
  h.server->service().jobs()->Find((*jobs)[0].id())->RequestCancel();
  int accepted = 0;
  while (accepted < 3 && stream->Write(Data(std::string(1 << 20, '\0')))) ++accepted;
  v1::QuantizeTensorResponse response;
  while (stream->Read(&response)) {
  }
  const grpc::Status status = stream->Finish();
  EXPECT_EQ(status.error_code(), grpc::StatusCode::CANCELLED) << status.error_message();
  const v1::Job job = *h.client->GetJob((*jobs)[0].id());
  EXPECT_EQ(job.state(), v1::JOB_STATE_CANCELLED);
  EXPECT_THAT(job.error_message(), HasSubstr("cancelled while its tensor was uploading"));
  WaitFor([&] { return h.server->scheduler().reserved_bytes() == 0; });
  EXPECT_EQ(h.server->scheduler().reserved_bytes(), 0);
}

TEST(Service, ABadChunkAfterAStreamingStartCancelsTheJob) {
  Harness h = StartServer(false);
  const grpc::Status status =
      SendRaw(h.target, {StreamingHeader(2048, 1024), Data(std::string(1 << 20, '\0')),
                         Data(std::string((4 << 20) + 1, '\0'))});
  EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << status.error_message();
  WaitFor([&] { return h.server->scheduler().running() == 0; });
  WaitFor([&] { return h.server->scheduler().reserved_bytes() == 0; });
  std::vector<float> x = Gaussian(16 * 64, 13);
  EXPECT_TRUE(h.client->QuantizeTensor({DType::kF32, 16, 64, x.data()}, {}, {}).ok());
}

// Wraps a CPU engine: quantises everything, reports only the first half of the rows done and
// then waits (up to 5 s) until the test saw result bytes arrive before reporting the rest.
// With early results the wait ends at once; without, the job fails with DEADLINE_EXCEEDED.
class HalfwayEngine final : public InPlaceCpuWrapper {
 public:
  std::string_view name() const override { return "halfway-cpu"; }
  absl::StatusOr<QuantizedSummary> QuantizeInto(const TensorView& input, const ImportanceView& imp,
                                                const QuantizeOptions& options,
                                                const QuantizedBuffers& out, RowSource* streamed,
                                                const RowsDoneFn* rows_done) override {
    absl::StatusOr<QuantizedSummary> summary =
        inner_->QuantizeInto(input, imp, options, out, streamed, nullptr);
    if (!summary.ok()) return summary;
    if (rows_done != nullptr) (*rows_done)(input.rows / 2);
    if (!seen_early_bytes.WaitForNotificationWithTimeout(absl::Seconds(5))) {
      return absl::DeadlineExceededError("no result bytes reached the client while the job ran");
    }
    if (rows_done != nullptr) (*rows_done)(input.rows);
    return summary;
  }
  absl::Notification seen_early_bytes;
};

// With amax known up front, the result header and the packed chunks of finished rows reach the
// client while the job still runs; the assembled result equals the embedded engine's.
TEST(Service, StreamedJobsSendFinishedRowsBeforeTheJobEnds) {
  server::ServerOptions options;
  options.service.max_chunk_bytes = 64 << 10;
  auto engine = std::make_unique<HalfwayEngine>();
  HalfwayEngine* halfway = engine.get();
  Harness h = StartServerWith(std::move(engine), options);
  ASSERT_NE(h.server, nullptr);

  const int64_t rows = 512, cols = 1024;  // packed: 256 KiB, 4 chunks; half: 2 chunks
  std::vector<float> x = Gaussian(rows * cols, 31);
  const TensorView view{DType::kF32, rows, cols, x.data()};
  int64_t downloaded_while_running = 0, reserved_while_running = 0;
  auto progress = [&](int64_t done, int64_t, std::string_view phase) {
    if (phase == "download" && !halfway->seen_early_bytes.HasBeenNotified()) {
      downloaded_while_running = done;
      reserved_while_running = h.server->scheduler().reserved_bytes();
      halfway->seen_early_bytes.Notify();
    }
  };
  auto remote = h.client->QuantizeTensor(view, {}, {}, "early", progress);  // client sends amax
  ASSERT_TRUE(remote.ok()) << remote.status();
  EXPECT_GT(downloaded_while_running, 0);
  EXPECT_LE(downloaded_while_running, rows / 2 * (cols / 2));  // only rows reported done
  // An engine writing in place: the input and one set of outputs are reserved.
  EXPECT_EQ(reserved_while_running,
            rows * cols * 4 + PackedBytes(rows, cols) + ScaleBytes(rows, cols));
  auto local = Cpu()->Quantize(view, {}, {});
  ASSERT_TRUE(local.ok());
  EXPECT_EQ(remote->packed, local->packed);
  EXPECT_EQ(remote->scales, local->scales);
  EXPECT_EQ(remote->global_scale, local->global_scale);
  EXPECT_EQ(remote->metrics.mse, local->metrics.mse);
}

// Wraps a CPU engine and slows its reading of a streamed input (5 ms per row chunk), so the
// upload outruns it.
class SlowReadingEngine final : public InPlaceCpuWrapper {
 public:
  std::string_view name() const override { return "slow-reading-cpu"; }
  absl::StatusOr<QuantizedSummary> QuantizeInto(const TensorView& input, const ImportanceView& imp,
                                                const QuantizeOptions& options,
                                                const QuantizedBuffers& out, RowSource* streamed,
                                                const RowsDoneFn* rows_done) override {
    class Slow final : public RowSource {
     public:
      explicit Slow(RowSource* source) : source_(source) {}
      bool ReadRows(int64_t begin, int64_t end, PieceFn piece) override {
        absl::SleepFor(absl::Milliseconds(5));
        return source_->ReadRows(begin, end, piece);
      }

     private:
      RowSource* const source_;
    } slow(streamed);
    return inner_->QuantizeInto(input, imp, options, out, streamed ? &slow : nullptr, rows_done);
  }
};

// A streaming job holds only a window of its received data: the server stops reading while the
// engine is behind (gRPC flow control holds the client back) and lets chunks go once their rows
// are done, so a tensor far larger than the window passes with the window's memory; admission
// reserves accordingly. The result is the embedded engine's; an early NaN still ends the call.
TEST(Service, StreamedUploadIsHeldToTheFlowControlWindow) {
  server::ServerOptions options;
  options.service.max_chunk_bytes = 64 << 10;
  options.service.stream_window_bytes = 256 << 10;
  Harness h = StartServerWith(std::make_unique<SlowReadingEngine>(), options);
  ASSERT_NE(h.server, nullptr);
  server::QuantizerService& service = h.server->service();

  const int64_t rows = 2048, cols = 1024;  // 8 MiB of f32; the engine reads 256 KiB at a time
  std::vector<float> x = Gaussian(rows * cols, 41);
  const TensorView view{DType::kF32, rows, cols, x.data()};
  auto remote = h.client->QuantizeTensor(view, {}, {}, "windowed");  // client sends amax
  ASSERT_TRUE(remote.ok()) << remote.status();
  auto local = Cpu()->Quantize(view, {}, {});
  ASSERT_TRUE(local.ok());
  EXPECT_EQ(remote->packed, local->packed);
  EXPECT_EQ(remote->scales, local->scales);
  EXPECT_EQ(remote->metrics.mse, local->metrics.mse);
  // Window + the message crossing it + what two engine threads read at once.
  EXPECT_GT(service.stream_held_peak_bytes(), 0);
  EXPECT_LE(service.stream_held_peak_bytes(), (256 + 64 + 2 * 256) << 10);
  WaitFor([&] { return service.stream_held_bytes() == 0; });

  // Admission: a streamed 1 GiB bf16 tensor reserves the held chunks' bound, not the tensor.
  api::TensorSpec big;
  big.dtype = DType::kBF16;
  big.rows = 65536;
  big.cols = 8192;
  EXPECT_EQ(service.ReservedBytes(big, /*streamed=*/false), big.job_bytes());
  EXPECT_EQ(service.ReservedBytes(big, /*streamed=*/true),
            big.job_bytes() - big.input_bytes() + ((256 + 64) << 10) + 64 * (256 << 10));

  // An early NaN: INVALID_ARGUMENT naming it, although most of the upload was never read.
  x[5 * cols + 3] = std::nanf("");
  QuantizeOptions given;
  given.amax = 5.0f;
  auto bad = h.client->QuantizeTensor(view, {}, given, "nan");
  ASSERT_FALSE(bad.ok());
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument) << bad.status();
  EXPECT_THAT(std::string(bad.status().message()), HasSubstr("row 5, column 3"));
  WaitFor([&] { return service.stream_held_bytes() == 0; });
  WaitFor([&] { return h.server->scheduler().reserved_bytes() == 0; });
}

// A streamed job whose late rows hold a NaN: early packed chunks may already be out, but the
// call ends with INVALID_ARGUMENT naming the element, and the client returns no result.
TEST(Service, AStreamedJobFailingAfterEarlyResultsReportsTheError) {
  Harness h = StartServer(false);
  const int64_t rows = 512, cols = 1024;
  std::vector<float> x = Gaussian(rows * cols, 32);
  x[(rows - 1) * cols + 5] = std::nanf("");
  QuantizeOptions options;
  options.amax = 5.0f;  // given, so the client does not scan (and refuse) the NaN itself
  auto remote = h.client->QuantizeTensor({DType::kF32, rows, cols, x.data()}, {}, options);
  ASSERT_FALSE(remote.ok());
  EXPECT_EQ(remote.status().code(), absl::StatusCode::kInvalidArgument) << remote.status();
  EXPECT_THAT(std::string(remote.status().message()), HasSubstr("row 511, column 5"));
  WaitFor([&] { return h.server->scheduler().reserved_bytes() == 0; });
}

// The documented response order with early results: accepted, result, every packed chunk, every
// scales chunk, every dequantized chunk (bf16, converted in place on the server), metrics.
TEST(Service, StreamedResponseOrderAndBf16Outputs) {
  Harness h = StartServer(false);
  const int64_t rows = 96, cols = 200;
  std::vector<float> x = Gaussian(rows * cols, 33);
  QuantizeOptions wanted;
  wanted.want_dequantized = true;
  auto amax = cpu::CpuBackend::Create({1, cpu::CpuIsa::kAuto})
                  .value()
                  ->ComputeAmax({DType::kF32, rows, cols, x.data()});
  ASSERT_TRUE(amax.ok());
  wanted.amax = *amax;
  auto local = Cpu()->Quantize({DType::kF32, rows, cols, x.data()}, {}, wanted);
  ASSERT_TRUE(local.ok());

  auto stub = StubFor(h.target);
  grpc::ClientContext context;
  auto stream = stub->QuantizeTensor(&context);
  v1::QuantizeTensorRequest header = Header(v1::DTYPE_F32, {rows, cols});
  header.mutable_header()->set_amax(*amax);
  header.mutable_header()->set_output_mode(v1::OUTPUT_MODE_BOTH);
  header.mutable_header()->set_dequantized_dtype(v1::DTYPE_BF16);
  ASSERT_TRUE(stream->Write(header));
  const std::string bytes(reinterpret_cast<const char*>(x.data()), x.size() * 4);
  for (size_t at = 0; at < bytes.size(); at += 8 << 10) {
    ASSERT_TRUE(stream->Write(Data(bytes.substr(at, 8 << 10))));
  }
  stream->WritesDone();
  std::string order, packed, scales, dequantized;
  v1::QuantizeTensorResponse response;
  while (stream->Read(&response)) {
    const char kind = "?ARPSDM"[response.payload_case()];
    if (order.empty() || order.back() != kind) order.push_back(kind);
    packed += response.packed();
    scales += response.scales();
    dequantized += response.dequantized();
  }
  ASSERT_TRUE(stream->Finish().ok());
  EXPECT_EQ(order, "ARPSDM");
  EXPECT_EQ(packed, std::string(local->packed.begin(), local->packed.end()));
  EXPECT_EQ(scales, std::string(local->scales.begin(), local->scales.end()));
  ASSERT_EQ(dequantized.size(), x.size() * 2);
  for (size_t i = 0; i < x.size(); ++i) {
    uint16_t bits;
    std::memcpy(&bits, dequantized.data() + 2 * i, 2);
    ASSERT_EQ(bits, FloatToBf16Bits(local->dequantized[i])) << i;
  }
}

// The zero-copy upload: chunks are slices of the caller's tensor, which the owner keeps alive
// (the library holds references while gRPC holds chunks, and lets go of all of them later);
// the result equals the copying call's.
TEST(Service, ZeroCopyUploadSendsFromTheOwnersMemory) {
  Harness h = StartServer(false);
  const int64_t rows = 256, cols = 512;  // 512 KiB: 8 chunks of 64 KiB
  auto owned = std::make_shared<std::vector<float>>(Gaussian(rows * cols, 41));
  const TensorView view{DType::kF32, rows, cols, owned->data()};
  auto borrowed = h.client->QuantizeTensor(owned, view, {}, {}, "zero-copy");
  ASSERT_TRUE(borrowed.ok()) << borrowed.status();
  // A fresh client: only a copying call fills (and keeps) upload buffers.
  EXPECT_EQ(h.client->idle_upload_buffers(), 0u) << "the zero-copy call copied its chunks";
  auto copied = h.client->QuantizeTensor(view, {}, {}, "copied");
  ASSERT_TRUE(copied.ok()) << copied.status();
  WaitFor([&] { return h.client->idle_upload_buffers() > 0; });
  EXPECT_EQ(borrowed->packed, copied->packed);
  EXPECT_EQ(borrowed->scales, copied->scales);
  EXPECT_EQ(borrowed->global_scale, copied->global_scale);
  // Once gRPC has dropped the sent chunks, only the caller holds the tensor.
  WaitFor([&] { return owned.use_count() == 1; });
  EXPECT_EQ(h.client->QuantizeTensor(nullptr, view, {}, {}).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(Service, StartFailuresAreStatusesNotCrashes) {
  server::ServerOptions taken;
  taken.listen = "127.0.0.1:0";
  taken.metrics_listen = "127.0.0.1:0";
  auto first = server::Nvfp4Server::Start(taken);
  ASSERT_TRUE(first.ok()) << first.status();
  server::ServerOptions clash = taken;
  clash.metrics_listen = "127.0.0.1:" + std::to_string((*first)->metrics_port());
  auto second = server::Nvfp4Server::Start(clash);
  EXPECT_EQ(second.status().code(), absl::StatusCode::kUnavailable) << second.status();
  EXPECT_THAT(std::string(second.status().message()), HasSubstr("address is in use"));
  // The gRPC port too: gRPC's default SO_REUSEPORT would let a second server share it.
  server::ServerOptions grpc_clash = taken;
  grpc_clash.listen = "127.0.0.1:" + std::to_string((*first)->port());
  grpc_clash.metrics_listen = "";
  auto third = server::Nvfp4Server::Start(grpc_clash);
  EXPECT_EQ(third.status().code(), absl::StatusCode::kUnavailable) << third.status();
  EXPECT_THAT(std::string(third.status().message()), HasSubstr("address is in use"));
  server::ServerOptions bad_token = taken;
  bad_token.auth_token_file = "/nonexistent/token";
  EXPECT_EQ(server::Nvfp4Server::Start(bad_token).status().code(), absl::StatusCode::kNotFound);
  server::ServerOptions bad_device = taken;
  bad_device.device = "tpu";
  EXPECT_EQ(server::Nvfp4Server::Start(bad_device).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(Service, DrainingRefusesNewJobsAndReportsNotServing) {
  Harness h = StartServer(true);
  std::vector<float> x = Gaussian(16 * 64, 7);
  absl::Status in_flight;
  std::thread a([&] {
    in_flight = h.client->QuantizeTensor({DType::kF32, 16, 64, x.data()}, {}, {}).status();
  });
  WaitFor([&] { return h.gate->entered() == 1; });
  std::thread stopper([&] { h.server->Shutdown(absl::Seconds(10)); });
  WaitFor([&] { return h.server->scheduler().draining(); });
  absl::SleepFor(absl::Milliseconds(100));
  auto refused = h.client->QuantizeTensor({DType::kF32, 16, 64, x.data()}, {}, {});
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kUnavailable) << refused.status();
  h.gate->Open();  // the running job finishes within the drain period
  a.join();
  stopper.join();
  EXPECT_TRUE(in_flight.ok()) << in_flight;
}

// ---------------------------------------------------------------------------------------------
// QuantizeCheckpoint.

// A two-layer Llama-like f32 checkpoint under `dir`.
void WriteTinyCheckpoint(const std::string& dir) {
  std::filesystem::create_directories(dir);
  std::vector<std::vector<float>> keep;
  std::vector<checkpoint::SafetensorsBlob> blobs;
  auto add = [&](const std::string& name, int64_t rows, int64_t cols) {
    keep.push_back(Gaussian(rows * cols, keep.size() + 11, 0.05f));
    std::vector<int64_t> shape =
        rows == 1 ? std::vector<int64_t>{cols} : std::vector<int64_t>{rows, cols};
    blobs.push_back({{name, "F32", shape}, nullptr, static_cast<size_t>(rows * cols * 4)});
  };
  add("model.embed_tokens.weight", 64, 32);
  for (int l = 0; l < 2; ++l) {
    const std::string p = "model.layers." + std::to_string(l) + ".";
    add(p + "input_layernorm.weight", 1, 32);
    for (const char* m : {"q_proj", "k_proj", "v_proj", "o_proj"})
      add(p + "self_attn." + m + ".weight", 32, 32);
    add(p + "mlp.gate_proj.weight", 48, 32);
    add(p + "mlp.up_proj.weight", 48, 32);
    add(p + "mlp.down_proj.weight", 32, 48);
  }
  add("lm_head.weight", 64, 32);
  for (size_t i = 0; i < blobs.size(); ++i) blobs[i].data = keep[i].data();
  ASSERT_TRUE(checkpoint::WriteSafetensors(dir + "/model.safetensors", blobs, {}).ok());
  std::FILE* f = std::fopen((dir + "/config.json").c_str(), "w");
  std::fputs("{\"model_type\": \"llama\"}\n", f);
  std::fclose(f);
}

std::string FreshDir(const std::string& name) {
  const std::string dir = ::testing::TempDir() + "/svc_ckpt_" + name;
  std::filesystem::remove_all(dir);
  std::filesystem::create_directories(dir);
  return std::filesystem::canonical(dir).string();
}

checkpoint::CheckpointJobOptions CheckpointOptions(const std::string& root) {
  checkpoint::CheckpointJobOptions o;
  o.model_dir = root + "/model";
  o.out_dir = root + "/out";
  return o;
}

TEST(ServiceCheckpoint, DisabledWithoutAllowedRoots) {
  Harness h = StartServer(false);
  const std::string root = FreshDir("disabled");
  WriteTinyCheckpoint(root + "/model");
  auto report = h.client->QuantizeCheckpoint(CheckpointOptions(root));
  EXPECT_EQ(report.status().code(), absl::StatusCode::kFailedPrecondition) << report.status();
  EXPECT_THAT(report.status().message(), HasSubstr("--allowed-root"));
}

// A checkpoint call refused at admission leaves no job behind (it used to stay "queued" in the
// registry for good, since nothing ever finished it).
TEST(ServiceCheckpoint, RefusedAtAdmissionLeavesNoJob) {
  const std::string root = FreshDir("refused");
  WriteTinyCheckpoint(root + "/model");
  server::ServerOptions options;
  options.allowed_roots = {root};
  options.scheduler.max_queue = 1;
  Harness h = StartServer(true, options);
  std::vector<float> x = Gaussian(16 * 64, 3);
  const TensorView input{DType::kF32, 16, 64, x.data()};
  absl::Status first, second;
  std::thread a([&] { first = h.client->QuantizeTensor(input, {}, {}).status(); });
  WaitFor([&] { return h.gate->entered() == 1; });
  std::thread b([&] { second = h.client->QuantizeTensor(input, {}, {}).status(); });
  WaitFor([&] { return h.server->scheduler().queue_depth() == 1; });
  auto report = h.client->QuantizeCheckpoint(CheckpointOptions(root));
  EXPECT_EQ(report.status().code(), absl::StatusCode::kResourceExhausted) << report.status();
  h.gate->Open();
  a.join();
  b.join();
  auto jobs = h.client->ListJobs();
  ASSERT_TRUE(jobs.ok());
  for (const v1::Job& job : *jobs) EXPECT_EQ(job.kind(), v1::JOB_KIND_TENSOR) << job.id();
  EXPECT_EQ(jobs->size(), 2u);
}

TEST(ServiceCheckpoint, RunsOnTheServerAndMatchesTheEmbeddedJobByteForByte) {
  const std::string root = FreshDir("runs");
  WriteTinyCheckpoint(root + "/model");
  server::ServerOptions options;
  options.allowed_roots = {root};
  Harness h = StartServer(false, options);
  std::vector<std::string> tensors_seen;
  std::string job_id;
  auto remote = h.client->QuantizeCheckpoint(
      CheckpointOptions(root),
      [&](const checkpoint::CheckpointEvent& e) {
        if (e.tensor != nullptr) tensors_seen.push_back(e.tensor->name);
      },
      &job_id);
  ASSERT_TRUE(remote.ok()) << remote.status();
  EXPECT_EQ(remote->totals.quantized, 14);
  EXPECT_EQ(tensors_seen.size(), remote->tensors.size());
  auto job = h.client->GetJob(job_id);
  ASSERT_TRUE(job.ok()) << job.status();
  EXPECT_EQ(job->kind(), v1::JOB_KIND_CHECKPOINT);
  EXPECT_EQ(job->state(), v1::JOB_STATE_SUCCEEDED);

  checkpoint::CheckpointJobOptions local = CheckpointOptions(root);
  local.out_dir = root + "/local";
  auto engine = Cpu();
  auto embedded = checkpoint::RunCheckpointJob(local, *engine, {}, nullptr);
  ASSERT_TRUE(embedded.ok()) << embedded.status();
  for (const char* file : {"model.safetensors", "config.json", "hf_quant_config.json"}) {
    std::ifstream a(root + "/out/" + file, std::ios::binary),
        b(root + "/local/" + file, std::ios::binary);
    const std::string sa((std::istreambuf_iterator<char>(a)), {}),
        sb((std::istreambuf_iterator<char>(b)), {});
    EXPECT_FALSE(sa.empty()) << file;
    EXPECT_EQ(sa, sb) << file;
  }
}

TEST(ServiceCheckpoint, PathsOutsideTheRootsArePermissionDenied) {
  const std::string root = FreshDir("confined");
  const std::string outside = FreshDir("outside");
  WriteTinyCheckpoint(outside + "/model");
  // A model directory inside the root whose shard is a symlink to a file outside it.
  std::filesystem::create_directories(root + "/model");
  std::filesystem::create_symlink(outside + "/model/model.safetensors",
                                  root + "/model/model.safetensors");
  server::ServerOptions options;
  options.allowed_roots = {root};
  Harness h = StartServer(false, options);
  checkpoint::CheckpointJobOptions o = CheckpointOptions(root);
  o.model_dir = outside + "/model";
  auto direct = h.client->QuantizeCheckpoint(o);
  EXPECT_EQ(direct.status().code(), absl::StatusCode::kPermissionDenied) << direct.status();
  EXPECT_THAT(direct.status().message(), HasSubstr("outside the server's allowed roots"));
  auto via_symlink = h.client->QuantizeCheckpoint(CheckpointOptions(root));
  EXPECT_EQ(via_symlink.status().code(), absl::StatusCode::kPermissionDenied)
      << via_symlink.status();
  o = CheckpointOptions(root);
  o.out_dir = root + "/../escape";
  EXPECT_EQ(h.client->QuantizeCheckpoint(o).status().code(), absl::StatusCode::kPermissionDenied);
  EXPECT_FALSE(std::filesystem::exists(root + "/out"));
}

TEST(ServiceCheckpoint, CancelJobStopsARunningCheckpointAndKeepsNoOutput) {
  const std::string root = FreshDir("cancel");
  WriteTinyCheckpoint(root + "/model");
  server::ServerOptions options;
  options.allowed_roots = {root};
  Harness h = StartServer(true, options);
  std::string job_id;
  absl::Status result;
  absl::Notification accepted;
  std::thread call([&] {
    result = h.client
                 ->QuantizeCheckpoint(
                     CheckpointOptions(root),
                     [&](const checkpoint::CheckpointEvent&) {
                       if (!accepted.HasBeenNotified()) accepted.Notify();
                     },
                     &job_id)
                 .status();
  });
  WaitFor([&] { return h.gate->entered() >= 1; });
  accepted.WaitForNotification();
  std::vector<v1::Job> jobs = *h.client->ListJobs();
  ASSERT_FALSE(jobs.empty());
  ASSERT_TRUE(h.client->CancelJob(jobs.front().id()).ok());
  call.join();
  EXPECT_EQ(result.code(), absl::StatusCode::kCancelled) << result;
  EXPECT_FALSE(std::filesystem::exists(root + "/out"));
  // No shard was finished, so nothing is kept for a resume either.
  EXPECT_FALSE(std::filesystem::exists(checkpoint::StagingDirFor(root + "/out")));
  // The worker is free again: the next job runs to the end.
  h.gate->Open();
  auto again = h.client->QuantizeCheckpoint(CheckpointOptions(root));
  EXPECT_TRUE(again.ok()) << again.status();
  EXPECT_TRUE(std::filesystem::exists(root + "/out/model.safetensors"));
}

TEST(ServiceCheckpoint, ClientCancellationCancelsTheJob) {
  const std::string root = FreshDir("client_cancel");
  WriteTinyCheckpoint(root + "/model");
  server::ServerOptions options;
  options.allowed_roots = {root};
  Harness h = StartServer(true, options);
  absl::Status result;
  std::thread call(
      [&] { result = h.client->QuantizeCheckpoint(CheckpointOptions(root)).status(); });
  WaitFor([&] { return h.gate->entered() >= 1; });
  h.client->CancelInFlight();
  call.join();
  EXPECT_EQ(result.code(), absl::StatusCode::kCancelled) << result;
  // (A cancelled client cancels all its later calls too: ask with a fresh one.)
  client::ClientOptions fresh;
  fresh.target = h.target;
  std::unique_ptr<client::QuantizerClient> observer =
      std::move(*client::QuantizerClient::Connect(fresh));
  WaitFor([&] {
    auto jobs = observer->ListJobs();
    return jobs.ok() && !jobs->empty() && jobs->front().state() == v1::JOB_STATE_CANCELLED;
  });
}

TEST(ServiceCheckpoint, NeedsTheToken) {
  const std::string root = FreshDir("token");
  WriteTinyCheckpoint(root + "/model");
  const std::string token_file = root + "/token";
  std::FILE* f = std::fopen(token_file.c_str(), "w");
  std::fputs("s3cret\n", f);
  std::fclose(f);
  server::ServerOptions options;
  options.allowed_roots = {root};
  options.auth_token_file = token_file;
  Harness h = StartServer(false, options);
  EXPECT_EQ(h.client->QuantizeCheckpoint(CheckpointOptions(root)).status().code(),
            absl::StatusCode::kUnauthenticated);
}

}  // namespace
}  // namespace nvfp4
