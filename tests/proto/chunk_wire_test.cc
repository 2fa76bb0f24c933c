// proto/chunk_wire: the hand-assembled chunk messages must be what the generated code writes and
// reads, whatever the slicing of the received buffer; anything else must be refused (left to
// the generated parser).
#include "proto/chunk_wire.h"

#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "nvfp4/v1/quantizer.pb.h"

namespace nvfp4::api {
namespace {

std::string Flatten(const grpc::ByteBuffer& buffer) {
  std::vector<grpc::Slice> slices;
  EXPECT_TRUE(buffer.Dump(&slices).ok());
  std::string out;
  for (const grpc::Slice& s : slices)
    out.append(reinterpret_cast<const char*>(s.begin()), s.size());
  return out;
}

// The same bytes as a buffer cut into slices of `piece` bytes (prefixes split across slices).
grpc::ByteBuffer Sliced(const std::string& bytes, size_t piece) {
  std::vector<grpc::Slice> slices;
  for (size_t at = 0; at < bytes.size(); at += piece) {
    const size_t n = std::min(piece, bytes.size() - at);
    slices.emplace_back(bytes.data() + at, n);
  }
  return grpc::ByteBuffer(slices.data(), slices.size());
}

std::string Payload(size_t n) {
  std::string s(n, '\0');
  for (size_t i = 0; i < n; ++i) s[i] = static_cast<char>(i * 131 + 7);
  return s;
}

std::string ViewBytes(const BytesFieldView& view) {
  std::string out(view.size(), '\0');
  view.CopyTo(reinterpret_cast<uint8_t*>(out.data()));
  return out;
}

TEST(ChunkWire, EncodingIsWhatTheGeneratedCodeWrites) {
  // Sizes around the varint length boundaries (1, 2, 3 and 4 length bytes).
  for (size_t n : {size_t{0}, size_t{1}, size_t{127}, size_t{128}, size_t{16383}, size_t{16384},
                   size_t{(1 << 21) + 5}}) {
    const std::string payload = Payload(n);
    v1::QuantizeTensorRequest request;
    request.set_data(payload);
    const grpc::ByteBuffer ours = SingleBytesFieldMessage(
        v1::QuantizeTensorRequest::kDataFieldNumber, grpc::Slice(payload.data(), payload.size()));
    EXPECT_EQ(Flatten(ours), request.SerializeAsString()) << n;

    v1::QuantizeTensorResponse response;
    ASSERT_TRUE(response.ParseFromString(Flatten(ours)));
    EXPECT_EQ(response.payload_case(), v1::QuantizeTensorResponse::kPacked);
    EXPECT_EQ(response.packed(), payload);
  }
}

TEST(ChunkWire, DecodesGeneratedMessagesAcrossAnySlicing) {
  const std::string payload = Payload(70000);
  v1::QuantizeTensorResponse response;
  response.set_scales(payload);
  const std::string wire = response.SerializeAsString();
  for (size_t piece : {size_t{1}, size_t{2}, size_t{3}, size_t{4096}, wire.size()}) {
    const std::optional<BytesFieldView> view = AsSingleBytesField(Sliced(wire, piece));
    ASSERT_TRUE(view.has_value()) << piece;
    EXPECT_EQ(view->field_number(), v1::QuantizeTensorResponse::kScalesFieldNumber);
    EXPECT_EQ(view->size(), payload.size());
    EXPECT_EQ(ViewBytes(*view), payload) << piece;
    size_t total = 0;
    view->ForEachPiece([&](const uint8_t*, size_t n) { total += n; });
    EXPECT_EQ(total, payload.size());
  }
  // An empty chunk is still one field (the server rejects it by size, not by shape).
  v1::QuantizeTensorRequest empty;
  empty.set_data("");
  const std::optional<BytesFieldView> view =
      AsSingleBytesField(Sliced(empty.SerializeAsString(), 1));
  ASSERT_TRUE(view.has_value());
  EXPECT_EQ(view->size(), 0u);
}

// Sub-ranges of the payload, as the server hands received chunks to the engine: every range of
// every slicing yields exactly those bytes.
TEST(ChunkWire, PiecesOfARangeAreThoseBytes) {
  const std::string payload = Payload(1000);
  v1::QuantizeTensorRequest request;
  request.set_data(payload);
  const std::string wire = request.SerializeAsString();
  auto range = [](const BytesFieldView& view, size_t begin, size_t end) {
    std::string out;
    view.ForEachPieceIn(begin, end, [&out](const uint8_t* data, size_t n) {
      EXPECT_GT(n, 0u);
      out.append(reinterpret_cast<const char*>(data), n);
    });
    return out;
  };
  for (size_t piece : {size_t{1}, size_t{7}, size_t{64}, wire.size()}) {
    const std::optional<BytesFieldView> view = AsSingleBytesField(Sliced(wire, piece));
    ASSERT_TRUE(view.has_value());
    for (size_t begin : {size_t{0}, size_t{1}, size_t{63}, size_t{500}, size_t{999}}) {
      for (size_t end : {begin, begin + 1, size_t{640}, size_t{1000}}) {
        if (end < begin || end > payload.size()) continue;
        EXPECT_EQ(range(*view, begin, end), payload.substr(begin, end - begin))
            << piece << " " << begin << " " << end;
      }
    }
  }
  const BytesFieldView copy =
      BytesFieldView::Copying(v1::QuantizeTensorRequest::kDataFieldNumber, payload);
  EXPECT_EQ(copy.field_number(), v1::QuantizeTensorRequest::kDataFieldNumber);
  EXPECT_EQ(ViewBytes(copy), payload);
  EXPECT_EQ(range(copy, 10, 20), payload.substr(10, 10));
}

TEST(ChunkWire, AnythingButOneLengthDelimitedFieldIsLeftToTheParser) {
  auto decode = [](const std::string& wire) { return AsSingleBytesField(Sliced(wire, 3)); };
  v1::QuantizeTensorRequest data;
  data.set_data("abcdef");
  const std::string one = data.SerializeAsString();
  // Two fields (the same one twice, or with an unknown varint field after it).
  EXPECT_FALSE(decode(one + one).has_value());
  EXPECT_FALSE(decode(one + std::string("\x78\x01", 2)).has_value());
  // Truncated, or a length past the end.
  EXPECT_FALSE(decode(one.substr(0, one.size() - 1)).has_value());
  EXPECT_FALSE(decode(std::string("\x1a\x80", 2)).has_value());
  // A varint field, a fixed32 field, field number 0, an empty message.
  v1::ResultHeader header;
  header.set_rows(5);
  EXPECT_FALSE(decode(header.SerializeAsString()).has_value());
  header.Clear();
  header.set_global_scale(2.0f);
  EXPECT_FALSE(decode(header.SerializeAsString()).has_value());
  EXPECT_FALSE(decode(std::string("\x02\x01x", 3)).has_value());
  EXPECT_FALSE(decode("").has_value());
  // An embedded message is length-delimited too: reported with its field number for the
  // caller to route to the parser.
  v1::QuantizeTensorRequest with_header;
  with_header.mutable_header()->set_name("t");
  const std::optional<BytesFieldView> view = decode(with_header.SerializeAsString());
  ASSERT_TRUE(view.has_value());
  EXPECT_EQ(view->field_number(), v1::QuantizeTensorRequest::kHeaderFieldNumber);
}

}  // namespace
}  // namespace nvfp4::api
