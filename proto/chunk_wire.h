// Byte-chunk messages of the tensor stream, encoded and decoded without protobuf copies.
//
// QuantizeTensorRequest.data / .importance and QuantizeTensorResponse.packed / .scales /
// .dequantized carry nearly every byte of a tensor job. Built through generated code, each chunk
// is copied into a std::string and again into the serialised message on the sending side, and
// twice more on the receiving side. Here a chunk message is protobuf's own encoding of a message
// with one length-delimited field (tag, length, bytes) assembled from slices: the sender's
// payload slice goes on the wire as is, and the receiver copies each received slice once,
// straight to its destination. Peers that use generated code (the Python client) see ordinary
// messages; anything that is not a single length-delimited field is left to the generated
// parser. Stateless functions; thread-safe.
#ifndef NVFP4_PROTO_CHUNK_WIRE_H_
#define NVFP4_PROTO_CHUNK_WIRE_H_

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/functional/function_ref.h"
#include "grpcpp/support/byte_buffer.h"
#include "grpcpp/support/slice.h"

namespace nvfp4::api {

// The serialised message whose only field is `field_number` (length-delimited) = payload. The
// payload slice is referenced, not copied.
grpc::ByteBuffer SingleBytesFieldMessage(uint32_t field_number, grpc::Slice payload);

// A received message that is exactly one length-delimited field, referencing the buffer's
// slices (it keeps them alive).
class BytesFieldView {
 public:
  // A view holding a copy of `payload` (for chunks that arrived in a form the generated parser
  // had to read).
  static BytesFieldView Copying(uint32_t field_number, const std::string& payload);

  uint32_t field_number() const { return field_number_; }
  size_t size() const { return size_; }
  // Calls `piece` for the payload's pieces, in order (their sizes add up to size()).
  void ForEachPiece(absl::FunctionRef<void(const uint8_t*, size_t)> piece) const;
  // The same for the payload bytes [begin, end) (end <= size()).
  void ForEachPieceIn(size_t begin, size_t end,
                      absl::FunctionRef<void(const uint8_t*, size_t)> piece) const;
  // Copies the payload to dst[0, size()).
  void CopyTo(uint8_t* dst) const;

 private:
  friend std::optional<BytesFieldView> AsSingleBytesField(const grpc::ByteBuffer& buffer);
  uint32_t field_number_ = 0;
  size_t size_ = 0;
  size_t offset_ = 0;  // where the payload starts in the first slice
  std::vector<grpc::Slice> slices_;
};

// The message as a single length-delimited field, or nullopt when it is anything else (several
// fields, a varint field, a malformed prefix): parse those with the generated code. Note that a
// single embedded message (e.g. QuantizeTensorRequest.header) is also length-delimited: the
// caller decides by field_number().
std::optional<BytesFieldView> AsSingleBytesField(const grpc::ByteBuffer& buffer);

}  // namespace nvfp4::api

#endif  // NVFP4_PROTO_CHUNK_WIRE_H_
