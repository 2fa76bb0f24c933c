// proto/convert.h: the status mapping at the gRPC edge and the metrics round trip.
#include "proto/convert.h"

#include <string>

#include "gtest/gtest.h"

namespace nvfp4::api {
namespace {

TEST(Convert, GrpcsTerseMessagesBecomeActionable) {
  const absl::Status shutdown =
      FromGrpcStatus(grpc::Status(grpc::StatusCode::UNAVAILABLE, "Cancelling all calls"));
  EXPECT_EQ(shutdown.code(), absl::StatusCode::kUnavailable);
  EXPECT_NE(std::string(shutdown.message()).find("drain timeout"), std::string::npos);
  const absl::Status cancelled =
      FromGrpcStatus(grpc::Status(grpc::StatusCode::CANCELLED, "CANCELLED"));
  EXPECT_EQ(cancelled.code(), absl::StatusCode::kCancelled);
  EXPECT_EQ(cancelled.message(), "the call was cancelled");
  const absl::Status ours =
      FromGrpcStatus(grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "row 2 has NaN"));
  EXPECT_EQ(ours.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ours.message(), "row 2 has NaN");
  EXPECT_TRUE(FromGrpcStatus(grpc::Status::OK).ok());
}

TEST(Convert, MetricsRoundTripKeepsTheWeightedFigures) {
  TensorMetrics m;
  m.elements = 4096;
  m.blocks = 256;
  m.mse = 0.25;
  m.absmax_mse = 0.2;
  m.gain = 1.25;
  m.weighted = true;
  m.wmse_objective = true;
  m.wmse = 0.1;
  m.absmax_wmse = 0.4;
  m.wmse_gain = 0.25;
  v1::TensorMetrics p;
  MetricsToProto(m, &p);
  EXPECT_EQ(p.objective(), v1::OBJECTIVE_WMSE);
  const TensorMetrics back = MetricsFromProto(p);
  EXPECT_TRUE(back.weighted && back.wmse_objective);
  EXPECT_EQ(back.wmse, 0.1);
  EXPECT_EQ(back.absmax_wmse, 0.4);
  EXPECT_EQ(back.wmse_gain, 0.25);
  EXPECT_EQ(back.gain, 1.25);
  EXPECT_EQ(ObjectiveGain(back), 0.25);

  TensorMetrics plain;
  plain.gain = 0.8;
  v1::TensorMetrics q;
  MetricsToProto(plain, &q);
  const TensorMetrics plain_back = MetricsFromProto(q);
  EXPECT_FALSE(plain_back.weighted || plain_back.wmse_objective);
  EXPECT_EQ(ObjectiveGain(plain_back), 0.8);
}

}  // namespace
}  // namespace nvfp4::api
