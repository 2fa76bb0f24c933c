// The client library against a scripted server: results whose header does not describe the
// tensor that was sent, or whose byte sections run past their announced sizes, end the call
// with a protocol error instead of growing buffers without bound; a well-formed script passes
// (so the fake itself speaks the protocol).
#include <memory>
#include <string>
#include <vector>

#include "client/quantizer_client.h"
#include "grpcpp/grpcpp.h"
#include "gtest/gtest.h"
#include "kernels/quantized_tensor.h"
#include "nvfp4/v1/quantizer.grpc.pb.h"

namespace nvfp4::client {
namespace {

namespace v1 = ::nvfp4::v1;

constexpr int64_t kRows = 4;
constexpr int64_t kCols = 32;

// Reads the whole upload, then answers with `responses`.
class ScriptedQuantizer final : public v1::Quantizer::Service {
 public:
  explicit ScriptedQuantizer(std::vector<v1::QuantizeTensorResponse> responses)
      : responses_(std::move(responses)) {}

  grpc::Status QuantizeTensor(
      grpc::ServerContext*,
      grpc::ServerReaderWriter<v1::QuantizeTensorResponse, v1::QuantizeTensorRequest>* stream)
      override {
    v1::QuantizeTensorRequest request;
    while (stream->Read(&request)) {
    }
    for (const auto& response : responses_) stream->Write(response);
    return grpc::Status::OK;
  }

 private:
  std::vector<v1::QuantizeTensorResponse> responses_;
};

v1::ResultHeader GoodHeader() {
  v1::ResultHeader header;
  header.set_rows(kRows);
  header.set_cols(kCols);
  header.set_padded_cols(kCols);
  header.set_global_scale(0.5f);
  header.set_amax(1344.0f);
  header.set_packed_bytes(kRows * kCols / 2);
  header.set_scales_bytes(kRows * kCols / 16);
  return header;
}

std::vector<v1::QuantizeTensorResponse> Script(const v1::ResultHeader& header,
                                               const std::string& packed,
                                               const std::string& scales) {
  std::vector<v1::QuantizeTensorResponse> out(5);
  out[0].mutable_accepted()->set_job_id("job-1");
  *out[1].mutable_result() = header;
  out[2].set_packed(packed);
  out[3].set_scales(scales);
  out[4].mutable_metrics()->set_elements(kRows * kCols);
  return out;
}

absl::StatusOr<QuantizedTensor> RunAgainst(std::vector<v1::QuantizeTensorResponse> script) {
  ScriptedQuantizer service(std::move(script));
  grpc::ServerBuilder builder;
  int port = 0;
  builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port);
  builder.RegisterService(&service);
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  if (!server || port == 0) return absl::InternalError("cannot start the scripted server");
  ClientOptions options;
  options.target = "127.0.0.1:" + std::to_string(port);
  auto client = QuantizerClient::Connect(options);
  if (!client.ok()) return client.status();
  std::vector<float> data(kRows * kCols, 1.0f);
  QuantizeOptions quantize;
  quantize.amax = 1344.0f;  // no local amax pass needed
  absl::StatusOr<QuantizedTensor> result = (*client)->QuantizeTensor(
      TensorView{DType::kF32, kRows, kCols, data.data()}, {}, quantize, "t");
  server->Shutdown();
  return result;
}

TEST(ClientProtocolChecks, WellFormedResultsArrive) {
  const std::string packed(kRows * kCols / 2, '\x21');
  const std::string scales(kRows * kCols / 16, '\x38');
  auto result = RunAgainst(Script(GoodHeader(), packed, scales));
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_EQ(std::string(result->packed.begin(), result->packed.end()), packed);
  EXPECT_EQ(std::string(result->scales.begin(), result->scales.end()), scales);
  EXPECT_EQ(result->global_scale, 0.5f);
}

TEST(ClientProtocolChecks, HeadersThatDoNotDescribeTheTensorAreRefused) {
  const std::string packed(kRows * kCols / 2, '\x21');
  const std::string scales(kRows * kCols / 16, '\x38');
  std::vector<v1::ResultHeader> bad(5, GoodHeader());
  bad[0].set_rows(kRows + 1);
  bad[1].set_packed_bytes(int64_t{1} << 50);  // would reserve a petabyte
  bad[2].set_scales_bytes(-1);
  bad[3].set_dequantized_bytes(int64_t{1} << 40);  // no dequantized output was asked for
  bad[4].set_padded_cols(kCols + 16);
  for (const v1::ResultHeader& header : bad) {
    auto result = RunAgainst(Script(header, packed, scales));
    ASSERT_FALSE(result.ok()) << header.ShortDebugString();
    EXPECT_NE(result.status().message().find("does not match the tensor sent"), std::string::npos)
        << result.status();
  }
}

TEST(ClientProtocolChecks, BytesBeyondTheAnnouncedSizeAreRefused) {
  const std::string scales(kRows * kCols / 16, '\x38');
  auto result = RunAgainst(Script(GoodHeader(), std::string(kRows * kCols / 2 + 1, 'x'), scales));
  ASSERT_FALSE(result.ok());
  EXPECT_NE(result.status().message().find("beyond the announced size"), std::string::npos)
      << result.status();
  // Too few bytes: the sizes are checked at the end.
  result = RunAgainst(Script(GoodHeader(), std::string(kRows * kCols / 2 - 1, 'x'), scales));
  ASSERT_FALSE(result.ok());
  EXPECT_EQ(result.status().code(), absl::StatusCode::kDataLoss) << result.status();
}

}  // namespace
}  // namespace nvfp4::client
